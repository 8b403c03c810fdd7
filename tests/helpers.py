"""Small helpers shared by the algorithm tests."""

from __future__ import annotations

import dataclasses
import importlib
import pathlib
import shutil
import sys


def cli_args(config) -> list[str]:
    """The command-line flags that give `config`: its fields that differ from its class's defaults."""
    defaults = type(config)()
    args = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if value != getattr(defaults, field.name):
            values = value if isinstance(value, tuple) else (value,)
            args += [f"--{field.name.replace('_', '-')}", *map(str, values)]
    return args


# PETS's small planning settings on pendulum for the learning tests (PETS's and POPLIN's share them,
# so their -400 bar is one claim): members of 2 x 32, CEM over 50 sequences with 5 elites and 3
# iterations, one random and six planned episodes, an evaluation after the seventh.
SMALL_PENDULUM_PLANNING = dict(
    total_steps=1400, eval_every=1200, model_hidden_sizes=(32, 32), population=50, num_elites=5, cem_iterations=3
)


def random_pendulum_return(episodes: int = 50) -> float:
    """The mean return of uniformly random torques on pendulum, `episodes` episodes: the learning
    tests' floor (about -1200)."""
    import jax

    from mbrlax import envs
    from mbrlax.loops.episodes import evaluate_episodes

    env, spec = envs.make("pendulum", num_envs=episodes)

    def uniform(carry, obs, key):
        return jax.random.uniform(key, (episodes, 1), minval=-2.0, maxval=2.0), carry

    returns = evaluate_episodes(env, jax.random.PRNGKey(1), episodes, spec.episode_length, uniform)
    return float(returns["eval_return"])


# The entry points as the command line runs them: the module under mbrlax.algorithms and the preset
# flags that give its `tiny` run (PETS with iLQR is PETS with a second preset).
TINY_PRESETS = {"pets-ilqr": ("pets", ["tiny", "tiny-ilqr"])}


def run_sharded_then_resume(name: str, folder: str) -> None:
    """In a process that sees several devices: the tiny run of two seeds in chunked mode into
    `folder`/whole, then a copy of it without its newest checkpoint (a run killed after its
    previous one) resumed in `folder`/resumed. Called by the contract test in a fresh process."""
    module_name, presets = TINY_PRESETS.get(name, (name, ["tiny"]))
    main = importlib.import_module(f"mbrlax.algorithms.{module_name}").main
    whole, resumed = pathlib.Path(folder) / "whole", pathlib.Path(folder) / "resumed"
    if main(["--preset", *presets, "--num-seeds", "2", "--no-progress", "--run-dir", str(whole)]):
        sys.exit("the sharded run failed")
    shutil.copytree(whole, resumed)
    steps = sorted(int(p.name) for p in (resumed / "checkpoints").iterdir() if p.name.isdigit())
    shutil.rmtree(resumed / "checkpoints" / str(steps[-1]))
    (resumed / "summary.json").unlink()
    if main(["--resume", str(resumed), "--no-progress"]):
        sys.exit("the sharded resume failed")
