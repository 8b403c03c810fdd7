"""The run folder: files written whole, its lock, metrics, curves, the summary and checkpoints.

Everything here writes or reads a run's files; nothing here compiles or runs a program. A file of a
run folder is written whole or not at all (`write_whole`), so a kill or a full disk leaves the last
whole version, and a resumed run picks up from what is there.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import errno
import fcntl
import itertools
import json
import logging
import math
import os
import pathlib
import shlex
import shutil
import socket
import subprocess
import sys
import warnings
from typing import Callable

import jax
import numpy as np

from mbrlax.training import ConfigError

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


def jsonable(config) -> dict:
    """A Config as the JSON of config.json reads it back (tuples as lists, anything else as text)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


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


def _raised_from(error: BaseException | None):
    """`error` and the errors it was raised from (orbax and tensorstore wrap their OS errors)."""
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def disk_full(error: BaseException | None) -> bool:
    """Whether `error` (or one it was raised from) says the disk or the quota is full."""
    return any(
        getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
        or "No space left on device" in str(e)
        or "Disk quota exceeded" in str(e)
        for e in _raised_from(error)
    )


_UNWRITABLE = {
    errno.EACCES: "permission denied",
    errno.EPERM: "not permitted",
    errno.EROFS: "read-only",
    errno.EIO: "I/O error",
}
_UNWRITABLE_WORDS = {
    "Permission denied": "permission denied",
    "PERMISSION_DENIED": "permission denied",
    "Read-only file system": "read-only",
    "Input/output error": "I/O error",
}


def folder_unwritable(error: BaseException | None) -> str | None:
    """Why the run folder takes no more writes, when `error` (or one it was raised from) says so: a
    permission taken away, a disk remounted read-only, an I/O error. None for any other error."""
    for e in _raised_from(error):
        reason = _UNWRITABLE.get(getattr(e, "errno", None))
        said = [reason for word, reason in _UNWRITABLE_WORDS.items() if word in str(e)]
        if reason or said:
            return reason or said[0]
    return None


def require_free_space(folder: pathlib.Path, state_bytes: int) -> None:
    """An OSError(ENOSPC) before a checkpoint is begun on a disk that cannot hold it: orbax's writer
    threads meet a full disk with hundreds of lines of tracebacks before the error reaches the run."""
    needed = int(state_bytes * 1.1) + 2**18  # the format's metadata and the metrics files besides
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OSError(errno.ENOSPC, f"{free / 2**20:.1f} MiB free, a checkpoint needs {needed / 2**20:.1f} MiB")


class DiskFullRepeats(logging.Filter):
    """Drops a library's log record of a full disk: orbax's writer threads log theirs, and asyncio
    logs each writer task's error when the task is freed, at whatever moment the garbage collector
    frees it. The run reports the full disk itself, in one line. (Formatting such a record's
    traceback inside another `ast.parse`, as tyro's parsing of a resumed run's flags does, also
    raises a SystemError on Python 3.11.7.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (disk_full(error) or "No space left on device" in record.getMessage())

    @classmethod
    def install(cls) -> None:
        for logger in (logging.getLogger("absl"), logging.getLogger("asyncio")):
            if not any(isinstance(f, cls) for f in logger.filters):
                logger.addFilter(cls())
        # A full disk at the first checkpoint leaves some of orbax's writer coroutines never started;
        # Python warns of each when it is freed.
        warnings.filterwarnings("ignore", r"coroutine '.*write_fragment' was never awaited", RuntimeWarning)


@contextlib.contextmanager
def quiet_background_errors(settle_s: float = 1.0):
    """Keep orbax's writer threads from printing their tracebacks (a disk that fills during a save):
    the error that matters reaches the run from `wait_until_finished` and is reported in one line.
    The first writer's error ends that wait, and orbax closes its event loop while the others' writes
    are still in flight; each reports its own error to the closed loop a moment later, so on an error
    the hooks stay quiet for `settle_s` more. What the writers log when freed is dropped by
    `DiskFullRepeats`."""
    import threading
    import time

    absl_logger = logging.getLogger("absl")
    level, thread_hook, unraisable_hook = absl_logger.level, threading.excepthook, sys.unraisablehook
    absl_logger.setLevel(logging.CRITICAL)
    threading.excepthook = lambda args: None
    sys.unraisablehook = lambda unraisable: None
    try:
        yield
    except BaseException:
        time.sleep(settle_s)
        raise
    finally:
        absl_logger.setLevel(level)
        threading.excepthook, sys.unraisablehook = thread_hook, unraisable_hook


# RUN FOLDERS


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


def shell_path(path: pathlib.Path | str) -> str:
    """A path as a command to paste into a shell needs it: quoted when it holds a space, a quote or
    a letter outside ASCII."""
    return shlex.quote(str(path))


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
            f"--run-dir {run_dir} already holds a run; continue it with --resume {shell_path(run_dir)}, "
            "or name a fresh folder"
        )
    existing = next(parent for parent in [run_dir, *run_dir.absolute().parents] if parent.exists())
    if not existing.is_dir():
        raise ConfigError(f"--run-dir {run_dir}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--run-dir {run_dir}: {existing} cannot be written to")
    checkpoints = run_dir / "checkpoints"
    if resume and checkpoints.exists() and not checkpoints.is_dir():
        raise ConfigError(
            f"--resume {run_dir}: {checkpoints} is a file where the run's checkpoints folder should be; "
            "move it away to resume from the start, or restore the folder"
        )


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
                f"--run-dir {run_dir} was just taken by another run; continue it with "
                f"--resume {shell_path(run_dir)}, or name a fresh folder"
            )
        if not resume:
            write_text_whole(run_dir / "config.json", config_json)
        return lock
    except OSError as error:
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise ConfigError(f"cannot write the run folder {run_dir}: {error.strerror or error}") from None


def default_run_dir(algorithm: str, env: str) -> pathlib.Path:
    """runs/<algorithm>-<env>-<time>, with a suffix when a run started in the same second has it."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = pathlib.Path("runs") / f"{algorithm}-{env.replace('/', '_')}-{stamp}"
    candidates = itertools.chain([base], (base.with_name(f"{base.name}-{i}") for i in itertools.count(2)))
    return next(path for path in candidates if not path.exists())


