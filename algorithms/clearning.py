"""C-learning: goal-conditioned RL as classifying the future (Eysenbach, Salakhutdinov, Levine,
"C-Learning: Learning to Achieve Goals via Recursive Classification", ICLR 2021), with the
contrastive form of the same family (Eysenbach et al., "Contrastive Learning as Goal-Conditioned
Reinforcement Learning", NeurIPS 2022) as an option.

No reward is used. A classifier C(s, a, g) learns to tell goals from the discounted future of (s, a)
from random goals; at its optimum C / (1 - C) = p^pi(future = g | s, a) / p(g), the Q-function of
the reward (1 - gamma) p(s_{t+1} = g). The policy maximises C (or log C) for the commanded goal.
TD C-learning (`--estimator td`, the default), for a transition (s, a, s') and a random goal g:

    loss = -(1 - gamma) log C(s, a, s') - gamma w log C(s, a, g) - log(1 - C(s, a, g))
    w    = C'/(1 - C') at (s', a' ~ pi(s', g), g), the smaller of two target classifiers, clipped at 1/(1 - gamma)

`mc` uses future goals at offsets k ~ Geom(1 - gamma) as positives, `hybrid` mixes the two, and
`contrastive` learns an energy f(phi(s, a), psi(g)) over batch x batch pairs (NCE or InfoNCE).

Departures from the papers (the most important):
- The C-learning actors are SAC's tanh-Gaussian without an entropy bonus, as c_learning's `actor_loss`.
- Every actor's goals are half future goals of the batch's own trajectories, half random goals.
- The contrastive actor is contrastive_rl's (alpha log pi - f), not the C-learning actor.
- Many environments in parallel with `updates_per_step` gradient steps per vector step; the paper runs one.
- TD C-learning puts both loss terms on every transition; the authors split the batch in halves.

Provenance, every departure, presets and commands: docs/algorithms/clearning.md.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mbrlax import buffer as replay
from mbrlax import envs, presets, runner
from mbrlax.config import RunConfig, setting
from mbrlax.networks import MLP, GaussianHead, TwinQ, tanh_gaussian_mode, tanh_gaussian_sample
from mbrlax.training import (
    ConfigError,
    Schedule,
    Trainer,
    adam,
    gradient_update,
    make_schedule,
    restart_episodes,
    scale_action,
)
from mbrlax.loops.episodes import (
    Setup,
    evaluate_episodes,
    explore_uniformly,
    setup,
    track_returns,
    transition,
    transition_example,
)


class CState(NamedTuple):
    env_state: Any
    buffer: replay.TrajectoryBuffer
    episode: jax.Array
    """[num_envs] int32: the episode number of each environment."""
    actor: Any
    critic: Any
    target_critic: Any
    actor_opt: Any
    critic_opt: Any
    log_alpha: jax.Array
    """contrastive: log of the actor's entropy temperature (unused when it is fixed)."""
    alpha_opt: Any
    key: jax.Array
    episode_return: jax.Array
    last_episode_return: jax.Array


class ContrastiveCritic(nn.Module):
    """The representations phi(s, a) [n, repr] and psi(g) [m, repr]; `energy` turns them into logits."""

    hidden_sizes: tuple[int, ...]
    repr_size: int

    @nn.compact
    def __call__(self, state, action, goal):
        phi = MLP(self.hidden_sizes, self.repr_size, "relu")(jnp.concatenate([state, action], -1))
        psi = MLP(self.hidden_sizes, self.repr_size, "relu")(goal)
        return phi, psi


class Networks(NamedTuple):
    """The actor pi(a | s, g), g read from s, and the classifier: twin C(s, a, g) or the contrastive phi, psi."""

    actor: GaussianHead
    critic: TwinQ | ContrastiveCritic


# GOALS: what an observation commands and achieves, and the goals a transition is relabelled with.


