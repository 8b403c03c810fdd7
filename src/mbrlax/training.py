"""The contract between an algorithm file and the runner: a `Trainer`.

An algorithm's `make_train(config)` returns a Trainer. Called as `trainer(key, config)` it is the
fused program: the whole run as one pure function that `jax.jit` compiles and `jax.vmap` batches
over seeds and traced hyperparameters. The runner calls the same pieces chunk by chunk instead
(`init`, then `update` again and again, `evaluate` every `updates_per_eval` updates), so the chunked
and the fused mode compute the same thing.

`update` also receives its own index (0, 1, 2, ...) as an int32 scalar that is the same for every
run in a vmapped batch. A schedule that depends only on progress (MBPO's rollout length) is computed
from it, so a loop whose length it sets stays one loop under `vmap` instead of becoming a masked
loop over every run's own counter: a schedule belongs in the loop's structure, not in a `lax.cond` on a
traced counter, whose both branches run under `vmap`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from mbrlax import envs
from mbrlax.config import INT32_MAX, ConfigError, RunConfig, check_fields, is_learning_rate, setting  # noqa: F401


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How a run of `total_steps` environment steps is cut into updates and evaluations."""

    initial_steps: int
    """Environment steps taken by `init` (random exploration), counted in the total."""
    steps_per_update: int
    """Environment steps (over all parallel environments) that one `update` takes."""
    updates_per_eval: int
    num_evals: int

    @property
    def num_updates(self) -> int:
        return self.updates_per_eval * self.num_evals

    @property
    def total_steps(self) -> int:
        return self.initial_steps + self.num_updates * self.steps_per_update

    def env_steps_after(self, num_updates: int) -> int:
        return self.initial_steps + num_updates * self.steps_per_update


def make_schedule(total_steps: int, initial_steps: int, steps_per_update: int, eval_every: int) -> Schedule:
    """Round `total_steps` up to whole evaluation periods of whole updates."""
    if total_steps <= initial_steps:
        raise ConfigError(f"total_steps ({total_steps}) must exceed the initial exploration steps ({initial_steps})")
    if eval_every <= 0:
        raise ConfigError(f"eval_every must be positive, got {eval_every}")
    updates_per_eval = max(1, round(eval_every / steps_per_update))
    num_updates = math.ceil((total_steps - initial_steps) / steps_per_update)
    num_evals = math.ceil(num_updates / updates_per_eval)
    return Schedule(initial_steps, steps_per_update, updates_per_eval, num_evals)


@dataclasses.dataclass(frozen=True)
class Trainer:
    """An algorithm's training program, whole (`__call__`) and in pieces (for the runner)."""

    init: Callable[[jax.Array, Any], Any]
    """(key, config) -> state, including any initial exploration. `config` is the algorithm's Config,
    its sweepable fields traced (see `mbrlax.config`)."""
    update: Callable[[Any, Any, jax.Array], tuple[Any, dict]]
    """(state, config, update_index) -> (state, metrics): `schedule.steps_per_update` environment
    steps and the learning that goes with them. Metrics are scalars (reduced over the update)."""
    evaluate: Callable[[Any, jax.Array, Any], dict]
    """(state, key, config) -> metrics with at least "eval_return"; must not change the state."""
    schedule: Schedule
    spec: Any = None
    """The task's `EnvSpec`, for what the runner must know of it (a task that steps on the host)."""
    fresh_episodes: Callable[[Any, Any], Any] | None = None
    """(restored, fresh) -> state: a run resumed with new host simulators (whose state no checkpoint
    holds) takes the environments of `fresh`, a state `init` just made, and starts new episodes,
    keeping all it learned; see `restart_episodes`."""

    def __call__(self, key: jax.Array, config) -> tuple[Any, dict]:
        """The fused run: init, then evaluation periods of updates, all in one `lax.scan`."""
        init_key, eval_key = split_keys(key)
        state = self.init(init_key, config)

        def update_step(state, update_index):
            return self.update(state, config, update_index)

        def eval_period(state, eval_index):
            per_eval = self.schedule.updates_per_eval
            indices = eval_index * per_eval + jnp.arange(per_eval, dtype=jnp.int32)
            state, train_metrics = jax.lax.scan(update_step, state, indices)
            eval_metrics = self.evaluate(state, jax.random.fold_in(eval_key, eval_index), config)
            return state, (train_metrics, eval_metrics)

        state, (train_metrics, eval_metrics) = jax.lax.scan(
            eval_period, state, jnp.arange(self.schedule.num_evals, dtype=jnp.int32)
        )
        # Train metrics per update, [num_updates]; eval metrics per evaluation, [num_evals].
        train_metrics = jax.tree_util.tree_map(lambda x: x.reshape((-1,) + x.shape[2:]), train_metrics)
        return state, {"train": train_metrics, "eval": eval_metrics}


