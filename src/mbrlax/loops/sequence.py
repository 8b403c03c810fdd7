"""The sequence loop's settings and acting side, which Dreamer and PlaNet share: each environment carries the
posterior state its agent filters along the episode; a step is stored with its first and terminal
flags for sequence replay (`mbrlax.buffer.add_step`), and an environment whose episode ended resets.
Evaluation filters the same way. The world model itself is `mbrlax.rssm`."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from mbrlax import buffer as replay
from mbrlax import rssm
from mbrlax.config import ConfigError, RunConfig, setting
from mbrlax.envs import restart_or_step
from mbrlax.training import restart_episodes, scale_action
from mbrlax.loops.episodes import evaluate_episodes, track_returns
from mbrlax.loops import episodes


@dataclasses.dataclass(frozen=True)
class SequenceConfig(rssm.RSSMConfig, RunConfig):
    """The settings Dreamer and PlaNet share: the world model's sizes and the sequence replay."""

    batch_size: int = setting(16, positive=True)
    """B: sequences per update."""
    sequence_length: int = setting(64, positive=True)
    """T: steps per replayed sequence."""
    buffer_capacity: int | None = None
    """Steps of each environment kept (default: all of the run's)."""

    def validate(self) -> None:
        super().validate()
        if self.initial_steps // self.num_envs < self.sequence_length:
            raise ConfigError(
                f"initial_steps per environment ({self.initial_steps // self.num_envs}) must cover one replayed "
                f"sequence (sequence_length {self.sequence_length})"
            )
        if self.buffer_capacity is not None and self.buffer_capacity < self.sequence_length:
            raise ConfigError(
                f"sequence_length ({self.sequence_length}) is longer than the buffer "
                f"(buffer_capacity {self.buffer_capacity} steps per environment)"
            )


def env_action(action, task: episodes.Setup):
    """A policy's action as the task takes it: one-hot, or scaled from [-1, 1] to the task's bounds."""
    return action if task.spec.discrete else scale_action(action, task.low, task.high)


# What a resumed run takes fresh (`Trainer.fresh_episodes`): the environments and, with them, the
# model state filtered along each episode; the episode ids go on. PlaNet's state has the same fields.
FRESH_EPISODES = restart_episodes(
    "env_state", "is_first", "latent", "prev_action", "episode_return", episode_counter="episode"
)


def evaluate_filtering(task: episodes.Setup, eval_env, key, episodes: int, initial_latent, choose):
    """EVALUATE `episodes` fresh episodes of an agent that filters its model state along each:
    `choose(latent, prev_action, obs, is_first, key) -> (action in [-1, 1] or one-hot, latent)`,
    from `initial_latent` and a zero previous action (Dreamer's actor, PlaNet's planner)."""

    def act(carry, obs, step_key):
        latent, prev_action, is_first = carry
        action, latent = choose(latent, prev_action, obs, is_first, step_key)
        return env_action(action, task), (latent, action, jnp.zeros(episodes))

    carry = (initial_latent, jnp.zeros((episodes, task.spec.action_size)), jnp.ones(episodes))
    return evaluate_episodes(eval_env, key, episodes, task.spec.episode_length, act, carry)


def store_and_step(state, action, latent, reset_key, task: episodes.Setup):
    """Store the step (the current observation, `action` in [-1, 1] or one-hot, the reward that came
    with the observation, first and terminal flags), then step each environment with `action`, or
    reset the ones whose episode ended; `latent` is the posterior state that chose the action. The
    `state` has the acting fields that Dreamer's and PlaNet's states share (env_state, is_first,
    latent, prev_action, buffer, episode, episode_return, last_episode_return)."""
    env_state = state.env_state
    entry = {
        "obs": env_state.obs,
        "action": action,
        "reward": env_state.reward,
        "is_first": state.is_first,
        "is_terminal": env_state.done * (1.0 - env_state.info["truncation"]),
    }
    buffer = replay.add_step(state.buffer, entry, state.episode)
    # An environment whose episode ended has had its last observation stored; it resets now.
    ended = env_state.done > 0
    next_env_state = restart_or_step(task.env, env_state, env_action(action, task), reset_key)
    episode_return, last_return = track_returns(
        state.episode_return, state.last_episode_return, next_env_state.reward, next_env_state.done
    )
    return state._replace(
        env_state=next_env_state,
        is_first=ended.astype(jnp.float32),
        latent=latent,
        prev_action=action,
        buffer=buffer,
        episode=state.episode + ended.astype(jnp.int32),
        episode_return=episode_return,
        last_episode_return=last_return,
    )