def with_goal(obs, goal, goal_slice):
    """The observation with its commanded goal replaced: what a relabelled transition sees."""
    return obs.at[..., goal_slice[0] : goal_slice[1]].set(goal)


def without_goal(obs, goal_slice):
    """The observation with its commanded goal left out: the state the contrastive phi(s, a) sees."""
    keep = np.ones(obs.shape[-1], bool)
    keep[goal_slice[0] : goal_slice[1]] = False
    return obs[..., keep]


def achieved_goal(obs, achieved_slice):
    """The goal an observation's state achieves (the point's or the torso's position)."""
    return obs[..., achieved_slice[0] : achieved_slice[1]]


def relabelled_goals(batch, future, key, achieved_slice):
    """(future goals, random goals) of a batch from `replay.sample_with_future`: the goal achieved at
    each transition's sampled future step (same environment, same episode), and the goal achieved at
    the next step of another transition of the batch (a random permutation)."""
    achieved_next = achieved_goal(batch["next_obs"], achieved_slice)
    random_goals = achieved_next[jax.random.permutation(key, achieved_next.shape[0])]
    return achieved_goal(future["next_obs"], achieved_slice), random_goals


def actor_goals(future_goals, random_goals):
    """The goals the actor learns to reach: the first half of the batch its future goals, the rest random goals."""
    first_half = jnp.arange(future_goals.shape[0]) < future_goals.shape[0] // 2
    return jnp.where(first_half[:, None], future_goals, random_goals)


# C-LEARNING: the classifier's losses, its recursive weights, the actor's objective.


def td_weight(next_logits, discount):
    """The recursive importance weight w = C'/(1 - C') = exp(logit') of the random goal at the next
    state and action, from the smaller of the twin target classifiers [2, n], clipped at 1/(1 - gamma)
    and held fixed."""
    return jax.lax.stop_gradient(jnp.minimum(jnp.exp(next_logits.min(axis=0)), 1.0 / (1.0 - discount)))


def td_critic_loss(next_goal_logits, random_logits, weight, discount):
    """TD C-learning: -(1 - gamma) log C(s, a, s') - gamma w log C(s, a, g) - log(1 - C(s, a, g)),
    the next state's achieved goal s' a positive, a random goal g a negative and (weighted) a positive;
    the mean over the batch, summed over the twin classifiers ([2, n] logits)."""
    positive_term = -(1.0 - discount) * jax.nn.log_sigmoid(next_goal_logits)
    negative_term = -discount * weight * jax.nn.log_sigmoid(random_logits) - jax.nn.log_sigmoid(-random_logits)
    return positive_term.mean(1).sum() + negative_term.mean(1).sum()


def mc_critic_loss(future_logits, random_logits):
    """MC C-learning: the cross-entropy of future goals (label 1) against random goals (label 0), the
    mean over the batch, summed over the twin classifiers ([2, n] logits)."""
    return -jax.nn.log_sigmoid(future_logits).mean(1).sum() - jax.nn.log_sigmoid(-random_logits).mean(1).sum()


def classifier_actor_loss(logit, log_objective: bool):
    """The C-learning actor's loss: -mean C(s, a, g), or -mean log C with `log_objective`."""
    objective = jax.nn.log_sigmoid(logit) if log_objective else jax.nn.sigmoid(logit)
    return -objective.mean()


# CONTRASTIVE RL: the critic's energy and loss, the actor's loss and its temperature.


def energy(phi, psi, kind: str):
    """The logit f(phi, psi) over the last axis: phi . psi ("dot") or -sqrt(||phi - psi||^2 + 1e-6)
    ("distance"; JaxGCRL's `energy_fn("norm", ...)` in jaxgcrl/agents/crl/losses.py, the 1e-6 keeping
    its gradient finite at 0). Broadcasts: energy(phi[:, None], psi[None], kind) is the [n, m] matrix."""
    if kind == "dot":
        return jnp.sum(phi * psi, axis=-1)
    return -jnp.sqrt(jnp.sum(jnp.square(phi - psi), axis=-1) + 1e-6)


