"""PETS: probabilistic ensembles with trajectory sampling (Chua, Calandra, McAllister, Levine,
"Deep Reinforcement Learning in a Handful of Trials using Probabilistic Dynamics Models", NeurIPS 2018).

A probabilistic ensemble learns the dynamics, s' - s ~ N(mu_k(s, a), sigma_k^2(s, a)) for member k. At
every step a planner scores action sequences a_0..a_{H-1} from the current state s_0 by

    R(a) = 1/P sum_p sum_t r(s^p_t, a_t, s^p_{t+1}),   s^p_{t+1} ~ member b(p, t) at (s^p_t, a_t)

(TS1: b drawn afresh each step; TSinf: b(p) fixed for the horizon; no reward after a predicted end).
CEM refits mean and variance to the elites with momentum alpha (new = alpha old + (1 - alpha) elites').
The first action of the plan is executed, the plan is shifted by one step to warm-start the next
search, and the model is refitted on all data every `retrain_every` steps.
`--planner ilqr` (Li and Todorov 2004; `ilqr_planner`, `mbrlax.ilqr`) instead linearises the
ensemble's mean along one plan, quadratises -reward and solves the time-varying LQR problem backwards
(box-constrained QP per step), with a line search over several step sizes at once.

Departures from the paper:
- Planning is batched over the parallel environments (and seeds); the paper plans one state at a time.
- CEM always runs `cem_iterations` (the original also stops when the largest variance is below 0.001).
- TSinf accepts particle counts the members do not divide: particle j keeps member j mod G.
- iCEM is mbrl-lib's ICEMOptimizer within one search; its elites are not carried to the next planning step.
- Brax locomotion rewards are learned as an extra output (the paper's are known).

Provenance, every departure, presets and commands: docs/algorithms/pets.md.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from mbrlax import buffer as replay
from mbrlax import ensemble, ilqr, mpc, planners, runner
from mbrlax.config import RunConfig, setting
from mbrlax.training import (
    ConfigError,
    Trainer,
    evaluate_episodes,
    explore_uniformly,
    make_schedule,
    restart_episodes,
    setup,
    track_returns,
    transition,
    transition_example,
)

PLANNERS = ("cem", "icem", "random")
"""The planners over sampled action sequences that `plan` runs; "ilqr" (`ilqr_planner`) is the other choice."""


@dataclasses.dataclass(frozen=True)
class Config(RunConfig):
    """PETS settings; the run fields (task, budget, environments, evaluation) are RunConfig's."""

    total_steps: int = 2000
    """Environment steps in all, over all parallel environments, random exploration included."""
    initial_steps: int | None = None
    """Random-action steps before the first model fit (default: one episode per environment)."""
    eval_every: int = 600
    """Environment steps between evaluations."""
    eval_episodes: int = 3
    """Evaluation episodes, run in parallel with the current model and planner."""
    # Planner
    planner: str = setting("cem", choices=PLANNERS + ("ilqr",))
    """"cem", "icem" (coloured noise, decaying population, kept elites), "random" shooting or "ilqr"
    (iterative LQR through the ensemble's mean, see `ilqr_planner`)."""
    horizon: int = setting(30, positive=True)
    """Planning horizon H."""
    population: int = setting(100, positive=True)
    """Action sequences sampled per CEM iteration."""
    num_elites: int = setting(10, positive=True)
    """Best sequences refitted per iteration."""
    cem_iterations: int = setting(5, positive=True)
    """CEM iterations per planned action."""
    alpha: float = setting(0.1, sweepable=True, within="[0, 1)")
    """CEM momentum: new mean = alpha * old + (1 - alpha) * elite mean (same for the variance)."""
    particles: int = setting(5, positive=True)
    """Particles P per action sequence."""
    propagation: str = setting("tsinf", choices=ensemble.PROPAGATIONS)
    """Trajectory sampling: "ts1", "tsinf" or "expectation"."""
    sampling: str = setting("truncated", choices=("truncated", "clipped"))
    """"truncated" (variance shrunk so 2 std stay in bounds, as mbrl-lib) or "clipped" normal."""
    icem_noise_beta: float = 2.0
    """iCEM: exponent of the coloured noise (0 white, 2 pink-to-brown)."""
    icem_population_decay: float = 1.25
    """iCEM: the population shrinks by this factor each iteration."""
    icem_keep_elites: float = 0.3
    """iCEM: share of the elites carried into the next iteration's population."""
    ilqr_iterations: int = setting(10, positive=True)
    """iLQR: iterations (linearise, backward pass, line search) per planned action."""
    ilqr_line_search_steps: int = setting(8, positive=True)
    """iLQR: step sizes tried at once each iteration, geometrically from 1 down to ilqr_min_step."""
    ilqr_min_step: float = setting(1e-3, within="(0, 1]")
    """iLQR: the smallest step size of the line search."""
    ilqr_mu_init: float = setting(1.0, within="[0, 1e10]")
    """iLQR: the regulariser mu (added to Q_uu) at the start of every plan."""
    ilqr_mu_min: float = setting(1e-6, within="[0, 1e10]")
    """iLQR: the smallest mu an accepted step lowers it to."""
    ilqr_mu_factor: float = setting(4.0, within="(1, 1e3]")
    """iLQR: mu is divided by this after an accepted step and multiplied by it after a rejected one."""
    ilqr_member: int | None = None
    """iLQR: the dynamics are the mean over the planning members (the elites) when None, else the
    mean prediction of the elite of this rank (0: the lowest holdout error)."""
    # Model
    ensemble_size: int = setting(5, positive=True)
    """Ensemble members K."""
    hidden_sizes: tuple[int, ...] = (64, 64, 64)
    """Hidden layer widths of each member (the paper's 4 x 200 is in the brax/* presets)."""
    learn_reward: bool = False
    """Learn the reward even when the task's reward function is known."""
    retrain_every: int = setting(200, positive=True)
    """Environment steps between model fits (on all data so far)."""
    model_batch_size: int = setting(32, positive=True)
    """Minibatch size of model training."""
    model_max_epochs: int = setting(25, positive=True)
    """Most epochs per model fit (early stopping on the holdout ends most fits sooner)."""
    model_holdout_ratio: float = setting(0.1, within="[0, 1)")
    """Share of the data held out for early stopping and elites; 0: no split, model_max_epochs a fit."""
    model_elites: int | None = None
    """Members the planner uses, the best by holdout error (by training error without one); None: all."""
    model_learn_logvar_bounds: bool = False
    """Learn the log-variance bounds with the penalty 0.01 * (sum max - sum min), as the original."""
    model_normalize_targets: bool = True
    """Standardise the model's targets too (the authors' code and mbrl-lib normalise inputs only)."""
    model_layer_decay_scale: tuple[float, ...] | None = None
    """Multiplier of model_weight_decay per layer, hidden layers then output (None: 1 everywhere)."""
    model_decay_biases: bool = True
    """Weight decay on the biases too (mbrl-lib: yes; the original: weights only)."""
    model_authors_init: bool = False
    """Weights ~ truncated normal with std 1 / (2 sqrt(fan_in)) as both references (else LeCun normal)."""
    model_lr: float = setting(1e-3, sweepable=True)
    """Adam learning rate of the ensemble."""
    model_weight_decay: float = setting(5e-5, sweepable=True)
    """Weight decay of the ensemble."""
    buffer_capacity: int | None = None
    """Replay capacity (default: total_steps, so nothing is forgotten)."""

    def validate(self) -> None:
        super().validate()
        if self.num_elites > self.population:
            raise ConfigError(f"num_elites ({self.num_elites}) must not exceed population ({self.population})")
        if self.retrain_every % self.num_envs:
            raise ConfigError(f"retrain_every ({self.retrain_every}) must divide by num_envs ({self.num_envs})")
        if self.model_elites is not None and not 1 <= self.model_elites <= self.ensemble_size:
            raise ConfigError(
                f"model_elites must be between 1 and ensemble_size ({self.ensemble_size}), got {self.model_elites}"
            )
        if self.model_layer_decay_scale is not None and len(self.model_layer_decay_scale) != len(self.hidden_sizes) + 1:
            raise ConfigError(
                f"model_layer_decay_scale needs one value per layer ({len(self.hidden_sizes) + 1}), "
                f"got {len(self.model_layer_decay_scale)}"
            )
        if self.model_layer_decay_scale is not None and any(not scale >= 0 for scale in self.model_layer_decay_scale):
            raise ConfigError(f"model_layer_decay_scale must be 0 or positive, got {self.model_layer_decay_scale}")
        if self.ilqr_member is not None and self.ilqr_member >= (self.model_elites or self.ensemble_size):
            raise ConfigError(
                f"ilqr_member ({self.ilqr_member}) must be below the number of elites "
                f"({self.model_elites or self.ensemble_size})"
            )
        if self.planner == "icem" and self.icem_population_decay < 1.0:
            raise ConfigError(f"icem_population_decay must be at least 1, got {self.icem_population_decay}")


