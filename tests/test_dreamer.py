"""Dreamer: DreamerV3's transforms and distributions against their definitions, lambda-returns
against a loop, runs from vectors, pixels and discrete actions, the run folder, bad input, and the
pendulum learning bar."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbrlax import envs, runner
from mbrlax.algorithms import dreamer
from mbrlax.training import evaluate_episodes


def test_symlog_inverts_and_two_hot_decodes_to_its_value():
    y = jnp.array([-3000.0, -7.5, -1.0, 0.0, 0.3, 42.0, 1e5])
    np.testing.assert_allclose(dreamer.symexp(dreamer.symlog(y)), y, rtol=1e-5)
    code = dreamer.two_hot(dreamer.symlog(y))
    assert code.shape == (7, 255)
    np.testing.assert_allclose(code.sum(-1), 1.0, rtol=1e-6)
    assert ((code > 0).sum(-1) <= 2).all()
    # The expected bin of the code is symlog(y), so decoding logits = log(code) gives y back.
    np.testing.assert_allclose(dreamer.two_hot_mean(jnp.log(code + 1e-30)), y, rtol=1e-4, atol=1e-6)
    # The loss is smallest at the code itself, and the zero-initialised head predicts 0.
    target = jnp.float32(5.0)
    assert dreamer.two_hot_loss(
        jnp.log(dreamer.two_hot(dreamer.symlog(target)) + 1e-30), target
    ) < dreamer.two_hot_loss(jnp.zeros(255), target)
    assert float(dreamer.two_hot_mean(jnp.zeros(255))) == pytest.approx(0.0, abs=1e-5)


def test_unimix_and_inverse_cdf_sampling():
    logits = jnp.log(jnp.array([[0.7, 0.2, 0.1, 0.0]]))
    mixed = jnp.exp(dreamer.unimix_logits(logits, 0.01))
    np.testing.assert_allclose(mixed, 0.99 * jnp.array([[0.7, 0.2, 0.1, 0.0]]) + 0.0025, rtol=1e-6)
    samples = jax.vmap(lambda k: dreamer.sample_one_hot(k, jnp.log(mixed[0])))(
        jax.random.split(jax.random.PRNGKey(0), 40_000)
    )
    assert ((samples == 0) | (samples == 1)).all() and (samples.sum(-1) == 1).all()
    np.testing.assert_allclose(samples.mean(0), mixed[0], atol=0.01)
    assert float(dreamer.categorical_kl(jnp.log(mixed), jnp.log(mixed)).sum()) == pytest.approx(0.0, abs=1e-6)


def test_lambda_returns_match_a_loop():
    rng = np.random.default_rng(0)
    H, n, gamma, lam = 6, 3, 0.9, 0.8
    rewards, values = rng.normal(size=(H + 1, n)), rng.normal(size=(H + 1, n))
    continues = (rng.uniform(size=(H + 1, n)) > 0.2).astype(np.float64)
    expected = np.zeros((H, n))
    following = values[H]
    for t in reversed(range(H)):
        following = rewards[t + 1] + gamma * continues[t + 1] * ((1 - lam) * values[t + 1] + lam * following)
        expected[t] = following
    got = dreamer.lambda_returns(*(jnp.asarray(x, jnp.float32) for x in (rewards, continues, values)), gamma, lam)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("gradient", ["dynamics", "reinforce"])
def test_actor_loss_matches_the_2023_code_by_hand(gradient):
    """ImagActorCritic.loss of the 2023 code (dreamerv3/agent.py at 8fa35f8), differentiated by hand
    for one parameter theta on which everything depends: with "dynamics" (actor_grad_cont: backprop)
    the gradient of the baseline v(s_1) counts as well as that of the return; the weights and the
    return scale are constants; with REINFORCE only log pi and the entropy carry gradient."""
    theta0, eta = 0.7, 0.1
    a, b, c, d = np.array([2.0, -1.0]), np.array([0.5, 3.0]), np.array([1.5, 0.4]), np.array([-0.2, 0.9])
    w, ell, e = np.array([1.0, 0.9]), np.array([0.3, -0.6]), np.array([0.25, 0.5])
    scale0 = 4.0  # the return scale at theta0, above 1 so that it divides

    def loss(theta):
        col = lambda x: jnp.asarray(x, jnp.float32)[:, None]  # noqa: E731  [H = 2, N = 1]
        returns = col(a) * theta + col(b)
        values = jnp.stack([col(c)[0], col(d)[1] * theta])  # v(s_0) is fixed; v(s_1) moves with theta
        weights = col(w) * theta / theta0
        return dreamer.actor_loss_of(
            returns, values, weights, col(ell) * theta, col(e) * theta, scale0 * theta / theta0, eta, gradient
        )

    returns0, values0 = a * theta0 + b, np.array([c[0], d[1] * theta0])
    advantage0 = (returns0 - values0) / scale0
    if gradient == "dynamics":
        value = -np.mean(w * (advantage0 + eta * e * theta0))
        grad = -np.mean(w * ((a - np.array([0.0, d[1]])) / scale0 + eta * e))
        old_form = -np.mean(w * (a / scale0 + eta * e))  # the return alone: DreamerV2's, and this file's before
        assert abs(grad - old_form) > 0.01
    else:
        value = -np.mean(w * (ell * theta0 * advantage0 + eta * e * theta0))
        grad = -np.mean(w * (ell * advantage0 + eta * e))
    got_value, got_grad = jax.value_and_grad(loss)(jnp.float32(theta0))
    np.testing.assert_allclose(got_value, value, rtol=1e-5)
    np.testing.assert_allclose(got_grad, grad, rtol=1e-5)
    # A return range below 1 is not blown up: the divisor is max(1, S).
    one = jnp.ones((2, 1))
    assert float(dreamer.actor_loss_of(3 * one, one, one, one, 0 * one, 0.5, 0.0, "dynamics")) == pytest.approx(-2.0)


def test_return_scale_is_an_ema_of_the_percentile_range():
    returns = jnp.arange(101.0).reshape(1, 101)  # P5 = 5, P95 = 95
    np.testing.assert_allclose(dreamer.updated_return_scale(jnp.float32(10.0), returns, 0.99), 0.99 * 10 + 0.01 * 90)


def test_policy_clip_is_the_2023_codes_scaling():
    """dreamerv3/nets.py (2023), RSSM.img_step: a * sg(1 / max(1, |a|)): a clip forward, a gradient
    scaled by 1 / |a| outside the box."""
    policy = dreamer.PolicyDistribution(False, 0.01)
    action = jnp.array([-3.0, -0.5, 0.2, 2.0])
    np.testing.assert_allclose(policy.executed(action), jnp.clip(action, -1, 1))
    grad = jax.grad(lambda x: policy.executed(x).sum())(action)
    np.testing.assert_allclose(grad, [1 / 3, 1.0, 1.0, 0.5], rtol=1e-6)


TINY = dict(
    dreamer.SIZES["tiny"],
    total_steps=400,
    initial_steps=128,
    steps_per_update=64,
    eval_every=128,
    eval_episodes=2,
    batch_size=4,
    sequence_length=16,
    train_ratio=8,
    horizon=5,
    episode_length=60,
)


def hparams_for(config):
    return {k: jnp.float32(v) for k, v in runner.hparams_of(config).items()}


@pytest.mark.parametrize(
    "env, actor_gradient",
    [
        ("pendulum", "reinforce"),
        ("pendulum", "auto"),  # dynamics, as the 2023 code's actor_grad_cont
        ("pendulum_pixels", "auto"),
        ("cartpole_discrete", "auto"),  # REINFORCE: "dynamics" would be refused for discrete actions
    ],
)
def test_runs_from_vectors_pixels_and_discrete_actions(env, actor_gradient):
    config = dataclasses.replace(dreamer.Config(), env=env, actor_gradient=actor_gradient, **TINY)
    state, metrics = jax.jit(dreamer.make_train(config))(jax.random.PRNGKey(0), hparams_for(config))
    for name, value in {**metrics["train"], **metrics["eval"]}.items():
        assert np.isfinite(np.asarray(value)).all(), name
    assert metrics["eval"]["eval_return"].shape == (3,)
    # Every episode boundary is in the replay: the first step of each episode is marked.
    stored = np.asarray(state.buffer.data["is_first"][: int(state.buffer.count), 0])
    assert stored[0] == 1 and stored.sum() >= 2
    if env == "cartpole_discrete":
        actions = np.asarray(state.buffer.data["action"])
        assert ((actions == 0) | (actions == 1)).all() and (actions.sum(-1) == 1).all()
        # The pole falls under random actions, so terminal steps are stored with continue 0.
        assert np.asarray(state.buffer.data["is_terminal"]).sum() > 0
    if env == "pendulum_pixels":
        assert state.buffer.data["obs"].dtype == jnp.uint8


def test_cli_run_folder(tmp_path):
    run = tmp_path / "run"
    args = ["--preset", "tiny", "--total-steps", "384", "--initial-steps", "128", "--steps-per-update", "64"]
    args += ["--eval-every", "128", "--eval-episodes", "2", "--batch-size", "4", "--sequence-length", "16"]
    args += ["--train-ratio", "8", "--horizon", "3", "--num-seeds", "2", "--no-progress", "--run-dir", str(run)]
    assert dreamer.main(args) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert np.isfinite(summary["final_eval_return"]) and summary["env_steps"] == 384
    assert (run / "curve.png").exists()
    lines = (run / "metrics.csv").read_text().splitlines()
    assert "dynamics_kl" in lines[0] and "actor_entropy" in lines[0]
    assert {line.split(",")[0] for line in lines[1:]} == {"0", "1"}  # both seeds, one vmapped program


BASE_ARGS = ["--preset", "tiny", "--total-steps", "320", "--initial-steps", "128", "--steps-per-update", "64"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--buffer-capacity", "32"], "longer than the buffer"),
        (["--initial-steps", "32"], "cover one replayed sequence"),
        (["--train-ratio", "3"], "must divide by"),
        (["--discount", "0"], "discount"),
        (["--env", "halfcheeta"], "close matches"),
        (["--env", "cartpole_discrete", "--actor-gradient", "dynamics"], "discrete"),
    ],
)
def test_bad_input_exits_2_with_one_sentence(extra, message, capsys, tmp_path):
    code = dreamer.main(BASE_ARGS + extra + ["--no-progress", "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_image_the_encoder_cannot_take_is_refused(monkeypatch):
    def odd_images(config, **kwargs):
        env, spec = envs.make("pendulum_pixels", **kwargs)
        return env, dataclasses.replace(spec, image_shape=(60, 60, 3))

    monkeypatch.setattr(dreamer, "make_env", odd_images)
    with pytest.raises(dreamer.ConfigError, match="divide by 16"):
        dreamer.make_train(dataclasses.replace(dreamer.Config(), env="pendulum_pixels", **TINY))


@pytest.mark.slow
def test_dreamer_learns_pendulum_from_state():
    """The issue's bar: after a short budget with the tiny preset, the return on pendulum is well
    above a random policy's (about -1200). -600 needs the pendulum swung up and held for part of
    most episodes; a world model that predicts no reward, or an actor that does not follow the
    critic, stays near the random return. The preset's actor gradient is the 2023 code's for
    continuous actions (through the dynamics), which learns pendulum in fewer steps than REINFORCE,
    so the budget is 5,000 steps rather than the 8,000 that REINFORCE needed. Measured on the
    2-core CPU: -1574, -672, -442, -204 at 2,000 to 5,000 steps."""
    config = dataclasses.replace(dreamer.Config(), **{**dreamer.PRESETS["pendulum"], **DREAMER_CI})
    _, metrics = jax.jit(dreamer.make_train(config))(jax.random.PRNGKey(0), hparams_for(config))
    returns = np.asarray(metrics["eval"]["eval_return"])
    print(f"Dreamer pendulum returns {returns.round(0)}")

    env, spec = envs.make("pendulum", num_envs=50)

    def uniform(carry, obs, key):
        return jax.random.uniform(key, (50, 1), minval=-2.0, maxval=2.0), carry

    random_return = float(
        evaluate_episodes(env, jax.random.PRNGKey(1), 50, spec.episode_length, uniform)["eval_return"]
    )
    print(f"random policy return {random_return:.0f}")
    assert random_return < -1000
    assert returns[-1] > -600, returns


# The CI learning setting: the pendulum preset (tiny model, the actor gradient through the dynamics
# of the 2023 DreamerV3 code) cut to 5,000 steps (see benchmarks/RESULTS.md for the measured curve).
DREAMER_CI = dict(total_steps=5000, eval_every=1000)