def contrastive_critic_loss(logits, kind: str, logsumexp_penalty):
    """The critic loss of [B, B] logits whose diagonal holds the positives.

    nce: mean sigmoid cross-entropy against the identity (contrastive_rl's learning.py `critic_loss`);
    infonce: -mean(diag - logsumexp over each row), the softmax cross-entropy of picking each
    state-action's own future goal among the batch's (JaxGCRL's "fwd_infonce");
    infonce_backward: the same over each column (JaxGCRL's "bwd_infonce").
    Then + logsumexp_penalty * mean(logsumexp over each row ^ 2), for every kind, as JaxGCRL's
    `update_critic` adds it (it adds 1e-6 to the logits inside that logsumexp, a shift left out here)."""
    diagonal = jnp.diagonal(logits)
    row_lse = jax.nn.logsumexp(logits, axis=1)
    if kind == "nce":
        loss = optax.sigmoid_binary_cross_entropy(logits, jnp.eye(logits.shape[0])).mean()
    elif kind == "infonce":
        loss = -jnp.mean(diagonal - row_lse)
    else:  # infonce_backward
        loss = -jnp.mean(diagonal - jax.nn.logsumexp(logits, axis=0))
    return loss + logsumexp_penalty * jnp.mean(jnp.square(row_lse))


def pairwise_metrics(logits):
    """Of [B, B] logits with the positives on the diagonal: their mean, the off-diagonal mean, and how
    often a row's largest logit is its own positive."""
    size = logits.shape[0]
    off_diagonal = (1.0 - jnp.eye(size)) / (size * (size - 1))
    return {
        "positive_logit": jnp.diagonal(logits).mean(),
        "random_logit": (logits * off_diagonal).sum(),
        "categorical_accuracy": (jnp.argmax(logits, axis=1) == jnp.arange(size)).mean(),
    }


def contrastive_actor_loss(log_prob, logit, alpha):
    """mean(alpha * log pi(a | s, g) - f(s, a, g)) for a ~ pi: contrastive_rl's `actor_loss`
    (learning.py: `alpha * log_prob - jnp.diag(q_action)`) and JaxGCRL's (losses.py:
    `exp(log_alpha) * log_prob - qf_pi`). alpha is held fixed here; the logit is not squashed."""
    return jnp.mean(jax.lax.stop_gradient(alpha) * log_prob - logit)


def temperature_loss(log_alpha, log_prob, target_entropy):
    """SAC's temperature loss (Haarnoja et al. 2018, eq. 18) as both codes write it:
    alpha * mean(stop_grad(-log pi - target_entropy)); alpha grows while the entropy is below target."""
    return jnp.exp(log_alpha) * jnp.mean(jax.lax.stop_gradient(-log_prob - target_entropy))


# THE LEARNER: the losses above on the networks' outputs, and one gradient step of all of them.


def classifier_logits(critic_net, critic, obs, action, goal, goal_slice, energy_kind):
    """Logits of C(s, a, g) for each (s, a) with its own g: [2, n] from the twin classifiers (which
    see s with g as its commanded goal), or [1, n], the energy of phi(s, a) and psi(g), from a
    `ContrastiveCritic`."""
    if isinstance(critic_net, ContrastiveCritic):
        phi, psi = critic_net.apply(critic, without_goal(obs, goal_slice), action, goal)
        return energy(phi, psi, energy_kind)[None]
    return critic_net.apply(critic, with_goal(obs, goal, goal_slice), action)


def sample_action(actor_net, actor, obs, key):
    """a ~ pi(. | s, g) in [-1, 1] and its log-probability, for the goal g that obs commands."""
    return tanh_gaussian_sample(*actor_net.apply(actor, obs), key)