# mbrl-lib's PETS model and its elites (gaussian_mlp_ensemble.yaml); see docs/algorithms/pets.md.
MBRL_LIB_ENSEMBLE = dict(
    ensemble_size=7,
    model_elites=5,
    hidden_sizes=(200, 200, 200, 200),
    model_normalize_targets=False,
    model_authors_init=True,
    propagation="ts1",  # "random_model"
    particles=20,  # mbrl/examples/conf/algorithm/pets.yaml `num_particles`
)
# mbrl-lib's pets_cartpole fit (mbrl/examples/conf/overrides/pets_cartpole.yaml) and planner.
MBRL_LIB_CARTPOLE_FIT = dict(
    model_lr=7.5e-4, model_weight_decay=3e-5, model_batch_size=256, model_holdout_ratio=0.0, model_max_epochs=25
)
MBRL_LIB_CARTPOLE_PLANNER = dict(horizon=15, population=350, num_elites=35, alpha=0.1, cem_iterations=5)
# Both cheetah sources' budget: 300 episodes of 1000 steps.
HALFCHEETAH = dict(env="brax/halfcheetah", total_steps=300_000, eval_every=10_000, retrain_every=1000)

TASKS: dict[str, dict[str, Any]] = {
    # The defaults; small enough to learn on a laptop CPU.
    "pendulum": dict(env="pendulum"),
    # mbrl-lib's pets_cartpole model, fit and planner on the swing-up task; see docs/algorithms/pets.md.
    "cartpole_swingup": dict(
        env="cartpole_swingup",
        episode_length=200,
        total_steps=4000,
        eval_every=1000,
        retrain_every=200,
        **MBRL_LIB_ENSEMBLE,
        **MBRL_LIB_CARTPOLE_FIT,
        **MBRL_LIB_CARTPOLE_PLANNER,
    ),
    # mbrl-lib's PETS example itself (pets_cartpole) on its balancing cart-pole; see docs/algorithms/pets.md.
    "cartpole_continuous": dict(
        env="cartpole_continuous",
        total_steps=5000,
        eval_every=1000,
        initial_steps=200,
        retrain_every=50,
        **MBRL_LIB_ENSEMBLE,
        **MBRL_LIB_CARTPOLE_FIT,
        **MBRL_LIB_CARTPOLE_PLANNER,
    ),
    # mbrl-lib's cartpole model and planner sizes with this file's own fit and TSinf over 7 members;
    # see docs/algorithms/pets.md.
    "brax/inverted_pendulum": dict(
        env="brax/inverted_pendulum",
        total_steps=5000,
        eval_every=1000,
        retrain_every=250,
        ensemble_size=7,
        hidden_sizes=(200, 200, 200, 200),
        model_lr=7.5e-4,
        model_weight_decay=3e-5,
        model_batch_size=256,
        particles=20,
        **MBRL_LIB_CARTPOLE_PLANNER,
    ),
    # mbrl-lib's pets_halfcheetah (mbrl/examples/conf/overrides/pets_halfcheetah.yaml), the reward
    # learned; see docs/algorithms/pets.md.
    "brax/halfcheetah": dict(
        **HALFCHEETAH,
        **MBRL_LIB_ENSEMBLE,
        model_lr=2.8e-4,
        model_weight_decay=1e-4,
        model_batch_size=32,
        model_holdout_ratio=0.0,
        model_max_epochs=12,
        horizon=30,
        population=400,
        num_elites=64,
        alpha=0.12,
        cem_iterations=5,
    ),
}

