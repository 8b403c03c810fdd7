"""Executing the planned programs: the chunked loop (the Trainer's jitted `update` and `evaluate`
called from the host, a row per run per update, checkpoints, resume) and the fused mode (the whole
run as one compiled program). Both batch a program's runs with `vmap`, sharded over the local
devices when they divide evenly, and stop on a NaN with the quantity named.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import signal
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from mbrlax.runner.planning import Program, RunOptions, batch_inputs, steps_on_host
from mbrlax.runner.records import (
    Checkpoints,
    MetricsLog,
    ProcessCheckpoints,
    disk_full,
    folder_unwritable,
    jsonable,
    metric_rows,
    plot_curves,
    setting_label,
    strict_json,
    summarise,
    swept_names,
    write_collected,
    write_text_whole,
)
from mbrlax.training import ConfigError, Trainer, split_keys


class NonFiniteError(RuntimeError):
    """A loss or the parameters turned NaN or infinite."""


class RunStopped(RuntimeError):
    """The run stopped before its end (Ctrl-C, a signal, a folder that takes no more writes) with its
    last complete checkpoint kept; the message says where it stopped and what is kept. `exit_code`
    is the CLI's; `asked` when the user asked for the stop (SIGUSR1), so it is no error."""

    def __init__(self, message: str, exit_code: int, asked: bool = False):
        super().__init__(message)
        self.exit_code, self.asked = exit_code, asked


# SIGNALS FROM A SCHEDULER
# SLURM and Kubernetes send SIGTERM some seconds before they kill; SLURM can send SIGUSR1 ahead of a
# time limit (`#SBATCH --signal=USR1@120`). 128 + the signal's number is the exit code a shell
# reports for a process that the signal ended.


class Signalled(BaseException):
    """SIGTERM (or SIGUSR1 where no checkpoint can be taken), raised where the run is, as Python
    raises KeyboardInterrupt for Ctrl-C: a BaseException, so no `except Exception` swallows it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _CheckpointRequest:
    """SIGUSR1 inside the chunked loop: checkpoint after the update under way, then stop."""

    loop_running = False
    pending = False


def _on_sigusr1(signum, frame):
    if not _CheckpointRequest.loop_running:
        raise Signalled(signum)
    _CheckpointRequest.pending = True


def _on_sigterm(signum, frame):
    raise Signalled(signum)


@contextlib.contextmanager
def scheduler_signals():
    """SIGTERM stops the run as Ctrl-C does; SIGUSR1 checkpoints after the current update and stops.
    Python takes signals in the main thread only; elsewhere (a thread of the user's) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _on_sigterm)}
    previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, _on_sigusr1)
    _CheckpointRequest.pending = False
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# RUNS AS ONE PROGRAM


