"""Dyna-Q's pieces by hand (the Q-learning update, the bonus, random tie-breaking, the table model and
planning), the book's mazes, and the shapes of Figures 8.2, 8.4 and 8.5 from `--figure` runs. (The
CLI run, resume and bad input: tests/test_contract.py and tests/test_bad_inputs.py.)"""

from __future__ import annotations

import csv
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mbrlax.algorithms import dyna_q

from mbrlax.envs import mazes


def test_q_learning_update_bootstraps_except_after_the_end():
    q = jnp.zeros((3, 2)).at[1].set(jnp.array([0.5, 1.0]))
    # 0.1 (1 + 0.9 max(0.5, 1.0) - 0)
    updated = dyna_q.q_learning_update(q, 0, 1, 1.0, 1, 0.0, 0.1, 0.9)
    np.testing.assert_allclose(updated[0], [0.0, 0.19], rtol=1e-6)
    np.testing.assert_array_equal(updated[1:], q[1:])
    ended = dyna_q.q_learning_update(q, 0, 1, 1.0, 1, 1.0, 0.1, 0.9)
    np.testing.assert_allclose(ended[0], [0.0, 0.1], rtol=1e-6)


def test_exploration_bonus_is_kappa_sqrt_tau():
    np.testing.assert_allclose(dyna_q.exploration_bonus(0.01, jnp.int32(4), jnp.int32(13)), 0.03, rtol=1e-6)


def test_ties_are_broken_uniformly_and_epsilon_explores():
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    picks = np.asarray(jax.vmap(dyna_q.random_argmax, (None, 0))(jnp.array([1.0, 3.0, 3.0, 0.0]), keys))
    assert set(picks) == {1, 2} and abs((picks == 1).mean() - 0.5) < 0.05
    row = jnp.array([0.0, 0.0, 2.0, 0.0])
    greedy = np.asarray(jax.vmap(dyna_q.epsilon_greedy, (None, 0, None))(row, keys, 0.0))
    assert (greedy == 2).all()
    uniform = np.asarray(jax.vmap(dyna_q.epsilon_greedy, (None, 0, None))(row, keys, 1.0))
    np.testing.assert_allclose(np.bincount(uniform, minlength=4) / len(keys), 0.25, atol=0.04)


def test_the_model_remembers_and_plans_from_what_it_saw():
    model = dyna_q.empty_model(2, 2)
    model = dyna_q.remember(model, 0, 1, 1.0, 1, 1.0, jnp.int32(1))
    assert int(model.num_visited) == 1 and int(model.visited[0]) == 0 and bool(model.tried[0, 1])
    again = dyna_q.remember(model, 0, 0, 0.0, 0, 0.0, jnp.int32(2))
    assert int(again.num_visited) == 1, "a state joins the visited ones once"
    q = jnp.zeros((2, 2))
    keys = jax.random.split(jax.random.PRNGKey(1), 40)

    def planned(kappa):
        config = dataclasses.replace(dyna_q.Config(), planning_steps=1.0, alpha=0.5, gamma=0.9, kappa=kappa)
        return np.asarray(jax.vmap(lambda key: dyna_q.plan(q, model, key, jnp.int32(4), config))(keys))

    # Dyna-Q: only the pair it tried, to 0.5 (1 - 0), whatever the draw.
    np.testing.assert_allclose(planned(0.0), np.broadcast_to([[0.0, 0.5], [0.0, 0.0]], (40, 2, 2)))
    # Dyna-Q+: the tried pair with reward 1 + 0.5 sqrt(4 - 1), or the untried one, modelled as a step
    # back to state 0 with reward 0 + 0.5 sqrt(4 - 0): 0.5 (1 + 0.9 * 0) = 0.5.
    plus = planned(0.5)
    tried = np.isclose(plus[:, 0, 1], 0.5 * (1 + 0.5 * np.sqrt(3)))
    untried = np.isclose(plus[:, 0, 0], 0.5)
    assert (tried ^ untried).all() and tried.any() and untried.any()