# Variants of the method and sizes. One that names a task (the original code's settings on its
# cheetah) starts from that task; the others apply on top of the preset of --env.
VARIANTS: dict[str, dict[str, Any]] = {
    # The original code's HalfCheetah (kchua/handful-of-trials dmbrl/config/halfcheetah.py), the reward
    # learned; see docs/algorithms/pets.md.
    "brax/halfcheetah-original": dict(
        **HALFCHEETAH,
        ensemble_size=5,
        hidden_sizes=(200, 200, 200, 200),
        model_lr=1e-3,
        model_weight_decay=1e-4,
        model_layer_decay_scale=(0.25, 0.5, 0.75, 0.75, 1.0),
        model_decay_biases=False,
        model_learn_logvar_bounds=True,
        model_normalize_targets=False,
        model_authors_init=True,
        model_batch_size=32,
        model_holdout_ratio=0.0,
        model_max_epochs=5,
        horizon=30,
        population=500,
        num_elites=50,
        alpha=0.1,
        cem_iterations=5,
        particles=20,
        propagation="tsinf",
    ),
    # The smallest settings that run the whole loop (tests/test_contract.py and test_pets.py).
    "tiny": dict(
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
    ),
    # On top of tiny (`--preset tiny tiny-ilqr`, as tests/test_contract.py runs it): a 2-iteration iLQR.
    "tiny-ilqr": dict(planner="ilqr", ilqr_iterations=2, ilqr_line_search_steps=3),
}

