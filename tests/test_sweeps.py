"""Sweeps: a grid of traced hyperparameters x seeds is one program whose summary ranks the settings,
and runs sharded over several devices give what the same runs give on one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from helpers import cli_args
from mbrlax.algorithms import pets
from test_pets import TINY

TINY_ARGS = cli_args(TINY) + ["--no-progress"]


def test_sweep_summary_ranks_the_settings(tmp_path):
    run = tmp_path / "sweep"
    args = TINY_ARGS + ["--num-seeds", "2", "--sweep", "alpha=0.1,0.5", "--sweep", "model_lr=0.001,0.003"]
    assert pets.main(args + ["--fused", "--run-dir", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["num_runs"] == 8 and (run / "curve.png").exists()
    settings = summary["settings_ranked"]
    assert len(settings) == 4
    assert {(s["alpha"], s["model_lr"]) for s in settings} == {(a, m) for a in (0.1, 0.5) for m in (0.001, 0.003)}
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
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
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
    from mbrlax import runner

    monkeypatch.setattr(runner, "device_memory_bytes", lambda: (200_000, "a tiny device"))
    code = pets.main(TINY_ARGS + ["--num-seeds", "64", "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "more than a tiny device has" in err and "run at most" in err
    assert not (tmp_path / "r").exists()
