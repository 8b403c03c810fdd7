"""The grid mazes of Sutton and Barto, "Reinforcement Learning: An Introduction" (2nd ed., 2018),
sections 8.2 and 8.3, on Brax's protocol, in pure JAX: the Dyna Maze (Figure 8.2), the blocking
maze (Figure 8.4) and the shortcut maze (Figure 8.5).

Four actions, one-hot (argmax 0 up, 1 down, 2 left, 3 right), move the agent one cell; a move into
a wall or off the grid leaves it where it is. Reward is +1 on the step into the goal G, 0 elsewhere.
That step ends the episode (`done` = 1) and, as in the book, puts the agent back at the start S in
the same step: the observation after it is S's. The observation is the one-hot of the cell's index
(row * width + column), a tabular task's state.

The blocking and shortcut mazes change their walls after a number of steps of the world: the world's
clock, `info["clock"]`, counts every step since `reset` across episodes, and steps 0 to
`change_step - 1` use the first walls, the rest the second. An agent that starts an evaluation
episode in the world as it is now carries the clock over to a fresh state (dyna_q.py does).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from brax.envs.base import Env, State

# Row and column steps of the four actions: up, down, left, right.
MOVES = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]])


def parse(layout: str) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """A picture of a maze (rows of "." free, "W" wall, "S" start, "G" goal) as (walls [H, W] bool,
    start (row, col), goal (row, col))."""
    rows = [line.strip() for line in layout.strip().splitlines()]
    grid = np.array([list(row) for row in rows])
    start, goal = (tuple(int(i) for i in np.argwhere(grid == mark)[0]) for mark in "SG")
    return grid == "W", start, goal


class GridMaze(Env):
    """A maze of `walls` (and, from the world's step `change_step` on, `walls_after`)."""

    def __init__(self, layout: str, layout_after: str | None = None, change_step: int | None = None):
        walls, self.start, self.goal = parse(layout)
        self.height, self.width = walls.shape
        after = walls if layout_after is None else parse(layout_after)[0]
        self.walls_before = jnp.asarray(walls.reshape(-1))
        self.walls_after = jnp.asarray(after.reshape(-1))
        self.change_step = change_step

    @property
    def num_cells(self) -> int:
        return self.height * self.width

    def cell(self, row: int, col: int) -> int:
        return row * self.width + col

    def walls_at(self, clock: jax.Array) -> jax.Array:
        """The walls [H * W] of the world's step `clock` (counted from 0)."""
        if self.change_step is None:
            return self.walls_before
        return jnp.where(clock >= self.change_step, self.walls_after, self.walls_before)

    def _obs(self, cell: jax.Array) -> jax.Array:
        return jax.nn.one_hot(cell, self.num_cells, dtype=jnp.float32)

    def reset(self, rng: jax.Array) -> State:
        del rng  # the start is fixed
        cell = jnp.int32(self.cell(*self.start))
        zero = jnp.zeros((), jnp.float32)
        return State(pipeline_state=cell, obs=self._obs(cell), reward=zero, done=zero, info={"clock": jnp.int32(0)})

    def step(self, state: State, action: jax.Array) -> State:
        cell, clock = state.pipeline_state, state.info["clock"]
        move = jnp.asarray(MOVES)[jnp.argmax(action)]
        row = jnp.clip(cell // self.width + move[0], 0, self.height - 1)
        col = jnp.clip(cell % self.width + move[1], 0, self.width - 1)
        target = row * self.width + col
        moved = jnp.where(self.walls_at(clock)[target], cell, target)
        at_goal = moved == self.cell(*self.goal)
        following = jnp.where(at_goal, jnp.int32(self.cell(*self.start)), moved).astype(jnp.int32)
        reward = at_goal.astype(jnp.float32)
        info = {**state.info, "clock": clock + 1}
        return state.replace(pipeline_state=following, obs=self._obs(following), reward=reward, done=reward, info=info)

    @property
    def observation_size(self) -> int:
        return self.num_cells

    @property
    def action_size(self) -> int:
        return len(MOVES)

    @property
    def backend(self) -> str:
        return "jax"


# Figure 8.2: 6 x 9, S at row 2 column 0, G at the top right; shortest path 14 steps.
DYNA_MAZE = """
.......WG
..W....W.
S.W....W.
..W......
.....W...
.........
"""

# Figure 8.4: a wall across row 3 with its gap on the right; after 1000 steps the gap moves to the
# left end, and the short path is blocked.
BLOCKING_BEFORE = """
........G
.........
.........
WWWWWWWW.
.........
...S.....
"""
BLOCKING_AFTER = """
........G
.........
.........
.WWWWWWWW
.........
...S.....
"""

# Figure 8.5: the gap on the left; after 3000 steps a second, shorter one opens on the right.
SHORTCUT_BEFORE = BLOCKING_AFTER
SHORTCUT_AFTER = """
........G
.........
.........
.WWWWWWW.
.........
...S.....
"""

MAZES = {
    "dyna_maze": lambda: GridMaze(DYNA_MAZE),
    "blocking_maze": lambda: GridMaze(BLOCKING_BEFORE, BLOCKING_AFTER, change_step=1000),
    "shortcut_maze": lambda: GridMaze(SHORTCUT_BEFORE, SHORTCUT_AFTER, change_step=3000),
}
"""Name -> the maze, as `mbrlax.envs.make` names them."""

NOTES = {
    "dyna_maze": "Sutton and Barto's Dyna Maze (Figure 8.2, mazes.py): 6 x 9, S at row 2 column 0, G top right.",
    "blocking_maze": "Sutton and Barto's blocking maze (Figure 8.4, mazes.py): the wall's gap moves from the right "
    "end to the left at the world's step 1000.",
    "shortcut_maze": "Sutton and Barto's shortcut maze (Figure 8.5, mazes.py): a shorter gap opens on the right at "
    "the world's step 3000.",
}


def shortest_path(maze: GridMaze, after_change: bool = False) -> int:
    """Steps of the shortest path from S to G (breadth-first search), in the first walls or the second."""
    walls = np.asarray(maze.walls_after if after_change else maze.walls_before).reshape(maze.height, maze.width)
    frontier, seen, steps = [maze.start], {maze.start}, 0
    while frontier:
        if maze.goal in frontier:
            return steps
        following = []
        for row, col in frontier:
            for d_row, d_col in MOVES:
                r, c = min(max(row + d_row, 0), maze.height - 1), min(max(col + d_col, 0), maze.width - 1)
                if not walls[r, c] and (r, c) not in seen:
                    seen.add((r, c))
                    following.append((r, c))
        frontier, steps = following, steps + 1
    raise ValueError("the goal cannot be reached")
