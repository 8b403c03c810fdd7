"""PETS: probabilistic ensembles with trajectory sampling (Chua, Calandra, McAllister, Levine,
"Deep Reinforcement Learning in a Handful of Trials using Probabilistic Dynamics Models", NeurIPS 2018).

A probabilistic ensemble learns the dynamics; at every step a planner (CEM) searches over action
sequences, scoring each by the predicted return averaged over P particles that are propagated
through the ensemble by trajectory sampling (TS1: a fresh member each step; TSinf: one member per
particle for the whole horizon). The first action of the best plan is executed (model predictive
control), the plan is shifted by one step to warm-start the next search, and the model is refitted
on all data every `retrain_every` steps.

What this file does differently from the paper, and why:
- CEM returns the mean of the last iteration's elites (mbrl-lib's `return_mean_elites`, which its
  authors report helps HalfCheetah; the paper returns the final distribution mean).
- A member count that does not divide the particle batch is handled by padding the batch, where
  the authors' code and mbrl-lib require divisibility.
- Planning is batched over every parallel environment (and over seeds under `vmap`); the paper and
  mbrl-lib plan for one state at a time.
- iCEM (Pinneri et al. 2020) is offered with coloured noise, a decaying population and elites kept
  between iterations; its shifting of elites to the next time step is not done.
- Brax locomotion rewards cannot be computed from observations, so there the ensemble learns the
  reward as an extra output (the paper used hand-written rewards for its own MuJoCo tasks).

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
    """Most epochs per model fit (early stopping on a 10 % holdout ends most fits sooner)."""
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
        if not 0.0 <= self.alpha < 1.0:
            raise ConfigError(f"alpha must be in [0, 1), got {self.alpha}")
        if self.planner == "icem" and self.icem_population_decay < 1.0:
            raise ConfigError(f"icem_population_decay must be at least 1, got {self.icem_population_decay}")


# mbrl-lib's ensemble (7 members of 4 x 200) and its continuous-cartpole planner.
MBRL_LIB_MODEL = dict(
    ensemble_size=7, hidden_sizes=(200, 200, 200, 200), model_lr=7.5e-4, model_weight_decay=3e-5, model_batch_size=256
)
MBRL_LIB_CARTPOLE_PLANNER = dict(horizon=15, population=350, num_elites=35, alpha=0.1, particles=20)
HALFCHEETAH = dict(env="brax/halfcheetah", total_steps=200_000, eval_every=10_000, retrain_every=1000)

PRESETS: dict[str, dict[str, Any]] = {
    # Small enough to learn in a few minutes on a laptop CPU.
    "pendulum": dict(env="pendulum"),
    # mbrl-lib's continuous cartpole settings, on the swing-up task.
    "cartpole_swingup": dict(
        env="cartpole_swingup",
        episode_length=200,
        total_steps=4000,
        eval_every=1000,
        retrain_every=200,
        **MBRL_LIB_MODEL,
        **MBRL_LIB_CARTPOLE_PLANNER,
    ),
    # mbrl-lib's PETS example itself (pets_cartpole): its continuous balancing cart-pole, one random
    # episode, then a refit every 50 steps (25 epochs at most) and TS1, its "random_model".
    "cartpole_continuous": dict(
        env="cartpole_continuous",
        total_steps=5000,
        eval_every=1000,
        initial_random_steps=200,
        retrain_every=50,
        model_max_epochs=25,
        propagation="ts1",
        **MBRL_LIB_MODEL,
        **MBRL_LIB_CARTPOLE_PLANNER,
    ),
    "brax/inverted_pendulum": dict(
        env="brax/inverted_pendulum",
        total_steps=5000,
        eval_every=1000,
        retrain_every=250,
        **MBRL_LIB_MODEL,
        **MBRL_LIB_CARTPOLE_PLANNER,
    ),
    # mbrl-lib's HalfCheetah settings: population 400, elite ratio 0.16.
    "brax/halfcheetah": dict(
        **HALFCHEETAH,
        **dict(MBRL_LIB_MODEL, model_lr=2e-4),
        horizon=30,
        population=400,
        num_elites=64,
        alpha=0.12,
        particles=20,
        model_max_epochs=50,
    ),
    # The original paper's HalfCheetah settings: 5 members, population 500, 50 elites.
    "brax/halfcheetah-original": dict(
        **HALFCHEETAH,
        ensemble_size=5,
        hidden_sizes=(200, 200, 200, 200),
        model_lr=1e-3,
        model_weight_decay=5e-5,
        model_batch_size=256,
        model_max_epochs=50,
        horizon=30,
        population=500,
        num_elites=50,
        alpha=0.1,
        particles=20,
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
        num_elites=config.ensemble_size,
        hidden_sizes=config.hidden_sizes,
        learn_reward=learn_reward,
        batch_size=config.model_batch_size,
        max_epochs=config.model_max_epochs,
        holdout_ratio=0.1,
    )
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

    def sequence_returns(model, obs, sequences, key):
        """Mean predicted return over P particles of each sequence [n, H, A] from `obs` -> [n]."""
        n = sequences.shape[0]
        P = config.particles
        # Particle i = sequence i // P; under TSinf it keeps member i mod K for the whole horizon.
        states = jnp.broadcast_to(obs, (n * P, obs_size))
        actions = jnp.repeat(sequences, P, axis=0)

        def model_step(carry, inputs):
            states, alive, total = carry
            action, step_key = inputs
            next_states, model_reward = ensemble.propagate(
                model_config, model, states, action, step_key, mode=config.propagation
            )
            reward, done = reward_and_done(states, action, next_states, model_reward)
            # No reward after a predicted termination.
            total = total + alive * reward
            alive = alive * (1.0 - done.astype(jnp.float32))
            return (next_states, alive, total), None

        keys = jax.random.split(key, H)
        carry = (states, jnp.ones(n * P), jnp.zeros(n * P))
        (_, _, totals), _ = jax.lax.scan(model_step, carry, (actions.swapaxes(0, 1), keys))
        returns = totals.reshape(n, P).mean(axis=1)
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

    def refit(mean, std, population, returns, alpha):
        top_returns, top = jax.lax.top_k(returns, E)
        elites = population[top]
        elite_mean, elite_std = elites.mean(axis=0), elites.std(axis=0)
        mean = alpha * mean + (1.0 - alpha) * elite_mean
        std = jnp.sqrt(alpha * std**2 + (1.0 - alpha) * elite_std**2)
        return mean, std, elites, elite_mean

    def plan_cem(model, obs, warm_start, key, alpha):
        def iteration(carry, key):
            mean, std, _ = carry
            sample_key, return_key = jax.random.split(key)
            population = sample_sequences(sample_key, mean, std, N)
            returns = sequence_returns(model, obs, population, return_key)
            mean, std, _, elite_mean = refit(mean, std, population, returns, alpha)
            return (mean, std, elite_mean), None

        carry = (warm_start, initial_std, warm_start)
        (_, _, elite_mean), _ = jax.lax.scan(iteration, carry, jax.random.split(key, config.cem_iterations))
        return elite_mean

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
            mean, std, elites, elite_mean = refit(mean, std, population, returns, alpha)
            kept = elites[:num_kept]
        return elite_mean

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


def main(argv=None) -> int:
    return runner.main("pets", Config, PRESETS, make_train, argv)


if __name__ == "__main__":
    sys.exit(main())
