"""The Dyna loop (Sutton 1991, as MBPO runs it): a model of the environment, refitted on all real
data every `model_train_freq` steps, feeds the agent imagined transitions from short branched
rollouts, and the agent (SAC) takes G gradient steps per real step on batches of real and imagined
data. MBPO is this loop as it stands; MAAC and SVG change the actor's loss, value expansion (STEVE,
MVE) the critic's, M2AC the model data, each through `DynaParts`.

    k(epoch) = floor(k_a + clip((epoch - epoch_a) / (epoch_b - epoch_a), 0, 1) * (k_b - k_a))

is the rollout length (`rollout_length`); SAC's batches take floor(real_ratio x batch) real rows and
the rest from the newest rollouts (`training_batch`). The settings every algorithm on the loop shares
are `DynaConfig`; the parts of the presets they start from (the MBPO paper's per-task settings and
the tiny ones) are data, in algorithms/presets/dyna.toml.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from mbrlax import buffer as replay
from mbrlax import ensemble, sac
from mbrlax.config import RunConfig, setting
from mbrlax.training import ConfigError, Trainer, make_schedule, restart_episodes, scale_action
from mbrlax.loops.episodes import (
    evaluate_episodes,
    explore_uniformly,
    setup,
    track_returns,
    transition,
    transition_example,
)


@dataclasses.dataclass(frozen=True)
class DynaConfig(ensemble.EnsembleConfig, sac.SACConfig, RunConfig):
    """The Dyna loop's settings (MBPO's): the model, its rollouts and SAC; the run's own (task, budget,
    environments, evaluation) are RunConfig's. Each algorithm on the loop extends it."""

    RENAMED = {"num_elites": "model_elites"}

    total_steps: int = 5000
    """Environment steps in all, over all parallel environments, random exploration included."""
    num_envs: int = 1
    """Parallel environments; each of their steps counts, and earns G policy updates."""
    initial_steps: int = setting(1000, positive=True)
    """Uniformly random steps before learning starts (the paper: 5000)."""
    sac_only: bool = False
    """SAC without the model: no refits, no rollouts, every batch real (the baseline at equal steps)."""
    # REFITS, ROLLOUTS AND UPDATES
    epoch_length: int = setting(1000, positive=True)
    """Environment steps per epoch, the unit of the rollout schedule."""
    model_train_freq: int = setting(250, positive=True)
    """Environment steps between model refits (each followed by a round of rollouts)."""
    rollout_batch_size: int = 10_000
    """Rollouts per refit, from states of the real buffer (the paper: 100,000; 0: none, all batches real)."""
    rollout_schedule: tuple[int, int, int, int] = (0, 2, 1, 5)
    """[epoch_a, epoch_b, k_a, k_b]: the rollout length rises linearly from k_a to k_b over these epochs."""
    model_retain_epochs: int = setting(1, positive=True)
    """Epochs of rollouts the model buffer keeps."""
    updates_per_step: int = setting(20, positive=True)
    """G: SAC gradient steps per environment step."""
    real_ratio: float = setting(0.05, sweepable=True, within="[0, 1]")
    """Share of real transitions in each SAC batch; the rest come from the model buffer."""
    # SAC (sac.SACConfig's fields; the loop's defaults)
    sac_hidden_sizes: tuple[int, ...] = (64, 64)
    buffer_capacity: int | None = None
    """Real replay capacity (default: total_steps, so nothing is forgotten)."""
    # Model (ensemble.EnsembleConfig's fields; the loop's defaults). Rollouts need its rewards.
    model_elites: int | None = 5
    model_hidden_sizes: tuple[int, ...] = (64, 64, 64)
    learn_reward: bool = True
    model_max_epochs: int = 25

    def validate(self) -> None:
        super().validate()
        if not self.learn_reward:
            raise ConfigError("learn_reward must stay True: the loop's imagined transitions take the model's rewards")
        if len(self.rollout_schedule) != 4:
            raise ConfigError(
                f"rollout_schedule takes four numbers [epoch_a, epoch_b, k_a, k_b], got {self.rollout_schedule}"
            )
        epoch_a, epoch_b, k_a, k_b = self.rollout_schedule
        if epoch_b < epoch_a:
            raise ConfigError(
                f"rollout_schedule goes backwards: epoch_b ({epoch_b}) must be at least epoch_a ({epoch_a}) >= 0"
            )
        if min(k_a, k_b) < 1:
            raise ConfigError(f"rollout_schedule lengths k_a and k_b must be at least 1, got {k_a} and {k_b}")
        if self.model_train_freq > self.epoch_length:
            raise ConfigError(
                f"model_train_freq ({self.model_train_freq}) must not exceed epoch_length ({self.epoch_length}): "
                "the model buffer keeps whole epochs of rollouts"
            )
        for name in ("model_train_freq", "initial_steps"):
            if getattr(self, name) % self.num_envs:
                raise ConfigError(f"{name} ({getattr(self, name)}) must divide by num_envs ({self.num_envs})")
        if self.buffer_capacity is not None and self.buffer_capacity < self.initial_steps:
            raise ConfigError(
                f"buffer_capacity ({self.buffer_capacity}) must hold the initial steps ({self.initial_steps})"
            )


