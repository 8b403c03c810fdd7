"""Tests of mbrlax.envs: the protocol, the wrappers, and each declared reward/termination function
against the rewards and terminations the environments themselves produce."""

import chex
import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from brax.envs.base import Env, State
from mbrlax.envs import list_envs, make, wrappers

NUM_ENVS = 4
# Classic runs outlast pendulum's 200-step limit so AutoReset's truncation path runs; 200 Brax steps
# of random actions end the first episode of hopper, walker2d, ant and both inverted pendulums.
STEPS = {"pendulum": 300, "cartpole_swingup": 300}
BRAX_STEPS = 200
# Spring compiles fastest on CPU (about 25% below generalized, Brax's default); ant and walker2d
# rarely fall under spring with random actions, and the inverted double pendulum's functions need
# exact joint kinematics, so those three keep the default.
BACKEND = {
    "brax/ant": "generalized",
    "brax/ant_goal": "generalized",
    "brax/walker2d": "generalized",
    "brax/inverted_double_pendulum": "generalized",
}


def random_rollout(env, spec, key, steps):
    """Jitted reset + scan of uniform random actions; returns the first state and per-step data."""
    low, high = jnp.array(spec.action_low), jnp.array(spec.action_high)

    def run(key):
        k_reset, k_act = jax.random.split(key)
        first = env.reset(k_reset)

        def body(state, k):
            action = jax.random.uniform(k, state.obs.shape[:-1] + low.shape, minval=low, maxval=high)
            nxt = env.step(state, action)
            return nxt, dict(
                obs=state.obs,
                action=action,
                reward=nxt.reward,
                done=nxt.done,
                truncation=nxt.info["truncation"],
                next_obs=nxt.info["final_obs"],
                reset_obs=nxt.obs,
            )

        return first, jax.lax.scan(body, first, jax.random.split(k_act, steps))[1]

    return jax.jit(run)(key)


@pytest.mark.parametrize("name", list_envs())
def test_env_contract(name):
    """Shapes match the spec under jit, and every declared model-side function reproduces the env.

    AutoReset compiles a second physics graph (the reset inside step), so most Brax tasks run
    without it and only the transitions up to each env's first `done` are checked.
    """
    auto_reset = not name.startswith("brax/") or name == "brax/inverted_pendulum"
    options = {"backend": BACKEND.get(name, "spring")} if name.startswith("brax/") else {}
    env, spec = make(name, num_envs=NUM_ENVS, auto_reset=auto_reset, **options)
    assert env.observation_size == spec.observation_size and env.action_size == spec.action_size
    steps = STEPS.get(name, BRAX_STEPS)
    first, traj = random_rollout(env, spec, jax.random.PRNGKey(0), steps)
    chex.assert_shape(first.obs, (NUM_ENVS, spec.observation_size))
    chex.assert_shape([first.reward, first.done, first.info["truncation"]], (NUM_ENVS,))
    chex.assert_shape([traj["obs"], traj["next_obs"], traj["reset_obs"]], (steps, NUM_ENVS, spec.observation_size))
    chex.assert_shape(traj["action"], (steps, NUM_ENVS, spec.action_size))
    chex.assert_shape([traj["reward"], traj["done"], traj["truncation"]], (steps, NUM_ENVS))
    chex.assert_type([traj["obs"], traj["reward"], traj["done"], traj["truncation"]], jnp.float32)
    chex.assert_tree_all_finite(traj)
    done = np.asarray(traj["done"]) > 0
    # Untouched by AutoReset unless the step ended an episode.
    np.testing.assert_array_equal(np.asarray(traj["next_obs"])[~done], np.asarray(traj["reset_obs"])[~done])
    valid = np.ones_like(done) if auto_reset else (np.cumsum(done, 0) - done) == 0

    termination = (traj["done"] * (1.0 - traj["truncation"]))[valid]
    assert bool(jnp.all(traj["truncation"] <= traj["done"]))
    args = (traj["obs"], traj["action"], traj["next_obs"])
    if spec.termination_fn is not None:
        predicted = spec.termination_fn(*args)
        chex.assert_shape(predicted, (steps, NUM_ENVS))
        np.testing.assert_array_equal(np.asarray(predicted)[valid], np.asarray(termination) > 0)
        # Non-vacuous: tasks that can terminate did so in these rollouts.
        assert spec.can_terminate == bool(termination.sum() > 0), f"{termination.sum()} terminations"
    if spec.reward_fn is not None:
        predicted = spec.reward_fn(*args)
        chex.assert_shape(predicted, (steps, NUM_ENVS))
        np.testing.assert_allclose(
            np.asarray(predicted)[valid], np.asarray(traj["reward"])[valid], rtol=1e-4, atol=1e-4
        )
        grad = jax.grad(lambda a: spec.reward_fn(args[0][0], a, args[2][0]).sum())(args[1][0])
        chex.assert_tree_all_finite(grad)
    else:
        assert "learned" in spec.notes


