"""STEVE and MVE: the imagined path and the expanded targets against a by-hand Python loop through a
stub linear model, the TD-k targets against the same loop, STEVE's inverse-variance weights against
hand computations, H = 0 against SAC's own soft target, the presets and bad input, and the pendulum
learning bar. The guarantees every algorithm gives (CLI run, resume, determinism, vmap) are
tests/test_contract.py's."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from mbrlax.algorithms import mbpo, steve

from mbrlax import ensemble, runner, sac
from mbrlax.loops import dyna
from mbrlax.envs import registry
from mbrlax.training import ConfigError

# A stub model: linear dynamics, a quadratic reward, termination when the first coordinate leaves
# [-1, 1]; a linear deterministic "policy" with a made-up log-density; a quadratic "critic".
A = np.array([[0.9, 0.3], [-0.2, 0.8]])
B = np.array([[0.5], [0.4]])
DISCOUNT, ALPHA = 0.9, 0.3


def stub_policy(obs, key):
    action = obs @ np.array([[0.4], [-0.6]]) + 0.1
    return action, 0.5 * obs[:, 0] - 0.2


def stub_dynamics(obs, action, key):
    next_obs = obs @ A.T + action @ B.T
    return next_obs, -(next_obs**2).sum(-1) - 0.1 * (action**2).sum(-1)


def stub_termination(obs, action, next_obs):
    return jnp.abs(next_obs[:, 0]) > 1.0


def stub_value(obs, action):
    return -2.0 * (obs**2).sum(-1) + action.sum(-1)


def by_hand(reward, terminated, next_obs, horizon):
    """The candidates T^0..T^H and the TD-k targets for one transition, rolled out one step at a time."""
    obs = np.asarray(next_obs, np.float64)[None]
    action, log_prob = (np.asarray(x, np.float64) for x in stub_policy(obs, None))
    total, weight = reward, DISCOUNT * (1.0 - terminated)
    candidates, states = [], []
    for t in range(horizon + 1):
        soft_value = float(stub_value(obs, action)[0]) - ALPHA * float(log_prob[0])
        candidates.append(total + weight * soft_value)
        if t == horizon:
            break
        next_o, r = (np.asarray(x, np.float64) for x in stub_dynamics(obs, action, None))
        ended = bool(stub_termination(obs, action, next_o)[0])
        states.append((float(r[0]), 0.0 if ended else 1.0))
        total += weight * (float(r[0]) - ALPHA * float(log_prob[0]))
        weight *= DISCOUNT * (0.0 if ended else 1.0)
        obs = next_o
        action, log_prob = (np.asarray(x, np.float64) for x in stub_policy(obs, None))
    # TD-k: from s'_t to the end, G_t = r'_t + gamma c_t (G_{t+1} - alpha log pi_{t+1}), G_H = Q(s'_H, a'_H).
    path = [np.asarray(next_obs, np.float64)[None]]
    for _ in range(horizon):
        a, _ = stub_policy(path[-1], None)
        path.append(np.asarray(stub_dynamics(path[-1], np.asarray(a), None)[0], np.float64))
    log_probs = [float(stub_policy(o, None)[1][0]) for o in path]
    later = float(stub_value(path[-1], np.asarray(stub_policy(path[-1], None)[0]))[0])
    td_k = [0.0] * horizon
    for t in reversed(range(horizon)):
        r, c = states[t]
        td_k[t] = r + DISCOUNT * c * (later - ALPHA * log_probs[t + 1])
        later = td_k[t]
    return np.array(candidates), np.array(td_k)


def expanded(reward, terminated, next_obs, horizon):
    path = steve.imagine(stub_policy, stub_dynamics, stub_termination, next_obs, jax.random.PRNGKey(0), horizon)
    values = jax.vmap(stub_value)(path["obs"], path["action"])
    args = (path["reward"], path["continues"], path["log_prob"], values, DISCOUNT, ALPHA)
    return path, steve.candidate_targets(reward, terminated, *args), steve.td_k_targets(*args)


def test_expanded_targets_equal_a_by_hand_rollout():
    with jax.enable_x64(True):
        # The third start leaves the box at its first model step, the fourth at a later one; the last
        # transition terminated in the real environment, so nothing is bootstrapped after it.
        next_obs = jnp.array([[0.2, -0.1], [0.5, 0.3], [1.5, 0.0], [0.75, -3.0], [0.1, 0.1]], jnp.float64)
        reward = jnp.array([0.5, -1.0, 0.2, 0.0, 1.0], jnp.float64)
        terminated = jnp.array([0.0, 0.0, 0.0, 0.0, 1.0], jnp.float64)
        for horizon in (0, 1, 3):
            path, candidates, td_k = expanded(reward, terminated, next_obs, horizon)
            assert candidates.shape == (horizon + 1, 5) and td_k.shape == (horizon, 5)
            assert path["obs"].shape == (horizon + 1, 5, 2) and path["continues"].shape == (horizon, 5)
            for i in range(5):
                want, want_td_k = by_hand(float(reward[i]), float(terminated[i]), next_obs[i], horizon)
                np.testing.assert_allclose(candidates[:, i], want, rtol=1e-12)
                np.testing.assert_allclose(td_k[:, i], want_td_k, rtol=1e-12)
        # Terminations did happen (else the test of the masks tests nothing).
        assert path["continues"][0, 2] == 0 and path["continues"][0, 3] == 1 and path["continues"][1, 3] == 0
        assert path["continues"][:, 0].min() == 1


def test_td_k_target_from_the_real_pair_is_the_last_candidate():
    """MVE's H-step target for Q(s, a) is r + gamma (1 - d) (G_0 - alpha log pi(a'_0|s'_0))."""
    with jax.enable_x64(True):
        next_obs = jnp.array([[0.2, -0.1], [0.5, 0.3], [0.6, 0.9]], jnp.float64)
        reward, terminated = jnp.array([0.5, -1.0, 0.3]), jnp.array([0.0, 0.0, 1.0])
        path, candidates, td_k = expanded(reward, terminated, next_obs, 3)
        want = reward + DISCOUNT * (1 - terminated) * (td_k[0] - ALPHA * path["log_prob"][0])
        np.testing.assert_allclose(candidates[-1], want, rtol=1e-12)


