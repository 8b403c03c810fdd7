"""Dreamer: DreamerV3's transforms and distributions against their definitions; the world model's
loss, imagination, lambda-returns and the actor's and critic's losses against references worked by
hand or by a loop; runs from vectors, pixels and discrete actions; the mistakes only Dreamer
refuses; and the pendulum learning bar. The run folder, resume and the shared guarantees are in
tests/test_contract.py."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_pendulum_return

from mbrlax import envs, policies, rssm
from mbrlax.algorithms import dreamer
from mbrlax.runner import preset_config


def test_symlog_inverts_and_two_hot_decodes_to_its_value():
    y = jnp.array([-3000.0, -7.5, -1.0, 0.0, 0.3, 42.0, 1e5])
    np.testing.assert_allclose(rssm.symexp(rssm.symlog(y)), y, rtol=1e-5)
    code = rssm.two_hot(rssm.symlog(y))
    assert code.shape == (7, 255)
    np.testing.assert_allclose(code.sum(-1), 1.0, rtol=1e-6)
    assert ((code > 0).sum(-1) <= 2).all()
    # The expected bin of the code is symlog(y), so decoding logits = log(code) gives y back.
    np.testing.assert_allclose(rssm.two_hot_mean(jnp.log(code + 1e-30)), y, rtol=1e-4, atol=1e-6)
    # The loss is smallest at the code itself, and the zero-initialised head predicts 0.
    target = jnp.float32(5.0)
    assert rssm.two_hot_loss(
        jnp.log(rssm.two_hot(rssm.symlog(target)) + 1e-30), target
    ) < rssm.two_hot_loss(jnp.zeros(255), target)
    assert float(rssm.two_hot_mean(jnp.zeros(255))) == pytest.approx(0.0, abs=1e-5)


def test_unimix_and_inverse_cdf_sampling():
    logits = jnp.log(jnp.array([[0.7, 0.2, 0.1, 0.0]]))
    mixed = jnp.exp(rssm.unimix_logits(logits, 0.01))
    np.testing.assert_allclose(mixed, 0.99 * jnp.array([[0.7, 0.2, 0.1, 0.0]]) + 0.0025, rtol=1e-6)
    samples = jax.vmap(lambda k: rssm.sample_one_hot(k, jnp.log(mixed[0])))(
        jax.random.split(jax.random.PRNGKey(0), 40_000)
    )
    assert ((samples == 0) | (samples == 1)).all() and (samples.sum(-1) == 1).all()
    np.testing.assert_allclose(samples.mean(0), mixed[0], atol=0.01)
    assert float(rssm.categorical_kl(jnp.log(mixed), jnp.log(mixed)).sum()) == pytest.approx(0.0, abs=1e-6)


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
        return dreamer.actor_loss(
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
    assert float(dreamer.actor_loss(3 * one, one, one, one, 0 * one, 0.5, 0.0, "dynamics")) == pytest.approx(-2.0)


def test_return_scale_is_an_ema_of_the_percentile_range():
    returns = jnp.arange(101.0).reshape(1, 101)  # P5 = 5, P95 = 95
    np.testing.assert_allclose(dreamer.updated_return_scale(jnp.float32(10.0), returns, 0.99), 0.99 * 10 + 0.01 * 90)


def test_policy_clip_is_the_2023_codes_scaling():
    """dreamerv3/nets.py (2023), RSSM.img_step: a * sg(1 / max(1, |a|)): a clip forward, a gradient
    scaled by 1 / |a| outside the box."""
    policy = policies.PolicyDistribution(False, 0.01)
    action = jnp.array([-3.0, -0.5, 0.2, 2.0])
    np.testing.assert_allclose(policy.executed(action), jnp.clip(action, -1, 1))
    grad = jax.grad(lambda x: policy.executed(x).sum())(action)
    np.testing.assert_allclose(grad, [1 / 3, 1.0, 1.0, 0.5], rtol=1e-6)


def test_kl_balance_clips_each_kl_at_the_free_nats_and_stops_opposite_gradients():
    """By hand, with log-probabilities as inputs: d KL(q || p) / d log p_i = -q_i, and
    d KL(q || p) / d log q_i = q_i (log q_i - log p_i + 1); a KL under the free nats has no gradient."""
    posterior = np.log(np.array([[[0.7, 0.2, 0.1], [0.3, 0.3, 0.4]], [[0.34, 0.33, 0.33], [0.3, 0.4, 0.3]]]))
    prior = np.log(np.array([[[0.1, 0.1, 0.8], [0.3, 0.3, 0.4]], [[0.33, 0.33, 0.34], [0.4, 0.3, 0.3]]]))
    q = np.exp(posterior)
    kl = (q * (posterior - prior)).sum((-2, -1))  # [2 steps], summed over the 2 latents
    free_nats = 0.5
    assert kl[0] > free_nats > kl[1]
    got = rssm.kl_balance(jnp.asarray(posterior, jnp.float32), jnp.asarray(prior, jnp.float32), free_nats)
    dynamics, representation, dynamics_kl, representation_kl = (np.asarray(x) for x in got)
    np.testing.assert_allclose(dynamics_kl, kl, rtol=1e-5)
    np.testing.assert_allclose(representation_kl, kl, rtol=1e-5)
    np.testing.assert_allclose(dynamics, np.maximum(kl, free_nats), rtol=1e-5)
    np.testing.assert_allclose(representation, np.maximum(kl, free_nats), rtol=1e-5)

    def term(index):
        return lambda post, pri: rssm.kl_balance(post, pri, free_nats)[index].sum()

    args = (jnp.asarray(posterior, jnp.float32), jnp.asarray(prior, jnp.float32))
    above = np.array([1.0, 0.0])[:, None, None]  # only step 0's KL is above the free nats
    # The dynamics term trains the prior only, the representation term the posterior only.
    to_posterior, to_prior = jax.grad(term(0), argnums=(0, 1))(*args)
    np.testing.assert_allclose(to_posterior, 0.0)
    np.testing.assert_allclose(to_prior, -q * above, rtol=1e-5, atol=1e-7)
    to_posterior, to_prior = jax.grad(term(1), argnums=(0, 1))(*args)
    np.testing.assert_allclose(to_posterior, q * (posterior - prior + 1.0) * above, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(to_prior, 0.0)


SMALL = dict(deter_size=8, hidden_size=8, layers=1, stoch_size=2, classes=3)


def small_networks(obs_size=3, action_size=1):
    config = dataclasses.replace(dreamer.Config(), **SMALL)
    networks = dreamer.Networks(
        world_model=rssm.WorldModel(config, (obs_size,), action_size),
        actor=rssm.Head(8, 1, 2 * action_size),
        critic=rssm.Head(8, 1, len(rssm.BINS), zero_init=True),
        policy=policies.PolicyDistribution(False, 0.01),
    )
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    model = networks.world_model.init(
        keys[0], jnp.zeros((1, obs_size)), jnp.zeros((1, action_size)), jnp.ones(1), jax.random.PRNGKey(0)
    )
    feat_size = 8 + 2 * 3
    actor = networks.actor.init(keys[1], jnp.zeros((1, feat_size)))
    critic = networks.critic.init(keys[2], jnp.zeros((1, feat_size)))
    return networks, model, actor, critic


def test_world_model_loss_is_the_sum_of_its_terms_and_free_nats_stop_the_kl_gradient():
    networks, params, _, _ = small_networks()
    B, T = 2, 5
    keys = jax.random.split(jax.random.PRNGKey(1), 4)
    batch = {
        "obs": jax.random.normal(keys[0], (B, T, 3)) * 3.0,
        "action": jax.random.uniform(keys[1], (B, T, 1), minval=-1.0, maxval=1.0),
        "reward": jax.random.normal(keys[2], (B, T)),
        "is_first": jnp.zeros((B, T)).at[1, 2].set(1.0),
        "is_terminal": jnp.zeros((B, T)).at[1, 1].set(1.0),
    }

    def loss(params, dyn_scale, rep_scale, free_nats):
        return dreamer.world_model_loss(params, networks.world_model, batch, keys[3], dyn_scale, rep_scale, free_nats)

    free_nats = 1e3

    @jax.jit  # one program: the eager scan and gradients take minutes on a CPU
    def losses_and_gradients(params):
        gradient = lambda *scales: jax.grad(lambda p: loss(p, *scales)[0])(params)  # noqa: E731
        return (
            loss(params, 0.5, 0.1, 0.0),
            loss(params, 0.5, 0.1, free_nats)[1][1],
            gradient(0.5, 0.1, free_nats),
            gradient(0.0, 0.0, 0.0),
            gradient(0.5, 0.1, 0.0),
        )

    (value, (latents, m)), clipped_metrics, clipped, without_kl, with_kl = losses_and_gradients(params)
    # With no free nats each KL term is its KL (a KL is never negative).
    terms = m["reconstruction_loss"] + m["reward_loss"] + m["continue_loss"]
    np.testing.assert_allclose(value, terms + 0.5 * m["dynamics_kl"] + 0.1 * m["representation_kl"], rtol=1e-5)
    assert latents["deter"].shape == (B, T, 8) and latents["stoch"].shape == (B, T, 2, 3)
    # With free nats above every KL, the KL terms are constants: the gradient is that of the other
    # terms alone, and the prior, which only the KL trains, gets none.
    assert max(float(clipped_metrics["dynamics_kl"]), float(clipped_metrics["representation_kl"])) < free_nats
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), clipped, without_kl)
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree_util.tree_leaves(clipped["params"]["prior_net"]))
    assert any(float(jnp.abs(x).max()) > 0.0 for x in jax.tree_util.tree_leaves(with_kl["params"]["prior_net"]))


def test_imagine_starts_from_the_given_states():
    networks, model, actor, _ = small_networks()
    N, H = 3, 4
    keys = jax.random.split(jax.random.PRNGKey(2), 3)
    start = {
        "deter": jax.random.normal(keys[0], (N, 8)),
        "stoch": jax.nn.one_hot(jax.random.randint(keys[1], (N, 2), 0, 3), 3),
    }
    imagine = jax.jit(lambda start: dreamer.imagine(model, actor, networks, start, keys[2], H))
    feats, actions = imagine(start)
    assert feats.shape == (H + 1, N, 8 + 2 * 3) and actions.shape == (H, N, 1)
    np.testing.assert_array_equal(feats[0], rssm.features(start))
    # Each path follows from its own start: moving the first start moves the first path only.
    moved = dict(start, deter=start["deter"].at[0].add(1.0))
    moved_feats, moved_actions = imagine(moved)
    np.testing.assert_allclose(moved_feats[:, 1:], feats[:, 1:], rtol=1e-6)
    np.testing.assert_allclose(moved_actions[:, 1:], actions[:, 1:], rtol=1e-6)
    assert float(jnp.abs(moved_feats[1, 0] - feats[1, 0]).max()) > 1e-3


def test_critic_loss_matches_a_batch_by_hand():
    """Two-hot cross-entropy against the lambda-returns plus the same against the slow critic's
    values, weighted and averaged over [H, N], written out in numpy."""
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(3, 2, 4))  # [H + 1, N, F]
    params, slow_params = 0.1 * rng.normal(size=(4, 255)), 0.1 * rng.normal(size=(4, 255))
    returns = np.array([[1.5, -30.0], [200.0, 0.2]])
    weights = np.array([[1.0, 0.9], [0.5, 1.0]])
    bins = np.linspace(-20.0, 20.0, 255)

    def two_hot(y):
        s = np.clip(np.sign(y) * np.log1p(abs(y)), bins[0], bins[-1])
        k = min(int(np.searchsorted(bins, s, side="right")) - 1, 253)
        code = np.zeros(255)
        upper = (s - bins[k]) / (bins[k + 1] - bins[k])
        code[k], code[k + 1] = 1.0 - upper, upper
        return code

    def log_softmax(x):
        return x - x.max() - np.log(np.exp(x - x.max()).sum())

    expected = 0.0
    for t in range(2):
        for n in range(2):
            log_probs = log_softmax(feats[t, n] @ params)
            slow = np.exp(log_softmax(feats[t, n] @ slow_params)) @ bins
            slow_value = np.sign(slow) * np.expm1(abs(slow))
            cross_entropy = -(two_hot(returns[t, n]) * log_probs).sum() - (two_hot(slow_value) * log_probs).sum()
            expected += weights[t, n] * cross_entropy / 4
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    got = dreamer.critic_loss(f32(params), lambda p, x: x @ p, f32(slow_params), f32(feats), f32(returns), f32(weights))
    np.testing.assert_allclose(got, expected, rtol=1e-5)



@pytest.mark.parametrize(
    "env, actor_gradient",
    [
        # The tiny preset as it is (pendulum, "auto": the dynamics gradient) runs in tests/test_contract.py.
        ("pendulum", "reinforce"),
        # Convolutions run long: with XLA's defaults, in make test's second session (118 s, not 64, without).
        pytest.param("pendulum_pixels", "auto", marks=pytest.mark.slow),
        ("cartpole_discrete", "auto"),  # REINFORCE: "dynamics" would be refused for discrete actions
    ],
)
def test_runs_from_vectors_pixels_and_discrete_actions(env, actor_gradient):
    # The tiny preset cut to 128 random steps, then two periods of updates and one evaluation.
    tiny = dict(dreamer.VARIANTS["tiny"], total_steps=256)
    config = dataclasses.replace(dreamer.Config(), env=env, actor_gradient=actor_gradient, **tiny)
    state, metrics = jax.jit(dreamer.make_train(config))(jax.random.PRNGKey(0), config)
    for name, value in {**metrics["train"], **metrics["eval"]}.items():
        assert np.isfinite(np.asarray(value)).all(), name
    assert metrics["eval"]["eval_return"].shape == (1,)
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


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--initial-steps", "8"], "cover one replayed sequence"),
        (["--train-ratio", "3", "--steps-per-update", "32"], "must divide by"),
        (["--env", "cartpole_discrete", "--actor-gradient", "dynamics"], "discrete"),
    ],
)
def test_bad_input_exits_2_with_one_sentence(extra, message, capsys, tmp_path):
    """The mistakes only Dreamer refuses; the ones every algorithm refuses are in tests/test_bad_inputs.py."""
    code = dreamer.main(["--preset", "tiny", *extra, "--no-progress", "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_image_the_encoder_cannot_take_is_refused():
    task, spec = envs.make("pendulum_pixels")
    odd_images = (task, dataclasses.replace(spec, image_shape=(60, 60, 3)))
    config = dataclasses.replace(dreamer.Config(), env="pendulum_pixels", **dreamer.VARIANTS["tiny"])
    with pytest.raises(dreamer.ConfigError, match="divide by 16"):
        dreamer.make_train(config, env=odd_images)


# The CI learning setting: the pendulum preset (tiny model, the actor gradient through the dynamics
# of the 2023 DreamerV3 code) made cheaper where it proves the same: networks of 32 units, 8 x 16
# replayed steps per update at one update per environment step, learning rates twice the preset's,
# a prefill of 500 steps and 3,000 steps in all. Its update costs about an eighth of the preset's
# (16 x 64 replayed steps, one update every second step), and it learns in fewer steps.
DREAMER_CI = dict(
    deter_size=32,
    hidden_size=32,
    stoch_size=16,
    batch_size=8,
    sequence_length=16,
    train_ratio=128,
    model_lr=6e-4,
    actor_lr=2e-4,
    critic_lr=2e-4,
    initial_steps=500,
    total_steps=3000,
    eval_every=500,
)


@pytest.mark.slow
def test_dreamer_learns_pendulum_from_state():
    """The issue's bar: after a short budget, the return on pendulum is well above a random policy's
    (about -1200). -600 needs the pendulum swung up and held for part of most episodes; a world model
    that predicts no reward, or an actor that does not follow the critic, stays near the random return.
    Measured on a 2-core CPU with DREAMER_CI: returns after 3,000 steps of seeds 0 to 4, vmapped
    (seeds 2 to 4 in runs of 3,500 steps), -219, -165, -138, -394, -139; this test's run of seed 0
    -1503, -1570, -883, -756, -276 at 1,000 to 3,000 steps, in 70 s with compilation. The preset's
    own setting (5,000 steps) took 987 s in CI."""
    config = dataclasses.replace(dreamer.Config(), **{**dreamer.PRESETS["pendulum"], **DREAMER_CI})
    _, metrics = jax.jit(dreamer.make_train(config))(jax.random.PRNGKey(0), config)
    returns = np.asarray(metrics["eval"]["eval_return"])
    print(f"Dreamer pendulum returns {returns.round(0)}")

    random_return = random_pendulum_return()
    print(f"random policy return {random_return:.0f}")
    assert random_return < -1000
    assert returns[-1] > -600, returns


@pytest.mark.parametrize("module", ["encoder", "decoder"])
def test_matmul_convolutions_are_xlas_to_rounding_and_stay_ungrouped_under_vmap(module):
    """`--convolution matmul`: the same parameters (same names, same initial values) and the same
    outputs to float32 rounding as XLA's convolutions. Under vmap over two seeds' parameters, XLA's
    convolutions become grouped convolutions (feature_group_count 2 in the lowered program, which
    GPUs run slowly); the matmul form lowers to no convolution at all."""
    key = jax.random.PRNGKey(0)
    if module == "encoder":
        build = lambda convolution: rssm.ImageEncoder(8, convolution)  # noqa: E731
        x = jax.random.randint(key, (3, 64, 64, 3), 0, 256).astype(jnp.uint8)
    else:
        build = lambda convolution: rssm.ImageDecoder(8, (64, 64, 3), convolution)  # noqa: E731
        x = jax.random.normal(key, (3, 40))
    xla, matmul = build("xla"), build("matmul")
    seeds = jax.random.split(key, 2)
    two_seeds = jax.jit(jax.vmap(xla.init, (0, None)))(seeds, x)
    jax.tree_util.tree_map(np.testing.assert_array_equal, two_seeds, jax.jit(jax.vmap(matmul.init, (0, None)))(seeds, x))
    params = jax.tree_util.tree_map(lambda p: p[0], two_seeds)
    np.testing.assert_allclose(jax.jit(matmul.apply)(params, x), jax.jit(xla.apply)(params, x), atol=1e-5, rtol=1e-5)

    def lowered(net):
        def loss(p):
            return jnp.square(net.apply(p, x)).sum()

        return jax.jit(jax.vmap(jax.grad(loss))).lower(two_seeds).as_text()

    assert "feature_group_count = 2" in lowered(xla)
    assert "convolution" not in lowered(matmul)


# DREAMERV1 AND V2 (`--preset v1`, `--preset v2`): the options that make them, by hand.


def test_v2_kl_balance_weights_the_two_sides_and_half_is_the_plain_kl():
    """dreamerv2/common/nets.py, kl_loss: 0.8 max(free, KL(sg(q) || p)) + 0.2 max(free, KL(q || sg(p))),
    times kl_scale; both terms have the value of KL(q || p), so the loss is kl_scale max(free, KL); the
    prior's gradient is 0.8 of the plain KL's, the posterior's 0.2; balance 0.5 is the plain KL with
    both gradients whole (V1). With free_average the batch's mean KL is clipped (V1, V2's free_avg)."""
    posterior = np.log(np.array([[[0.7, 0.2, 0.1], [0.3, 0.3, 0.4]], [[0.5, 0.25, 0.25], [0.2, 0.4, 0.4]]]))
    prior = np.log(np.array([[[0.1, 0.1, 0.8], [0.3, 0.3, 0.4]], [[0.25, 0.25, 0.5], [0.4, 0.3, 0.3]]]))
    q = np.exp(posterior)
    kl = (q * (posterior - prior)).sum((-2, -1))  # [2 steps]
    args = (jnp.asarray(posterior, jnp.float32), jnp.asarray(prior, jnp.float32))
    scale = 2.0
    for balance, prior_share, posterior_share in ((0.8, 0.8, 0.2), (0.5, 1.0, 1.0)):
        loss = lambda post, pri: rssm.balanced_kl_loss(post, pri, 0.0, balance, scale).sum()  # noqa: E731
        np.testing.assert_allclose(loss(*args), scale * kl.sum(), rtol=1e-5)
        to_posterior, to_prior = jax.grad(loss, argnums=(0, 1))(*args)
        np.testing.assert_allclose(to_prior, -scale * prior_share * q, rtol=1e-4, atol=1e-6)
        by_hand = scale * posterior_share * q * (posterior - prior + 1.0)
        np.testing.assert_allclose(to_posterior, by_hand, rtol=1e-4, atol=1e-6)
    # Free nats between the two steps' KLs: per step only the smaller is clipped; on the mean, neither.
    free = float(kl.mean() - 0.01)
    assert kl.min() < free < kl.max()
    per_step = rssm.balanced_kl_loss(*args, free, 0.8, 1.0)
    np.testing.assert_allclose(per_step, np.maximum(kl, free), rtol=1e-5)
    np.testing.assert_allclose(rssm.balanced_kl_loss(*args, free, 0.8, 1.0, free_average=True), kl.mean(), rtol=1e-5)


def test_gaussian_kl_by_hand_and_as_planets():
    from mbrlax.algorithms import planet

    p = jnp.array([[[0.5, 1.0], [-1.0, 0.5]]])  # (mean, std) of 2 dimensions
    q = jnp.array([[[0.0, 2.0], [1.0, 1.0]]])
    by_hand = (np.log(2.0 / 1.0) + (1.0 + 0.25) / 8.0 - 0.5) + (np.log(1.0 / 0.5) + (0.25 + 4.0) / 2.0 - 0.5)
    np.testing.assert_allclose(rssm.gaussian_kl(p, q), [by_hand], rtol=1e-6)
    np.testing.assert_allclose(rssm.latent_kl(p, q, "gaussian"), planet.gaussian_kl(p, q), rtol=1e-6)


def test_mse_heads_and_the_critic_without_regulariser():
    """V1/V2's reward and value heads: the mean of a unit-variance normal, loss 0.5 (x - y)^2 (its
    negative log-likelihood less 0.5 log 2 pi); with `slow_target` the critic regresses on the
    returns alone (they bootstrap from the slow critic already)."""
    head = dreamer.Regression("mse")
    assert head.outputs == 1 and dreamer.Regression().outputs == 255
    np.testing.assert_allclose(head.loss(jnp.array([[2.0], [-1.0]]), jnp.array([0.5, 3.0])), [1.125, 8.0])
    np.testing.assert_allclose(head.mean(jnp.array([[2.0], [-1.0]])), [2.0, -1.0])
    rng = np.random.default_rng(0)
    feats, params = rng.normal(size=(3, 2, 4)), rng.normal(size=(4, 1))  # [H + 1, N, F]
    returns, weights = rng.normal(size=(2, 2)), np.array([[1.0, 0.9], [0.5, 1.0]])
    expected = (weights * 0.5 * ((feats[:-1] @ params)[..., 0] - returns) ** 2).mean()
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    got = dreamer.critic_loss(
        f32(params), lambda p, x: x @ p, None, f32(feats), f32(returns), f32(weights), value=head, regularise=False
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("gradient", ["dynamics", "both"])
def test_v1_v2_actor_loss_is_the_return_unnormalised(gradient):
    """danijar/dreamer (V1) and dreamerv2/agent.py: the dynamics objective is the lambda-return
    alone, not divided; "both" mixes it with REINFORCE on R - v."""
    one = jnp.ones((2, 1))
    returns, values, log_prob, entropy = 30.0 * one, 10.0 * one, 0.5 * one, one
    kwargs = dict(mix=0.1, normalise=False, dynamics_baseline=False)
    got = float(dreamer.actor_loss(returns, values, one, log_prob, entropy, 100.0, 1e-4, gradient, **kwargs))
    expected = -(30.0 + 1e-4) if gradient == "dynamics" else -(0.1 * 30.0 + 0.9 * 0.5 * 20.0 + 1e-4)
    assert got == pytest.approx(expected, rel=1e-6)


def test_v1_tanh_normal_policy():
    """danijar/dreamer models.py, ActionDecoder: mean 5 tanh(m / 5), std softplus(s + softplus^-1(5)) +
    1e-4 of a normal squashed by tanh; log-probability by the change of variables."""
    policy = policies.PolicyDistribution(False, 0.01, "tanh_normal", 5.0)
    raw = jnp.array([0.3, 0.0])  # mean 0.3 (nearly), raw std 0: the initial std 5
    mean, std = policy.params(raw)
    np.testing.assert_allclose(std, 5.0 + 1e-4, rtol=1e-6)
    np.testing.assert_allclose(policy.mode(raw), np.tanh(5 * np.tanh(0.06)), rtol=1e-6)
    samples = jax.vmap(lambda k: policy.sample(raw, k))(jax.random.split(jax.random.PRNGKey(0), 1000))
    assert float(jnp.abs(samples).max()) < 1.0
    a = 0.4
    u = np.arctanh(a)
    by_hand = -0.5 * ((u - float(mean[0])) / float(std[0])) ** 2 - np.log(float(std[0])) - 0.5 * np.log(2 * np.pi)
    by_hand -= np.log(1 - a**2)
    np.testing.assert_allclose(policy.log_prob(raw, jnp.array([a])), by_hand, rtol=1e-5)


def test_v2_trunc_normal_policy():
    """dreamerv2/common/nets.py, DistLayer trunc_normal: loc tanh(out), std 2 sigmoid(s / 2) + 0.1 of a
    normal truncated to [-1, 1] (dists.py, TruncNormalDist): its density integrates to 1 there, its
    closed-form entropy and its samples' mean are the density's (by quadrature, and scipy's), the
    samples stay inside the bounds, and their gradients reach loc and scale."""
    policy = policies.PolicyDistribution(False, 0.01, "trunc_normal")
    raws = jnp.array([[0.3, 0.0], [2.5, -3.0], [-4.0, -40.0], [0.0, 40.0]])  # std 1.1, 0.26, 0.1, 2.1
    loc, scale = policy.params(raws)
    np.testing.assert_allclose(loc[:, 0], np.tanh(raws[:, 0]), rtol=1e-6)
    np.testing.assert_allclose(scale[:, 0], 2 / (1 + np.exp(-raws[:, 1] / 2)) + 0.1, rtol=1e-6)
    grid = np.linspace(-1.0, 1.0, 40_001)
    log_p = np.asarray(jax.vmap(lambda r: jax.vmap(lambda a: policy.log_prob(r, a[None]))(jnp.asarray(grid)))(raws))
    density = np.exp(log_p.astype(np.float64))
    np.testing.assert_allclose(np.trapezoid(density, grid, axis=1), 1.0, rtol=1e-4)
    entropy = -np.trapezoid(density * log_p, grid, axis=1)
    np.testing.assert_allclose(policy.entropy(raws), entropy, rtol=1e-4, atol=1e-4)
    samples = jax.vmap(lambda k: policy.sample(raws, k))(jax.random.split(jax.random.PRNGKey(0), 20_000))[..., 0]
    assert float(jnp.abs(samples).max()) <= 1.0 - 1e-6
    mean = np.trapezoid(density * grid, grid, axis=1)
    np.testing.assert_allclose(samples.mean(0), mean, atol=0.02)
    np.testing.assert_allclose(policy.mode(raws)[:, 0], loc[:, 0])
    stats = pytest.importorskip("scipy.stats")
    lo, hi = (-1 - np.asarray(loc[:, 0])) / scale[:, 0], (1 - np.asarray(loc[:, 0])) / scale[:, 0]
    truncnorm = stats.truncnorm(lo, hi, loc=np.asarray(loc[:, 0]), scale=np.asarray(scale[:, 0]))
    np.testing.assert_allclose(policy.entropy(raws), truncnorm.entropy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(log_p[:, 2000::4000], truncnorm.logpdf(grid[2000::4000, None]).T, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(samples.mean(0), truncnorm.mean(), atol=0.02)


def test_trunc_normal_samples_are_reparameterised_and_finite_at_the_extremes():
    """The sample is loc + scale z(lower, upper), z the inverse CDF at a fixed uniform: its gradient
    with respect to loc and scale is the finite difference's, and bounds far in a tail (loc near a
    bound, scale 0.1) give finite samples within the bounds and finite gradients."""
    policy = policies.PolicyDistribution(False, 0.01, "trunc_normal")
    key = jax.random.PRNGKey(1)

    def sample(loc, scale, k):
        z = policies.truncated_standard_normal(k, (-1.0 - loc) / scale, (1.0 - loc) / scale)
        return loc + scale * z

    loc, scale = jnp.float32(0.3), jnp.float32(0.8)
    for k in jax.random.split(key, 5):
        grad_loc, grad_scale = jax.grad(sample, (0, 1))(loc, scale, k)
        eps = 1e-3
        fd_loc = (sample(loc + eps, scale, k) - sample(loc - eps, scale, k)) / (2 * eps)
        fd_scale = (sample(loc, scale + eps, k) - sample(loc, scale - eps, k)) / (2 * eps)
        np.testing.assert_allclose([grad_loc, grad_scale], [fd_loc, fd_scale], rtol=0.02, atol=2e-3)
    keys = jax.random.split(key, 50_000)
    for raw in ([6.0, -40.0], [-6.0, -40.0], [0.0, -40.0]):
        raw = jnp.array(raw)
        actions = jax.vmap(lambda k: policy.sample(raw, k))(keys)
        grads = jax.vmap(jax.grad(lambda r, k: policy.sample(r, k).sum()), (None, 0))(raw, keys)
        assert bool(jnp.isfinite(actions).all()) and float(jnp.abs(actions).max()) < 1.0
        assert bool(jnp.isfinite(grads).all()) and float(jnp.abs(grads).max()) > 0.0


def test_v1_v2_layers_elu_without_layernorm():
    """`activation="elu"` with `layer_norm="none"` (V1) or "gru" (V2): each hidden layer is Dense with
    a bias then ELU, with no LayerNorm anywhere, or only in the GRU; V3's layers by default."""
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 6))
    block = rssm.Block(5, "elu", norm=False)
    params = block.init(jax.random.PRNGKey(1), x)
    dense = params["params"]["Dense_0"]
    np.testing.assert_allclose(block.apply(params, x), jax.nn.elu(x @ dense["kernel"] + dense["bias"]), rtol=1e-6)
    for layer_norm, normed in (("all", None), ("gru", {"gru"}), ("none", set())):
        config = dataclasses.replace(dreamer.Config(), **SMALL, activation="elu", layer_norm=layer_norm)
        model = rssm.WorldModel(config, (3,), 1)
        params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)), jnp.zeros((1, 1)), jnp.ones(1), jax.random.PRNGKey(2))
        paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        with_norm = {path.split("'")[3] for path in paths if "LayerNorm" in path}
        if normed is not None:
            assert with_norm == normed, layer_norm
        else:
            assert {"gru", "dynamics_input", "encoder", "decoder"} <= with_norm


