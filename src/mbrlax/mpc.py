"""Model predictive control's plumbing: the seam through which a planner acts in PETS's loop
(`algorithms/pets.py`'s `make_train(..., make_planner=)`; POPLIN plugs in there too), and the
receding-horizon step every plan-keeping planner shares (plan from the last plan shifted by one
step, execute the first action)."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from mbrlax import ensemble


def replan(plan_fn, obs, previous_plans, key, fill):
    """Model predictive control for a batch of states obs [n, ...]: `plan_fn(obs, warm_start, key) ->
    plan [H, A]` for each, warm-started from its previous plan shifted by one step with `fill` [A] as
    the new last step. Returns (the plans' first actions [n, A], the plans [n, H, A])."""
    warm = jnp.concatenate([previous_plans[:, 1:], jnp.broadcast_to(fill, (len(obs), 1) + fill.shape)], axis=1)
    plans = jax.vmap(plan_fn)(obs, warm, jax.random.split(key, len(obs)))
    return plans[:, 0], plans


class Planner(NamedTuple):
    """How the PETS loop chooses actions with the model; other planners (POPLIN) plug in through
    `pets.make_train(..., make_planner=)`."""

    init: Callable
    """(key, hparams) -> what the planner learns across the run (() when nothing)."""
    fresh: Any
    """One environment's planning memory at the start of an episode (CEM: the middle plan [H, A])."""
    act: Callable
    """(learned, model, obs [n, obs], memory [n, ...], key, hparams) -> (actions [n, A], memory)."""
    fit: Callable
    """(learned, buffer, key, hparams) -> (learned, metrics dict), after every model fit."""


class PlannerContext(NamedTuple):
    """What `pets.make_train` gives a planner factory: the run's task, the ensemble's settings and the
    model's trajectory-sampling step, `model_step_fn(model) -> step_fn(states, actions, key)`."""

    task: Any
    model_config: ensemble.EnsembleConfig
    model_step_fn: Callable
    particle_rows: int


def middle_plan(context: PlannerContext, horizon: int):
    """The plan [H, A] of actions in the middle of the bounds: where every search starts an episode."""
    low, high = context.task.low, context.task.high
    return jnp.broadcast_to((low + high) / 2.0, (horizon, low.shape[-1]))


def plan_keeping_planner(act, middle) -> Planner:
    """A planner that learns nothing across the run and keeps each environment's last plan [H, A]
    as its memory (`middle` at an episode's start)."""
    return Planner(init=lambda key, hparams: (), fresh=middle, act=act, fit=lambda learned, *_: (learned, {}))