class DynaState(NamedTuple):
    env_state: Any
    buffer: replay.ReplayBuffer
    """Real transitions."""
    model_buffer: replay.ReplayBuffer | None
    """Imagined transitions from branched rollouts (None with sac_only or no rollouts)."""
    model: ensemble.EnsembleState | None
    agent: sac.SACState
    key: jax.Array
    episode_return: jax.Array
    """[num_envs] return of each environment's current episode so far."""
    last_episode_return: jax.Array
    """Mean return of the episodes that ended most recently."""


# ROLLOUT SCHEDULE


def rollout_length(epoch: jax.Array, rollout_schedule: tuple[int, int, int, int]) -> jax.Array:
    """k at `epoch`: k_a up to epoch_a, then linear in the epoch, k_b from epoch_b on, truncated to an
    integer (`_set_rollout_length` in jannerm/mbpo's mbpo/algorithms/mbpo.py)."""
    epoch_a, epoch_b, k_a, k_b = rollout_schedule
    progress = jnp.clip((epoch - epoch_a) / max(epoch_b - epoch_a, 1), 0.0, 1.0)
    return jnp.floor(k_a + progress * (k_b - k_a)).astype(jnp.int32)


def model_pool_size(rollouts_per_epoch: int, length, retain_epochs: int):
    """The transitions the paper's model pool holds: `retain_epochs` epochs of rollouts of `length`
    steps (`_reallocate_model_pool` in jannerm/mbpo)."""
    return rollouts_per_epoch * length * retain_epochs


# BRANCHED ROLLOUTS


def branched_rollouts(
    policy: Callable,
    dynamics: Callable,
    termination: Callable,
    real_buffer: replay.ReplayBuffer,
    model_buffer: replay.ReplayBuffer,
    key: jax.Array,
    *,
    length: jax.Array,
    batch_size: int,
    can_terminate: bool = True,
) -> tuple[replay.ReplayBuffer, jax.Array]:
    """`batch_size` rollouts of `length` steps from states of the real buffer, added to the model buffer.

    policy(obs, key) -> (action, log_prob); dynamics(obs, action, key) -> (next_obs, reward);
    termination(obs, action, next_obs) -> [n] bool. A rollout stops at its first predicted termination:
    that transition is stored, nothing after it. Returns the model buffer and the share of rollouts
    still alive at the end."""
    start_key, key = jax.random.split(key)
    obs = replay.sample(real_buffer, start_key, batch_size)["obs"]

    def model_step(t, carry):
        obs, alive, model_buffer = carry
        act_key, model_key = jax.random.split(jax.random.fold_in(key, t))
        action, _ = policy(obs, act_key)
        next_obs, reward = dynamics(obs, action, model_key)
        terminated = termination(obs, action, next_obs)
        imagined = {
            "obs": obs,
            "action": action,
            "reward": reward,
            "next_obs": next_obs,
            "terminated": terminated.astype(jnp.float32),
        }
        # A task that never terminates keeps every rollout alive, so the rows go in unmasked: the same
        # slots, without the mask's cumulative sum, which XLA proves constant and folds at compile time
        # (over a second for an s32[6250,16] of it in MBPO's paper setting on an H200).
        model_buffer = replay.add(model_buffer, imagined, mask=alive if can_terminate else None)
        return next_obs, alive & ~terminated, model_buffer

    alive = jnp.ones(batch_size, bool)
    # `length` is the same for every run of a vmapped batch (it comes from the update index), so this
    # stays a loop of k model steps, not a masked loop of k_max.
    _, alive, model_buffer = jax.lax.fori_loop(0, length, model_step, (obs, alive, model_buffer))
    return model_buffer, alive.mean()


# TRAINING BATCHES


def training_batch(
    real_buffer: replay.ReplayBuffer,
    model_buffer: replay.ReplayBuffer | None,
    key: jax.Array,
    batch_size: int,
    real_ratio: jax.Array,
    retained: jax.Array | None,
) -> dict:
    """A SAC batch whose first floor(real_ratio x batch_size) rows are real transitions and the rest
    imagined ones from the newest `retained` of the model buffer (`_training_batch` in jannerm/mbpo
    puts the real ones first too); all real without a model buffer."""
    real_key, model_key = jax.random.split(key)
    real = replay.sample(real_buffer, real_key, batch_size)
    if model_buffer is None:
        return real
    imagined = replay.sample(model_buffer, model_key, batch_size, newest=retained)
    # Both halves are drawn at full size and mixed row by row, so real_ratio can be a traced value.
    use_real = jnp.arange(batch_size) < jnp.floor(real_ratio * batch_size)
    return jax.tree_util.tree_map(
        lambda r, m: jnp.where(use_real.reshape((batch_size,) + (1,) * (r.ndim - 1)), r, m), real, imagined
    )


