"""World Models' pieces by hand: V's free-bits ELBO and M's mixture likelihood against NumPy, M's
sampling at a temperature, the controller's layout, the fitness, V's shapes at the paper's width, a
CMA-ES generation (evosax through our loop) minimising a known quadratic, the dream's done head;
the refusals; and a short learning run on pendulum_pixels. (The CLI run, resume and bad input:
tests/test_contract.py and tests/test_bad_inputs.py.)"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from evosax.algorithms import CMA_ES
from mbrlax.algorithms import world_models as wm

from mbrlax.training import ConfigError

TINY = dataclasses.replace(wm.Config(), **wm.VARIANTS["tiny"])


def test_vae_loss_is_the_free_bits_elbo_by_hand():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(3, 64, 64, 3)).astype(np.float32)
    y = rng.uniform(size=(3, 64, 64, 3)).astype(np.float32)
    mu = rng.normal(size=(3, 4)).astype(np.float32)
    mu[0] = 0.0  # this frame's KL is 0.5 * sum(exp(l) - 1 - l): small, so the floor applies
    logvar = (0.1 * rng.normal(size=(3, 4))).astype(np.float32)
    reconstruction = [((x[i] - y[i]) ** 2).sum() for i in range(3)]
    kl = [-0.5 * sum(1 + logvar[i, j] - mu[i, j] ** 2 - math.exp(logvar[i, j]) for j in range(4)) for i in range(3)]
    floored = [max(k, 0.5 * 4) for k in kl]
    assert kl[0] < 2.0 < max(kl)  # the floor binds for one frame and not for another
    loss, r, k = wm.vae_loss(jnp.asarray(x), jnp.asarray(y), jnp.asarray(mu), jnp.asarray(logvar), 0.5)
    np.testing.assert_allclose(r, np.mean(reconstruction), rtol=1e-5)
    np.testing.assert_allclose(k, np.mean(floored), rtol=1e-5)
    np.testing.assert_allclose(loss, np.mean(reconstruction) + np.mean(floored), rtol=1e-5)
    # Without free bits the KL is the plain Gaussian KL.
    _, _, k0 = wm.vae_loss(jnp.asarray(x), jnp.asarray(y), jnp.asarray(mu), jnp.asarray(logvar), 0.0)
    np.testing.assert_allclose(k0, np.mean(kl), rtol=1e-5)


def test_mdn_log_likelihood_by_hand():
    rng = np.random.default_rng(1)
    logits, mean, logstd = (rng.normal(size=(2, 3, 5)) for _ in range(3))
    y = rng.normal(size=(2, 3))
    expected = np.zeros((2, 3))
    for i in range(2):
        for j in range(3):
            pi = np.exp(logits[i, j]) / np.exp(logits[i, j]).sum()
            sigma = np.exp(logstd[i, j])
            density = pi * np.exp(-0.5 * ((y[i, j] - mean[i, j]) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
            expected[i, j] = math.log(density.sum())
    got = wm.mdn_log_likelihood(*(jnp.asarray(a, jnp.float32) for a in (logits, mean, logstd, y)))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # One component: the Gaussian's own log density.
    sigma = jnp.full((1, 1), math.log(0.5))
    one = wm.mdn_log_likelihood(jnp.zeros((1, 1)), jnp.full((1, 1), 2.0), sigma, jnp.array([3.0]))
    np.testing.assert_allclose(one, [-0.5 * 4.0 - math.log(0.5) - 0.5 * math.log(2 * math.pi)], rtol=1e-6)


def test_mdn_sampling_at_a_temperature():
    # Two components with weights 0.8 / 0.2 at means -5 and +5, std 0.5: at tau = 2 the weights are
    # softmax(log w / 2) (2/3 and 1/3) and the std is 0.5 sqrt(2).
    logits = jnp.log(jnp.array([0.8, 0.2]))
    mean, logstd = jnp.array([-5.0, 5.0]), jnp.log(jnp.array([0.5, 0.5]))
    n = 200_000
    draws = wm.sample_mdn(jax.random.PRNGKey(0), *(jnp.broadcast_to(a, (n, 2)) for a in (logits, mean, logstd)), 2.0)
    draws = np.asarray(draws)
    left = draws[draws < 0]
    np.testing.assert_allclose(len(left) / n, 2 / 3, atol=0.005)
    np.testing.assert_allclose(left.mean(), -5.0, atol=0.01)
    np.testing.assert_allclose(left.std(), 0.5 * math.sqrt(2.0), rtol=0.01)


def test_controller_layout_and_fitness_by_hand():
    features = np.array([[0.5, -1.0, 2.0]], np.float32)
    bias, weight = np.array([0.1, -0.2]), np.arange(6.0).reshape(3, 2) / 10
    theta = np.concatenate([bias, weight.ravel()]).astype(np.float32)
    assert wm.controller_size(3, 2) == theta.size
    action = wm.controller(jnp.asarray(theta), jnp.asarray(features))
    np.testing.assert_allclose(action, np.tanh(features @ weight + bias), rtol=1e-6)
    returns = jnp.array([[1.0, 3.0], [0.0, 0.0]])
    thetas = jnp.array([[1.0, 1.0], [2.0, 0.0]])
    # -(mean return) + 0.1 * mean(theta^2): -2 + 0.1, 0 + 0.2
    np.testing.assert_allclose(wm.fitness(returns, thetas, 0.1), [-1.9, 0.2], rtol=1e-6)


def test_v_has_the_papers_shapes():
    vae = wm.VAE(32, 32)
    x = jnp.zeros((2, 64, 64, 3))
    params = jax.eval_shape(vae.init, jax.random.PRNGKey(0), x, jax.random.PRNGKey(1))
    leaves = [(jax.tree_util.keystr(k), v.shape) for k, v in jax.tree_util.tree_flatten_with_path(params)[0]]
    convs = lambda part: [s for k, s in leaves if part in k and "kernel" in k and len(s) == 4]  # noqa: E731
    # Flax names the layers Conv_0.., ConvTranspose_0..: at most 10 of each, so their order sorts.
    # Encoder 4x4 convolutions 3->32->64->128->256; decoder 5, 5, 6, 6 transposed to 128, 64, 32, 3.
    assert convs("encoder") == [(4, 4, 3, 32), (4, 4, 32, 64), (4, 4, 64, 128), (4, 4, 128, 256)]
    assert [s[:2] + s[3:] for s in convs("decoder")] == [(5, 5, 128), (5, 5, 64), (6, 6, 32), (6, 6, 3)]
    out = jax.eval_shape(vae.apply, params, x, jax.random.PRNGKey(1))
    assert out[0].shape == (2, 64, 64, 3) and out[1].shape == (2, 32)
    # C on [z, h] for one action: the paper's 867 parameters are 3 x (32 + 256) + 3 for CarRacing's 3.
    assert wm.controller_size(32 + 256, 3) == 867


def test_a_cma_es_generation_minimises_a_known_quadratic():
    """Our generation (ask, every candidate's rollouts in one batch, fitness, tell) with evosax's
    CMA-ES on a 'return' of -||theta - target||^2 plus noise: the mean reaches the target."""
    target = jnp.array([0.5, -0.3, 0.8, 0.1, -0.6])
    config = dataclasses.replace(TINY, population=16, rollouts_per_candidate=4, weight_decay=0.0, sigma_init=0.3)
    strategy = CMA_ES(config.population, jnp.zeros(5))
    params = strategy.default_params.replace(std_init=jnp.float32(config.sigma_init))
    seen = []

    def rollouts(thetas, key):
        seen.append(thetas.shape)
        return -jnp.sum((thetas - target) ** 2, axis=1) + 0.001 * jax.random.normal(key, thetas.shape[:1])

    @jax.jit
    def run(key):
        state = strategy.init(key, jnp.zeros(5), params)

        def body(state, key):
            state, returns = wm.generation(strategy, params, state, key, rollouts, config)
            return state, returns.mean()

        state, curve = jax.lax.scan(body, state, jax.random.split(key, 60))
        return state.mean, curve

    mean, curve = run(jax.random.PRNGKey(0))
    assert seen[0] == (64, 5)  # 16 candidates x 4 rollouts, one batch
    start = float(jnp.sum(target**2))
    assert float(jnp.sum((mean - target) ** 2)) < 1e-2 * start
    assert float(curve[-1]) > float(curve[0])


def test_the_dream_ends_where_the_done_head_says():
    """An M whose done logit is positive from the first step: a dreamed episode collects one reward."""
    config = TINY
    rnn = wm.MDNRNN(config.z_size, config.rnn_hidden, config.num_mixtures)
    params = rnn.init(jax.random.PRNGKey(0), rnn.initial_carry((1,)), jnp.zeros((1, config.z_size)), jnp.zeros((1, 1)))
    head = params["params"]["head"]
    bias = jnp.zeros_like(head["bias"]).at[-2].set(1.0).at[-1].set(5.0)  # reward 1, done logit 5
    params = {"params": dict(params["params"], head=dict(kernel=jnp.zeros_like(head["kernel"]), bias=bias))}
    data = wm.Rollouts(jnp.zeros((3, 5, config.z_size)), jnp.zeros((3, 5, config.z_size)), None, None, None, None)
    thetas = jnp.zeros((4, wm.controller_size(config.z_size + config.rnn_hidden, 1)))
    parts = (None, None, rnn, params)
    ended = wm.dream_returns(parts, thetas, data, jax.random.PRNGKey(1), config, 10, can_terminate=True)
    endless = wm.dream_returns(parts, thetas, data, jax.random.PRNGKey(1), config, 10, can_terminate=False)
    np.testing.assert_allclose(ended, np.ones(4))
    np.testing.assert_allclose(endless, np.full(4, 10.0))


def test_every_preset_is_a_valid_config():
    for name, preset in wm.PRESETS.items():
        base = wm.TASKS.get(preset.get("env", wm.Config().env), {})
        dataclasses.replace(wm.Config(), **{**base, **preset}).validate()


def test_refusals_name_the_mistake():
    with pytest.raises(ConfigError, match="64 x 64 RGB"):
        wm.make_train(dataclasses.replace(TINY, env="pendulum"))
    with pytest.raises(ConfigError, match="population must be at least 2"):
        wm.make_train(dataclasses.replace(TINY, population=1))
    with pytest.raises(ConfigError, match="generations"):
        wm.make_train(dataclasses.replace(TINY, total_steps=500))


@pytest.mark.slow
def test_v_m_and_c_learn_on_cartpole_swingup_pixels():
    """A small run: V reconstructs far better than at its start, M predicts z better than a standard
    normal does, and the evolved C's mean earns clearly more in the real task than C = 0 does."""
    config = dataclasses.replace(
        wm.Config(),
        episode_length=200,
        random_rollouts=8,
        vae_depth=4,
        vae_steps=100,
        rnn_hidden=32,
        rnn_steps=200,
        rnn_batch_size=8,
        population=8,
        rollouts_per_candidate=1,
        generations=8,
        eval_every=8,
        eval_episodes=4,
    )
    trainer = wm.make_train(config)
    state, metrics = jax.jit(trainer)(jax.random.PRNGKey(0), config)
    fit = jax.device_get(state.fit_metrics)
    # At V's start every pixel reads 0.5: about 64 * 64 * 3 * 0.25 = 3,072 on a white frame.
    assert fit["vae_reconstruction"] < 1000.0, fit
    # A standard normal's NLL per dimension is 1.42; M, knowing z and the action, does better.
    assert fit["rnn_z_nll"] < 1.42, fit
    zero = state._replace(es_state=state.es_state.replace(mean=jnp.zeros_like(state.es_state.mean)))
    zero_return = float(jax.jit(trainer.evaluate)(zero, jax.random.PRNGKey(3), config)["eval_return"])
    final_return = float(metrics["eval"]["eval_return"][-1])
    assert np.isfinite(final_return) and final_return > zero_return + 5.0, (zero_return, final_return)
