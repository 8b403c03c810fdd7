"""Soft actor-critic (Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and Applications"), the
policy learner under MBPO and MAAC.

A tanh-Gaussian actor, twin Q-critics with Polyak-averaged targets (clipped double Q), and a
temperature tuned towards a target entropy. Critic, actor and temperature each take one Adam step
per update, and the targets move by `tau` after every update. Actions live in [-1, 1]; the algorithm
scales them to the task's bounds.

The order of the three steps within an update is `SACConfig.sac_update_order`:
- "simultaneous" (the default), as in the code MBPO's paper ran (jannerm/mbpo,
  mbpo/algorithms/mbpo.py, on the TF1 softlearning of rail-berkeley/softlearning up to commit
  1d56928, softlearning/algorithms/sac.py): the three losses are built from the same variables and
  their training ops run together in one `session.run` with no control dependency between them, so
  each is taken from the parameters as they were before the update: the critic's target uses the
  old actor and temperature, the actor's loss the old critics, and the temperature's loss the
  log-densities of the actor's own sample of actions.
- "sequential", as in SAC-SVG's code (facebookresearch/svg, svg/agent.py: `update_critic`, then
  `update_actor_and_alpha`): the critic steps first and the actor's loss reads the updated critics;
  the temperature still uses the actor's sample (drawn before the actor's step).
softlearning's later TF2 code (softlearning/algorithms/sac.py, `_do_updates`) is sequential too,
and its temperature draws a fresh sample from the updated actor (its actor's loss also averages the
twin Qs where the TF1 code and this file take their minimum); that third order is not offered.
The temperature's loss is -log_alpha (log pi + target), as in MBPO's code; SAC-SVG's and
softlearning's TF2 code use -alpha (log pi + target), whose gradient is alpha times this one.

The learning rate, discount, `tau` and target entropy are arguments (traced values), so a sweep over
them is a `vmap`; the optimisers are built inside the update for the same reason.

The actor's objective can be replaced (`update(..., actor_objective=...)`): MAAC and SAC-SVG keep
SAC's critic and temperature but differentiate the actor through a learned model.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from mbrlax.config import setting
from mbrlax.networks import ACTIVATION_NAMES, GaussianHead, TwinQ, tanh_gaussian_mode, tanh_gaussian_sample
from mbrlax.training import adam, gradient_update

UPDATE_ORDERS = ("simultaneous", "sequential")


@dataclasses.dataclass(frozen=True)
class SACConfig:
    """SAC's settings, declared once. Every Config of the Dyna loop extends this class, changing
    defaults only; SAC's functions read these fields from that Config (through an `Agent`)."""

    sac_hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden widths of the actor and of each critic."""
    sac_activation: str = setting("relu", choices=ACTIVATION_NAMES)
    """Hidden activation of actor and critics."""
    sac_batch_size: int = setting(256, positive=True)
    """Transitions per SAC gradient step."""
    sac_lr: float = setting(3e-4, sweepable=True)
    """Adam learning rate of actor, critics and temperature."""
    tau: float = setting(5e-3, sweepable=True, within="(0, 1]")
    """Polyak rate of the target critics."""
    discount: float = setting(0.99, sweepable=True, within="[0, 1]")
    """Discount factor gamma."""
    target_entropy: float | None = None
    """Entropy the temperature steers towards (default: minus the action dimension)."""
    max_grad_norm: float | None = setting(None, positive=True)
    """Clip actor and critic gradients to this global norm (None: no clipping, as SAC)."""
    sac_update_order: str = setting("simultaneous", choices=UPDATE_ORDERS)
    """"simultaneous": SAC's losses on pre-update parameters; "sequential": actor's loss on stepped critic."""
    initial_alpha: float = setting(1.0, positive=True)
    """SAC's temperature at the start (1, as softlearning and MBPO; SAC-SVG: 0.1)."""


class Agent(NamedTuple):
    """What SAC's networks are built from: the Config (its static fields; the traced ones are
    arguments) and the action's dimension, which the task gives."""

    config: SACConfig
    action_size: int


@struct.dataclass
class SACState:
    actor: Any
    critic: Any
    target_critic: Any
    log_alpha: jax.Array
    actor_opt: Any
    critic_opt: Any
    alpha_opt: Any


def actor_network(agent: Agent) -> GaussianHead:
    return GaussianHead(agent.config.sac_hidden_sizes, agent.action_size, agent.config.sac_activation)


def critic_network(agent: Agent) -> TwinQ:
    return TwinQ(agent.config.sac_hidden_sizes, agent.config.sac_activation)


def init(key: jax.Array, agent: Agent, obs_size: int, learning_rate) -> SACState:
    """Networks, targets and optimisers; the optimisers keep `learning_rate` (traced: a sweep's)."""
    actor_key, critic_key = jax.random.split(key)
    obs, action = jnp.zeros((1, obs_size)), jnp.zeros((1, agent.action_size))
    actor = actor_network(agent).init(actor_key, obs)
    critic = critic_network(agent).init(critic_key, obs, action)
    log_alpha = jnp.log(jnp.float32(agent.config.initial_alpha))
    clipped_adam = adam(learning_rate, agent.config.max_grad_norm)
    return SACState(
        actor=actor,
        critic=critic,
        target_critic=critic,
        log_alpha=log_alpha,
        actor_opt=clipped_adam.init(actor),
        critic_opt=clipped_adam.init(critic),
        alpha_opt=adam(learning_rate).init(log_alpha),
    )