def test_reach_probabilities():
    continues = jnp.array([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0], [0.0, 1.0, 1.0]])  # [H=3, n=3]
    terminated = jnp.array([0.0, 0.0, 1.0])
    want = np.array([[1, 1, 0], [1, 0, 0], [1, 0, 0]], np.float32)
    np.testing.assert_array_equal(steve.reach_probabilities(terminated, continues), want)


def test_inverse_variance_weights_by_hand():
    variances = jnp.array([[1.0, 4.0], [2.0, 4.0], [4.0, 0.0]])  # [H+1=3, n=2]
    weights = steve.inverse_variance_weights(variances)
    # Column 0: 1/1, 1/2, 1/4 normalised by 7/4.
    np.testing.assert_allclose(weights[:, 0], [4 / 7, 2 / 7, 1 / 7], rtol=1e-6)
    # Column 1: a candidate with zero variance takes (almost) all the weight.
    assert weights[2, 1] > 1 - 1e-7 and weights[0, 1] < 1e-7
    np.testing.assert_allclose(weights.sum(axis=0), 1.0, rtol=1e-6)
    # Equal variances: equal weights.
    np.testing.assert_allclose(steve.inverse_variance_weights(jnp.full((4, 1), 3.0))[:, 0], 0.25, rtol=1e-6)


def test_steve_target_by_hand():
    """Candidates [H+1=2, n=1, M=2 dynamics samples, Q=2 twins]: each candidate's mean is the mean over
    samples of the min twin, its variance the population variance of all four values."""
    candidates = jnp.array([[[[1.0, 3.0], [2.0, 2.0]]], [[[5.0, 5.0], [5.0, 5.0]]]])
    target, weights = steve.steve_target(candidates)
    # Candidate 0: min twins 1 and 2 -> mean 1.5; values 1, 3, 2, 2 -> variance 0.5. Candidate 1:
    # mean 5, variance 0 -> it dominates.
    assert weights.shape == (2, 1) and target.shape == (1,)
    np.testing.assert_allclose(target, 5.0, rtol=1e-6)
    candidates = candidates.at[1, 0, 0, 0].set(3.0)  # candidate 1: values 3, 5, 5, 5: var 0.75, mean 4
    target, weights = steve.steve_target(candidates)
    w0, w1 = 1 / 0.5, 1 / 0.75
    np.testing.assert_allclose(weights[:, 0], [w0 / (w0 + w1), w1 / (w0 + w1)], rtol=1e-5)
    np.testing.assert_allclose(target, (w0 * 1.5 + w1 * 4.0) / (w0 + w1), rtol=1e-5)


def objective_inputs(horizon: int, estimator: str, expansion_model: str = "sample"):
    """The critic objective on pendulum, a fresh ensemble and SAC, a batch of real transitions."""
    sizes = dict(sac_hidden_sizes=(16, 16), model_hidden_sizes=(8,))
    config = dataclasses.replace(
        steve.Config(), horizon=horizon, estimator=estimator, expansion_model=expansion_model, **sizes
    )
    _, spec = registry.make("pendulum")
    agent_config = sac.Agent(config, spec.action_size)
    model_config = config
    keys = jax.random.split(jax.random.PRNGKey(3), 8)
    agent = sac.init(keys[0], agent_config, spec.observation_size, 3e-4)
    target_critic = sac.init(keys[1], agent_config, spec.observation_size, 3e-4).critic
    model = ensemble.init(keys[2], model_config, spec.observation_size, spec.action_size, 1e-3, 5e-5)
    n = 32
    batch = {
        "obs": jax.random.normal(keys[3], (n, spec.observation_size)),
        "action": jax.random.uniform(keys[4], (n, spec.action_size), minval=-1, maxval=1),
        "reward": jax.random.normal(keys[5], (n,)),
        "next_obs": jax.random.normal(keys[6], (n, spec.observation_size)),
        "terminated": (jnp.arange(n) % 5 == 0).astype(jnp.float32),
    }
    context = dyna.DynaContext(spec, model_config, agent_config)
    objective = functools.partial(steve.expanded_critic_loss, context)
    return config, agent_config, model, agent, target_critic, batch, objective


