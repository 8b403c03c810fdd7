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

from mbrlax import runner
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
    name, or several applied in order) with `overrides` on top. Returns {"runs": [{field: value, ..., "seed": s}], "train": {metric:
    [runs, updates]}, "eval": {metric: [runs, evaluations]}, "env_steps": [evaluations]}: every
    static combination's runs one after another. Raises ConfigError for a config that cannot run."""
    try:
        module = importlib.import_module(f"mbrlax.algorithms.{algorithm}")
    except ModuleNotFoundError:
        raise ConfigError(f"unknown algorithm {algorithm!r}") from None
    Config = module.Config
    config = dataclasses.replace(runner._preset_config(Config, module.PRESETS, env, preset), **overrides)
    grid = dict(grid or {})
    fields = {f.name for f in dataclasses.fields(Config)}
    unknown = [name for name in grid if name not in fields]
    if unknown:
        raise ConfigError(f"sweep: {', '.join(unknown)} is not a field of {algorithm}'s Config")
    static = {name: values for name, values in grid.items() if name not in Config.SWEEPABLE}
    traced = tuple(f"{name}={','.join(map(str, values))}" for name, values in grid.items() if name in Config.SWEEPABLE)

    all_runs, train, evals, env_steps = [], [], [], None
    for setting in runner.static_settings(static):
        run_config = dataclasses.replace(config, **setting)
        run_config.validate()
        runs = runner.expand_runs(run_config, runner.RunOptions(seed=seed, num_seeds=seeds, sweep=traced))
        runner.check_host_task(run_config, runs)
        trainer = module.make_train(run_config)
        runner.check_memory(trainer, runs, Config.SWEEPABLE)
        keys, hparams = runner.shard_runs(runner.batch_inputs(runs, Config.SWEEPABLE))
        _, metrics = jax.jit(runner.over_runs(trainer, len(runs)))(keys, hparams)
        steps = [
            trainer.schedule.env_steps_after((e + 1) * trainer.schedule.updates_per_eval)
            for e in range(trainer.schedule.num_evals)
        ]
        if env_steps is not None and steps != env_steps:
            raise ConfigError("sweep: the static values give different evaluation schedules; sweep them apart")
        env_steps = steps
        all_runs += [dict(run, **setting) for run in runs]
        train.append(jax.tree_util.tree_map(np.asarray, metrics["train"]))
        evals.append(jax.tree_util.tree_map(np.asarray, metrics["eval"]))
    stack = lambda parts: {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}  # noqa: E731
    return {"runs": all_runs, "train": stack(train), "eval": stack(evals), "env_steps": env_steps}