def critic_loss(critic, target_critic, actor, batch, future_goals, random_goals, key, *, nets, config, spec):
    """The classifier's loss on a relabelled batch, by `config.estimator`, and its metrics."""
    obs, action, next_obs, gamma = batch["obs"], batch["action"], batch["next_obs"], config.discount
    if config.estimator == "contrastive":
        # Every state-action against every future goal of the batch; its own future is the positive.
        phi, psi = nets.critic.apply(critic, without_goal(obs, spec.goal_slice), action, future_goals)
        all_logits = energy(phi[:, None], psi[None], config.energy)
        loss = contrastive_critic_loss(all_logits, config.contrastive_loss, config.logsumexp_penalty)
        return loss, {"critic_loss": loss, **pairwise_metrics(all_logits)}

    def logits(params, obs, action, goal):
        return classifier_logits(nets.critic, params, obs, action, goal, spec.goal_slice, config.energy)

    # Each term applies the classifier itself (XLA merges the repeats): one shared application would sum
    # the hybrid's gradients in another order, and change its results in the last bits.
    weight, losses = jnp.float32(0.0), {}
    if config.estimator in ("td", "hybrid"):
        next_goal_logits = logits(critic, obs, action, achieved_goal(next_obs, spec.achieved_slice))
        random_logits = logits(critic, obs, action, random_goals)
        next_action, _ = sample_action(nets.actor, actor, with_goal(next_obs, random_goals, spec.goal_slice), key)
        weight = td_weight(logits(target_critic, next_obs, next_action, random_goals), gamma)
        losses["td"] = td_critic_loss(next_goal_logits, random_logits, weight, gamma)
    if config.estimator in ("mc", "hybrid"):
        future_logits = logits(critic, obs, action, future_goals)
        losses["mc"] = mc_critic_loss(future_logits, logits(critic, obs, action, random_goals))
    if config.estimator == "hybrid":
        loss = config.mc_weight * losses["mc"] + (1.0 - config.mc_weight) * losses["td"]
    else:
        loss = losses[config.estimator]
    return loss, {
        "critic_loss": loss,
        "td_weight": weight.mean(),
        "positive_logit": logits(critic, obs, action, future_goals).mean(),
        "random_logit": logits(critic, obs, action, random_goals).mean(),
    }


def actor_loss(actor, critic, obs, goals, key, alpha, *, nets, config, spec):
    """The actor's loss for reaching `goals` from obs's states, and the log-probabilities of its actions."""
    action, log_prob = sample_action(nets.actor, actor, with_goal(obs, goals, spec.goal_slice), key)
    logit = classifier_logits(nets.critic, critic, obs, action, goals, spec.goal_slice, config.energy).min(axis=0)
    if config.estimator == "contrastive":
        return contrastive_actor_loss(log_prob, logit, alpha), log_prob
    return classifier_actor_loss(logit, config.log_actor_objective), log_prob


