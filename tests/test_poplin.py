"""POPLIN: the policy, its whitening and its distillation loss against numpy; the proposal, the
three searches' candidate returns against by-hand Python loops through a stub linear model; zero
noise reproducing the policy's own plan; CEM over parameters on a quadratic; the planner's
distillation (nothing cloned before the first plan, the loss falling after); the presets and the
POPLIN-specific bad input; and the pendulum learning bar. The guarantees every algorithm gives (CLI
run, resume, determinism, vmap) are tests/test_contract.py's."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import SMALL_PENDULUM_PLANNING
from jax.flatten_util import ravel_pytree
from mbrlax.algorithms import poplin

from mbrlax import buffer as replay
from mbrlax import ensemble, planners
from mbrlax.loops import mpc
from mbrlax.loops.episodes import setup, transition_example

# A stub model: linear dynamics, a quadratic reward, termination when the first coordinate leaves
# [-1.5, 1.5]; its stochastic twin adds key-dependent noise (to check that keys line up).
A = np.array([[0.9, 0.3], [-0.2, 0.8]])
B = np.array([[0.5], [0.4]])
SIZES = (2, 5, 1)


def stub_step(states, actions, key):
    next_states = states @ A.T + actions @ B.T
    reward = -(next_states**2).sum(-1) - 0.1 * (actions**2).sum(-1)
    return next_states, reward, jnp.abs(next_states[:, 0]) > 1.5


def noisy_step(states, actions, key):
    next_states, reward, done = stub_step(states, actions, key)
    next_states = next_states + 0.1 * jax.random.normal(key, next_states.shape)
    return next_states, reward, done


def numpy_policy(layers, mean, std, obs):
    x = (np.asarray(obs, np.float64) - mean) / std
    for i, layer in enumerate(layers):
        x = x @ np.asarray(layer["w"], np.float64) + np.asarray(layer["b"], np.float64)
        if i < len(layers) - 1:
            x = np.tanh(x)
    return x


def some_policy(seed=0):
    """A policy whose output layer is not tiny (so that it matters), with whitening."""
    layers = poplin.init_policy(jax.random.PRNGKey(seed), SIZES)
    layers[-1]["w"] = layers[-1]["w"] * 100.0
    layers[-1]["b"] = jnp.array([0.1])
    return layers, jnp.array([0.1, -0.2]), jnp.array([1.5, 0.7])


def by_hand_return(obs, action_of, horizon):
    """One trajectory of the stub model, action_of(t, state) choosing each action: its return."""
    state, total, alive = np.asarray(obs, np.float64), 0.0, 1.0
    for t in range(horizon):
        action = np.asarray(action_of(t, state), np.float64)
        next_state = A @ state + B @ action
        total += alive * (-(next_state**2).sum() - 0.1 * (action**2).sum())
        alive *= 0.0 if abs(next_state[0]) > 1.5 else 1.0
        state = next_state
    return total


# POLICY


def test_init_policy_is_normc_with_zero_biases():
    layers = poplin.init_policy(jax.random.PRNGKey(3), (4, 8, 8, 2))
    norms = [np.linalg.norm(np.asarray(layer["w"]), axis=0) for layer in layers]
    np.testing.assert_allclose(norms[0], 1.0, rtol=1e-5)
    np.testing.assert_allclose(norms[1], 1.0, rtol=1e-5)
    np.testing.assert_allclose(norms[2], 0.01, rtol=1e-5)
    assert all(float(jnp.abs(layer["b"]).max()) == 0.0 for layer in layers)


def test_policy_output_against_numpy():
    layers, mean, std = some_policy()
    obs = np.random.default_rng(0).normal(size=(7, 2))
    expected = numpy_policy(layers, np.asarray(mean), np.asarray(std), obs)
    np.testing.assert_allclose(poplin.policy_output(layers, mean, std, obs), expected, rtol=1e-5, atol=1e-6)


def test_whitening_stats_against_numpy():
    rng = np.random.default_rng(1)
    obs = np.concatenate([rng.normal(size=(30, 1)) * 3.0 + 1.0, np.full((30, 1), 2.0)], axis=1)
    mask = np.arange(30) < 20
    mean, std = poplin.whitening_stats(jnp.asarray(obs), jnp.asarray(mask))
    valid = obs[:20]
    var = np.maximum(valid.var(axis=0), 1e-2)  # the constant column is floored
    np.testing.assert_allclose(mean, valid.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(std, np.sqrt(var + 1e-6), rtol=1e-4)


def test_distillation_loss_against_numpy():
    layers, mean, std = some_policy()
    rng = np.random.default_rng(2)
    obs, targets = rng.normal(size=(9, 2)), rng.uniform(-1, 1, size=(9, 1))
    expected = np.mean((numpy_policy(layers, np.asarray(mean), np.asarray(std), obs) - targets) ** 2)
    np.testing.assert_allclose(poplin.distillation_loss(layers, mean, std, obs, targets), expected, rtol=1e-5)


def test_normalised_actions_invert_the_scaling():
    low, high = jnp.array([-2.0, 0.0]), jnp.array([2.0, 1.0])
    np.testing.assert_allclose(poplin.normalised_actions(jnp.array([[-2.0, 1.0], [1.0, 0.25]]), low, high),
                               [[-1.0, 1.0], [0.5, -0.5]])


# PROPOSAL AND SEARCH


def policy_fn_of(layers, mean, std):
    return lambda states: jnp.clip(poplin.policy_output(layers, mean, std, states), -1.0, 1.0)


def test_policy_sequence_is_the_policys_rollout():
    layers, mean, std = some_policy()
    policy_fn = policy_fn_of(layers, mean, std)
    obs = jnp.array([0.5, -0.3])
    next_state = lambda s, a, k: stub_step(s, a, k)[0]  # noqa: E731
    proposal = poplin.policy_sequence(next_state, policy_fn, obs, jax.random.PRNGKey(0), horizon=6)
    state, expected = np.asarray(obs, np.float64), []
    for _ in range(6):
        action = np.clip(numpy_policy(layers, np.asarray(mean), np.asarray(std), state[None])[0], -1, 1)
        expected.append(action)
        state = A @ state + B @ action
    np.testing.assert_allclose(proposal, np.array(expected), rtol=1e-4, atol=1e-5)


def test_zero_noise_scores_the_policys_own_rollout():
    """POPLIN-A-Init with zero noise scores the proposal; Replan and POPLIN-P with zero noise score the
    policy acting closed loop, which on a deterministic model is the same trajectory."""
    layers, mean, std = some_policy()
    policy_fn = policy_fn_of(layers, mean, std)
    obs, key, horizon = jnp.array([0.5, -0.3]), jax.random.PRNGKey(0), 6
    proposal = poplin.policy_sequence(lambda s, a, k: stub_step(s, a, k)[0], policy_fn, obs, key, horizon=horizon)
    np_mean, np_std = np.asarray(mean), np.asarray(std)
    policy_action = lambda t, s: np.clip(numpy_policy(layers, np_mean, np_std, s[None])[0], -1, 1)  # noqa: E731
    expected = by_hand_return(obs, policy_action, horizon)
    init = poplin.noise_sequence_returns(stub_step, obs, proposal, jnp.zeros((3, horizon, 1)), key, particles=2)
    replan = poplin.replan_returns(stub_step, obs, policy_fn, jnp.zeros((3, horizon, 1)), key, particles=2)
    flat, unravel = ravel_pytree(layers)
    apply_fn = lambda p, s: poplin.policy_output(unravel(p), mean, std, s)  # noqa: E731
    zero = jnp.zeros((3, horizon, flat.size))
    params = poplin.parameter_space_returns(stub_step, obs, apply_fn, flat, zero, key, particles=2)
    for returns in (init, replan, params):
        np.testing.assert_allclose(returns, np.full(3, expected), rtol=1e-4)


def test_noise_candidates_against_by_hand_loops():
    """Nonzero noise: Init adds it to the fixed proposal, Replan to the policy's action on the current
    state, POPLIN-P to the parameters at each step (all clipped to [-1, 1])."""
    layers, mean, std = some_policy()
    np_mean, np_std = np.asarray(mean), np.asarray(std)
    policy_fn = policy_fn_of(layers, mean, std)
    obs, key, horizon = jnp.array([0.4, 0.2]), jax.random.PRNGKey(0), 5
    action_noise = 0.6 * jax.random.normal(jax.random.PRNGKey(1), (4, horizon, 1))
    proposal = poplin.policy_sequence(lambda s, a, k: stub_step(s, a, k)[0], policy_fn, obs, key, horizon=horizon)

    init = poplin.noise_sequence_returns(stub_step, obs, proposal, action_noise, key, particles=1)
    replan = poplin.replan_returns(stub_step, obs, policy_fn, action_noise, key, particles=1)
    flat, unravel = ravel_pytree(layers)
    param_noise = 0.3 * jax.random.normal(jax.random.PRNGKey(2), (4, horizon, flat.size))
    apply_fn = lambda p, s: poplin.policy_output(unravel(p), mean, std, s)  # noqa: E731
    params = poplin.parameter_space_returns(stub_step, obs, apply_fn, flat, param_noise, key, particles=1)

    noise, pnoise = np.asarray(action_noise), np.asarray(param_noise)
    for i in range(4):
        expected_init = by_hand_return(obs, lambda t, s: np.clip(np.asarray(proposal[t]) + noise[i, t], -1, 1), horizon)
        expected_replan = by_hand_return(
            obs, lambda t, s: np.clip(numpy_policy(layers, np_mean, np_std, s[None])[0] + noise[i, t], -1, 1), horizon
        )
        perturbed = lambda t: unravel(flat + pnoise[i, t])  # noqa: E731
        expected_params = by_hand_return(
            obs, lambda t, s: np.clip(numpy_policy(perturbed(t), np_mean, np_std, s[None])[0], -1, 1), horizon
        )
        np.testing.assert_allclose(init[i], expected_init, rtol=1e-4)
        np.testing.assert_allclose(replan[i], expected_replan, rtol=1e-4)
        np.testing.assert_allclose(params[i], expected_params, rtol=1e-4)
    assert not np.allclose(init, replan)


@pytest.mark.parametrize("rows", [None, 4])
def test_closed_loop_returns_match_pets_for_open_loop_actions(rows):
    """With actions that ignore the state, closed_loop_returns is mpc.sequence_returns: the same
    particle rows, keys, termination mask and averaging of the first P particles, on a noisy model."""
    sequences = jax.random.uniform(jax.random.PRNGKey(4), (5, 6, 1), minval=-1.0, maxval=1.0)
    obs, key = jnp.array([0.9, -0.4]), jax.random.PRNGKey(5)
    expected = mpc.sequence_returns(noisy_step, obs, sequences, key, particles=3, particle_rows=rows)
    action_fn = lambda candidate, t, states: jnp.broadcast_to(candidate[t], (states.shape[0], 1))  # noqa: E731
    got = poplin.closed_loop_returns(
        noisy_step, obs, action_fn, sequences, key, horizon=6, particles=3, particle_rows=rows
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_zero_perturbation_reproduces_the_policys_actions():
    layers, mean, std = some_policy()
    flat, unravel = ravel_pytree(layers)
    states = jax.random.normal(jax.random.PRNGKey(6), (8, 2))
    np.testing.assert_allclose(
        poplin.policy_output(unravel(flat + jnp.zeros_like(flat)), mean, std, states),
        poplin.policy_output(layers, mean, std, states),
    )


def test_cem_over_parameters_finds_the_optimum_of_a_quadratic():
    """CEM with POPLIN's truncated-normal samples over a perturbation [H, W] of parameters theta
    finds the maximiser theta* - theta of -sum_t c_t |theta + w_t - theta*|^2."""
    theta = jnp.array([0.3, -0.1, 0.2, 0.0, 0.5])
    target = jnp.array([[0.5, -0.4, 0.1, 0.2, 0.2], [0.0, 0.1, -0.3, 0.4, 0.6]])
    weights = jnp.array([[1.0], [3.0]])

    def score(noise, key=None):
        return -(weights * (theta + noise - target) ** 2).sum((-2, -1))

    sample = functools.partial(poplin.noise_samples, n=300)
    run = jax.jit(functools.partial(planners.cem, score, sample, iterations=20, elites=30, alpha=0.1))
    mean, std = run(jnp.zeros((2, 5)), jnp.full((2, 5), jnp.sqrt(0.1)), jax.random.PRNGKey(0))
    np.testing.assert_allclose(theta + mean, target, atol=0.01)


def test_noise_samples_are_truncated_at_two_std():
    samples = poplin.noise_samples(jax.random.PRNGKey(0), jnp.array([1.0, -1.0]), jnp.array([0.5, 0.1]), 4000)
    assert float(jnp.abs(samples - jnp.array([1.0, -1.0])).max(axis=0)[0]) <= 1.0 + 1e-6
    assert float(jnp.abs(samples - jnp.array([1.0, -1.0])).max(axis=0)[1]) <= 0.2 + 1e-6
    np.testing.assert_allclose(samples.mean(axis=0), [1.0, -1.0], atol=0.02)


# THE PLANNER'S DISTILLATION


def tiny_planner():
    """POPLIN's planner on tiny pendulum (50-step episodes, one of random exploration, a fit every
    50 steps), with no model (its fit does not use one)."""
    config = poplin.Config(**poplin.VARIANTS["tiny"])
    model_config = config
    planner = poplin.poplin_planner(config, mpc.PlannerContext(setup(config), model_config, None, config.particles))
    return planner, config


def buffer_of(count):
    """A buffer of `count` transitions whose actions are a fixed function of the observation."""
    obs = jax.random.normal(jax.random.PRNGKey(0), (count, 3))
    batch = dict(
        obs=obs,
        action=jnp.clip(obs[:, :1] - 0.5 * obs[:, 2:], -2.0, 2.0),
        reward=jnp.zeros(count),
        next_obs=obs,
        terminated=jnp.zeros(count),
    )
    return replay.add(replay.init(transition_example(obs[0], 1), 400), batch), batch


def test_distillation_skips_random_data_and_clones_the_planners_actions():
    planner, config = tiny_planner()
    fit = jax.jit(lambda learned, buffer, key: planner.fit(learned, buffer, key, config))
    learned = planner.init(jax.random.PRNGKey(1), config)
    # After the random episode only: nothing to clone, nothing changes.
    random_only, _ = buffer_of(50)
    same, metrics = fit(learned, random_only, jax.random.PRNGKey(2))
    jax.tree_util.tree_map(np.testing.assert_array_equal, same, learned)
    assert float(metrics["policy_bc_loss"]) == 0.0
    # After a planned episode: the policy clones its actions, on whitened observations.
    buffer, batch = buffer_of(100)
    targets = poplin.normalised_actions(batch["action"][50:], -2.0, 2.0)
    mean, std = poplin.whitening_stats(batch["obs"], jnp.ones(100, bool))
    before = poplin.distillation_loss(learned.layers, mean, std, batch["obs"][50:], targets)
    for i in range(20):
        learned, metrics = fit(learned, buffer, jax.random.PRNGKey(10 + i))
    after = poplin.distillation_loss(learned.layers, learned.obs_mean, learned.obs_std, batch["obs"][50:], targets)
    np.testing.assert_allclose(learned.obs_mean, mean, rtol=1e-5)
    assert float(after) < 0.5 * float(before), (float(before), float(after))


@pytest.mark.parametrize("search", poplin.SEARCHES)
def test_without_search_noise_the_planner_executes_the_policys_action(search):
    """With a search variance of 1e-12 every candidate is the warm start (zeros): each search executes
    the policy's own action at the state, scaled to the task's bounds [-2, 2], and keeps a zero plan."""
    config = poplin.Config(**poplin.VARIANTS["tiny"], search=search)
    task = setup(config)
    model_config = config
    spec = task.spec

    def model_step_fn(model):
        return functools.partial(
            mpc.model_step, model_config, model, propagation="tsinf", elites_only=False,
            reward_fn=spec.reward_fn, termination_fn=spec.termination_fn,
        )

    planner = poplin.poplin_planner(config, mpc.PlannerContext(task, model_config, model_step_fn, config.particles))
    quiet = dataclasses.replace(config, action_noise_var=1e-12, parameter_noise_var=1e-12)
    learned = planner.init(jax.random.PRNGKey(0), quiet)
    layers = poplin.init_policy(jax.random.PRNGKey(1), (3, 16, 1))
    layers[-1]["w"] = layers[-1]["w"] * 100.0
    learned = learned._replace(layers=layers, obs_mean=jnp.array([0.1, 0.0, -0.5]), obs_std=jnp.array([1.0, 2.0, 3.0]))
    model = ensemble.init(jax.random.PRNGKey(2), model_config, 3, 1, 1e-3, 5e-5)
    obs = jax.random.normal(jax.random.PRNGKey(3), (4, 3))
    memory = jnp.broadcast_to(planner.fresh, (4,) + planner.fresh.shape)
    actions, plans = jax.jit(planner.act)(learned, model, obs, memory, jax.random.PRNGKey(4), quiet)
    policy = jnp.clip(poplin.policy_output(layers, learned.obs_mean, learned.obs_std, obs), -1.0, 1.0)
    assert float(jnp.abs(policy).max()) > 0.3  # the check is not vacuous
    np.testing.assert_allclose(actions, 2.0 * policy, atol=1e-4)
    np.testing.assert_allclose(plans, 0.0, atol=1e-4)


# PRESETS AND BAD INPUT


@pytest.mark.parametrize("name", sorted(poplin.PRESETS))
def test_presets_are_valid_configs(name):
    poplin.Config(**poplin.PRESETS[name]).validate()


# END TO END


@pytest.mark.slow
def test_learns_pendulum():
    """POPLIN-A-Init on pendulum, smaller than the default (model members of 2 x 32, CEM over 50
    sequences, 5 elites, 3 iterations, a policy of one hidden layer of 32): after one random and
    six planned episodes three evaluation episodes average better than -400, PETS's bar for the same
    settings (a random policy is near -1200; an evaluation in which one of the three episodes fails
    to swing up lands near -450). Measured: -265 for seed 0 alone; -257, -259, -140 and -218 for
    seeds 0 to 3 batched. The default settings reach -131 on seed 0 (-250 is the issue's bar for
    those)."""
    config = dataclasses.replace(
        poplin.Config(env="pendulum"), **SMALL_PENDULUM_PLANNING, policy_hidden_sizes=(32,), policy_epochs=20
    )
    _, metrics = jax.jit(poplin.make_train(config))(jax.random.PRNGKey(0), config)
    final = float(metrics["eval"]["eval_return"][-1])
    assert final > -400, f"POPLIN reached only {final:.0f} on pendulum"
