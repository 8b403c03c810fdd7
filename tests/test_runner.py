"""The run folder's promises, on a toy algorithm that compiles in a second: a used folder is refused,
a folder in use is locked, NaN stops the fused mode as it does the chunked one, summaries are strict
JSON, a full disk or Ctrl-C stops with one line and a resumable folder, and a damaged newest
checkpoint falls back to the one before it."""

from __future__ import annotations

import dataclasses
import errno
import gc
import json
import logging
import pathlib
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import pytest

from mbrlax import runner
from mbrlax.runner import execution, planning, records
from mbrlax.config import RunConfig, setting
from mbrlax.training import ConfigError, Trainer, make_schedule


@dataclasses.dataclass(frozen=True)
class ToyConfig(RunConfig):
    """A random walk whose return is its position: state, updates, evaluations and checkpoints with
    nothing to learn."""

    env: str = "toy"
    total_steps: int = 600
    eval_every: int = 200
    eval_episodes: int = 1
    lr: float = setting(0.1, sweepable=True)
    nan_at: int = 0
    """The update (1, 2, ...) whose loss and state turn NaN; 0 for never."""
    steps_per_update: int | None = None
    """Environment steps an update counts (None: 100)."""



def make_toy(config: ToyConfig) -> Trainer:
    config.validate()
    schedule = make_schedule(config.total_steps, 0, config.steps_per_update or 100, config.eval_every)

    def init(key, config):
        return {"w": jnp.zeros(()), "key": key}

    def update(state, config, index):
        key, step_key = jax.random.split(state["key"])
        w = state["w"] + config.lr * jax.random.normal(step_key)
        w = jnp.where(index + 1 == config.nan_at, jnp.nan, w)
        return {"w": w, "key": key}, {"loss": w}

    def evaluate(state, key, config):
        return {"eval_return": state["w"]}

    return Trainer(init, update, evaluate, schedule)


def toy_main(argv) -> int:
    return runner.main("toy", ToyConfig, {}, make_toy, ["--no-progress", *argv])


def strict_load(path: pathlib.Path):
    def refuse(constant):
        raise ValueError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def final_returns(run: pathlib.Path) -> list[float]:
    return strict_load(run / "summary.json")["final_eval_return_per_run"]


