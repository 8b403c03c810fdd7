"""MB-MPO: the meta-gradient through the inner step against finite differences, the advantage
pieces against references, no adaptation when inner_lr = 0, vmap and determinism, the run folder,
bad input, and the pendulum learning bar."""

from __future__ import annotations

import csv
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import cli_args
from jax.flatten_util import ravel_pytree
from mbrlax.algorithms import mbmpo

from mbrlax import runner


def linear_gaussian(params, obs):
    mean = obs @ params["w"] + params["b"]
    return mean, jnp.broadcast_to(params["log_std"], mean.shape)


def random_paths(key, tasks, T=5, N=3, obs_size=2, dtype=jnp.float32):
    """Fixed paths of a made-up sampling policy, with one path ending early."""
    obs_key, act_key, adv_key, logp_key = jax.random.split(key, 4)
    alive = jnp.ones((tasks, T, N), dtype).at[:, 3:, 0].set(0.0)
    return {
        "obs": jax.random.normal(obs_key, (tasks, T, N, obs_size), dtype),
        "action": jax.random.normal(act_key, (tasks, T, N, 1), dtype),
        "log_prob": -1.0 + 0.1 * jax.random.normal(logp_key, (tasks, T, N), dtype),
        "advantage": jax.random.normal(adv_key, (tasks, T, N), dtype) * alive,
        "alive": alive,
    }


def test_meta_gradient_goes_through_the_inner_step():
    """d/dtheta of the post-adaptation objective equals central finite differences (second order
    included), and differs from the gradient that treats theta' as independent of theta."""
    with jax.enable_x64(True):
        theta = {
            "w": jnp.array([[0.3], [-0.2]], jnp.float64),
            "b": jnp.array([0.1], jnp.float64),
            "log_std": jnp.array([-0.3], jnp.float64),
        }
        pre = random_paths(jax.random.PRNGKey(0), tasks=3, dtype=jnp.float64)
        post = random_paths(jax.random.PRNGKey(1), tasks=3, dtype=jnp.float64)
        # A wide clip range keeps the objective smooth around theta for the finite differences.
        objective = functools.partial(
            mbmpo.post_adaptation_objective, linear_gaussian, inner_lr=0.5, clip_eps=0.9, pre_paths=pre, post_paths=post
        )
        analytic = ravel_pytree(jax.grad(lambda t: objective(theta=t))(theta))[0]
        flat, unravel = ravel_pytree(theta)
        eps = 1e-6
        numeric = np.array(
            [
                (objective(theta=unravel(flat.at[i].add(eps))) - objective(theta=unravel(flat.at[i].add(-eps))))
                / (2 * eps)
                for i in range(flat.size)
            ]
        )
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)

        # First order only: the gradient of the clipped surrogate at the adapted parameters.
        def per_task_first_order(pre_path, post_path):
            adapted = jax.lax.stop_gradient(mbmpo.adapt(linear_gaussian, theta, pre_path, 0.5))
            return jax.grad(mbmpo.clipped_surrogate, argnums=1)(linear_gaussian, adapted, post_path, 0.9)

        first_order = jax.tree_util.tree_map(lambda g: g.mean(0), jax.vmap(per_task_first_order)(pre, post))
        assert np.abs(ravel_pytree(first_order)[0] - analytic).max() > 1e-3

        # With inner_lr = 0 the meta-gradient is the plain gradient of the clipped surrogate at theta.
        plain = jax.vmap(lambda p: jax.grad(mbmpo.clipped_surrogate, argnums=1)(linear_gaussian, theta, p, 0.9))(post)
        no_adapt = jax.grad(
            lambda t: mbmpo.post_adaptation_objective(linear_gaussian, t, pre, post, inner_lr=0.0, clip_eps=0.9)
        )(theta)
        np.testing.assert_allclose(
            ravel_pytree(no_adapt)[0], ravel_pytree(jax.tree_util.tree_map(lambda g: g.mean(0), plain))[0], rtol=1e-10
        )


