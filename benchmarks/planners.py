"""iLQR against CEM as PETS's planner, at equal model evaluations and at equal wall time per action.

    python benchmarks/planners.py                          # pendulum and cartpole_swingup, seed 0
    python benchmarks/planners.py --tasks pendulum --seeds 0,1

For each task, three PETS runs on the same small model and budget (BASE below), differing only in
the planner:
- iLQR with this file's settings (`ilqr_iterations`, `ilqr_line_search_steps`: pets.Config's);
- CEM at equal model evaluations: the population that makes CEM's count per planned action
  closest to iLQR's (iterations, particles, horizon fixed; elites a tenth of the population, at
  least 2);
- CEM at equal time: the population whose measured seconds per planned action are closest to
  iLQR's (measured at two populations and interpolated linearly, then measured again at the chosen
  one).

Model evaluations per planned action count forward passes of one ensemble member on one (state,
action) input, as they are computed:
- CEM: population x iterations x particle rows x horizon, a row being one particle through one
  member (TS1: rows = particles; TSinf: particles rounded up to a multiple of the members).
- iLQR through the mean of G planning members (known reward): horizon x G x (1 + iterations x
  (line-search steps + obs + action + 1)): the first rollout, then every iteration's rollouts, one
  per step size, and its linearisation, counted as one primal pass plus one forward-mode (JVP) pass
  per input dimension (`jax.jacfwd`: obs + action tangents); a JVP is counted as one evaluation
  although it costs about twice a forward pass in FLOPs. The cost's derivatives are those of the
  known reward function, not the model's, and are not counted. With a learned reward the cost
  calls the model again (not covered by this count).

Seconds per planned action are this process's CPU seconds (`time.process_time`, all threads; on a
shared machine much steadier than wall time, and on an idle 2-core CPU at most twice the wall time)
of `evaluate` (3 episodes planned at once, 20 steps, on a freshly initialised model: the planners'
work does not depend on the weights), best of 5, divided by 3 x 20. Prints a Markdown table; each
run's final evaluation return is the mean of its 3 evaluation episodes after the budget (one
evaluation, at the end), and its time is its CPU time, compiling included.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
from mbrlax.algorithms import pets
from mbrlax.loops import mpc

# Small enough for a shared CPU: 1 random + 6 planned episodes of 200 steps, members of 2 x 32
# (pendulum, as tests/test_ilqr.py) or 2 x 64 (cartpole), horizon 30, 5 particles, TSinf over 5
# members for CEM; iLQR through the mean of the same 5.
BASE = {
    "pendulum": dict(env="pendulum", total_steps=1400, eval_every=1400, model_hidden_sizes=(32, 32)),
    "cartpole_swingup": dict(
        env="cartpole_swingup",
        episode_length=200,
        total_steps=1400,
        eval_every=1400,
        retrain_every=200,
        model_hidden_sizes=(64, 64),
    ),
}
TIMED_EPISODES, TIMED_STEPS = 3, 20


def model_evaluations(config: pets.Config, obs_size: int, action_size: int) -> int:
    """Ensemble-member forward passes per planned action (see the module docstring)."""
    members = config.model_elites or config.ensemble_size
    if config.planner == "ilqr":
        linearise = obs_size + action_size + 1
        return config.horizon * members * (1 + config.ilqr_iterations * (config.ilqr_line_search_steps + linearise))
    rows = mpc.particles_per_sequence(config.particles, members, config.propagation)
    return config.population * config.cem_iterations * rows * config.horizon


def with_population(config: pets.Config, population: int) -> pets.Config:
    population = max(population, 4)
    return dataclasses.replace(config, population=population, num_elites=max(2, population // 10))


def seconds_per_action(config: pets.Config, repeats: int = 5) -> float:
    """CPU seconds of planning per action through `evaluate` on a fresh model (best of `repeats`)."""
    timed = dataclasses.replace(
        config,
        episode_length=TIMED_STEPS,
        eval_episodes=TIMED_EPISODES,
        total_steps=2 * TIMED_STEPS,
        initial_steps=TIMED_STEPS,
        retrain_every=TIMED_STEPS,
        eval_every=TIMED_STEPS,
    )
    trainer = pets.make_train(timed)
    key = jax.random.PRNGKey(0)
    state = jax.jit(trainer.init)(key, timed)
    evaluate = jax.jit(trainer.evaluate).lower(state, key, timed).compile()
    jax.block_until_ready(evaluate(state, key, timed))
    best = np.inf
    for _ in range(repeats):
        start = time.process_time()
        jax.block_until_ready(evaluate(state, key, timed))
        best = min(best, time.process_time() - start)
    return best / (TIMED_EPISODES * TIMED_STEPS)


def learn(config: pets.Config, seeds: list[int]) -> tuple[list[float], float]:
    """Final evaluation returns of the seeds (vmapped) and the run's CPU time, compile included."""
    trainer = pets.make_train(config)
    configs = jax.tree_util.tree_map(lambda v: jnp.full(len(seeds), v), config)
    keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
    start = time.process_time()
    _, metrics = jax.jit(jax.vmap(trainer))(keys, configs)
    returns = np.asarray(jax.block_until_ready(metrics["eval"]["eval_return"]))[:, -1]
    return returns.tolist(), time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="pendulum,cartpole_swingup")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--ilqr-iterations", type=int, default=pets.Config.ilqr_iterations)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    rows = []
    for task in args.tasks.split(","):
        base = pets.Config(**BASE[task])
        spec = pets.make_train(base).spec
        obs_size, action_size = spec.observation_size, spec.action_size
        ilqr = dataclasses.replace(base, planner="ilqr", ilqr_iterations=args.ilqr_iterations)
        ilqr_evals, ilqr_time = model_evaluations(ilqr, obs_size, action_size), seconds_per_action(ilqr)

        # EQUAL MODEL EVALUATIONS: CEM's count is linear in the population.
        per_sequence = model_evaluations(base, obs_size, action_size) // base.population
        cem_evals = with_population(base, round(ilqr_evals / per_sequence))

        # EQUAL TIME: CPU seconds per action measured at two populations, interpolated linearly.
        small, large = with_population(base, 25), with_population(base, 200)
        t_small, t_large = seconds_per_action(small), seconds_per_action(large)
        slope = (t_large - t_small) / (large.population - small.population)
        population = round(small.population + (ilqr_time - t_small) / max(slope, 1e-12))
        cem_time = with_population(base, min(max(population, 4), 5000))

        runs = (("iLQR", ilqr), ("CEM, equal evaluations", cem_evals), ("CEM, equal time", cem_time))
        for label, config in runs:
            seconds = ilqr_time if config is ilqr else seconds_per_action(config)
            returns, wall = learn(config, seeds)
            if config.planner == "ilqr":
                setting = f"{config.ilqr_iterations} iterations, {config.ilqr_line_search_steps} step sizes"
            else:
                setting = f"population {config.population}, {config.num_elites} elites"
                setting += f", {config.cem_iterations} iterations"
            rows.append(
                (task, label, setting, model_evaluations(config, obs_size, action_size), 1e3 * seconds, returns, wall)
            )
            print(rows[-1], flush=True)

    date = datetime.date.today().isoformat()
    print(f"\nSeeds {seeds}; commit {commit}; {date}; {jax.devices()[0].platform} ({len(jax.devices())} device)")
    columns = ("task", "planner", "setting", "model evaluations per action", "CPU ms per planned action")
    print("| " + " | ".join(columns + ("final eval return", "run CPU time (s)")) + " |")
    print("|---|---|---|---|---|---|---|")
    for task, label, setting, evals, ms, returns, wall in rows:
        shown = ", ".join(f"{r:.1f}" for r in returns)
        print(f"| {task} | {label} | {setting} | {evals:,} | {ms:.2f} | {shown} | {wall:.0f} |")


if __name__ == "__main__":
    main()