def runs_sharding(num_runs: int) -> jax.sharding.NamedSharding | None:
    """The leading run axis split across the local devices, or None when there is one device or the
    runs do not divide evenly among them."""
    devices = jax.local_devices()
    if len(devices) == 1 or num_runs % len(devices):
        return None
    mesh = jax.sharding.Mesh(np.array(devices), ("runs",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("runs"))


def shard_runs(tree):
    """Put the leading run axis across the local devices when it divides evenly; else leave it."""
    sharding = runs_sharding(jax.tree_util.tree_leaves(tree)[0].shape[0])
    return tree if sharding is None else jax.device_put(tree, sharding)


def jit_over_runs(fn, num_runs: int, in_axes=0, **jit_options):
    """`jax.jit(over_runs(...))` whose every output keeps the run axis sharded as the inputs are.
    Left to itself XLA replicates an output it can compute anywhere (a buffer of zeros, a counter),
    and the next program, compiled for sharded state, would refuse it."""
    sharding = runs_sharding(num_runs)
    if sharding is not None:
        jit_options["out_shardings"] = sharding
    return jax.jit(over_runs(fn, num_runs, in_axes), **jit_options)


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


def all_finite(tree) -> jax.Array:
    leaves = [jnp.isfinite(x).all() for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _first_non_finite(metrics: dict) -> str | None:
    # Losses first: when one turns NaN everything downstream of it does too, and it is the cause.
    for name, value in sorted(metrics.items(), key=lambda item: "loss" not in item[0]):
        if not np.all(np.isfinite(np.asarray(value))):
            return name
    return None


# RESUMING


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
    """A Ctrl-C, a scheduler's signal, a full disk or a folder that takes no more writes as a
    RunStopped whose message says where the run stopped and what it kept (the CLI adds the command
    that resumes); None for any other error."""
    if isinstance(error, KeyboardInterrupt):
        return RunStopped(f"interrupted {where}; {kept}", exit_code=130)
    if isinstance(error, Signalled):
        return RunStopped(f"stopped by {error} {where}; {kept}", exit_code=error.exit_code)
    if disk_full(error):
        detail = getattr(error, "strerror", None)
        detail = f": {detail}" if detail and detail != os.strerror(errno.ENOSPC) else ""
        return RunStopped(f"the disk holding {run_dir} is full ({where}{detail}); {kept}", exit_code=1)
    reason = folder_unwritable(error)
    if reason is not None:
        return RunStopped(f"the run folder {run_dir} takes no more writes ({reason}, {where}); {kept}", exit_code=1)
    return None


def _check_written_under(meta: dict, config, run_dir: pathlib.Path) -> None:
    """A checkpoint restores only under the config it was written under (config.json can be edited
    by hand after the checkpoint was written). Checkpoints from before the config was recorded in
    them (written by earlier versions) pass; a field renamed since is compared under its new name,
    and a field added since counts as its default, which is what the earlier version ran."""
    written = meta.get("config")
    if written is None:
        return
    written = {type(config).RENAMED.get(name, name): value for name, value in written.items()}
    here, defaults = jsonable(config), jsonable(type(config)())
    changed = [
        name for name in sorted(set(written) | set(here)) if written.get(name, defaults.get(name)) != here.get(name)
    ]
    if changed:
        said = "; ".join(f"{name} is {written.get(name)!r} there, {here.get(name)!r} here" for name in changed)
        raise ConfigError(
            f"--resume {run_dir}: its newest checkpoint was written under another config ({said}); "
            "a resumed run keeps the config it started with"
        )


# THE CHUNKED LOOP


def execute(program: Program, run_dir: pathlib.Path, options: RunOptions, title: str) -> tuple[list[dict], dict]:
    """Run the program's trainer for every run at once, chunk by chunk, with logs and checkpoints in
    `run_dir` (continuing from its newest checkpoint with --resume)."""
    trainer, runs = program.trainer, program.runs
    schedule = trainer.schedule
    keys, configs = shard_runs(batch_inputs(runs, program.config))
    init_keys, eval_keys = jax.vmap(split_keys)(keys)
    start = time.perf_counter()

    init = jit_over_runs(trainer.init, len(runs))
    update = jit_over_runs(trainer.update, len(runs), in_axes=(0, 0, None), donate_argnums=0)
    evaluate = jit_over_runs(trainer.evaluate, len(runs))
    finite = jax.jit(all_finite)

    compile_start = time.perf_counter()
    init_c = init.lower(init_keys, configs).compile()
    sharding = runs_sharding(len(runs))
    state_shape = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), jax.eval_shape(init, init_keys, configs)
    )
    update_c = update.lower(state_shape, configs, jax.ShapeDtypeStruct((), jnp.int32)).compile()
    eval_c = evaluate.lower(state_shape, eval_keys, configs).compile()
    compile_s = time.perf_counter() - compile_start

    checkpoints = (ProcessCheckpoints if jax.process_count() > 1 else Checkpoints)(run_dir / "checkpoints")
    history: list[dict] = []
    first_update = 0
    # Time spent before a kill, up to the checkpoint resumed from, so a resumed run's summary counts it.
    earlier_wall, earlier_compile = 0.0, 0.0
    state = init_c(init_keys, configs)
    restored = restore_newest(checkpoints, state, run_dir, schedule) if options.resume else None
    if restored is not None:
        fresh = state
        state, meta, first_update = restored
        _check_written_under(meta, program.config, run_dir)
        history = meta["history"]
        if steps_on_host(trainer):
            # A host simulator's state is in no checkpoint and this process's simulators are new: the
            # Trainer says how its run takes the fresh environments and starts new episodes there.
            state = trainer.fresh_episodes(state, fresh)
        del fresh, restored  # the initial state (replay buffers included) is not held beside the run's
        earlier_wall, earlier_compile = meta.get("wall_time_s", 0.0), meta.get("compile_time_s", 0.0)
    log = MetricsLog(run_dir, options.track, jsonable(program.config), history)

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
    _CheckpointRequest.loop_running = True
    try:
        for u in range(first_update, schedule.num_updates):
            state, metrics = update_c(state, configs, jnp.int32(u))
            env_steps = schedule.env_steps_after(u + 1)
            rows = metric_rows(runs, metrics, env_steps, u + 1)
            bad = _first_non_finite(metrics)
            evaluated = (u + 1) % schedule.updates_per_eval == 0
            if evaluated and bad is None:
                eval_index = (u + 1) // schedule.updates_per_eval - 1
                eval_metrics = eval_c(state, jax.vmap(jax.random.fold_in, (0, None))(eval_keys, eval_index), configs)
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
            due = evaluated and (eval_count % options.checkpoint_every == 0 or u + 1 == schedule.num_updates)
            asked = _CheckpointRequest.pending
            if due or asked:
                spent = {
                    "wall_time_s": earlier_wall + time.perf_counter() - start,
                    "compile_time_s": earlier_compile + compile_s,
                }
                meta = {"history": log.rows, "config": jsonable(program.config), **spent}
                checkpoints.save(u + 1, state, meta)
            if asked and u + 1 < schedule.num_updates:
                _CheckpointRequest.pending = False
                raise RunStopped(
                    f"SIGUSR1 at environment step {env_steps}: {kept_checkpoint(checkpoints, schedule)}",
                    exit_code=128 + signal.SIGUSR1,
                    asked=True,
                )
            if progress is not None:
                progress.update(schedule.steps_per_update)
                if last_eval is not None:
                    progress.set_postfix(eval_return=f"{last_eval:.1f}", refresh=False)
    except BaseException as error:  # Ctrl-C included: what was written stays whole
        failure = error
    # A request that came with the last update stays pending: a static sweep's next program stops
    # after its first update.
    _CheckpointRequest.loop_running = False
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


