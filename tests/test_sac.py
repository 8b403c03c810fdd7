"""SAC (mbrlax.sac) and its tanh-Gaussian policy: the log-density, the soft Bellman target's handling of
termination, the temperature's direction, and jit/vmap agreement of one update."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbrlax import sac
from mbrlax.config import ConfigError, check_fields
from mbrlax.networks import tanh_gaussian_mode, tanh_gaussian_sample

OBS, ACT = 3, 2
CFG = sac.Agent(sac.SACConfig(sac_hidden_sizes=(32, 32), sac_batch_size=8), ACT)
LEARNING_RATE = 1e-3
HP = {
    "discount": jnp.float32(0.99),
    "tau": jnp.float32(5e-3),
    "target_entropy": jnp.float32(-ACT),
}
METRICS = {"critic_loss", "actor_loss", "alpha", "entropy", "q_mean"}


def _gaussian_change_of_variables(mean, log_std, key):
    """The log-density of tanh(u), u ~ N(mean, std), in float64 straight from the definition."""
    mean, log_std = np.asarray(mean, np.float64), np.asarray(log_std, np.float64)
    eps = np.asarray(jax.random.normal(key, mean.shape), np.float64)  # the same draw as the sampler's
    std = np.exp(log_std)
    u = mean + std * eps
    gaussian = -0.5 * ((u - mean) / std) ** 2 - log_std - 0.5 * np.log(2 * np.pi)
    return u, (gaussian - np.log(1.0 - np.tanh(u) ** 2)).sum(-1)


def _random_batch(key, size=CFG.config.sac_batch_size):
    keys = jax.random.split(key, 4)
    return {
        "obs": jax.random.normal(keys[0], (size, OBS)),
        "action": jax.random.uniform(keys[1], (size, ACT), minval=-1.0, maxval=1.0),
        "reward": jax.random.normal(keys[2], (size,)),
        "next_obs": jax.random.normal(keys[3], (size, OBS)),
        "terminated": (jnp.arange(size) % 3 == 0).astype(jnp.float32),
    }


# TANH-GAUSSIAN


def test_log_density_matches_change_of_variables():
    key = jax.random.PRNGKey(0)
    mean = jnp.linspace(-1.5, 1.5, 64 * 3).reshape(64, 3)
    log_std = jnp.linspace(-1.0, 0.3, 64 * 3)[::-1].reshape(64, 3)
    action, log_prob = jax.jit(tanh_gaussian_sample)(mean, log_std, key)
    u, expected = _gaussian_change_of_variables(mean, log_std, key)
    assert action.shape == (64, 3) and log_prob.shape == (64,)
    assert np.abs(u).max() < 6.0  # moderate: the naive formula is accurate here
    np.testing.assert_allclose(np.asarray(action), np.tanh(u), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(log_prob), expected, rtol=1e-4, atol=1e-3)
    assert (np.abs(np.asarray(action)) < 1.0).all()
    np.testing.assert_allclose(np.asarray(tanh_gaussian_mode(mean)), np.tanh(np.asarray(mean)), rtol=1e-6)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_log_density_stays_finite_for_saturated_tanh(sign):
    """Around |u| = 20 tanh(u) is 1 in float32 and log(1 - tanh^2) would be -inf; the stable form
    gives log(sech^2 u) = 2 (log 2 - |u| - log1p(exp(-2|u|))) instead."""
    key = jax.random.PRNGKey(1)
    mean = sign * jnp.linspace(15.0, 25.0, 32).reshape(32, 1)
    log_std = jnp.full((32, 1), -3.0)
    action, log_prob = tanh_gaussian_sample(mean, log_std, key)
    assert np.isfinite(np.asarray(log_prob)).all()
    assert (np.abs(np.asarray(action)) <= 1.0).all()
    eps = np.asarray(jax.random.normal(key, mean.shape), np.float64)
    u = np.asarray(mean, np.float64) + np.exp(-3.0) * eps
    gaussian = -0.5 * eps**2 + 3.0 - 0.5 * np.log(2 * np.pi)
    log_sech2 = 2.0 * (np.log(2.0) - np.abs(u) - np.log1p(np.exp(-2.0 * np.abs(u))))
    np.testing.assert_allclose(np.asarray(log_prob), (gaussian - log_sech2)[:, 0], rtol=1e-5, atol=1e-3)
    # Gradients through the sample stay finite too (the actor loss differentiates this).
    grads = jax.grad(lambda m: tanh_gaussian_sample(m, log_std, key)[1].sum())(mean)
    assert np.isfinite(np.asarray(grads)).all()


@pytest.mark.parametrize("mean, log_std", [(0.3, np.log(0.5)), (-0.4, 0.0)])
def test_density_integrates_to_one_in_1d(mean, log_std):
    """Monte Carlo in 1-D: the reported densities at 200k samples, integrated by the trapezoid rule over
    the sorted samples, give about 1; and they match a histogram of the samples."""
    n = 200_000
    action, log_prob = jax.jit(tanh_gaussian_sample)(
        jnp.full((n, 1), mean), jnp.full((n, 1), log_std), jax.random.PRNGKey(2)
    )
    a, p = np.asarray(action[:, 0], np.float64), np.exp(np.asarray(log_prob, np.float64))
    order = np.argsort(a)
    a, p = a[order], p[order]
    integral = np.sum(0.5 * (p[1:] + p[:-1]) * np.diff(a))
    assert abs(integral - 1.0) < 0.01, integral
    counts, edges = np.histogram(a, bins=40, range=(-1.0, 1.0))
    empirical = counts / (n * np.diff(edges))
    centres = 0.5 * (edges[1:] + edges[:-1])
    reported = np.interp(centres, a, p)
    populated = counts > 500
    np.testing.assert_allclose(empirical[populated], reported[populated], rtol=0.1)


# SAC UPDATE

_init = jax.jit(sac.init, static_argnums=(1, 2))
_update = jax.jit(sac.update, static_argnums=0)


def test_update_shapes_and_metrics():
    state = _init(jax.random.PRNGKey(0), CFG, OBS, LEARNING_RATE)
    new_state, metrics = _update(CFG, state, _random_batch(jax.random.PRNGKey(1)), jax.random.PRNGKey(2), **HP)
    assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(state)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), new_state, state)
    assert set(metrics) == METRICS
    for name, value in metrics.items():
        assert value.shape == () and np.isfinite(value), name
    # Critic, actor and temperature all moved; the target critic moved by tau only.
    for name in ("critic", "actor", "target_critic"):
        moved = jax.tree_util.tree_map(lambda a, b: np.abs(a - b).max(), getattr(new_state, name), getattr(state, name))
        assert max(jax.tree_util.tree_leaves(moved)) > 0, name
    assert new_state.log_alpha != state.log_alpha
    expected_target = jax.tree_util.tree_map(lambda c, t: 5e-3 * c + (1 - 5e-3) * t, new_state.critic, state.critic)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), new_state.target_critic, expected_target
    )

    # Actions are in [-1, 1] and the critic gives a Q-value per twin.
    @jax.jit
    def heads(params, obs, key):
        action, log_prob = sac.sample_action(CFG, params.actor, obs, key)
        greedy = sac.greedy_action(CFG, params.actor, obs)
        return action, log_prob, greedy, sac.critic_network(CFG).apply(params.critic, obs, action)

    action, log_prob, greedy, q = heads(new_state, jnp.zeros((5, OBS)), jax.random.PRNGKey(3))
    assert action.shape == (5, ACT) and log_prob.shape == (5,) and greedy.shape == (5, ACT)
    assert (np.abs(np.asarray(action)) <= 1.0).all()
    assert q.shape == (2, 5)


def test_critic_target_ignores_next_state_when_terminated():
    """Many updates on one transition (repeated to fill the batch) whose next state is the state itself,
    so a bootstrapped target would pull Q(s, a) towards about r / (1 - discount), far from r. With
    terminated=1 (discount 0.99), or with terminated=0 and discount 0, both twins go to r; the control,
    terminated=0 and discount 0.99, does bootstrap and ends well above r."""
    reward = 1.5
    obs = jnp.array([[0.5, -0.3, 0.8]])
    action = jnp.array([[0.2, -0.6]])

    def fit(terminated, discount):
        batch = {
            "obs": jnp.repeat(obs, CFG.config.sac_batch_size, 0),
            "action": jnp.repeat(action, CFG.config.sac_batch_size, 0),
            "reward": jnp.full((CFG.config.sac_batch_size,), reward),
            "next_obs": jnp.repeat(obs, CFG.config.sac_batch_size, 0),
            "terminated": jnp.full((CFG.config.sac_batch_size,), terminated),
        }
        hp = dict(HP, discount=discount, tau=jnp.float32(0.05))
        key = jax.random.PRNGKey(4)

        def step(state, step_key):
            return sac.update(CFG, state, batch, step_key, **hp)

        state, _ = jax.lax.scan(step, sac.init(key, CFG, OBS, LEARNING_RATE), jax.random.split(key, 300))
        return sac.critic_network(CFG).apply(state.critic, obs, action)[:, 0]

    q = np.asarray(jax.jit(jax.vmap(fit))(jnp.array([1.0, 0.0, 0.0]), jnp.array([0.99, 0.0, 0.99])))
    np.testing.assert_allclose(q[:2], np.full((2, 2), reward), atol=0.05)
    assert (q[2] > reward + 0.5).all(), q[2]


def test_temperature_moves_towards_target_entropy():
    """Entropy above the target (a very low target): alpha falls at every step; below (a very high
    one): it rises."""
    state = _init(jax.random.PRNGKey(0), CFG, OBS, LEARNING_RATE)
    batch = _random_batch(jax.random.PRNGKey(1))

    def run(target_entropy):
        hp = dict(HP, target_entropy=target_entropy)

        def step(state, key):
            return sac.update(CFG, state, batch, key, **hp)

        return jax.lax.scan(step, state, jax.random.split(jax.random.PRNGKey(2), 10))[1]["alpha"]

    alpha = np.asarray(jax.jit(jax.vmap(run))(jnp.array([-100.0, 100.0])))
    steps = np.diff(np.concatenate([np.ones((2, 1)), alpha], axis=1), axis=1)
    assert (steps[0] < 0).all() and (steps[1] > 0).all(), alpha


def test_jit_and_vmap_over_keys_agree_with_unbatched():
    """vmap over keys and learning rates (kept in the optimisers' states from `init`) gives what
    separate jitted calls give, and the rate the state keeps is the one that steps."""
    batch = _random_batch(jax.random.PRNGKey(1))
    keys = jax.random.split(jax.random.PRNGKey(2), 3)
    rates = jnp.array([1e-3, 1e-3, 1e-2])

    def update(key, learning_rate):
        state = sac.init(jax.random.PRNGKey(0), CFG, OBS, learning_rate)
        return sac.update(CFG, state, batch, key, **HP)

    batched = jax.jit(jax.vmap(update))(keys, rates)
    for i in range(3):
        single = jax.jit(update)(keys[i], rates[i])
        again = jax.jit(update)(keys[i], rates[i])
        jax.tree_util.tree_map(np.testing.assert_array_equal, single, again)
        jax.tree_util.tree_map(lambda b, s: np.testing.assert_allclose(b[i], s, rtol=1e-5, atol=1e-6), batched, single)
    # Different keys really give different updates (the target and actor samples differ).
    assert not np.allclose(batched[1]["actor_loss"][0], batched[1]["actor_loss"][1])
    # A ten times larger rate moves the critic further from its initial parameters.
    initial = sac.init(jax.random.PRNGKey(0), CFG, OBS, LEARNING_RATE).critic
    moved = [
        max(np.abs(np.asarray(b[i]) - np.asarray(a)).max() for a, b in zip(
            jax.tree_util.tree_leaves(initial), jax.tree_util.tree_leaves(batched[0].critic)))
        for i in (1, 2)
    ]
    assert moved[1] > 5 * moved[0], moved


# UPDATE ORDER


def _adam_step(params, grads, learning_rate):
    """The first Adam step from fresh moments, by hand (optax's scale_by_adam defaults)."""
    b1, b2, eps = 0.9, 0.999, 1e-8
    return jax.tree_util.tree_map(
        lambda p, g: p - learning_rate * ((1 - b1) * g / (1 - b1)) / (jnp.sqrt((1 - b2) * g**2 / (1 - b2)) + eps),
        params,
        grads,
    )


@pytest.mark.parametrize("order", ["simultaneous", "sequential"])
def test_actor_loss_reads_the_critic_the_order_says(order):
    """"simultaneous" (MBPO's TF1 softlearning code: one session.run of all training ops): the actor's
    step is the gradient of SAC's loss at the critic from before the update, so a batch that differs
    only in its rewards (which move only the critic) gives the same actor and temperature.
    "sequential" (SAC-SVG's svg/agent.py): the actor's loss reads the stepped critic. Both are
    checked against one Adam step by hand."""
    cfg = sac.Agent(sac.SACConfig(sac_hidden_sizes=(32, 32), sac_batch_size=8, sac_update_order=order), ACT)
    state = sac.init(jax.random.PRNGKey(0), cfg, OBS, LEARNING_RATE)
    batch = _random_batch(jax.random.PRNGKey(1))
    key = jax.random.PRNGKey(2)
    new_state, _ = jax.jit(sac.update, static_argnums=0)(cfg, state, batch, key, **HP)
    other, _ = jax.jit(sac.update, static_argnums=0)(cfg, state, dict(batch, reward=batch["reward"] + 10.0), key, **HP)

    critic_moved = jax.tree_util.tree_map(lambda a, b: np.abs(a - b).max(), new_state.critic, other.critic)
    assert max(jax.tree_util.tree_leaves(critic_moved)) > 0  # the rewards do reach the critic

    _, actor_key = jax.random.split(key)
    critic = state.critic if order == "simultaneous" else new_state.critic
    alpha = jnp.exp(state.log_alpha)
    def actor_loss(params):
        return sac.soft_actor_objective(cfg, params, critic, alpha, batch["obs"], actor_key)[0]

    expected = _adam_step(state.actor, jax.grad(actor_loss)(state.actor), LEARNING_RATE)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), new_state.actor, expected
    )

    leaves = zip(jax.tree_util.tree_leaves(new_state.actor), jax.tree_util.tree_leaves(other.actor))
    same_actor = all(np.array_equal(a, b) for a, b in leaves)
    assert same_actor == (order == "simultaneous")
    # The temperature reads the actor's own sample, drawn before its step, in both orders.
    np.testing.assert_array_equal(new_state.log_alpha, other.log_alpha)


