"""Planning the runs: the run options, presets, the sweep read and expanded into runs, and the checks
a plan passes before anything compiles (swept values, memory, tasks that step on the host).

`plan(...)` turns a validated Config and a parsed sweep into `Program`s, one per combination of the
static fields' values, each holding its runs (seed x traced values) and its Trainer. The CLI and
`mbrlax.sweep` both plan through it; they differ only in how they run the programs.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import itertools
import os
import typing
from typing import Annotated, Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import tyro

from mbrlax.config import renamed, with_sweepable_values
from mbrlax.runner.records import setting_label
from mbrlax.training import INT32_MAX, ConfigError, Trainer


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """Options of the run itself, common to every algorithm."""

    preset: tuple[str, ...] = ()
    """Named settings to start from, applied in order (default: the preset named like --env, if there
    is one); presets that name no task (variants of the method, model sizes) apply on top of the
    preset of --env, e.g. `maac.py --env brax/hopper --preset sac-svg svg1`."""
    seed: int = 0
    """Seed of the first run; run i uses seed + i."""
    num_seeds: int = 1
    """Independent seeds, run together as one vmapped program."""
    sweep: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """A field to sweep, as name=v1,v2,...; repeat the flag for a grid. A traced hyperparameter's values
    share one vmapped program; a static field (a size, a horizon) compiles one program per value."""
    run_dir: str | None = None
    """Folder of this run (default: runs/<algorithm>-<env>-<time>)."""
    resume: str | None = None
    """Run folder of a killed run to continue from its last checkpoint."""
    track: Literal["none", "tensorboard", "wandb"] = "none"
    """Also log to TensorBoard or Weights & Biases."""
    fused: bool = False
    """Compile the whole run as one program (fastest for sweeps; no progress until it ends)."""
    checkpoint_every: int = 1
    """Checkpoint after every this many evaluations (chunked mode)."""
    progress: bool = True
    """Show a progress bar."""
    distributed: bool = False
    """Join a multi-host run (jax.distributed): every process runs its share of the runs on its own
    devices and process 0 gathers the results into the run folder. Without --coordinator, JAX reads
    the coordinator and the process's place from the cluster (SLURM, Open MPI, ...)."""
    coordinator: str | None = None
    """host:port of process 0 in a multi-host run (implies --distributed)."""
    num_processes: int | None = None
    """Processes in a multi-host run (with --coordinator)."""
    process_id: int | None = None
    """This process's index in a multi-host run, 0 to num_processes - 1 (with --coordinator)."""


def check_options(options: RunOptions) -> None:
    """The run options' own checks, and the extras they need, before anything is built or written."""
    if options.num_seeds < 1:
        raise ConfigError(f"num_seeds must be at least 1, got {options.num_seeds}")
    if options.resume and options.fused:
        raise ConfigError(
            "--resume continues a run from its newest checkpoint, which the fused mode neither writes nor reads: "
            "resume without --fused"
        )
    if options.checkpoint_every < 1:
        raise ConfigError(f"checkpoint_every must be at least 1 (evaluations between checkpoints), got {options.checkpoint_every}")
    if not 0 <= options.seed <= INT32_MAX - options.num_seeds:
        raise ConfigError(f"seed must be between 0 and 2**31 - 1 - num_seeds, got {options.seed}")
    needs = {"tensorboard": ("tensorboardX", "tensorboard"), "wandb": ("wandb", "wandb")}
    if options.track in needs:
        module, extra = needs[options.track]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f'--track {options.track} needs {module}: pip install "mbrlax[{extra}]"')


# PRESETS


def preset_config(Config, presets: dict, env: str | None, preset: str | tuple[str, ...] | None):
    """The Config of `env` with `preset` (one name or several, applied in order) on top. Presets
    that name no task are variants of the method (maac.py's svg1, Dreamer's sizes): they go on top
    of the preset of the task they run on; a preset that names a task starts from that task."""
    names = [preset] if isinstance(preset, str) else list(preset or ())
    for name in names:
        if name not in presets:
            close = difflib.get_close_matches(name, presets, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"--preset {name!r} is unknown{hint}; presets are {', '.join(sorted(presets))}")
    if any("env" in presets[name] for name in names):
        overrides = {}
    elif names:
        overrides = dict(presets.get(env or Config().env, {}))
    else:
        overrides = dict(presets.get(env, {})) if env else {}
    for name in names:
        overrides.update(presets[name])
    if env is not None:
        overrides["env"] = env
    return dataclasses.replace(Config(), **overrides)


# SWEEPS: seeds x traced values in one program, a program per combination of static values