# THE FUSED MODE


def execute_fused(program: Program, run_dir: pathlib.Path, title: str) -> tuple[list[dict], dict]:
    """The whole run as one compiled program for every run at once; rows written when it ends. A
    value that turned NaN or infinite stops it as in the chunked mode, with the rows before it kept."""
    trainer, runs = program.trainer, program.runs
    schedule = trainer.schedule
    keys, configs = shard_runs(batch_inputs(runs, program.config))
    start = time.perf_counter()
    whole_run = jit_over_runs(trainer, len(runs))
    try:
        compiled = whole_run.lower(keys, configs).compile()
        compile_s = time.perf_counter() - start
        state, metrics = jax.block_until_ready(compiled(keys, configs))
    except KeyboardInterrupt:
        raise RunStopped("interrupted; the fused mode keeps no checkpoint: run it again with a fresh --run-dir", 130) from None
    except Signalled as signalled:
        raise RunStopped(
            f"stopped by {signalled}; the fused mode keeps no checkpoint: run it again with a fresh --run-dir",
            signalled.exit_code,
        ) from None
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


# SEVERAL PROGRAMS


def run_programs(programs: list[Program], run_dir: pathlib.Path, options: RunOptions, title: str):
    """Run each program in turn. With one program its files go straight into `run_dir`; with a
    static sweep each setting gets a folder of its own (setting-<i>, resumable on its own) and
    `run_dir` collects every run's rows, the curves and one summary ranking them all."""

    def one(program: Program, folder: pathlib.Path, label: str):
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{title} ({label})" if label else title
        if options.fused:
            return execute_fused(program, folder, name)
        return execute(program, folder, options, name)

    if len(programs) == 1:
        return one(programs[0], run_dir, "")
    rows, wall, compile_s, offset = [], 0.0, 0.0, 0
    for i, program in enumerate(programs):
        label = setting_label(program.setting)
        print(f"setting {i + 1} of {len(programs)}: {label}", flush=True)
        folder = run_dir / f"setting-{i}"
        folder.mkdir(parents=True, exist_ok=True)
        write_text_whole(folder / "setting.json", strict_json(program.setting))
        setting_rows, summary = one(program, folder, label)
        write_text_whole(folder / "summary.json", strict_json(summary, indent=2))
        rows += [dict(row, run=row["run"] + offset) for row in setting_rows]
        wall += summary["wall_time_s"]
        compile_s += summary["compile_time_s"]
        offset += len(program.runs)
    every_run = [run for program in programs for run in program.runs]
    return rows, write_collected(rows, every_run, run_dir, title, wall, compile_s)