def restart_episodes(*fields: str, episode_counter: str | None = None):
    """A `Trainer.fresh_episodes` that takes `fields` (the environment state and whatever else an
    episode starts afresh: a return so far, a recurrent memory, first-step flags) from the fresh
    state, and adds one to the `episode_counter` field, where given, so new episodes get new ids."""

    def fresh_episodes(restored, fresh):
        values = {name: getattr(fresh, name) for name in fields}
        if episode_counter is not None:
            values[episode_counter] = getattr(restored, episode_counter) + 1
        return restored._replace(**values)

    return fresh_episodes


def split_keys(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The (init, eval) keys a run derives from its seed key; the runner and `Trainer` agree on it."""
    init_key, eval_key = jax.random.split(key)
    return init_key, eval_key


def require_continuous_vector_task(spec: envs.EnvSpec, algorithm: str) -> None:
    """A ConfigError unless the task has continuous actions and vector observations, which every
    algorithm but Dreamer assumes (its networks are MLPs over obs, its policies Gaussian)."""
    if spec.discrete:
        raise ConfigError(f"{algorithm} takes continuous actions; {spec.name} has a discrete action space")
    if spec.image_shape is not None:
        raise ConfigError(
            f"{algorithm} takes vector observations; {spec.name}'s observations are images (Dreamer learns from pixels)"
        )


def _clipped_adam(learning_rate, max_grad_norm):
    clip = [] if max_grad_norm is None else [optax.clip_by_global_norm(max_grad_norm)]
    return optax.chain(*clip, optax.scale_by_adam(), optax.scale(-learning_rate))


def _needs_learning_rate(params):
    raise TypeError("an Adam state starts from the run's learning rate: adam(learning_rate, ...).init(params)")


def adam(learning_rate=None, max_grad_norm: float | None = None) -> optax.GradientTransformation:
    """Adam, optionally after clipping the gradients to a global norm, whose learning rate lives in its
    state (optax's `inject_hyperparams`). `init` stores the run's rate, a traced field of its
    Config, so a sweep over it is a vmap; `update` reads the rate from that state, so a learner's step
    builds it without one: `adam(max_grad_norm=c).update(grads, opt_state, params)`."""
    injected = optax.inject_hyperparams(_clipped_adam, static_args="max_grad_norm")
    if learning_rate is None:
        return injected(0.0, max_grad_norm)._replace(init=_needs_learning_rate)
    return injected(learning_rate, max_grad_norm)


def gradient_update(loss_fn: Callable, params, opt_state, optimizer: optax.GradientTransformation, *args):
    """One step of `optimizer` down `loss_fn(params, *args) -> (loss, aux)`: loss, gradient, (clip,)
    update, the four lines every learner repeats. Returns (params, opt_state, loss, aux)."""
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, *args)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, aux


# SHARED PIECES OF THE ENVIRONMENT LOOP


def scale_action(action: jax.Array, low: jax.Array, high: jax.Array) -> jax.Array:
    """Policies act in [-1, 1]; a task's bounds may be wider."""
    return low + (action + 1.0) * 0.5 * (high - low)


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
