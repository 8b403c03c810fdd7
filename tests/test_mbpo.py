"""MBPO end to end (not the learning test): the rollout-length schedule, vmap over seeds and a traced
hyperparameter, the SAC-only mode, the model buffer's contents, bad input, the run folder and resume,
and a Brax task with a termination function and a learned reward."""

from __future__ import annotations

import dataclasses
import json
import shutil
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import cli_args
from mbrlax.algorithms import mbpo

from mbrlax.training import ConfigError

# A tiny configuration: 4 updates of 100 steps after 200 random ones, 2 evaluations. Compiles in ~20 s.
TINY = mbpo.Config(
    env="pendulum",
    total_steps=600,
    initial_steps=200,
    model_train_freq=100,
    epoch_length=200,
    rollout_batch_size=64,
    rollout_schedule=(0, 1, 1, 3),
    updates_per_step=2,
    ensemble_size=3,
    num_elites=2,
    model_hidden_sizes=(16, 16),
    model_max_epochs=3,
    sac_hidden_sizes=(16, 16),
    sac_batch_size=32,
    eval_every=200,
    eval_episodes=2,
    episode_length=50,
)


TINY_ARGS = cli_args(TINY) + ["--no-progress"]


def hparams_for(config, runs: int | None = None):
    values = {k: jnp.float32(getattr(config, k)) for k in mbpo.Config.SWEEPABLE}
    if runs is None:
        return values
    return {k: jnp.full((runs,), v) for k, v in values.items()}


def _paper_rollout_length(config, update_index: int) -> int:
    """The rule of the paper's code (mbpo/algorithms/mbpo.py, set_rollout_length), in exact arithmetic:
    k_a up to epoch_a, then linear, capped at k_b from epoch_b on, truncated to an integer."""
    epoch_a, epoch_b, k_a, k_b = config.rollout_schedule
    epoch = update_index * config.model_train_freq // config.epoch_length
    if epoch <= epoch_a:
        return k_a
    progress = min(Fraction(epoch - epoch_a, max(epoch_b - epoch_a, 1)), Fraction(1))
    return int(np.floor(k_a + progress * (k_b - k_a)))


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),  # TINY: (0, 1, 1, 3), two updates an epoch
        dict(rollout_schedule=(20, 150, 1, 15), model_train_freq=250, epoch_length=1000),  # hopper preset
        dict(rollout_schedule=(20, 100, 1, 25), model_train_freq=250, epoch_length=1000),  # ant preset
        dict(rollout_schedule=(3, 3, 2, 6), model_train_freq=100, epoch_length=300),  # a step at epoch 3
        dict(rollout_schedule=(1, 7, 9, 2), model_train_freq=50, epoch_length=100),  # shrinking
    ],
)
def test_rollout_length_follows_the_paper_schedule(overrides):
    config = dataclasses.replace(TINY, **overrides)
    indices = np.arange(0, 1000)
    got = np.asarray(jax.jit(lambda i: mbpo.rollout_length(config, i))(jnp.asarray(indices, jnp.int32)))
    expected = [_paper_rollout_length(config, int(i)) for i in indices]
    np.testing.assert_array_equal(got, expected)
    # A few values spelled out for the hopper preset: k_a until epoch 20, k_b from epoch 150.
    if config.rollout_schedule == (20, 150, 1, 15):
        epochs = {0: 1, 20: 1, 21: 1, 30: 2, 85: 8, 149: 14, 150: 15, 249: 15}
        for epoch, k in epochs.items():
            assert int(mbpo.rollout_length(config, jnp.int32(4 * epoch))) == k, epoch


def test_vmap_equals_single_runs_and_is_deterministic():
    """vmap over seeds, and over a traced hyperparameter (real_ratio 0.05 and 1.0), gives per run what
    single runs give; the same key gives the same run."""
    trainer = mbpo.make_train(TINY)
    single = jax.jit(trainer)
    batched = jax.jit(jax.vmap(trainer))
    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    _, by_seed = batched(keys, hparams_for(TINY, 2))
    swept_hparams = dict(hparams_for(TINY, 2), real_ratio=jnp.array([0.05, 1.0]))
    same_keys = jnp.stack([keys[0], keys[0]])
    _, by_ratio = batched(same_keys, swept_hparams)

    def assert_close(b, s):
        np.testing.assert_allclose(b, s, rtol=1e-4, atol=1e-4)

    for i in range(2):
        _, run = single(keys[i], hparams_for(TINY))
        _, again = single(keys[i], hparams_for(TINY))
        jax.tree_util.tree_map(np.testing.assert_array_equal, run, again)
        jax.tree_util.tree_map(lambda b, s: assert_close(b[i], s), by_seed, run)
        ratio_hparams = dict(hparams_for(TINY), real_ratio=swept_hparams["real_ratio"][i])
        _, run = single(keys[0], ratio_hparams)
        jax.tree_util.tree_map(lambda b, s: assert_close(b[i], s), by_ratio, run)
    assert np.isfinite(by_seed["eval"]["eval_return"]).all()
    assert by_seed["eval"]["eval_return"].shape == (2, 2)
    np.testing.assert_array_equal(by_seed["train"]["rollout_length"][0], [1, 1, 3, 3])
    # Different seeds, and different real ratios, really are different runs.
    assert not np.allclose(by_seed["train"]["train_reward"][0], by_seed["train"]["train_reward"][1])
    assert not np.allclose(by_ratio["train"]["critic_loss"][0], by_ratio["train"]["critic_loss"][1])


