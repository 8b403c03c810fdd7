"""MuZero's pieces by hand: the value transform and its inverse, the two-hot projection, the n-step
targets against a Python loop, the masks past an episode's end, the unroll's gradient scaling, a
search through a known toy model, prioritised windows, Reanalyse's targets, bsuite's Catch; and a
short learning run on Catch. (The CLI run, resume and bad input: tests/test_contract.py and tests/test_bad_inputs.py.)"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mbrlax.algorithms import muzero

from mbrlax import buffer as replay
from mbrlax.envs import catch
from mbrlax.training import ConfigError

TINY = dataclasses.replace(muzero.Config(), **muzero.VARIANTS["tiny"])


def test_value_transform_by_hand_and_its_inverse():
    # h(3) = (2 - 1) + 0.003, h(-8) = -(3 - 1) - 0.008, h(0) = 0.
    np.testing.assert_allclose(muzero.value_transform(jnp.array([3.0, -8.0, 0.0])), [1.003, -2.008, 0.0], rtol=1e-6)
    x = jnp.array([-5000.0, -37.5, -1.0, -0.01, 0.0, 0.3, 1.0, 12.0, 333.0, 5000.0])
    np.testing.assert_allclose(muzero.inverse_value_transform(muzero.value_transform(x)), x, rtol=1e-4, atol=1e-4)


def test_two_hot_splits_the_mass_between_the_neighbouring_atoms():
    # 2.3 on -5..5: 0.7 on atom 2 (index 7) and 0.3 on atom 3 (index 8).
    probs = np.asarray(muzero.two_hot(jnp.array([2.3, -1.0, 9.0]), 5))
    expected = np.zeros((3, 11))
    expected[0, 7], expected[0, 8] = 0.7, 0.3
    expected[1, 4] = 1.0
    expected[2, 10] = 1.0  # clipped to the support's top
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    # A prediction equal to the projection of h(x) reads back as x.
    x = jnp.array([-20.0, -1.0, 0.0, 0.5, 7.0, 40.0])
    logits = jnp.log(muzero.scalar_target(x, 10) + 1e-30)
    np.testing.assert_allclose(muzero.to_scalar(logits), x, rtol=1e-4, atol=1e-4)


def n_step_reference(rewards, terminated, ended, next_values, discount, n, positions):
    """z_k by walking forward from row k: rewards until n steps or the episode's end; then the
    value of the next observation, unless the end was a termination."""
    out = np.zeros(positions)
    for k in range(positions):
        total = 0.0
        for i in range(n):
            j = k + i
            total += discount**i * rewards[j]
            if ended[j] or i == n - 1:
                if not terminated[j]:
                    total += discount ** (i + 1) * next_values[j]
                break
        out[k] = total
    return out


def test_n_step_values_match_a_python_loop():
    rng = np.random.default_rng(0)
    positions, n, discount = 6, 4, 0.9
    rows = positions + n - 1
    for _ in range(20):
        rewards, next_values = rng.normal(size=rows), rng.normal(size=rows)
        ended = (rng.uniform(size=rows) < 0.25).astype(np.float32)
        terminated = ended * (rng.uniform(size=rows) < 0.5)
        got = muzero.n_step_values(
            jnp.asarray(rewards[None]), jnp.asarray(terminated[None]), jnp.asarray(ended[None]),
            jnp.asarray(next_values[None]), discount, n, positions,
        )  # fmt: skip
        want = n_step_reference(rewards, terminated, ended, next_values, discount, n, positions)
        np.testing.assert_allclose(np.asarray(got)[0], want, rtol=1e-5, atol=1e-5)


def test_positions_past_a_termination_are_absorbing_and_past_a_time_limit_unknown():
    ended = jnp.array([[0.0, 1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0]])
    terminated = jnp.array([[0.0, 1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    alive, known = muzero.unroll_masks(terminated, ended, 4)
    np.testing.assert_array_equal(alive, [[1, 1, 0, 0], [1, 1, 0, 0]])
    np.testing.assert_array_equal(known, [[1, 1, 1, 1], [1, 1, 0, 0]])


def toy_model(num_actions: int = 3):
    """h(o) = o; g(s, a) = (s + a, reward logits of s); f(s) = (logits s, value logits s)."""
    represent = lambda o: o  # noqa: E731
    dynamics = lambda s, a: (s + a[:, None].astype(jnp.float32), s)  # noqa: E731
    predict = lambda s: (s[:, :num_actions], s)  # noqa: E731
    return represent, dynamics, predict


def test_the_unroll_halves_the_gradient_entering_each_dynamics_step():
    """With g(s, a) = s + a, v^k = s^0 + sum a in the forward pass, and d v^k / d o = 1, 1, 0.5, 0.25,
    ...: s^k's own predictions see the full gradient, the next dynamics step half (the pseudocode)."""
    observation, actions = jnp.ones((1, 3)), jnp.ones((1, 4), jnp.int32)
    _, values, _ = muzero.unroll(*toy_model(), observation, actions)
    np.testing.assert_allclose(values[0, :, 0], [1, 2, 3, 4, 5])
    for k, scale in enumerate([1.0, 1.0, 0.5, 0.25, 0.125]):
        grad = jax.grad(lambda o, k=k: muzero.unroll(*toy_model(), o, actions)[1][0, k, 0])(observation)
        np.testing.assert_allclose(grad[0, 0], scale, rtol=1e-6)