def test_initial_temperature_and_bad_settings():
    assert np.isclose(np.exp(sac.init(jax.random.PRNGKey(0), CFG, OBS, LEARNING_RATE).log_alpha), 1.0)
    cfg = sac.Agent(sac.SACConfig(initial_alpha=0.1), ACT)
    np.testing.assert_allclose(np.exp(sac.init(jax.random.PRNGKey(0), cfg, OBS, LEARNING_RATE).log_alpha), 0.1, rtol=1e-6)
    assert sac.SACConfig().sac_update_order == "simultaneous"
    with pytest.raises(ConfigError, match="sac_update_order"):
        check_fields(sac.SACConfig(sac_update_order="critic-last"))
    with pytest.raises(ConfigError, match="initial_alpha"):
        check_fields(sac.SACConfig(initial_alpha=0.0))


def test_adam_keeps_its_learning_rate_in_its_state():
    """training.adam (optax's inject_hyperparams): `init` stores the rate, a step built without one
    uses the stored rate (the first Adam step moves each parameter by about the rate, clipped or
    not), and a state cannot start without a rate."""
    from mbrlax.training import adam

    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    grads = {"w": jnp.array([0.5, -4.0, 100.0])}
    for rate, clip in ((1e-3, None), (3e-2, 1.0)):
        state = adam(rate, clip).init(params)
        np.testing.assert_allclose(state.hyperparams["learning_rate"], rate)
        updates, _ = adam(max_grad_norm=clip).update(grads, state, params)
        np.testing.assert_allclose(updates["w"], -rate * np.sign(grads["w"]), rtol=1e-4)
    with pytest.raises(TypeError, match="learning rate"):
        adam().init(params)