# TRAINING PROGRAM


class DynaContext(NamedTuple):
    """What the loop hands each part besides the state: the task's spec and the settings it built."""

    spec: Any
    """The task's `mbrlax.envs.EnvSpec`."""
    model_config: DynaConfig
    agent_config: sac.Agent


class DynaParts(NamedTuple):
    """What an algorithm on the Dyna loop changes. Each part is a pure function of fixed signature,
    called with the `DynaContext`, the model and the run's Config (its sweepable fields traced)
    first; None keeps MBPO's."""

    actor_objective: Callable | None = None
    """(context, model, config, period_start, actor, critic, alpha, obs, key) -> (loss, log_prob): the
    actor's loss (MAAC's pathwise objective; None: SAC's); `period_start` is the environment step at the
    start of this model period."""
    critic_objective: Callable | None = None
    """(context, model, config, critic, target_critic, actor, alpha, batch, key) -> (loss, q [2, B]):
    the critics' loss (value expansion; None: SAC's)."""
    rollouts: Callable | None = None
    """(context, model, config, actor, real_buffer, model_buffer, key, length) -> (model_buffer, added,
    metrics): the model data in place of `branched_rollouts` (M2AC's masked rollouts), where `added`
    (may be traced) is the transitions stored, of which SAC's batches then draw from the newest
    `added` x (model periods per epoch) x model_retain_epochs, and `metrics` a dict of scalars."""
    target_entropy: Callable | None = None
    """(period_start) -> SAC's target entropy for the model period that starts at that step (MAAC's
    schedule); None: `config.target_entropy`, or -|A| where unset."""


