"""Sweeps: a grid of traced hyperparameters x seeds is one program whose summary ranks the settings,
and runs sharded over several devices give what the same runs give on one."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
from helpers import cli_args
from mbrlax.algorithms import mbpo, pets

TINY = dataclasses.replace(pets.Config(), **pets.VARIANTS["tiny"])
TINY_ARGS = cli_args(TINY) + ["--no-progress"]


def test_sweep_of_traced_and_static_fields_ranks_every_setting(tmp_path):
    """alpha is traced (one program for its values and the seeds), horizon static (a program each)."""
    run = tmp_path / "sweep"
    args = TINY_ARGS + ["--num-seeds", "2", "--sweep", "alpha=0.1,0.5", "--sweep", "horizon=4,6"]
    assert pets.main(args + ["--fused", "--run-dir", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["num_runs"] == 8 and (run / "curve.png").exists()
    for i, horizon in enumerate((4, 6)):
        assert json.loads((run / f"setting-{i}" / "setting.json").read_text()) == {"horizon": horizon}
        assert json.loads((run / f"setting-{i}" / "summary.json").read_text())["num_runs"] == 4
    with open(run / "metrics.csv") as f:
        assert {(row["run"], row["horizon"]) for row in csv.DictReader(f)} == {
            (str(i), str(4 if i < 4 else 6)) for i in range(8)
        }
    settings = summary["settings_ranked"]
    assert len(settings) == 4
    assert {(s["alpha"], s["horizon"]) for s in settings} == {(a, h) for a in (0.1, 0.5) for h in (4, 6)}
    per_run = summary["final_eval_return_per_run"]
    for setting in settings:
        assert len(setting["runs"]) == 2
        returns = [per_run[i] for i in setting["runs"]]
        assert abs(setting["final_eval_return_mean"] - np.mean(returns)) < 1e-6
        assert abs(setting["final_eval_return_std"] - np.std(returns)) < 1e-6
    means = [s["final_eval_return_mean"] for s in settings]
    assert means == sorted(means, reverse=True)


def _run_in_subprocess(tmp_path, name: str, devices: int) -> dict:
    """The fused PETS run of 4 seeds in a fresh process that sees `devices` CPU devices."""
    run = tmp_path / name
    script = (
        "import sys, jax; from mbrlax.algorithms import pets; "
        f"assert jax.device_count() == {devices}, jax.devices(); "
        "sys.exit(pets.main(sys.argv[1:]))"
    )
    # Added to the session's XLA flags, not in their place (make test's first session compiles fast).
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    env = dict(os.environ, XLA_FLAGS=flags.strip())
    args = TINY_ARGS + ["--num-seeds", "4", "--fused", "--run-dir", str(run)]
    done = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((run / "summary.json").read_text())


def test_runs_sharded_over_devices_equal_the_runs_on_one(tmp_path):
    """4 seeds over 2 host devices (2 runs each) against the same 4 seeds on one device."""
    sharded = _run_in_subprocess(tmp_path, "two", 2)
    single = _run_in_subprocess(tmp_path, "one", 1)
    assert sharded["device"].startswith("2 x") and single["device"].startswith("1 x")
    np.testing.assert_allclose(
        sharded["final_eval_return_per_run"], single["final_eval_return_per_run"], rtol=1e-4, atol=1e-3
    )
    assert len(set(np.round(single["final_eval_return_per_run"], 3))) > 1  # four different runs


def tiny_overrides():
    defaults = pets.Config()
    return {f: getattr(TINY, f) for f in TINY.__dataclass_fields__ if getattr(TINY, f) != getattr(defaults, f)}


def test_python_api_sweeps_traced_and_static_fields():
    """mbrlax.sweep: 2 traced values x 2 static values x 2 seeds = 8 runs in two programs; a run of
    the sweep equals the same run alone."""
    import mbrlax

    overrides = {k: v for k, v in tiny_overrides().items() if k not in ("env", "horizon")}
    result = mbrlax.sweep("pets", "pendulum", {"alpha": [0.1, 0.5], "horizon": [4, 6]}, seeds=2, **overrides)
    assert len(result["runs"]) == 8
    assert [(r["horizon"], r["alpha"], r["seed"]) for r in result["runs"]] == [
        (h, a, s) for h in (4, 6) for a in (0.1, 0.5) for s in (0, 1)
    ]
    returns = result["eval"]["eval_return"]
    assert returns.shape == (8, len(result["env_steps"])) and np.isfinite(returns).all()
    alone = mbrlax.sweep("pets", "pendulum", {"alpha": [0.5]}, seeds=1, seed=1, horizon=6, **overrides)
    np.testing.assert_allclose(alone["eval"]["eval_return"][0], returns[7], rtol=1e-4, atol=1e-3)


def test_runs_that_do_not_fit_in_memory_are_refused_before_compiling(monkeypatch, capsys, tmp_path):
    from mbrlax.runner import planning

    monkeypatch.setattr(planning, "device_memory_bytes", lambda: (200_000, "a tiny device"))
    code = pets.main(TINY_ARGS + ["--num-seeds", "64", "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "more than a tiny device has" in err and "run at most" in err
    assert not (tmp_path / "r").exists()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _two_processes(args: list[str], algorithm: str = "pets") -> None:
    """An algorithm (PETS by default) in two processes joined by jax.distributed over localhost."""
    module = f"mbrlax.algorithms.{algorithm}"
    command = [sys.executable, "-m", module, *args, "--coordinator", f"localhost:{_free_port()}"]
    command += ["--num-processes", "2"]
    processes = [
        subprocess.Popen(
            command + ["--process-id", str(i)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]


def test_two_processes_give_the_runs_of_one_and_resume(tmp_path):
    """A multi-host run on this machine: two processes run two seeds each, checkpointing their own
    share; process 0 gathers all four. The same as one process's; and a run killed after its second
    evaluation resumes, in both processes, to the same rows."""
    run = tmp_path / "hosts"
    _two_processes(TINY_ARGS + ["--num-seeds", "4", "--run-dir", str(run)])
    hosts = json.loads((run / "summary.json").read_text())
    assert hosts["device"].startswith("2 processes x")

    single = tmp_path / "single"
    assert pets.main(TINY_ARGS + ["--num-seeds", "4", "--run-dir", str(single)]) == 0
    one = json.loads((single / "summary.json").read_text())
    np.testing.assert_allclose(
        hosts["final_eval_return_per_run"], one["final_eval_return_per_run"], rtol=1e-4, atol=1e-3
    )
    with open(run / "metrics.csv") as f, open(single / "metrics.csv") as g:
        gathered, alone = list(csv.DictReader(f)), list(csv.DictReader(g))
    assert [(r["run"], r["seed"], r["env_steps"]) for r in gathered] == [
        (r["run"], r["seed"], r["env_steps"]) for r in alone
    ]

    killed = tmp_path / "killed"
    shutil.copytree(run, killed)
    (killed / "summary.json").unlink()
    for i in range(2):
        checkpoints = sorted((killed / f"process-{i}" / "checkpoints").glob("*.npz"), key=lambda p: int(p.stem))
        assert len(checkpoints) == 2
        checkpoints[-1].unlink()
    _two_processes(["--resume", str(killed), "--no-progress"])
    assert (killed / "metrics.csv").read_text() == (run / "metrics.csv").read_text()


def test_static_fields_that_default_to_none_sweep_by_their_annotation():
    from mbrlax import runner

    config = mbpo.Config()
    assert config.episode_length is None
    assert runner.parse_sweep(config, ("episode_length=100,none",)) == ({}, {"episode_length": [100, None]})
    try:
        runner.parse_sweep(config, ("episode_length=long",))
    except runner.ConfigError as error:
        assert "must be of type int" in str(error)
    else:
        raise AssertionError("a non-integer episode_length was accepted")


def test_process_flags_without_a_coordinator_are_refused(capsys, tmp_path):
    code = pets.main(cli_args(TINY) + ["--num-processes", "2", "--process-id", "1", "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "--coordinator" in err and len(err.strip().splitlines()) == 1


def test_a_half_written_process_checkpoint_is_ignored(tmp_path):
    """A kill while a process writes its checkpoint leaves a partial file, which resume skips."""
    import jax.numpy as jnp
    from mbrlax.runner.records import ProcessCheckpoints

    checkpoints = ProcessCheckpoints(tmp_path)
    checkpoints.save(3, {"w": jnp.ones(2)}, {"history": []})
    (tmp_path / "5.npz.partial").write_bytes(b"cut short")
    assert checkpoints.latest() == 3 and sorted(p.name for p in tmp_path.iterdir()) == ["3.npz", "5.npz.partial"]
    state, meta = checkpoints.restore(3, {"w": jnp.zeros(2)})
    np.testing.assert_array_equal(state["w"], np.ones(2))
    assert meta == {"history": []}


def test_seeds_of_a_gym_task_run_as_processes(tmp_path):
    """A gym/ task steps on the host, one run a process: two seeds run as two processes on this
    machine, and process 0 gathers both."""
    MBPO_TINY = dataclasses.replace(mbpo.Config(), **mbpo.VARIANTS["tiny"])
    run = tmp_path / "gym"  # the tiny config's task is the default, pendulum, so it names none
    _two_processes(
        cli_args(MBPO_TINY) + ["--env", "gym/Pendulum-v1", "--num-seeds", "2", "--run-dir", str(run)], "mbpo"
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["num_runs"] == 2 and np.isfinite(summary["final_eval_return_per_run"]).all()
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert sorted({(r["run"], r["seed"]) for r in rows}) == [("0", "0"), ("1", "1")]