class Sweep(NamedTuple):
    """The swept fields and their values, as `parse_sweep` reads them from --sweep."""

    traced: dict[str, list[float]]
    """Fields in the Config's SWEEPABLE: every combination of their values shares one vmapped program."""
    static: dict[str, list]
    """Any other field (a size, a horizon): one program per combination of their values."""


def hparams_of(config) -> dict[str, float]:
    return {name: float(getattr(config, name)) for name in type(config).SWEEPABLE}


def _field_kind(config, name: str):
    """The type a static field's values are read as: its current value's, or for a field that is None
    now (an optional size, a default chosen later) the first type its annotation allows."""
    current = getattr(config, name)
    if current is not None:
        return type(current)
    try:
        hint = typing.get_type_hints(type(config))[name]
    except Exception:  # an annotation that does not resolve: read the values as text
        return str
    allowed = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
    return allowed[0]


def _parse_static(config, name: str, values: str) -> list:
    """Values of a static field, read as its type; "none" sets an optional field to None."""
    current = getattr(config, name)
    if name == "env":
        raise ConfigError("--sweep env: run one command per task")
    if isinstance(current, tuple):
        raise ConfigError(f"--sweep {name}: a tuple field cannot be swept from the command line; use mbrlax.sweep()")
    kind = _field_kind(config, name)
    choices = typing.get_args(kind) if typing.get_origin(kind) is Literal else None

    def parse(text: str):
        if text.lower() == "none" and current is None:
            return None
        if kind is bool:
            return {"true": True, "false": False}[text.lower()]
        if choices is not None:
            if text not in choices:
                raise ValueError(text)
            return text
        return kind(text)

    try:
        return [parse(v.strip()) for v in values.split(",")]
    except (ValueError, KeyError, TypeError):
        expected = (
            "one of " + ", ".join(map(repr, choices)) if choices else f"of type {getattr(kind, '__name__', kind)}"
        )
        raise ConfigError(f"--sweep {name}: values must be {expected}, got {values!r}") from None


def parse_sweep(config, sweep: tuple[str, ...]) -> Sweep:
    """'--sweep alpha=0.1,0.2 --sweep horizon=15,30' -> Sweep(traced={"alpha": [0.1, 0.2]},
    static={"horizon": [15, 30]})."""
    sweepable = type(config).SWEEPABLE
    traced: dict[str, list[float]] = {}
    static: dict[str, list] = {}
    for item in sweep:
        name, sep, values = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not values:
            raise ConfigError(f"--sweep takes name=v1,v2,...; got {item!r}")
        if name in traced or name in static:
            raise ConfigError(f"--sweep {name} is given twice")
        if name in sweepable:
            try:
                traced[name] = [float(v) for v in values.split(",")]
            except ValueError:
                raise ConfigError(f"--sweep {name}: values must be numbers, got {values!r}") from None
        elif name in {field.name for field in dataclasses.fields(config)}:
            static[name] = _parse_static(config, name, values)
        elif renamed(type(config), name):
            raise ConfigError(f"--sweep {name}: {renamed(type(config), name)}")
        else:
            close = difflib.get_close_matches(name, [f.name for f in dataclasses.fields(config)], n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"--sweep {name}: not a field of the Config{hint}")
    return Sweep(traced, static)


def check_swept_values(config, values: dict) -> None:
    """A swept value gets the checks the same value given alone gets: the Config with it validates."""
    if not values:
        return
    try:
        dataclasses.replace(config, **values).validate()
    except ConfigError as error:
        raise ConfigError(f"--sweep {setting_label(values)}: {error}") from None
    except TypeError as error:  # a value of a type the field's own checks cannot compare
        raise ConfigError(f"--sweep {setting_label(values)}: {error}") from None


def static_settings(static: dict[str, list]) -> list[dict]:
    """Every combination of the static fields' values ([{}] without any)."""
    return [dict(zip(static, values)) for values in itertools.product(*static.values())]


def seeded_runs(config, traced: dict[str, list[float]], seed: int, num_seeds: int) -> list[dict]:
    """One dict per run: its seed and its value of every traced hyperparameter; each combination of
    traced values is checked as `check_swept_values` checks it."""
    base = hparams_of(config)
    runs = []
    for values in itertools.product(*traced.values()) if traced else [()]:
        check_swept_values(config, dict(zip(traced, values)))
        for s in range(num_seeds):
            hp = dict(base, **dict(zip(traced.keys(), values)))
            runs.append({"seed": seed + s, **hp})
    return runs


