"""What a cluster brings to a run, on the toy algorithm of test_runner.py: a scheduler's SIGTERM and
SIGUSR1 (real signals to a real process), a run folder that stops taking writes, a kill while an
old checkpoint is deleted, and a run folder edited by hand before --resume. Each case stops with
one line, keeps what it says it keeps, and resumes to the uninterrupted run's numbers."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest
from mbrlax import runner
from test_runner import ToyConfig, _stop_at_update, final_returns, make_toy, toy_main

from mbrlax import runner
from mbrlax.runner import records

TESTS = pathlib.Path(__file__).parent
# The toy run in a process of its own, each update slowed on the host so a signal lands mid-run.
SLOW_TOY = """
import sys, time
sys.path.insert(0, sys.argv[1])
from mbrlax.runner import execution
from test_runner import toy_main
real = execution.metric_rows
def slow(*args):
    time.sleep(0.05)
    return real(*args)
execution.metric_rows = slow
sys.exit(toy_main(sys.argv[2:]))
"""
LONG = ["--total-steps", "6000", "--eval-every", "200"]


def start_toy(run: pathlib.Path, *args: str, script: str = SLOW_TOY) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", script, str(TESTS), "--run-dir", str(run), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_checkpoint(run: pathlib.Path, process: subprocess.Popen, update: int = 2, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not (run / "checkpoints" / str(update)).is_dir():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < end, "no checkpoint in time"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory) -> list[float]:
    """The uninterrupted run's final returns."""
    run = tmp_path_factory.mktemp("whole") / "run"
    assert toy_main(["--run-dir", str(run), *LONG]) == 0
    return final_returns(run)


@pytest.mark.parametrize(
    "signum, code, said",
    [
        (signal.SIGTERM, 143, "error: stopped by SIGTERM at environment step"),
        (signal.SIGUSR1, 138, "stopped: SIGUSR1 at"),
    ],
    ids=["SIGTERM", "SIGUSR1"],
)
def test_a_schedulers_signal_stops_with_one_line_and_the_run_resumes(tmp_path, whole_run, signum, code, said):
    """SIGTERM stops as Ctrl-C does (the last complete checkpoint kept); SIGUSR1 checkpoints after the
    update under way, then stops. Either way the resumed run ends with the uninterrupted run's numbers."""
    run = tmp_path / "run"
    process = start_toy(run, *LONG)
    wait_for_checkpoint(run, process)
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    assert process.returncode == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(said), err
    assert f"continue with: python algorithms/toy.py --resume {run}" in lines[0]
    stopped_at = int(lines[0].split("environment step ")[1].split(":")[0].split(";")[0])
    kept = int(lines[0].split("after ")[1].split(" environment steps")[0])
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert kept == 100 * steps[-1] and not (run / "summary.json").exists()
    if signum == signal.SIGUSR1:
        assert kept == stopped_at  # a checkpoint where it stopped, between two evaluations or on one
    assert toy_main(["--resume", str(run)]) == 0
    assert final_returns(run) == whole_run


SIGNAL_WHILE_FUSED = """
import os, signal, sys, time
sys.path.insert(0, sys.argv[1])
import jax
real = jax.block_until_ready
def signalled_while_running(tree):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(60)
    return real(tree)
jax.block_until_ready = signalled_while_running
from test_runner import toy_main
sys.exit(toy_main(sys.argv[2:]))
"""


def test_a_signal_to_the_fused_mode_says_nothing_is_kept(tmp_path):
    """SIGTERM while the whole run is one program (sent where the host waits for it)."""
    process = start_toy(tmp_path / "run", "--fused", script=SIGNAL_WHILE_FUSED)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert err.strip().splitlines() == [
        "error: stopped by SIGTERM; the fused mode keeps no checkpoint: run it again with a fresh --run-dir"
    ]


