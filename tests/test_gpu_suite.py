"""benchmarks/gpu_suite.py at toy sizes on the CPU: every row runs through the same scripts as on a
GPU, results.json holds every row, and the budget bounds the suite (a row past its limit is killed
and reported as timed out)."""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SUITE = ROOT / "benchmarks" / "gpu_suite.py"
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_suite  # noqa: E402

ROWS = [row.name for row in gpu_suite.THROUGHPUT]


def run_suite(out: pathlib.Path, budget: float, *flags: str) -> tuple[dict, float, subprocess.CompletedProcess]:
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(SUITE), "--tiny", "--budget-s", str(budget), "--out", str(out), *flags],
        capture_output=True,
        text=True,
        timeout=budget + 120,
    )
    elapsed = time.monotonic() - start
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "results.json").read_text()), elapsed, done


def check_rows(results: dict) -> None:
    rows = results["rows"]
    assert [r["name"] for r in rows] == ROWS
    for r in rows:
        assert r["status"] in ("ok", "timed out", "skipped"), f"{r['name']} {r['status']}: {r.get('message')}"
        for key in ("device", "jax", "commit", "date", "compile_s", "wall_s", "command", "figure", "figures"):
            assert key in r, (r["name"], key)
        if r["status"] == "ok":
            assert math.isfinite(r["figure"]), r
            assert math.isfinite(r["compile_s"]) and r["compile_s"] > 0, r
            assert r["wall_s"] >= r["compile_s"], r
            assert r["figures"]["compile_s"] == r["compile_s"]
            assert r["date"] and r["markdown"].startswith("| ")
        elif r["status"] == "timed out":
            assert r["message"].startswith("timed out after"), r
        else:
            assert r["message"].startswith("not started"), r


@pytest.mark.slow
def test_tiny_suite_reports_every_row(tmp_path):
    results, elapsed, done = run_suite(tmp_path, 120)
    check_rows(results)
    assert results["suite"]["device"].endswith("cpu:cpu") and results["suite"]["tiny"]
    assert elapsed < 120 + 20, elapsed
    # On an idle 2-core machine every row finishes; under load the later ones may be cut off, never the first.
    assert results["rows"][0]["status"] == "ok", results["rows"][0]
    for row in results["rows"]:
        assert row["name"] in done.stdout  # one line per row as it finishes
    assert (tmp_path / "suite.log").read_text().count("compiled in") >= 1
    assert (tmp_path / "results.md").exists()


def test_small_budget_times_rows_out_instead_of_overrunning(tmp_path):
    budget = 20.0  # the probe (importing JAX) counts against it, slow on a loaded machine
    results, elapsed, _ = run_suite(tmp_path, budget, "--jobs", "1")
    check_rows(results)
    statuses = [r["status"] for r in results["rows"]]
    assert "timed out" in statuses, statuses
    assert elapsed < budget + 6, elapsed
    timed_out = [r for r in results["rows"] if r["status"] == "timed out"]
    assert all(r["wall_s"] <= r["timeout_s"] + 3 for r in timed_out), timed_out


def test_dry_run_lists_both_modes():
    for mode, rows in (("throughput", gpu_suite.THROUGHPUT), ("learning", gpu_suite.LEARNING)):
        done = subprocess.run(
            [sys.executable, str(SUITE), "--mode", mode, "--dry-run", "--budget-s", "540"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        for row in rows:
            assert row.name in done.stdout


def test_row_limits_follow_the_budget_left():
    limits = gpu_suite.GPU_LIMITS
    # Twice the fair share of what is left, never past what is left, nothing under the floor.
    assert gpu_suite.row_limit(540, 1.0, 18.0, limits) == pytest.approx(2 * 540 / 18)
    assert gpu_suite.row_limit(30, 1.0, 1.0, limits) == pytest.approx(30 - limits.margin)
    assert gpu_suite.row_limit(limits.floor + limits.margin - 1, 1.0, 1.0, limits) is None
    plan = gpu_suite.plan(gpu_suite.THROUGHPUT, 540, limits, 1)
    assert sum(p for p in plan if p) <= 540
    assert plan[0] is not None and plan[-1] is None  # the lowest priority goes first when time is short


def test_a_gpu_row_is_not_started_with_less_than_its_compile_needs():
    limits = gpu_suite.GPU_LIMITS
    # Its fair share would be 2 * 540 / 18 = 60 s, below MBPO's 150: it gets 150.
    assert gpu_suite.row_limit(540, 1.0, 18.0, limits, min_s=150) == pytest.approx(150)
    assert gpu_suite.row_limit(120, 1.0, 1.0, limits, min_s=150) is None  # not worth starting
    mbpo = next(r for r in gpu_suite.THROUGHPUT if r.name == "mbpo-1seed")
    assert gpu_suite.min_time(mbpo, limits) >= 116 and gpu_suite.min_time(mbpo, gpu_suite.TINY_LIMITS) == 0
