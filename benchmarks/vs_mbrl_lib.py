"""mbrl-lib 0.2.0 (PyTorch) and mbrlax side by side, in one run on one machine.

    python benchmarks/vs_mbrl_lib.py          # makes benchmarks/.venv-mbrl-lib on first use
    python benchmarks/vs_mbrl_lib.py --pets-steps 400 --mbpo-steps 400 --seed 0

mbrl-lib goes into a virtual environment of its own (torch from PyPI, several GB with its CUDA
libraries; `--mbrl-lib-python` names an interpreter that already has it) and runs its own training
functions from benchmarks/mbrl_lib_side.py. mbrlax runs here. Both run on the CPU by default, or both
on the GPU with `--device gpu` (mbrl-lib's torch then needs CUDA).

PETS, at mbrl-lib's own example setting (`overrides=pets_cartpole`) on its continuous cart-pole
(`cartpole_continuous` here, the same dynamics, reward and termination): one random episode, then CEM
with population 350, horizon 15, 5 iterations and elite ratio 0.1, 20 particles through an ensemble
of 7 members of 4 x 200 with TS1 propagation, the reward and termination known, and a refit every
50 steps. Measured: seconds per planned action (the planner alone: mbrl-lib's `agent.act`; mbrlax's
planning in an evaluation episode), seconds per environment step with the refits, and returns
(mbrl-lib: its planned training episodes in order; mbrlax: an evaluation episode after every 200
planned steps, each a fresh episode planned with the model of that moment).

MBPO, at mbrl-lib's `mbpo_cartpole` setting on the same task: 400 model rollouts of one step per
environment step, 20 SAC updates per step (256 x 256 networks, batch 256), a refit of 7 members of
4 x 200 every 200 steps, all model data for SAC (real ratio 0). Measured: seconds per environment step
for `--mbpo-steps` steps after `--mbpo-exploration-steps`, evaluations excluded. What still differs:
mbrl-lib learns the reward (here it is known), its refits early-stop on a 20 % validation split with
patience 5 and no cap on the epochs (here the same early stopping, capped at 25 epochs a refit), and
it moves its SAC target every 4 updates (here every update).

Writes benchmarks/results/vs-mbrl-lib-<platform>.json and prints Markdown rows for RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
VENV = ROOT / "benchmarks" / ".venv-mbrl-lib"
# mbrl-lib 0.2.0 asks for hydra-core 1.0.3, which fails on Python 3.11, and gymnasium 0.26.3; it runs
# with hydra-core 1.3 and omegaconf 2.3 (mbrl_lib_side.py says how), so it goes in without its pins.
MBRL_LIB_NEEDS = [
    "torch>=2.0",
    "numpy<2",
    "gymnasium==0.26.3",
    "hydra-core>=1.3,<1.4",
    "omegaconf>=2.3,<2.4",
    "termcolor",
    "tqdm",
    "matplotlib",
    "imageio",
]


def mbrl_lib_python(given: str | None) -> str:
    if given:
        return given
    python = VENV / "bin" / "python"
    if not python.exists():
        print(f"making {VENV} with mbrl-lib 0.2.0 and torch (a few GB, once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q"]
        subprocess.run(pip + MBRL_LIB_NEEDS, check=True)
        subprocess.run(pip + ["--no-deps", "mbrl==0.2.0"], check=True)
    return str(python)


def run_mbrl_lib(python: str, args) -> dict:
    env = dict(os.environ)
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    command = [
        python,
        "-W",
        "ignore",
        str(ROOT / "benchmarks" / "mbrl_lib_side.py"),
        f"--pets-steps={args.pets_steps}",
        f"--mbpo-exploration-steps={args.mbpo_exploration_steps}",
        f"--mbpo-steps={args.mbpo_steps}",
        f"--seed={args.seed}",
        f"--device={'cuda:0' if args.device == 'gpu' else 'cpu'}",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    result = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not result:
        sys.exit(f"mbrl-lib's side failed:\n{done.stderr[-3000:]}")
    return json.loads(result[-1][len("RESULT ") :])


# MBRLAX


def compiled(trainer, config, seed: int):
    """The initial state and the compiled update: (state, config, update, compile seconds)."""
    import jax
    import jax.numpy as jnp

    key = jax.random.PRNGKey(seed)
    start = time.perf_counter()
    init = jax.jit(trainer.init).lower(key, config).compile()
    state = jax.block_until_ready(init(key, config))
    update = jax.jit(trainer.update).lower(state, config, jnp.int32(0)).compile()
    compile_s = time.perf_counter() - start
    return state, config, update, compile_s


def run_mbrlax_pets(args) -> dict:
    import jax
    import jax.numpy as jnp

    from mbrlax.algorithms import pets

    preset = pets.PRESETS["cartpole_continuous"]
    config = pets.Config(**dict(preset, total_steps=200 + args.pets_steps, eval_every=200, eval_episodes=1))
    trainer = pets.make_train(config)
    state, config, update, compile_s = compiled(trainer, config, args.seed)
    start = time.perf_counter()
    evaluate = jax.jit(trainer.evaluate).lower(state, jax.random.PRNGKey(0), config).compile()
    compile_s += time.perf_counter() - start
    loop_s, planning_s, returns = 0.0, [], []
    per_eval = 200 // config.retrain_every
    for u in range(args.pets_steps // config.retrain_every):
        start = time.perf_counter()
        state, _ = jax.block_until_ready(update(state, config, jnp.int32(u)))
        loop_s += time.perf_counter() - start
        if (u + 1) % per_eval == 0:
            start = time.perf_counter()
            metrics = jax.block_until_ready(evaluate(state, jax.random.PRNGKey(args.seed + u), config))
            planning_s.append(time.perf_counter() - start)
            returns.append(float(metrics["eval_return"]))
    steps = args.pets_steps // config.retrain_every * config.retrain_every
    return {
        "planned_steps": steps,
        # Each evaluation plans every step of a 200-step episode (steps after a fall included).
        "seconds_per_action": min(planning_s) / 200,
        "seconds_per_step_with_model_training": loop_s / steps,
        "eval_returns_every_200_steps": returns,
        "compile_s": compile_s,
    }


def run_mbrlax_mbpo(args) -> dict:
    import jax
    import jax.numpy as jnp

    from mbrlax.algorithms import mbpo

    period = 200
    config = mbpo.Config(
        env="cartpole_continuous",
        initial_steps=args.mbpo_exploration_steps,
        total_steps=args.mbpo_exploration_steps + args.mbpo_steps,
        eval_every=args.mbpo_steps,
        eval_episodes=1,
        epoch_length=period,
        model_train_freq=period,
        rollout_batch_size=400 * period,
        rollout_schedule=(0, 15, 1, 1),
        updates_per_step=20,
        real_ratio=0.0,
        ensemble_size=7,
        model_elites=5,
        model_hidden_sizes=(200, 200, 200, 200),
        model_lr=1e-3,
        model_weight_decay=5e-5,
        model_batch_size=256,
        sac_hidden_sizes=(256, 256),
        sac_batch_size=256,
        sac_lr=3e-4,
        target_entropy=-0.05,
    )
    config.validate()
    trainer = mbpo.make_train(config)
    state, config, update, compile_s = compiled(trainer, config, args.seed)
    start = time.perf_counter()
    for u in range(args.mbpo_steps // period):
        state, _ = update(state, config, jnp.int32(u))
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    return {"timed_steps": args.mbpo_steps, "seconds_per_step": seconds / args.mbpo_steps, "compile_s": compile_s}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pets-steps", type=int, default=400, help="planned steps after the random episode")
    parser.add_argument("--mbpo-exploration-steps", type=int, default=200)
    parser.add_argument("--mbpo-steps", type=int, default=400, help="timed MBPO steps (a multiple of 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--mbrl-lib-python", help="an interpreter that has mbrl-lib 0.2.0 (default: make one)")
    args = parser.parse_args()
    if args.pets_steps % 200 or args.mbpo_steps % 200 or args.pets_steps < 200 or args.mbpo_steps < 200:
        parser.error("--pets-steps and --mbpo-steps must be positive multiples of 200")
    if args.device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"

    theirs = run_mbrl_lib(mbrl_lib_python(args.mbrl_lib_python), args)
    print("mbrl-lib:", json.dumps(theirs), flush=True)
    ours = {"pets": run_mbrlax_pets(args), "mbpo": run_mbrlax_mbpo(args)}
    print("mbrlax:", json.dumps(ours), flush=True)

    import jax

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from throughput import git_commit

    device = jax.local_devices()[0]
    meta = {
        "device": f"{device.platform}:{device.device_kind} ({os.cpu_count()} cores)",
        "commit": git_commit(),
        "date": datetime.date.today().isoformat(),
        "mbrl_lib": theirs.pop("library"),
        "args": vars(args),
    }
    ratios = {
        "pets_planning": theirs["pets"]["seconds_per_action"] / ours["pets"]["seconds_per_action"],
        "pets_loop": theirs["pets"]["seconds_per_step_with_model_training"]
        / ours["pets"]["seconds_per_step_with_model_training"],
        "mbpo_loop": theirs["mbpo"]["seconds_per_step"] / ours["mbpo"]["seconds_per_step"],
    }
    out = ROOT / "benchmarks" / "results" / f"vs-mbrl-lib-{device.platform}.json"
    out.write_text(json.dumps({"meta": meta, "mbrl_lib": theirs, "mbrlax": ours, "speedup": ratios}, indent=2))
    p, q = theirs["pets"], ours["pets"]
    where = f"{meta['device']} | {meta['commit']} | {meta['date']}"
    print(
        "\n| measure | mbrl-lib 0.2.0 | mbrlax | mbrlax faster by | device | commit | date |\n|---|---|---|---|---|---|---|\n"
        f"| PETS, s per planned action | {p['seconds_per_action']:.3f} | {q['seconds_per_action']:.3f} "
        f"| {ratios['pets_planning']:.1f}x | {where} |\n"
        f"| PETS, s per env step with refits | {p['seconds_per_step_with_model_training']:.3f} "
        f"| {q['seconds_per_step_with_model_training']:.3f} | {ratios['pets_loop']:.1f}x | {where} |\n"
        f"| MBPO, s per env step | {theirs['mbpo']['seconds_per_step']:.3f} | {ours['mbpo']['seconds_per_step']:.3f} "
        f"| {ratios['mbpo_loop']:.1f}x | {where} |\n"
    )
    print(f"mbrl-lib's planned episode returns: {p['episode_returns']}")
    print(f"mbrlax's evaluation returns after every 200 planned steps: {q['eval_returns_every_200_steps']}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