def test_the_unrolled_steps_losses_have_their_gradient_scaled_by_one_over_k():
    K, atoms, actions = 4, 7, 2
    key = jax.random.PRNGKey(0)
    policy_logits = jax.random.normal(key, (1, K + 1, actions))
    reward_logits = jnp.zeros((1, K, atoms))
    targets = dict(
        policy=jnp.full((1, K + 1, actions), 0.5), value=jnp.arange(K + 1.0)[None], reward=jnp.zeros((1, K)),
        policy_mask=jnp.ones((1, K + 1)), known=jnp.ones((1, K + 1)),
    )  # fmt: skip

    def loss(value_logits):
        return muzero.muzero_loss(policy_logits, value_logits, reward_logits, targets, 1.0)[0]

    value_logits = jnp.zeros((1, K + 1, atoms))
    grad = jax.grad(loss)(value_logits)[0]
    # d CE / d logits = softmax - target, each step's own; scaled by 1 at k = 0 and 1/K after.
    target = muzero.scalar_target(targets["value"][0], 3)
    plain = jax.nn.softmax(value_logits[0]) - target
    np.testing.assert_allclose(grad[0], plain[0], atol=1e-6)
    np.testing.assert_allclose(grad[1:], plain[1:] / K, atol=1e-6)
    # The forward value is the plain sum over the steps.
    unscaled = sum(
        float(jax.nn.logsumexp(value_logits[0, k]) - (target[k] * value_logits[0, k]).sum()) for k in range(K + 1)
    )
    parts = muzero.muzero_loss(policy_logits, value_logits, reward_logits, targets, 1.0)[0]
    policy_ce = float(-(targets["policy"][0] * jax.nn.log_softmax(policy_logits[0])).sum())
    reward_ce = K * float(jnp.log(atoms) - 0.0)  # uniform prediction against atom 0
    np.testing.assert_allclose(parts, unscaled + policy_ce + reward_ce, rtol=1e-5)


@pytest.mark.parametrize("search, simulations", [("puct", 32), ("gumbel", 8)])
def test_search_through_a_known_model_picks_the_rewarding_action(search, simulations):
    """A one-state model with three actions and uniform prior and zero values: only action 2 is
    rewarded (1, in h-space 0.415, which the reward logits put all their mass on)."""
    support = 3
    config = dataclasses.replace(TINY, search=search, discount=0.9)

    def represent(o):
        return o

    def dynamics(s, a):
        reward = jnp.where(a == 2, 1.0, 0.0)
        return s, jnp.log(muzero.scalar_target(reward, support) + 1e-30)

    def predict(s):
        zero_value = jnp.log(muzero.scalar_target(jnp.zeros(s.shape[0]), support) + 1e-30)
        return jnp.zeros((s.shape[0], 3)), zero_value

    observation = jnp.zeros((4, 2))
    for explore in (False, True):
        action, policy, _ = muzero.search_actions(
            (represent, dynamics, predict), observation, jax.random.PRNGKey(0), config,
            simulations=simulations, explore=explore,
        )  # fmt: skip
        assert np.all(np.asarray(jnp.argmax(policy, axis=-1)) == 2), policy
        if not explore:
            assert np.all(np.asarray(action) == 2), action


