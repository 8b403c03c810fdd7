"""The runner every algorithm file ends in: CLI, seeds and sweeps, progress, logging, evaluation,
checkpoints and resume, a run folder with a curve and a summary.

An algorithm file provides a frozen `Config` dataclass (with fields `env`, `total_steps`,
`eval_every`, `eval_episodes`, a `SWEEPABLE` tuple naming the fields that travel as traced values,
and a `validate()` that raises `ConfigError`), a dict of presets, and `make_train(config) -> Trainer`.
`main(...)` does the rest:

    python algorithms/pets.py --env pendulum --num-seeds 4 --sweep alpha=0.1,0.2

Runs (seeds x traced sweep values) are one `vmap`ped program, sharded over the local devices when
they divide evenly; each value of a swept static field is a program of its own. The chunked loop calls the jitted `update` and `evaluate` of the Trainer, writes a
row per run per evaluation, checkpoints the whole batched state with orbax, and `--resume DIR`
continues from the last checkpoint to the same result as an uninterrupted run.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime
import difflib
import errno
import fcntl
import importlib.util
import itertools
import json
import math
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import typing
from typing import Annotated, Any, Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np
import tyro

from mbrlax.envs import gym_bridge
from mbrlax.training import INT32_MAX, ConfigError, Trainer, split_keys


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


class NonFiniteError(RuntimeError):
    """A loss or the parameters turned NaN or infinite."""


class RunStopped(RuntimeError):
    """The run stopped before its end (Ctrl-C, a full disk) with its last complete checkpoint kept;
    the message says where it stopped and what is kept. `exit_code` is the CLI's."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def check_options(options: RunOptions) -> None:
    """The run options' own checks, and the extras they need, before anything is built or written."""
    if options.num_seeds < 1:
        raise ConfigError(f"num_seeds must be at least 1, got {options.num_seeds}")
    if options.checkpoint_every < 1:
        raise ConfigError(f"checkpoint_every must be at least 1 (evaluations between checkpoints), got {options.checkpoint_every}")
    if not 0 <= options.seed <= INT32_MAX - options.num_seeds:
        raise ConfigError(f"seed must be between 0 and 2**31 - 1 - num_seeds, got {options.seed}")
    needs = {"tensorboard": ("tensorboardX", "tensorboard"), "wandb": ("wandb", "wandb")}
    if options.track in needs:
        module, extra = needs[options.track]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f'--track {options.track} needs {module}: pip install "mbrlax[{extra}]"')


# RUNS: seeds x sweep values


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


def parse_sweep(config, sweep: tuple[str, ...]) -> tuple[dict[str, list[float]], dict[str, list]]:
    """'--sweep alpha=0.1,0.2 --sweep horizon=15,30' -> ({"alpha": [0.1, 0.2]}, {"horizon": [15, 30]}):
    the traced fields (one vmapped program) and the static ones (one program per value)."""
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
        elif hasattr(config, name) and not name.startswith("_"):
            static[name] = _parse_static(config, name, values)
        else:
            close = difflib.get_close_matches(name, [f.name for f in dataclasses.fields(config)], n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"--sweep {name}: not a field of the Config{hint}")
    return traced, static


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


def expand_runs(config, options: RunOptions) -> list[dict]:
    """One dict per run: its seed and its value of every traced hyperparameter."""
    if options.num_seeds < 1:
        raise ConfigError(f"num_seeds must be at least 1, got {options.num_seeds}")
    grid, _ = parse_sweep(config, options.sweep)
    base = hparams_of(config)
    runs = []
    for values in itertools.product(*grid.values()) if grid else [()]:
        check_swept_values(config, dict(zip(grid, values)))
        for s in range(options.num_seeds):
            hp = dict(base, **dict(zip(grid.keys(), values)))
            runs.append({"seed": options.seed + s, **hp})
    return runs


def swept_names(runs: list[dict]) -> list[str]:
    """The hyperparameters (static or traced) whose value differs between runs."""
    return [name for name in runs[0] if name != "seed" and len({r[name] for r in runs}) > 1]


def batch_inputs(runs: list[dict], sweepable: tuple[str, ...]):
    keys = jnp.stack([jax.random.PRNGKey(r["seed"]) for r in runs])
    hparams = {name: jnp.asarray([r[name] for r in runs], jnp.float32) for name in sweepable}
    return keys, hparams


def shard_runs(tree):
    """Put the leading run axis across the local devices when it divides evenly; else leave it."""
    devices = jax.local_devices()
    leading = jax.tree_util.tree_leaves(tree)[0].shape[0]
    if len(devices) == 1 or leading % len(devices):
        return tree
    mesh = jax.sharding.Mesh(np.array(devices), ("runs",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("runs"))
    return jax.device_put(tree, sharding)


def over_runs(fn, num_runs: int, in_axes=0):
    """`jax.vmap(fn, in_axes)` over the leading run axis. A single run calls `fn` unbatched and puts
    the run axis back: a vmapped network's every matmul becomes a batched dot, which XLA's CPU
    backend runs up to 3x slower even for a batch of one (measured on Dreamer's update)."""
    if num_runs > 1:
        return jax.vmap(fn, in_axes)
    axes = in_axes if isinstance(in_axes, tuple) else None

    def single(*args):
        batched = axes or (in_axes,) * len(args)
        args = [jax.tree_util.tree_map(lambda x: x[0], a) if ax == 0 else a for a, ax in zip(args, batched)]
        return jax.tree_util.tree_map(lambda x: x[None], fn(*args))

    return single


# MULTI-HOST: each process runs a contiguous share of the runs; process 0 gathers the rows


def start_distributed(options: RunOptions) -> None:
    if not (options.distributed or options.coordinator):
        if options.num_processes is not None or options.process_id is not None:
            raise ConfigError(
                "--num-processes and --process-id join a multi-host run only with --coordinator host:port "
                "(or --distributed under a cluster's launcher); alone they would run every run in every process"
            )
        return
    try:
        jax.distributed.initialize(options.coordinator, options.num_processes, options.process_id)
    except (RuntimeError, ValueError) as error:
        message = " ".join(str(error).split())
        raise ConfigError(f"--distributed: could not join the multi-host run: {message}") from None


def share_of_runs(runs: list[dict]) -> list[dict]:
    """This process's contiguous share of `runs` (all of them on a single host)."""
    count, index = jax.process_count(), jax.process_index()
    if len(runs) % count:
        raise ConfigError(
            f"{len(runs)} runs do not divide among {count} processes; make seeds x sweep values a multiple of {count}"
        )
    share = len(runs) // count
    return runs[index * share : (index + 1) * share]


def gather_rows(rows: list[dict], shares: list[int], every_run: list[dict]) -> list[dict]:
    """Every process's metric rows, on every process, with global run indices, in the order a single
    host writes them. Each process ran `shares[g]` runs of static program g, so all hold rows of the
    same layout: only the metrics travel (one float table); the runs' seeds and settings are known
    everywhere (`every_run`), and the steps are the same for every process's j-th row."""
    from jax.experimental import multihost_utils

    known = {"run", "update", "env_steps", *every_run[0]}
    metrics = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in known]
    table = np.array([[r.get(k, np.nan) for k in metrics] for r in rows], np.float32).reshape(len(rows), len(metrics))
    tables = np.asarray(multihost_utils.process_allgather(table))
    starts = np.cumsum([0, *shares])  # where each static program's runs start, locally
    count = jax.process_count()
    gathered = []
    for process in range(count):
        for row, values in zip(rows, tables[process]):
            program = int(np.searchsorted(starts, row["run"], side="right")) - 1
            run = int(count * starts[program] + process * shares[program] + row["run"] - starts[program])
            new = {"run": run, **every_run[run], "update": row["update"], "env_steps": row["env_steps"]}
            new.update({k: float(v) for k, v in zip(metrics, values) if k in row})
            gathered.append((program, row["update"], run, new))
    return [new for *_, new in sorted(gathered, key=lambda item: item[:3])]