PRESETS: dict[str, dict[str, Any]] = {**TASKS, **VARIANTS}


class PETSState(NamedTuple):
    env_state: Any
    buffer: replay.ReplayBuffer
    model: ensemble.EnsembleState
    plan: Any
    """Each environment's planning memory, leading axis num_envs (CEM: the previous plan [H, A], for
    the warm start); an environment's is reset to the planner's `fresh` when its episode ends."""
    planner: Any
    """What the planner learns across the run (POPLIN: its policy); () for CEM, iCEM and random."""
    key: jax.Array
    episode_return: jax.Array
    """[num_envs] return of each environment's current episode so far."""
    last_episode_return: jax.Array
    """Mean return of the episodes that ended most recently."""


# MODEL: the probabilistic ensemble (mbrlax.ensemble) as the Config sets it up.


def ensemble_config(config: Config, learn_reward: bool) -> ensemble.EnsembleConfig:
    """The ensemble's settings from the Config's model fields; `learn_reward` adds a reward output."""
    return ensemble.EnsembleConfig(
        num_members=config.ensemble_size,
        num_elites=config.model_elites or config.ensemble_size,
        hidden_sizes=config.hidden_sizes,
        learn_reward=learn_reward,
        learn_logvar_bounds=config.model_learn_logvar_bounds,
        normalize_targets=config.model_normalize_targets,
        layer_decay_scale=config.model_layer_decay_scale,
        decay_biases=config.model_decay_biases,
        authors_init=config.model_authors_init,
        batch_size=config.model_batch_size,
        max_epochs=config.model_max_epochs,
        holdout_ratio=config.model_holdout_ratio,
    )


# PREDICT RETURNS of action sequences by trajectory sampling through the ensemble.