def gradient_step(state, key, *, nets, config, spec):
    """One gradient step of classifier, actor (and temperature) on a relabelled batch, then the targets'."""
    sample_key, permute_key, target_key, actor_key, _ = jax.random.split(key, 5)
    optimizer, learned = adam(), dict(nets=nets, config=config, spec=spec)  # the rate is in the states
    # RELABEL: future goals of each transition's own episode, random goals of the batch.
    batch, future = replay.sample_with_future(
        state.buffer, sample_key, config.batch_size, config.discount, spec.episode_length
    )
    future_goals, random_goals = relabelled_goals(batch, future, permute_key, spec.achieved_slice)
    # TRAIN THE CLASSIFIER
    critic, critic_opt, _, metrics = gradient_update(
        functools.partial(critic_loss, **learned), state.critic, state.critic_opt, optimizer,
        state.target_critic, state.actor, batch, future_goals, random_goals, target_key,
    )  # fmt: skip
    # UPDATE POLICY: the action that makes the commanded goal most likely.
    learn_alpha = config.estimator == "contrastive" and config.entropy_coefficient is None
    alpha = jnp.exp(state.log_alpha) if learn_alpha else jnp.float32(config.entropy_coefficient or 0.0)
    actor, actor_opt, pi_loss, log_prob = gradient_update(
        functools.partial(actor_loss, **learned), state.actor, state.actor_opt, optimizer,
        critic, batch["obs"], actor_goals(future_goals, random_goals), actor_key, alpha,
    )  # fmt: skip
    target_critic = optax.incremental_update(critic, state.target_critic, config.tau)
    state = state._replace(
        critic=critic, target_critic=target_critic, actor=actor, critic_opt=critic_opt, actor_opt=actor_opt
    )
    metrics = dict(metrics, actor_loss=pi_loss, entropy=-log_prob.mean())
    if learn_alpha:
        # TEMPERATURE: alpha steers the policy's entropy to the target (lr as the others', as both codes).
        target_entropy = config.target_entropy_per_dim * spec.action_size
        log_alpha, alpha_opt, _, _ = gradient_update(
            lambda log_alpha: (temperature_loss(log_alpha, log_prob, target_entropy), None),
            state.log_alpha, state.alpha_opt, optimizer,
        )  # fmt: skip
        state = state._replace(log_alpha=log_alpha, alpha_opt=alpha_opt)
        metrics["alpha"] = alpha
    return state, metrics


# TRAINING PROGRAM: what make_train builds once, the run's start and its steps.


def check_task(spec) -> None:
    """A ConfigError for a task that commands no goal: C-learning learns to reach commanded goals."""
    if spec.goal_slice is None:
        goal_tasks = [n for n in envs.list_envs() if "maze" in n or "_goal" in n]
        raise ConfigError(
            f"C-learning needs a goal task, and {spec.name} is not one; goal tasks: {', '.join(goal_tasks)}"
        )


class Components(NamedTuple):
    """What make_train builds once from the static config and the task, for init, update and evaluate."""

    task: Setup
    schedule: Schedule
    nets: Networks
    capacity: int
    """Steps of each environment the replay keeps."""
    num_envs: int


def build_components(config: Config, task: Setup) -> Components:
    """The schedule, the networks (by `config.estimator`) and the replay's size of the run `config` on `task`."""
    schedule = make_schedule(config.total_steps, config.initial_steps, config.steps_per_update, config.eval_every)
    steps_per_env = schedule.total_steps // config.num_envs
    capacity = min(config.buffer_capacity or steps_per_env, steps_per_env)
    contrastive = config.estimator == "contrastive"
    nets = Networks(
        GaussianHead(config.hidden_sizes, task.spec.action_size, "relu"),
        ContrastiveCritic(config.hidden_sizes, config.repr_size) if contrastive else TwinQ(config.hidden_sizes),
    )
    return Components(task, schedule, nets, capacity, config.num_envs)


def env_step(task: Setup, state: CState, action) -> CState:
    """One step of the environments on actions in [-1, 1], into the replay with each one's episode number."""
    next_env_state = task.env.step(state.env_state, scale_action(action, task.low, task.high))
    done = next_env_state.done
    episode_return, last_return = track_returns(
        state.episode_return, state.last_episode_return, next_env_state.reward, done
    )
    return state._replace(
        env_state=next_env_state,
        buffer=replay.add_step(state.buffer, transition(state.env_state, action, next_env_state), state.episode),
        episode=state.episode + done.astype(jnp.int32),
        episode_return=episode_return,
        last_episode_return=last_return,
    )