def make_train(config: DynaConfig, env=None, parts: DynaParts = DynaParts(), name: str = "MBPO") -> Trainer:
    """The training program, on the task `config.env` names or on `env`, a user's own `(environment,
    EnvSpec)`: refits, branched rollouts and G SAC updates a real step, with `parts` in the places an
    algorithm changes. `name`: what an error about the task calls the algorithm."""
    config.validate()
    task = setup(config, env, algorithm=name)
    spec = task.spec
    if not config.sac_only and spec.termination_fn is None:
        raise ConfigError(
            f"{config.env} can terminate but has no termination function, which model rollouts need; "
            "use --sac-only or a task with one"
        )
    num_envs, obs_size, action_size = config.num_envs, spec.observation_size, spec.action_size
    # Imagined data for SAC's batches: with the model, unless no rollouts are asked for.
    model_data = not config.sac_only and config.rollout_batch_size > 0
    schedule = make_schedule(config.total_steps, config.initial_steps, config.model_train_freq, config.eval_every)
    target_entropy = -float(action_size) if config.target_entropy is None else config.target_entropy
    agent_config = sac.Agent(config, action_size)  # SAC reads its fields from the Config
    model_config = config  # the ensemble reads its fields from the Config
    context = DynaContext(spec, model_config, agent_config)
    rollouts_per_epoch = config.rollout_batch_size * config.epoch_length // config.model_train_freq
    model_capacity = model_pool_size(rollouts_per_epoch, max(config.rollout_schedule[2:]), config.model_retain_epochs)

    def to_env_action(action):
        return scale_action(action, task.low, task.high)

    def env_step(state: DynaState, action):
        next_env_state = task.env.step(state.env_state, to_env_action(action))
        buffer = replay.add(state.buffer, transition(state.env_state, action, next_env_state))
        episode_return, last_return = track_returns(
            state.episode_return, state.last_episode_return, next_env_state.reward, next_env_state.done
        )
        return state._replace(
            env_state=next_env_state, buffer=buffer, episode_return=episode_return, last_episode_return=last_return
        )

    def init(key, config):
        env_key, model_key, agent_key, explore_key, key = jax.random.split(key, 5)
        env_state = task.env.reset(env_key)
        example = transition_example(env_state.obs[0], action_size)
        state = DynaState(
            env_state=env_state,
            buffer=replay.init(example, config.buffer_capacity or schedule.total_steps),
            model_buffer=replay.init(example, model_capacity) if model_data else None,
            model=None if config.sac_only else ensemble.init(
                model_key, model_config, obs_size, action_size, config.model_lr, config.model_weight_decay
            ),
            agent=sac.init(agent_key, agent_config, obs_size, config.sac_lr),
            key=key,
            episode_return=jnp.zeros(num_envs),
            last_episode_return=jnp.float32(0.0),
        )
        # EXPLORE with uniformly random actions.
        random_steps = config.initial_steps // num_envs
        return explore_uniformly(env_step, state, explore_key, random_steps, (num_envs, action_size))

    def update(state: DynaState, config, update_index):
        """One model period: refit, roll out, then model_train_freq real steps of G updates each."""
        period_start = config.initial_steps + update_index * config.model_train_freq
        key, train_key, rollout_key, steps_key = jax.random.split(state.key, 4)
        state, metrics, retained = state._replace(key=key), {}, None
        if not config.sac_only:
            # TRAIN MODEL on all real data.
            data, count = state.buffer.data, state.buffer.count
            model, model_metrics = ensemble.train(model_config, state.model, data, count, train_key)
            state, metrics = state._replace(model=model), dict(model_metrics)
        if model_data:
            # ROLLOUT k steps of the current policy through random elites, from real states.
            k = rollout_length(update_index * config.model_train_freq // config.epoch_length, config.rollout_schedule)
            if parts.rollouts is None:
                model_buffer, still_alive = branched_rollouts(
                    functools.partial(sac.sample_action, agent_config, state.agent.actor),
                    functools.partial(ensemble.propagate, model_config, state.model, mode="ts1", elites_only=True),
                    lambda obs, action, next_obs: spec.termination_fn(obs, to_env_action(action), next_obs),
                    state.buffer,
                    state.model_buffer,
                    rollout_key,
                    length=k,
                    batch_size=config.rollout_batch_size,
                    can_terminate=spec.can_terminate,
                )
                retained = model_pool_size(rollouts_per_epoch, k, config.model_retain_epochs)
                rollout_metrics = dict(rollouts_alive=still_alive)
            else:
                # A method's own rollouts (M2AC's masked ones), which store a varying number of transitions.
                model_buffer, added, rollout_metrics = parts.rollouts(
                    context, state.model, config, state.agent.actor, state.buffer, state.model_buffer, rollout_key, k
                )
                retained = added * (config.epoch_length // config.model_train_freq) * config.model_retain_epochs
            state = state._replace(model_buffer=model_buffer)
            metrics.update(rollout_length=k, **rollout_metrics)
        entropy = jnp.float32(target_entropy) if parts.target_entropy is None else parts.target_entropy(period_start)
        objective, critic_loss = (
            None if part is None else functools.partial(part, context, state.model, config, *before)
            for part, before in ((parts.actor_objective, (period_start,)), (parts.critic_objective, ()))
        )

        def real_step(state: DynaState, step_key):
            # ACT, then UPDATE POLICY G times on batches of real and imagined transitions.
            act_key, learn_key = jax.random.split(step_key)
            action, _ = sac.sample_action(agent_config, state.agent.actor, state.env_state.obs, act_key)
            state = env_step(state, action)

            def gradient_step(agent, update_key):
                batch_key, update_key = jax.random.split(update_key)
                ratio, batch_size = config.real_ratio, config.sac_batch_size
                batch = training_batch(state.buffer, state.model_buffer, batch_key, batch_size, ratio, retained)
                return sac.update(
                    agent_config, agent, batch, update_key, discount=config.discount, tau=config.tau,
                    target_entropy=entropy, actor_objective=objective, critic_objective=critic_loss,
                )

            learn_keys = jax.random.split(learn_key, config.updates_per_step * num_envs)
            agent, agent_metrics = jax.lax.scan(gradient_step, state.agent, learn_keys)
            agent_metrics = jax.tree_util.tree_map(jnp.mean, agent_metrics)
            return state._replace(agent=agent), dict(agent_metrics, train_reward=state.env_state.reward.mean())

        step_keys = jax.random.split(steps_key, config.model_train_freq // num_envs)
        state, step_metrics = jax.lax.scan(real_step, state, step_keys)
        metrics.update(jax.tree_util.tree_map(jnp.mean, step_metrics))
        metrics["train_episode_return"] = state.last_episode_return
        return state, metrics

    def evaluate(state: DynaState, key, config):
        """Return of `eval_episodes` fresh episodes of the deterministic policy, run in parallel."""

        def greedy(carry, obs, step_key):
            return to_env_action(sac.greedy_action(agent_config, state.agent.actor, obs)), carry

        return evaluate_episodes(task.eval_env, key, config.eval_episodes, spec.episode_length, greedy)

    fresh_episodes = restart_episodes("env_state", "episode_return")  # a resumed gym/ run starts new episodes
    return Trainer(init, update, evaluate, schedule, spec=spec, fresh_episodes=fresh_episodes)
