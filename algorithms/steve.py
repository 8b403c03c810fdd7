"""STEVE, stochastic ensemble value expansion (Buckman, Hafner, Tucker, Brevdo, Lee, "Sample-Efficient Reinforcement
Learning with Stochastic Ensemble Value Expansion", NeurIPS 2018), and MVE, model-based value expansion, as the `mve`
preset (Feinberg, Wan, Stoica, Jordan, Gonzalez, Levine, "Model-Based Value Estimation for Efficient Model-Free
Reinforcement Learning", 2018).

Both change only the critic's target. From the next state s'_0 = s' of a real transition (s, a, r, s', d) the policy
acts and the model predicts H steps: states s'_t, actions a'_t ~ pi(s'_t), rewards r'_t, continuation flags c_t.
The candidate target of horizon i = 0..H (T^0 is SAC's own soft target):

    T^i = r + gamma (1 - d) [ sum_{t<i} w_t (r'_t - alpha log pi(a'_t|s'_t))
                              + w_i (Q'(s'_i, a'_i) - alpha log pi(a'_i|s'_i)) ],    w_t = gamma^t c_0 ... c_{t-1}

STEVE regresses Q(s, a) on the candidates' means mu_i over (elite, twin critic) samples, weighted by
(1 / (sigma_i^2 + 1e-8)) normalised over i, sigma_i^2 their variances. MVE regresses Q(s, a) on T^H through the
elites' mean prediction, and (TD-k trick) Q(s'_t, a'_t) on the imagined return from s'_t to the same end.
The rest is the Dyna loop (mbrlax.loops.dyna), with the critic on real data only.

Departures from the papers:
- SAC, not DDPG: imagined steps subtract alpha log pi, and the Q samples are SAC's two twin target critics.
- Dynamics and reward come from one probabilistic ensemble (its elites); a task's known reward is used if any.
- The model is refitted every `model_train_freq` steps, as MBPO does, not trained continuously.
- MVE's deterministic model is the elites' mean; its H + 1 squared errors are averaged, not summed and divided by H.
- The imagined actions are the current policy's samples, in `mve-authors` too (the MVE authors use a target actor).

Provenance, every departure, presets and commands: docs/algorithms/steve.md.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp

from mbrlax import ensemble, presets, runner, sac
from mbrlax.loops import dyna
from mbrlax.config import setting
from mbrlax.networks import TwinQ
from mbrlax.training import ConfigError, Trainer, scale_action

ESTIMATORS = ("steve", "mve")
EXPANSION_MODELS = ("sample", "mean")


# IMAGINED PATHS


def imagine(
    policy: Callable, dynamics: Callable, termination: Callable, start_obs: jax.Array, key: jax.Array, horizon: int
) -> dict:
    """H model steps of the policy from `start_obs` [n, ...] (the real next states).

    policy(obs, key) -> (action, log_prob); dynamics(obs, action, key) -> (next_obs, reward);
    termination(obs, action, next_obs) -> [n]. Returns "obs" s'_0..s'_H [H+1, n, ...], "action" and
    "log_prob" at each of them [H+1, n, ...] (a'_H closes the last candidate), "reward" r'_0..r'_{H-1}
    [H, n] and "continues" c_t = 1 - (predicted termination of step t) [H, n]. The first action is
    drawn with `key` itself, as SAC's target draws its next action; step t's model sample and next
    action with fold_in(key, t + 1)."""
    action, log_prob = policy(start_obs, key)

    def model_step(carry, t):
        obs, action = carry
        model_key, policy_key = jax.random.split(jax.random.fold_in(key, t + 1))
        next_obs, reward = dynamics(obs, action, model_key)
        continues = 1.0 - termination(obs, action, next_obs).astype(next_obs.dtype)
        next_action, next_log_prob = policy(next_obs, policy_key)
        return (next_obs, next_action), (next_obs, next_action, next_log_prob, reward, continues)

    _, (obs, actions, log_probs, rewards, continues) = jax.lax.scan(
        model_step, (start_obs, action), jnp.arange(horizon)
    )
    return {
        "obs": jnp.concatenate([start_obs[None], obs]),
        "action": jnp.concatenate([action[None], actions]),
        "log_prob": jnp.concatenate([log_prob[None], log_probs]),
        "reward": rewards,
        "continues": continues,
    }


# CANDIDATE TARGETS


def path_weights(continues: jax.Array, discount) -> jax.Array:
    """w_t = gamma^t c_0 ... c_{t-1} for t = 0..H, from continues [H, ...] -> [H+1, ...]."""
    return jnp.concatenate([jnp.ones((1,) + continues.shape[1:]), jnp.cumprod(discount * continues, axis=0)])


def candidate_targets(reward, terminated, rewards, continues, log_probs, values, discount, alpha) -> jax.Array:
    """T^i, i = 0..H, for real transitions (reward r, terminated d) and imagined paths from their next
    states: T^i = r + gamma (1 - d) [sum_{t<i} w_t (r'_t - alpha log pi_t) + w_i (V_i - alpha log pi_i)].

    rewards, continues [H, ...]; log_probs [H+1, ...]; values [H+1, ...]: the target critic at (s'_t,
    a'_t); every argument broadcasts against the others (extra axes for ensemble samples and twins).
    Returns [H+1, ...]."""
    weights = path_weights(continues, discount)
    soft_rewards = weights[:-1] * (rewards - alpha * log_probs[:-1])
    imagined_return = jnp.concatenate([jnp.zeros((1,) + soft_rewards.shape[1:]), jnp.cumsum(soft_rewards, axis=0)])
    bootstrap = weights * (values - alpha * log_probs)
    return reward + discount * (1.0 - terminated) * (imagined_return + bootstrap)


def td_k_targets(rewards, continues, log_probs, values, discount, alpha) -> jax.Array:
    """The TD-k trick's targets for Q(s'_t, a'_t), t = 0..H-1: the imagined soft return from s'_t to the
    end of the path, G_t = r'_t + gamma c_t (G_{t+1} - alpha log pi_{t+1}), G_H = V_H. Shapes as
    `candidate_targets`; returns [H, ...]."""

    def backward(later, step):
        reward, continues, next_log_prob = step
        value = reward + discount * continues * (later - alpha * next_log_prob)
        return value, value

    _, targets = jax.lax.scan(backward, values[-1], (rewards, continues, log_probs[1:]), reverse=True)
    return targets


def inverse_variance_weights(variances: jax.Array, eps: float = 1e-8) -> jax.Array:
    """STEVE's weights over candidates [H+1, ...]: 1 / (variance + eps), normalised to sum to 1 over
    the first axis (`target_confidence` in the authors' valuerl.py, eps 1e-8 there too)."""
    confidence = 1.0 / (variances + eps)
    return confidence / confidence.sum(axis=0, keepdims=True)


def steve_target(candidates: jax.Array) -> tuple[jax.Array, jax.Array]:
    """STEVE's combination of candidates [H+1, n, M, Q] (M dynamics samples, Q twin critics): each
    candidate's mean is the mean over dynamics samples of the minimum over twins, its variance is over
    all M x Q values; returns sum_i w_i mean_i [n] and the weights w [H+1, n]."""
    means = candidates.min(axis=-1).mean(axis=-1)
    variances = candidates.reshape(candidates.shape[:2] + (-1,)).var(axis=-1)
    weights = inverse_variance_weights(variances)
    return (weights * means).sum(axis=0), weights


def reach_probabilities(terminated, continues) -> jax.Array:
    """Probability of reaching s'_t, t = 0..H-1: (1 - d) c_0 ... c_{t-1}; continues [H, ...] -> [H, ...]."""
    before = jnp.concatenate([jnp.ones((1,) + continues.shape[1:]), jnp.cumprod(continues, axis=0)[:-1]])
    return (1.0 - terminated) * before


# CRITIC OBJECTIVE


def expanded_critic_loss(
    context: dyna.DynaContext,
    model,
    config: Config,
    critic_params,
    target_critic_params,
    actor_params,
    alpha,
    batch,
    key,
):
    """The value-expansion critic loss the Dyna loop takes, and Q(s, a) [2, B]: the target expanded
    H steps through the model from each real next state (STEVE's weighted candidates, or MVE's
    H-step target and the TD-k errors of the imagined pairs)."""
    spec, model_config, agent_config = context
    low, high = jnp.asarray(spec.action_low), jnp.asarray(spec.action_high)
    known_reward = spec.reward_fn if config.known_reward else None
    twin_q = TwinQ(config.sac_hidden_sizes, config.sac_activation)
    steve = config.estimator == "steve"
    # STEVE: one path per elite, through that elite at every step; MVE: one path, through a random
    # elite a step ("sample") or the elites' mean ("mean").
    paths = model_config.model_elite_count if steve else 1
    mode = "tsinf" if steve else {"sample": "ts1", "mean": "expectation"}[config.expansion_model]
    discount = config.discount
    n = batch["obs"].shape[0]

    def policy(obs, key):
        return sac.sample_action(agent_config, actor_params, obs, key)

    def dynamics(obs, action, key):
        next_obs, learned_reward = ensemble.propagate(
            model_config, model, obs, action, key, mode=mode, elites_only=True
        )
        if known_reward is None:
            return next_obs, learned_reward
        return next_obs, known_reward(obs, scale_action(action, low, high), next_obs)

    def termination(obs, action, next_obs):
        return spec.termination_fn(obs, scale_action(action, low, high), next_obs)

    # IMAGINE H steps from every real next state; particle b * paths + m goes through elite m.
    start = jnp.repeat(batch["next_obs"], paths, axis=0)
    path = imagine(policy, dynamics, termination, start, key, config.horizon)
    path = jax.tree_util.tree_map(
        lambda x: jax.lax.stop_gradient(x).reshape((x.shape[0], n, paths) + x.shape[2:]), path
    )
    steps = config.horizon + 1
    flat_obs = path["obs"].reshape((steps * n * paths, -1))
    flat_action = path["action"].reshape((steps * n * paths, -1))
    values = twin_q.apply(target_critic_params, flat_obs, flat_action).reshape(2, steps, n, paths)
    values = jnp.moveaxis(values, 0, -1)  # [H+1, n, paths, twin]

    # CANDIDATES T^0..T^H for each (path, twin), [H+1, n, paths, twin].
    candidates = candidate_targets(
        batch["reward"][:, None, None],
        batch["terminated"][:, None, None],
        path["reward"][..., None],
        path["continues"][..., None],
        path["log_prob"][..., None],
        values,
        discount,
        alpha,
    )
    q = twin_q.apply(critic_params, batch["obs"], batch["action"])
    if steve:
        # STEVE: weight the candidates by the inverse of their variance across the ensembles.
        target, _ = steve_target(candidates)
        return 0.5 * ((q - jax.lax.stop_gradient(target)) ** 2).mean(axis=1).sum(), q

    # MVE: the H-step target for the real pair, and the TD-k targets for the imagined ones.
    target = candidates[-1, :, 0].min(axis=-1)
    real_errors = (q - jax.lax.stop_gradient(target)) ** 2  # [2, n]
    if config.horizon == 0:
        return 0.5 * real_errors.mean(axis=1).sum(), q
    soft = dict(
        rewards=path["reward"][:, :, 0],
        continues=path["continues"][:, :, 0],
        log_probs=path["log_prob"][:, :, 0],
        values=values[:, :, 0].min(axis=-1),
    )
    imagined_targets = td_k_targets(**soft, discount=discount, alpha=alpha)  # [H, n]
    reach = reach_probabilities(batch["terminated"], soft["continues"])  # [H, n]
    imagined_obs = path["obs"][:-1, :, 0].reshape((config.horizon * n, -1))
    imagined_action = path["action"][:-1, :, 0].reshape((config.horizon * n, -1))
    imagined_q = twin_q.apply(critic_params, imagined_obs, imagined_action).reshape(2, config.horizon, n)
    imagined_errors = reach * (imagined_q - jax.lax.stop_gradient(imagined_targets)) ** 2  # [2, H, n]
    total = real_errors.sum(axis=1) + imagined_errors.sum(axis=(1, 2))
    return 0.5 * (total / (n * steps)).sum(), q


# TRAINING PROGRAM: the Dyna loop with the expanded critic target


def make_train(config: Config, env=None, name: str = "STEVE") -> Trainer:
    """The training program, on the task `config.env` names or on `env`, a user's own `(environment,
    EnvSpec)`; `name` is what an error about the task calls it (the entry point run)."""
    config.validate()
    expand = config.horizon > 0 and not config.sac_only  # H = 0: SAC's own critic
    parts = dyna.DynaParts(critic_objective=expanded_critic_loss if expand else None)
    return dyna.make_train(config, env, parts, name=name)


# SETTINGS: the Config and its presets


@dataclasses.dataclass(frozen=True)
class Config(dyna.DynaConfig):
    """STEVE/MVE settings: MBPO's (the model and SAC), with the critic's target expanded through the model."""

    estimator: str = setting("steve", choices=ESTIMATORS)
    """"steve": candidates for 0..H model steps weighted by inverse variance; "mve": H steps, TD-k trick."""
    horizon: int = setting(3, within="[0, inf)")
    """H: model steps of the expansion (STEVE's authors: 3; 0: SAC's critic)."""
    expansion_model: str = setting("sample", choices=EXPANSION_MODELS)
    """MVE's model steps: "sample" a random elite a step, from its Gaussian; "mean" the elites' mean."""
    known_reward: bool = True
    """Use the task's own reward function where it has one; else the model's reward head."""
    rollout_batch_size: int = 0
    """Rollouts into a model buffer per refit (0: none; value expansion trains the critic on real data)."""
    updates_per_step: int = setting(5, positive=True)
    """G: SAC gradient steps per environment step."""

    def validate(self) -> None:
        super().validate()
        if self.estimator == "steve" and self.expansion_model != "sample":
            raise ConfigError(
                f"expansion_model {self.expansion_model!r} is MVE's choice; STEVE samples one path per elite "
                "(use --estimator mve or drop --expansion-model)"
            )
        if self.horizon > 0 and self.sac_only:
            raise ConfigError(
                f"horizon {self.horizon} expands the critic's target through the model, which sac_only turns off; "
                "use --horizon 0 or drop --sac-only"
            )


# Presets, as data: presets/steve.toml (a task's settings, and variants of the method and sizes).
TASKS, VARIANTS = presets.load(__file__)
PRESETS: dict[str, dict[str, Any]] = {**TASKS, **VARIANTS}


def main(argv=None) -> int:
    return runner.main("steve", Config, PRESETS, functools.partial(make_train, name="steve.py"), argv)


if __name__ == "__main__":
    sys.exit(main())
