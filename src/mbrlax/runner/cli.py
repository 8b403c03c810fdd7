"""The command line every algorithm file ends in: `main(...)` reads the flags, checks everything before
anything compiles or is written, takes the run folder, runs the plan and writes the summary.

Exit codes: 0 done; 2 a config that cannot run (one line, nothing compiled or written); 1 a run that
failed (a NaN, a full disk); 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import types
import typing
from typing import Any, Callable

import jax
import tyro

from mbrlax.runner.execution import NonFiniteError, RunStopped, Signalled, run_programs, scheduler_signals
from mbrlax.runner.hosts import gather_rows, multi_host, processes_where, share_of_runs, start_distributed
from mbrlax.runner.planning import Plan, RunOptions, check_options, parse_sweep, plan, preset_config
from mbrlax.runner.records import (
    check_run_dir,
    default_run_dir,
    device_description,
    disk_full,
    folder_unwritable,
    holds_a_run,
    jsonable,
    make_run_dir,
    shell_path,
    strict_json,
    write_collected,
    write_text_whole,
)
from mbrlax.config import renamed
from mbrlax.training import ConfigError, Trainer


def main(algorithm: str, Config, presets: dict, make_train: Callable[[Any], Trainer], argv=None) -> int:
    """Parse the command line, validate, run, write the run folder. Returns the exit code: 0 done,
    2 a config that cannot run (nothing compiled or written), 1 a run that failed (a NaN, a full
    disk), 130 interrupted."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        _refuse_old_spellings(Config, argv)
        default_config, default_options, saved = _defaults(algorithm, Config, presets, argv)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    config, options = _parse(algorithm, Config, default_config, default_options, argv)
    with scheduler_signals():
        try:
            planned, run_dir, lock = _prepare(algorithm, config, options, saved, make_train)
        except ConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except (KeyboardInterrupt, Signalled) as error:
            how = "interrupted" if isinstance(error, KeyboardInterrupt) else f"stopped by {error}"
            print(f"error: {how} before the run started; nothing was written", file=sys.stderr)
            return getattr(error, "exit_code", 130)

        try:
            return _run(algorithm, config, options, planned, run_dir)
        finally:
            lock.release()


# THE FLAGS


def _defaults(algorithm: str, Config, presets: dict, argv: list[str]):
    """The Config and RunOptions the flags start from: the presets of --env and --preset, or, with
    --resume, the folder's saved ones; and the saved config.json (None without --resume)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--env")
    pre.add_argument("--preset", nargs="+")
    pre.add_argument("--resume")
    known, _ = pre.parse_known_args(argv)
    default_config = preset_config(Config, presets, known.env, known.preset)
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
        if known.preset:
            _refuse_changing_presets(presets, known.preset, default_config)
        default_options = dataclasses.replace(
            default_options, **{k: tuple(v) if isinstance(v, list) else v for k, v in saved["run"].items()}
        )
    return default_config, default_options, saved


def _refuse_old_spellings(Config, argv: list[str]) -> None:
    """A renamed field's old flag gets one sentence naming the new one (before tyro sees it)."""
    for arg in argv:
        if arg.startswith("--"):
            sentence = renamed(Config, arg[2:].partition("=")[0].replace("-", "_"))
            if sentence:
                raise ConfigError(sentence)


def _refuse_changing_presets(presets: dict, names: list[str], resumed) -> None:
    """--preset beside --resume: a preset that would change the resumed run's config is refused, as
    a flag that would is; one that matches it changes nothing and passes."""
    for name in names:  # each known: preset_config has refused unknown names
        changed = [field for field, value in presets[name].items() if getattr(resumed, field) != value]
        if changed:
            said = "; ".join(
                f"{field} is {getattr(resumed, field)!r} there, {presets[name][field]!r} in it" for field in changed
            )
            raise ConfigError(
                f"--resume: --preset {name} would change the run ({said}); a resumed run keeps the config it "
                "started with: drop --preset"
            )


