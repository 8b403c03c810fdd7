"""The guarantees every algorithm gives, tested the same way for the fifteen entry points and PETS with
iLQR, each with its `tiny` preset (VARIANTS["tiny"]: end to end in seconds):

- a run from the command line: two seeds, the run folder's files, a summary with the promised fields;
- kill and resume: a run resumed from a mid-run checkpoint ends with the same numbers and rows as
  the uninterrupted run;
- the same two runs sharded over two devices (forced host devices, in a process of their own),
  chunked, killed and resumed: the resumed run ends as the whole one did, bit for bit, and both
  agree with the runs on one device to float32 rounding at the first evaluation;
- the same program twice gives the same numbers, bit for bit;
- a run's neighbours in a vmapped batch (their seeds, their hyperparameters, its place) change none
  of its bits;
- a user's own environment, passed to `make_train`, runs as the registered task does;
- bad input exits 2 with one sentence, before anything is compiled or written.

That a run alone and the same run batched agree to float32 rounding after one update (and not
bit for bit: XLA rounds a batched dot differently) is tested in tests/test_determinism.py.

The runs are built as the runner builds them (`runner.batch_inputs`, `split_keys`, `over_runs`, the
jitted `init`, `update` and `evaluate`).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import os
import pathlib
import shutil
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mbrlax import runner
from mbrlax.algorithms import alphazero, clearning, dreamer, m2ac, maac, mbmpo, mbpo, muzero, pets, planet, poplin, steve, svg
from mbrlax.algorithms import dyna_q
from mbrlax.algorithms import world_models
from mbrlax.envs import games, registry
from mbrlax.training import split_keys



def _pets_ilqr_main(argv=None) -> int:
    """PETS's CLI with iLQR as the planner: `--preset tiny` stands for `--preset tiny tiny-ilqr`."""
    argv = list(argv or [])
    if argv[:2] == ["--preset", "tiny"]:
        argv[1:2] = ["tiny", "tiny-ilqr"]
    return pets.main(argv)


PETS_ILQR = types.SimpleNamespace(Config=pets.Config, main=_pets_ilqr_main)

# name -> (module with Config and main, the presets its CLI takes, make_train)
ALGORITHMS = {
    "pets": (pets, pets.PRESETS, pets.make_train),
    "pets-ilqr": (
        PETS_ILQR,
        {**pets.PRESETS, "tiny": pets.VARIANTS["tiny"] | pets.VARIANTS["tiny-ilqr"]},
        pets.make_train,
    ),
    "mbpo": (mbpo, mbpo.PRESETS, mbpo.make_train),
    "maac": (maac, maac.PRESETS, maac.make_train),
    "svg": (svg, svg.PRESETS, svg.make_train),
    "alphazero": (alphazero, alphazero.PRESETS, alphazero.make_train),
    "muzero": (muzero, muzero.PRESETS, muzero.make_train),
    "world_models": (world_models, world_models.PRESETS, world_models.make_train),
    "dyna_q": (dyna_q, dyna_q.PRESETS, dyna_q.make_train),
    "mbmpo": (mbmpo, mbmpo.PRESETS, mbmpo.make_train),
    "clearning": (clearning, clearning.PRESETS, clearning.make_train),
    "dreamer": (dreamer, dreamer.PRESETS, dreamer.make_train),
    "steve": (steve, steve.PRESETS, steve.make_train),
    "m2ac": (m2ac, m2ac.PRESETS, m2ac.make_train),
    "poplin": (poplin, poplin.PRESETS, poplin.make_train),
    "planet": (planet, planet.PRESETS, planet.make_train),
}
# Each algorithm's tests run on one pytest-xdist worker (--dist loadgroup in pyproject.toml), so the
# programs and runs cached below are compiled and run once per algorithm.
NAMES = [pytest.param(name, marks=pytest.mark.xdist_group(name), id=name) for name in ALGORITHMS]
UPDATES = 2
SHARDED_SCRIPT = "import sys, helpers; helpers.run_sharded_then_resume(*sys.argv[1:])"
SUMMARY_FIELDS = ("final_eval_return", "env_steps", "wall_time_s", "wall_time_excl_compile_s", "device")


def main_of(name: str):
    return ALGORITHMS[name][0].main


def config_cls(name: str):
    module = ALGORITHMS[name][0]
    return getattr(module, "Config", maac.Config)


@functools.cache
def tiny(name: str):
    """The Config `--preset tiny` gives on the command line."""
    _, presets, _ = ALGORITHMS[name]
    Config = config_cls(name)
    return dataclasses.replace(Config(), **{**presets.get(Config().env, {}), **presets["tiny"]})


@functools.cache
def trainer_of(name: str):
    return ALGORITHMS[name][2](tiny(name))