def test_v2_slow_critic_copies_every_n_updates():
    """dreamerv2/agent.py, update_slow_target: at updates 0, n, 2n, ... slow <- f critic + (1 - f) slow,
    f = 1 at update 0; unchanged otherwise."""
    config = dataclasses.replace(dreamer.Config(), slow_critic_every=100, slow_critic_rate=0.5)
    critic, slow = {"w": jnp.float32(4.0)}, {"w": jnp.float32(0.0)}
    got = [float(dreamer.periodic_slow_critic(critic, slow, jnp.int32(n), config)["w"]) for n in (0, 1, 99, 100, 200)]
    assert got == [4.0, 0.0, 0.0, 2.0, 2.0]


def test_gaussian_latent_world_model_loss_and_imagination_shapes():
    """`latent="gaussian"` (V1): z is [..., stoch_size, 1], the statistics (mean, std); the loss with
    V1's plain KL and the MSE reward head is finite and its KL metrics are the Gaussian KL."""
    config = dataclasses.replace(dreamer.Config(), **SMALL, latent="gaussian")
    model = dreamer.MSERewardModel(config, (3,), 1, latent="gaussian")
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)), jnp.zeros((1, 1)), jnp.ones(1), jax.random.PRNGKey(0))
    assert "reward_mean" in params["params"] and "reward_head" not in params["params"]
    B, T = 2, 5
    batch = {
        "obs": jax.random.normal(jax.random.PRNGKey(1), (B, T, 3)),
        "action": jnp.zeros((B, T, 1)),
        "reward": jnp.ones((B, T)),
        "is_first": jnp.zeros((B, T)),
        "is_terminal": jnp.zeros((B, T)),
    }
    options = dict(kl_balance_weight=0.5, kl_scale=1.0, free_average=True, reward=dreamer.Regression("mse"))
    loss, (latents, metrics) = jax.jit(
        lambda p: dreamer.world_model_loss(p, model, batch, jax.random.PRNGKey(2), 0.5, 0.1, 3.0, **options)
    )(params)
    assert latents["stoch"].shape == (B, T, 2, 1) and latents["deter"].shape == (B, T, 8)
    assert np.isfinite(float(loss))
    assert float(metrics["dynamics_kl"]) == pytest.approx(float(metrics["representation_kl"]))
    networks = dreamer.Networks(
        world_model=model,
        actor=rssm.Head(8, 1, 2),
        critic=rssm.Head(8, 1, 1),
        policy=policies.PolicyDistribution(False, 0.01, "tanh_normal"),
        reward=dreamer.Regression("mse"),
        value=dreamer.Regression("mse"),
    )
    actor = networks.actor.init(jax.random.PRNGKey(3), jnp.zeros((1, 8 + 2)))
    start = jax.tree_util.tree_map(lambda x: x.reshape((B * T,) + x.shape[2:]), latents)
    feats, actions = jax.jit(lambda s: dreamer.imagine(params, actor, networks, s, jax.random.PRNGKey(4), 3))(start)
    assert feats.shape == (4, B * T, 8 + 2) and actions.shape == (3, B * T, 1)


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_v1_and_v2_presets_build_and_update(variant):
    """`--preset v1 tiny` / `--preset v2 tiny`: the tiny run's sizes and budget on top of the
    version's choices; one update after the prefill, and an evaluation."""
    config = preset_config(dreamer.Config, dreamer.PRESETS, "pendulum", (variant, "tiny"))
    config = dataclasses.replace(config, total_steps=192)
    assert config.latent == ("gaussian" if variant == "v1" else "categorical") and config.value_head == "mse"
    state, metrics = jax.jit(dreamer.make_train(config))(jax.random.PRNGKey(0), config)
    for name, value in {**metrics["train"], **metrics["eval"]}.items():
        assert np.isfinite(np.asarray(value)).all(), name
    assert state.latent["stoch"].shape == ((1, 30, 1) if variant == "v1" else (1, 32, 8))
    # ELU layers without LayerNorm (V2: but in its GRU), and V2's truncated-normal actor.
    assert config.activation == "elu" and config.layer_norm == ("none" if variant == "v1" else "gru")
    assert config.actor_dist == ("tanh_normal" if variant == "v1" else "trunc_normal")
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state.world_model)[0]]
    assert {p.split("'")[3] for p in paths if "LayerNorm" in p} == (set() if variant == "v1" else {"gru"})
    assert not any("LayerNorm" in jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state.actor)[0])
