"""gymnax's tasks as `gymnax/<id>` (envs/gymnax_bridge.py): the adapter's transitions are gymnax's own,
it compiles and vmaps, MuZero runs on one from the command line, and bad names get one sentence."""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

gymnax = pytest.importorskip("gymnax")

from mbrlax.algorithms import muzero  # noqa: E402
from mbrlax.envs import EnvSpec, gymnax_bridge, make  # noqa: E402

STEPS = 40


def _actions(key, n: int, steps: int = STEPS) -> jax.Array:
    return jax.random.randint(key, (steps,), 0, n)


def _gymnax_reference(env_id: str, key: jax.Array, actions: jax.Array):
    """gymnax's own reset and step, with the key chain the adapter uses: reset with the second half of
    split(key), then at each step key, sub = split(key) and env.step(sub, ...). Per step: the
    transition's observation (before gymnax's own reset), reward and termination."""
    env, params = gymnax.make(env_id)
    key, reset_key = jax.random.split(key)
    obs, state = env.reset(reset_key, params)
    first = np.ravel(obs)
    out = []
    for action in actions:
        key, sub = jax.random.split(key)
        obs, state, reward, terminated, truncated, info = env.step(sub, state, action, params)
        out.append((np.ravel(info["final_observation"]), float(reward), bool(terminated), bool(truncated)))
    return first, out


@pytest.mark.parametrize("env_id", ["Catch-bsuite", "CartPole-v1"])
def test_transitions_equal_gymnax_own_step(env_id):
    task, spec = gymnax_bridge.make("gymnax/" + env_id, EnvSpec)
    key = jax.random.PRNGKey(3)
    actions = _actions(jax.random.PRNGKey(7), spec.action_size)
    first, reference = _gymnax_reference(env_id, key, actions)

    state = task.reset(key)
    np.testing.assert_array_equal(state.obs, first.astype(np.float32))
    step = jax.jit(task.step)
    ended = 0
    for t, (action, (obs, reward, terminated, truncated)) in enumerate(zip(actions, reference)):
        assert not truncated  # gymnax's own limits (500, 1000 steps) are far away
        state = step(state, jax.nn.one_hot(action, spec.action_size))
        np.testing.assert_allclose(state.obs, obs.astype(np.float32), rtol=1e-6, atol=1e-6, err_msg=f"step {t}")
        assert float(state.reward) == reward and bool(state.done) == terminated, t
        # The declared model-side functions give the task's own reward and termination.
        prev = None if t == 0 else reference[t - 1][0]
        assert float(spec.reward_fn(prev, None, state.obs)) == reward
        assert bool(spec.termination_fn(prev, None, state.obs)) == terminated
        if terminated:  # gymnax resets here and the adapter does not (our wrappers do): compare one episode
            ended = t + 1
            break
    assert ended, "the action sequence should end an episode"
    if env_id == "Catch-bsuite":
        assert ended == 9


def test_spec_and_time_limit_follow_gymnax():
    _, catch_spec = make("gymnax/Catch-bsuite")
    assert (catch_spec.observation_size, catch_spec.action_size, catch_spec.discrete) == (50, 3, True)
    assert catch_spec.episode_length == 10 and catch_spec.can_terminate
    env, spec = make("gymnax/CartPole-v1")
    assert (spec.observation_size, spec.action_size, spec.episode_length) == (4, 2, 500)
    _, breakout = make("gymnax/Breakout-MinAtar")
    assert (breakout.observation_size, breakout.action_size, breakout.episode_length) == (400, 3, 1000)
    assert breakout.reward_fn is None and breakout.termination_fn is None
    # A short time limit truncates (not terminates) a balancing pole.
    env, spec = make("gymnax/CartPole-v1", episode_length=3)
    state = env.reset(jax.random.PRNGKey(0))
    for action in (0, 1, 0):
        state = env.step(state, jax.nn.one_hot(action, 2))
    assert float(state.done) == 1.0 and float(state.info["truncation"]) == 1.0