def test_the_mazes_walls_goal_and_restart():
    maze = mazes.MAZES["dyna_maze"]()
    assert (maze.height, maze.width, maze.start, maze.goal) == (6, 9, (2, 0), (0, 8))
    assert mazes.shortest_path(maze) == 14
    state = maze.reset(jax.random.PRNGKey(0))
    up, down, left, right = (jax.nn.one_hot(a, 4) for a in range(4))
    assert int(maze.step(state, left).pipeline_state) == maze.cell(2, 0), "the edge holds the agent"
    assert int(maze.step(state, right).pipeline_state) == maze.cell(2, 1)
    beside = state.replace(pipeline_state=jnp.int32(maze.cell(2, 1)))
    assert int(maze.step(beside, right).pipeline_state) == maze.cell(2, 1), "the wall at (2, 2) holds it"
    below_goal = state.replace(pipeline_state=jnp.int32(maze.cell(1, 8)))
    arrived = maze.step(below_goal, up)
    assert float(arrived.reward) == 1.0 and float(arrived.done) == 1.0
    assert int(arrived.pipeline_state) == maze.cell(2, 0), "back at S in the same step"
    assert int(jnp.argmax(arrived.obs)) == maze.cell(2, 0) and int(arrived.info["clock"]) == 1
    # The blocking maze: (3, 8) is open for the world's steps 0 to 999 and a wall from step 1000.
    blocking = mazes.MAZES["blocking_maze"]()
    assert (mazes.shortest_path(blocking), mazes.shortest_path(blocking, after_change=True)) == (10, 16)
    at = blocking.reset(jax.random.PRNGKey(0)).replace(pipeline_state=jnp.int32(blocking.cell(4, 8)))
    for clock, lands in ((999, blocking.cell(3, 8)), (1000, blocking.cell(4, 8))):
        moved = blocking.step(at.replace(info={"clock": jnp.int32(clock)}), up)
        assert int(moved.pipeline_state) == lands, clock
    shortcut = mazes.MAZES["shortcut_maze"]()
    assert (mazes.shortest_path(shortcut), mazes.shortest_path(shortcut, after_change=True)) == (16, 10)


def figure_csv(folder, figure):
    with open(folder / f"figure-{figure}.csv") as file:
        rows = list(csv.reader(file))
    return rows[0], np.array([[float(v) for v in row] for row in rows[1:]])


def test_figure_8_2_planning_finds_the_short_path_in_fewer_episodes(tmp_path):
    """The book's Figure 8.2, cut to 5 seeds and 4000 steps: the first episode is the same for
    every n; then n = 50 is on an epsilon-greedy short path (about 16 steps; 14 is the shortest) by
    episode 3 and n = 5 by about episode 5, while n = 0 still wanders for hundreds of steps."""
    folder = tmp_path / "fig"
    argv = ["--figure", "8.2", "--num-seeds", "5", "--total-steps", "4000", "--run-dir", str(folder)]
    assert dyna_q.main(argv) == 0
    assert (folder / "figure-8.2.png").stat().st_size > 0
    header, table = figure_csv(folder, "8.2")
    assert header == ["episode", "n=0", "n=5", "n=50"]
    first, n0, n5, n50 = table[0, 1:], table[[1, 2, 4], 1], table[[1, 2, 4, 9], 2], table[[1, 2, 4, 9], 3]
    assert first[0] == first[1] == first[2] > 200, first
    assert n50[1:].max() < 25 and n5[0] > n50[0] and n5[2:].max() < 30, (n5, n50)
    assert n0.min() > 100, n0
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["num_seeds"] == 5 and summary["config"]["alpha"] == 0.1


@pytest.mark.slow
def test_figures_8_2_8_4_and_8_5_as_the_book_draws_them(tmp_path):
    """Figure 8.2 whole (30 seeds, 50 episodes): n = 0 reaches the short path only by about
    episode 25, n = 50 by episode 3. Figures 8.4 and 8.5 (10 seeds, not 30): after the walls move,
    Dyna-Q+ gathers reward faster than Dyna-Q; on the blocking maze it finds the new, longer path
    sooner, on the shortcut maze it finds the shortcut, which Dyna-Q (almost) never does."""
    assert dyna_q.main(["--figure", "8.2", "--run-dir", str(tmp_path / "8.2")]) == 0
    assert json.loads((tmp_path / "8.2" / "summary.json").read_text())["unfinished_episodes"] == 0
    _, table = figure_csv(tmp_path / "8.2", "8.2")
    n0, n50 = table[:, 1], table[:, 3]
    assert n0[9] > 40 and n0[24] < 45 and n0[40:].max() < 25 and n50[2:].max() < 25, (n0, n50)
    for figure, change in (("8.4", 1000), ("8.5", 3000)):
        folder = tmp_path / figure
        assert dyna_q.main(["--figure", figure, "--num-seeds", "10", "--run-dir", str(folder)]) == 0
        header, table = figure_csv(folder, figure)
        assert header == ["time_steps", "Dyna-Q", "Dyna-Q+"]
        at_change, end = table[table[:, 0] == change][0], table[-1]
        gained_q, gained_plus = end[1] - at_change[1], end[2] - at_change[2]
        assert gained_plus > 1.25 * gained_q and end[2] > end[1], (figure, at_change, end)


def test_figure_mode_refuses_bad_input_with_one_sentence(tmp_path, capsys):
    for argv, said in (
        (["--figure", "8.3"], "--figure must be one of"),
        (["--figure", "8.2", "--num-seeds", "0"], "num_seeds"),
        (["--figure", "8.2", "--total-steps", "0"], "total_steps"),
    ):
        assert dyna_q.main([*argv, "--run-dir", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and said in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "r").exists()