def initial_state(key, config: Config, parts: Components) -> CState:
    """The state a run starts from: fresh environments, networks and optimisers, the targets a copy of
    the classifier, and a replay filled by `initial_steps` uniformly random steps (EXPLORE)."""
    task, nets, num_envs = parts.task, parts.nets, parts.num_envs
    spec, action_size = task.spec, task.spec.action_size
    env_key, actor_key, critic_key, explore_key, key = jax.random.split(key, 5)
    env_state = task.env.reset(env_key)
    obs, action = jnp.zeros((1, spec.observation_size)), jnp.zeros((1, action_size))
    if isinstance(nets.critic, ContrastiveCritic):
        goal = achieved_goal(obs, spec.achieved_slice)
        critic = nets.critic.init(critic_key, without_goal(obs, spec.goal_slice), action, goal)
    else:
        critic = nets.critic.init(critic_key, obs, action)
    actor = nets.actor.init(actor_key, obs)
    state = CState(
        env_state=env_state,
        buffer=replay.init_trajectories(transition_example(env_state.obs[0], action_size), parts.capacity, num_envs),
        episode=jnp.zeros(num_envs, jnp.int32),
        actor=actor,
        critic=critic,
        target_critic=critic,
        actor_opt=adam(config.lr).init(actor),
        critic_opt=adam(config.lr).init(critic),
        log_alpha=jnp.float32(0.0),
        alpha_opt=adam(config.lr).init(jnp.float32(0.0)),
        key=key,
        episode_return=jnp.zeros(num_envs),
        last_episode_return=jnp.float32(0.0),
    )
    num_steps = config.initial_steps // num_envs
    return explore_uniformly(functools.partial(env_step, task), state, explore_key, num_steps, (num_envs, action_size))


def vector_step(state: CState, key, config: Config, parts: Components):
    """ACT in every environment, then LEARN: `updates_per_step` gradient steps. Their mean metrics."""
    act_key, learn_key, _ = jax.random.split(key, 3)
    nets, spec = parts.nets, parts.task.spec
    state = env_step(parts.task, state, sample_action(nets.actor, state.actor, state.env_state.obs, act_key)[0])
    state, metrics = jax.lax.scan(
        lambda s, k: gradient_step(s, k, nets=nets, config=config, spec=spec),
        state,
        jax.random.split(learn_key, config.updates_per_step),
    )
    return state, jax.tree_util.tree_map(jnp.mean, metrics)


