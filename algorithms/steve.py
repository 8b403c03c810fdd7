"""STEVE: stochastic ensemble value expansion (Buckman, Hafner, Tucker, Brevdo, Lee, "Sample-Efficient
Reinforcement Learning with Stochastic Ensemble Value Expansion", NeurIPS 2018), and MVE, model-based
value expansion (Feinberg, Wan, Stoica, Jordan, Gonzalez, Levine, "Model-Based Value Estimation for
Efficient Model-Free Reinforcement Learning", 2018), as the `mve` preset.

Both change only the critic's target. From the next state s'_0 = s' of a real transition (s, a, r, s',
d) the policy acts and the learned model predicts for H steps, giving imagined states s'_1..s'_H,
actions a'_t ~ pi(s'_t), rewards r'_t and continuation flags c_t (0 after a predicted termination).
The candidate target of horizon i, for i = 0..H, is the discounted imagined return of i steps closed
by the target critic (soft values, since the learner is SAC):

    T^i = r + gamma (1 - d) [ sum_{t<i} w_t (r'_t - alpha log pi(a'_t|s'_t))
                              + w_i (Q'(s'_i, a'_i) - alpha log pi(a'_i|s'_i)) ]
    w_t = gamma^t c_0 ... c_{t-1}

T^0 is SAC's own soft Bellman target; nothing is bootstrapped after a predicted termination.
- STEVE computes every T^i once per combination of a dynamics sample and a Q sample, takes each
  candidate's mean mu_i and its variance sigma_i^2 over those combinations, and regresses Q(s, a) on
  sum_i w_i mu_i with w_i = (1 / (sigma_i^2 + 1e-8)) / sum_j (1 / (sigma_j^2 + 1e-8)): a horizon
  whose estimate the ensembles disagree about gets little weight. Here the dynamics samples are the
  ensemble's elites, path m going through elite m at every step (the authors' code keeps one model
  per parallel rollout too), and the Q samples are SAC's twin target critics.
- MVE (`--preset mve`) is one fixed horizon and no weighting, through a deterministic model (the
  elites' mean prediction, `expansion_model="mean"`): Q(s, a) regresses on T^H, and with the
  TD-k trick the critic also regresses Q(s'_t, a'_t), t = 0..H-1, on the imagined return from there
  to the same end, G_t = r'_t + gamma c_t (G_{t+1} - alpha log pi(a'_{t+1}|s'_{t+1})), G_H =
  Q'(s'_H, a'_H), each squared error weighted by the probability of having reached s'_t (1 - d)
  c_0 ... c_{t-1}, and all H + 1 errors averaged.
Everything else is MBPO's loop (mbpo.py, which this file runs) with no model data in the critic's
batches: refits of the ensemble every `model_train_freq` steps, G SAC updates per real step on real
transitions, SAC's actor and temperature.

Checked against the STEVE authors' code (tensorflow/models, research/steve): valuerl.py
(`build_Q_expansion_graph`: candidate targets for 0..rollout_len model steps from the real next state,
continue probabilities from predicted dones, `target_confidence = 1 / (target_variances + 1e-8)`
normalised over the candidates, the variance over all transition x reward x Q samples; the `tdk_trick`
regressing Q at every imagined state on the candidate from there to the end, weighted by the
probability of reaching it), config/algos/steve.json (rollout_len 3, steve_reweight, no TD-k),
config/algos/mve_tdk.json (rollout_len 3, tdk_trick, no ensembles), config/core/bayesian.json
(ensembles of 4 Q-functions, 4 transition models and 4 reward models), config/core/basic.json (DDPG,
hidden width 128, batch 512, 10,000 random frames before learning). MVE against its authors' code
(vlad17/mve): mve/ddpg/ddpg.py and mve/sac/sac.py (`_tf_compute_model_value_expansion`: H steps from
the real next state through the learned deterministic dynamics, the task's reward function, the
target critic (DDPG) or target value network (SAC) at the end; the TD-k errors at every imagined
state weighted by 1 - d of the real transition), mve/ddpg_learner.py (`div_by_h`, `drop_tdk`) and
experiments/hc5.yaml, walker2d5.yaml, swimmer5.yaml (their DDPG runs: H = 5, 4 updates per step,
batch 64, networks of 2 x 64). The STEVE authors' `mve_tdk` likewise expands through the mean
prediction (valuerl.py without model ensembling: the transition's outputs averaged). The MVE paper's
text was not checked.

What this file does differently from the papers, and why:
- Both papers used DDPG (the STEVE authors' config/core/basic.json: algo "ddpg"; MVE's authors'
  experiments/*.yaml: main ddpg, though their code has a SAC variant too, mve/sac/sac.py), a
  deterministic policy with one Q-function or an ensemble of them; this runs on SAC, so every
  imagined step subtracts alpha log pi at its sampled action (the soft value) and the Q samples are
  SAC's two twin target critics, not four Q-functions. Each candidate's mean takes the minimum of the
  twins (clipped double Q, so that T^0 is exactly SAC's target), its variance is over all (elite,
  twin) values.
- The dynamics and the reward come from one probabilistic ensemble (mbrlax.ensemble, MBPO's: its
  elites, each sampling its Gaussian), so a path's model and reward model are the same member and
  the variance is over num_elites x 2 samples (pendulum: 5 x 2; the paper: 4 x 4 x 4). Where the task
  has a known reward function (pendulum, several Brax tasks) it is used (`--no-known-reward` uses the
  ensemble's reward head); termination is the task's known function of the predicted next state.
- The model is refitted every `model_train_freq` steps in MBPO's way, not trained continuously by a
  parallel learner; the policy's updates per environment step are `updates_per_step`.
- MVE's deterministic model is the mean of the ensemble's elites, where both sets of authors have one
  network; `--expansion-model sample` draws a random elite and its Gaussian at every step instead
  (MBPO's rollouts). MVE's H + 1 squared errors are averaged; the MVE authors sum them and divide
  by H (`div_by_h`, on in their experiments), a constant factor that Adam's step all but removes.
  The `mve` preset's H = 3 is the STEVE authors' `mve_tdk`; the MVE authors' own runs used H = 5
  (`--preset mve-authors`, with their batch, networks and rates).
- The imagined actions a'_t are the current SAC policy's samples, as the STEVE authors' (valuerl.py
  acts with the policy being learned); the MVE authors' DDPG takes them from its target actor
  (mve/ddpg/ddpg.py, `actor.tf_target_action` in `_tf_compute_model_value_expansion`). SAC here has
  no target actor, so `mve-authors` keeps the current policy too.

Measured on pendulum (this package's pendulum, 200-step episodes; five episodes of the deterministic
policy per evaluation; the default settings: H = 3, G = 5, critic on real data only, model refitted
every 250 steps; one CPU run each, `python algorithms/steve.py --env pendulum [--preset mve]`, seed 0
unless a line says otherwise):
- STEVE: -622, -326, -124, -150 after 2,000, 3,000, 4,000, 5,000 steps (as one fused program, as
  tests/test_steve.py runs it: -650, -146 after 2,000 and 3,000; -630, -147, -127 with 4,000 in all).
- MVE (`--preset mve`): -1099, -148, -154, -144 at the same steps (as one fused program of 3,000
  steps, as tests/test_steve.py runs it: -1322, -149). Through a sampled elite instead
  (`--expansion-model sample`): -1047, -148, -632, -146, a dip at 4,000 steps.
- SAC at one update per step (`mbpo.py --sac-only --updates-per-step 1`): -1729, -1166, -974, -912.
- SAC at the same G = 5 (`mbpo.py --sac-only --updates-per-step 5`): -1202, -148, -124, -147.
- Seeds 0 to 3 vmapped (`--num-seeds 4`), the mean over the seeds after 2,000 / 3,000 / 4,000 /
  5,000 steps: STEVE -627, -202, -147, -178; MVE -909, -325, -184, -204 (seed 1: -345 at the end);
  MVE through a sampled elite -910, -389, -246, -206; SAC at G = 5 -634, -146, -136, -179; SAC at
  one update per step -1728, -1261, -830, -826.
On pendulum the margin over SAC at one update per step comes from the updates per step; the model's
share is at most seed 0's earlier rise with STEVE (-622 against -1202 at 2,000 steps). After 3,000
steps (seed 0, on 1,024 transitions drawn from the real buffer) STEVE's mean weights on T^0..T^3 were
0.45, 0.23, 0.17, 0.15: the model's candidates do carry over half the target.

Published numbers: not checked (the STEVE paper reports learning curves, whose values were not read
off for this file; its tasks are gym MuJoCo -v1 and Roboschool, not comparable with Brax's).

Reproduce the pendulum rows:  python algorithms/steve.py --env pendulum
                              python algorithms/steve.py --env pendulum --preset mve [--expansion-model sample]
                              the same with --num-seeds 4 for seeds 0 to 3
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
from mbrlax.config import setting
from mbrlax.networks import TwinQ
from mbrlax.training import ConfigError, Trainer, scale_action

ESTIMATORS = ("steve", "mve")
EXPANSION_MODELS = ("sample", "mean")


@dataclasses.dataclass(frozen=True)
class Config(mbpo.Config):
    """STEVE/MVE settings: MBPO's (the model and SAC), with the critic's target expanded through the model."""

    estimator: str = setting("steve", choices=ESTIMATORS)
    """"steve": candidates for 0..H model steps weighted by inverse variance; "mve": H steps, TD-k trick."""
    horizon: int = setting(3, within="[0, inf)")
    """H: model steps of the expansion (STEVE's authors: 3, for MVE too; MVE's authors ran 5; 0: SAC's critic)."""
    expansion_model: str = setting("sample", choices=EXPANSION_MODELS)
    """MVE's model steps: "sample" a random elite a step, drawing from its Gaussian (MBPO's rollouts);
    "mean" the elites' mean prediction, deterministic. STEVE always samples, one path per elite."""
    known_reward: bool = True
    """Use the task's own reward function where it has one; else the model's reward head."""
    rollout_batch_size: int = 0
    """Rollouts into a model buffer at each refit (0: none; value expansion trains the critic on real data)."""
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


# The STEVE authors' method settings that map onto this loop (config/algos/steve.json,
# config/core/basic.json, learner.py): H = 3, batches of 512, 10,000 frames before learning, and
# frames_per_update 0.25, i.e. 4 updates a frame (`_have_enough_frames`: gathered frames >
# frames_per_update x updates). Their networks (4 layers of 128 for the policy and Qs) and their
# model (hidden 512, pretrained for 10,000 updates, config/core/model.json) are not copied: the actor
# and critics are MBPO's paper sizes, the ensemble MBPO's paper ensemble. Budgets are MBPO's presets'
# for each task; the STEVE paper's per-task budgets were not checked.
AUTHORS = dict(
    horizon=3,
    sac_batch_size=512,
    initial_steps=10_000,
    rollout_batch_size=0,
    updates_per_step=4,
)

TASKS: dict[str, dict[str, Any]] = {
    # Small enough to learn in a minute or two on a laptop CPU.
    "pendulum": dict(env="pendulum"),
    # The papers' MuJoCo tasks through Brax, with MBPO's paper model and SAC settings for each task
    # (mbpo.TASKS: halfcheetah 400,000 steps, hopper 125,000, walker2d and ant 300,000).
    "brax/halfcheetah": dict(mbpo.TASKS["brax/halfcheetah"], **AUTHORS),
    "brax/hopper": dict(mbpo.TASKS["brax/hopper"], **AUTHORS),
    "brax/walker2d": dict(mbpo.TASKS["brax/walker2d"], **AUTHORS),
    "brax/ant": dict(mbpo.TASKS["brax/ant"], **AUTHORS),
}

# Variants: they name no task, so they apply on top of the task's preset.
VARIANTS: dict[str, dict[str, Any]] = {
    # MVE with the TD-k trick (the STEVE authors' config/algos/mve_tdk.json: rollout_len 3) through a
    # deterministic model, as both MVE's authors (vlad17/mve) and the STEVE authors' mve_tdk expand.
    "mve": dict(estimator="mve", horizon=3, expansion_model="mean"),
    # The MVE authors' own runs (vlad17/mve experiments/hc5.yaml, walker2d5.yaml: their DDPG learner)
    # as far as they map onto this loop: H = 5, 4 updates per step on batches of 64, 10,000 steps
    # before learning (ddpg_min_buf_size), networks of 2 x 64, learning rate 1e-3 and target rate
    # 1e-2 (theirs for HalfCheetah; Walker2d's are 1e-4 and 1e-3). Not copied: DDPG and its parameter
    # noise, their dynamics trained 4 batches a step (here MBPO's refits), their 1.5 M-step budget
    # (the task presets' budgets stay). On top of a task: `--env brax/halfcheetah --preset mve-authors`.
    "mve-authors": dict(
        estimator="mve",
        horizon=5,
        expansion_model="mean",
        updates_per_step=4,
        sac_batch_size=64,
        initial_steps=10_000,
        sac_hidden_sizes=(64, 64),
        sac_lr=1e-3,
        tau=1e-2,
    ),
    "steve": dict(estimator="steve", horizon=3),
    # End to end in seconds: MBPO's tiny settings, no model buffer, H = 2.
    "tiny": dict(mbpo.VARIANTS["tiny"], rollout_batch_size=0, horizon=2),
}

PRESETS: dict[str, dict[str, Any]] = {**TASKS, **VARIANTS}


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


def make_critic_objective(config: Config) -> Callable:
    """`factory(spec, model_config, agent_config) -> objective(model, hparams, critic, target_critic,
    actor, alpha, batch, key) -> (loss, q [2, B])`, the value-expansion critic loss MBPO's loop takes."""

    def factory(spec, model_config, agent_config):
        low, high = jnp.asarray(spec.action_low), jnp.asarray(spec.action_high)
        known_reward = spec.reward_fn if config.known_reward else None
        twin_q = TwinQ(agent_config.hidden_sizes, agent_config.activation)
        steve = config.estimator == "steve"
        # STEVE: one path per elite, through that elite at every step; MVE: one path, through a random
        # elite a step ("sample") or the elites' mean ("mean").
        paths = model_config.num_elites if steve else 1
        mode = "tsinf" if steve else {"sample": "ts1", "mean": "expectation"}[config.expansion_model]

        def objective(model, hparams, critic_params, target_critic_params, actor_params, alpha, batch, key):
            discount = hparams["discount"]
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

        return objective

    return factory


# TRAINING PROGRAM: MBPO's loop with the expanded critic target


def make_train(config: Config, env=None, name: str = "STEVE") -> Trainer:
    """The training program, on the task `config.env` names or on `env`, a user's own `(environment,
    EnvSpec)`; `name` is what an error about the task calls it (the entry point run)."""
    config.validate()
    expand = config.horizon > 0 and not config.sac_only
    factory = make_critic_objective(config) if expand else None  # H = 0: SAC's own critic
    return mbpo.make_train(config, env, make_critic_objective=factory, name=name)


def main(argv=None) -> int:
    return runner.main("steve", Config, PRESETS, functools.partial(make_train, name="steve.py"), argv)


if __name__ == "__main__":
    sys.exit(main())