def test_pendulum_matches_gymnasium():
    env, _ = make("pendulum")
    gym_env = gymnasium.make("Pendulum-v1").unwrapped
    gym_env.reset(seed=0)
    state = jax.jit(env.reset)(jax.random.PRNGKey(3))
    gym_env.state = np.asarray(state.pipeline_state, np.float64)
    actions = np.random.default_rng(0).uniform(-2.5, 2.5, size=(200, 1)).astype(np.float32)
    step = jax.jit(env.step)
    for action in actions:
        state = step(state, jnp.asarray(action))
        obs, reward, *_ = gym_env.step(action)
        np.testing.assert_allclose(state.obs, obs, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(state.reward, reward, atol=1e-5, rtol=1e-5)
    assert float(state.done) == 1.0 and float(state.info["truncation"]) == 1.0


def test_truncation_is_not_termination():
    env, spec = make("pendulum")
    assert spec.episode_length == 200 and not spec.can_terminate

    def run(key):
        def body(state, _):
            state = env.step(state, jnp.ones(1))
            return state, (state.done, state.info["truncation"], state.info["steps"])

        return jax.lax.scan(body, env.reset(key), None, length=200)[1]

    done, truncation, steps = jax.jit(run)(jax.random.PRNGKey(0))
    assert float(done[:-1].sum()) == 0.0 and float(done[-1]) == 1.0
    assert float(truncation[-1]) == 1.0 and float(done[-1] * (1 - truncation[-1])) == 0.0
    assert int(steps[-1]) == 200


class _Countdown(Env):
    """Terminates on its third step; reward = step index (1, 2, 3, ...)."""

    def reset(self, rng):
        zero = jnp.zeros(())
        return State(pipeline_state=zero, obs=jnp.zeros(1), reward=zero, done=zero)

    def step(self, state, action):
        t = state.pipeline_state + 1
        return state.replace(pipeline_state=t, obs=t[None], reward=t, done=(t >= 3).astype(float))

    observation_size, action_size, backend = 1, 1, "test"


def test_termination_at_time_limit_is_not_truncation():
    """When the task terminates on the time limit's last step, it is a termination."""
    env = wrappers.TimeLimit(_Countdown(), episode_length=3)
    state = env.reset(jax.random.PRNGKey(0))
    for _ in range(3):
        state = env.step(state, jnp.zeros(1))
    assert float(state.done) == 1.0 and float(state.info["truncation"]) == 0.0


def test_action_repeat_sums_rewards_and_stops_at_termination():
    env = wrappers.ActionRepeat(wrappers.TimeLimit(_Countdown(), episode_length=100), repeat=2)
    state = env.step(env.reset(jax.random.PRNGKey(0)), jnp.zeros(1))
    assert float(state.reward) == 1 + 2 and float(state.done) == 0.0
    state = env.step(state, jnp.zeros(1))  # terminates after one of the two repeats
    assert float(state.reward) == 3 and float(state.done) == 1.0 and float(state.obs[0]) == 3

    repeated, spec = make("pendulum", action_repeat=3)
    single, _ = make("pendulum")
    assert spec.reward_fn is None and "action_repeat" in spec.notes and spec.episode_length == 67
    key, action = jax.random.PRNGKey(1), jnp.array([0.7])
    s_rep, s_one = repeated.reset(key), single.reset(key)
    s_rep = repeated.step(s_rep, action)
    total = 0.0
    for _ in range(3):
        s_one = single.step(s_one, action)
        total += float(s_one.reward)
    np.testing.assert_allclose(s_rep.reward, total, rtol=1e-6)
    np.testing.assert_allclose(s_rep.obs, s_one.obs, rtol=1e-6)


def test_resets_differ_across_keys():
    env, _ = make("cartpole_swingup")
    a, b = env.reset(jax.random.PRNGKey(0)), env.reset(jax.random.PRNGKey(1))
    assert not np.allclose(a.obs, b.obs)
    assert float(a.obs[1]) < -0.99  # hanging down
    env, _ = make("pendulum", num_envs=5)
    obs = env.reset(jax.random.PRNGKey(0)).obs
    assert len(np.unique(np.asarray(obs[:, 0]))) == 5


def test_auto_reset_draws_fresh_states_and_keeps_final_obs():
    env, _ = make("pendulum", episode_length=3, auto_reset=True)
    task = env.unwrapped

    def run(key):
        def body(state, _):
            action = jnp.array([1.0])
            true_next = task.step(state, action).obs  # the bare task, no reset
            state = env.step(state, action)
            return state, (state.obs, state.done, state.info["final_obs"], true_next, state.info["steps"])

        first = env.reset(key)
        return first.obs, jax.lax.scan(body, first, None, length=12)[1]

    first_obs, (obs, done, final_obs, true_next, steps) = jax.jit(run)(jax.random.PRNGKey(0))
    np.testing.assert_array_equal(np.asarray(done), np.tile([0, 0, 1], 4))
    np.testing.assert_array_equal(np.asarray(steps), np.tile([1, 2, 0], 4))
    np.testing.assert_array_equal(final_obs, true_next)
    starts = np.concatenate([np.asarray(first_obs)[None], np.asarray(obs)[done > 0]])
    assert len(np.unique(starts[:, 0])) == len(starts) == 5, starts  # no start state repeats
    assert not np.allclose(final_obs[done > 0], obs[done > 0])


def test_unknown_names_and_options():
    with pytest.raises(ValueError, match="'pendulum'.*list_envs"):
        make("pendulm")
    with pytest.raises(ValueError, match="brax/hopper"):
        make("hopper")
    with pytest.raises(ValueError, match="gravity"):
        make("pendulum", gravity=3.0)
    with pytest.raises(ValueError, match="episode_length"):
        make("pendulum", episode_length=0)
    with pytest.raises(ValueError, match="backend"):
        make("brax/reacher", backend="bullet")
    assert list_envs() == sorted(list_envs()) and "brax/ant" in list_envs()
