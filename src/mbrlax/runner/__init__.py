"""The runner every algorithm file ends in: CLI, seeds and sweeps, progress, logging, evaluation,
checkpoints and resume, a run folder with a curve and a summary.

An algorithm file provides a frozen `Config` dataclass (with fields `env`, `total_steps`,
`eval_every`, `eval_episodes`, a `SWEEPABLE` tuple naming the fields that travel as traced values,
and a `validate()` that raises `ConfigError`), a dict of presets, and `make_train(config) -> Trainer`.
`main(...)` does the rest:

    python algorithms/pets.py --env pendulum --num-seeds 4 --sweep alpha=0.1,0.2

Runs (seeds x traced sweep values) are one `vmap`ped program, sharded over the local devices when
they divide evenly; each value of a swept static field is a program of its own. The chunked loop
calls the jitted `update` and `evaluate` of the Trainer, writes a row per run per evaluation,
checkpoints the whole batched state with orbax, and `--resume DIR` continues from the last
checkpoint to the same result as an uninterrupted run.

The parts, each importing only those listed before it:
- `records`: the run folder's files (written whole), its lock, metrics, curves, summary, checkpoints;
- `hosts`: multi-host runs through jax.distributed;
- `planning`: run options, presets, the sweep, the checks before compiling, and `plan()`, which the
  CLI and `mbrlax.sweep` both use to turn a Config into `Program`s;
- `execution`: the chunked loop, the fused mode, and running a plan's programs into a folder;
- `cli`: `main`.
"""

from mbrlax.runner.cli import main
from mbrlax.runner.execution import (
    NonFiniteError,
    RunStopped,
    execute,
    execute_fused,
    jit_over_runs,
    over_runs,
    run_programs,
)
from mbrlax.runner.planning import (
    Plan,
    Program,
    RunOptions,
    Sweep,
    batch_inputs,
    expand_runs,
    hparams_of,
    parse_sweep,
    plan,
    preset_config,
)
from mbrlax.training import ConfigError

# The entry points: the CLI, planning a run's programs, and executing them. What each part uses
# inside (the folder's files and lock, checkpoints, hosts, the checks) is imported from its module.
__all__ = [
    "batch_inputs",
    "ConfigError",
    "execute",
    "execute_fused",
    "expand_runs",
    "hparams_of",
    "jit_over_runs",
    "main",
    "NonFiniteError",
    "over_runs",
    "parse_sweep",
    "Plan",
    "plan",
    "preset_config",
    "Program",
    "run_programs",
    "RunOptions",
    "RunStopped",
    "Sweep",
]