def test_prioritised_windows_follow_the_priorities_and_stay_inside_the_data():
    example = dict(x=jnp.float32(0.0))
    buffer = replay.init_trajectories(example, 8, 2)
    for t in range(6):  # rows 0..5 stored; windows of 3 may start at rows 0..3
        buffer = replay.add_step(buffer, dict(x=jnp.array([t, 10.0 + t])), jnp.zeros(2, jnp.int32))
    priority = jnp.zeros((8, 2)).at[1, 0].set(3.0).at[3, 1].set(1.0).at[5, 0].set(100.0)  # row 5: no room
    windows, (rows, envs), probability = replay.sample_sequences_by_priority(
        buffer, jax.random.PRNGKey(0), 4000, 3, priority, 1.0
    )
    starts = set(zip(np.asarray(rows).tolist(), np.asarray(envs).tolist()))
    assert starts == {(1, 0), (3, 1)}
    share = float(np.mean((np.asarray(rows) == 1)))
    assert abs(share - 0.75) < 0.03, share
    np.testing.assert_allclose(np.asarray(probability)[np.asarray(rows) == 1], 0.75, rtol=1e-6)
    first = np.asarray(windows["x"])[np.asarray(rows) == 1][0]
    np.testing.assert_array_equal(first, [1, 2, 3])


def test_reanalyse_replaces_the_policy_targets_of_the_first_windows_by_a_new_search():
    config = dataclasses.replace(TINY, reanalyse_fraction=0.5, batch_size=4, unroll_steps=2)
    net = muzero.MuZeroNet(2, config.support_size, width=8, latent_size=4)
    window = dict(obs=jax.random.normal(jax.random.PRNGKey(0), (4, 5, 3)))
    params = net.init(jax.random.PRNGKey(1), window["obs"][:, 0], jnp.zeros(4, jnp.int32))
    stored = jnp.full((4, 3, 2), 0.5)
    targets = muzero.reanalyse(net, params, window, dict(policy=stored), jax.random.PRNGKey(2), config)
    model = muzero.model_functions(net, params)
    flat = window["obs"][:2, :3].reshape(6, 3)
    _, fresh, _ = muzero.search_actions(model, flat, jax.random.PRNGKey(2), config, simulations=4, explore=True)
    np.testing.assert_allclose(targets["policy"][:2], np.asarray(fresh).reshape(2, 3, 2), rtol=1e-6)
    np.testing.assert_array_equal(targets["policy"][2:], stored[2:])
    assert not np.allclose(np.asarray(targets["policy"][:2]), 0.5)
    none = dataclasses.replace(config, reanalyse_fraction=0.0)
    assert muzero.reanalyse(net, params, window, dict(policy=stored), jax.random.PRNGKey(2), none)["policy"] is stored


def test_catch_by_hand():
    env = catch.Catch()
    state = env.reset(jax.random.PRNGKey(3))
    column = int(state.pipeline_state[1])
    board = np.asarray(state.obs).reshape(catch.ROWS, catch.COLUMNS)
    assert board[0, column] == 1 and board[-1, 2] == 1 and board.sum() == 2
    move = [1.0, 0.0, 0.0] if column < 2 else [0.0, 0.0, 1.0]  # towards the ball, then stay
    rewards = []
    for _ in range(9):
        paddle = int(state.pipeline_state[2])
        state = env.step(state, jnp.array(move if paddle != column else [0.0, 1.0, 0.0]))
        rewards.append(float(state.reward))
    assert rewards == [0.0] * 8 + [1.0] and float(state.done) == 1.0
    assert float(catch.catch_reward(None, None, state.obs)) == 1.0


def test_a_continuous_task_and_a_pixel_task_are_refused():
    with pytest.raises(ConfigError, match="continuous action space"):
        muzero.make_train(dataclasses.replace(TINY, env="pendulum"))
    with pytest.raises(ConfigError, match="initial_steps"):
        dataclasses.replace(TINY, initial_steps=10).validate()


@pytest.mark.slow
def test_muzero_learns_catch():
    """The catch preset (16,384 steps, PUCT with 50 simulations, seed 0): the mean return of 32
    evaluation episodes at the end is at least 0.5, where a uniformly random paddle averages -0.59
    (benchmarks/RESULTS.md); the command line's three seeds all end at 1.0."""
    config = dataclasses.replace(muzero.Config(), **muzero.TASKS["catch"])
    _, metrics = jax.jit(muzero.make_train(config))(jax.random.PRNGKey(0), config)
    final = float(np.asarray(metrics["eval"]["eval_return"])[-1])
    assert final >= 0.5, np.asarray(metrics["eval"]["eval_return"])