def sample_action(agent: Agent, actor_params, obs: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Stochastic action in [-1, 1] and its log-density, for exploration, targets and rollouts."""
    mean, log_std = actor_network(agent).apply(actor_params, obs)
    return tanh_gaussian_sample(mean, log_std, key)


def greedy_action(agent: Agent, actor_params, obs: jax.Array) -> jax.Array:
    """Deterministic action in [-1, 1] (evaluation)."""
    mean, _ = actor_network(agent).apply(actor_params, obs)
    return tanh_gaussian_mode(mean)


def soft_q(agent: Agent, critic_params, obs: jax.Array, action: jax.Array) -> jax.Array:
    """min(Q1, Q2)(obs, action): the clipped double-Q value, [n]."""
    return critic_network(agent).apply(critic_params, obs, action).min(axis=0)


def soft_actor_objective(agent: Agent, actor_params, critic_params, alpha, obs: jax.Array, key: jax.Array):
    """SAC's actor loss, E[alpha log pi(a|s) - min Q(s, a)] with a ~ pi reparameterised. Returns the
    loss and the log-densities of the sampled actions [n], which tune the temperature."""
    action, log_prob = sample_action(agent, actor_params, obs, key)
    return (alpha * log_prob - soft_q(agent, critic_params, obs, action)).mean(), log_prob


def soft_critic_objective(
    agent: Agent, critic_params, target_critic_params, actor_params, alpha, batch: dict, key: jax.Array, discount
):
    """SAC's critic loss: each twin's squared error to the soft Bellman target r + discount (1 - terminated)
    (min target Q(s', a') - alpha log pi(a'|s')), a' ~ pi (no bootstrap after termination). Returns the
    loss and the twins' values [2, B]."""
    next_action, next_log_prob = sample_action(agent, actor_params, batch["next_obs"], key)
    next_q = soft_q(agent, target_critic_params, batch["next_obs"], next_action)
    soft_value = next_q - alpha * next_log_prob
    target = jax.lax.stop_gradient(batch["reward"] + discount * (1.0 - batch["terminated"]) * soft_value)
    q = critic_network(agent).apply(critic_params, batch["obs"], batch["action"])
    return 0.5 * ((q - target) ** 2).mean(axis=1).sum(), q


def update(
    agent: Agent,
    state: SACState,
    batch: dict,
    key: jax.Array,
    *,
    discount,
    tau,
    target_entropy,
    actor_objective: Callable | None = None,
    critic_objective: Callable | None = None,
) -> tuple[SACState, dict]:
    """One gradient step of critic, actor and temperature on `batch` (obs, action, reward, next_obs,
    terminated, each [B, ...]). `discount`, `tau` and `target_entropy` may be traced (the learning
    rate is in the optimisers' states, from `init`).
    `actor_objective(actor_params, critic_params, alpha, obs, key) -> (loss, log_prob)` replaces SAC's
    own actor loss (`soft_actor_objective`); it sees the critic from before this update's critic
    step, or after it, as `agent.config.sac_update_order` says. `critic_objective(critic_params,
    target_critic_params, actor_params, alpha, batch, key) -> (loss, q [2, B])` replaces SAC's own
    critic loss (`soft_critic_objective`)."""
    target_key, actor_key = jax.random.split(key)
    clipped_adam = adam(max_grad_norm=agent.config.max_grad_norm)
    alpha = jnp.exp(state.log_alpha)
    if actor_objective is None:
        actor_objective = functools.partial(soft_actor_objective, agent)
    if critic_objective is None:
        critic_objective = functools.partial(soft_critic_objective, agent, discount=discount)

    # CRITIC: SAC's soft Bellman target from the min of the target twins, or the objective given.
    def critic_loss(params):
        return critic_objective(params, state.target_critic, state.actor, alpha, batch, target_key)

    critic_params, critic_opt, q_loss, q = gradient_update(critic_loss, state.critic, state.critic_opt, clipped_adam)

    # ACTOR: SAC's objective (min-twin Q of a reparameterised action, minus alpha log pi) or the one
    # given, against the critics before their step ("simultaneous") or after it ("sequential").
    actor_critic = state.critic if agent.config.sac_update_order == "simultaneous" else critic_params

    def actor_loss(params):
        return actor_objective(params, actor_critic, alpha, batch["obs"], actor_key)

    actor_params, actor_opt, pi_loss, log_prob = gradient_update(actor_loss, state.actor, state.actor_opt, clipped_adam)

    # TEMPERATURE: move the policy's entropy towards the target.
    entropy_gap = jax.lax.stop_gradient(log_prob + target_entropy).mean()
    alpha_grad = -entropy_gap  # d/d(log_alpha) of -log_alpha * (log_prob + target_entropy)
    updates, alpha_opt = adam().update(alpha_grad, state.alpha_opt, state.log_alpha)
    log_alpha = optax.apply_updates(state.log_alpha, updates)

    # TARGETS: Polyak averaging.
    target_critic = optax.incremental_update(critic_params, state.target_critic, tau)
    new_state = SACState(
        actor=actor_params,
        critic=critic_params,
        target_critic=target_critic,
        log_alpha=log_alpha,
        actor_opt=actor_opt,
        critic_opt=critic_opt,
        alpha_opt=alpha_opt,
    )
    metrics = {
        "critic_loss": q_loss,
        "actor_loss": pi_loss,
        "alpha": jnp.exp(log_alpha),
        "entropy": -log_prob.mean(),
        "q_mean": q.mean(),
    }
    return new_state, metrics
