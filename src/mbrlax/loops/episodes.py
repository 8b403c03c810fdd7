"""The environment side every loop shares: the task of a run (`setup`: training and evaluation
copies, spec and action bounds, from `config.env` or a user's own environment), the replay entry of
a step (`transition`), uniformly random exploration, running episode returns, and the evaluation of
a policy on fresh episodes run in parallel (`evaluate_episodes`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from mbrlax import envs
from mbrlax.training import ConfigError


def require_continuous_vector_task(spec: envs.EnvSpec, algorithm: str) -> None:
    """A ConfigError unless the task has continuous actions and vector observations, which every
    algorithm but Dreamer assumes (its networks are MLPs over obs, its policies Gaussian)."""
    if spec.discrete:
        raise ConfigError(f"{algorithm} takes continuous actions; {spec.name} has a discrete action space")
    if spec.image_shape is not None:
        raise ConfigError(
            f"{algorithm} takes vector observations; {spec.name}'s observations are images (Dreamer learns from pixels)"
        )


def make_env(config, **kwargs):
    """The task a Config names, with its `episode_length`, `action_repeat` and `backend` fields
    where it has them; `kwargs` go to `mbrlax.envs.make` (num_envs, auto_reset)."""
    backend = getattr(config, "backend", None)
    options = {} if backend is None else {"backend": backend}
    return envs.make(
        config.env,
        episode_length=config.episode_length,
        action_repeat=getattr(config, "action_repeat", 1),
        **options,
        **kwargs,
    )


@dataclasses.dataclass(frozen=True)
class Setup:
    """The task of a run: its training and evaluation environments, its spec and action bounds."""

    env: Any
    """`config.num_envs` copies, batched (resetting themselves if `setup` was asked to)."""
    eval_env: Any
    """`config.eval_episodes` copies, batched, without automatic reset."""
    spec: envs.EnvSpec
    low: jax.Array
    high: jax.Array
    copies: Callable[..., Any]
    """`copies(num_envs, auto_reset=False)`: more copies of the same task (MB-MPO's start states)."""


def setup(config, env=None, *, auto_reset: bool = True, algorithm: str | None = None) -> Setup:
    """The environments a run needs. `env`: None for the task `config.env` names, or a user's own
    `(environment, EnvSpec)` on Brax's protocol (one unbatched copy), wrapped as registered tasks
    are. `algorithm`, where given, is the name an error calls it by, and requires continuous actions
    and vector observations, as every algorithm but Dreamer does. An unknown task or option is a
    ConfigError."""

    def copies(num_envs: int, auto_reset: bool = False):
        if env is None:
            return make_env(config, num_envs=num_envs, auto_reset=auto_reset)
        task, spec = env
        return envs.wrap(
            task,
            spec,
            episode_length=config.episode_length,
            action_repeat=config.action_repeat,
            num_envs=num_envs,
            auto_reset=auto_reset,
        )

    try:
        train_env, spec = copies(config.num_envs, auto_reset)
        eval_env, _ = copies(config.eval_episodes)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if algorithm is not None:
        require_continuous_vector_task(spec, algorithm)
    return Setup(
        train_env, eval_env, spec, jnp.asarray(spec.action_low), jnp.asarray(spec.action_high), copies
    )


def transition_example(obs: jax.Array, action_size: int) -> dict:
    """One replay entry's structure (see `transition`), for sizing a buffer from one observation."""
    return {
        "obs": obs,
        "action": jnp.zeros(action_size),
        "reward": jnp.float32(0.0),
        "next_obs": obs,
        "terminated": jnp.float32(0.0),
    }


def explore_uniformly(env_step, state, key: jax.Array, num_steps: int, action_shape, low=-1.0, high=1.0):
    """`num_steps` steps of `env_step(state, action) -> state` with uniformly random actions."""

    def random_step(state, step_key):
        action = jax.random.uniform(step_key, action_shape, minval=low, maxval=high)
        return env_step(state, action), None

    state, _ = jax.lax.scan(random_step, state, jax.random.split(key, num_steps))
    return state


def transition(env_state, action: jax.Array, next_env_state) -> dict:
    """The replay entry of one batched environment step. `next_obs` is the true next observation even
    when the episode ended and the environment reset (`final_obs`); `terminated` excludes time-limit
    truncation, so value targets bootstrap on truncation and never on termination."""
    terminated = next_env_state.done * (1.0 - next_env_state.info["truncation"])
    return {
        "obs": env_state.obs,
        "action": action,
        "reward": next_env_state.reward,
        "next_obs": next_env_state.info["final_obs"],
        "terminated": terminated,
    }


def track_returns(episode_return, last_episode_return, reward, done):
    """Running return of each environment's episode, and the mean return of those that just ended
    (the previous value when none did). Returns (episode_return, last_episode_return)."""
    episode_return = episode_return + reward
    ended = done.sum()
    finished = (episode_return * done).sum() / jnp.maximum(ended, 1.0)
    last_episode_return = jnp.where(ended > 0, finished, last_episode_return)
    return episode_return * (1.0 - done), last_episode_return


def evaluate_episodes(env, key, num_episodes: int, episode_length: int, act, carry=None) -> dict:
    """Run `num_episodes` fresh episodes of a batched `env` in parallel, each until it ends or for
    `episode_length` steps. `act(carry, obs [n, ...], key) -> (action [n, ...], carry)` chooses the
    actions; a policy without memory ignores the carry. Returns the mean and spread of the returns,
    and for goal tasks (which report `metrics["success"]` and `metrics["distance"]`) the share of
    episodes that reached the goal at some step (`eval_success`, also named `eval_success_any`), the
    share that are at the goal on their last step (`eval_success_final`; an episode that terminates
    early counts its terminal step) and the mean distance at the last step."""
    reset_key, key = jax.random.split(key)
    env_state = env.reset(reset_key)
    goal_task = "success" in env_state.metrics

    def step(loop, step_key):
        env_state, carry, total, alive, reached, distance, final = loop
        action, carry = act(carry, env_state.obs, step_key)
        env_state = env.step(env_state, action)
        total = total + alive * env_state.reward
        if goal_task:
            reached = jnp.maximum(reached, alive * env_state.metrics["success"])
            distance = jnp.where(alive > 0, env_state.metrics["distance"], distance)
            final = jnp.where(alive > 0, env_state.metrics["success"], final)
        return (env_state, carry, total, alive * (1.0 - env_state.done), reached, distance, final), None

    zeros = jnp.zeros(num_episodes)
    loop = (env_state, carry, zeros, jnp.ones(num_episodes), zeros, zeros, zeros)
    (_, _, total, _, reached, distance, final), _ = jax.lax.scan(step, loop, jax.random.split(key, episode_length))
    metrics = {"eval_return": total.mean(), "eval_return_std": total.std()}
    if goal_task:
        metrics.update(
            eval_success=reached.mean(),
            eval_success_any=reached.mean(),
            eval_success_final=final.mean(),
            eval_final_distance=distance.mean(),
        )
    return metrics