def test_a_run_folder_made_read_only_mid_run_stops_with_one_line(tmp_path, whole_run):
    """The run folder becomes a read-only mount of itself (as a disk remounted read-only would, where
    this machine lets us mount): the run stops with one line, and resumes once it can write again."""
    run = tmp_path / "run"
    process = start_toy(run, *LONG)
    wait_for_checkpoint(run, process)
    bound = subprocess.run(["mount", "--bind", str(run), str(run)], capture_output=True, text=True)
    if bound.returncode:
        process.kill()
        process.communicate()
        pytest.skip(f"cannot mount here (needs root): {bound.stderr.strip()}")
    try:
        read_only = subprocess.run(["mount", "-o", "remount,bind,ro", str(run)], capture_output=True, text=True)
        assert read_only.returncode == 0, read_only.stderr
        _, err = process.communicate(timeout=120)
    finally:
        subprocess.run(["umount", str(run)], capture_output=True)
    assert process.returncode == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"the run folder {run} takes no more writes (read-only" in lines[0], err
    assert "checkpoint, after" in lines[0] and f"--resume {run}" in lines[0]
    assert toy_main(["--resume", str(run)]) == 0
    assert final_returns(run) == whole_run


def test_a_write_refused_mid_run_stops_with_one_line(tmp_path, capsys, monkeypatch):
    """The case seen as a user who is not root: the metrics file's write is refused (PermissionError)."""
    run = tmp_path / "run"
    real = records.write_whole
    calls = []

    def refuse_the_second_csv(path, write):
        calls.append(path.name)
        if calls.count("metrics.csv") == 2:
            raise PermissionError(13, "Permission denied", str(path.parent / f".metrics.{os.getpid()}.partial.csv"))
        return real(path, write)

    monkeypatch.setattr(records, "write_whole", refuse_the_second_csv)
    assert toy_main(["--run-dir", str(run), *LONG]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "takes no more writes (permission denied" in err, err


KILL_WHILE_DELETING = """
import os, shutil, signal, sys
sys.path.insert(0, sys.argv[1])
from test_runner import toy_main
real = shutil.rmtree
def rmtree(path, *args, **kwargs):
    path = str(path)
    if path.endswith(".deleted") and os.path.isdir(path) and os.listdir(path):
        # Half of the old checkpoint's files gone, then the kill.
        for folder, _, files in os.walk(path):
            for name in files[: len(files) // 2 + 1]:
                os.unlink(os.path.join(folder, name))
        os.kill(os.getpid(), signal.SIGKILL)
    return real(path, *args, **kwargs)
shutil.rmtree = rmtree
sys.exit(toy_main(sys.argv[2:]))
"""


def test_a_kill_while_an_old_checkpoint_is_deleted_leaves_only_whole_ones(tmp_path, whole_run):
    run = tmp_path / "run"
    process = start_toy(run, *LONG, script=KILL_WHILE_DELETING)
    _, err = process.communicate(timeout=120)
    assert process.returncode == -signal.SIGKILL, err
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert steps and all((run / "checkpoints" / str(s) / "_CHECKPOINT_METADATA").exists() for s in steps)
    resumed = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); from test_runner import toy_main; "
         "sys.exit(toy_main(sys.argv[2:]))", str(TESTS), "--resume", str(run)],
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0 and "WARNING" not in resumed.stderr, resumed.stderr
    assert not (run / "checkpoints" / ".deleted").exists()
    assert final_returns(run) == whole_run


def test_a_half_deleted_checkpoint_of_an_earlier_version_is_finished_off_quietly(tmp_path, capfd, whole_run):
    """Versions before the deletion by renaming left, on a kill, an old step folder without its metadata."""
    run = tmp_path / "run"
    assert toy_main(["--run-dir", str(run), *LONG]) == 0
    older, newer = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    (run / "checkpoints" / str(older) / "_CHECKPOINT_METADATA").unlink()
    (run / "summary.json").unlink()
    capfd.readouterr()
    assert toy_main(["--resume", str(run)]) == 0
    assert "Metadata file does not exist" not in capfd.readouterr().err
    assert not (run / "checkpoints" / str(older)).exists()
    assert final_returns(run) == whole_run


