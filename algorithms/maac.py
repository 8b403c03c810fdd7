"""MAAC: model-augmented actor-critic (Clavera, Fu, Abbeel, "Model-Augmented Actor-Critic:
Backpropagating through Paths", ICLR 2020), and the stochastic value gradient family it belongs to:
SVG(0) and SVG(1) (Heess et al., "Learning Continuous Control Policies by Stochastic Value
Gradients", NeurIPS 2015) and SAC-SVG(H) (Amos et al., "On the model-based stochastic value
gradient for continuous reinforcement learning", L4DC 2021).

The actor climbs the gradient of an H-step return that it computes through a learned model, along
a path that it differentiates end to end: from a start state s_0 the reparameterised policy draws
a_t = tanh(mu(s_t) + sigma(s_t) * eps_t), a random elite of the probabilistic ensemble draws
s_{t+1} = s_t + mu_f(s_t, a_t) + sigma_f(s_t, a_t) * xi_t, the reward r(s_t, a_t, s_{t+1}) is a
differentiable function, and after H steps the twin soft Q-functions close the sum:

    J(theta) = E[ sum_{t<H} gamma^t (r_t - alpha log pi(a_t|s_t)) + gamma^H (min_i Q_i(s_H, a_H) - alpha log pi(a_H|s_H)) ]

with gamma^t replaced by zero after a predicted termination. The gradient flows through every
reward, every model step and every action back to theta; with H = 0 the objective is SAC's own.
Everything else is MBPO's loop (mbpo.py, which this file runs): refits of the ensemble every
`model_train_freq` steps, branched rollouts into a model buffer, G updates per real step, and a
critic trained by SAC on batches that are `real_ratio` real data and the rest model data.

The SVG family comes from the same code as presets (a preset that names no task applies on top of
the task's own, `--env brax/hopper --preset sac-svg`; `algorithms/svg.py` runs SAC-SVG by default):
- `svg0`: H = 0 and no model. The actor follows the gradient of a learned Q through the
  reparameterised action only, which is SVG(0); with its entropy term it is exactly SAC.
- `svg1`: H = 1, critic on real data only: one model step, then the critic. The paper's SVG(1)
  bootstraps from a state-value V and, in SVG(1)-ER, infers the noise (eta, xi) that explains each
  observed transition so that the gradient follows the real path; here the critic is the soft twin Q
  and the noise is drawn afresh. That inference is not done.
- `sac-svg`: H = 3, critic on real data only, SAC's entropy at every step, as in SAC-SVG(H). Amos et
  al. learn the reward and a continue head with their own model; here the model is this package's
  ensemble, the reward is the task's own where it can be written from observations, and
  termination is the task's function.

What this file does differently from the papers, and why:
- Termination is the task's known function of the predicted next state, used as a mask (zero weight
  after a predicted termination) and not differentiated: it is a step function, whose gradient is
  zero almost everywhere.
- The reward in J is the task's own function where it has one (exact and differentiable); elsewhere
  the ensemble's reward head, the same one MBPO's rollouts use. `--no-known-reward` always uses the
  head, as MAAC and SAC-SVG do.
- Each imagined step sends every start state through an elite member drawn for it (as MBPO's
  rollouts do), rather than one member for the whole batch.
- Gradients of the actor and the critics are clipped to a global norm of 5, the SAC-SVG setting; the
  MAAC paper does not give one.

Reproduce the pendulum row of benchmarks/RESULTS.md:  python algorithms/maac.py --env pendulum
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp

from mbrlax import ensemble, runner, sac
from mbrlax.algorithms import mbpo
from mbrlax.training import ConfigError, Trainer, scale_action


@dataclasses.dataclass(frozen=True)
class Config(mbpo.Config):
    """MAAC settings: MBPO's (the data loop and the critic) and the actor's horizon. Traced
    (sweepable) fields: real_ratio, sac_lr, tau, discount, model_lr, model_weight_decay."""

    horizon: int = 3
    """H: model steps the actor's objective differentiates through before the critic closes it (0: SAC's actor)."""
    known_reward: bool = True
    """In the actor's objective, use the task's own reward function where it has one; else the model's reward head."""
    updates_per_step: int = 10
    """G: SAC gradient steps per environment step (the MAAC authors: 8)."""
    max_grad_norm: float | None = 5.0
    """Clip actor and critic gradients to this global norm (SAC-SVG's 5; None for no clipping)."""

    def validate(self) -> None:
        super().validate()
        if self.horizon < 0:
            raise ConfigError(f"horizon must be 0 (SAC's actor) or positive, got {self.horizon}")
        if self.horizon > 0 and self.sac_only:
            raise ConfigError(
                f"horizon {self.horizon} differentiates through the model, which sac_only turns off; "
                "use --horizon 0 (SVG(0)) or drop --sac-only"
            )


