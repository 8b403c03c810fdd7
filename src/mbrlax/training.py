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


