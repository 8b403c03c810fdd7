"""Tabular Dyna-Q and Dyna-Q+ (Sutton, "Integrated architectures for learning, planning, and reacting
based on approximating dynamic programming", ICML 1990; as in Sutton and Barto, "Reinforcement
Learning: An Introduction", 2nd ed., sections 8.2 and 8.3, the Tabular Dyna-Q box).

Each real step: an epsilon-greedy action A in S (ties broken at random), the world's R, S', one
step of Q-learning

    Q(S, A) <- Q(S, A) + alpha [R + gamma max_a Q(S', a) - Q(S, A)]

and a deterministic table model Model(S, A) <- (R, S'); then n planning updates, each the same
update on a state S drawn uniformly from those visited and an action A drawn uniformly from those
taken there, with R, S' = Model(S, A). Dyna-Q+ (kappa > 0) plans with the reward

    R + kappa sqrt(tau),   tau = real steps since A was last tried in S,

and, as the book's footnote in section 8.3 says, also plans with the actions never tried in a
visited state, which its model sends back to the same state with reward 0 (tau counted from the
run's start). kappa = 0 is Dyna-Q.

Departures from the book (the rest, and why, on the page):
- The step into the goal ends the episode: its target is R, without max_a Q(G, a) (which is 0 in
  the book's runs too, since no update ever starts from G).
- n is a traced value (a loop's trip count), so runs of n = 0, 5 and 50 are one vmapped program.

`python algorithms/dyna_q.py --figure 8.2` (8.4, 8.5) reproduces the book's figures into a run
folder. Provenance, every departure, presets and commands: docs/algorithms/dyna_q.md.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import pathlib
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mbrlax import envs, presets, runner
from mbrlax.config import RunConfig, setting
from mbrlax.training import ConfigError, Trainer, make_schedule

# THE MATH


def q_learning_update(q, state, action, reward, next_state, terminal, alpha, gamma):
    """Q(s, a) += alpha [r + gamma max_a' Q(s', a') - Q(s, a)], without the max term after a
    terminal step. `q` is [S, A]; returns the new table."""
    target = reward + gamma * (1.0 - terminal) * q[next_state].max()
    return q.at[state, action].add(alpha * (target - q[state, action]))


def exploration_bonus(kappa, last_tried, now):
    """Dyna-Q+'s kappa sqrt(tau), tau = now - last_tried: real steps since the pair was last tried."""
    return kappa * jnp.sqrt((now - last_tried).astype(jnp.float32))


def random_argmax(values, key):
    """An index of the largest value, drawn uniformly among ties (the book breaks ties at random)."""
    return jax.random.categorical(key, jnp.where(values == values.max(), 0.0, -jnp.inf))


def epsilon_greedy(q_row, key, epsilon):
    """With probability epsilon an action uniformly at random, else a greedy one (ties at random)."""
    explore_key, random_key, greedy_key = jax.random.split(key, 3)
    random_action = jax.random.randint(random_key, (), 0, q_row.shape[0])
    return jnp.where(jax.random.uniform(explore_key) < epsilon, random_action, random_argmax(q_row, greedy_key))


# STATE: the value table, the table model, and what the book's figures are read from.


class TableModel(NamedTuple):
    """The deterministic model: for each (S, A) the last R, S' and end seen, and when it was tried."""

    next_state: jax.Array
    """[S, A] int32; an untried pair holds its own state (Dyna-Q+'s model of it)."""
    reward: jax.Array
    """[S, A] float32; 0 for an untried pair."""
    terminal: jax.Array
    """[S, A] float32: 1 where the step ended the episode."""
    tried: jax.Array
    """[S, A] bool."""
    last_tried: jax.Array
    """[S, A] int32: the real step count just after the pair was last tried (0: never)."""
    visited: jax.Array
    """[S] int32: the states visited so far, in order of first visit (the first `num_visited`)."""
    num_visited: jax.Array


def empty_model(num_states: int, num_actions: int) -> TableModel:
    own = jnp.broadcast_to(jnp.arange(num_states, dtype=jnp.int32)[:, None], (num_states, num_actions))
    zeros = jnp.zeros((num_states, num_actions))
    return TableModel(
        own, zeros, zeros, zeros > 0, jnp.zeros_like(own), jnp.zeros(num_states, jnp.int32), jnp.int32(0)
    )


def remember(model: TableModel, state, action, reward, next_state, terminal, now) -> TableModel:
    """Model(S, A) <- (R, S'), tried at step `now`; S joins the visited states on its first visit."""
    first_visit = ~model.tried[state].any()
    visited = model.visited.at[jnp.where(first_visit, model.num_visited, model.visited.shape[0])].set(
        state, mode="drop"
    )
    return model._replace(
        next_state=model.next_state.at[state, action].set(next_state),
        reward=model.reward.at[state, action].set(reward),
        terminal=model.terminal.at[state, action].set(terminal),
        tried=model.tried.at[state, action].set(True),
        last_tried=model.last_tried.at[state, action].set(now),
        visited=visited,
        num_visited=model.num_visited + first_visit,
    )


def plan(q, model: TableModel, key, now, config):
    """n = `config.planning_steps` updates on simulated steps: S uniformly among the visited states,
    A uniformly among those tried there (Dyna-Q+: among all), R + kappa sqrt(tau), S' = Model(S, A)."""

    def planning_update(i, q):
        # One draw of random bits per update, not one per choice: the loop's cost is its draws.
        bits = jax.random.bits(jax.random.fold_in(key, i), (2,))
        state = model.visited[bits[0] % jnp.maximum(model.num_visited, 1).astype(jnp.uint32)]
        allowed = model.tried[state] | (config.kappa > 0)
        pick = bits[1] % allowed.sum().astype(jnp.uint32)
        action = jnp.argmax(jnp.cumsum(allowed) > pick)
        reward = model.reward[state, action] + exploration_bonus(config.kappa, model.last_tried[state, action], now)
        next_state, terminal = model.next_state[state, action], model.terminal[state, action]
        return q_learning_update(q, state, action, reward, next_state, terminal, config.alpha, config.gamma)

    return jax.lax.fori_loop(0, jnp.asarray(config.planning_steps).astype(jnp.int32), planning_update, q)


class DynaQState(NamedTuple):
    q: jax.Array
    model: TableModel
    env_state: Any
    steps: jax.Array
    """Real steps so far."""
    episodes: jax.Array
    """Episodes ended so far."""
    episode_steps: jax.Array
    """Steps of the episode under way."""
    episode_lengths: jax.Array
    """[logged_episodes] int32: the steps of the first episodes (0: not ended yet), Figure 8.2's."""
    cumulative_reward: jax.Array
    """Reward of every real step so far, Figures 8.4 and 8.5's."""
    key: jax.Array


def state_index(obs):
    return jnp.argmax(obs, axis=-1).astype(jnp.int32)


# TRAINING PROGRAM


def tabular_task(config: Config, env=None):
    """The task and its spec, refused in one sentence unless it is tabular."""
    try:
        task, spec = envs.make(config.env) if env is None else envs.wrap(*env)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if not (spec.tabular and spec.discrete):
        raise ConfigError(
            f"dyna_q.py is tabular: it needs a task with discrete actions whose observation is a one-hot state "
            f"(dyna_maze, blocking_maze, shortcut_maze); {spec.name} is not one"
        )
    return task, spec


def make_train(config: Config, env=None) -> Trainer:
    """Dyna-Q on the tabular task `config.env` names, or on `env`, a user's own `(environment,
    EnvSpec)` whose spec says `tabular` (one-hot observations of the state, discrete actions). An
    update is `steps_per_update` real steps, each with its n planning updates."""
    config.validate()
    task, spec = tabular_task(config, env)
    num_states, num_actions = spec.observation_size, spec.action_size
    schedule = make_schedule(config.total_steps, 0, config.steps_per_update, config.eval_every)

    def init(key, config):
        env_key, key = jax.random.split(key)
        zero = jnp.int32(0)
        logged = jnp.zeros(config.logged_episodes, jnp.int32)
        q = jnp.zeros((num_states, num_actions))
        model = empty_model(num_states, num_actions)
        return DynaQState(q, model, task.reset(env_key), zero, zero, zero, logged, jnp.float32(0.0), key)

    def real_step(state: DynaQState, config):
        # ACT AND LEARN DIRECTLY. Acting and planning draw from keys of their own, so the same seed
        # acts alike for every n until the values differ (the book's first episodes coincide).
        act_key, plan_key = jax.random.split(jax.random.fold_in(state.key, state.steps))
        here = state_index(state.env_state.obs)
        action = epsilon_greedy(state.q[here], act_key, config.epsilon)
        env_state = task.step(state.env_state, jax.nn.one_hot(action, num_actions))
        ended = env_state.done > 0
        terminal = env_state.done * (1.0 - env_state.info["truncation"])
        there = state_index(env_state.info["final_obs"])
        q = q_learning_update(state.q, here, action, env_state.reward, there, terminal, config.alpha, config.gamma)
        # LEARN THE MODEL, THEN PLAN
        steps = state.steps + 1
        model = remember(state.model, here, action, env_state.reward, there, terminal, steps)
        q = plan(q, model, plan_key, steps, config)
        episode_steps = state.episode_steps + 1
        slot = jnp.where(ended, state.episodes, config.logged_episodes)
        return state._replace(
            q=q,
            model=model,
            env_state=env_state,
            steps=steps,
            episodes=state.episodes + ended,
            episode_steps=jnp.where(ended, 0, episode_steps),
            episode_lengths=state.episode_lengths.at[slot].set(episode_steps, mode="drop"),
            cumulative_reward=state.cumulative_reward + env_state.reward,
        )

    def update(state: DynaQState, config, update_index):
        del update_index
        start = state
        state = jax.lax.fori_loop(0, config.steps_per_update, lambda i, s: real_step(s, config), state)
        return state, dict(
            reward=state.cumulative_reward - start.cumulative_reward,
            cumulative_reward=state.cumulative_reward,
            episodes=state.episodes.astype(jnp.float32),
            steps_per_episode=(state.steps - start.steps) / jnp.maximum(state.episodes - start.episodes, 1),
        )

    def evaluate(state: DynaQState, key, config):
        return greedy_evaluation(task, state, key, config, num_states, num_actions)

    return Trainer(init=init, update=update, evaluate=evaluate, schedule=schedule, spec=spec)


def greedy_evaluation(task, state: DynaQState, key, config, num_states: int, num_actions: int) -> dict:
    """`eval_episodes` greedy episodes (ties at random) from the start, in parallel, in the world as
    it is now (a changing maze's clock carried over), each for at most as many steps as there are
    states (a greedy path that long loops). eval_return: gamma^(steps - 1) on reaching the goal, 0
    otherwise; eval_steps_to_goal counts a miss as that cap."""
    reset_keys, act_keys = jax.random.split(key)
    fresh = jax.vmap(task.reset)(jax.random.split(reset_keys, config.eval_episodes))
    if "clock" in state.env_state.info:
        clock = jnp.broadcast_to(state.env_state.info["clock"], (config.eval_episodes,))
        fresh = fresh.replace(info={**fresh.info, "clock": clock})

    def step(carry, step_key):
        env_state, steps, reached = carry
        keys = jax.random.split(step_key, config.eval_episodes)
        actions = jax.vmap(random_argmax)(state.q[state_index(env_state.obs)], keys)
        env_state = jax.vmap(task.step)(env_state, jax.nn.one_hot(actions, num_actions))
        now_reached = reached | (env_state.reward > 0)
        return (env_state, steps + ~now_reached, now_reached), None

    init = (fresh, jnp.ones(config.eval_episodes, jnp.int32), jnp.zeros(config.eval_episodes, bool))
    (_, steps, reached), _ = jax.lax.scan(step, init, jax.random.split(act_keys, num_states))
    steps = jnp.where(reached, steps, num_states)
    returns = jnp.where(reached, config.gamma ** (steps - 1).astype(jnp.float32), 0.0)
    return dict(eval_return=returns.mean(), eval_steps_to_goal=steps.mean(), eval_reached_goal=reached.mean())


# SETTINGS: the Config and its presets


@dataclasses.dataclass(frozen=True)
class Config(RunConfig):
    """Dyna-Q settings; the run fields (task, budget, evaluation) are RunConfig's."""

    env: str = "dyna_maze"
    """A tabular task: dyna_maze, blocking_maze, shortcut_maze."""
    total_steps: int = 3000
    """Real steps in all."""
    initial_steps: int = 0
    """No random steps first: the book's agent learns from its first step."""
    eval_every: int = 500
    """Real steps between evaluations."""
    eval_episodes: int = 10
    """Greedy episodes per evaluation, run in parallel."""
    steps_per_update: int = setting(50, positive=True)
    """Real steps (each with its n planning updates) per update, the unit of the metrics' rows."""
    alpha: float = setting(0.1, sweepable=True, within="(0, 1]")
    """Step size of every update, real and planned (the book's Figure 8.2: 0.1)."""
    planning_steps: float = setting(5.0, sweepable=True, within="[0, 10000]")
    """n: planning updates per real step (a whole number; traced, so values of n share a program)."""
    epsilon: float = setting(0.1, sweepable=True, within="[0, 1]")
    """Probability of a random action (the book: 0.1)."""
    gamma: float = setting(0.95, sweepable=True, within="[0, 1]")
    """Discount (the book's mazes: 0.95)."""
    kappa: float = setting(0.0, sweepable=True, within="[0, 1]")
    """Dyna-Q+'s bonus weight: 0 is Dyna-Q; above 0, Dyna-Q+ (also plans with untried actions)."""
    logged_episodes: int = setting(50, positive=True)
    """Episodes whose lengths the state keeps (Figure 8.2 plots the first 50)."""

    def validate(self) -> None:
        super().validate()
        if self.planning_steps != int(self.planning_steps):
            raise ConfigError(f"planning_steps (n) must be a whole number, got {self.planning_steps}")
        if self.episode_length is not None or self.action_repeat != 1:
            raise ConfigError("dyna_q.py's episodes end at the goal: episode_length and action_repeat do not apply")


# Presets, as data: presets/dyna_q.toml (each maze's settings, from the book and its figures).
TASKS, VARIANTS = presets.load(__file__)
PRESETS: dict[str, dict[str, Any]] = {**TASKS, **VARIANTS}


# THE BOOK'S FIGURES: one vmapped program of runs x settings, the figure and its numbers in a folder.

FIGURES = {
    "8.2": dict(env="dyna_maze", sweep="planning_steps", values=(0.0, 5.0, 50.0), labels=("n=0", "n=5", "n=50")),
    "8.4": dict(env="blocking_maze", sweep="kappa", values=(0.0, None), labels=("Dyna-Q", "Dyna-Q+")),
    "8.5": dict(env="shortcut_maze", sweep="kappa", values=(0.0, None), labels=("Dyna-Q", "Dyna-Q+")),
}
"""Figure -> its maze, the swept field and values (None: the maze's preset's), the curves' names."""


def figure_runs(figure: str, num_seeds: int, seed: int = 0, **overrides):
    """The figure's Config (its maze's preset, `overrides` on top) and its runs: each setting x
    `num_seeds` seeds, the same seeds for each."""
    spec = FIGURES[figure]
    config = dataclasses.replace(runner.preset_config(Config, PRESETS, spec["env"], None), **overrides)
    values = [getattr(config, spec["sweep"]) if v is None else v for v in spec["values"]]
    config.validate()
    sweep = runner.Sweep({spec["sweep"]: values}, {})
    return config, runner.plan(config, sweep, make_train, seed, num_seeds).programs[0]


def run_figure(figure: str, num_seeds: int, seed: int = 0, **overrides) -> dict:
    """Every run of the figure as one compiled program. Returns per setting: the first episodes'
    steps [seeds, logged_episodes] (NaN: not ended) and the cumulative reward [seeds, updates]."""
    config, program = figure_runs(figure, num_seeds, seed, **overrides)
    keys, configs = runner.batch_inputs(program.runs, config)
    start = time.perf_counter()
    compiled = jax.jit(jax.vmap(program.trainer)).lower(keys, configs).compile()
    compile_s = time.perf_counter() - start
    state, metrics = jax.block_until_ready(compiled(keys, configs))
    lengths = np.asarray(state.episode_lengths, np.float64)
    lengths[lengths == 0] = np.nan
    reward = np.asarray(metrics["train"]["cumulative_reward"])
    settings = len(FIGURES[figure]["values"])
    return dict(
        config=config,
        steps_per_episode=lengths.reshape(settings, num_seeds, -1),
        cumulative_reward=reward.reshape(settings, num_seeds, -1),
        steps=np.asarray(program.trainer.schedule.steps_per_update * np.arange(1, reward.shape[1] + 1)),
        compile_s=compile_s,
        wall_s=time.perf_counter() - start,
    )


def write_figure(figure: str, result: dict, folder: pathlib.Path) -> dict:
    """figure-<n>.png and figure-<n>.csv (means over the seeds) and summary.json into `folder`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = FIGURES[figure]
    by_episode = figure == "8.2"
    data = result["steps_per_episode"] if by_episode else result["cumulative_reward"]
    finished = np.isfinite(data).sum(axis=1)
    means = np.where(finished > 0, np.nansum(data, axis=1) / np.maximum(finished, 1), np.nan)
    x = np.arange(1, means.shape[1] + 1) if by_episode else result["steps"]
    x_name, y_name = ("episode", "steps per episode") if by_episode else ("time steps", "cumulative reward")
    with open(folder / f"figure-{figure}.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow([x_name.replace(" ", "_"), *spec["labels"]])
        writer.writerows([[int(x[i]), *(f"{m:.4g}" for m in means[:, i])] for i in range(len(x))])
    fig, ax = plt.subplots(figsize=(6, 4))
    # Figure 8.2 leaves the first episode out, as the book does (it is the same for every n).
    shown = slice(1, None) if by_episode else slice(None)
    for label, mean in zip(spec["labels"], means):
        ax.plot(x[shown], mean[shown], label=label)
    ax.set(xlabel=x_name, ylabel=y_name, title=f"Sutton and Barto's Figure {figure}: {spec['env']}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / f"figure-{figure}.png", dpi=100)
    plt.close(fig)
    summary = dict(
        figure=figure,
        config=runner.records.jsonable(result["config"]),
        swept={spec["sweep"]: list(spec["labels"])},
        num_seeds=int(data.shape[1]),
        unfinished_episodes=int(np.isnan(result["steps_per_episode"]).sum()) if by_episode else None,
        compile_time_s=result["compile_s"],
        wall_time_s=result["wall_s"],
        device=runner.records.device_description(),
        commit=runner.records.git_commit(),
    )
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def figure_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dyna_q.py --figure", description="Reproduce a figure of the book.")
    parser.add_argument("--figure", required=True)
    parser.add_argument("--num-seeds", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--total-steps", type=int, help="real steps (default: the maze's preset's)")
    parser.add_argument("--run-dir")
    args = parser.parse_args(argv)
    if args.figure not in FIGURES:
        print(f"error: --figure must be one of {', '.join(FIGURES)}, got {args.figure!r}", file=sys.stderr)
        return 2
    if args.num_seeds < 1:
        print(f"error: num_seeds must be at least 1, got {args.num_seeds}", file=sys.stderr)
        return 2
    overrides = {} if args.total_steps is None else {"total_steps": args.total_steps}
    try:
        figure_runs(args.figure, 1, **overrides)  # every check before anything compiles or is written
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    folder = pathlib.Path(args.run_dir or runner.records.default_run_dir("dyna_q", f"figure-{args.figure}"))
    if folder.exists() and any(folder.iterdir()):
        print(f"error: --run-dir {folder} is not empty; name a fresh folder", file=sys.stderr)
        return 2
    result = run_figure(args.figure, args.num_seeds, args.seed, **overrides)
    folder.mkdir(parents=True, exist_ok=True)
    summary = write_figure(args.figure, result, folder)
    print(
        f"Figure {args.figure}: {summary['num_seeds']} seeds x {len(FIGURES[args.figure]['values'])} settings in one "
        f"program, {summary['wall_time_s']:.1f} s ({summary['compile_time_s']:.1f} s compiling). Run folder: {folder}"
    )
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg == "--figure" or arg.startswith("--figure=") for arg in argv):
        return figure_main(argv)
    return runner.main("dyna_q", Config, PRESETS, make_train, argv)


if __name__ == "__main__":
    sys.exit(main())