@pytest.mark.parametrize("estimator", ["mve", "steve"])
def test_horizon_zero_is_sacs_soft_target(estimator):
    """With H = 0 the only candidate is r + gamma (1 - d) (min Q'(s', a') - alpha log pi(a'|s')), SAC's
    target. MVE draws a' with the same key as SAC, so its loss is sac.soft_critic_objective's to float
    rounding; STEVE averages that target over the elites' paths, each drawing its own a', so its loss
    is close to SAC's, not equal."""
    config, agent_config, model, agent, target_critic, batch, objective = objective_inputs(0, estimator)
    config, alpha, key = dataclasses.replace(config, discount=0.95), jnp.float32(0.4), jax.random.PRNGKey(7)
    loss, q = objective(model, config, agent.critic, target_critic, agent.actor, alpha, batch, key)
    want_loss, want_q = sac.soft_critic_objective(
        agent_config, agent.critic, target_critic, agent.actor, alpha, batch, key, jnp.float32(0.95)
    )
    np.testing.assert_allclose(q, want_q, rtol=1e-6)
    if estimator == "mve":
        np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    else:  # the mean over 5 elites' draws of a' of the same soft target: close, not equal
        assert abs(float(loss) - float(want_loss)) < 0.2 * abs(float(want_loss))


@pytest.mark.parametrize("estimator, expansion_model", [("mve", "mean"), ("mve", "sample"), ("steve", "sample")])
def test_critic_objective_expands_and_differentiates(estimator, expansion_model):
    config, _, model, agent, target_critic, batch, objective = objective_inputs(3, estimator, expansion_model)
    config = dataclasses.replace(config, discount=0.99)

    def loss(critic):
        alpha, key = jnp.float32(0.2), jax.random.PRNGKey(0)
        return objective(model, config, critic, target_critic, agent.actor, alpha, batch, key)

    (value, q), grads = jax.value_and_grad(loss, has_aux=True)(agent.critic)
    assert q.shape == (2, 32) and np.isfinite(value)
    flat = ravel_pytree(grads)[0]
    assert np.all(np.isfinite(flat)) and np.abs(flat).max() > 0


def test_presets_and_bad_input():
    mve = dataclasses.replace(steve.Config(), **steve.PRESETS["mve"])
    assert mve.estimator == "mve" and mve.horizon == 3 and mve.expansion_model == "mean"
    authors = runner.preset_config(steve.Config, steve.PRESETS, "brax/halfcheetah", "mve-authors")
    assert (authors.env, authors.estimator, authors.horizon) == ("brax/halfcheetah", "mve", 5)
    assert (authors.updates_per_step, authors.sac_batch_size, authors.sac_hidden_sizes) == (4, 64, (64, 64))
    assert authors.total_steps == steve.PRESETS["brax/halfcheetah"]["total_steps"]  # the task's budget stays
    authors.validate()
    assert steve.Config().rollout_batch_size == 0 and steve.Config().estimator == "steve"
    for task in ("brax/halfcheetah", "brax/hopper", "pendulum"):
        assert steve.PRESETS[task]["env"] == task
    with pytest.raises(ConfigError, match="sac_only"):
        dataclasses.replace(steve.Config(), sac_only=True).validate()
    dataclasses.replace(steve.Config(), sac_only=True, horizon=0).validate()
    with pytest.raises(ConfigError, match="estimator"):
        dataclasses.replace(steve.Config(), estimator="nope").validate()
    with pytest.raises(ConfigError, match="STEVE samples one path per elite"):
        dataclasses.replace(steve.Config(), expansion_model="mean").validate()


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["steve", "mve"])
def test_learns_pendulum(preset):
    """The issue's bar, -250 or better within 5,000 steps (a random policy scores about -1200; SAC at one
    update per step: -912 at 5,000 steps, seed 0), met sooner: the default pendulum settings (STEVE) or
    `--preset mve`, 3,000 steps (1,000 of them random), five evaluation episodes of the deterministic
    policy after 2,000 and 3,000 steps. Seed 0 gives STEVE -650, -146 and MVE -1322, -149. Over seeds 0
    to 3 neither is ahead of SAC at the same five updates per step on pendulum (RESULTS.md)."""
    config = dataclasses.replace(steve.Config(), **steve.VARIANTS[preset], total_steps=3000)
    _, metrics = jax.jit(steve.make_train(config))(jax.random.PRNGKey(0), config)
    returns = np.asarray(metrics["eval"]["eval_return"])
    print(f"{preset} {returns.round(1)}")
    assert len(returns) == 2
    assert returns[-1] >= -250.0, returns