# CHECKS


def device_memory_bytes() -> tuple[int, str]:
    """Memory of one local device and its name: the accelerator's limit, or a CPU's physical memory."""
    device = jax.local_devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"one {device.device_kind}"
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's memory"


def check_memory(trainer: Trainer, runs: list[dict], sweepable: tuple[str, ...]) -> None:
    """Refuse, before compiling, runs whose state (replay buffers, parameters, optimiser state) alone
    does not fit in the devices' memory; a ConfigError names the sizes and what to lower. The state
    is a lower bound of what a run needs: the training step's activations come on top."""
    keys, hparams = batch_inputs(runs[:1], sweepable)
    shapes = jax.eval_shape(trainer.init, keys[0], {k: v[0] for k, v in hparams.items()})
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


def check_host_task(config, runs: list[dict]) -> None:
    """gym/ tasks step on the host through a callback, which cannot be vmapped: one run a process."""
    if gym_bridge.is_gym(config.env) and len(runs) > 1:
        raise ConfigError(
            f"{config.env} steps on the host, so a process runs one run of it, not {len(runs)}; run the seeds "
            "or sweep values as separate processes (--coordinator host:port --num-processes N --process-id i)"
        )


def all_finite(tree) -> jax.Array:
    leaves = [jnp.isfinite(x).all() for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _first_non_finite(metrics: dict) -> str | None:
    # Losses first: when one turns NaN everything downstream of it does too, and it is the cause.
    for name, value in sorted(metrics.items(), key=lambda item: "loss" not in item[0]):
        if not np.all(np.isfinite(np.asarray(value))):
            return name
    return None


# FILES: every file of a run folder is written whole or not at all


def strict_json(value, **kwargs) -> str:
    """JSON that every parser reads: a NaN or infinite number (which Python's json writes as a bare
    NaN) becomes null."""

    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(value), allow_nan=False, **kwargs)


def write_whole(path: pathlib.Path, write: Callable[[pathlib.Path], None]) -> None:
    """`write(temporary_path)`, then rename it to `path`: a kill or a full disk leaves the old file
    (or none), never a half-written one."""
    # Named by the process, as the processes of a multi-host run may share the folder.
    partial = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
    try:
        write(partial)
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_text_whole(path: pathlib.Path, text: str) -> None:
    write_whole(path, lambda partial: partial.write_text(text))


def disk_full(error: BaseException | None) -> bool:
    """Whether `error` (or one it was raised from: orbax and tensorstore wrap their OS errors) says
    the disk or the quota is full."""
    while error is not None:
        if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(error) or "Disk quota exceeded" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def require_free_space(folder: pathlib.Path, state_bytes: int) -> None:
    """An OSError(ENOSPC) before a checkpoint is begun on a disk that cannot hold it: orbax's writer
    threads meet a full disk with hundreds of lines of tracebacks before the error reaches the run."""
    needed = int(state_bytes * 1.1) + 2**18  # the format's metadata and the metrics files besides
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OSError(errno.ENOSPC, f"{free / 2**20:.1f} MiB free, a checkpoint needs {needed / 2**20:.1f} MiB")


@contextlib.contextmanager
def quiet_background_errors():
    """Keep orbax's writer threads from printing their tracebacks (a disk that fills during a save):
    the error that matters reaches the run from `wait_until_finished` and is reported in one line."""
    import logging
    import threading

    absl_logger = logging.getLogger("absl")
    level, thread_hook, unraisable_hook = absl_logger.level, threading.excepthook, sys.unraisablehook
    absl_logger.setLevel(logging.CRITICAL)
    threading.excepthook = lambda args: None
    sys.unraisablehook = lambda unraisable: None
    try:
        yield
    finally:
        absl_logger.setLevel(level)
        threading.excepthook, sys.unraisablehook = thread_hook, unraisable_hook