def expand_runs(config, options: RunOptions) -> list[dict]:
    """The runs of `options`' seeds and traced sweep (static fields left out), read from the options."""
    if options.num_seeds < 1:
        raise ConfigError(f"num_seeds must be at least 1, got {options.num_seeds}")
    return seeded_runs(config, parse_sweep(config, options.sweep).traced, options.seed, options.num_seeds)


def batch_inputs(runs: list[dict], config):
    """The runs' seed keys and `config` with each run's values of its sweepable fields, each stacked
    along a leading run axis: the arguments of a vmapped trainer."""
    keys = jnp.stack([jax.random.PRNGKey(r["seed"]) for r in runs])
    values = {name: [r[name] for r in runs] for name in type(config).SWEEPABLE}
    return keys, with_sweepable_values(config, values)


# CHECKS


def device_memory_bytes() -> tuple[int, str]:
    """Memory of one local device and its name: the accelerator's limit, or a CPU's physical memory."""
    device = jax.local_devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"one {device.device_kind}"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's memory"


def check_memory(trainer: Trainer, runs: list[dict], config) -> None:
    """Refuse, before compiling, runs whose state (replay buffers, parameters, optimiser state) alone
    does not fit in the devices' memory; a ConfigError names the sizes and what to lower. The state
    is a lower bound of what a run needs: the training step's activations come on top."""
    keys, configs = batch_inputs(runs[:1], config)
    shapes = jax.eval_shape(trainer.init, keys[0], jax.tree_util.tree_map(lambda v: v[0], configs))
    per_run = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(shapes))
    devices = jax.local_device_count()
    per_device = per_run * -(-len(runs) // devices)
    available, name = device_memory_bytes()
    if per_device > 0.9 * available:
        fit = max(int(0.9 * available // per_run), 0) * devices
        what = (
            f"run at most {fit} at once (fewer --num-seeds or sweep values), or lower"
            if fit
            else "even one run does not fit: lower"
        )
        raise ConfigError(
            f"{len(runs)} run(s) need {per_device / 2**30:.1f} GiB of state per device (replay buffers, parameters "
            f"and optimiser state: {per_run / 2**30:.2f} GiB a run), more than {name} has "
            f"({available / 2**30:.1f} GiB); {what} the buffer capacity or total steps"
        )


def steps_on_host(trainer: Trainer) -> bool:
    """Whether the task steps on the host (gym/), as the task's spec says; such a Trainer must also
    say how a resumed run starts new episodes (`fresh_episodes`)."""
    on_host = trainer.spec is not None and trainer.spec.steps_on_host
    if on_host and trainer.fresh_episodes is None:
        raise ConfigError("a task that steps on the host needs a Trainer that says its fresh_episodes")
    return on_host


def check_host_task(trainer: Trainer, config, runs: list[dict]) -> None:
    """A task that steps on the host does so through a callback, which cannot be vmapped: one run a
    process."""
    if steps_on_host(trainer) and len(runs) > 1:
        raise ConfigError(
            f"{config.env} steps on the host, so a process runs one run of it, not {len(runs)}; run the seeds "
            "or sweep values as separate processes (--coordinator host:port --num-processes N --process-id i)"
        )


# THE PLAN


class Program(NamedTuple):
    """One compiled program's worth of runs: a combination of static values and the runs that share it."""

    setting: dict
    """The static fields' values of this program ({} without a static sweep)."""
    config: Any
    """The Config with them."""
    runs: list[dict]
    """This process's runs of it: each one's seed, traced values and the setting's values."""
    trainer: Trainer


class Plan(NamedTuple):
    programs: list[Program]
    every_run: list[dict]
    """Every process's runs, in the order of the programs (a single host: the programs' runs)."""


def plan(
    config,
    sweep: Sweep,
    make_train: Callable[[Any], Trainer],
    seed: int,
    num_seeds: int,
    share: Callable[[list[dict]], list[dict]] = lambda runs: runs,
) -> Plan:
    """The programs of `num_seeds` seeds from `seed` x the values of `sweep`, each built by
    `make_train` and checked before any compiles: swept values as a value given alone is, the
    state's size against the devices' memory, a host-stepped task one run a process. `config` is
    validated, and `sweep` parsed, by the caller (once each); `share` picks this process's runs."""
    programs, every_run = [], []
    for setting in static_settings(sweep.static):
        check_swept_values(config, setting)
        setting_config = dataclasses.replace(config, **setting)
        runs = [dict(run, **setting) for run in seeded_runs(setting_config, sweep.traced, seed, num_seeds)]
        every_run += runs
        runs = share(runs)
        trainer = make_train(setting_config)
        check_host_task(trainer, setting_config, runs)
        check_memory(trainer, runs, config)
        programs.append(Program(setting, setting_config, runs, trainer))
    return Plan(programs, every_run)
