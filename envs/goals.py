"""Goal-conditioned tasks: the commanded goal is part of the observation, and the spec says which
slice of the observation is the goal and which slice is the position it is compared with (the
"achieved goal"), so a goal-conditioned learner can relabel transitions with goals it reached.

Every goal task reports `metrics["distance"]` (achieved to goal) and `metrics["success"]` (1 within
`success_radius`), and pays a reward of 1 on each step within that radius.

- `point_maze_open`, `point_maze_u`: a point mass in a maze of unit cells, pure JAX. It moves by
  0.25 x the action per step on each axis, sliding along walls; start and goal are drawn uniformly
  from the free cells. The U-maze is D4RL's layout: three cells across the top, a corridor down the
  right side, three across the bottom.
- `brax/reacher_goal`: Brax's reacher with an observation that holds the goal only once: joint
  angles (cos, sin), fingertip velocity xy, fingertip xy, goal xy (Brax's own observation also
  holds the fingertip-to-target vector, which would leak the commanded goal past a relabelling).
- `brax/ant_goal`: Brax's ant with a goal xy drawn uniformly in a disk of radius `goal_radius`
  around the start; its observation appends the torso xy and the goal xy to the ant's own.
- `brax/ant_goal_jaxgcrl`: the Ant task of JaxGCRL (Bortkiewicz et al., ICLR 2025): the goal on a
  circle of radius 10 around the origin, the observation (q, qd, goal xy) with the torso xy first.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from brax.envs.base import Env, State, Wrapper

from .brax_tasks import _norm

OPEN = ("######", "#....#", "#....#", "#....#", "#....#", "######")
U_MAZE = ("#####", "#...#", "###.#", "#...#", "#####")


def goal_reward(achieved_slice, goal_slice, radius):
    """reward_fn(obs, action, next_obs): 1 when the next observation's achieved goal is within
    `radius` of its commanded goal."""

    def reward_fn(obs, action, next_obs):
        achieved = next_obs[..., achieved_slice[0] : achieved_slice[1]]
        goal = next_obs[..., goal_slice[0] : goal_slice[1]]
        return (_norm(achieved - goal) < radius).astype(jnp.float32)

    return reward_fn


def _goal_metrics(achieved, goal, radius):
    distance = _norm(achieved - goal)
    return distance, (distance < radius).astype(jnp.float32)


class PointMaze(Env):
    """State (x, y, goal x, goal y); the maze's cell (i, j) spans [j, j+1] x [rows-1-i, rows-i]."""

    speed = 0.25
    success_radius = 0.5
    achieved_slice, goal_slice = (0, 2), (2, 4)

    def __init__(self, layout: tuple[str, ...]):
        self.layout = layout
        rows = len(layout)
        # walls[r, c] for r counted from the bottom row, so a point (x, y) lies in walls[int(y), int(x)].
        self.walls = jnp.array([[ch == "#" for ch in row] for row in reversed(layout)])
        free = [(c, r) for r in range(rows) for c in range(len(layout[0])) if not bool(self.walls[r, c])]
        self.free_cells = jnp.array(free, jnp.float32)

    def _random_point(self, key):
        cell_key, offset_key = jax.random.split(key)
        cell = self.free_cells[jax.random.randint(cell_key, (), 0, self.free_cells.shape[0])]
        return cell + jax.random.uniform(offset_key, (2,), minval=0.1, maxval=0.9)

    def _is_free(self, point):
        rows, cols = self.walls.shape
        r = jnp.clip(jnp.floor(point[1]).astype(jnp.int32), 0, rows - 1)
        c = jnp.clip(jnp.floor(point[0]).astype(jnp.int32), 0, cols - 1)
        return ~self.walls[r, c]

    def reset(self, rng: jax.Array) -> State:
        start_key, goal_key = jax.random.split(rng)
        x = jnp.concatenate([self._random_point(start_key), self._random_point(goal_key)])
        distance, success = _goal_metrics(x[:2], x[2:], self.success_radius)
        zero = jnp.zeros((), jnp.float32)
        return State(
            pipeline_state=x, obs=x, reward=zero, done=zero, metrics={"distance": distance, "success": success}
        )

    def step(self, state: State, action: jax.Array) -> State:
        x = state.pipeline_state
        delta = self.speed * jnp.clip(action, -1.0, 1.0)
        # Slide along walls: each axis moves only if it stays in a free cell.
        moved_x = x[:2] + jnp.array([delta[0], 0.0])
        pos = jnp.where(self._is_free(moved_x), moved_x, x[:2])
        moved_y = pos + jnp.array([0.0, delta[1]])
        pos = jnp.where(self._is_free(moved_y), moved_y, pos)
        x = jnp.concatenate([pos, x[2:]])
        distance, success = _goal_metrics(pos, x[2:], self.success_radius)
        return state.replace(
            pipeline_state=x,
            obs=x,
            reward=success,
            done=jnp.zeros((), jnp.float32),
            metrics={**state.metrics, "distance": distance, "success": success},
        )

    @property
    def observation_size(self) -> int:
        return 4

    @property
    def action_size(self) -> int:
        return 2

    @property
    def backend(self) -> str:
        return "jax"


