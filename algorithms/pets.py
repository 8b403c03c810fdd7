"""PETS: probabilistic ensembles with trajectory sampling (Chua, Calandra, McAllister, Levine,
"Deep Reinforcement Learning in a Handful of Trials using Probabilistic Dynamics Models", NeurIPS 2018).

A probabilistic ensemble learns the dynamics; at every step a planner (CEM) searches over action
sequences, scoring each by the predicted return averaged over P particles that are propagated
through the ensemble by trajectory sampling (TS1: a fresh member each step; TSinf: one member per
particle for the whole horizon). The first action of the best plan is executed (model predictive
control), the plan is shifted by one step to warm-start the next search, and the model is refitted
on all data every `retrain_every` steps.

What this file does differently from the paper, and why:
- Planning is batched over every parallel environment (and over seeds under `vmap`); the paper and
  mbrl-lib plan for one state at a time.
- CEM returns the momentum-smoothed mean of the last iteration, as both references do
  (handful-of-trials `dmbrl/misc/optimizers/cem.py` returns `mean`; mbrl-lib
  `mbrl/planning/trajectory_opt.py` returns `mu` when `return_mean_elites`, although its docstring
  says "the mean of the elites"); it always runs `cem_iterations` iterations (the original also stops
  when the largest variance falls below 0.001).
- TSinf with a particle count P that the number of members G does not divide: the authors' code
  (`dmbrl/controllers/MPC.py`) and mbrl-lib refuse it; here every sequence's particle j keeps member
  j mod G, so each member carries floor or ceil of P / G particles of every sequence, the same for all
  sequences (computed as ceil(P / G) * G particles, of which the first P are averaged).
- iCEM (Pinneri et al. 2020) is offered with coloured noise, a decaying population and elites kept
  between iterations; its shifting of elites to the next time step is not done.
- Brax locomotion rewards cannot be computed from observations, so there the ensemble learns the
  reward as an extra output (the paper and mbrl-lib use known rewards on their own MuJoCo cheetah,
  with a preprocessed observation and the first observation predicted absolutely, not as a delta).
- Each preset that names a source says where it still differs (see PRESETS).

Reproduce the pendulum row of benchmarks/RESULTS.md:  python algorithms/pets.py --env pendulum
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from mbrlax import buffer as replay
from mbrlax import ensemble, runner
from mbrlax.training import (
    ConfigError,
    Trainer,
    check_fields,
    evaluate_episodes,
    explore_uniformly,
    make_env,
    make_schedule,
    require_continuous_vector_task,
    require_positive,
    track_returns,
    transition,
    transition_example,
)

PLANNERS = ("cem", "icem", "random")


@dataclasses.dataclass(frozen=True)
class Config:
    """PETS settings. Traced (sweepable) fields: alpha, model_lr, model_weight_decay."""

    SWEEPABLE: ClassVar[tuple[str, ...]] = ("alpha", "model_lr", "model_weight_decay")

    # Run
    env: str = "pendulum"
    """Task name (see `mbrlax.envs.list_envs()`)."""
    total_steps: int = 2000
    """Environment steps in all, over all parallel environments, random exploration included."""
    num_envs: int = 1
    """Parallel environments; one planner call plans for all of them."""
    episode_length: int | None = None
    """Steps per episode (default: the task's own)."""
    action_repeat: int = 1
    """Repeat each action this many times (the reward then has to be learned)."""
    backend: str | None = None
    """Brax physics backend for brax/* tasks (default: the task's own)."""
    initial_random_steps: int | None = None
    """Random-action steps before the first model fit (default: one episode per environment)."""
    eval_every: int = 600
    """Environment steps between evaluations."""
    eval_episodes: int = 3
    """Evaluation episodes, run in parallel with the current model and planner."""
    # Model
    ensemble_size: int = 5
    """Ensemble members K."""
    hidden_sizes: tuple[int, ...] = (64, 64, 64)
    """Hidden layer widths of each member (the paper's 4 x 200 is in the brax/* presets)."""
    learn_reward: bool = False
    """Learn the reward even when the task's reward function is known."""
    retrain_every: int = 200
    """Environment steps between model fits (on all data so far)."""
    model_batch_size: int = 32
    """Minibatch size of model training."""
    model_max_epochs: int = 25
    """Most epochs per model fit (early stopping on the holdout ends most fits sooner)."""
    model_holdout_ratio: float = 0.1
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
    model_lr: float = 1e-3
    """Adam learning rate of the ensemble."""
    model_weight_decay: float = 5e-5
    """Weight decay of the ensemble."""
    buffer_capacity: int | None = None
    """Replay capacity (default: total_steps, so nothing is forgotten)."""
    # Planner
    planner: str = "cem"
    """"cem", "icem" (coloured noise, decaying population, kept elites) or "random" shooting."""
    horizon: int = 30
    """Planning horizon H."""
    population: int = 100
    """Action sequences sampled per CEM iteration."""
    num_elites: int = 10
    """Best sequences refitted per iteration."""
    cem_iterations: int = 5
    """CEM iterations per planned action."""
    alpha: float = 0.1
    """CEM momentum: new mean = alpha * old + (1 - alpha) * elite mean (same for the variance)."""
    particles: int = 5
    """Particles P per action sequence."""
    propagation: str = "tsinf"
    """Trajectory sampling: "ts1", "tsinf" or "expectation"."""
    sampling: str = "truncated"
    """"truncated" (variance shrunk so 2 std stay in bounds, as mbrl-lib) or "clipped" normal."""
    icem_noise_beta: float = 2.0
    """iCEM: exponent of the coloured noise (0 white, 2 pink-to-brown)."""
    icem_population_decay: float = 1.25
    """iCEM: the population shrinks by this factor each iteration."""
    icem_keep_elites: float = 0.3
    """iCEM: share of the elites carried into the next iteration's population."""

    def validate(self) -> None:
        check_fields(self)
        require_positive(
            self,
            (
                "total_steps",
                "num_envs",
                "action_repeat",
                "eval_every",
                "eval_episodes",
                "ensemble_size",
                "retrain_every",
                "model_batch_size",
                "model_max_epochs",
                "horizon",
                "population",
                "num_elites",
                "cem_iterations",
                "particles",
            ),
        )
        if self.num_elites > self.population:
            raise ConfigError(f"num_elites ({self.num_elites}) must not exceed population ({self.population})")
        if self.planner not in PLANNERS:
            raise ConfigError(f"planner must be one of {', '.join(PLANNERS)}, got {self.planner!r}")
        if self.propagation not in ensemble.PROPAGATIONS:
            raise ConfigError(
                f"propagation must be one of {', '.join(ensemble.PROPAGATIONS)}, got {self.propagation!r}"
            )
        if self.sampling not in ("truncated", "clipped"):
            raise ConfigError(f"sampling must be 'truncated' or 'clipped', got {self.sampling!r}")
        if self.retrain_every % self.num_envs:
            raise ConfigError(f"retrain_every ({self.retrain_every}) must divide by num_envs ({self.num_envs})")
        if not 0.0 <= self.model_holdout_ratio < 1.0:
            raise ConfigError(f"model_holdout_ratio must be in [0, 1), got {self.model_holdout_ratio}")
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
        if not 0.0 <= self.alpha < 1.0:
            raise ConfigError(f"alpha must be in [0, 1), got {self.alpha}")
        if self.planner == "icem" and self.icem_population_decay < 1.0:
            raise ConfigError(f"icem_population_decay must be at least 1, got {self.icem_population_decay}")


# mbrl-lib's PETS model (mbrl/examples/conf/dynamics_model/gaussian_mlp_ensemble.yaml: 7 members of
# 4 x 200, SiLU, fixed log-variance bounds; mbrl/models/util.py `truncated_normal_init`; inputs
# normalised, targets not; torch Adam decays every parameter) and its elites (`num_elites: 5` in the
# overrides), which every propagation uses; with `validation_ratio: 0` each fit runs its epochs on all
# data and the elites are ranked on the training data (mbrl/models/model_trainer.py).
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
HALFCHEETAH = dict(env="brax/halfcheetah", total_steps=200_000, eval_every=10_000, retrain_every=1000)

PRESETS: dict[str, dict[str, Any]] = {
    # Small enough to learn in a few minutes on a laptop CPU.
    "pendulum": dict(env="pendulum"),
    # mbrl-lib's pets_cartpole model, fit and planner, on the swing-up task (200-step episodes, a refit
    # every 200 steps). Differs from mbrl-lib, as in every preset naming it: each fit keeps the last
    # epoch's parameters (mbrl-lib keeps the snapshot of the last epoch in which some member improved
    # its training error by 1 %), and its CEM's elite variance is torch's unbiased one.
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
    # mbrl-lib's PETS example itself (pets_cartpole): its continuous balancing cart-pole, one random
    # episode, then a refit every 50 steps of 25 epochs on all data, TS1 over the 5 elites.
    "cartpole_continuous": dict(
        env="cartpole_continuous",
        total_steps=5000,
        eval_every=1000,
        initial_random_steps=200,
        retrain_every=50,
        **MBRL_LIB_ENSEMBLE,
        **MBRL_LIB_CARTPOLE_FIT,
        **MBRL_LIB_CARTPOLE_PLANNER,
    ),
    # mbrl-lib's cartpole model and planner sizes with this file's own fit (10 % holdout, early
    # stopping, normalised targets) and TSinf over all 7 members: 20 particles split 3, 3, 3, 3, 3, 3, 2.
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
    # mbrl-lib's pets_halfcheetah (mbrl/examples/conf/overrides/pets_halfcheetah.yaml): model lr
    # 2.8e-4, weight decay 1e-4, batch 32, no validation split, 12 epochs a fit, a refit every 1000
    # steps, CEM with population 400, elite ratio 0.16 (64), alpha 0.12, 5 iterations, truncated normal,
    # horizon 30, 20 particles, TS1 over 5 elites of 7. Differs: the reward is learned (mbrl-lib's is
    # known on its own cheetah), 200k steps (mbrl-lib runs 300k), and as for cartpole_swingup.
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
    # The original code's HalfCheetah (kchua/handful-of-trials dmbrl/config/halfcheetah.py, with
    # dmbrl/config/default.py, dmbrl/modeling/models/BNN.py and dmbrl/modeling/layers/FC.py): 5 members
    # of 4 x 200, Adam lr 1e-3, weight decay 2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4 on the weights of the
    # five layers (not the biases), learned log-variance bounds with their 0.01 penalty, truncated
    # normal initialisation, inputs normalised and targets not; 5 epochs a fit on all data in batches of
    # 32 (BNN.train's defaults: no holdout); one random episode, a refit after every 1000-step episode;
    # CEM with population 500, 50 elites, alpha 0.1, 5 iterations; horizon 30; 20 particles, TSinf.
    # Differs: the reward is learned (the original's cost is known on its own cheetah), and CEM does
    # not stop early when its variance falls below 0.001.
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
}


class PETSState(NamedTuple):
    env_state: Any
    buffer: replay.ReplayBuffer
    model: ensemble.EnsembleState
    plan: jax.Array
    """[num_envs, H, A] previous solution of each environment's planner, for the warm start."""
    key: jax.Array
    episode_return: jax.Array
    """[num_envs] return of each environment's current episode so far."""
    last_episode_return: jax.Array
    """Mean return of the episodes that ended most recently."""


# PLANNER MATH: pure functions of their arguments, tested on their own (tests/test_pets.py).


def particles_per_sequence(particles: int, members: int, propagation: str) -> int:
    """Particles computed per action sequence. Under TSinf, row i of the particle batch keeps member
    i mod G (`ensemble.propagate`); with ceil(P / G) * G rows per sequence, particle j of every
    sequence keeps member j mod G, so the first P particles, the ones averaged, give each member
    floor or ceil of P / G of them, the same for every sequence. Otherwise P."""
    if propagation == "tsinf":
        return -(-particles // members) * members
    return particles


def cem_refit(mean, std, population, returns, elites: int, alpha):
    """One CEM update: the `elites` best sequences of `population` [n, H, A] by `returns` [n]; the new
    mean and variance are alpha * old + (1 - alpha) * the elites' (both references smooth the variance,
    not the standard deviation). Returns (mean, std, elites best first)."""
    _, top = jax.lax.top_k(returns, elites)
    best = population[top]
    mean = alpha * mean + (1.0 - alpha) * best.mean(axis=0)
    std = jnp.sqrt(alpha * std**2 + (1.0 - alpha) * best.var(axis=0))
    return mean, std, best


def cem(score_fn, sample_fn, mean, std, key, *, iterations: int, elites: int, alpha):
    """Cross-entropy method: `iterations` rounds of sampling with `sample_fn(key, mean, std)`, scoring
    with `score_fn(population, key)` (higher is better) and `cem_refit`. Returns the final smoothed
    (mean, std): the mean is the plan, as handful-of-trials' CEMOptimizer (`sol = mean`) and
    mbrl-lib's (`return mu`), not the raw mean of the last elites."""

    def iteration(carry, key):
        mean, std = carry
        sample_key, score_key = jax.random.split(key)
        population = sample_fn(sample_key, mean, std)
        mean, std, _ = cem_refit(mean, std, population, score_fn(population, score_key), elites, alpha)
        return (mean, std), None

    (mean, std), _ = jax.lax.scan(iteration, (mean, std), jax.random.split(key, iterations))
    return mean, std


def coloured_noise(key, shape, beta):
    """Unit-variance Gaussian noise with power spectrum 1/f^beta along the time axis (axis 1)."""
    n, horizon, action_size = shape
    freqs = jnp.fft.rfftfreq(horizon)
    freqs = freqs.at[0].set(freqs[1] if horizon > 1 else 1.0)
    scale = freqs ** (-beta / 2.0)
    real_key, imag_key = jax.random.split(key)
    spectrum_shape = (n, action_size, freqs.shape[0])
    spectrum = scale * (jax.random.normal(real_key, spectrum_shape) + 1j * jax.random.normal(imag_key, spectrum_shape))
    signal = jnp.fft.irfft(spectrum, n=horizon, axis=-1)
    signal = signal / jnp.maximum(signal.std(axis=-1, keepdims=True), 1e-6)
    return signal.swapaxes(1, 2)


def make_train(config: Config) -> Trainer:
    config.validate()
    try:
        env, spec = make_env(config, num_envs=config.num_envs, auto_reset=True)
        eval_env, _ = make_env(config, num_envs=config.eval_episodes)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    require_continuous_vector_task(spec, "PETS")
    if spec.can_terminate and spec.termination_fn is None:
        raise ConfigError(f"{config.env} can terminate but has no termination function for the model")

    learn_reward = config.learn_reward or spec.reward_learned
    model_config = ensemble.EnsembleConfig(
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
    # The planner propagates through the elites only when fewer than all members are elites.
    elites_only = model_config.num_elites < model_config.num_members
    num_used = model_config.num_elites
    obs_size, action_size = spec.observation_size, spec.action_size
    low, high = jnp.asarray(spec.action_low), jnp.asarray(spec.action_high)
    H, N, E = config.horizon, config.population, config.num_elites
    num_envs = config.num_envs
    initial_steps = config.initial_random_steps
    if initial_steps is None:
        initial_steps = spec.episode_length * num_envs
    initial_steps = -(-initial_steps // num_envs) * num_envs
    schedule = make_schedule(config.total_steps, initial_steps, config.retrain_every, config.eval_every)
    capacity = config.buffer_capacity or schedule.total_steps
    steps_per_update = config.retrain_every // num_envs

    # PREDICT RETURNS of action sequences by trajectory sampling

    def reward_and_done(obs, action, next_obs, model_reward):
        reward = model_reward if learn_reward else spec.reward_fn(obs, action, next_obs)
        return reward, spec.termination_fn(obs, action, next_obs)

    P = config.particles
    P_run = particles_per_sequence(P, num_used, config.propagation)

    def sequence_returns(model, obs, sequences, key):
        """Mean predicted return over P particles of each sequence [n, H, A] from `obs` -> [n]."""
        n = sequences.shape[0]
        # Row i = particle i % P_run of sequence i // P_run; under TSinf it keeps member i mod G.
        states = jnp.broadcast_to(obs, (n * P_run, obs_size))
        actions = jnp.repeat(sequences, P_run, axis=0)

        def model_step(carry, inputs):
            states, alive, total = carry
            action, step_key = inputs
            next_states, model_reward = ensemble.propagate(
                model_config, model, states, action, step_key, mode=config.propagation, elites_only=elites_only
            )
            reward, done = reward_and_done(states, action, next_states, model_reward)
            # No reward after a predicted termination.
            total = total + alive * reward
            alive = alive * (1.0 - done.astype(jnp.float32))
            return (next_states, alive, total), None

        keys = jax.random.split(key, H)
        carry = (states, jnp.ones(n * P_run), jnp.zeros(n * P_run))
        (_, _, totals), _ = jax.lax.scan(model_step, carry, (actions.swapaxes(0, 1), keys))
        returns = totals.reshape(n, P_run)[:, :P].mean(axis=1)
        return jnp.where(jnp.isfinite(returns), returns, -1e10)

    # PLAN: cross-entropy method over action sequences

    initial_std = jnp.broadcast_to((high - low) / 4.0, (H, action_size))

    def sample_sequences(key, mean, std, n):
        noise_shape = (n, H, action_size)
        if config.planner == "icem":
            noise = coloured_noise(key, noise_shape, config.icem_noise_beta)
            return jnp.clip(mean + std * noise, low, high)
        if config.sampling == "truncated":
            # Shrink the spread so that two standard deviations stay inside the bounds.
            std = jnp.minimum(std, jnp.minimum(mean - low, high - mean) / 2.0)
            return mean + std * jax.random.truncated_normal(key, -2.0, 2.0, noise_shape)
        return jnp.clip(mean + std * jax.random.normal(key, noise_shape), low, high)

    def plan_cem(model, obs, warm_start, key, alpha):
        def score(population, key):
            return sequence_returns(model, obs, population, key)

        def sample(key, mean, std):
            return sample_sequences(key, mean, std, N)

        iterations = config.cem_iterations
        mean, _ = cem(score, sample, warm_start, initial_std, key, iterations=iterations, elites=E, alpha=alpha)
        return mean

    def plan_icem(model, obs, warm_start, key, alpha):
        # Iterations have different population sizes, so they are unrolled (static shapes each).
        mean, std = warm_start, initial_std
        kept = None
        num_kept = max(1, int(round(config.icem_keep_elites * E)))
        for i, iter_key in enumerate(jax.random.split(key, config.cem_iterations)):
            sample_key, return_key = jax.random.split(iter_key)
            n = max(int(N / config.icem_population_decay**i), 2 * E)
            population = sample_sequences(sample_key, mean, std, n)
            if kept is not None:
                population = jnp.concatenate([population, kept])
            if i == config.cem_iterations - 1:
                population = jnp.concatenate([population, mean[None]])  # the mean itself is a candidate
            returns = sequence_returns(model, obs, population, return_key)
            mean, std, elites = cem_refit(mean, std, population, returns, E, alpha)
            kept = elites[:num_kept]
        # The smoothed mean, as mbrl-lib's ICEMOptimizer with its `return_mean_elites: true`.
        return mean

    def plan_random(model, obs, warm_start, key, alpha):
        sample_key, return_key = jax.random.split(key)
        population = jax.random.uniform(sample_key, (N, H, action_size), minval=low, maxval=high)
        return population[jnp.argmax(sequence_returns(model, obs, population, return_key))]

    planner = {"cem": plan_cem, "icem": plan_icem, "random": plan_random}[config.planner]
    middle = jnp.broadcast_to((low + high) / 2.0, (H, action_size))

    def act(model, obs, previous_plan, key, hparams):
        """Plan for every environment at once: obs [n, obs] -> actions [n, A], plans [n, H, A]."""
        # Warm start: the previous solution shifted by one step, the new last step at the middle.
        warm = jnp.concatenate([previous_plan[:, 1:], middle[None, :1].repeat(len(obs), 0)], axis=1)
        keys = jax.random.split(key, len(obs))
        plans = jax.vmap(planner, (None, 0, 0, 0, None))(model, obs, warm, keys, hparams["alpha"])
        return plans[:, 0], plans

    # ACT in the real environment

    def env_step(state: PETSState, action):
        next_env_state = env.step(state.env_state, action)
        buffer = replay.add(state.buffer, transition(state.env_state, action, next_env_state))
        done = next_env_state.done
        episode_return, last_return = track_returns(
            state.episode_return, state.last_episode_return, next_env_state.reward, done
        )
        plan = jnp.where(done[:, None, None] > 0, middle, state.plan)
        return state._replace(
            env_state=next_env_state,
            buffer=buffer,
            plan=plan,
            episode_return=episode_return,
            last_episode_return=last_return,
        )

    def init(key, hparams):
        env_key, model_key, explore_key, key = jax.random.split(key, 4)
        env_state = env.reset(env_key)
        example = transition_example(env_state.obs[0], action_size)
        state = PETSState(
            env_state=env_state,
            buffer=replay.init(example, capacity),
            model=ensemble.init(model_key, model_config, obs_size, action_size),
            plan=jnp.broadcast_to(middle, (num_envs, H, action_size)),
            key=key,
            episode_return=jnp.zeros(num_envs),
            last_episode_return=jnp.float32(0.0),
        )

        # EXPLORE with uniformly random actions.
        return explore_uniformly(
            env_step, state, explore_key, initial_steps // num_envs, (num_envs, action_size), low, high
        )

    def update(state: PETSState, hparams, update_index):
        key, train_key, act_key = jax.random.split(state.key, 3)

        # TRAIN MODEL on everything stored so far.
        model, model_metrics = ensemble.train(
            model_config,
            state.model,
            state.buffer.data,
            state.buffer.count,
            train_key,
            hparams["model_lr"],
            hparams["model_weight_decay"],
        )
        state = state._replace(model=model, key=key)

        # PLAN and ACT for retrain_every steps.
        def plan_and_step(state, step_key):
            action, plan = act(state.model, state.env_state.obs, state.plan, step_key, hparams)
            state = env_step(state._replace(plan=plan), action)
            return state, state.env_state.reward.mean()

        state, rewards = jax.lax.scan(plan_and_step, state, jax.random.split(act_key, steps_per_update))
        metrics = dict(model_metrics, train_reward=rewards.mean(), train_episode_return=state.last_episode_return)
        return state, metrics

    def evaluate(state: PETSState, key, hparams):
        """Return of `eval_episodes` fresh episodes, planned for all at once with the current model."""

        def plan_action(plan, obs, step_key):
            action, plan = act(state.model, obs, plan, step_key, hparams)
            return action, plan

        plan = jnp.broadcast_to(middle, (config.eval_episodes, H, action_size))
        return evaluate_episodes(eval_env, key, config.eval_episodes, spec.episode_length, plan_action, plan)

    return Trainer(init=init, update=update, evaluate=evaluate, schedule=schedule)


def main(argv=None) -> int:
    return runner.main("pets", Config, PRESETS, make_train, argv)


if __name__ == "__main__":
    sys.exit(main())
