"""POPLIN: model-based policy planning (Wang and Ba, "Exploring Model-based Planning with Policy
Networks", ICLR 2020), on PETS's ensemble, trajectory sampling and loop (mbrlax.loops.mpc).

A policy pi_theta(s) (tanh MLP, output clipped to [-1, 1]) shapes PETS's CEM search; CEM's candidates,
scored by PETS's trajectory-sampled mean return, are

    POPLIN-A-Init    ("poplina-init"):   clip(a^pi_t + d_t),  a^pi_t = pi(s_t), s_{t+1} = f(s_t, a^pi_t)
    POPLIN-A-Replan  ("poplina-replan"): a_t = clip(pi(s_t) + d_t) on each particle's state s_t
    POPLIN-P         ("poplinp-sep"):    a_t = clip(pi_{theta + w_t}(s_t)), w [H, W] over all W parameters

with action noise d [H, A] or parameter noise w warm-started from the previous solution shifted by
one step. After every model fit the policy is distilled by behaviour cloning,

    min_theta  mean over (s, a) planned since the last fit of  (pi_theta(s) - a)^2.

Departures from the authors' code (WilsonWangTHU/POPLIN):
- POPLIN-A-Init's proposal is one rollout through the ensemble's mean, shared by all candidates.
- Distillation clones the executed actions (their BC-AR; BC-PR up to the clip); BC-AI, AVG-R, GAN-R/I are not done.
- Each fit runs a fixed number of Adam steps on the newest data, without their early stopping.
- CEM always runs `cem_iterations` (theirs stops when the largest variance is below 0.001).
- POPLINP-UNI (one perturbation for all steps) is not offered.

Provenance, every departure, presets and commands: docs/algorithms/poplin.md.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from mbrlax import buffer as replay
from mbrlax import ensemble, planners, presets, runner
from mbrlax.config import setting
from mbrlax.loops import mpc
from mbrlax.training import Trainer, adam, gradient_update, scale_action

SEARCHES = ("poplina-init", "poplina-replan", "poplinp-sep")


# POLICY: an MLP as the authors' (tanh hidden layers, linear output, whitened inputs, normc init),
# kept as a list of {"w", "b"} so that a perturbation of all its parameters is one flat vector.


def init_policy(key, sizes: tuple[int, ...]) -> list[dict]:
    """Layers for widths `sizes` (observation, hidden..., action): normc weights (each output
    unit's incoming weights scaled to norm 1; 0.01 for the output layer), zero biases."""
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        key, layer_key = jax.random.split(key)
        scale = 0.01 if i == len(sizes) - 2 else 1.0
        w = jax.random.normal(layer_key, (fan_in, fan_out))
        layers.append({"w": w * scale / jnp.linalg.norm(w, axis=0, keepdims=True), "b": jnp.zeros(fan_out)})
    return layers


def policy_output(layers, obs_mean, obs_std, obs):
    """The policy's unclipped output [..., A] for observations [..., obs], whitened by (mean, std)."""
    x = (obs - obs_mean) / obs_std
    for i, layer in enumerate(layers):
        x = x @ layer["w"] + layer["b"]
        if i < len(layers) - 1:
            x = jnp.tanh(x)
    return x


def whitening_stats(obs, mask):
    """Mean and std [obs] of the rows of `obs` [N, obs] where `mask` [N] holds, the variance floored
    at 0.01 and the std sqrt(var + 1e-6), as the authors' whitening_util.py."""
    weight = mask.astype(obs.dtype)[:, None]
    count = jnp.maximum(weight.sum(), 1.0)
    mean = (weight * obs).sum(axis=0) / count
    var = jnp.maximum((weight * obs**2).sum(axis=0) / count - mean**2, 1e-2)
    return mean, jnp.sqrt(var + 1e-6)


def distillation_loss(layers, obs_mean, obs_std, obs, target_actions):
    """Behaviour cloning: mean over batch and action dimensions of (pi(obs) - target)^2, the
    unclipped output against targets in [-1, 1]."""
    return jnp.mean((policy_output(layers, obs_mean, obs_std, obs) - target_actions) ** 2)


def normalised_actions(actions, low, high):
    """Actions in the task's bounds -> [-1, 1] (the inverse of `scale_action`)."""
    return 2.0 * (actions - low) / (high - low) - 1.0


# PROPOSE: the policy's own plan from a state, through the model.


def policy_sequence(next_state_fn: Callable, policy_fn: Callable, obs, key, *, horizon: int):
    """The policy's open-loop proposal [H, A] from the state `obs` [obs]: a_t = policy_fn(s_t),
    s_{t+1} = next_state_fn(s_t [1, obs], a_t [1, A], key) with one key a step."""

    def step(state, step_key):
        action = policy_fn(state)
        return next_state_fn(state, action, step_key), action[0]

    _, actions = jax.lax.scan(step, obs[None], jax.random.split(key, horizon))
    return actions


# SEARCH: CEM's samples and the returns of POPLIN's candidates.


def noise_samples(key, mean, std, n: int):
    """n samples around `mean` [...] with spread `std`: a normal truncated at 2 std, the authors'
    `tf.truncated_normal` (no shrinking at the action bounds, unlike `mbrlax.planners.gaussian_sequences`)."""
    return mean + std * jax.random.truncated_normal(key, -2.0, 2.0, (n,) + mean.shape)


def noise_sequence_returns(step_fn: Callable, obs, proposal, noise, key, *, particles: int, particle_rows=None):
    """POPLIN-A-Init: the mean predicted return of each candidate clip(proposal [H, A] + noise
    [n, H, A], -1, 1) from `obs`, by mpc.sequence_returns with `step_fn` (actions in [-1, 1])."""
    sequences = jnp.clip(proposal + noise, -1.0, 1.0)
    return mpc.sequence_returns(step_fn, obs, sequences, key, particles=particles, particle_rows=particle_rows)


def closed_loop_returns(
    step_fn: Callable, obs, action_fn: Callable, candidates, key, *, horizon: int, particles: int, particle_rows=None
):
    """Mean predicted return of each candidate (a pytree with leading axis n) whose actions are
    chosen closed loop: at step t, `action_fn(candidate, t, states [rows, obs]) -> [rows, A]` on its
    particles' own states. Particles, termination and non-finite returns as mpc.sequence_returns
    (the same row layout and one key a step, so an open-loop action_fn gives its numbers)."""
    n = jax.tree_util.tree_leaves(candidates)[0].shape[0]
    rows = particle_rows or particles
    states = jnp.broadcast_to(obs, (n * rows, obs.shape[-1]))

    def step(carry, inputs):
        states, alive, total = carry
        t, step_key = inputs
        grouped = states.reshape(n, rows, -1)
        actions = jax.vmap(lambda candidate, s: action_fn(candidate, t, s))(candidates, grouped)
        next_states, reward, done = step_fn(states, actions.reshape(n * rows, -1), step_key)
        total = total + alive * reward
        alive = alive * (1.0 - done.astype(jnp.float32))
        return (next_states, alive, total), None

    carry = (states, jnp.ones(n * rows), jnp.zeros(n * rows))
    (_, _, totals), _ = jax.lax.scan(step, carry, (jnp.arange(horizon), jax.random.split(key, horizon)))
    returns = totals.reshape(n, rows)[:, :particles].mean(axis=1)
    return jnp.where(jnp.isfinite(returns), returns, -1e10)


def replan_returns(step_fn: Callable, obs, policy_fn: Callable, noise, key, *, particles: int, particle_rows=None):
    """POPLIN-A-Replan: each candidate noise [n, H, A] acts as clip(policy_fn(s_t) + noise_t, -1, 1)
    on every particle's state s_t."""

    def action_fn(candidate, t, states):
        return jnp.clip(policy_fn(states) + candidate[t], -1.0, 1.0)

    horizon = noise.shape[1]
    return closed_loop_returns(
        step_fn, obs, action_fn, noise, key, horizon=horizon, particles=particles, particle_rows=particle_rows
    )


def parameter_space_returns(
    step_fn: Callable, obs, apply_fn: Callable, flat_params, noise, key, *, particles: int, particle_rows=None
):
    """POPLIN-P: each candidate perturbation noise [n, H, W] of the flat parameters [W] acts as
    clip(apply_fn(flat_params + noise_t, s_t), -1, 1) on every particle's state s_t."""

    def action_fn(candidate, t, states):
        return jnp.clip(apply_fn(flat_params + candidate[t], states), -1.0, 1.0)

    horizon = noise.shape[1]
    return closed_loop_returns(
        step_fn, obs, action_fn, noise, key, horizon=horizon, particles=particles, particle_rows=particle_rows
    )


class PolicyState(NamedTuple):
    """What POPLIN learns across the run: the policy, its optimiser and its input whitening."""

    layers: Any
    opt_state: Any
    obs_mean: jax.Array
    obs_std: jax.Array


def poplin_planner(config: Config, context: mpc.PlannerContext) -> mpc.Planner:
    """POPLIN's planner for the MPC loop: CEM over `config.search`'s candidates around the
    policy (warm-started from the previous solution shifted by one step, zeros appended), and
    behaviour cloning of the executed actions after every model fit."""
    task, model_config = context.task, context.model_config
    low, high, spec = task.low, task.high, task.spec
    horizon, action_size = config.horizon, spec.action_size
    sizes = (spec.observation_size, *config.policy_hidden_sizes, action_size)
    _, unravel = ravel_pytree(init_policy(jax.random.PRNGKey(0), sizes))
    num_params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    elites_only = model_config.model_elite_count < model_config.ensemble_size
    # The random exploration before the first fit, as the MPC loop counts it; never cloned.
    initial = spec.episode_length * config.num_envs if config.initial_steps is None else config.initial_steps
    initial_steps = -(-initial // config.num_envs) * config.num_envs
    updates_per_fit = config.policy_epochs * max(config.retrain_every // config.policy_batch_size, 1)
    search_size = num_params if config.search == "poplinp-sep" else action_size
    optimizer = adam()

    def init(key, config):
        layers = init_policy(key, sizes)
        obs_size = spec.observation_size
        opt_state = adam(learning_rate=config.policy_lr).init(layers)
        return PolicyState(layers, opt_state, jnp.zeros(obs_size), jnp.ones(obs_size))

    def act(learned: PolicyState, model, obs, solutions, key, config):
        model_step = context.model_step_fn(model)

        def step_fn(states, actions, step_key):
            return model_step(states, scale_action(actions, low, high), step_key)

        def mean_next_state(states, actions, step_key):
            next_states, _ = ensemble.propagate(
                model_config, model, states, scale_action(actions, low, high), step_key, "expectation", elites_only
            )
            return next_states

        def policy_fn(states):
            return jnp.clip(policy_output(learned.layers, learned.obs_mean, learned.obs_std, states), -1.0, 1.0)

        def apply_flat(flat, states):
            return policy_output(unravel(flat), learned.obs_mean, learned.obs_std, states)

        keywords = dict(particles=config.particles, particle_rows=context.particle_rows)
        flat_params, _ = ravel_pytree(learned.layers)

        def plan_one(obs, warm_start, key):
            propose_key, search_key = jax.random.split(key)
            if config.search == "poplina-init":
                proposal = policy_sequence(mean_next_state, policy_fn, obs, propose_key, horizon=horizon)
                score_fn = functools.partial(noise_sequence_returns, step_fn, obs, proposal, **keywords)
                first_action = lambda solution: proposal[0] + solution[0]  # noqa: E731
                variance = config.action_noise_var
            elif config.search == "poplina-replan":
                score_fn = functools.partial(replan_returns, step_fn, obs, policy_fn, **keywords)
                first_action = lambda solution: policy_fn(obs[None])[0] + solution[0]  # noqa: E731
                variance = config.action_noise_var
            else:
                score_fn = functools.partial(parameter_space_returns, step_fn, obs, apply_flat, flat_params, **keywords)
                first_action = lambda solution: apply_flat(flat_params + solution[0], obs[None])[0]  # noqa: E731
                variance = config.parameter_noise_var
            std = jnp.sqrt(variance) * jnp.ones_like(warm_start)
            sample_fn = functools.partial(noise_samples, n=config.population)
            solution, _ = planners.cem(
                score_fn,
                sample_fn,
                warm_start,
                std,
                search_key,
                iterations=config.cem_iterations,
                elites=config.num_elites,
                alpha=config.alpha,
            )
            return jnp.clip(first_action(solution), -1.0, 1.0), solution

        warm = jnp.concatenate([solutions[:, 1:], jnp.zeros_like(solutions[:, :1])], axis=1)
        actions, solutions = jax.vmap(plan_one)(obs, warm, jax.random.split(key, len(obs)))
        return scale_action(actions, low, high), solutions

    def fit(learned: PolicyState, buffer, key, config):
        # DISTIL: behaviour cloning of the actions the planner executed since the last fit.
        planned = jnp.minimum(config.retrain_every, buffer.count - initial_steps)
        obs_mean, obs_std = whitening_stats(buffer.data["obs"], replay.valid_mask(buffer))

        def loss_fn(layers, obs, targets):
            return distillation_loss(layers, obs_mean, obs_std, obs, targets), None

        def update(carry, batch_key):
            layers, opt_state = carry
            batch = replay.sample(buffer, batch_key, config.policy_batch_size, newest=planned)
            targets = normalised_actions(batch["action"], low, high)
            layers, opt_state, loss, _ = gradient_update(loss_fn, layers, opt_state, optimizer, batch["obs"], targets)
            return (layers, opt_state), loss

        carry = (learned.layers, learned.opt_state)
        (layers, opt_state), losses = jax.lax.scan(update, carry, jax.random.split(key, updates_per_fit))
        distilled = PolicyState(layers, opt_state, obs_mean, obs_std)
        learned = jax.tree_util.tree_map(lambda new, old: jnp.where(planned > 0, new, old), distilled, learned)
        return learned, {"policy_bc_loss": jnp.where(planned > 0, losses.mean(), 0.0)}

    return mpc.Planner(init=init, fresh=jnp.zeros((horizon, search_size)), act=act, fit=fit)


# TRAINING PROGRAM


def make_train(config: Config, env=None) -> Trainer:
    """PETS's loop (the MPC loop) with POPLIN's planner."""
    return mpc.make_train(config, env, poplin_planner, name="POPLIN")


# SETTINGS: the Config and its presets


@dataclasses.dataclass(frozen=True)
class Config(mpc.MPCConfig):
    """POPLIN settings: the MPC loop's (the model, trajectory sampling, and CEM's population, elites,
    iterations and momentum, which POPLIN's search uses) and the policy's."""

    search: str = setting("poplina-init", choices=SEARCHES)
    """The search: "poplina-init", "poplina-replan" (POPLIN-A, action noise) or "poplinp-sep" (POPLIN-P)."""
    policy_hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layer widths of the policy (tanh); the authors' default [64, 64], [32] for POPLIN-P."""
    policy_lr: float = setting(3e-3, sweepable=True)
    """Adam learning rate of the policy's distillation."""
    policy_epochs: int = setting(100, positive=True)
    """Distillation passes over the data since the last fit, after every model fit."""
    policy_batch_size: int = setting(64, positive=True)
    """Minibatch size of the distillation."""
    action_noise_var: float = setting(0.25, sweepable=True, positive=True)
    """POPLIN-A: initial variance of the action noise, in units of half the action range."""
    parameter_noise_var: float = setting(0.03, sweepable=True, positive=True)
    """POPLIN-P: initial variance of every parameter's perturbation (the authors' BC demo: 0.03)."""


# Presets, as data: presets/poplin.toml (a task's settings, and variants of the method and sizes).
TASKS, VARIANTS = presets.load(__file__)
PRESETS: dict[str, dict[str, Any]] = {**TASKS, **VARIANTS}


def main(argv=None) -> int:
    return runner.main("poplin", Config, PRESETS, make_train, argv)


if __name__ == "__main__":
    sys.exit(main())