# The MAAC authors' settings (their code's defaults), on Brax's versions of the tasks; the critic's
# data (rollout schedules, model buffer) as MBPO's presets for the same tasks.
AUTHORS = dict(
    horizon=3,
    ensemble_size=8,
    num_elites=5,
    model_hidden_sizes=(200, 200, 200, 200),
    sac_hidden_sizes=(256, 256),
    sac_lr=3e-4,
    updates_per_step=8,
    initial_steps=5000,
    total_steps=200_000,
)

TASKS: dict[str, dict[str, Any]] = {
    # Small enough to learn in a minute or two on a laptop CPU.
    "pendulum": dict(env="pendulum"),
    "brax/inverted_pendulum": dict(
        mbpo.PRESETS["brax/inverted_pendulum"], **dict(AUTHORS, total_steps=20_000, initial_steps=500)
    ),
    "brax/halfcheetah": dict(mbpo.PRESETS["brax/halfcheetah"], **AUTHORS),
    "brax/hopper": dict(mbpo.PRESETS["brax/hopper"], **AUTHORS),
    "brax/walker2d": dict(mbpo.PRESETS["brax/walker2d"], **dict(AUTHORS, horizon=1)),
}

# Variants: they name no task, so they apply on top of the task's preset.
VARIANTS: dict[str, dict[str, Any]] = {
    "maac": dict(horizon=3, sac_only=False),
    "svg0": dict(horizon=0, sac_only=True),
    "svg1": dict(horizon=1, sac_only=False, rollout_batch_size=0),
    "sac-svg": dict(horizon=3, sac_only=False, rollout_batch_size=0),
}

PRESETS: dict[str, dict[str, Any]] = {**TASKS, **VARIANTS}


# PATHWISE OBJECTIVE


def pathwise_objective(
    policy: Callable,
    dynamics: Callable,
    terminal_value: Callable,
    termination: Callable,
    obs: jax.Array,
    key: jax.Array,
    horizon: int,
    discount: jax.Array,
    alpha: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """J at each start state of `obs` [n, ...], differentiable with respect to whatever the callables
    close over (the actor's parameters).

    policy(obs, key) -> (action, log_prob), reparameterised; dynamics(obs, action, key) -> (next_obs,
    reward), reparameterised; terminal_value(obs, action) -> [n]; termination(obs, action, next_obs)
    -> [n] in {0, 1}. Returns J [n] and log pi(a_0|s_0) [n] (for the temperature)."""
    keys = jax.random.split(key, horizon + 1)

    def model_step(carry, step_key):
        obs, weight, total = carry  # weight: gamma^t, or 0 once a termination was predicted
        policy_key, model_key = jax.random.split(step_key)
        action, log_prob = policy(obs, policy_key)
        next_obs, reward = dynamics(obs, action, model_key)
        total = total + weight * (reward - alpha * log_prob)
        ended = jax.lax.stop_gradient(termination(obs, action, next_obs).astype(jnp.float32))
        return (next_obs, weight * discount * (1.0 - ended), total), log_prob

    n = obs.shape[0]
    start = (obs, jnp.ones(n), jnp.zeros(n))
    (last_obs, weight, total), log_probs = jax.lax.scan(model_step, start, keys[:horizon])
    action, log_prob = policy(last_obs, keys[horizon])
    total = total + weight * (terminal_value(last_obs, action) - alpha * log_prob)
    return total, (log_probs[0] if horizon > 0 else log_prob)


# TRAINING PROGRAM: MBPO's loop with the pathwise actor


def make_train(config: Config) -> Trainer:
    config.validate()

    def make_actor_objective(spec, model_config, agent_config):
        if config.horizon == 0:
            return None  # SAC's own actor loss
        low, high = jnp.asarray(spec.action_low), jnp.asarray(spec.action_high)
        known_reward = spec.reward_fn if config.known_reward else None

        def objective(model, hparams, actor_params, critic_params, alpha, obs, key):
            # UPDATE POLICY along imagined paths of H model steps, closed by the soft Q.
            def policy(obs, key):
                return sac.sample_action(agent_config, actor_params, obs, key)

            def dynamics(obs, action, key):
                next_obs, learned_reward = ensemble.propagate(
                    model_config, model, obs, action, key, mode="ts1", elites_only=True
                )
                if known_reward is None:
                    return next_obs, learned_reward
                return next_obs, known_reward(obs, scale_action(action, low, high), next_obs)

            def termination(obs, action, next_obs):
                return spec.termination_fn(obs, scale_action(action, low, high), next_obs)

            value, log_prob = pathwise_objective(
                policy,
                dynamics,
                functools.partial(sac.soft_q, agent_config, critic_params),
                termination,
                obs,
                key,
                config.horizon,
                hparams["discount"],
                alpha,
            )
            return -value.mean(), log_prob

        return objective

    return mbpo.make_train(config, make_actor_objective)


def main(argv=None, algorithm: str = "maac", presets: dict[str, dict[str, Any]] = PRESETS) -> int:
    return runner.main(algorithm, Config, presets, make_train, argv)


if __name__ == "__main__":
    sys.exit(main())