def test_resume_in_the_fused_mode_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert toy_main(["--run-dir", str(run)]) == 0
    capsys.readouterr()
    assert toy_main(["--resume", str(run), "--fused"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--fused" in err and "--resume" in err


PRESETS = {"fast": {"lr": 0.5}, "slow": {"lr": 0.05}}


def preset_main(argv) -> int:
    return runner.main("toy", ToyConfig, PRESETS, make_toy, ["--no-progress", *argv])


def test_a_preset_that_would_change_a_resumed_run_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert preset_main(["--run-dir", str(run), "--preset", "fast"]) == 0
    (run / "summary.json").unlink()
    capsys.readouterr()
    assert preset_main(["--resume", str(run), "--preset", "slow"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--preset slow would change the run (lr is 0.5 there, 0.05 in it)" in err
    assert not (run / "summary.json").exists()
    assert preset_main(["--resume", str(run), "--preset", "fast"]) == 0  # the preset it ran under changes nothing


def test_the_printed_resume_command_is_quoted_for_the_shell(tmp_path, capsys, monkeypatch):
    run = tmp_path / "dir with space" / "ünï's run"
    _stop_at_update(monkeypatch, 3, KeyboardInterrupt())
    assert toy_main(["--run-dir", str(run)]) == 130
    err = capsys.readouterr().err.strip()
    command = err.split("continue with: ")[1]
    assert shlex.split(command) == ["python", "algorithms/toy.py", "--resume", str(run)]


@pytest.mark.parametrize(
    "part, field, value",
    [("config", "total_steps", "abc"), ("run", "seed", "0"), ("config", "lr", [0.1]), ("config", "eval_every", 2.5),
     ("config", None, []), ("run", None, "seeds")],
)
def test_a_hand_edited_config_of_the_wrong_type_is_refused(tmp_path, capsys, part, field, value):
    run = tmp_path / "run"
    assert toy_main(["--run-dir", str(run)]) == 0
    saved = json.loads((run / "config.json").read_text())
    if field is None:
        saved[part] = value
    else:
        saved[part][field] = value
    (run / "config.json").write_text(json.dumps(saved))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert toy_main(["--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: --resume"), err
    assert (field or repr(part)) in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_hand_edited_config_with_another_valid_value_is_refused(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        _stop_at_update(patch, 5, KeyboardInterrupt())
        assert toy_main(["--run-dir", str(run)]) == 130
    saved = json.loads((run / "config.json").read_text())
    saved["config"]["lr"] = 0.2
    (run / "config.json").write_text(json.dumps(saved))
    capsys.readouterr()
    assert toy_main(["--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "written under another config (lr is 0.1 there, 0.2 here)" in err, err
    assert not (run / "summary.json").exists()


@dataclasses.dataclass(frozen=True)
class GrownToyConfig(ToyConfig):
    """ToyConfig in a later version: `lr` was called `old_lr`, and a field was added since."""

    RENAMED = {"old_lr": "lr"}
    added: float = 1.0


def test_a_folder_from_before_a_rename_and_a_new_field_resumes(tmp_path, capsys, monkeypatch):
    """config.json is read with the new names; the checkpoint's recorded config lacks the added
    field, which counts as its default (what the earlier version ran), so the run goes on to the
    uninterrupted run's numbers."""
    whole, run = tmp_path / "whole", tmp_path / "run"
    assert toy_main(["--run-dir", str(whole)]) == 0
    with monkeypatch.context() as patch:
        _stop_at_update(patch, 3, KeyboardInterrupt())
        assert toy_main(["--run-dir", str(run)]) == 130
    saved = json.loads((run / "config.json").read_text())
    saved["config"]["old_lr"] = saved["config"].pop("lr")
    (run / "config.json").write_text(json.dumps(saved))
    grown = ["--no-progress", "--resume", str(run)]
    assert runner.main("toy", GrownToyConfig, {}, make_toy, grown) == 0, capsys.readouterr().err
    assert final_returns(run) == final_returns(whole)


def test_a_checkpoints_folder_replaced_by_a_file_is_one_sentence(tmp_path, capsys):
    run = tmp_path / "run"
    assert toy_main(["--run-dir", str(run)]) == 0
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").write_text("not a folder")
    capsys.readouterr()
    assert toy_main(["--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a file where the run's checkpoints folder should be" in err, err


def test_a_number_beyond_float32_is_refused_before_compiling(tmp_path, capsys):
    assert toy_main(["--run-dir", str(tmp_path / "run"), "--lr", "1e39"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lr is 1e+39, beyond float32's largest" in err, err
    assert not (tmp_path / "run").exists()