def test_inner_step_is_the_policy_gradient():
    """At the sampling policy the surrogate's gradient is mean(grad log pi * A) over live steps."""
    theta = {"w": jnp.array([[0.3], [-0.2]]), "b": jnp.array([0.1]), "log_std": jnp.array([-0.3])}
    path = jax.tree_util.tree_map(lambda x: x[0], random_paths(jax.random.PRNGKey(2), tasks=1))
    mean, log_std = linear_gaussian(theta, path["obs"])
    path["log_prob"] = mbmpo.gaussian_log_prob(mean, log_std, path["action"])

    def log_prob_sum(params):
        m, s = linear_gaussian(params, path["obs"])
        return (mbmpo.gaussian_log_prob(m, s, path["action"]) * path["advantage"] * path["alive"]).sum()

    expected = jax.tree_util.tree_map(lambda g: g / path["alive"].sum(), jax.grad(log_prob_sum)(theta))
    adapted = mbmpo.adapt(linear_gaussian, theta, path, 0.1)
    step = jax.tree_util.tree_map(lambda a, t: (a - t) / 0.1, adapted, theta)
    jax.tree_util.tree_map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6), step, expected)


def test_advantage_pieces_against_references():
    rng = np.random.default_rng(0)
    T, N, gamma, lam = 7, 3, 0.9, 0.8
    rewards = rng.normal(size=(T, N)).astype(np.float32)
    alive = np.ones((T, N), np.float32)
    alive[4:, 1] = 0.0
    rewards *= alive
    returns = np.asarray(mbmpo.discounted_returns(jnp.asarray(rewards), gamma))
    for n in range(N):
        running = 0.0
        for t in reversed(range(T)):
            running = rewards[t, n] + gamma * running
            assert abs(returns[t, n] - running) < 1e-5

    # The baseline reproduces returns that are an exact function of its features.
    obs = rng.uniform(-1, 1, size=(T, N, 2)).astype(np.float32)
    t = (np.arange(T) / 100.0)[:, None]
    exact = 0.5 * obs[..., 0] - 2.0 * obs[..., 1] ** 2 + 3.0 * t + 1.0
    fitted = np.asarray(mbmpo.linear_baseline(jnp.asarray(obs), jnp.asarray(exact * alive), jnp.asarray(alive)))
    np.testing.assert_allclose(fitted, exact * alive, atol=1e-2)

    # GAE against a loop, before the normalisation (undone here from the live steps' moments).
    baseline = rng.normal(size=(T, N)).astype(np.float32) * alive
    got = np.asarray(mbmpo.advantages(*map(jnp.asarray, (rewards, baseline, alive)), gamma, lam))
    expected = np.zeros((T, N))
    for n in range(N):
        running = 0.0
        for t in reversed(range(T)):
            next_value = baseline[t + 1, n] * alive[t + 1, n] if t + 1 < T else 0.0
            delta = (rewards[t, n] + gamma * next_value - baseline[t, n]) * alive[t, n]
            running = delta + gamma * lam * running
            expected[t, n] = running * alive[t, n]
    live = alive > 0
    normalised = (expected - expected[live].mean()) / expected[live].std() * alive
    np.testing.assert_allclose(got, normalised, atol=1e-4)


def test_gaussian_kl():
    mean_p, log_std_p = jnp.array([[0.1, -0.3]]), jnp.array([[0.0, -0.5]])
    assert float(mbmpo.gaussian_kl(mean_p, log_std_p, mean_p, log_std_p)[0]) == pytest.approx(0.0, abs=1e-7)
    mean_q, log_std_q = jnp.array([[0.4, 0.2]]), jnp.array([[0.3, -0.2]])
    samples = mean_p + jnp.exp(log_std_p) * jax.random.normal(jax.random.PRNGKey(0), (200_000, 2))
    monte_carlo = (
        mbmpo.gaussian_log_prob(mean_p, log_std_p, samples) - mbmpo.gaussian_log_prob(mean_q, log_std_q, samples)
    ).mean()
    assert float(mbmpo.gaussian_kl(mean_p, log_std_p, mean_q, log_std_q)[0]) == pytest.approx(
        float(monte_carlo), abs=5e-3
    )


# A tiny configuration: 2 iterations of 200 real steps after 200 random ones, 2 evaluations.
TINY = mbmpo.Config(
    env="pendulum",
    total_steps=600,
    initial_steps=200,
    real_steps_per_iteration=200,
    num_envs=2,
    episode_length=50,
    eval_every=200,
    eval_episodes=2,
    num_models=2,
    tasks_per_model=1,
    imagined_trajectories=4,
    imagined_horizon=20,
    meta_steps=2,
    outer_steps=2,
    policy_hidden_sizes=(8, 8),
    model_hidden_sizes=(16, 16),
    model_max_epochs=3,
)