@functools.cache
def own_environment_trainer(name: str):
    """The tiny config's trainer given its task built by hand, unwrapped, as a user's own."""
    config = tiny(name)
    if games.is_game(config.env):  # a game on pgx's protocol, built by hand
        import pgx

        return ALGORITHMS[name][2](config, env=pgx.make(config.env.removeprefix("pgx/")))
    return ALGORITHMS[name][2](config, env=registry._REGISTRY[config.env]())


@functools.cache
def programs(name: str, num_runs: int, own_environment: bool = False):
    trainer = own_environment_trainer(name) if own_environment else trainer_of(name)
    return (
        jax.jit(runner.over_runs(trainer.init, num_runs)),
        jax.jit(runner.over_runs(trainer.update, num_runs, in_axes=(0, 0, None))),
        jax.jit(runner.over_runs(trainer.evaluate, num_runs)),
    )


def run(
    name: str, seeds: tuple[int, ...], updates: int = UPDATES, scale: dict | None = None, own_environment: bool = False
) -> dict:
    """Runs of `seeds` batched in one program, chunk by chunk as the runner runs them; `scale`
    multiplies traced hyperparameters per run. On the host: the state after init and after each
    update, each update's metrics, each evaluation's."""
    if scale is None:
        return _run_unscaled(name, seeds, updates, own_environment)
    return _run(name, seeds, updates, scale, own_environment)


@functools.cache
def _run_unscaled(name: str, seeds: tuple[int, ...], updates: int, own_environment: bool) -> dict:
    return _run(name, seeds, updates, None, own_environment)


def _run(name, seeds, updates, scale, own_environment, evaluate: bool = True) -> dict:
    config = tiny(name)
    init, update, evaluate_program = programs(name, len(seeds), own_environment)
    runs = [{"seed": s, **runner.hparams_of(config)} for s in seeds]
    keys, configs = runner.batch_inputs(runs, config)
    scaled = {field: getattr(configs, field) * np.asarray(factors, np.float32) for field, factors in (scale or {}).items()}
    configs = dataclasses.replace(configs, **scaled)
    init_keys, eval_keys = jax.vmap(split_keys)(keys)
    state = init(init_keys, configs)
    out = {"states": [jax.device_get(state)], "train": [], "eval": []}
    for u in range(updates):
        state, metrics = update(state, configs, jnp.int32(u))
        out["states"].append(jax.device_get(state))
        out["train"].append(jax.device_get(metrics))
    if evaluate:
        eval_metrics = evaluate_program(state, jax.vmap(jax.random.fold_in, (0, None))(eval_keys, 0), configs)
        out["eval"].append(jax.device_get(eval_metrics))
    return out


def member(tree, i: int):
    return jax.tree_util.tree_map(lambda x: np.asarray(x)[i], tree)


