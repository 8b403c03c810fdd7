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

from mbrlax.runner.cli import main, read_saved_run, steps_said
from mbrlax.runner.execution import (
    NonFiniteError,
    RunStopped,
    all_finite,
    execute,
    execute_fused,
    kept_checkpoint,
    over_runs,
    restore_newest,
    run_programs,
    shard_runs,
    stopped_by,
)
from mbrlax.runner.hosts import gather_rows, multi_host, processes_where, share_of_runs, start_distributed
from mbrlax.runner.planning import (
    Plan,
    Program,
    RunOptions,
    Sweep,
    batch_inputs,
    check_host_task,
    check_memory,
    check_options,
    check_swept_values,
    device_memory_bytes,
    expand_runs,
    hparams_of,
    parse_sweep,
    plan,
    preset_config,
    seeded_runs,
    static_settings,
    steps_on_host,
)
from mbrlax.runner.records import (
    Checkpoints,
    FolderLock,
    MetricsLog,
    ProcessCheckpoints,
    check_run_dir,
    default_run_dir,
    device_description,
    disk_full,
    git_commit,
    holds_a_run,
    jsonable,
    make_run_dir,
    metric_rows,
    plot_curves,
    quiet_background_errors,
    require_free_space,
    setting_label,
    settings_of,
    strict_json,
    summarise,
    swept_names,
    write_collected,
    write_text_whole,
    write_whole,
)
from mbrlax.training import ConfigError

_preset_config = preset_config  # its name before the runner was split, which tests still use

__all__ = [
    "all_finite",
    "batch_inputs",
    "check_host_task",
    "check_memory",
    "check_options",
    "check_run_dir",
    "check_swept_values",
    "Checkpoints",
    "ConfigError",
    "default_run_dir",
    "device_description",
    "device_memory_bytes",
    "disk_full",
    "execute",
    "execute_fused",
    "expand_runs",
    "FolderLock",
    "gather_rows",
    "git_commit",
    "holds_a_run",
    "hparams_of",
    "jsonable",
    "kept_checkpoint",
    "main",
    "make_run_dir",
    "metric_rows",
    "MetricsLog",
    "multi_host",
    "NonFiniteError",
    "over_runs",
    "parse_sweep",
    "Plan",
    "plan",
    "plot_curves",
    "_preset_config",
    "preset_config",
    "ProcessCheckpoints",
    "processes_where",
    "Program",
    "quiet_background_errors",
    "read_saved_run",
    "require_free_space",
    "restore_newest",
    "run_programs",
    "RunOptions",
    "RunStopped",
    "seeded_runs",
    "setting_label",
    "settings_of",
    "shard_runs",
    "share_of_runs",
    "start_distributed",
    "static_settings",
    "steps_on_host",
    "steps_said",
    "stopped_by",
    "strict_json",
    "summarise",
    "Sweep",
    "swept_names",
    "write_collected",
    "write_text_whole",
    "write_whole",
]
