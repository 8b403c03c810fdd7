"""PETS end to end: learning, the fused and chunked programs, vmap, determinism, resume, bad input."""

from __future__ import annotations

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import cli_args
from mbrlax.algorithms import pets

# A tiny configuration: short episodes, a small planner and model. Compiles in tens of seconds.
TINY = pets.Config(
    env="pendulum",
    episode_length=50,
    total_steps=200,
    eval_every=50,
    eval_episodes=2,
    retrain_every=50,
    horizon=5,
    population=16,
    num_elites=4,
    cem_iterations=2,
    particles=4,
    ensemble_size=2,
    hidden_sizes=(16, 16),
    model_max_epochs=3,
)


TINY_ARGS = cli_args(TINY) + ["--no-progress"]


def hparams_for(config, runs: int | None = None):
    values = {k: jnp.float32(getattr(config, k)) for k in pets.Config.SWEEPABLE}
    if runs is None:
        return values
    return {k: jnp.full((runs,), v) for k, v in values.items()}


@pytest.mark.slow
def test_learns_pendulum():
    """A smaller version of the issue's bar (-250 within 15 episodes, with a random policy near -1200):
    with the default planner and model, after one random and six planned episodes, three evaluation
    episodes average better than -400. A planner that ignores the model, or a model that learned
    nothing, stays near -1000 or worse."""
    config = dataclasses.replace(pets.Config(env="pendulum"), total_steps=1400, eval_every=1200)
    train = jax.jit(pets.make_train(config))
    _, metrics = train(jax.random.PRNGKey(0), hparams_for(config))
    assert metrics["eval"]["eval_return"].shape == (1,)
    final = float(metrics["eval"]["eval_return"][-1])
    assert final > -400, f"PETS reached only {final:.0f} on pendulum"


def test_vmap_equals_single_runs_and_is_deterministic():
    train = jax.jit(pets.make_train(TINY))
    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    _, batched = jax.jit(jax.vmap(pets.make_train(TINY)))(keys, hparams_for(TINY, 2))
    for i in range(2):
        _, single = train(keys[i], hparams_for(TINY))
        _, again = train(keys[i], hparams_for(TINY))
        jax.tree_util.tree_map(np.testing.assert_array_equal, single, again)
        jax.tree_util.tree_map(lambda b, s: np.testing.assert_allclose(b[i], s, rtol=1e-4, atol=1e-4), batched, single)
    # Different seeds really are different runs.
    assert not np.allclose(batched["train"]["train_reward"][0], batched["train"]["train_reward"][1])


def test_sweep_value_changes_the_run():
    train = jax.jit(jax.vmap(pets.make_train(TINY)))
    keys = jnp.stack([jax.random.PRNGKey(0)] * 2)
    hparams = hparams_for(TINY, 2)
    hparams["model_lr"] = jnp.array([1e-3, 1e-2])
    _, metrics = train(keys, hparams)
    loss = metrics["train"]["model_train_loss"]
    assert not np.allclose(loss[0], loss[1])


def test_cli_run_folder_seeds_and_resume(tmp_path):
    first = tmp_path / "first"
    assert pets.main(TINY_ARGS + ["--num-seeds", "2", "--run-dir", str(first)]) == 0
    for name in ("config.json", "metrics.csv", "metrics.jsonl", "curve.png", "summary.json"):
        assert (first / name).exists(), name
    summary = json.loads((first / "summary.json").read_text())
    for field in ("final_eval_return", "env_steps", "wall_time_s", "wall_time_excl_compile_s", "device"):
        assert field in summary
    assert summary["env_steps"] == 200 and len(summary["final_eval_return_per_run"]) == 2
    rows = (first / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 3  # header, 2 runs x 3 evaluations

    # Kill-and-resume: remove the final checkpoint, so the newest left is mid-run, and resume.
    second = tmp_path / "second"
    shutil.copytree(first, second)
    steps = sorted(int(p.name) for p in (second / "checkpoints").iterdir() if p.name.isdigit())
    assert len(steps) == 2
    shutil.rmtree(second / "checkpoints" / str(steps[-1]))
    (second / "summary.json").unlink()
    assert pets.main(["--resume", str(second), "--no-progress"]) == 0
    resumed = json.loads((second / "summary.json").read_text())
    assert resumed["final_eval_return_per_run"] == summary["final_eval_return_per_run"]
    assert (second / "metrics.csv").read_text() == (first / "metrics.csv").read_text()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--env", "pendulm"], "pendulum"),
        (["--num-elites", "32"], "num_elites"),
        (["--horizon", "0"], "horizon"),
        (["--preset", "halfcheeta"], "brax/halfcheetah"),
        (["--sweep", "horizon=5,0"], "horizon must be positive"),
        (["--sweep", "alpha=a,b"], "numbers"),
        (["--planner", "mppi"], "planner"),
        (["--retrain-every", "50", "--num-envs", "3"], "num_envs"),
        (["--env", "cartpole_discrete"], "discrete action space"),
        (["--env", "pendulum_pixels"], "observations are images"),
    ],
)
def test_bad_input_exits_2_with_one_sentence(extra, message, capsys, tmp_path):
    code = pets.main(TINY_ARGS + extra + ["--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_resume_with_another_config_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(
        json.dumps(
            {
                "algorithm": "pets",
                "config": dataclasses.asdict(TINY) | {"hidden_sizes": [16, 16]},
                "run": {"seed": 0, "num_seeds": 1, "sweep": []},
            }
        )
    )
    assert pets.main(["--resume", str(run_dir), "--horizon", "7"]) == 2
    assert "another config" in capsys.readouterr().err


def test_non_finite_loss_stops_with_the_quantity_named(tmp_path, capsys):
    code = pets.main(TINY_ARGS + ["--model-lr", "nan", "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 1
    assert "model_train_loss" in err and "environment step" in err


def test_icem_and_random_shooting_run():
    for planner in ("icem", "random"):
        config = dataclasses.replace(TINY, planner=planner, total_steps=100)
        _, metrics = jax.jit(pets.make_train(config))(jax.random.PRNGKey(0), hparams_for(config))
        assert np.isfinite(metrics["eval"]["eval_return"]).all()


def test_coloured_noise_is_unit_variance_and_correlated_in_time():
    noise = pets.coloured_noise(jax.random.PRNGKey(0), (512, 30, 2), beta=2.0)
    assert noise.shape == (512, 30, 2)
    np.testing.assert_allclose(noise.std(axis=1).mean(), 1.0, atol=0.05)
    lag1 = np.mean(np.asarray(noise[:, 1:] * noise[:, :-1]))
    assert lag1 > 0.5  # brown-ish noise: neighbours alike; white noise would give about 0


@pytest.mark.slow
def test_brax_task_with_learned_reward_and_known_termination():
    """The Brax path: a terminating task, the reward learned by the ensemble, termination known."""
    config = dataclasses.replace(
        TINY,
        env="brax/inverted_pendulum",
        backend="spring",
        learn_reward=True,
        episode_length=20,
        total_steps=60,
        eval_every=20,
        retrain_every=20,
    )
    trainer = pets.make_train(config)
    state, metrics = jax.jit(trainer)(jax.random.PRNGKey(0), hparams_for(config))
    assert np.isfinite(metrics["train"]["model_train_loss"]).all()
    # The model has a reward output: the target is the 4-dim state delta plus the reward.
    assert state.model.target_mean.shape == (5,)
    # Returns are counts of steps before the pole fell: at least 1, at most the episode length.
    returns = np.asarray(metrics["eval"]["eval_return"])
    assert ((returns >= 1) & (returns <= 20)).all()