def _parse(algorithm: str, Config, default_config, default_options: RunOptions, argv: list[str]):
    """The Config and RunOptions of the command line (tyro exits with its own message on a bad flag)."""
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
    return args.config, args.run


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
            f"continue it with python algorithms/{other}.py --resume {shell_path(folder)}"
        )
    for part in ("config", "run"):
        if not isinstance(saved[part], dict):
            raise ConfigError(f"--resume {folder}: its config.json's {part!r} is not a table of fields")
    # A folder written before a field was renamed resumes under the new name.
    saved["config"] = {Config.RENAMED.get(name, name): value for name, value in saved["config"].items()}
    unknown = sorted(set(saved["config"]) - {f.name for f in dataclasses.fields(Config)})
    unknown += sorted(set(saved["run"]) - {f.name for f in dataclasses.fields(RunOptions)})
    if unknown:
        raise ConfigError(
            f"--resume {folder}: its config.json has fields this version of {algorithm} does not know "
            f"({', '.join(unknown)}); was it written by another version of mbrlax?"
        )
    for part, Fields in (("config", Config), ("run", RunOptions)):
        hints = typing.get_type_hints(Fields)
        for name, value in saved[part].items():
            if not _fits(value, hints[name]):
                raise ConfigError(
                    f"--resume {folder}: its config.json's {name} is {value!r}, "
                    f"not a value of {_type_name(hints[name])}"
                )
    return saved


