"""Tests of mbrlax.envs: the protocol, the wrappers, and each declared reward/termination function
against the rewards and terminations the environments themselves produce."""

import math

import chex
import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from brax.envs.base import Env, State
from mbrlax.envs import list_envs, make, pixels, wrappers

NUM_ENVS = 4
# Classic runs outlast pendulum's 200-step limit so AutoReset's truncation path runs; 200 Brax steps
# of random actions end the first episode of hopper, walker2d, ant and both inverted pendulums.
STEPS = {"pendulum": 300, "cartpole_swingup": 300, "pendulum_pixels": 300}
BRAX_STEPS = 200
# Spring compiles fastest on CPU (about 25% below generalized, Brax's default); ant and walker2d
# rarely fall under spring with random actions, and the inverted double pendulum's functions need
# exact joint kinematics, so those three keep the default.
BACKEND = {
    "brax/ant": "generalized",
    "brax/ant_goal": "generalized",
    "brax/ant_goal_jaxgcrl": "generalized",
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
            action = jax.random.uniform(k, state.reward.shape + low.shape, minval=low, maxval=high)
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
    obs_shape = spec.image_shape or (spec.observation_size,)
    assert math.prod(obs_shape) == spec.observation_size
    chex.assert_shape(first.obs, (NUM_ENVS, *obs_shape))
    chex.assert_shape([first.reward, first.done, first.info["truncation"]], (NUM_ENVS,))
    chex.assert_shape([traj["obs"], traj["next_obs"], traj["reset_obs"]], (steps, NUM_ENVS, *obs_shape))
    chex.assert_shape(traj["action"], (steps, NUM_ENVS, spec.action_size))
    chex.assert_shape([traj["reward"], traj["done"], traj["truncation"]], (steps, NUM_ENVS))
    chex.assert_type([traj["obs"], traj["next_obs"]], jnp.uint8 if spec.image_shape else jnp.float32)
    chex.assert_type([traj["reward"], traj["done"], traj["truncation"]], jnp.float32)
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


# PIXEL TASKS AND THE DISCRETE CART-POLE


def _rod_rows(image):
    """Rows of the pendulum's red rod pixels (red well above green; white and dark are grey)."""
    image = np.asarray(image, int)
    return np.nonzero(image[..., 0] - image[..., 1] > 60)[0]


def test_rendered_images():
    render_pendulum = jax.jit(pixels.render_pendulum)
    render_cartpole = jax.jit(pixels.render_cartpole)
    up = render_pendulum(jnp.array([0.0, 0.0]))
    chex.assert_shape(up, (64, 64, 3))
    chex.assert_type(up, jnp.uint8)
    np.testing.assert_array_equal(up, render_pendulum(jnp.array([0.0, 0.0])))
    np.testing.assert_array_equal(up, render_pendulum(jnp.array([0.0, 5.0])))  # velocity is not drawn
    assert _rod_rows(up).max() < 36 and _rod_rows(up).min() < 16  # above the pivot (row 32)
    down = render_pendulum(jnp.array([jnp.pi, 0.0]))
    assert _rod_rows(down).min() > 28 and _rod_rows(down).max() > 48
    # A tenth of a degree moves the tip by ~0.04 px: anti-aliasing makes even that visible.
    assert not np.array_equal(up, render_pendulum(jnp.array([0.002, 0.0])))

    # The cart's row (just above the 1 px track at row 40): its dark pixels move right with x.
    def cart_column(x):
        image = render_cartpole(jnp.array([x, 0.0, 0.0, 0.0]))
        chex.assert_shape(image, (64, 64, 3))
        chex.assert_type(image, jnp.uint8)
        darkness = 255.0 - np.asarray(image[39], float).mean(-1)
        return (darkness * np.arange(64)).sum() / darkness.sum()

    columns = [cart_column(x) for x in (-1.5, -0.5, 0.0, 0.03, 0.5, 1.5, 10.0)]
    assert np.all(np.diff(columns[:-1]) > 0), columns
    np.testing.assert_allclose(columns[2], 32.0, atol=0.5)  # x = 0 at the centre
    assert 56 < columns[-1] < 64  # an off-view cart is drawn at the edge
    hanging = np.asarray(render_cartpole(jnp.array([0.0, jnp.pi, 0.0, 0.0])))
    assert not np.array_equal(hanging, render_cartpole(jnp.array([0.0, 0.0, 0.0, 0.0])))
    # batched rendering equals one by one
    states = jnp.array([[0.3, 0.1, 0.0, 0.0], [-0.7, 2.0, 1.0, 1.0]])
    np.testing.assert_array_equal(jax.vmap(pixels.render_cartpole)(states)[1], render_cartpole(states[1]))


@pytest.mark.parametrize("name, render", [("pendulum_pixels", "pendulum"), ("cartpole_swingup_pixels", "cartpole")])
def test_pixel_tasks(name, render):
    env, spec = make(name, num_envs=3, auto_reset=True, episode_length=2)
    assert spec.image_shape == (64, 64, 3) and spec.observation_size == 64 * 64 * 3
    assert spec.reward_fn is None and "learned" in spec.notes and not spec.can_terminate
    render = getattr(pixels, f"render_{render}")

    state = jax.jit(env.reset)(jax.random.PRNGKey(0))
    step = jax.jit(env.step)
    for expect_done in (0.0, 1.0):
        nxt = step(state, jnp.full((3, 1), 0.5))
        for obs in (nxt.obs, nxt.info["final_obs"]):
            chex.assert_shape(obs, (3, 64, 64, 3))
            chex.assert_type(obs, jnp.uint8)
        np.testing.assert_array_equal(nxt.obs, jax.vmap(render)(nxt.pipeline_state))
        np.testing.assert_array_equal(nxt.done, expect_done)
        assert not np.array_equal(nxt.obs, state.obs)
        state = nxt
    # The episode ended: obs is the fresh episode's first image, final_obs the last step's.
    assert not np.array_equal(state.obs, state.info["final_obs"])
    chex.assert_shape(spec.termination_fn(state.obs, jnp.zeros((3, 1)), state.info["final_obs"]), (3,))


def test_cartpole_discrete_matches_gymnasium():
    env, spec = make("cartpole_discrete")
    assert spec.discrete and spec.action_size == 2 and spec.episode_length == 500
    assert spec.action_low == (0.0, 0.0) and spec.action_high == (1.0, 1.0) and spec.can_terminate
    gym_env = gymnasium.make("CartPole-v1").unwrapped
    gym_env.reset(seed=0)
    state = jax.jit(env.reset)(jax.random.PRNGKey(4))
    assert np.all(np.abs(np.asarray(state.obs)) <= 0.05)
    gym_env.state = np.asarray(state.pipeline_state, np.float64)
    step = jax.jit(env.step)
    # Mostly pushing right, so the pole falls within the compared steps.
    choices = np.random.default_rng(0).random(60) < 0.8
    for t, right in enumerate(choices):
        action = jnp.array([0.2, 0.9]) if right else jnp.array([0.6, 0.1])  # argmax decides
        nxt = step(state, action)
        obs, reward, terminated, *_ = gym_env.step(int(right))
        np.testing.assert_allclose(nxt.obs, obs, atol=1e-5, rtol=1e-5)
        assert float(nxt.reward) == reward and float(nxt.done) == float(terminated)
        assert bool(spec.termination_fn(state.obs, action, nxt.obs)) == terminated
        assert float(spec.reward_fn(state.obs, action, nxt.obs)) == reward
        state = nxt
        if terminated:
            break
    assert terminated and 5 < t < 50 and float(state.info["truncation"]) == 0.0


def test_cartpole_continuous_is_cartpole_with_a_scaled_force():
    """mbrl-lib's continuous cart-pole: gymnasium's CartPole-v1 pushed with 10 N x the action."""
    env, spec = make("cartpole_continuous")
    assert spec.action_size == 1 and spec.episode_length == 200 and spec.can_terminate and not spec.discrete
    gym_env = gymnasium.make("CartPole-v1").unwrapped
    gym_env.reset(seed=0)
    state = jax.jit(env.reset)(jax.random.PRNGKey(1))
    gym_env.state = np.asarray(state.pipeline_state, np.float64)
    step = jax.jit(env.step)
    actions = np.random.default_rng(1).uniform(-0.3, 1.5, 80)  # mostly right; past 1 is clipped
    for t, a in enumerate(actions):
        nxt = step(state, jnp.array([a], jnp.float32))
        gym_env.force_mag = 10.0 * min(abs(a), 1.0)
        obs, reward, terminated, *_ = gym_env.step(int(a > 0))
        np.testing.assert_allclose(nxt.obs, obs, atol=1e-5, rtol=1e-5)
        assert float(nxt.reward) == reward and float(nxt.done) == float(terminated)
        assert bool(spec.termination_fn(state.obs, jnp.array([a]), nxt.obs)) == terminated
        state = nxt
        if terminated:
            break
    assert terminated and t > 5


def test_cartpole_discrete_random_episodes_end_early():
    env, spec = make("cartpole_discrete", num_envs=8, auto_reset=True)

    def run(key):
        def body(state, k):
            action = jax.nn.one_hot(jax.random.randint(k, (8,), 0, 2), 2)
            nxt = env.step(state, action)
            terminated = spec.termination_fn(state.obs, action, nxt.info["final_obs"])
            return nxt, (nxt.done, nxt.info["truncation"], terminated)

        return jax.lax.scan(body, env.reset(key), jax.random.split(key, 200))[1]

    done, truncation, terminated = jax.jit(run)(jax.random.PRNGKey(0))
    np.testing.assert_array_equal(np.asarray(terminated), np.asarray(done) > 0)
    assert float(truncation.sum()) == 0.0
    # A random policy balances for ~20 steps (gymnasium's figure); 8 x 200 steps end dozens of episodes.
    assert 30 < float(done.sum()) < 200


def test_ant_goal_jaxgcrl_places_the_goal_at_distance_10():
    """JaxGCRL's Ant (jaxgcrl/envs/ant.py): the goal 10 from the origin at a uniform angle, obs
    (q with torso xy first, qd, goal xy), success within 0.5 of the torso, 1000-step episodes."""
    env, spec = make("brax/ant_goal_jaxgcrl", num_envs=64)
    assert spec.observation_size == 31 and spec.achieved_slice == (0, 2) and spec.goal_slice == (29, 31)
    assert spec.success_radius == 0.5 and spec.episode_length == 1000 and "backend=spring" in spec.notes
    state = jax.jit(env.reset)(jax.random.PRNGKey(0))
    goal, torso = np.asarray(state.obs[:, 29:31]), np.asarray(state.obs[:, :2])
    np.testing.assert_allclose(np.linalg.norm(goal, axis=1), 10.0, rtol=1e-5)
    np.testing.assert_allclose(torso, np.asarray(state.pipeline_state.x.pos[:, 0, :2]), atol=1e-6)
    assert np.abs(torso).max() <= 0.1  # the start: the origin plus Brax's reset noise
    angles = np.arctan2(goal[:, 1], goal[:, 0])
    assert np.histogram(angles, bins=4, range=(-np.pi, np.pi))[0].min() >= 5  # all around the circle
    assert float(state.metrics["success"].max()) == 0.0
    # A goal moved onto the torso is a success after a step; the goal stays where it was put.
    near = state.obs.at[:, 29:31].set(state.obs[:, :2] + 0.1)
    state = state.replace(obs=near, info={**state.info, "goal": near[:, 29:31]})
    nxt = jax.jit(env.step)(state, jnp.zeros((64, spec.action_size)))
    np.testing.assert_array_equal(np.asarray(nxt.obs[:, 29:31]), np.asarray(near[:, 29:31]))
    assert float(nxt.metrics["success"].min()) == 1.0 and float(nxt.reward.min()) == 1.0