def test_a_given_critic_objective_replaces_sacs():
    """`critic_objective`: SAC's own, passed explicitly, gives the same bits as the default; one whose
    gradient is zero leaves the critics where they were while the actor still steps."""
    state = _init(jax.random.PRNGKey(0), CFG, OBS, LEARNING_RATE)
    batch, key = _random_batch(jax.random.PRNGKey(1)), jax.random.PRNGKey(2)
    default, _ = _update(CFG, state, batch, key, **HP)

    def explicit_update(state, batch, key, hp):
        own = functools.partial(sac.soft_critic_objective, CFG, discount=hp["discount"])
        return sac.update(CFG, state, batch, key, **hp, critic_objective=own)

    explicit, _ = jax.jit(explicit_update)(state, batch, key, HP)
    jax.tree_util.tree_map(np.testing.assert_array_equal, default, explicit)

    def flat(critic, target_critic, actor, alpha, batch, key):
        q = sac.critic_network(CFG).apply(critic, batch["obs"], batch["action"])
        return 0.0 * q.sum(), q

    frozen, _ = jax.jit(lambda: sac.update(CFG, state, batch, key, **HP, critic_objective=flat))()
    jax.tree_util.tree_map(np.testing.assert_array_equal, frozen.critic, state.critic)
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(frozen.actor), jax.tree_util.tree_leaves(state.actor))]
    assert all(moved)
