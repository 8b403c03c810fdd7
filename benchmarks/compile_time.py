"""Compile time of each algorithm's chunked `update` program, lowering and XLA compilation apart.

    python benchmarks/compile_time.py                  # every program below
    python benchmarks/compile_time.py mbpo dreamer_12m # some of them

Each program is built as the runner's chunked mode builds it (`runner.execute`:
`jax.jit(over_runs(trainer.update, 1, in_axes=(0, 0, None)), donate_argnums=0)`, one run, lowered
on the state's shapes from `jax.eval_shape` of `init`) at the setting of the algorithm's row in
benchmarks/throughput.py: MBPO and MAAC at the paper's HalfCheetah with a model period of 250 steps,
MB-MPO at the paper's HalfCheetah with 30 meta-steps, C-learning on brax/ant_goal with 20 vector
steps, Dreamer's 12m size on pendulum and pendulum_pixels, PETS at mbrl-lib's cartpole (its update and
its planning `evaluate`, which the throughput row times). Nothing is run, so the sizes that only a
GPU can run still compile here. `lower_s` is tracing to StableHLO, `compile_s` XLA's part, each in
wall seconds and in this process's CPU seconds (`*_cpu_s`, every thread), the steadier figure on a
shared machine; `--repeats` keeps the best of several. `--evaluate` adds every algorithm's `evaluate`
program, which the runner compiles beside `update`. On a GPU, a second run under
`XLA_FLAGS=--xla_gpu_autotune_level=0` separates XLA's GEMM and convolution autotuning from the rest.

Writes benchmarks/results/compile-time-<platform>.json with the device, commit and date.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

from mbrlax.runner import over_runs

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from throughput import device_info, git_commit  # noqa: E402


def uncommitted() -> bool | None:
    """Whether the working tree differs from the commit named beside the figures."""
    try:
        command = ["git", "status", "--porcelain", "--untracked-files=no"]
        out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=5)
    except OSError:
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def _period(module, period: int = 250):
    """throughput.py's `_period_config` for MBPO and MAAC at the paper's model period."""
    preset = module.PRESETS["brax/halfcheetah"]
    return module.Config(
        **dict(
            preset,
            model_train_freq=period,
            epoch_length=max(period, 1000),
            rollout_batch_size=400 * period,
            total_steps=preset["initial_steps"] + 2 * period,
            eval_every=2 * period,
            eval_episodes=1,
        )
    )


def mbpo():
    from mbrlax.algorithms import mbpo

    return mbpo, _period(mbpo)


def maac():
    from mbrlax.algorithms import maac

    return maac, _period(maac)


def mbmpo():
    from mbrlax.algorithms import mbmpo

    preset = dict(mbmpo.PRESETS["brax/halfcheetah"], meta_steps=30)
    preset.update(total_steps=preset["initial_steps"] + preset["real_steps_per_iteration"])
    return mbmpo, mbmpo.Config(**preset)


def clearning():
    from mbrlax.algorithms import clearning

    preset = dict(clearning.PRESETS["brax/ant_goal"])
    chunk = preset.get("num_envs", clearning.Config.num_envs) * 20
    preset.update(steps_per_update=chunk, initial_steps=chunk, total_steps=2 * chunk, eval_every=chunk)
    return clearning, clearning.Config(**preset)


def _dreamer(task: str):
    from mbrlax.algorithms import dreamer

    steps = 16
    config = dataclasses.replace(
        dreamer.Config(),
        **dreamer.VARIANTS["12m"],
        env=task,
        train_ratio=512,
        initial_steps=1024,
        steps_per_update=steps,
        total_steps=1024 + 2 * steps,
        eval_every=steps,
    )
    return dreamer, config


def pets():
    from mbrlax.algorithms import pets

    steps = 3
    config = dataclasses.replace(
        pets.Config(**pets.PRESETS["cartpole_swingup"]),
        episode_length=steps,
        eval_episodes=1,
        total_steps=2 * steps,
        eval_every=steps,
        initial_steps=steps,
        retrain_every=steps,
    )
    return pets, config


PROGRAMS = {
    "mbpo": mbpo,
    "maac": maac,
    "mbmpo": mbmpo,
    "clearning": clearning,
    "dreamer_12m": lambda: _dreamer("pendulum"),
    "dreamer_12m_pixels": lambda: _dreamer("pendulum_pixels"),
    "pets": pets,
}


def measure(name: str, repeats: int = 1, evaluate: bool = False) -> list[dict]:
    module, config = PROGRAMS[name]()
    trainer = module.make_train(config)
    keys = jax.random.split(jax.random.PRNGKey(0), 1)
    configs = jax.tree_util.tree_map(lambda v: jnp.full((1,), v), config)
    state = jax.eval_shape(over_runs(trainer.init, 1), keys, configs)
    programs = {
        "update": (
            jax.jit(over_runs(trainer.update, 1, in_axes=(0, 0, None)), donate_argnums=0),
            (state, configs, jax.ShapeDtypeStruct((), jnp.int32)),
        )
    }
    if evaluate or name == "pets":  # the runner compiles it too; PETS's throughput row times planning in it
        programs["evaluate"] = (jax.jit(over_runs(trainer.evaluate, 1)), (state, keys, configs))
    rows = []
    for program, (fn, args) in programs.items():
        best = {}
        for _ in range(repeats):
            # Wall and process CPU seconds (all threads): on a shared machine the CPU time is the
            # steadier figure. Each repeat lowers afresh after clearing JAX's in-memory caches, which
            # would otherwise hand back the first compilation.
            jax.clear_caches()
            wall, cpu = time.perf_counter(), time.process_time()
            lowered = fn.lower(*args)
            times = {"lower_s": time.perf_counter() - wall, "lower_cpu_s": time.process_time() - cpu}
            wall, cpu = time.perf_counter(), time.process_time()
            lowered.compile()
            times.update(compile_s=time.perf_counter() - wall, compile_cpu_s=time.process_time() - cpu)
            best = {k: min(v, best.get(k, v)) for k, v in times.items()}
        rows.append(
            {
                "program": f"{name}.{program}",
                "env": config.env,
                **{k: round(v, 2) for k, v in best.items()},
                "hlo_chars": len(lowered.as_text()),
                "repeats": repeats,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("programs", nargs="*", default=list(PROGRAMS), help=f"any of {list(PROGRAMS)}")
    parser.add_argument("--evaluate", action="store_true", help="also each algorithm's `evaluate` program")
    parser.add_argument("--repeats", type=int, default=1, help="compile each program this many times; the best is kept")
    parser.add_argument("--out", default=None, help="JSON (default: benchmarks/results/compile-time-<platform>.json)")
    args = parser.parse_args()
    unknown = [p for p in args.programs if p not in PROGRAMS]
    if unknown:
        parser.error(f"unknown program(s) {unknown}; choose from {list(PROGRAMS)}")
    info = device_info()
    meta = {
        "device": f"{info['num_devices']} x {info['platform']}:{info['device_kind']}",
        "cpu_cores": os.cpu_count(),
        "commit": git_commit(),
        "uncommitted_changes": uncommitted(),
        "date": datetime.date.today().isoformat(),
        "jax": jax.__version__,
    }
    rows = [row for name in args.programs for row in measure(name, args.repeats, args.evaluate)]
    out = pathlib.Path(args.out or ROOT / "benchmarks" / "results" / f"compile-time-{info['platform']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
