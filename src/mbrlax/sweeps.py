"""`mbrlax.sweep`: a grid of hyperparameters over several seeds, from Python, as few programs as the
grid allows.

Traced fields (a Config's SWEEPABLE) are one vmapped program over every combination and seed, sharded
over the local devices as in the CLI. Static fields (sizes, horizons: anything that changes shapes
or loop lengths) compile one program per combination of their values, run one after another.

    import mbrlax
    result = mbrlax.sweep("pets", "pendulum", {"alpha": [0.1, 0.25], "horizon": [15, 30]}, seeds=4)
    result["eval"]["eval_return"]   # [runs, evaluations]; result["runs"][i] says what run i was
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import jax
import numpy as np

from mbrlax.runner.execution import jit_over_runs, shard_runs
from mbrlax.runner.planning import RunOptions, Sweep, batch_inputs, check_options, plan, preset_config
from mbrlax.training import ConfigError


def sweep(
    algorithm: str,
    env: str,
    grid: dict[str, list[Any]] | None = None,
    seeds: int = 1,
    *,
    seed: int = 0,
    preset: str | tuple[str, ...] | None = None,
    **overrides,
) -> dict:
    """Run `algorithm` (a file of mbrlax.algorithms: "pets", "mbpo", "dreamer", ...) on `env` for
    every combination of `grid` x `seeds` seeds, starting from the task's preset (or `preset`: one
    name, or several applied in order) with `overrides` on top. Returns {"runs": [{field: value,
    ..., "seed": s}], "train": {metric: [runs, updates]}, "eval": {metric: [runs, evaluations]},
    "env_steps": [evaluations]}: every static combination's runs one after another. Raises
    ConfigError for a config that cannot run, before anything compiles."""
    try:
        module = importlib.import_module(f"mbrlax.algorithms.{algorithm}")
    except ModuleNotFoundError:
        raise ConfigError(f"unknown algorithm {algorithm!r}") from None
    Config = module.Config
    config = dataclasses.replace(preset_config(Config, module.PRESETS, env, preset), **overrides)
    grid = dict(grid or {})
    fields = {f.name for f in dataclasses.fields(Config)}
    unknown = [name for name in grid if name not in fields]
    if unknown:
        raise ConfigError(f"sweep: {', '.join(unknown)} is not a field of {algorithm}'s Config")
    check_options(RunOptions(seed=seed, num_seeds=seeds))
    config.validate()
    planned = plan(config, _sweep_of(grid, Config.SWEEPABLE), module.make_train, seed, seeds)

    schedules = {_evaluation_steps(program.trainer.schedule) for program in planned.programs}
    if len(schedules) > 1:
        raise ConfigError("sweep: the static values give different evaluation schedules; sweep them apart")
    train, evals = [], []
    for program in planned.programs:
        keys, configs = shard_runs(batch_inputs(program.runs, program.config))
        _, metrics = jit_over_runs(program.trainer, len(program.runs))(keys, configs)
        train.append(jax.tree_util.tree_map(np.asarray, metrics["train"]))
        evals.append(jax.tree_util.tree_map(np.asarray, metrics["eval"]))
    stack = lambda parts: {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}  # noqa: E731
    return {"runs": planned.every_run, "train": stack(train), "eval": stack(evals), "env_steps": list(schedules.pop())}


def _sweep_of(grid: dict[str, list[Any]], sweepable: tuple[str, ...]) -> Sweep:
    """The grid split into traced fields (read as numbers) and static ones (taken as given)."""
    traced = {}
    for name, values in grid.items():
        if name in sweepable:
            try:
                traced[name] = [float(value) for value in values]
            except (TypeError, ValueError):
                raise ConfigError(f"sweep: {name}'s values must be numbers, got {values!r}") from None
    return Sweep(traced, {name: list(values) for name, values in grid.items() if name not in sweepable})


def _evaluation_steps(schedule) -> tuple[int, ...]:
    return tuple(schedule.env_steps_after((e + 1) * schedule.updates_per_eval) for e in range(schedule.num_evals))