def hparams_for(config, runs: int | None = None):
    values = {k: jnp.float32(v) for k, v in runner.hparams_of(config).items()}
    return values if runs is None else {k: jnp.full((runs,), v) for k, v in values.items()}


def test_vmap_equals_single_runs_and_no_adaptation_at_zero_inner_lr():
    """vmap over (seed, inner_lr) pairs gives per run what single runs give; the same key gives the
    same run; with inner_lr = 0 the adapted policies are theta itself."""
    trainer = mbmpo.make_train(TINY)
    single, batched = jax.jit(trainer), jax.jit(jax.vmap(trainer))
    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    hparams = dict(hparams_for(TINY, 2), inner_lr=jnp.array([0.0, 0.05]))
    _, runs = batched(keys, hparams)
    for i in range(2):
        run_hparams = jax.tree_util.tree_map(lambda x, i=i: x[i], hparams)
        _, run = single(keys[i], run_hparams)
        _, again = single(keys[i], run_hparams)
        jax.tree_util.tree_map(np.testing.assert_array_equal, run, again)
        # Batched and single matmuls round differently; returns are in the hundreds.
        jax.tree_util.tree_map(lambda b, s, i=i: np.testing.assert_allclose(b[i], s, rtol=1e-4, atol=1e-3), runs, run)
    evals = runs["eval"]
    # inner_lr = 0: theta' = theta, up to the rounding of evaluating it as a batch of task policies.
    np.testing.assert_allclose(evals["eval_return"][0], evals["eval_return_pre_update"][0], atol=1e-2)
    assert np.abs(evals["eval_imagined_adaptation_gain"][0]).max() < 1e-3
    assert np.abs(evals["eval_imagined_adaptation_gain"][1]).min() > 2e-2
    for name, value in {**runs["train"], **evals}.items():
        assert np.isfinite(np.asarray(value)).all(), name
    assert runs["train"]["outer_kl"].shape == (2, 2) and evals["eval_return"].shape == (2, 2)


TINY_ARGS = cli_args(TINY) + ["--no-progress"]


def test_cli_run_folder(tmp_path):
    run = tmp_path / "run"
    assert mbmpo.main(TINY_ARGS + ["--run-dir", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["env_steps"] == 600 and np.isfinite(summary["final_eval_return"])
    header = (run / "metrics.csv").read_text().splitlines()[0]
    for column in ("eval_return_pre_update", "eval_imagined_adaptation_gain", "outer_kl", "model_holdout_mse"):
        assert column in header, column


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--inner-lr", "-0.1"], "inner_lr"),
        (["--clip-eps", "1.5"], "clip_eps"),
        (["--real-steps-per-iteration", "201"], "divide"),
        (["--tasks-per-model", "0"], "tasks_per_model"),
        (["--imagined-horizon", "0"], "imagined_horizon"),
        (["--env", "brax/inverted_double_pendulum", "--backend", "spring"], "termination function"),
        (["--sweep", "env=pendulum,x"], "one command per task"),
    ],
)
def test_bad_input_exits_2_with_one_sentence(extra, message, capsys, tmp_path):
    code = mbmpo.main(TINY_ARGS + extra + ["--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_mbmpo_learns_pendulum_and_adaptation_helps_in_imagination(tmp_path):
    """The default pendulum settings (7,400 real steps, 1,000 of them random; evaluations after
    2,600, 4,200, 5,800 and 7,400), 4 seeds vmapped. A random policy scores about -1200; the bar is
    -400 for every seed. The inner step must improve each task's own imagined return on average over
    the seeds and evaluations (the same start states and noise before and after the step); one
    evaluation of one seed is a single noisy sample of that gain, often of either sign late in
    training, when theta is already good."""
    run = tmp_path / "run"
    assert mbmpo.main(["--env", "pendulum", "--num-seeds", "4", "--no-progress", "--run-dir", str(run)]) == 0
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    final = [float(r["eval_return"]) for r in rows if r["env_steps"] == "7400"]
    gains = [float(r["eval_imagined_adaptation_gain"]) for r in rows]
    print({"final": np.round(final, 1), "gains": np.round(gains, 1)})
    assert len(final) == 4 and min(final) >= -400.0, final
    assert len(gains) == 16 and np.mean(gains) > 0.0, gains