class FolderLock:
    """An exclusive lock on a run folder for the run's life (`flock` on its `.lock` file), so a
    second process cannot write the same folder. A multi-host run's processes share their folder by
    design: process 0 locks the folder and process i > 0 its own `process-<i>/`. The kernel drops
    the lock when the process ends, however it ends, so a killed run resumes at once."""

    def __init__(self, folder: pathlib.Path):
        self.file = open(folder / ".lock", "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                # A file system without locks (some network mounts): run unlocked, and say so.
                print(f"note: {folder} cannot be locked ({error.strerror}); run one process per folder", file=sys.stderr)
                return
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise ConfigError(
                f"{folder} is being written by {holder}; wait for that run to end, or use another --run-dir"
            ) from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        self.file.flush()

    def release(self) -> None:
        if not self.file.closed:
            self.file.close()


def holds_a_run(folder: pathlib.Path) -> bool:
    """Whether `folder` has anything in it but a lock file (a run killed before its config.json)."""
    return folder.is_dir() and any(entry.name != ".lock" for entry in folder.iterdir())


def check_run_dir(run_dir: pathlib.Path, resume: bool) -> None:
    """Refuse, before anything is built or written, a folder that cannot be this run's."""
    try:
        _check_run_dir(run_dir, resume)
    except OSError as error:  # a folder this user may not even look into
        raise ConfigError(f"--run-dir {run_dir}: {error.strerror or error}") from None


def _check_run_dir(run_dir: pathlib.Path, resume: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir} is a file, not a folder")
    if not resume and holds_a_run(run_dir):
        raise ConfigError(
            f"--run-dir {run_dir} already holds a run; continue it with --resume {run_dir}, or name a fresh folder"
        )
    existing = next(parent for parent in [run_dir, *run_dir.absolute().parents] if parent.exists())
    if not existing.is_dir():
        raise ConfigError(f"--run-dir {run_dir}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--run-dir {run_dir}: {existing} cannot be written to")


def make_run_dir(run_dir: pathlib.Path, lock_dir: pathlib.Path, resume: bool, multi_host: bool, config_json: str):
    """Create (or, resuming, reopen) the run folder, lock it and write its config.json; returns the
    lock. A folder that cannot be written is a ConfigError, and leaves nothing behind."""
    created = not run_dir.exists()
    try:
        lock_dir.mkdir(parents=True, exist_ok=True)
        lock = FolderLock(lock_dir)
        # Checked again under the lock: another run may have taken the folder since the first check.
        if not resume and not multi_host and holds_a_run(run_dir):
            lock.release()
            raise ConfigError(
                f"--run-dir {run_dir} was just taken by another run; continue it with --resume {run_dir}, "
                "or name a fresh folder"
            )
        if not resume:
            write_text_whole(run_dir / "config.json", config_json)
        return lock
    except OSError as error:
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise ConfigError(f"cannot write the run folder {run_dir}: {error.strerror or error}") from None


# LOGGING


class MetricsLog:
    """Rows to metrics.jsonl (every update) and metrics.csv (every evaluation); optional trackers."""

    def __init__(self, run_dir: pathlib.Path, track: str, config: dict, history: list[dict]):
        self.run_dir = run_dir
        self.rows = list(history)
        self.writer = None
        self.wandb = None
        if track == "tensorboard":
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                raise ConfigError('--track tensorboard needs tensorboardX: pip install "mbrlax[tensorboard]"') from None
            self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        elif track == "wandb":
            try:
                import wandb
            except ImportError:
                raise ConfigError('--track wandb needs wandb: pip install "mbrlax[wandb]"') from None
            self.wandb = wandb.init(project="mbrlax", name=run_dir.name, config=config, dir=str(run_dir))
        self._rewrite()

    def _rewrite(self):
        # Rewritten from the kept history, so a resumed run's files hold no rows past its checkpoint.
        write_text_whole(self.run_dir / "metrics.jsonl", "".join(strict_json(row) + "\n" for row in self.rows))
        self._write_csv()

    def _write_csv(self):
        eval_rows = [r for r in self.rows if "eval_return" in r]
        if not eval_rows:
            return
        columns = list(dict.fromkeys(k for r in eval_rows for k in r))

        def write(path):
            with open(path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(eval_rows)

        write_whole(self.run_dir / "metrics.csv", write)

    def add(self, rows: list[dict]):
        self.rows.extend(rows)
        path = self.run_dir / "metrics.jsonl"
        size = path.stat().st_size if path.exists() else 0
        try:
            with open(path, "a") as f:
                f.write("".join(strict_json(row) + "\n" for row in rows))
        except BaseException:
            # A full disk or a kill mid-write: cut the file back to its last whole row.
            with contextlib.suppress(OSError), open(path, "r+") as f:
                f.truncate(size)
            raise
        if any("eval_return" in r for r in rows):
            self._write_csv()
        for row in rows:
            step = row["env_steps"]
            scalars = {k: v for k, v in row.items() if isinstance(v, float) and k not in ("env_steps",)}
            if self.writer is not None:
                for k, v in scalars.items():
                    self.writer.add_scalar(f"run{row['run']}/{k}", v, step)
            if self.wandb is not None:
                self.wandb.log({f"run{row['run']}/{k}": v for k, v in scalars.items()}, step=step)

    def close(self):
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()


def metric_rows(runs, metrics: dict, env_steps: int, update: int) -> list[dict]:
    host = jax.device_get(metrics)
    rows = []
    for i, run in enumerate(runs):
        row = {"run": i, **run, "update": update, "env_steps": env_steps}
        row.update({k: float(np.asarray(v)[i]) for k, v in host.items()})
        rows.append(row)
    return rows


def setting_label(values: dict) -> str:
    """{"alpha": 0.1, "horizon": 15} -> "alpha=0.1, horizon=15"."""

    def show(value) -> str:
        return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)

    return ", ".join(f"{name}={show(value)}" for name, value in values.items())


def settings_of(rows: list[dict], swept: list[str]) -> dict[str, set[int]]:
    """The runs of each swept setting, keyed by a label such as "alpha=0.1, model_lr=0.001" ("" when
    nothing is swept)."""
    groups: dict[str, set[int]] = {}
    for r in rows:
        label = setting_label({name: r[name] for name in swept})
        groups.setdefault(label, set()).add(r["run"])
    return groups


def plot_curves(rows: list[dict], path: pathlib.Path, title: str, swept: list[str] = ()):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eval_rows = [r for r in rows if "eval_return" in r]
    if not eval_rows:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    runs = sorted({r["run"] for r in eval_rows})
    for run in runs:
        pts = [(r["env_steps"], r["eval_return"]) for r in eval_rows if r["run"] == run]
        lines = ax.plot(*zip(*pts), marker="o", ms=3, alpha=0.4 if len(runs) > 1 else 1.0, lw=1)
        if len(runs) == 1:
            lines[0].set_label("evaluation")
            train = [(r["env_steps"], r["train_episode_return"]) for r in rows if "train_episode_return" in r]
            if train:
                ax.plot(*zip(*train), ls=":", color=lines[0].get_color(), label="last training episode")
                ax.legend()
    if len(runs) > 1:
        groups = settings_of(eval_rows, swept)
        for label, members in groups.items():
            # Per setting: a static sweep of total_steps gives settings different evaluation steps.
            steps = sorted({r["env_steps"] for r in eval_rows if r["run"] in members})
            returns = np.array(
                [[r["eval_return"] for r in eval_rows if r["env_steps"] == s and r["run"] in members] for s in steps]
            )
            mean, spread = returns.mean(1), returns.std(1)
            name = f"{label}: " if label else ""
            line = ax.plot(steps, mean, lw=2, label=f"{name}mean of {len(members)} runs")[0]
            ax.fill_between(steps, mean - spread, mean + spread, color=line.get_color(), alpha=0.15)
        ax.legend(fontsize=7 if len(groups) > 3 else None)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        write_whole(path, lambda partial: fig.savefig(partial, dpi=100, format="png"))
    finally:
        plt.close(fig)


def device_description() -> str:
    devices = jax.local_devices()
    hosts = f"{jax.process_count()} processes x " if jax.process_count() > 1 else ""
    return f"{hosts}{len(devices)} x {devices[0].platform}:{devices[0].device_kind}"


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=pathlib.Path(__file__).parent,
            timeout=5,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# CHECKPOINTS


class Checkpoints:
    """The whole batched state (parameters, optimiser states, buffers, normalisers, RNG) with orbax,
    plus the host-side history that goes with it."""

    def __init__(self, directory: pathlib.Path):
        import orbax.checkpoint as ocp

        self.ocp, self.directory = ocp, directory
        self.manager = self._manager()

    def _manager(self):
        # Orbax writes a checkpoint into a temporary folder and renames it when whole; one left by a
        # kill or a full disk is removed when the manager opens the folder.
        options = self.ocp.CheckpointManagerOptions(max_to_keep=2, create=True, cleanup_tmp_directories=True)
        return self.ocp.CheckpointManager(self.directory.absolute(), options=options)

    def steps(self) -> list[int]:
        """The updates after which a whole checkpoint was written, oldest first (orbax names each
        whole one by its step; a temporary folder is not one)."""
        if not self.directory.is_dir():
            return []
        return sorted(int(p.name) for p in self.directory.iterdir() if p.is_dir() and p.name.isdigit())

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def discard_partial(self) -> None:
        """Remove what a save that did not finish left (the manager is not used after this)."""
        with contextlib.suppress(Exception):
            self.manager.close()
        for partial in self.directory.glob("*.orbax-checkpoint-tmp*"):
            shutil.rmtree(partial, ignore_errors=True)

    def set_aside(self, update: int) -> pathlib.Path:
        """Move a checkpoint that does not restore out of the way (to `damaged-<update>` beside the
        checkpoints), so the run can write that update again; returns where it went."""
        aside = self.directory.parent / f"damaged-checkpoint-{update}"
        shutil.rmtree(aside, ignore_errors=True)
        (self.directory / str(update)).rename(aside)
        self.manager.reload()
        return aside

    # The leaves are saved by their index in the flattened state; orbax refuses empty arrays (MJX's
    # data has some), which come back from the state being restored into instead.

    def save(self, update: int, state, meta: dict):
        ocp = self.ocp
        leaves = {str(i): x for i, x in enumerate(jax.tree_util.tree_leaves(state)) if x.size}
        require_free_space(self.directory, sum(x.nbytes for x in leaves.values()))
        with quiet_background_errors():
            self.manager.save(
                update, args=ocp.args.Composite(state=ocp.args.StandardSave(leaves), meta=ocp.args.JsonSave(meta))
            )
            self.manager.wait_until_finished()

    def restore(self, update: int, like):
        ocp = self.ocp
        like_leaves, treedef = jax.tree_util.tree_flatten(like)
        abstract = {str(i): ocp.utils.to_shape_dtype_struct(x) for i, x in enumerate(like_leaves) if x.size}
        restored = self.manager.restore(
            update, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        )
        leaves = [restored["state"][str(i)] if x.size else x for i, x in enumerate(like_leaves)]
        return jax.tree_util.tree_unflatten(treedef, leaves), restored["meta"]

    def close(self):
        self.manager.close()


class ProcessCheckpoints:
    """The same for one process of a multi-host run, whose share of the runs lives on its own devices
    only: orbax saves arrays that span the processes, so here each process writes its leaves to an
    .npz of its own (written aside, then renamed, so a kill never leaves half a checkpoint)."""

    def __init__(self, directory: pathlib.Path, keep: int = 2):
        self.directory, self.keep = directory, keep
        directory.mkdir(parents=True, exist_ok=True)

    def steps(self) -> list[int]:
        return sorted(int(path.stem) for path in self.directory.glob("*.npz") if path.stem.isdigit())

    def latest(self) -> int | None:
        updates = self.steps()
        return updates[-1] if updates else None

    def discard_partial(self) -> None:
        for partial in self.directory.glob("*.partial"):
            partial.unlink(missing_ok=True)

    def set_aside(self, update: int) -> pathlib.Path:
        aside = self.directory.parent / f"damaged-checkpoint-{update}.npz"
        (self.directory / f"{update}.npz").replace(aside)
        return aside

    def save(self, update: int, state, meta: dict):
        leaves = {f"leaf{i}": np.asarray(x) for i, x in enumerate(jax.tree_util.tree_leaves(state))}
        require_free_space(self.directory, sum(x.nbytes for x in leaves.values()))
        partial = self.directory / f"{update}.npz.partial"
        with open(partial, "wb") as file:  # a file object, so numpy keeps the name as given
            np.savez(file, meta=np.array(json.dumps(meta)), **leaves)
        partial.replace(self.directory / f"{update}.npz")
        for old in self.steps()[: -self.keep]:
            (self.directory / f"{old}.npz").unlink()

    def restore(self, update: int, like):
        with np.load(self.directory / f"{update}.npz") as saved:
            leaves, treedef = jax.tree_util.tree_flatten(like)
            state = [jax.device_put(saved[f"leaf{i}"], x.sharding) for i, x in enumerate(leaves)]
            return jax.tree_util.tree_unflatten(treedef, state), json.loads(str(saved["meta"]))

    def close(self):
        pass


# THE CHUNKED LOOP


def fresh_episodes(restored, fresh):
    """A host (gym/) simulator's state is not in a checkpoint, and the simulators of a resumed process
    are new: the restored run takes the environments `init` just made and starts new episodes there,
    keeping everything it learned (a recurrent agent's memory and first-step flags start afresh, and
    the new episodes get new ids)."""
    names = ("env_state", "is_first", "latent", "prev_action", "episode_return")
    fields = {name: getattr(fresh, name) for name in names if name in restored._fields}
    if "episode" in restored._fields:
        fields["episode"] = restored.episode + 1
    return restored._replace(**fields)


def restore_newest(checkpoints, like, run_dir: pathlib.Path, schedule):
    """The newest checkpoint that restores into `like`, as (state, meta, update), or None when there
    is none yet. A newer one that does not restore (damaged by a crash of the disk, say) is set aside
    and named; when none restores, a ConfigError names each."""
    failures = []
    for update in reversed(checkpoints.steps()):
        try:
            state, meta = checkpoints.restore(update, like)
        except Exception as error:  # orbax and numpy raise many kinds; the kind goes in the message
            failures.append((update, type(error).__name__))
            continue
        for damaged, kind in failures:
            aside = checkpoints.set_aside(damaged)
            print(
                f"note: the checkpoint after {schedule.env_steps_after(damaged)} environment steps does not restore "
                f"({kind}); it is moved to {aside}, and the run resumes from the one after "
                f"{schedule.env_steps_after(update)} steps",
                file=sys.stderr,
                flush=True,
            )
        return state, meta, update
    if failures:
        listed = ", ".join(f"{checkpoints.directory / str(update)} ({kind})" for update, kind in failures)
        raise ConfigError(
            f"--resume: no checkpoint in {run_dir} restores into this run's state: {listed}; the files are damaged, "
            "or were written by another version of mbrlax"
        )
    return None


def kept_checkpoint(checkpoints, schedule, fused: bool = False) -> str:
    if fused:
        return "the fused mode keeps no checkpoint"
    steps = checkpoints.steps()
    if not steps:
        return "no checkpoint was written yet"
    return f"the last complete checkpoint, after {schedule.env_steps_after(steps[-1])} environment steps, is kept"


def stopped_by(error: BaseException, where: str, kept: str, run_dir: pathlib.Path) -> RunStopped | None:
    """A Ctrl-C or a full disk as a RunStopped whose message says where the run stopped and what it
    kept (the CLI adds the command that resumes); None for any other error."""
    if isinstance(error, KeyboardInterrupt):
        return RunStopped(f"interrupted {where}; {kept}", exit_code=130)
    if disk_full(error):
        detail = getattr(error, "strerror", None)
        detail = f": {detail}" if detail and detail != os.strerror(errno.ENOSPC) else ""
        return RunStopped(f"the disk holding {run_dir} is full ({where}{detail}); {kept}", exit_code=1)
    return None


def execute(
    trainer: Trainer,
    runs: list[dict],
    sweepable: tuple[str, ...],
    run_dir: pathlib.Path,
    options: RunOptions,
    config_dict: dict,
    title: str,
    resume: bool = False,
) -> tuple[list[dict], dict]:
    """Run `trainer` for every run at once, chunk by chunk, with logs and checkpoints in `run_dir`."""
    schedule = trainer.schedule
    keys, hparams = shard_runs(batch_inputs(runs, sweepable))
    init_keys, eval_keys = jax.vmap(split_keys)(keys)
    start = time.perf_counter()

    init = jax.jit(over_runs(trainer.init, len(runs)))
    update = jax.jit(over_runs(trainer.update, len(runs), in_axes=(0, 0, None)), donate_argnums=0)
    evaluate = jax.jit(over_runs(trainer.evaluate, len(runs)))
    finite = jax.jit(all_finite)

    compile_start = time.perf_counter()
    init_c = init.lower(init_keys, hparams).compile()
    state_shape = jax.eval_shape(init, init_keys, hparams)
    update_c = update.lower(state_shape, hparams, jax.ShapeDtypeStruct((), jnp.int32)).compile()
    eval_c = evaluate.lower(state_shape, eval_keys, hparams).compile()
    compile_s = time.perf_counter() - compile_start

    checkpoints = (ProcessCheckpoints if jax.process_count() > 1 else Checkpoints)(run_dir / "checkpoints")
    history: list[dict] = []
    first_update = 0
    # Time spent before a kill, up to the checkpoint resumed from, so a resumed run's summary counts it.
    earlier_wall, earlier_compile = 0.0, 0.0
    state = init_c(init_keys, hparams)
    restored = restore_newest(checkpoints, state, run_dir, schedule) if resume else None
    if restored is not None:
        fresh = state
        state, meta, first_update = restored
        history = meta["history"]
        if gym_bridge.is_gym(config_dict.get("env", "")):
            state = fresh_episodes(state, fresh)
        del fresh, restored  # the initial state (replay buffers included) is not held beside the run's
        earlier_wall, earlier_compile = meta.get("wall_time_s", 0.0), meta.get("compile_time_s", 0.0)
    log = MetricsLog(run_dir, options.track, config_dict, history)

    progress = None
    if options.progress:
        from tqdm.auto import tqdm

        progress = tqdm(
            total=schedule.total_steps,
            initial=schedule.env_steps_after(first_update),
            unit="step",
            desc=title,
            dynamic_ncols=True,
            file=sys.stdout,
        )
    last_eval = next((r["eval_return"] for r in reversed(history) if "eval_return" in r), None)
    env_steps = schedule.env_steps_after(first_update)
    failure: BaseException | None = None
    try:
        for u in range(first_update, schedule.num_updates):
            state, metrics = update_c(state, hparams, jnp.int32(u))
            env_steps = schedule.env_steps_after(u + 1)
            rows = metric_rows(runs, metrics, env_steps, u + 1)
            bad = _first_non_finite(metrics)
            evaluated = (u + 1) % schedule.updates_per_eval == 0
            if evaluated and bad is None:
                eval_index = (u + 1) // schedule.updates_per_eval - 1
                eval_metrics = eval_c(state, jax.vmap(jax.random.fold_in, (0, None))(eval_keys, eval_index), hparams)
                for row, erow in zip(rows, metric_rows(runs, eval_metrics, env_steps, u + 1)):
                    row.update({k: v for k, v in erow.items() if k.startswith("eval_")})
                bad = _first_non_finite(eval_metrics)
                last_eval = float(np.mean([r["eval_return"] for r in rows]))
            if bad is None and evaluated and not bool(finite(state)):
                bad = "the parameters or state"
            if bad is not None:
                kept = kept_checkpoint(checkpoints, schedule).replace("complete", "good")
                raise NonFiniteError(f"stopped at environment step {env_steps}: {bad} became NaN or infinite; {kept}")
            log.add(rows)
            eval_count = (u + 1) // schedule.updates_per_eval
            if evaluated and (eval_count % options.checkpoint_every == 0 or u + 1 == schedule.num_updates):
                spent = {
                    "wall_time_s": earlier_wall + time.perf_counter() - start,
                    "compile_time_s": earlier_compile + compile_s,
                }
                checkpoints.save(u + 1, state, {"history": log.rows, **spent})
            if progress is not None:
                progress.update(schedule.steps_per_update)
                if last_eval is not None:
                    progress.set_postfix(eval_return=f"{last_eval:.1f}", refresh=False)
    except BaseException as error:  # Ctrl-C included: what was written stays whole
        failure = error
    closers = [checkpoints.close, log.close] + ([progress.close] if progress is not None else [])
    for close in closers:
        try:
            close()
        except BaseException as error:
            failure = failure or error
    swept = swept_names(runs)
    if failure is None or isinstance(failure, NonFiniteError):
        try:  # the curve up to a NaN helps find its cause
            plot_curves(log.rows, run_dir / "curve.png", title, swept)
        except BaseException as error:
            failure = failure or error
    if failure is not None:
        checkpoints.discard_partial()
        stopped = stopped_by(failure, f"at environment step {env_steps}", kept_checkpoint(checkpoints, schedule), run_dir)
        if stopped is not None:
            raise stopped from None
        raise failure

    wall = earlier_wall + time.perf_counter() - start
    return log.rows, summarise(log.rows, wall, earlier_compile + compile_s, swept)


def summarise(rows: list[dict], wall: float, compile_s: float, swept=()) -> dict:
    """The run's summary.json: final evaluation, steps, wall time with and without compiling, device;
    with a sweep, every setting's final mean and spread over its seeds, best first."""
    last = {r["run"]: r for r in rows if "eval_return" in r}
    final = [last[run] for run in sorted(last)]
    summary = {
        "final_eval_return": float(np.mean([r["eval_return"] for r in final])),
        "final_eval_return_per_run": [r["eval_return"] for r in final],
        "env_steps": max(r["env_steps"] for r in final),
        "num_runs": len(final),
        "wall_time_s": wall,
        "compile_time_s": compile_s,
        "wall_time_excl_compile_s": wall - compile_s,
        "device": device_description(),
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    # Goal tasks: success at any step of the episode (eval_success, also eval_success_any) and on
    # its last step (eval_success_final).
    for name in ("eval_success", "eval_success_any", "eval_success_final"):
        if name in final[0]:
            summary[f"final_{name}"] = float(np.mean([r[name] for r in final]))
    if swept:
        settings = []
        for label, members in settings_of(final, list(swept)).items():
            returns = [r["eval_return"] for r in final if r["run"] in members]
            first = next(r for r in final if r["run"] in members)
            setting = {name: first[name] for name in swept}
            setting.update(
                runs=sorted(members),
                final_eval_return_mean=float(np.mean(returns)),
                final_eval_return_std=float(np.std(returns)),
            )
            if "eval_success" in first:
                setting["final_eval_success_mean"] = float(
                    np.mean([r["eval_success"] for r in final if r["run"] in members])
                )
            settings.append(setting)
        summary["settings_ranked"] = sorted(settings, key=lambda s: -s["final_eval_return_mean"])
    return summary


def execute_fused(
    trainer: Trainer, runs: list[dict], sweepable: tuple[str, ...], run_dir: pathlib.Path, title: str
) -> tuple[list[dict], dict]:
    """The whole run as one compiled program for every run at once; rows written when it ends. A
    value that turned NaN or infinite stops it as in the chunked mode, with the rows before it kept."""
    schedule = trainer.schedule
    keys, hparams = shard_runs(batch_inputs(runs, sweepable))
    start = time.perf_counter()
    program = jax.jit(over_runs(trainer, len(runs)))
    try:
        compiled = program.lower(keys, hparams).compile()
        compile_s = time.perf_counter() - start
        state, metrics = jax.block_until_ready(compiled(keys, hparams))
    except KeyboardInterrupt:
        raise RunStopped("interrupted; the fused mode keeps no checkpoint: run it again with a fresh --run-dir", 130) from None
    state_finite = bool(jax.jit(all_finite)(state))
    del state
    log = MetricsLog(run_dir, "none", {}, [])
    bad = None
    for u in range(schedule.num_updates):
        env_steps = schedule.env_steps_after(u + 1)
        train = jax.tree_util.tree_map(lambda x: x[:, u], metrics["train"])
        rows = metric_rows(runs, train, env_steps, u + 1)
        bad = _first_non_finite(train)
        if bad is None and (u + 1) % schedule.updates_per_eval == 0:
            e = (u + 1) // schedule.updates_per_eval - 1
            evals = jax.tree_util.tree_map(lambda x: x[:, e], metrics["eval"])
            for row, erow in zip(rows, metric_rows(runs, evals, env_steps, u + 1)):
                row.update({k: v for k, v in erow.items() if k.startswith("eval_")})
            bad = _first_non_finite(evals)
        if bad is None and u + 1 == schedule.num_updates and not state_finite:
            bad = "the parameters or state"
        if bad is not None:
            break
        log.add(rows)
    swept = swept_names(runs)
    plot_curves(log.rows, run_dir / "curve.png", title, swept)
    if bad is not None:
        raise NonFiniteError(
            f"stopped at environment step {env_steps}: {bad} became NaN or infinite; the rows before it are in "
            f"{run_dir / 'metrics.jsonl'} (the fused mode keeps no checkpoint)"
        )
    return log.rows, summarise(log.rows, time.perf_counter() - start, compile_s, swept)


def run_programs(programs: list, sweepable: tuple[str, ...], run_dir: pathlib.Path, options: RunOptions, title: str):
    """Run each (setting, config, runs, trainer) in turn. With one program its files go straight into
    `run_dir`; with a static sweep each setting gets a folder of its own (setting-<i>, resumable on
    its own) and `run_dir` collects every run's rows, the curves and one summary ranking them all."""

    def one(runs, trainer, config, folder, label):
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{title} ({label})" if label else title
        if options.fused:
            return execute_fused(trainer, runs, sweepable, folder, name)
        return execute(trainer, runs, sweepable, folder, options, _jsonable(config), name, resume=bool(options.resume))

    if len(programs) == 1:
        _, config, runs, trainer = programs[0]
        return one(runs, trainer, config, run_dir, "")
    rows, wall, compile_s, offset = [], 0.0, 0.0, 0
    for i, (setting, config, runs, trainer) in enumerate(programs):
        label = setting_label(setting)
        print(f"setting {i + 1} of {len(programs)}: {label}", flush=True)
        folder = run_dir / f"setting-{i}"
        folder.mkdir(parents=True, exist_ok=True)
        write_text_whole(folder / "setting.json", strict_json(setting))
        setting_rows, summary = one(runs, trainer, config, folder, label)
        write_text_whole(folder / "summary.json", strict_json(summary, indent=2))
        rows += [dict(row, run=row["run"] + offset) for row in setting_rows]
        wall += summary["wall_time_s"]
        compile_s += summary["compile_time_s"]
        offset += len(runs)
    every_run = [run for _, _, runs, _ in programs for run in runs]
    return rows, write_collected(rows, every_run, run_dir, title, wall, compile_s)


def write_collected(rows: list[dict], every_run: list[dict], run_dir: pathlib.Path, title: str, wall, compile_s):
    """Rows collected from several programs or processes, written into `run_dir` as one run's are:
    metrics files and curve; returns their summary."""
    swept = swept_names(every_run)
    MetricsLog(run_dir, "none", {}, rows).close()
    plot_curves(rows, run_dir / "curve.png", title, swept)
    return summarise(rows, wall, compile_s, swept)


# CLI


def _preset_config(Config, presets: dict, env: str | None, preset: str | tuple[str, ...] | None):
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


def _differences(a: dict, b: dict) -> list[str]:
    return [
        f"{k} is {a.get(k)!r} in the checkpoint, {b.get(k)!r} here"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]


def _jsonable(config) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def read_saved_run(folder: pathlib.Path, algorithm: str, Config) -> dict:
    """The config.json of a run folder to resume, checked to be this algorithm's and readable."""
    path = folder / "config.json"
    if not folder.is_dir() or not path.exists():
        raise ConfigError(f"--resume {folder}: no run folder there (config.json is missing)")
    try:
        saved = json.loads(path.read_text())
        other = saved["algorithm"]
        saved["config"], saved["run"]  # noqa: B018 (both must be there)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise ConfigError(f"--resume {folder}: its config.json is damaged (not the JSON a run writes)") from None
    if other != algorithm:
        raise ConfigError(
            f"--resume {folder}: that folder holds a run of {other}; "
            f"continue it with python algorithms/{other}.py --resume {folder}"
        )
    unknown = sorted(set(saved["config"]) - {f.name for f in dataclasses.fields(Config)})
    unknown += sorted(set(saved["run"]) - {f.name for f in dataclasses.fields(RunOptions)})
    if unknown:
        raise ConfigError(
            f"--resume {folder}: its config.json has fields this version of {algorithm} does not know "
            f"({', '.join(unknown)}); was it written by another version of mbrlax?"
        )
    return saved


def default_run_dir(algorithm: str, env: str) -> pathlib.Path:
    """runs/<algorithm>-<env>-<time>, with a suffix when a run started in the same second has it."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = pathlib.Path("runs") / f"{algorithm}-{env.replace('/', '_')}-{stamp}"
    candidates = itertools.chain([base], (base.with_name(f"{base.name}-{i}") for i in itertools.count(2)))
    return next(path for path in candidates if not path.exists())


def steps_said(programs: list) -> str:
    """The environment steps each run takes, and what was asked for when a schedule rounded it up to
    whole evaluation periods."""
    said = []
    for total in sorted({trainer.schedule.total_steps for *_, trainer in programs}):
        asked = sorted({config.total_steps for _, config, _, trainer in programs if trainer.schedule.total_steps == total})
        rounded = [a for a in asked if a != total]
        note = f" ({', '.join(map(str, rounded))} asked for, rounded up to whole evaluation periods)" if rounded else ""
        said.append(f"{total}{note}")
    return " or ".join(said)


def main(algorithm: str, Config, presets: dict, make_train: Callable[[Any], Trainer], argv=None) -> int:
    """Parse the command line, validate, run, write the run folder. Returns the exit code: 0 done,
    2 a config that cannot run (nothing compiled or written), 1 a run that failed (a NaN, a full
    disk), 130 interrupted."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--env")
    pre.add_argument("--preset", nargs="+")
    pre.add_argument("--resume")
    known, _ = pre.parse_known_args(argv)
    try:
        default_config = _preset_config(Config, presets, known.env, known.preset)
        default_options = RunOptions()
        saved = None
        if known.resume:
            saved = read_saved_run(pathlib.Path(known.resume), algorithm, Config)
            default_config = Config(
                **{
                    **dataclasses.asdict(default_config),
                    **{k: tuple(v) if isinstance(v, list) else v for k, v in saved["config"].items()},
                }
            )
            default_options = dataclasses.replace(
                default_options, **{k: tuple(v) if isinstance(v, list) else v for k, v in saved["run"].items()}
            )
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    Args = dataclasses.make_dataclass(
        "Args",
        [
            ("config", Config, dataclasses.field(default=default_config)),
            ("run", RunOptions, dataclasses.field(default=default_options)),
        ],
        frozen=True,
    )
    # The help's description: the first paragraph of the algorithm file's docstring (its title).
    module_doc = (sys.modules[Config.__module__].__doc__ or algorithm).strip()
    Args.__doc__ = " ".join(module_doc.split("\n\n")[0].split())
    args = tyro.cli(Args, args=argv, config=(tyro.conf.OmitArgPrefixes,), prog=f"{algorithm}.py")
    config, options = args.config, args.run

    try:
        if saved is not None:
            diff = _differences(saved["config"], _jsonable(config))
            diff += _differences(saved["run"], {k: v for k, v in _jsonable(options).items() if k in saved["run"]})
            if diff:
                raise ConfigError(f"--resume: the checkpoint is from another config: {'; '.join(diff)}")
        check_options(options)
        config.validate()
        _, static = parse_sweep(config, options.sweep)
        run_dir = pathlib.Path(options.resume or options.run_dir or default_run_dir(algorithm, config.env))
        check_run_dir(run_dir, resume=bool(options.resume))
        start_distributed(options)
        hosts = jax.process_count() > 1
        if hosts and not (options.run_dir or options.resume):
            raise ConfigError("a multi-host run needs --run-dir, the same folder name on every process")
        # One program per combination of static values; each is built and checked before any runs.
        programs, every_run = [], []
        for setting in static_settings(static):
            check_swept_values(config, setting)
            setting_config = dataclasses.replace(config, **setting)
            runs = [dict(run, **setting) for run in expand_runs(setting_config, options)]
            every_run += runs
            runs = share_of_runs(runs)
            check_host_task(setting_config, runs)
            trainer = make_train(setting_config)
            check_memory(trainer, runs, type(config).SWEEPABLE)
            programs.append((setting, setting_config, runs, trainer))
        if hosts and not options.resume:
            # Every process has looked at the folder before any writes to it: a process that finds
            # it taken stops them all.
            from jax.experimental import multihost_utils

            taken = np.asarray(multihost_utils.process_allgather(np.int32(holds_a_run(run_dir)))).ravel()
            if taken.any():
                raise ConfigError(
                    f"--run-dir {run_dir} already holds a run (process {int(np.argmax(taken))} found it); "
                    f"continue it with --resume {run_dir}, or name a fresh folder"
                )
        config_json = strict_json(
            {
                "algorithm": algorithm,
                "config": _jsonable(config),
                "run": {k: v for k, v in _jsonable(options).items() if k in ("seed", "num_seeds", "sweep")},
            },
            indent=2,
        )
        lock_dir = run_dir / f"process-{jax.process_index()}" if hosts and jax.process_index() > 0 else run_dir
        lock, lock_error = None, None
        try:
            lock = make_run_dir(run_dir, lock_dir, resume=bool(options.resume), multi_host=hosts, config_json=config_json)
        except ConfigError as error:
            lock_error = error
        if hosts:
            # A process that could not take its part of the folder stops them all, now: the others
            # would otherwise train and then wait for it forever.
            from jax.experimental import multihost_utils

            failed = np.asarray(multihost_utils.process_allgather(np.int32(lock_error is not None))).ravel()
            if failed.any() and lock_error is None:
                lock.release()
                others = ", ".join(str(i) for i in np.flatnonzero(failed))
                lock_error = ConfigError(f"process(es) {others} could not take their part of {run_dir}; see their output")
        if lock_error is not None:
            raise lock_error
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted before the run started; nothing was written", file=sys.stderr)
        return 130

    try:
        return _run(algorithm, config, options, programs, every_run, run_dir)
    finally:
        lock.release()


def _run(algorithm: str, config, options: RunOptions, programs: list, every_run: list, run_dir: pathlib.Path) -> int:
    """Run the checked programs into the locked run folder, then write its summary."""
    title = f"{algorithm} on {config.env}"
    compiled = f" in {len(programs)} programs" if len(programs) > 1 else ""
    hosts = jax.process_count() > 1
    here = f", {sum(len(runs) for _, _, runs, _ in programs)} of them here" if hosts else ""
    steps = steps_said(programs)
    print(
        f"{title}: {len(every_run)} run(s){compiled}{here}, {steps} environment steps each, on "
        f"{device_description()}; run folder {run_dir}",
        flush=True,
    )
    resume_command = f"continue with: python algorithms/{algorithm}.py --resume {run_dir}"
    if options.fused:
        resume_command = "the fused mode keeps no checkpoint: run it again with a fresh --run-dir"
    try:
        # In a multi-host run each process keeps its own share (checkpoints included) in a folder of
        # its own, and process 0 gathers every run into the run folder.
        local_dir = run_dir / f"process-{jax.process_index()}" if hosts else run_dir
        failure = None
        try:
            rows, summary = run_programs(programs, type(config).SWEEPABLE, local_dir, options, title)
        except BaseException as error:  # every process must reach the gathering below, whatever stopped it
            failure = error
        if hosts:
            # Every process learns whether any failed before the gathering, which would wait forever
            # for a process that has stopped.
            from jax.experimental import multihost_utils

            failed = np.asarray(multihost_utils.process_allgather(np.int32(failure is not None))).ravel()
            if failure is None and failed.any():
                others = ", ".join(str(i) for i in np.flatnonzero(failed))
                failure = NonFiniteError(f"process(es) {others} of the multi-host run failed; see their output")
        if failure is not None:
            raise failure
        if hosts:
            rows = gather_rows(rows, [len(runs) for _, _, runs, _ in programs], every_run)
            if jax.process_index() != 0:
                print(f"process {jax.process_index()}: done; process 0 writes the results to {run_dir}")
                return 0
            summary = write_collected(
                rows, every_run, run_dir, title, summary["wall_time_s"], summary["compile_time_s"]
            )
        summary = {"algorithm": algorithm, "env": config.env, **summary}
        write_text_whole(run_dir / "summary.json", strict_json(summary, indent=2))
    except NonFiniteError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RunStopped as error:
        resume = "" if options.fused else f"; {resume_command}"
        print(f"error: {error}{resume}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"error: interrupted; {resume_command}", file=sys.stderr)
        return 130
    except OSError as error:
        if not disk_full(error):
            raise
        print(f"error: the disk holding {run_dir} is full; free some space, then {resume_command}", file=sys.stderr)
        return 1
    per_run = summary["final_eval_return_per_run"]
    spread = f" (runs: {', '.join(f'{r:.1f}' for r in per_run)})" if len(per_run) > 1 else ""
    success = f", success {summary['final_eval_success']:.2f}" if "final_eval_success" in summary else ""
    print(
        f"final evaluation return {summary['final_eval_return']:.1f}{spread}{success} after "
        f"{steps} environment steps; {summary['wall_time_s']:.0f} s "
        f"({summary['compile_time_s']:.0f} s compiling). Run folder: {run_dir}"
    )
    return 0