def test_sac_only_has_no_model_and_finite_metrics():
    config = dataclasses.replace(TINY, sac_only=True)
    state, metrics = jax.jit(mbpo.make_train(config))(jax.random.PRNGKey(0), hparams_for(config))
    assert state.model is None and state.model_buffer is None
    assert not any(name.startswith("model_") or name.startswith("rollout") for name in metrics["train"])
    for name, value in {**metrics["train"], **metrics["eval"]}.items():
        assert np.isfinite(np.asarray(value)).all(), name
    assert metrics["train"]["critic_loss"].shape == (4,) and metrics["eval"]["eval_return"].shape == (2,)


def test_model_buffer_holds_only_the_alive_imagined_steps():
    """Pendulum never terminates, so every rollout lives k steps: after an update with k = 1 the model
    buffer holds rollout_batch_size transitions, after one with k = 3 another 3 x rollout_batch_size,
    packed step after step, each step starting where the previous one ended, from real start states."""
    trainer = mbpo.make_train(TINY)
    hparams = hparams_for(TINY)
    init = jax.jit(trainer.init)
    update = jax.jit(trainer.update)
    state = init(jax.random.PRNGKey(0), hparams)
    assert int(state.model_buffer.count) == 0 and int(state.buffer.count) == TINY.initial_steps
    n = TINY.rollout_batch_size
    capacity = state.model_buffer.capacity
    assert capacity == n * (TINY.epoch_length // TINY.model_train_freq) * 3  # rollouts per epoch x k_max

    state, metrics = update(state, hparams, jnp.int32(0))
    assert int(metrics["rollout_length"]) == 1 and float(metrics["rollouts_alive"]) == 1.0
    assert int(state.model_buffer.count) == n and int(state.model_buffer.position) == n
    assert int(state.buffer.count) == TINY.initial_steps + TINY.model_train_freq
    first = jax.tree_util.tree_map(lambda x: np.asarray(x[:n]), state.model_buffer.data)

    state, metrics = update(state, hparams, jnp.int32(2))  # epoch 1: k = 3
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
        (["--real-ratio", "1.5"], "real_ratio"),
        (["--rollout-schedule", "5", "2", "1", "3"], "backwards"),
        (["--rollout-schedule", "0", "1", "0", "3"], "at least 1"),
        (["--num-elites", "4"], "num_elites"),
        (["--env", "pendulm"], "pendulum"),
        # Under the spring backend this task has no termination function (its kinematics are inexact).
        (["--env", "brax/inverted_double_pendulum", "--backend", "spring"], "termination function"),
        (["--sweep", "updates_per_step=1,x"], "type int"),
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


@pytest.mark.parametrize(
    "env, message",
    [
        ("cartpole_discrete", "MBPO takes continuous actions; cartpole_discrete has a discrete action space"),
        ("pendulum_pixels", "MBPO takes vector observations; pendulum_pixels's observations are images"),
    ],
)
def test_discrete_or_image_task_is_refused(env, message, capsys, tmp_path):
    assert mbpo.main(TINY_ARGS + ["--env", env, "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_cli_run_folder_seeds_and_resume(tmp_path):
    first = tmp_path / "first"
    assert mbpo.main(TINY_ARGS + ["--num-seeds", "2", "--run-dir", str(first)]) == 0
    for name in ("config.json", "metrics.csv", "metrics.jsonl", "curve.png", "summary.json"):
        assert (first / name).exists(), name
    summary = json.loads((first / "summary.json").read_text())
    for field in ("final_eval_return", "env_steps", "wall_time_s", "wall_time_excl_compile_s", "device"):
        assert field in summary
    assert summary["env_steps"] == 600 and len(summary["final_eval_return_per_run"]) == 2
    assert np.isfinite(summary["final_eval_return"])
    rows = (first / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 2  # header, 2 runs x 2 evaluations
    assert "rollout_length" in rows[0] and "eval_return" in rows[0]

    # Kill-and-resume: remove the final checkpoint, so the newest left is mid-run, and resume.
    second = tmp_path / "second"
    shutil.copytree(first, second)
    steps = sorted(int(p.name) for p in (second / "checkpoints").iterdir() if p.name.isdigit())
    assert len(steps) == 2
    shutil.rmtree(second / "checkpoints" / str(steps[-1]))
    (second / "summary.json").unlink()
    assert mbpo.main(["--resume", str(second), "--no-progress"]) == 0
    resumed = json.loads((second / "summary.json").read_text())
    assert resumed["final_eval_return_per_run"] == summary["final_eval_return_per_run"]
    assert (second / "metrics.csv").read_text() == (first / "metrics.csv").read_text()
    # The time spent before the kill counts: both compiles, and the wall time up to the checkpoint.
    assert resumed["compile_time_s"] > summary["compile_time_s"]
    assert resumed["wall_time_s"] > resumed["compile_time_s"]


@pytest.mark.slow
def test_brax_hopper_with_termination_and_learned_reward():
    """The Brax path (compiles in ~50 s): a terminating task whose reward the model learns and whose
    termination function cuts the rollouts."""
    config = dataclasses.replace(
        TINY, env="brax/hopper", backend="spring", episode_length=20, total_steps=400, rollout_schedule=(0, 1, 2, 2)
    )
    state, metrics = jax.jit(mbpo.make_train(config))(jax.random.PRNGKey(0), hparams_for(config))
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