def test_auto_reset_starts_a_fresh_episode():
    env, _ = make("gymnax/Catch-bsuite", auto_reset=True)
    state = env.reset(jax.random.PRNGKey(1))
    step = jax.jit(env.step)
    for _ in range(9):
        state = step(state, jax.nn.one_hot(1, 3))
    assert float(state.done) == 1.0 and float(state.reward) in (-1.0, 1.0)
    final = np.asarray(state.info["final_obs"]).reshape(10, 5)
    board = np.asarray(state.obs).reshape(10, 5)
    assert final[:9].sum() == 0  # the ball has landed in the terminal observation
    assert board[0].sum() == 1 and board[9, 2] == 1 and board.sum() == 2  # a new ball on top, paddle centred


@pytest.mark.parametrize("env_id", ["Catch-bsuite", "CartPole-v1", "Breakout-MinAtar"])
def test_jit_and_vmap_over_keys(env_id):
    task, spec = gymnax_bridge.make("gymnax/" + env_id, EnvSpec)
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    actions = jax.nn.one_hot(jnp.arange(4) % spec.action_size, spec.action_size)

    def rollout(key, action):
        def body(state, _):
            state = task.step(state, action)
            return state, (state.obs, state.reward, state.done)

        return jax.lax.scan(body, task.reset(key), None, length=5)[1]

    batched = jax.jit(jax.vmap(rollout))(keys, actions)
    assert batched[0].shape == (4, 5, spec.observation_size) and batched[0].dtype == jnp.float32
    for i in range(4):
        alone = jax.jit(rollout)(keys[i], actions[i])
        for a, b in zip(alone, batched):
            np.testing.assert_allclose(a, b[i], rtol=1e-6, atol=1e-6)


def test_muzero_tiny_runs_on_gymnax_catch_from_the_cli(tmp_path):
    run = tmp_path / "run"
    argv = ["--env", "gymnax/Catch-bsuite", "--preset", "tiny", "--no-progress", "--run-dir", str(run)]
    assert muzero.main(argv) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert -1.0 <= summary["final_eval_return"] <= 1.0
    assert json.loads((run / "config.json").read_text())["config"]["env"] == "gymnax/Catch-bsuite"


def test_unknown_id_is_one_sentence(capsys, tmp_path):
    with pytest.raises(ValueError, match=r"Unknown environment 'gymnax/NoSuchGame-v0'; gymnax.s are .*gymnax/Catch"):
        make("gymnax/NoSuchGame-v0")
    with pytest.raises(ValueError, match=r"close matches: 'gymnax/Catch-bsuite'"):
        make("gymnax/Catch-bsuit")
    assert muzero.main(["--env", "gymnax/NoSuchGame-v0", "--no-progress", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "gymnax/NoSuchGame-v0" in err and "\n" not in err
    assert not (tmp_path / "r").exists()


def test_continuous_task_where_discrete_is_needed(capsys, tmp_path):
    _, spec = make("gymnax/Pendulum-v1")
    assert not spec.discrete and spec.action_low == (-2.0,) and spec.action_high == (2.0,)
    assert muzero.main(["--env", "gymnax/Pendulum-v1", "--no-progress", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "gymnax/Pendulum-v1" in err and "continuous" in err and "\n" not in err


def test_without_gymnax_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gymnax", None)  # import gymnax raises ImportError
    with pytest.raises(ValueError, match=r"gymnax/Catch-bsuite needs gymnax.*mbrlax\[gymnax\]"):
        make("gymnax/Catch-bsuite")


def test_a_missing_dependency_of_gymnax_is_named(monkeypatch):
    for module in [m for m in sys.modules if m == "gymnax" or m.startswith("gymnax.")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "six", None)  # gymnax 1.0.1 imports six without declaring it
    monkeypatch.setitem(sys.modules, "six.moves", None)
    monkeypatch.setitem(sys.modules, "six.moves.urllib", None)
    monkeypatch.setitem(sys.modules, "six.moves.urllib.request", None)
    with pytest.raises(ValueError, match=r"gymnax/Catch-bsuite: gymnax is installed but .* without 'six': pip install six$"):
        make("gymnax/Catch-bsuite")
