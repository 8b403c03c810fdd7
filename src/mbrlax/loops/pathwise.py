"""The Dyna loop with a pathwise actor, the family of MAAC, SVG(0), SVG(1) and SAC-SVG(H): the actor
climbs an H-step return computed through the learned model and differentiated end to end along the
path, closed by the twin soft Q,

    J(theta) = E[ sum_{t<H} gamma^t (r_t - alpha log pi(a_t|s_t))
                  + gamma^H (min_i Q_i(s_H, a_H) - alpha log pi(a_H|s_H)) ]

with gamma^t zero after a predicted termination (`pathwise_objective`); H = 0 is SAC's own actor.
The data loop and the critic are the Dyna loop's (`loops.dyna`). The parts of the presets that MAAC's
and SVG's entry points share are data, in algorithms/presets/pathwise.toml; their provenance:
docs/algorithms/maac.md and svg.md.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp

from mbrlax import ensemble, sac
from mbrlax.config import setting
from mbrlax.loops import dyna
from mbrlax.training import ConfigError, Trainer, scale_action


@dataclasses.dataclass(frozen=True)
class PathwiseConfig(dyna.DynaConfig):
    """The pathwise actor's settings beside the Dyna loop's (the data loop and the critic): the
    horizon, the reward in J, SAC's update order and temperature, the warm-up and the schedule of the
    target entropy. MAAC's and SVG's Configs extend it."""

    horizon: int = 3
    """H: model steps the actor's objective differentiates through before the critic (0: SAC's actor)."""
    known_reward: bool = True
    """Actor's objective: the task's own reward function where it has one, else the model's reward head."""
    updates_per_step: int = 10
    """G: SAC gradient steps per environment step (the MAAC authors: 8; SAC-SVG: 1)."""
    max_grad_norm: float | None = 5.0
    """Clip actor and critic gradients to this global norm (our choice, from no paper; None: no clipping)."""
    model_free_steps: int = 0
    """Environment steps, from the first random one, in which the actor takes SAC's model-free step."""
    target_entropy_final: float | None = None
    """If set, the target entropy moves from target_entropy (must be set) to this over total_steps."""
    target_entropy_decay: float = setting(1.0, within="[0, inf)")
    """Shape of that schedule: target = (start - final) (1 - step / total_steps)^decay + final."""

    def validate(self) -> None:
        super().validate()
        if self.horizon > 0 and self.sac_only:
            raise ConfigError(
                f"horizon {self.horizon} differentiates through the model, which sac_only turns off; "
                "use --horizon 0 (SVG(0)) or drop --sac-only"
            )
        if self.target_entropy_final is not None and self.target_entropy is None:
            raise ConfigError("target_entropy_final needs target_entropy, the schedule's start; set both or neither")


# SCHEDULE OF THE TARGET ENTROPY


def target_entropy_at(step: jax.Array, total_steps: int, start: float, final: float, decay: float) -> jax.Array:
    """SAC-SVG's target-entropy schedule (`LearnTemp.update` in facebookresearch/svg, svg/temp.py):
    (start - final) (1 - step / total_steps)^decay + final."""
    remaining = jnp.maximum(total_steps - step, 0) / total_steps  # exact near the end, in float32 too
    return (start - final) * remaining**decay + final


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


# UPDATE POLICY: the pathwise objective through the ensemble, as the Dyna loop's actor loss.


def pathwise_actor_loss(
    context: dyna.DynaContext, model, config: PathwiseConfig, period_start, actor_params, critic_params, alpha, obs, key
):
    """-mean J over the batch's states and log pi(a_0|s_0): H steps of the policy through random elites
    (TS1), closed by the soft twin Q; the task's reward where known, else the ensemble's."""
    spec, model_config, agent_config = context
    low, high = jnp.asarray(spec.action_low), jnp.asarray(spec.action_high)
    known_reward = spec.reward_fn if config.known_reward else None

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
        config.discount,
        alpha,
    )
    return -value.mean(), log_prob


def warm_actor_loss(
    context: dyna.DynaContext, model, config: PathwiseConfig, period_start, actor_params, critic_params, alpha, obs, key
):
    """SAC's model-free actor loss for the first `model_free_steps` steps (SAC-SVG's warmup_steps), then
    the pathwise one. The step is the same for every run of a vmapped batch, so this stays a cond."""
    pathwise = (context, model, config, period_start, actor_params, critic_params, alpha, obs, key)
    return jax.lax.cond(
        period_start < config.model_free_steps,
        lambda: sac.soft_actor_objective(context.agent_config, actor_params, critic_params, alpha, obs, key),
        lambda: pathwise_actor_loss(*pathwise),
    )


def scheduled_target_entropy(config: PathwiseConfig, period_start):
    """The target entropy of the model period that starts at environment step `period_start`."""
    return target_entropy_at(
        period_start, config.total_steps, config.target_entropy, config.target_entropy_final, config.target_entropy_decay
    ).astype(jnp.float32)


# TRAINING PROGRAM: the Dyna loop with the pathwise actor


def make_train(config: PathwiseConfig, env=None, name: str = "MAAC") -> Trainer:
    """The Dyna loop with the pathwise actor (SAC's for H = 0), on the task `config.env` names or on
    `env`, a user's own `(environment, EnvSpec)`; `name`: what an error about the task calls it."""
    config.validate()
    warm_up = config.model_free_steps > 0
    actor_loss = warm_actor_loss if warm_up else pathwise_actor_loss
    scheduled = config.target_entropy_final is not None
    parts = dyna.DynaParts(
        actor_objective=None if config.horizon == 0 else actor_loss,  # 0: SAC's
        target_entropy=functools.partial(scheduled_target_entropy, config) if scheduled else None,
    )
    return dyna.make_train(config, env, parts, name=name)

