"""M2AC: masked model-based actor-critic (Pan, He, Tu, He, "Trust the Model When It Is Confident: Masked Model-based
Actor-Critic", NeurIPS 2020, arXiv:2010.04893).

MBPO's loop (loops.dyna) with other model data. At each refit B = `rollout_batch_size` rollouts of H steps start from
real states; at step h = 0..H-1 every live sample goes through a random elite member k and

    u(s, a)   = KL( N(mu_k, Sigma_k) || N(mu_-k, Sigma_-k) )       one-vs-rest uncertainty
    r~(s, a)  = r - alpha * u(s, a)                                  penalised model reward
    keep      = the floor(w_h B) live samples with the lowest u      the mask
    w_h       = (H - h) / (2 (H + 1)) for H > 1, w (0.5) for H = 1   the masking rate

N(mu_k, Sigma_k) is member k's diagonal Gaussian over (next state, reward), N(mu_-k, Sigma_-k) the moment-matched
mixture of the other K - 1 members. Only kept transitions are stored and go on: a rollout ends at its first
masked-out or terminated step. SAC learns from real and masked model data as in MBPO.

The paper's text was not read here and its authors link no code; the references are two reimplementations
(tianshou's and macura's). Departures:
- H is MBPO's rollout length k (`rollout_schedule`); the presets fix it: 5 on pendulum, 10 on the Brax tasks.
- Masked-out rollouts stop, as tianshou's `stop_uncertain=True` does; macura's go on.
- SAC's model batches draw from a pool sized by how many transitions the last round stored.
- The rest's variance is the mean variance plus the spread of the means (float32-safe), not moments minus squares.
- The Brax presets are MBPO's with macura's H, mask, penalty and budgets only.

Provenance, every departure, presets and commands: docs/algorithms/m2ac.md.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp

from mbrlax import buffer as replay
from mbrlax import ensemble, presets, runner, sac
from mbrlax.loops import dyna
from mbrlax.config import setting
from mbrlax.training import ConfigError, Trainer, scale_action


# UNCERTAINTY


def one_vs_rest_uncertainty(mean: jax.Array, var: jax.Array, chosen: jax.Array) -> jax.Array:
    """KL(N(mean[k], var[k]) || N(rest mean, rest var)) per sample, k = chosen[i]: mean, var [K, n, d]
    diagonal Gaussians of the K members; the rest is the moment-matched Gaussian of the mixture of
    the other K - 1 members. Returns [n]."""
    num_members, n = mean.shape[0], mean.shape[1]
    rows = jnp.arange(n)
    own_mean, own_var = mean[chosen, rows], var[chosen, rows]
    rest_mean = (mean.sum(0) - own_mean) / (num_members - 1)
    # The mixture's variance as mean variance plus spread of the means about rest_mean: no cancellation
    # of large second moments, which float32 would round to a zero or negative variance.
    spread = var + (mean - rest_mean) ** 2
    rest_var = (spread.sum(0) - spread[chosen, rows]) / (num_members - 1)
    kl = jnp.log(rest_var) - jnp.log(own_var) - 1.0 + own_var / rest_var + (own_mean - rest_mean) ** 2 / rest_var
    return 0.5 * kl.sum(-1)


# MASK


def masking_rate(step: jax.Array, horizon: jax.Array, one_step_rate: float) -> jax.Array:
    """w_h, the share of the rollout batch kept at step h = 0..H-1: (H - h) / (2 (H + 1)), or
    `one_step_rate` when H = 1 (macura's `get_masking_rate`)."""
    return jnp.where(horizon == 1, one_step_rate, (horizon - step) / (2.0 * (horizon + 1.0)))


def confident_mask(uncertainty: jax.Array, eligible: jax.Array, keep: jax.Array) -> jax.Array:
    """[n] bool: the `keep` (may be traced) eligible samples of lowest uncertainty (all eligible ones if
    fewer); ties go to the lower index."""
    ranked = jnp.where(eligible, uncertainty, jnp.inf)
    order = jnp.argsort(ranked, stable=True)
    rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0]))
    return eligible & (rank < keep)


def penalised_reward(reward: jax.Array, uncertainty: jax.Array, penalty_coef: jax.Array) -> jax.Array:
    """The model reward M2AC learns from: r - alpha * u."""
    return reward - penalty_coef * uncertainty


# MASKED ROLLOUTS