def flat(tree) -> list[tuple[str, np.ndarray]]:
    return [(jax.tree_util.keystr(path), np.asarray(x)) for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


def assert_bitwise_equal(a, b, what: str):
    left, right = flat(a), flat(b)
    assert [p for p, _ in left] == [p for p, _ in right]
    for (path, x), (_, y) in zip(left, right):
        np.testing.assert_array_equal(x, y, err_msg=f"{what}{path} differs", strict=True)


def differ(a, b) -> bool:
    return any(not np.array_equal(x, y) for (_, x), (_, y) in zip(flat(a), flat(b)))


def test_every_algorithm_has_a_tiny_preset():
    for name in ALGORITHMS:
        assert "tiny" in ALGORITHMS[name][1], f"{name} has no tiny preset"
        tiny(name).validate()


@pytest.mark.parametrize("name", NAMES)
def test_cli_run_two_seeds_then_kill_and_resume(name, tmp_path):
    main = main_of(name)
    first = tmp_path / "first"
    assert main(["--preset", "tiny", "--num-seeds", "2", "--no-progress", "--run-dir", str(first)]) == 0
    for file in ("config.json", "metrics.csv", "metrics.jsonl", "curve.png", "summary.json"):
        assert (first / file).exists(), file
    summary = json.loads((first / "summary.json").read_text())
    for field in SUMMARY_FIELDS:
        assert field in summary, field
    returns = summary["final_eval_return_per_run"]
    assert len(returns) == 2 and all(np.isfinite(returns)), returns
    rows = (first / "metrics.csv").read_text().splitlines()
    if trainer_of(name).spec is not None and trainer_of(name).spec.goal_slice is not None:
        # A goal task's run also reports how often, and how lastingly, it reached the goal.
        for field in ("final_eval_success", "final_eval_success_any", "final_eval_success_final"):
            assert 0.0 <= summary[field] <= 1.0, field
        assert summary["final_eval_success_any"] == summary["final_eval_success"]
        assert summary["final_eval_success_any"] >= summary["final_eval_success_final"]
        for column in ("eval_success", "eval_success_any", "eval_success_final", "eval_final_distance"):
            assert column in rows[0].split(","), column
    num_evals = trainer_of(name).schedule.num_evals
    assert num_evals >= 2, "the tiny preset needs two evaluations, so a mid-run checkpoint exists"
    assert len(rows) == 1 + 2 * num_evals

    # Kill and resume: without the final checkpoint the newest is mid-run; resuming from it ends the same.
    second = tmp_path / "second"
    shutil.copytree(first, second)
    steps = sorted(int(p.name) for p in (second / "checkpoints").iterdir() if p.name.isdigit())
    assert len(steps) >= 2, steps
    shutil.rmtree(second / "checkpoints" / str(steps[-1]))
    (second / "summary.json").unlink()
    assert main(["--resume", str(second), "--no-progress"]) == 0
    resumed = json.loads((second / "summary.json").read_text())
    # The resumed run's times include those of the run before the kill.
    assert resumed["compile_time_s"] > summary["compile_time_s"] and resumed["wall_time_s"] > resumed["compile_time_s"]
    assert resumed["final_eval_return_per_run"] == returns
    assert (second / "metrics.csv").read_text() == (first / "metrics.csv").read_text()

    # The same two runs sharded over two devices (forced host devices, in a process of their own),
    # killed and resumed likewise: the resumed run ends as the whole one did, bit for bit, and both
    # agree with the runs on one device to float32 rounding.
    sharded = tmp_path / "sharded"
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2".strip()
    done = subprocess.run(
        [sys.executable, "-c", SHARDED_SCRIPT, name, str(sharded)],
        cwd=pathlib.Path(__file__).parent,
        env=dict(os.environ, XLA_FLAGS=flags),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((sharded / "whole" / "summary.json").read_text())["device"].startswith("2 x")
    assert (sharded / "resumed" / "metrics.csv").read_text() == (sharded / "whole" / "metrics.csv").read_text()
    one_device, two_devices = _numbers(first / "metrics.csv"), _numbers(sharded / "whole" / "metrics.csv")
    assert one_device.keys() == two_devices.keys()
    for column, values in one_device.items():
        # The first evaluation's rows (one a run) to float32 rounding; later ones drift apart as a run
        # alone and batched do (README: "Several devices"); through these few updates the returns stay
        # within a percent (RESULTS: "Several devices").
        np.testing.assert_allclose(two_devices[column][:2], values[:2], rtol=1e-3, atol=1e-4, err_msg=column)
    np.testing.assert_allclose(two_devices["eval_return"], one_device["eval_return"], rtol=1e-2, atol=1e-3)


def _numbers(path) -> dict[str, np.ndarray]:
    with open(path) as file:
        rows = list(csv.DictReader(file))
    return {column: np.array([float(row[column]) for row in rows]) for column in rows[0]}


@pytest.mark.parametrize("name", NAMES)
def test_same_program_same_numbers_and_neighbours_change_nothing(name):
    """Seed 1 twice; next to seed 0, next to seed 7, first instead of second, and next to a run whose
    traced hyperparameters are all halved: the same run, bit for bit, through two updates and an
    evaluation. The neighbours themselves differ, so each comparison could have failed."""
    base = run(name, (0, 1))
    assert_bitwise_equal(base, _run(name, (0, 1), UPDATES, None, False), "the same program again: ")
    reference = member(base, 1)
    other_seed, other_place = run(name, (7, 1)), run(name, (1, 7))
    assert_bitwise_equal(reference, member(other_seed, 1), "next to seed 7: ")
    assert_bitwise_equal(reference, member(other_place, 0), "first in the batch: ")
    assert differ(member(base, 0), member(other_seed, 0))
    sweepable = type(tiny(name)).SWEEPABLE
    if sweepable:
        other_hparams = run(name, (0, 1), scale={field: [0.5, 1.0] for field in sweepable})
        assert_bitwise_equal(reference, member(other_hparams, 1), "next to other hyperparameters: ")
        assert differ(member(base, 0), member(other_hparams, 0))


@pytest.mark.parametrize("name", NAMES)
def test_a_users_own_environment_runs_as_the_registered_one(name):
    """`make_train(config, env=(environment, spec))` with the task built by hand, unwrapped: the
    same runs, bit for bit, through init, two updates and an evaluation, as the task the config names."""
    assert_bitwise_equal(run(name, (0, 1)), run(name, (0, 1), own_environment=True), "own environment: ")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "extra, field",
    [(["--total-steps", "0"], "total_steps"), (["--eval-episodes", "-1"], "eval_episodes"), (["--env", "pendulm"], "pendulum")],
)
def test_bad_input_exits_2_with_one_sentence(name, extra, field, tmp_path, capsys):
    run_dir = tmp_path / "r"
    code = main_of(name)(["--preset", "tiny", "--no-progress", "--run-dir", str(run_dir), *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert field in err, err
    assert not run_dir.exists()