# METRICS AND CURVES


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


def swept_names(runs: list[dict]) -> list[str]:
    """The hyperparameters (static or traced) whose value differs between runs."""
    return [name for name in runs[0] if name != "seed" and len({r[name] for r in runs}) > 1]


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


# SUMMARY


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
    # its last step (eval_success_final). Games: the win and loss rates against each opponent.
    for name in final[0]:
        if name in ("eval_success", "eval_success_any", "eval_success_final") or name.startswith(
            ("eval_win_", "eval_loss_")
        ):
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


def write_collected(rows: list[dict], every_run: list[dict], run_dir: pathlib.Path, title: str, wall, compile_s):
    """Rows collected from several programs or processes, written into `run_dir` as one run's are:
    metrics files and curve; returns their summary."""
    swept = swept_names(every_run)
    MetricsLog(run_dir, "none", {}, rows).close()
    plot_curves(rows, run_dir / "curve.png", title, swept)
    return summarise(rows, wall, compile_s, swept)


# CHECKPOINTS


class Checkpoints:
    """The whole batched state (parameters, optimiser states, buffers, normalisers, RNG) with orbax,
    plus the host-side history that goes with it."""

    def __init__(self, directory: pathlib.Path):
        import orbax.checkpoint as ocp

        self.ocp, self.directory = ocp, directory
        self.manager = self._manager()
        DiskFullRepeats.install()

    # An old checkpoint is first renamed into this folder (one atomic step), then deleted: a kill
    # while the files go leaves no half-deleted checkpoint among the whole ones.
    DELETED = ".deleted"

    def _manager(self):
        # Orbax writes a checkpoint into a temporary folder and renames it when whole; one left by a
        # kill or a full disk is removed when the manager opens the folder.
        self._finish_deleting()
        options = self.ocp.CheckpointManagerOptions(
            max_to_keep=2, create=True, cleanup_tmp_directories=True, todelete_subdir=self.DELETED
        )
        return self.ocp.CheckpointManager(self.directory.absolute(), options=options)

    def _finish_deleting(self) -> None:
        """Delete what a kill left half-deleted: the renamed old checkpoints, and (from versions that
        deleted in place) a step folder without the metadata file that orbax writes first in every
        checkpoint, where a newer whole one shows it was being deleted."""
        if not self.directory.is_dir():
            return
        deleted = self.directory / self.DELETED
        steps = self.steps()
        whole = [step for step in steps if (self.directory / str(step) / "_CHECKPOINT_METADATA").exists()]
        for step in steps:
            if whole and step < whole[-1] and step not in whole:
                deleted.mkdir(exist_ok=True)
                (self.directory / str(step)).replace(deleted / str(step))
        shutil.rmtree(deleted, ignore_errors=True)

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
        shutil.rmtree(self.directory / self.DELETED, ignore_errors=True)

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