def test_a_used_run_folder_is_refused_and_left_as_it_was(tmp_path, capsys):
    run = tmp_path / "run"
    assert toy_main(["--run-dir", str(run), "--seed", "0"]) == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert toy_main(["--run-dir", str(run), "--seed", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--resume {run}" in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_run_folder_in_use_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert toy_main(["--run-dir", str(run)]) == 0
    capsys.readouterr()
    held = records.FolderLock(run)  # as a run still writing the folder holds it
    try:
        assert toy_main(["--resume", str(run)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "being written by process" in err
    finally:
        held.release()
    assert toy_main(["--resume", str(run)]) == 0  # the lock goes with its holder


def test_a_run_folder_in_use_by_another_process_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('held', flush=True); time.sleep(60)", str(run / ".lock")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match="being written"):
            records.FolderLock(run)
    finally:
        holder.kill()
        holder.wait()
    records.FolderLock(run).release()


def test_the_fused_mode_stops_on_nan_with_the_quantity_named(tmp_path, capsys):
    run = tmp_path / "run"
    assert toy_main(["--run-dir", str(run), "--fused", "--nan-at", "4"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "stopped at environment step 400: loss became NaN or infinite" in err
    assert not (run / "summary.json").exists()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line, parse_constant=lambda constant: pytest.fail(f"{constant} in metrics.jsonl")) for line in lines]
    assert [r["update"] for r in rows] == [1, 2, 3]  # the rows before the NaN, none after
    # The chunked mode stops at the same place.
    assert toy_main(["--run-dir", str(tmp_path / "chunked"), "--nan-at", "4"]) == 1
    assert "stopped at environment step 400: loss became NaN or infinite" in capsys.readouterr().err


def test_summaries_are_strict_json():
    text = records.strict_json({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -float("inf")}})
    assert json.loads(text) == {"a": None, "b": [1.0, None], "c": {"d": None}}


def test_the_final_line_says_when_steps_were_rounded_up(tmp_path, capsys):
    assert toy_main(["--run-dir", str(tmp_path / "run"), "--total-steps", "450", "--eval-every", "200"]) == 0
    out = capsys.readouterr().out
    assert "600 (450 asked for, rounded up to whole evaluation periods) environment steps" in out.splitlines()[-1]


def test_memory_check_says_when_not_even_one_run_fits(monkeypatch):
    monkeypatch.setattr(planning, "device_memory_bytes", lambda: (8, "a tiny device"))
    trainer = make_toy(ToyConfig())
    with pytest.raises(ConfigError, match="even one run does not fit"):
        planning.check_memory(trainer, [{"seed": 0, "lr": 0.1}], ToyConfig())


def _stop_at_update(monkeypatch, update: int, error: BaseException):
    """Raise `error` where the runner takes the rows of update `update` (the loop's host side)."""
    real = execution.metric_rows

    def rows(runs, metrics, env_steps, u):
        if u == update:
            raise error
        return real(runs, metrics, env_steps, u)

    monkeypatch.setattr(execution, "metric_rows", rows)


def test_ctrl_c_stops_with_one_line_and_the_run_resumes_to_the_same_result(tmp_path, capsys, monkeypatch):
    whole = tmp_path / "whole"
    assert toy_main(["--run-dir", str(whole)]) == 0
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        _stop_at_update(patch, 5, KeyboardInterrupt())
        assert toy_main(["--run-dir", str(run)]) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "interrupted at environment step 500" in err and "after 400 environment steps, is kept" in err
    assert f"--resume {run}" in err
    assert toy_main(["--resume", str(run)]) == 0
    assert final_returns(run) == final_returns(whole)


def test_a_full_disk_stops_with_one_line_and_leaves_no_partial_files(tmp_path, capsys, monkeypatch):
    whole = tmp_path / "whole"
    assert toy_main(["--run-dir", str(whole)]) == 0
    run = tmp_path / "run"
    real_save = records.Checkpoints.save

    def save(self, update, state, meta):
        if update == 4:  # the second checkpoint: as orbax does, a temporary folder, then the disk fills
            (self.directory / "4.orbax-checkpoint-tmp-123").mkdir()
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, update, state, meta)

    with monkeypatch.context() as patch:
        patch.setattr(records.Checkpoints, "save", save)
        assert toy_main(["--run-dir", str(run)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"the disk holding {run} is full" in err and "after 200 environment steps, is kept" in err
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["2"]
    assert not list(run.rglob("*partial*")) and not list(run.rglob("*tmp*"))
    assert toy_main(["--resume", str(run)]) == 0
    assert final_returns(run) == final_returns(whole)


def test_a_file_written_on_a_full_disk_keeps_its_old_content(tmp_path):
    path = tmp_path / "curve.png"
    path.write_bytes(b"old")

    def fill_the_disk(partial):
        partial.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        records.write_whole(path, fill_the_disk)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["curve.png"]


def test_a_librarys_later_report_of_the_full_disk_is_dropped_and_other_errors_kept(caplog):
    """asyncio logs an orbax writer task's error when the garbage collector frees the task, at any
    later moment; the full disk the run has reported already is not told again, any other error is."""
    records.DiskFullRepeats.install()
    records.DiskFullRepeats.install()
    asyncio_logger, absl_logger = logging.getLogger("asyncio"), logging.getLogger("absl")
    assert sum(isinstance(f, records.DiskFullRepeats) for f in asyncio_logger.filters) == 1
    tensorstore_error = ValueError('RESOURCE_EXHAUSTED: Error writing "1/0": No space left on device')
    wrapped = RuntimeError("the writer failed")
    wrapped.__cause__ = OSError(errno.EDQUOT, "Disk quota exceeded")
    other = ValueError("a shape that does not match")
    with caplog.at_level(logging.ERROR):
        for logger, error in [(asyncio_logger, tensorstore_error), (absl_logger, wrapped), (asyncio_logger, other)]:
            logger.error("Task exception was never retrieved", exc_info=(type(error), error, None))
        absl_logger.error("writing failed: No space left on device")
    assert [record.exc_info[1] for record in caplog.records] == [other]


@pytest.mark.parametrize("checked_first", [True, False], ids=["space-checked", "orbax-meets-it"])
def test_a_full_disk_for_real(tmp_path, capsys, caplog, monkeypatch, checked_first):
    """On a 1 MiB tmpfs (where this machine lets us mount one): the run stops with one line, keeps
    a whole checkpoint, and leaves no half-written file; both when the free space is checked before a
    checkpoint and when orbax's writers meet the full disk themselves. Nothing is printed or logged
    after that line, not even when the writers' leftovers are freed (asyncio's tracebacks came then
    in about one run in four of this case before `DiskFullRepeats`)."""
    if not checked_first:
        monkeypatch.setattr(records, "require_free_space", lambda folder, state_bytes: None)
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        # Fill the disk but for room for about one checkpoint.
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (1024 * 1024 - 160 * 1024))
        code = toy_main(["--run-dir", str(disk / "run"), "--total-steps", "20000", "--eval-every", "100"])
        monkeypatch.undo()
        gc.collect()
        err = capsys.readouterr().err.strip()
        assert code == 1 and len(err.splitlines()) == 1 and "is full" in err, err
        assert not [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
        run = disk / "run"
        assert not list(run.rglob("*partial*")) and not list(run.rglob("*tmp*"))
        assert all(p.stat().st_size > 0 for p in run.rglob("*") if p.is_file() and p.name != ".lock")
        filler.unlink()
        assert toy_main(["--resume", str(run)]) == 0
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def _damage(checkpoint: pathlib.Path):
    for path in checkpoint.rglob("*"):
        if path.is_file():
            path.write_bytes(b"\x00garbage")


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path, capsys):
    whole = tmp_path / "whole"
    assert toy_main(["--run-dir", str(whole)]) == 0
    run = tmp_path / "run"
    with pytest.MonkeyPatch.context() as patch:
        _stop_at_update(patch, 7, KeyboardInterrupt())  # after the checkpoints at updates 4 and 6
        assert toy_main(["--run-dir", str(run), "--total-steps", "800"]) == 130
    capsys.readouterr()
    _damage(run / "checkpoints" / "6")
    assert toy_main(["--resume", str(run)]) == 0
    err = capsys.readouterr().err
    assert "after 600 environment steps does not restore" in err and "resumes from the one after 400" in err
    assert (run / "damaged-checkpoint-6").is_dir()
    whole_800 = tmp_path / "whole800"
    assert toy_main(["--run-dir", str(whole_800), "--total-steps", "800"]) == 0
    assert final_returns(run) == final_returns(whole_800)


def test_when_no_checkpoint_restores_each_is_named(tmp_path, capsys):
    run = tmp_path / "run"
    with pytest.MonkeyPatch.context() as patch:
        _stop_at_update(patch, 5, KeyboardInterrupt())
        assert toy_main(["--run-dir", str(run)]) == 130
    for checkpoint in (run / "checkpoints").iterdir():
        _damage(checkpoint)
    capsys.readouterr()
    assert toy_main(["--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no checkpoint" in err
    assert str(run / "checkpoints" / "2") in err and str(run / "checkpoints" / "4") in err


def test_a_swept_value_gets_the_checks_of_a_single_value():
    with pytest.raises(ConfigError, match="--sweep lr=-1: lr is a learning rate and must be positive"):
        runner.expand_runs(ToyConfig(), runner.RunOptions(sweep=("lr=0.1,-1",)))


def test_a_plan_is_a_program_per_static_setting_each_with_its_seeds_and_traced_values():
    sweep = planning.Sweep(traced={"lr": [0.1, 0.2]}, static={"total_steps": [600, 800]})
    planned = runner.plan(ToyConfig(), sweep, make_toy, seed=3, num_seeds=2)
    assert [program.setting for program in planned.programs] == [{"total_steps": 600}, {"total_steps": 800}]
    for program, total in zip(planned.programs, (600, 800)):
        assert program.config == ToyConfig(total_steps=total)
        assert program.trainer.schedule.total_steps == total
        assert program.runs == [
            {"seed": seed, "lr": lr, "total_steps": total} for lr in (0.1, 0.2) for seed in (3, 4)
        ]
    assert planned.every_run == [run for program in planned.programs for run in program.runs]


def test_a_static_field_that_defaults_to_none_sweeps_to_none(tmp_path):
    """The sweep is read once, against the Config as given: a setting's own value (200) does not
    change how "none" reads."""
    run = tmp_path / "run"
    assert toy_main(["--run-dir", str(run), "--sweep", "steps-per-update=200,none"]) == 0
    assert json.loads((run / "setting-1" / "setting.json").read_text()) == {"steps_per_update": None}
    assert strict_load(run / "summary.json")["num_runs"] == 2


def host_toy(config: ToyConfig, restarts: list | None = None) -> Trainer:
    """The toy on a task that steps on the host, as its spec says; a resumed run restarts its
    episodes by the Trainer's `fresh_episodes`, which notes each (restored, fresh) position."""

    def fresh_episodes(restored, fresh):
        restarts.append((restored["w"].tolist(), fresh["w"].tolist()))
        return restored

    trainer = make_toy(config)
    return dataclasses.replace(trainer, spec=types.SimpleNamespace(steps_on_host=True), fresh_episodes=fresh_episodes)


def test_a_task_that_steps_on_the_host_runs_one_run_a_process(tmp_path, capsys):
    run = tmp_path / "run"
    code = runner.main("toy", ToyConfig, {}, host_toy, ["--no-progress", "--num-seeds", "2", "--run-dir", str(run)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "toy steps on the host, so a process runs one run of it, not 2" in err
    assert not run.exists()


def test_a_resumed_host_task_starts_new_episodes_as_its_trainer_says(tmp_path, monkeypatch):
    restarts = []

    def host_main(argv):
        return runner.main("toy", ToyConfig, {}, lambda config: host_toy(config, restarts), ["--no-progress", *argv])

    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        _stop_at_update(patch, 5, KeyboardInterrupt())
        assert host_main(["--run-dir", str(run)]) == 130
    assert restarts == []
    assert host_main(["--resume", str(run)]) == 0
    [(restored, fresh)] = restarts  # once, on resuming: the state after update 4 and one init just made
    assert fresh == [0.0] and restored != [0.0]


def test_a_run_folder_on_a_read_only_disk_is_refused_before_anything_runs(tmp_path, capsys):
    disk = tmp_path / "readonly"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        assert toy_main(["--run-dir", str(disk / "run")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "cannot be written" in err
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