def masked_rollouts(
    policy: Callable,
    dynamics: Callable,
    members: Callable,
    termination: Callable,
    real_buffer: replay.ReplayBuffer,
    model_buffer: replay.ReplayBuffer,
    key: jax.Array,
    *,
    length: jax.Array,
    batch_size: int,
    one_step_rate: float,
    penalty_coef: jax.Array,
) -> tuple[replay.ReplayBuffer, jax.Array, dict]:
    """`batch_size` masked rollouts of `length` steps (H) from states of the real buffer.

    policy(obs, key) -> (action, log_prob); dynamics(obs, action, key) -> (next_obs, reward, chosen),
    a draw from a random member of the elites for each sample and that member's index [n];
    members(obs, action) -> (mean, var) [K, n, obs + 1], every member's Gaussian over (next state,
    reward); termination(obs, action, next_obs) -> [n] bool. At each step the
    floor(w_h batch_size) live samples of lowest one-vs-rest uncertainty are stored with the
    penalised reward, and only they go on, unless terminated. Returns the model buffer, the number
    of transitions stored, and metrics."""
    start_key, key = jax.random.split(key)
    obs = replay.sample(real_buffer, start_key, batch_size)["obs"]

    def model_step(t, carry):
        obs, alive, model_buffer, added, total_uncertainty = carry
        act_key, model_key = jax.random.split(jax.random.fold_in(key, t))
        action, _ = policy(obs, act_key)
        next_obs, reward, chosen = dynamics(obs, action, model_key)
        mean, var = members(obs, action)
        uncertainty = one_vs_rest_uncertainty(mean, var, chosen)
        # MASK: the confident share of the whole batch, among the rollouts still going.
        keep = jnp.floor(masking_rate(t, length, one_step_rate) * batch_size).astype(jnp.int32)
        kept = confident_mask(uncertainty, alive, keep)
        terminated = termination(obs, action, next_obs)
        imagined = {
            "obs": obs,
            "action": action,
            "reward": penalised_reward(reward, uncertainty, penalty_coef),
            "next_obs": next_obs,
            "terminated": terminated.astype(jnp.float32),
        }
        model_buffer = replay.add(model_buffer, imagined, mask=kept)
        total_uncertainty = total_uncertainty + jnp.where(kept, uncertainty, 0.0).sum()
        return next_obs, kept & ~terminated, model_buffer, added + kept.sum(), total_uncertainty

    start = (obs, jnp.ones(batch_size, bool), model_buffer, jnp.int32(0), jnp.float32(0.0))
    _, alive, model_buffer, added, total_uncertainty = jax.lax.fori_loop(0, length, model_step, start)
    metrics = dict(
        rollouts_alive=alive.mean(),
        model_share_kept=added / (batch_size * length),
        kept_uncertainty=total_uncertainty / jnp.maximum(added, 1),
    )
    return model_buffer, added, metrics


def m2ac_rollouts(
    context: dyna.DynaContext, model, config: Config, actor, real_buffer, model_buffer, key, length
):
    """The Dyna loop's model data: H masked steps of the current policy through random elites (TS1, as
    MBPO's draw), from real states, each kept by its one-vs-rest uncertainty (`masked_rollouts`)."""
    spec, model_config, agent_config = context
    low, high = jnp.asarray(spec.action_low), jnp.asarray(spec.action_high)

    def dynamics(obs, action, key):
        # MBPO's draw (a random split of the batch over the elites), and which member drew each sample.
        next_obs, reward = ensemble.propagate(model_config, model, obs, action, key, mode="ts1", elites_only=True)
        return next_obs, reward, ensemble.ts1_members(key, obs.shape[0], model.elites)

    def members(obs, action):
        next_mean, next_var, reward_mean, reward_var = ensemble.predict(model_config, model, obs, action)
        mean = jnp.concatenate([next_mean, reward_mean[..., None]], axis=-1)
        var = jnp.concatenate([next_var, reward_var[..., None]], axis=-1)
        return mean, var

    # ROLLOUT H masked steps of the current policy through random elites, from real states.
    return masked_rollouts(
        functools.partial(sac.sample_action, agent_config, actor),
        dynamics,
        members,
        lambda obs, action, next_obs: spec.termination_fn(obs, scale_action(action, low, high), next_obs),
        real_buffer,
        model_buffer,
        key,
        length=length,
        batch_size=config.rollout_batch_size,
        one_step_rate=config.masking_rate,
        penalty_coef=config.penalty_coef,
    )


# TRAINING PROGRAM: the Dyna loop with masked rollouts


def make_train(config: Config, env=None, name: str = "M2AC") -> Trainer:
    """The training program, on the task `config.env` names or on `env`, a user's own `(environment,
    EnvSpec)`; `name` is what an error about the task calls it (the entry point run)."""
    config.validate()
    return dyna.make_train(config, env, dyna.DynaParts(rollouts=m2ac_rollouts), name=name)


# SETTINGS: the Config and its presets


@dataclasses.dataclass(frozen=True)
class Config(dyna.DynaConfig):
    """M2AC settings: MBPO's, with the mask and the penalty."""

    rollout_schedule: tuple[int, int, int, int] = (0, 1, 5, 5)
    """[epoch_a, epoch_b, k_a, k_b]: rollout length H rises linearly from k_a to k_b over these epochs."""
    masking_rate: float = setting(0.5, sweepable=True, within="(0, 1]")
    """w: share of the B samples kept when H = 1; longer rollouts keep (H - h) / (2 (H + 1)) at step h."""
    penalty_coef: float = setting(1e-3, sweepable=True, within="[0, inf)")
    """alpha: the model reward is r - alpha * u, u the one-vs-rest KL (tianshou's default: 0.001)."""

    def validate(self) -> None:
        super().validate()
        if self.sac_only:
            raise ConfigError("sac_only turns off the model whose masked rollouts M2AC is; run mbpo.py --sac-only")
        if self.ensemble_size < 2:
            raise ConfigError(
                f"ensemble_size ({self.ensemble_size}) must be at least 2: "
                "the uncertainty compares one member with the rest"
            )


# Presets, as data: presets/m2ac.toml (a task's settings, and variants of the method and sizes).
TASKS, VARIANTS = presets.load(__file__)
PRESETS: dict[str, dict[str, Any]] = {**TASKS, **VARIANTS}


def main(argv=None) -> int:
    return runner.main("m2ac", Config, PRESETS, functools.partial(make_train, name="m2ac.py"), argv)


if __name__ == "__main__":
    sys.exit(main())
