"""MBPO's parts against simple references (the rollout-length schedule against the paper's code,
branched rollouts stopping at termination with a stub model, the real/imagined batch mix), then the
whole loop: the model buffer's contents after real updates, MBPO's own bad inputs, and a Brax task
with a termination function and a learned reward. The guarantees every algorithm gives (CLI run,
resume, determinism, vmap) are tests/test_contract.py's."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mbrlax.algorithms import mbpo

from mbrlax import buffer as replay
from mbrlax.loops import dyna
from mbrlax.training import ConfigError

# The tiny preset: 4 updates of 100 steps after 200 random ones, 2 evaluations (other test files use it too).
TINY = dataclasses.replace(mbpo.Config(), **mbpo.VARIANTS["tiny"])
TINY_ARGS = ["--preset", "tiny", "--no-progress"]



# ROLLOUT SCHEDULE


def paper_rollout_length(epoch: int, schedule) -> int:
    """`_set_rollout_length` of the paper's code (jannerm/mbpo, mbpo/algorithms/mbpo.py), in exact
    arithmetic: k_a up to epoch_a, then linear, capped at k_b from epoch_b on, truncated to an integer."""
    epoch_a, epoch_b, k_a, k_b = schedule
    if epoch <= epoch_a:
        return k_a
    progress = min(Fraction(epoch - epoch_a, max(epoch_b - epoch_a, 1)), Fraction(1))
    return int(k_a + progress * (k_b - k_a))


@pytest.mark.parametrize(
    "schedule",
    [
        (0, 1, 1, 3),  # the tiny preset
        (0, 2, 1, 5),  # the default (pendulum)
        (20, 150, 1, 15),  # hopper, the authors' examples/config/hopper/0.py
        (20, 100, 1, 25),  # ant, the authors' examples/config/ant/0.py
        (20, 100, 1, 15),
        (3, 3, 2, 6),  # a step at epoch 3
        (1, 7, 9, 2),  # shrinking
    ],
)
def test_rollout_length_follows_the_papers_rule(schedule):
    epochs = np.arange(0, 400)
    got = np.asarray(jax.jit(lambda e: dyna.rollout_length(e, schedule))(jnp.asarray(epochs, jnp.int32)))
    np.testing.assert_array_equal(got, [paper_rollout_length(int(e), schedule) for e in epochs])


@pytest.mark.parametrize(
    "schedule, by_hand",
    [
        # 1 + 14 (epoch - 20) / 130, truncated: 1 at epoch 21 (1.11), 2 at 30 (2.08), 8 at 85, 14 at 149 (14.89).
        ((20, 150, 1, 15), {0: 1, 20: 1, 21: 1, 30: 2, 85: 8, 149: 14, 150: 15, 249: 15}),
        # 1 + 14 (epoch - 20) / 80: 1.175 at 21, 2.75 at 30, 8 at 60, 14.825 at 99.
        ((20, 100, 1, 15), {0: 1, 20: 1, 21: 1, 30: 2, 60: 8, 99: 14, 100: 15, 300: 15}),
    ],
)
def test_rollout_length_by_hand(schedule, by_hand):
    for epoch, k in by_hand.items():
        assert int(dyna.rollout_length(jnp.int32(epoch), schedule)) == k, epoch


# BRANCHED ROLLOUTS, with a stub model: the state counts up by one a step, and a rollout ends when it
# reaches END. Start states 0..4, so a rollout from s ends at its step END - s (counting from 1).

END = 5


def count_up(obs, action, key):
    return obs + 1.0, 10.0 * obs[:, 0]


def reaches_end(obs, action, next_obs):
    return next_obs[:, 0] >= END


def zero_policy(obs, key):
    return jnp.zeros((obs.shape[0], 1)), jnp.zeros(obs.shape[0])


def real_buffer_of_starts():
    starts = jnp.arange(END, dtype=jnp.float32)[:, None]
    example = {"obs": starts[0], "action": jnp.zeros(1), "reward": 0.0, "next_obs": starts[0], "terminated": 0.0}
    example = jax.tree_util.tree_map(jnp.asarray, example)
    batch = {"obs": starts, "action": jnp.zeros((END, 1)), "reward": jnp.zeros(END), "next_obs": starts + 1}
    return replay.add(replay.init(example, END), dict(batch, terminated=jnp.zeros(END))), example


@pytest.mark.parametrize("can_terminate", [True, False])
def test_branched_rollouts_stop_at_termination(can_terminate):
    """Each rollout keeps its steps up to and including its first termination, nothing after it; a
    task that never terminates keeps all k steps of every rollout."""
    real, example = real_buffer_of_starts()
    n, k = 64, 4
    termination = reaches_end if can_terminate else (lambda obs, action, next_obs: jnp.zeros(obs.shape[0], bool))
    empty = replay.init(example, n * k)
    options = dict(length=jnp.int32(k), batch_size=n, can_terminate=can_terminate)
    model_buffer, alive = jax.jit(
        lambda key: dyna.branched_rollouts(zero_policy, count_up, termination, real, empty, key, **options)
    )(jax.random.PRNGKey(0))
    count = int(model_buffer.count)
    data = jax.tree_util.tree_map(lambda x: np.asarray(x[:count]), model_buffer.data)
    starts = data["obs"][:n, 0]  # every rollout is alive at its first step, so those come first
    assert set(starts) <= set(range(END)) and len(set(starts)) > 2
    np.testing.assert_array_equal(data["next_obs"], data["obs"] + 1)
    np.testing.assert_array_equal(data["reward"], 10.0 * data["obs"][:, 0])
    if not can_terminate:
        assert count == n * k and float(alive) == 1.0 and not data["terminated"].any()
        return
    kept = np.minimum(k, END - starts)  # steps up to and including the one that reaches END
    assert count == kept.sum()
    # Nothing continues past the end: no stored step starts at END, and exactly the steps that reach it
    # are marked terminated, one for each rollout that ended within k steps.
    assert data["obs"].max() < END
    np.testing.assert_array_equal(data["terminated"], data["next_obs"][:, 0] >= END)
    assert data["terminated"].sum() == (starts + k >= END).sum()
    np.testing.assert_allclose(float(alive), (starts + k < END).mean())
    # Step t's rows are the rollouts still alive at step t, in order, packed one after another.
    offset = 0
    for t in range(k):
        alive_at_t = starts + t < END
        rows = data["obs"][offset : offset + alive_at_t.sum(), 0]
        np.testing.assert_array_equal(rows, starts[alive_at_t] + t)
        offset += alive_at_t.sum()


# TRAINING BATCHES


def test_training_batch_puts_the_real_share_first_and_reads_only_the_retained_rollouts():
    """The paper's code takes int(batch_size x real_ratio) real rows, then model rows (`_training_batch`);
    here the model rows come from the newest `retained` only: older rollouts (reward -1) never appear."""
    example = {"obs": jnp.zeros(2), "action": jnp.zeros(1), "reward": jnp.float32(0), "next_obs": jnp.zeros(2)}

    def filled(reward, size):
        rows = jax.tree_util.tree_map(lambda x: jnp.zeros((size,) + x.shape), example)
        return dict(rows, reward=jnp.full(size, reward, jnp.float32))

    real = replay.add(replay.init(example, 50), filled(1.0, 30))
    model = replay.add(replay.init(example, 100), filled(-1.0, 60))
    model = replay.add(model, filled(2.0, 20))
    key = jax.random.PRNGKey(1)
    batch_of = jax.jit(lambda ratio, retained: dyna.training_batch(real, model, key, 256, ratio, retained))
    for ratio, real_rows in ((0.05, 12), (0.25, 64), (0.0, 0), (1.0, 256)):
        reward = np.asarray(batch_of(jnp.float32(ratio), jnp.int32(20))["reward"])
        np.testing.assert_array_equal(reward[:real_rows], 1.0)
        np.testing.assert_array_equal(reward[real_rows:], 2.0)
    all_real = dyna.training_batch(real, None, key, 256, jnp.float32(0.05), None)
    np.testing.assert_array_equal(all_real["reward"], 1.0)


# THE LOOP


def test_model_buffer_holds_only_the_alive_imagined_steps():
    """Pendulum never terminates, so every rollout lives k steps: after an update with k = 1 the model
    buffer holds rollout_batch_size transitions, after one with k = 3 another 3 x rollout_batch_size,
    packed step after step, each step starting where the previous one ended, from real start states."""
    trainer = mbpo.make_train(TINY)
    init = jax.jit(trainer.init)
    update = jax.jit(trainer.update)
    state = init(jax.random.PRNGKey(0), TINY)
    assert int(state.model_buffer.count) == 0 and int(state.buffer.count) == TINY.initial_steps
    n = TINY.rollout_batch_size
    capacity = state.model_buffer.capacity
    assert capacity == n * (TINY.epoch_length // TINY.model_train_freq) * 3  # rollouts per epoch x k_max

    state, metrics = update(state, TINY, jnp.int32(0))
    assert int(metrics["rollout_length"]) == 1 and float(metrics["rollouts_alive"]) == 1.0
    assert int(state.model_buffer.count) == n and int(state.model_buffer.position) == n
    assert int(state.buffer.count) == TINY.initial_steps + TINY.model_train_freq
    first = jax.tree_util.tree_map(lambda x: np.asarray(x[:n]), state.model_buffer.data)

    state, metrics = update(state, TINY, jnp.int32(2))  # epoch 1: k = 3
    assert int(metrics["rollout_length"]) == 3
    assert int(state.model_buffer.count) == 4 * n and int(state.model_buffer.position) == 4 * n
    data = jax.tree_util.tree_map(np.asarray, state.model_buffer.data)
    # The first round is untouched and nothing was written past the newest round.
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.tree_util.tree_map(lambda x: x[:n], data), first)
    assert not np.any(data["obs"][4 * n :]) and not np.any(data["next_obs"][4 * n :])
    assert not np.any(data["terminated"][: 4 * n])
    steps = [jax.tree_util.tree_map(lambda x, t=t: x[(1 + t) * n : (2 + t) * n], data) for t in range(3)]
    for t in range(2):
        np.testing.assert_array_equal(steps[t]["next_obs"], steps[t + 1]["obs"])
    # Start states are real states; the next states are the model's, never the real next states.
    real = jax.tree_util.tree_map(lambda x: np.asarray(x[: int(state.buffer.count)]), state.buffer.data)
    real_obs = {tuple(row) for row in real["obs"]}
    assert all(tuple(row) in real_obs for row in steps[0]["obs"])
    real_next = {tuple(row) for row in real["next_obs"]}
    assert not any(tuple(row) in real_next for row in steps[0]["next_obs"])
    assert np.all(np.abs(data["action"][: 4 * n]) <= 1.0)


@pytest.mark.parametrize(
    "extra, message",
    [
        # (tests/test_bad_inputs.py has the rest: real_ratio, tau, num_elites, a backwards schedule.)
        (["--rollout-schedule", "0", "1", "0", "3"], "at least 1"),
        # Under the spring backend this task has no termination function (its kinematics are inexact).
        (["--env", "brax/inverted_double_pendulum", "--backend", "spring"], "termination function"),
        (["--sweep", "updates_per_step=1,x"], "type int"),
        (["--env", "cartpole_discrete"], "MBPO takes continuous actions; cartpole_discrete has a discrete action"),
        (["--env", "pendulum_pixels"], "MBPO takes vector observations; pendulum_pixels's observations are images"),
    ],
)
def test_bad_input_exits_2_with_one_sentence(extra, message, capsys, tmp_path):
    code = mbpo.main(TINY_ARGS + extra + ["--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_model_period_longer_than_an_epoch_is_a_config_error():
    """The model buffer keeps whole epochs of rollouts; a period longer than an epoch would leave it
    smaller than one round of rollouts."""
    config = dataclasses.replace(TINY, epoch_length=50, rollout_schedule=(0, 1, 1, 1))
    with pytest.raises(ConfigError):
        mbpo.make_train(config)


def test_brax_hopper_with_termination_and_learned_reward():
    """The Brax path (compiles in ~50 s): a terminating task whose reward the model learns and whose
    termination function cuts the rollouts."""
    config = dataclasses.replace(
        TINY, env="brax/hopper", backend="spring", episode_length=20, total_steps=400, rollout_schedule=(0, 1, 2, 2)
    )
    state, metrics = jax.jit(mbpo.make_train(config))(jax.random.PRNGKey(0), config)
    for name, value in {**metrics["train"], **metrics["eval"]}.items():
        assert np.isfinite(np.asarray(value)).all(), name
    # The model predicts the 11-dim state delta and the reward.
    assert state.model.target_mean.shape == (12,)
    alive = np.asarray(metrics["train"]["rollouts_alive"])
    assert ((alive >= 0) & (alive <= 1)).all()
    # Stored imagined transitions: at most k per rollout, at least one (the first step is always stored).
    assert config.rollout_batch_size <= int(state.model_buffer.count) <= 2 * 2 * config.rollout_batch_size
    # Hopper's reward is about 1 a step while healthy; 20-step episodes.
    returns = np.asarray(metrics["eval"]["eval_return"])
    assert ((returns > 0) & (returns < 40)).all(), returns