def particles_per_sequence(particles: int, members: int, propagation: str) -> int:
    """Particles computed per action sequence. Under TSinf, row i of the particle batch keeps member
    i mod G (`ensemble.propagate`); with ceil(P / G) * G rows per sequence, particle j of every
    sequence keeps member j mod G, so the first P particles, the ones averaged, give each member
    floor or ceil of P / G of them, the same for every sequence. Otherwise P."""
    if propagation == "tsinf":
        return -(-particles // members) * members
    return particles


def model_step(
    model_config: ensemble.EnsembleConfig,
    model: ensemble.EnsembleState,
    states: jax.Array,
    actions: jax.Array,
    key: jax.Array,
    *,
    propagation: str,
    elites_only: bool,
    reward_fn: Callable | None,
    termination_fn: Callable,
):
    """One step of particles [m, obs] under actions [m, A] through the ensemble, by `propagation`
    (see `ensemble.propagate`; through the elites only with `elites_only`) -> (next states [m, obs],
    rewards [m], terminations [m]). `reward_fn(obs, action, next_obs)` None: the model's reward."""
    next_states, model_reward = ensemble.propagate(
        model_config, model, states, actions, key, mode=propagation, elites_only=elites_only
    )
    reward = model_reward if reward_fn is None else reward_fn(states, actions, next_states)
    return next_states, reward, termination_fn(states, actions, next_states)


def sequence_returns(step_fn: Callable, obs, sequences, key, *, particles: int, particle_rows: int | None = None):
    """Mean predicted return of each action sequence [n, H, A] from the state `obs` [obs] -> [n]:
    `particles` (P) trajectories a sequence, stepped by `step_fn(states, actions, key) -> (next_states,
    rewards, terminations)` with one key a time step; no reward after a predicted termination. Each
    sequence takes `particle_rows` rows of the batch (default P; TSinf: `particles_per_sequence`), of
    which the first P are averaged. A return that is not finite counts as -1e10."""
    n, horizon = sequences.shape[:2]
    rows = particle_rows or particles
    # Row i = particle i % rows of sequence i // rows; under TSinf it keeps member i mod G.
    states = jnp.broadcast_to(obs, (n * rows, obs.shape[-1]))
    actions = jnp.repeat(sequences, rows, axis=0)

    def step(carry, inputs):
        states, alive, total = carry
        action, step_key = inputs
        next_states, reward, done = step_fn(states, action, step_key)
        total = total + alive * reward
        alive = alive * (1.0 - done.astype(jnp.float32))
        return (next_states, alive, total), None

    carry = (states, jnp.ones(n * rows), jnp.zeros(n * rows))
    (_, _, totals), _ = jax.lax.scan(step, carry, (actions.swapaxes(0, 1), jax.random.split(key, horizon)))
    returns = totals.reshape(n, rows)[:, :particles].mean(axis=1)
    return jnp.where(jnp.isfinite(returns), returns, -1e10)


# PLAN: search over action sequences [H, A] for the one of highest `score_fn(sequences [n, H, A],
# key) -> [n]`; every planner returns the plan (and, where it keeps one, its final spread).


def plan(config: Config, score_fn, mean, std, key, alpha, low, high):
    """The plan [H, A] that `config.planner` finds for one state, whose sequences `score_fn` scores,
    searching from `mean` [H, A] (the warm start) with the spread `std` [H, A]."""
    if config.planner == "random":
        return planners.random_shooting(score_fn, key, low, high, population=config.population, horizon=config.horizon)
    if config.planner == "icem":
        mean, _ = planners.icem(
            score_fn,
            mean,
            std,
            key,
            low,
            high,
            iterations=config.cem_iterations,
            population=config.population,
            elites=config.num_elites,
            alpha=alpha,
            noise_beta=config.icem_noise_beta,
            population_decay=config.icem_population_decay,
            keep_elites=config.icem_keep_elites,
        )
        return mean

    def sample(key, mean, std):
        truncated = config.sampling == "truncated"
        return planners.gaussian_sequences(key, mean, std, config.population, low, high, truncated=truncated)

    iterations, elites = config.cem_iterations, config.num_elites
    mean, _ = planners.cem(score_fn, sample, mean, std, key, iterations=iterations, elites=elites, alpha=alpha)
    return mean


def action_sequence_planner(config: Config, context: mpc.PlannerContext) -> mpc.Planner:
    """PETS's planners over open-loop action sequences: `config.planner` (CEM, iCEM or random
    shooting) searches for each state from its previous plan shifted by one step, with a spread of a
    quarter of the action range; each sequence is scored by `sequence_returns`."""
    low, high, horizon = context.task.low, context.task.high, config.horizon
    middle = mpc.middle_plan(context, horizon)
    initial_std = jnp.broadcast_to((high - low) / 4.0, (horizon, low.shape[-1]))

    def act(learned, model, obs, plans, key, hparams):
        step_fn = context.model_step_fn(model)

        def plan_one(obs, warm_start, key):
            score_fn = functools.partial(
                sequence_returns, step_fn, obs, particles=config.particles, particle_rows=context.particle_rows
            )
            return plan(config, score_fn, warm_start, initial_std, key, hparams["alpha"], low, high)

        return mpc.replan(plan_one, obs, plans, key, middle[0])

    return mpc.plan_keeping_planner(act, middle)


def ilqr_planner(config: Config, context: mpc.PlannerContext) -> mpc.Planner:
    """Model predictive control by `mbrlax.ilqr.solve` through the ensemble: for each state,
    `ilqr_iterations` iterations from its previous plan shifted by one step (the middle of the bounds as the new last
    step; the middle plan at an episode's start); the first action is executed.

    Dynamics: the deterministic mean prediction, averaged over the planning members (the elites, as
    `ensemble.propagate(..., mode="expectation")`), or one elite's mean with `ilqr_member`; no
    sampling, so no particles. Cost: minus the task's known `reward_fn(obs, action, next_obs)`, or
    minus the ensemble's learned reward (then the model is evaluated once more for the cost).
    Terminations are ignored in the cost (a smooth approximation: pendulum and cartpole_swingup never
    terminate; on a task that does, the plan values reward after a predicted termination too)."""
    low, high, horizon = context.task.low, context.task.high, config.horizon
    middle = mpc.middle_plan(context, horizon)
    model_config, reward_fn = context.model_config, context.task.spec.reward_fn
    elites_only = model_config.num_elites < model_config.num_members
    learn_reward = model_config.learn_reward

    def act(learned, model, obs, plans, key, hparams):
        def predict(x, u):
            """The model's mean next state [obs] and learned reward (None if not learned) for one x, u."""
            if config.ilqr_member is None:
                # "expectation" draws no noise: the key is unused.
                unused_key, mode = jax.random.PRNGKey(0), dict(mode="expectation", elites_only=elites_only)
                next_x, reward = ensemble.propagate(model_config, model, x[None], u[None], unused_key, **mode)
            else:
                member = model.elites[config.ilqr_member]
                next_x, reward = ensemble.member_mean(model_config, model, member, x[None], u[None])
            return next_x[0], None if reward is None else reward[0]

        def dynamics(x, u):
            return predict(x, u)[0]

        def cost(x, u, next_x):
            return -(predict(x, u)[1] if learn_reward else reward_fn(x, u, next_x))

        def plan_one(obs, warm_start, key):
            result = ilqr.solve(
                dynamics,
                cost,
                obs,
                warm_start,
                low,
                high,
                iterations=config.ilqr_iterations,
                line_search_steps=config.ilqr_line_search_steps,
                mu_init=config.ilqr_mu_init,
                mu_min=config.ilqr_mu_min,
                mu_factor=config.ilqr_mu_factor,
                min_step=config.ilqr_min_step,
            )
            return result.actions

        return mpc.replan(plan_one, obs, plans, key, middle[0])

    return mpc.plan_keeping_planner(act, middle)


# TRAINING PROGRAM


def make_train(
    config: Config, env=None, *, make_planner: Callable | None = None, name: str = "PETS"
) -> Trainer:
    """PETS's loop: explore, then fit the model on all data and act with `make_planner(config,
    mpc.PlannerContext) -> mpc.Planner` for `retrain_every` steps, again and again. By default the planner
    `config.planner` names: `ilqr_planner` for "ilqr", else `action_sequence_planner`."""
    config.validate()
    if make_planner is None:
        make_planner = ilqr_planner if config.planner == "ilqr" else action_sequence_planner
    task = setup(config, env, algorithm=name)
    spec, low, high = task.spec, task.low, task.high
    if spec.can_terminate and spec.termination_fn is None:
        raise ConfigError(f"{config.env} can terminate but has no termination function for the model")

    learn_reward = config.learn_reward or spec.reward_learned
    model_config = ensemble_config(config, learn_reward)
    obs_size, action_size, num_envs = spec.observation_size, spec.action_size, config.num_envs
    initial_steps = spec.episode_length * num_envs if config.initial_steps is None else config.initial_steps
    initial_steps = -(-initial_steps // num_envs) * num_envs
    schedule = make_schedule(config.total_steps, initial_steps, config.retrain_every, config.eval_every)

    def model_step_fn(model):
        # The planner propagates through the elites only when fewer than all members are elites.
        return functools.partial(
            model_step,
            model_config,
            model,
            propagation=config.propagation,
            elites_only=model_config.num_elites < model_config.num_members,
            reward_fn=None if learn_reward else spec.reward_fn,
            termination_fn=spec.termination_fn,
        )

    particle_rows = particles_per_sequence(config.particles, model_config.num_elites, config.propagation)
    planner = make_planner(config, mpc.PlannerContext(task, model_config, model_step_fn, particle_rows))

    def fresh_memory(n: int):
        return jax.tree_util.tree_map(lambda leaf: jnp.broadcast_to(leaf, (n,) + leaf.shape), planner.fresh)

    def env_step(state: PETSState, action):
        """ACT in the real environment and store the transition."""
        next_env_state = task.env.step(state.env_state, action)
        buffer = replay.add(state.buffer, transition(state.env_state, action, next_env_state))
        done = next_env_state.done
        episode_return, last_return = track_returns(
            state.episode_return, state.last_episode_return, next_env_state.reward, done
        )
        ended = done > 0
        plan = jax.tree_util.tree_map(
            lambda fresh, kept: jnp.where(ended.reshape((-1,) + (1,) * fresh.ndim), fresh, kept),
            planner.fresh,
            state.plan,
        )
        return state._replace(
            env_state=next_env_state,
            buffer=buffer,
            plan=plan,
            episode_return=episode_return,
            last_episode_return=last_return,
        )

    def init(key, hparams):
        env_key, model_key, explore_key, key = jax.random.split(key, 4)
        env_state = task.env.reset(env_key)
        example = transition_example(env_state.obs[0], action_size)
        state = PETSState(
            env_state=env_state,
            buffer=replay.init(example, config.buffer_capacity or schedule.total_steps),
            model=ensemble.init(
                model_key, model_config, obs_size, action_size, hparams["model_lr"], hparams["model_weight_decay"]
            ),
            plan=fresh_memory(num_envs),
            planner=planner.init(jax.random.fold_in(model_key, 1), hparams),
            key=key,
            episode_return=jnp.zeros(num_envs),
            last_episode_return=jnp.float32(0.0),
        )
        # EXPLORE with uniformly random actions.
        steps, shape = initial_steps // num_envs, (num_envs, action_size)
        return explore_uniformly(env_step, state, explore_key, steps, shape, low, high)

    def update(state: PETSState, hparams, update_index):
        key, train_key, act_key = jax.random.split(state.key, 3)

        # TRAIN MODEL on everything stored so far (and whatever the planner learns from the data).
        buffer = state.buffer
        model, model_metrics = ensemble.train(model_config, state.model, buffer.data, buffer.count, train_key)
        learned, planner_metrics = planner.fit(state.planner, buffer, jax.random.fold_in(train_key, 1), hparams)
        state = state._replace(model=model, planner=learned, key=key)

        # PLAN and ACT for retrain_every steps.
        def plan_and_step(state, step_key):
            action, plans = planner.act(state.planner, state.model, state.env_state.obs, state.plan, step_key, hparams)
            state = env_step(state._replace(plan=plans), action)
            return state, state.env_state.reward.mean()

        steps = config.retrain_every // num_envs
        state, rewards = jax.lax.scan(plan_and_step, state, jax.random.split(act_key, steps))
        metrics = dict(model_metrics, **planner_metrics, train_reward=rewards.mean())
        metrics["train_episode_return"] = state.last_episode_return
        return state, metrics

    def evaluate(state: PETSState, key, hparams):
        """EVALUATE: `eval_episodes` fresh episodes, planned for all at once with the current model."""

        def plan_action(plans, obs, step_key):
            return planner.act(state.planner, state.model, obs, plans, step_key, hparams)

        plans = fresh_memory(config.eval_episodes)
        return evaluate_episodes(task.eval_env, key, config.eval_episodes, spec.episode_length, plan_action, plans)

    return Trainer(
        init=init,
        update=update,
        evaluate=evaluate,
        schedule=schedule,
        spec=spec,
        fresh_episodes=restart_episodes("env_state", "episode_return"),
    )


def main(argv=None) -> int:
    return runner.main("pets", Config, PRESETS, make_train, argv)


if __name__ == "__main__":
    sys.exit(main())
