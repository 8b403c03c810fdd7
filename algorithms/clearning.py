"""C-learning: goal-conditioned RL as classifying the future (Eysenbach, Salakhutdinov, Levine,
"C-Learning: Learning to Achieve Goals via Recursive Classification", ICLR 2021), with the
contrastive form of the same family (Eysenbach et al., "Contrastive Learning as Goal-Conditioned
Reinforcement Learning", NeurIPS 2022) as an option.

No reward is used. A classifier C(s, a, g) learns to tell goals g drawn from the discounted future
of (s, a) under the policy from goals drawn at random; at its optimum C / (1 - C) = p^pi(future =
g | s, a) / p(g), which is the Q-function of the reward (1 - gamma) p(s_{t+1} = g). The policy
picks actions that make the commanded goal most likely: it maximises C (or log C).

- TD C-learning (`--estimator td`, the default, off-policy): for each transition (s, a, s') the
  next state's achieved goal is a positive with weight (1 - gamma); a random goal g from the batch
  is a negative, and also a positive with weight gamma w, where w = C'/(1 - C') at (s', a' ~ pi(s',
  g), g) from the smaller of two target classifiers, held fixed and clipped at 1 / (1 - gamma):

      loss = -(1 - gamma) log C(s, a, s') - gamma w log C(s, a, g) - log(1 - C(s, a, g))

- MC C-learning (`mc`): positives are achieved goals at offsets k ~ Geom(1 - gamma) later in the
  same episode, negatives random goals, plain cross-entropy. `hybrid` mixes the two losses with
  `mc_weight`.
- Contrastive (`contrastive`): the critic is an energy f(phi(s, a), psi(g)) over the batch x batch
  pairs, future goals on the diagonal as positives. By default the energy is the dot product and the
  loss the sigmoid cross-entropy against the identity (NCE), as contrastive_rl's default
  (google-research/google-research, contrastive_rl/contrastive/learning.py, `critic_loss`);
  `--contrastive-loss infonce` is the softmax cross-entropy of each row (forward InfoNCE; their
  `use_cpc`), `infonce_backward` that of each column, `--energy distance` the energy
  -||phi - psi||, and `--logsumexp-penalty c` adds c * mean(logsumexp_row^2). JaxGCRL's critic
  (MichalBortkiewicz/JaxGCRL, jaxgcrl/agents/crl/losses.py) is InfoNCE with the distance energy
  (its `energy_fn="norm"`) and c = 0.1.
  The actor follows contrastive_rl's (learning.py, `actor_loss`), not the C-learning actor: it
  minimises alpha log pi(a | s, g) - f(phi(s, a), psi(g)), the energy itself rather than a
  sigmoid of it (which vanishes when a positive competes with 255 negatives). alpha is learned
  against a target entropy of `target_entropy_per_dim` x |A| (SAC's temperature loss; 0 in
  contrastive_rl's config.py, -0.5 per dimension in JaxGCRL's crl.py), or fixed with
  `--entropy-coefficient` (contrastive_rl's lp_contrastive.py fixes it at 0 on state-based tasks and
  learns it on image-based ones).

Goals are relabelled inside trajectories only: a future goal comes from the same environment's same
episode, at most the episode's last next-observation. Episode ends are not bootstrapped through
specially: the TD target reads the next state's classifier as the paper does.

What this file does differently from the papers, and why:
- The C-learning actors (td, mc, hybrid) are SAC's tanh-Gaussian without an entropy bonus, as
  c_learning's `actor_loss` (c_learning/c_learning_agent.py: -C, or -log C with `ce_loss`); its
  log-std is learned and shrinks as the classifier sharpens. Every actor's goals are half future
  goals of the batch's own trajectories, half random goals (contrastive_rl's `random_goals=0.5`
  feeds both halves for every state; JaxGCRL uses future goals only).
- The contrastive critic has no twin and no target network, as in both codes; its networks are
  ReLU MLPs of `hidden_sizes` (JaxGCRL: 2 x 256 swish layers).
- Many environments run in parallel (`num_envs`), with `updates_per_step` gradient steps per vector
  step, as JAX implementations on Brax do; the paper runs one environment at one update per step.

Reproduce the point-maze row of benchmarks/RESULTS.md:  python algorithms/clearning.py --env point_maze_open
JaxGCRL's Ant (their figure: 0.64 success after 10 M steps), its task, scale and critic:
    python algorithms/clearning.py --env brax/ant_goal_jaxgcrl --preset jaxgcrl
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, ClassVar, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mbrlax import buffer as replay
from mbrlax import envs, runner
from mbrlax.networks import MLP, GaussianHead, TwinQ, tanh_gaussian_mode, tanh_gaussian_sample
from mbrlax.training import (
    ConfigError,
    Trainer,
    adam,
    check_fields,
    evaluate_episodes,
    explore_uniformly,
    make_env,
    make_schedule,
    require_continuous_vector_task,
    require_positive,
    scale_action,
    track_returns,
    transition,
    transition_example,
)


@dataclasses.dataclass(frozen=True)
class Config:
    """C-learning settings. Traced (sweepable) fields: lr, tau, discount, mc_weight,
    logsumexp_penalty, target_entropy_per_dim."""

    SWEEPABLE: ClassVar[tuple[str, ...]] = (
        "lr",
        "tau",
        "discount",
        "mc_weight",
        "logsumexp_penalty",
        "target_entropy_per_dim",
    )

    # Run
    env: str = "point_maze_open"
    """Goal task (see `mbrlax.envs.list_envs()`: point_maze_open, point_maze_u, brax/reacher_goal, brax/ant_goal,
    brax/ant_goal_jaxgcrl)."""
    total_steps: int = 60_000
    """Environment steps in all, over all parallel environments, random exploration included."""
    num_envs: int = 32
    """Parallel environments."""
    episode_length: int | None = None
    """Steps per episode (default: the task's own)."""
    backend: str | None = None
    """Brax physics backend for brax/* tasks (default: the task's own)."""
    initial_steps: int = 3200
    """Uniformly random steps before learning starts (the paper: 10,000)."""
    steps_per_update: int = 1600
    """Environment steps per jitted update of the training program (progress and logging granularity)."""
    eval_every: int = 9600
    """Environment steps between evaluations."""
    eval_episodes: int = 50
    """Evaluation episodes of the deterministic policy, run in parallel."""
    # C-learning
    estimator: Literal["td", "mc", "hybrid", "contrastive"] = "td"
    """How the classifier learns: TD (recursive), MC (future states), their mix, or contrastive (NCE)."""
    mc_weight: float = 0.5
    """hybrid: weight of the MC loss; the TD loss gets the rest."""
    log_actor_objective: bool = False
    """td, mc, hybrid: the actor maximises log C instead of C."""
    contrastive_loss: Literal["nce", "infonce", "infonce_backward"] = "nce"
    """contrastive: sigmoid cross-entropy against the identity (nce), softmax cross-entropy over each
    row's goals (infonce, JaxGCRL's default "fwd_infonce") or over each column's state-actions
    (infonce_backward, JaxGCRL's "bwd_infonce")."""
    energy: Literal["dot", "distance"] = "dot"
    """contrastive: the logit of (s, a, g): phi . psi (dot) or -||phi - psi|| (distance, JaxGCRL's "norm")."""
    logsumexp_penalty: float = 0.0
    """contrastive: weight of mean(logsumexp over each row's logits)^2 in the critic loss (JaxGCRL: 0.1)."""
    entropy_coefficient: float | None = None
    """contrastive: a fixed alpha of the actor's alpha * log pi term; None learns alpha."""
    target_entropy_per_dim: float = 0.0
    """contrastive: the entropy alpha steers the actor to, per action dimension (contrastive_rl 0, JaxGCRL -0.5)."""
    updates_per_step: int = 4
    """Gradient steps per vector step of all environments."""
    batch_size: int = 256
    """Transitions per gradient step."""
    hidden_sizes: tuple[int, ...] = (128, 128)
    """Hidden widths of actor and critics (the paper: 256, 256)."""
    repr_size: int = 64
    """contrastive: size of the phi and psi representations (64 in contrastive_rl and JaxGCRL)."""
    lr: float = 3e-4
    """Adam learning rate of actor and critic."""
    tau: float = 5e-3
    """Polyak rate of the target classifiers."""
    discount: float = 0.99
    """gamma: the horizon of the future the classifier predicts."""
    buffer_capacity: int | None = None
    """Steps of each environment kept (default: all of the run's)."""

    def validate(self) -> None:
        check_fields(self)
        require_positive(
            self,
            (
                "total_steps",
                "num_envs",
                "initial_steps",
                "steps_per_update",
                "eval_every",
                "eval_episodes",
                "updates_per_step",
                "batch_size",
                "repr_size",
            ),
        )
        for name in ("initial_steps", "steps_per_update"):
            if getattr(self, name) % self.num_envs:
                raise ConfigError(f"{name} ({getattr(self, name)}) must divide by num_envs ({self.num_envs})")
        if not 0.0 < self.discount < 1.0:
            raise ConfigError(f"discount must be in (0, 1), got {self.discount}")
        if not 0.0 <= self.mc_weight <= 1.0:
            raise ConfigError(f"mc_weight must be in [0, 1], got {self.mc_weight}")
        if not 0.0 < self.tau <= 1.0:
            raise ConfigError(f"tau must be in (0, 1], got {self.tau}")
        if self.entropy_coefficient is not None and self.entropy_coefficient < 0:
            raise ConfigError(f"entropy_coefficient must be >= 0 or None, got {self.entropy_coefficient}")
        if self.logsumexp_penalty < 0:
            raise ConfigError(f"logsumexp_penalty must be >= 0, got {self.logsumexp_penalty}")
        if self.batch_size % 2:
            raise ConfigError(f"batch_size must be even (half positives, half negatives), got {self.batch_size}")


PRESETS: dict[str, dict[str, Any]] = {
    "point_maze_open": dict(env="point_maze_open"),
    "point_maze_u": dict(env="point_maze_u", total_steps=200_000, eval_every=19_200),
    "brax/reacher_goal": dict(
        env="brax/reacher_goal",
        total_steps=1_000_000,
        num_envs=256,
        initial_steps=25_600,
        steps_per_update=25_600,
        eval_every=102_400,
        hidden_sizes=(256, 256),
        updates_per_step=8,
    ),
    "brax/ant_goal": dict(
        env="brax/ant_goal",
        total_steps=10_000_000,
        num_envs=256,
        initial_steps=25_600,
        steps_per_update=51_200,
        eval_every=512_000,
        hidden_sizes=(256, 256),
        updates_per_step=8,
        episode_length=1000,
    ),
    # JaxGCRL's scale (MichalBortkiewicz/JaxGCRL, scripts/train.sh and the CRL defaults in
    # jaxgcrl/agents/crl/crl.py): 512 environments, 1000 prefill steps each, a buffer of 10,000 steps
    # per environment, and about 32 gradient steps of 256 per vector step (their 512 x 999 / 256
    # updates per 512 x 62 environment steps).
    "brax/ant_goal_jaxgcrl": dict(
        env="brax/ant_goal_jaxgcrl",
        total_steps=10_000_000,
        num_envs=512,
        initial_steps=512_000,
        steps_per_update=51_200,
        eval_every=204_800,
        hidden_sizes=(256, 256),
        updates_per_step=32,
        buffer_capacity=10_000,
    ),
    # The method of JaxGCRL's CRL (jaxgcrl/agents/crl/crl.py defaults, losses.py): forward InfoNCE,
    # energy -||phi - psi||, logsumexp^2 penalty 0.1, target entropy -0.5 |A|. Its scripts/train.sh
    # runs the backward InfoNCE instead (--contrastive-loss infonce_backward).
    "jaxgcrl": dict(
        estimator="contrastive",
        contrastive_loss="infonce",
        energy="distance",
        logsumexp_penalty=0.1,
        target_entropy_per_dim=-0.5,
    ),
}


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


def contrastive_actor_loss(log_prob, logit, alpha):
    """mean(alpha * log pi(a | s, g) - f(s, a, g)) for a ~ pi: contrastive_rl's `actor_loss`
    (learning.py: `alpha * log_prob - jnp.diag(q_action)`) and JaxGCRL's (losses.py:
    `exp(log_alpha) * log_prob - qf_pi`). alpha is held fixed here; the logit is not squashed."""
    return jnp.mean(jax.lax.stop_gradient(alpha) * log_prob - logit)


def temperature_loss(log_alpha, log_prob, target_entropy):
    """SAC's temperature loss (Haarnoja et al. 2018, eq. 18) as both codes write it:
    alpha * mean(stop_grad(-log pi - target_entropy)); alpha grows while the entropy is below target."""
    return jnp.exp(log_alpha) * jnp.mean(jax.lax.stop_gradient(-log_prob - target_entropy))


def make_train(config: Config) -> Trainer:
    config.validate()
    try:
        env, spec = make_env(config, num_envs=config.num_envs, auto_reset=True)
        eval_env, _ = make_env(config, num_envs=config.eval_episodes)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if spec.goal_slice is None:
        goal_tasks = [n for n in envs.list_envs() if "maze" in n or "_goal" in n]
        raise ConfigError(
            f"C-learning needs a goal task, and {config.env} is not one; goal tasks: {', '.join(goal_tasks)}"
        )
    require_continuous_vector_task(spec, "C-learning")

    obs_size, action_size = spec.observation_size, spec.action_size
    low, high = jnp.asarray(spec.action_low), jnp.asarray(spec.action_high)
    num_envs, B = config.num_envs, config.batch_size
    g0, g1 = spec.goal_slice
    a0, a1 = spec.achieved_slice
    schedule = make_schedule(config.total_steps, config.initial_steps, config.steps_per_update, config.eval_every)
    steps_per_env = schedule.total_steps // num_envs
    capacity = min(config.buffer_capacity or steps_per_env, steps_per_env)
    contrastive = config.estimator == "contrastive"
    learn_alpha = contrastive and config.entropy_coefficient is None
    actor_net = GaussianHead(config.hidden_sizes, action_size, "relu")
    critic_net = ContrastiveCritic(config.hidden_sizes, config.repr_size) if contrastive else TwinQ(config.hidden_sizes)
    state_mask = jnp.ones(obs_size, bool).at[g0:g1].set(False)

    def with_goal(obs, goal):
        """The observation with its commanded goal replaced: what a relabelled transition sees."""
        return obs.at[..., g0:g1].set(goal)

    def achieved(obs):
        return obs[..., a0:a1]

    def logits(critic, obs, action, goal):
        """Classifier logits for (s, a, g): [2, n] for the twin classifiers; for the contrastive
        critic [1, n], the energy of each (s, a) with its own g."""
        if contrastive:
            phi, psi = critic_net.apply(critic, obs[..., state_mask], action, goal)
            return energy(phi, psi, config.energy)[None]
        return critic_net.apply(critic, with_goal(obs, goal), action)

    # CLASSIFIER LOSS

    def critic_loss(critic, target_critic, actor, batch, future, random_goals, key, hparams):
        gamma = hparams["discount"]
        obs, action, next_obs = batch["obs"], batch["action"], batch["next_obs"]
        future_goals = achieved(future["next_obs"])

        if contrastive:
            # Every state-action against every future goal; its own future is the positive.
            phi, psi = critic_net.apply(critic, obs[..., state_mask], action, future_goals)
            all_logits = energy(phi[:, None], psi[None], config.energy)
            loss = contrastive_critic_loss(all_logits, config.contrastive_loss, hparams["logsumexp_penalty"])
            off_diagonal = (1.0 - jnp.eye(B)) / (B * (B - 1))
            return loss, {
                "critic_loss": loss,
                "positive_logit": jnp.diagonal(all_logits).mean(),
                "random_logit": (all_logits * off_diagonal).sum(),
                "categorical_accuracy": (jnp.argmax(all_logits, axis=1) == jnp.arange(B)).mean(),
            }

        def mc_loss():
            positive = logits(critic, obs, action, future_goals)
            negative = logits(critic, obs, action, random_goals)
            return -jax.nn.log_sigmoid(positive).mean(1).sum() - jax.nn.log_sigmoid(-negative).mean(1).sum()

        def td_loss():
            positive = logits(critic, obs, action, achieved(next_obs))
            negative = logits(critic, obs, action, random_goals)
            # w = C'/(1 - C') = exp(logit') at the next state, for the same random goal.
            mean, log_std = actor_net.apply(actor, with_goal(next_obs, random_goals))
            next_action, _ = tanh_gaussian_sample(mean, log_std, key)
            next_logit = logits(target_critic, next_obs, next_action, random_goals).min(axis=0)
            weight = jax.lax.stop_gradient(jnp.minimum(jnp.exp(next_logit), 1.0 / (1.0 - gamma)))
            positive_term = -(1.0 - gamma) * jax.nn.log_sigmoid(positive)
            negative_term = -gamma * weight * jax.nn.log_sigmoid(negative) - jax.nn.log_sigmoid(-negative)
            return positive_term.mean(1).sum() + negative_term.mean(1).sum(), weight.mean()

        if config.estimator == "mc":
            loss, weight = mc_loss(), jnp.float32(0.0)
        elif config.estimator == "td":
            loss, weight = td_loss()
        else:  # hybrid
            td, weight = td_loss()
            loss = hparams["mc_weight"] * mc_loss() + (1.0 - hparams["mc_weight"]) * td
        metrics = {
            "critic_loss": loss,
            "td_weight": weight,
            "positive_logit": logits(critic, obs, action, future_goals).mean(),
            "random_logit": logits(critic, obs, action, random_goals).mean(),
        }
        return loss, metrics

    # POLICY: the action that makes the commanded goal most likely.

    def actor_loss(actor, critic, obs, goals, key, alpha):
        mean, log_std = actor_net.apply(actor, with_goal(obs, goals))
        action, log_prob = tanh_gaussian_sample(mean, log_std, key)
        logit = logits(critic, obs, action, goals).min(axis=0)
        if contrastive:
            return contrastive_actor_loss(log_prob, logit, alpha), log_prob
        objective = jax.nn.log_sigmoid(logit) if config.log_actor_objective else jax.nn.sigmoid(logit)
        return -objective.mean(), log_prob

    def gradient_step(state: CState, key, hparams):
        sample_key, perm_key, target_key, actor_key, mix_key = jax.random.split(key, 5)
        batch, future = replay.sample_with_future(state.buffer, sample_key, B, hparams["discount"], spec.episode_length)
        # Random goals: achieved goals of other transitions of the batch.
        random_goals = achieved(batch["next_obs"])[jax.random.permutation(perm_key, B)]
        (loss, metrics), grads = jax.value_and_grad(critic_loss, has_aux=True)(
            state.critic, state.target_critic, state.actor, batch, future, random_goals, target_key, hparams
        )
        updates, critic_opt = adam(hparams["lr"]).update(grads, state.critic_opt)
        critic = optax.apply_updates(state.critic, updates)

        half = jnp.arange(B) < B // 2
        goals = jnp.where(half[:, None], achieved(future["next_obs"]), random_goals)
        alpha = jnp.exp(state.log_alpha) if learn_alpha else jnp.float32(config.entropy_coefficient or 0.0)
        (pi_loss, log_prob), grads = jax.value_and_grad(actor_loss, has_aux=True)(
            state.actor, critic, batch["obs"], goals, actor_key, alpha
        )
        updates, actor_opt = adam(hparams["lr"]).update(grads, state.actor_opt)
        actor = optax.apply_updates(state.actor, updates)
        target_critic = optax.incremental_update(critic, state.target_critic, hparams["tau"])
        state = state._replace(
            critic=critic, target_critic=target_critic, actor=actor, critic_opt=critic_opt, actor_opt=actor_opt
        )
        metrics = dict(metrics, actor_loss=pi_loss, entropy=-log_prob.mean())
        if learn_alpha:
            # TEMPERATURE: alpha steers the policy's entropy to the target (lr as the others', as both codes).
            target_entropy = hparams["target_entropy_per_dim"] * action_size
            grad = jax.grad(temperature_loss)(state.log_alpha, log_prob, target_entropy)
            updates, alpha_opt = adam(hparams["lr"]).update(grad, state.alpha_opt)
            state = state._replace(log_alpha=optax.apply_updates(state.log_alpha, updates), alpha_opt=alpha_opt)
            metrics["alpha"] = alpha
        return state, metrics

    # ACT in the real environments.

    def env_step(state: CState, action):
        next_env_state = env.step(state.env_state, scale_action(action, low, high))
        step = transition(state.env_state, action, next_env_state)
        buffer = replay.add_step(state.buffer, step, state.episode)
        episode_return, last_return = track_returns(
            state.episode_return, state.last_episode_return, next_env_state.reward, next_env_state.done
        )
        return state._replace(
            env_state=next_env_state,
            buffer=buffer,
            episode=state.episode + next_env_state.done.astype(jnp.int32),
            episode_return=episode_return,
            last_episode_return=last_return,
        )

    def init(key, hparams):
        env_key, actor_key, critic_key, explore_key, key = jax.random.split(key, 5)
        env_state = env.reset(env_key)
        example = transition_example(env_state.obs[0], action_size)
        obs, action = jnp.zeros((1, obs_size)), jnp.zeros((1, action_size))
        actor = actor_net.init(actor_key, obs)
        if contrastive:
            critic = critic_net.init(critic_key, obs[:, state_mask], action, obs[:, a0:a1])
        else:
            critic = critic_net.init(critic_key, obs, action)
        state = CState(
            env_state=env_state,
            buffer=replay.init_trajectories(example, capacity, num_envs),
            episode=jnp.zeros(num_envs, jnp.int32),
            actor=actor,
            critic=critic,
            target_critic=critic,
            actor_opt=adam(0.0).init(actor),
            critic_opt=adam(0.0).init(critic),
            log_alpha=jnp.float32(0.0),
            alpha_opt=adam(0.0).init(jnp.float32(0.0)),
            key=key,
            episode_return=jnp.zeros(num_envs),
            last_episode_return=jnp.float32(0.0),
        )

        # EXPLORE with uniformly random actions.
        return explore_uniformly(
            env_step, state, explore_key, config.initial_steps // num_envs, (num_envs, action_size)
        )

    def update(state: CState, hparams, update_index):
        """steps_per_update environment steps, each vector step followed by updates_per_step gradient steps."""
        del update_index

        def vector_step(state, step_key):
            act_key, learn_key, key = jax.random.split(step_key, 3)
            mean, log_std = actor_net.apply(state.actor, state.env_state.obs)
            action, _ = tanh_gaussian_sample(mean, log_std, act_key)
            state = env_step(state, action)
            state, metrics = jax.lax.scan(
                lambda s, k: gradient_step(s, k, hparams), state, jax.random.split(learn_key, config.updates_per_step)
            )
            return state, jax.tree_util.tree_map(jnp.mean, metrics)

        key, steps_key = jax.random.split(state.key)
        state, metrics = jax.lax.scan(
            vector_step, state._replace(key=key), jax.random.split(steps_key, config.steps_per_update // num_envs)
        )
        metrics = jax.tree_util.tree_map(jnp.mean, metrics)
        metrics["train_episode_return"] = state.last_episode_return
        metrics["train_success"] = state.env_state.metrics["success"].mean()
        return state, metrics

    def evaluate(state: CState, key, hparams):
        """Success rate and final distance of the deterministic policy on fresh episodes."""

        def greedy(carry, obs, step_key):
            mean, _ = actor_net.apply(state.actor, obs)
            return scale_action(tanh_gaussian_mode(mean), low, high), carry

        return evaluate_episodes(eval_env, key, config.eval_episodes, spec.episode_length, greedy)

    return Trainer(init=init, update=update, evaluate=evaluate, schedule=schedule)


def main(argv=None) -> int:
    return runner.main("clearning", Config, PRESETS, make_train, argv)


if __name__ == "__main__":
    sys.exit(main())