def _fits(value, hint) -> bool:
    """Whether a value read from JSON can be a field of type `hint` (a tuple is a JSON list)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any:
        return True
    if origin is typing.Annotated:
        return _fits(value, args[0])
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if hint is type(None):
        return value is None
    if origin is tuple:
        if not isinstance(value, list):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(item, args[0]) for item in value)
        return len(value) == len(args) and all(_fits(item, arg) for item, arg in zip(value, args))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _differences(a: dict, b: dict) -> list[str]:
    return [
        f"{k} is {a.get(k)!r} in the checkpoint, {b.get(k)!r} here"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]


# BEFORE THE RUN: every check, then the run folder


def _prepare(algorithm: str, config, options: RunOptions, saved: dict | None, make_train):
    """Check the flags, join the hosts, plan the programs and take the run folder; returns (the plan,
    the run folder, its lock). Every refusal is a ConfigError, raised before anything is written."""
    if saved is not None:
        # A field added since the folder was written counts as its default, which that version ran.
        diff = _differences({**jsonable(type(config)()), **saved["config"]}, jsonable(config))
        diff += _differences(saved["run"], {k: v for k, v in jsonable(options).items() if k in saved["run"]})
        if diff:
            raise ConfigError(f"--resume: the checkpoint is from another config: {'; '.join(diff)}")
    check_options(options)
    config.validate()
    sweep = parse_sweep(config, options.sweep)
    run_dir = pathlib.Path(options.resume or options.run_dir or default_run_dir(algorithm, config.env))
    check_run_dir(run_dir, resume=bool(options.resume))
    start_distributed(options)
    if multi_host() and not (options.run_dir or options.resume):
        raise ConfigError("a multi-host run needs --run-dir, the same folder name on every process")
    # One program per combination of static values; each is built and checked before any runs.
    planned = plan(config, sweep, make_train, options.seed, options.num_seeds, share=share_of_runs)
    return planned, run_dir, _take_run_dir(algorithm, config, options, run_dir)


def _take_run_dir(algorithm: str, config, options: RunOptions, run_dir: pathlib.Path):
    """Create (or reopen) and lock the run folder, writing its config.json; returns the lock. In a
    multi-host run process 0 locks the folder and process i > 0 its own process-<i>/, and a process
    that cannot take its part stops every process."""
    hosts = multi_host()
    if hosts and not options.resume:
        # Every process has looked at the folder before any writes to it: a process that finds
        # it taken stops them all.
        taken = processes_where(holds_a_run(run_dir))
        if taken:
            raise ConfigError(
                f"--run-dir {run_dir} already holds a run (process {taken[0]} found it); "
                f"continue it with --resume {shell_path(run_dir)}, or name a fresh folder"
            )
    config_json = strict_json(
        {
            "algorithm": algorithm,
            "config": jsonable(config),
            "run": {k: v for k, v in jsonable(options).items() if k in ("seed", "num_seeds", "sweep")},
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
        failed = processes_where(lock_error is not None)
        if failed and lock_error is None:
            lock.release()
            others = ", ".join(str(i) for i in failed)
            lock_error = ConfigError(f"process(es) {others} could not take their part of {run_dir}; see their output")
    if lock_error is not None:
        raise lock_error
    return lock


# THE RUN


def steps_said(programs: list) -> str:
    """The environment steps each run takes, and what was asked for when a schedule rounded it up to
    whole evaluation periods."""
    said = []
    for total in sorted({program.trainer.schedule.total_steps for program in programs}):
        asked = sorted({p.config.total_steps for p in programs if p.trainer.schedule.total_steps == total})
        rounded = [a for a in asked if a != total and type(programs[0].config).BUDGET == "total_steps"]
        note = f" ({', '.join(map(str, rounded))} asked for, rounded up to whole evaluation periods)" if rounded else ""
        said.append(f"{total}{note}")
    return " or ".join(said)


def _run(algorithm: str, config, options: RunOptions, planned: Plan, run_dir: pathlib.Path) -> int:
    """Run the checked programs into the locked run folder, then write its summary."""
    programs, every_run = planned.programs, planned.every_run
    title = f"{algorithm} on {config.env}"
    compiled = f" in {len(programs)} programs" if len(programs) > 1 else ""
    hosts = multi_host()
    here = f", {sum(len(program.runs) for program in programs)} of them here" if hosts else ""
    steps = steps_said(programs)
    print(
        f"{title}: {len(every_run)} run(s){compiled}{here}, {steps} environment steps each, on "
        f"{device_description()}; run folder {run_dir}",
        flush=True,
    )
    resume_command = f"continue with: python algorithms/{algorithm}.py --resume {shell_path(run_dir)}"
    if options.fused:
        resume_command = "the fused mode keeps no checkpoint: run it again with a fresh --run-dir"
    try:
        # In a multi-host run each process keeps its own share (checkpoints included) in a folder of
        # its own, and process 0 gathers every run into the run folder.
        local_dir = run_dir / f"process-{jax.process_index()}" if hosts else run_dir
        failure = None
        try:
            rows, summary = run_programs(programs, local_dir, options, title)
        except BaseException as error:  # every process must reach the gathering below, whatever stopped it
            failure = error
        if hosts:
            # Every process learns whether any failed before the gathering, which would wait forever
            # for a process that has stopped.
            failed = processes_where(failure is not None)
            if failure is None and failed:
                others = ", ".join(str(i) for i in failed)
                failure = NonFiniteError(f"process(es) {others} of the multi-host run failed; see their output")
        if failure is not None:
            raise failure
        if hosts:
            rows = gather_rows(rows, [len(program.runs) for program in programs], every_run)
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
        print(f"{'stopped' if error.asked else 'error'}: {error}{resume}", file=sys.stderr)
        return error.exit_code
    except (KeyboardInterrupt, Signalled) as error:
        how = "interrupted" if isinstance(error, KeyboardInterrupt) else f"stopped by {error}"
        print(f"error: {how}; {resume_command}", file=sys.stderr)
        return getattr(error, "exit_code", 130)
    except OSError as error:
        if disk_full(error):
            print(f"error: the disk holding {run_dir} is full; free some space, then {resume_command}", file=sys.stderr)
            return 1
        reason = folder_unwritable(error)
        if reason is None:
            raise
        print(f"error: the run folder {run_dir} takes no more writes ({reason}); {resume_command}", file=sys.stderr)
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