def make_train(config: Config, env=None) -> Trainer:
    """The training program on `config.env`, or on `env`: a user's own `(environment, EnvSpec)` goal task."""
    config.validate()
    task = setup(config, env, algorithm="C-learning")
    check_task(task.spec)
    parts = build_components(config, task)
    spec, nets, num_envs = task.spec, parts.nets, parts.num_envs

    def init(key, config):
        return initial_state(key, config, parts)

    def update(state: CState, config, update_index):
        """steps_per_update environment steps, each vector step followed by updates_per_step gradient steps."""
        key, steps_key = jax.random.split(state.key)
        state, metrics = jax.lax.scan(
            lambda s, k: vector_step(s, k, config, parts),
            state._replace(key=key),
            jax.random.split(steps_key, config.steps_per_update // num_envs),
        )
        metrics = jax.tree_util.tree_map(jnp.mean, metrics)
        metrics["train_episode_return"] = state.last_episode_return
        metrics["train_success"] = state.env_state.metrics["success"].mean()
        return state, metrics

    def evaluate(state: CState, key, config):
        """Success rate and final distance of the deterministic policy on fresh episodes."""

        def greedy(carry, obs, step_key):
            mean, _ = nets.actor.apply(state.actor, obs)
            return scale_action(tanh_gaussian_mode(mean), task.low, task.high), carry

        return evaluate_episodes(task.eval_env, key, config.eval_episodes, spec.episode_length, greedy)

    return Trainer(
        init=init,
        update=update,
        evaluate=evaluate,
        schedule=parts.schedule,
        spec=spec,
        fresh_episodes=restart_episodes("env_state", "episode_return", episode_counter="episode"),
    )


# SETTINGS: the Config and its presets


@dataclasses.dataclass(frozen=True)
class Config(RunConfig):
    """C-learning settings; the run fields (task, budget, environments, evaluation) are RunConfig's."""

    env: str = "point_maze_open"
    """Goal task (see `mbrlax.envs.list_envs()`)."""
    total_steps: int = 60_000
    """Environment steps in all, over all parallel environments, random exploration included."""
    num_envs: int = 32
    """Parallel environments."""
    initial_steps: int = setting(3200, positive=True)
    """Uniformly random steps before learning starts (the paper: 10,000)."""
    eval_every: int = 9600
    """Environment steps between evaluations."""
    eval_episodes: int = 50
    """Evaluation episodes of the deterministic policy, run in parallel."""
    # Learning
    steps_per_update: int = setting(1600, positive=True)
    """Environment steps per jitted update of the training program (progress and logging granularity)."""
    updates_per_step: int = setting(4, positive=True)
    """Gradient steps per vector step of all environments."""
    batch_size: int = setting(256, positive=True)
    """Transitions per gradient step."""
    hidden_sizes: tuple[int, ...] = (128, 128)
    """Hidden widths of actor and critics (the paper: 256, 256)."""
    lr: float = setting(3e-4, sweepable=True)
    """Adam learning rate of actor and critic."""
    tau: float = setting(5e-3, sweepable=True, within="(0, 1]")
    """Polyak rate of the target classifiers."""
    discount: float = setting(0.99, sweepable=True, within="(0, 1)")
    """gamma: the horizon of the future the classifier predicts."""
    buffer_capacity: int | None = None
    """Steps of each environment kept (default: all of the run's)."""
    # C-learning
    estimator: Literal["td", "mc", "hybrid", "contrastive"] = setting(
        "td", choices=("td", "mc", "hybrid", "contrastive")
    )
    """How the classifier learns: TD (recursive), MC (future states), their mix, or contrastive (NCE)."""
    mc_weight: float = setting(0.5, sweepable=True, within="[0, 1]")
    """hybrid: weight of the MC loss; the TD loss gets the rest."""
    log_actor_objective: bool = False
    """td, mc, hybrid: the actor maximises log C instead of C."""
    # Contrastive RL
    contrastive_loss: Literal["nce", "infonce", "infonce_backward"] = setting(
        "nce", choices=("nce", "infonce", "infonce_backward")
    )
    """contrastive: the critic's loss, sigmoid (nce) or softmax (infonce, infonce_backward) cross-entropy."""
    energy: Literal["dot", "distance"] = setting("dot", choices=("dot", "distance"))
    """contrastive: the logit of (s, a, g): phi . psi (dot) or -||phi - psi|| (distance, JaxGCRL's "norm")."""
    logsumexp_penalty: float = setting(0.0, sweepable=True, within="[0, inf)")
    """contrastive: weight of mean(logsumexp over each row's logits)^2 in the critic loss (JaxGCRL: 0.1)."""
    entropy_coefficient: float | None = setting(None, within="[0, inf)")
    """contrastive: a fixed alpha of the actor's alpha * log pi term; None learns alpha."""
    target_entropy_per_dim: float = setting(0.0, sweepable=True)
    """contrastive: the entropy alpha steers the actor to, per action dimension."""
    repr_size: int = setting(64, positive=True)
    """contrastive: size of the phi and psi representations (64 in contrastive_rl and JaxGCRL)."""

    def validate(self) -> None:
        super().validate()
        for name in ("initial_steps", "steps_per_update"):
            if getattr(self, name) % self.num_envs:
                raise ConfigError(f"{name} ({getattr(self, name)}) must divide by num_envs ({self.num_envs})")
        if self.batch_size % 2:
            raise ConfigError(f"batch_size must be even (half positives, half negatives), got {self.batch_size}")


# Presets, as data: presets/clearning.toml (a task's settings, and variants applied on top).
TASKS, VARIANTS = presets.load(__file__)
PRESETS: dict[str, dict[str, Any]] = {**TASKS, **VARIANTS}


def main(argv=None) -> int:
    return runner.main("clearning", Config, PRESETS, make_train, argv)


if __name__ == "__main__":
    sys.exit(main())