class ReacherGoal(Wrapper):
    """Brax reacher as a goal task: obs (cos q, sin q, fingertip velocity xy, fingertip xy, goal xy)."""

    success_radius = 0.05
    achieved_slice, goal_slice = (6, 8), (8, 10)

    def _goal_obs(self, state: State) -> State:
        # Brax (reacher.py `_get_obs`): cos q (2), sin q (2), target xy (2), fingertip velocity xy
        # (2: `tip_vel[:2]`, not the joint velocities), fingertip - target (3).
        obs = state.obs
        target, fingertip = obs[4:6], obs[4:6] + obs[8:10]
        goal_obs = jnp.concatenate([obs[:4], obs[6:8], fingertip, target])
        distance, success = _goal_metrics(fingertip, target, self.success_radius)
        return state.replace(
            obs=goal_obs, reward=success, metrics={**state.metrics, "distance": distance, "success": success}
        )

    def reset(self, rng: jax.Array) -> State:
        return self._goal_obs(self.env.reset(rng))

    def step(self, state: State, action: jax.Array) -> State:
        # The inner env computes its observation from the physics state, not from `obs`.
        return self._goal_obs(self.env.step(state, action))

    @property
    def observation_size(self) -> int:
        return 10


class AntGoal(Wrapper):
    """Brax ant as a goal task: its own observation, then torso xy, then goal xy."""

    success_radius = 0.5

    def __init__(self, env: Env, goal_radius: float = 5.0):
        super().__init__(env)
        self.goal_radius = goal_radius
        self.base_size = env.observation_size
        self.achieved_slice = (self.base_size, self.base_size + 2)
        self.goal_slice = (self.base_size + 2, self.base_size + 4)

    def _goal_obs(self, state: State, goal: jax.Array) -> State:
        torso = state.pipeline_state.x.pos[0, :2]
        distance, success = _goal_metrics(torso, goal, self.success_radius)
        return state.replace(
            obs=jnp.concatenate([state.obs, torso, goal]),
            reward=success,
            metrics={**state.metrics, "distance": distance, "success": success},
            info={**state.info, "goal": goal},
        )

    def reset(self, rng: jax.Array) -> State:
        rng, angle_key, radius_key = jax.random.split(rng, 3)
        state = self.env.reset(rng)
        angle = jax.random.uniform(angle_key, (), minval=0.0, maxval=2.0 * jnp.pi)
        radius = self.goal_radius * jnp.sqrt(jax.random.uniform(radius_key, ()))
        start = state.pipeline_state.x.pos[0, :2]
        return self._goal_obs(state, start + radius * jnp.array([jnp.cos(angle), jnp.sin(angle)]))

    def step(self, state: State, action: jax.Array) -> State:
        inner = state.replace(obs=state.obs[: self.base_size])
        return self._goal_obs(self.env.step(inner, action), state.info["goal"])

    @property
    def observation_size(self) -> int:
        return self.base_size + 4


def ant_jaxgcrl_termination(obs, action, next_obs):
    """Done when the torso height leaves [0.2, 1.0]; here it is obs[2] (q[2]), after the torso xy."""
    z = next_obs[..., 2]
    return (z < 0.2) | (z > 1.0)


class AntGoalJaxGCRL(Wrapper):
    """JaxGCRL's Ant goal task, rebuilt on Brax's ant (read from MichalBortkiewicz/JaxGCRL,
    `jaxgcrl/envs/ant.py`, `jaxgcrl/utils/env.py`, `scripts/train.sh`):

    - the goal is `goal_distance` = 10 from the origin at a uniform angle (`_random_target`), so
      about 10 from the start, whose torso xy is the origin plus uniform noise in [-0.1, 0.1];
    - success within 0.5 of the torso xy (`goal_reach_thresh`), reward 1 on each such step
      (`dense_reward=False`), done when the torso height leaves [0.2, 1.0];
    - observation (31,): q (15, the torso xy first) and qd (14) of the ant, then the goal xy: their
      `state_dim=29`, `goal_indices=[0, 1]`, the target's position last;
    - 1000-step episodes (`--episode_length 1000` in `scripts/train.sh`; their RunConfig default is
      1001), and the spring backend, which `create_env` picks for "ant".

    What differs, and why: JaxGCRL puts the goal in the physics, as a contact-free sphere on two
    slide joints of its own `ant.xml` whose floor is 150 x 150 instead of Brax's 40 x 40; here the
    goal is kept in the state's `info`, which leaves the ant's physics Brax's own (the sphere
    touches nothing, and a goal 10 away stays far inside either floor). Their `success` metric is 0
    at reset; here it is computed at reset too, and is 0 there all the same (the goal is about 10
    away).
    """

    success_radius = 0.5
    achieved_slice = (0, 2)

    def __init__(self, env: Env, goal_distance: float = 10.0):
        super().__init__(env)
        self.goal_distance = goal_distance
        self.base_size = env.observation_size
        self.goal_slice = (self.base_size, self.base_size + 2)

    def _goal_obs(self, state: State, goal: jax.Array) -> State:
        obs = jnp.concatenate([state.obs, goal])
        distance, success = _goal_metrics(obs[:2], goal, self.success_radius)
        return state.replace(
            obs=obs,
            reward=success,
            metrics={**state.metrics, "distance": distance, "success": success},
            info={**state.info, "goal": goal},
        )

    def reset(self, rng: jax.Array) -> State:
        rng, angle_key = jax.random.split(rng)
        angle = jax.random.uniform(angle_key, (), minval=0.0, maxval=2.0 * jnp.pi)
        goal = self.goal_distance * jnp.array([jnp.cos(angle), jnp.sin(angle)])
        return self._goal_obs(self.env.reset(rng), goal)

    def step(self, state: State, action: jax.Array) -> State:
        inner = state.replace(obs=state.obs[: self.base_size])
        return self._goal_obs(self.env.step(inner, action), state.info["goal"])

    @property
    def observation_size(self) -> int:
        return self.base_size + 2
