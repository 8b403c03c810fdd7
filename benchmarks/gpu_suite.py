"""One GPU call does it all: every throughput row of benchmarks/throughput.py inside a time budget.

    benchmarks/gpu_suite --budget-s 540 --out results/gpu      # the throughput rows, highest priority first
    benchmarks/gpu_suite --dry-run                              # the rows, their commands and their budgets
    benchmarks/gpu_suite --tiny --budget-s 120 --out /tmp/gs    # every row at toy sizes on a CPU (CI)
    benchmarks/gpu_suite --mode learning --budget-s 540 --out results/gpu-learning   # the papers' runs

(`benchmarks/gpu_suite` is this file run with the right Python; on the lent GPU machine it also
installs mbrlax from the carried wheels; its header has the one-line command.)

Each row is one program of benchmarks/throughput.py (one algorithm, one setting, one number of
environments or seeds), run as `python benchmarks/throughput.py ...` in a subprocess of its own. A
row gets a time limit computed from what is left of the budget (below); a row that runs past it is
killed and reported as "timed out after N s" (with its compile time, if it got that far), and the
suite moves on. A row whose process fails is reported as "failed" with its last line of output;
rows the budget no longer covers are reported as "skipped". Every row as it finishes prints one
line: name, figure, compile time, wall time. The out folder gets:
- results.json: the suite (mode, budget, device, jax version, commit, date) and every row (status,
  headline figure, every figure throughput.py reported, compile_s apart from the wall time, the
  command that reproduces it, its Markdown row for benchmarks/RESULTS.md), rewritten after each row;
- results.md: the rows' Markdown, as benchmarks/RESULTS.md's tables have them;
- suite.log: every line every row printed;
- scaling.png: aggregate throughput against the number of runs (benchmarks/scaling.py).

Time limits: before row i, with R seconds of the budget left and the rows from i on weighing W
(each row has a weight, its expected share of the work), row i may run for
    min(R - margin, max(floor, 2 * R * weight_i / W)),
twice its fair share of what is left, so a slow row leaves time to the rows after it and rows that
finish early give theirs to the next; once R - margin is under the floor a row is not started
(with --jobs J rows at a time, W counts as W / J).

`--tiny` runs every row at toy sizes on the CPU, two at a time, with XLA's slow optimisations off so
they compile fast: the same scripts and code paths as on a GPU, so the suite cannot rot (CI runs it,
tests/test_gpu_suite.py); its figures mean nothing.

`--mode learning` runs the papers' learning runs that fit a GPU window, each as its algorithm's
own command with `--run-dir` under the out folder, from benchmarks/returns.py's full-budget entries.
Each may take all that is left of the budget (so: one a window, `--only NAME`); at its limit it is
stopped as by Ctrl-C, keeping its last checkpoint, and the same command with the same --out resumes
it. A row reports the final evaluation, or the last evaluation before its limit.

The parent process never initialises JAX (a GPU backend would hold the device's memory): a short
probe subprocess names the device first, and where JAX sees no GPU the suite stops there unless
`--allow-cpu` (or `--tiny`).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import json
import math
import os
import pathlib
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import returns  # noqa: E402  (benchmarks/returns.py: the papers' learning runs; imports no JAX)


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    """Short, unique, file-name safe."""
    title: str
    argv: tuple[str, ...]
    """The command after `python`: a throughput.py row, or an algorithm's run (learning mode)."""
    tiny: tuple[str, ...] = ()
    """The same command at toy sizes for a CPU (--tiny)."""
    figure: str = ""
    """The headline figure: a key of throughput.py's row, or of the run's summary.json."""
    unit: str = ""
    weight: float = 1.0
    """Expected share of the work, for the time limits."""
    reference: str = ""
    """Learning mode: the paper's figure and where it comes from."""
    min_s: float = 0.0
    """On a GPU, the least time worth giving the row: its compile time as measured on an H200 at
    9631cf8 (issue 17's table) and a margin to start and run; a row that cannot get it is not
    started, rather than killed before it reports anything."""


def throughput(*args: str) -> tuple[str, ...]:
    return ("benchmarks/throughput.py", *args)


def overrides(**fields) -> tuple[str, ...]:
    out = []
    for field, value in fields.items():
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        out += ["--override", f"{field}={text}"]
    return tuple(out)


# Toy sizes for --tiny: the same scripts and code paths, every size a CPU compiles and runs in seconds.
PETS_TINY = ("--steps", "2", "--repeats", "1", "--peak-matmul", "256") + overrides(
    population=16, num_elites=4, horizon=4, particles=4, cem_iterations=2, model_hidden_sizes=(16, 16),
    ensemble_size=3, model_elites=2, model_max_epochs=1,
)  # fmt: skip
PERIOD_TINY = ("--period", "10", "--repeats", "1") + overrides(
    env="pendulum", initial_steps=40, epoch_length=40, rollout_batch_size=20, updates_per_step=2,
    ensemble_size=3, model_elites=2, model_hidden_sizes=(16, 16), sac_hidden_sizes=(16, 16), model_batch_size=16,
    sac_batch_size=16, model_max_epochs=1,
)  # fmt: skip
DREAMER_TINY = ("--dreamer-sizes", "tiny", "--dreamer-env-steps", "2", "--repeats", "1") + overrides(
    batch_size=2, sequence_length=4, train_ratio=8, initial_steps=8, deter_size=16, hidden_size=16, layers=1,
    stoch_size=4, classes=4, cnn_depth=2, horizon=2,
)  # fmt: skip
CLEARNING_TINY = ("--goal-tasks", "point_maze_open", "--vector-steps", "2", "--repeats", "1") + overrides(
    num_envs=4, hidden_sizes=(16, 16), batch_size=16, updates_per_step=1, repr_size=8,
)  # fmt: skip
PLANET_TINY = ("--planet-variants", "tiny", "--repeats", "1")
ALPHAZERO_TINY = ("--repeats", "1") + overrides(
    num_envs=8, width=16, batch_size=16, updates_per_iteration=2, num_simulations=4, eval_simulations=4,
    replay_capacity=1000,
)  # fmt: skip
MUZERO_TINY = ("--repeats", "1") + overrides(
    num_envs=4, rollout_length=4, num_simulations=4, eval_simulations=4, width=16, latent_size=8, support_size=5,
    batch_size=8, updates_per_iteration=2, unroll_steps=3, td_steps=3, replay_capacity=256,
)  # fmt: skip
MBMPO_TINY = ("--meta-steps", "1", "--repeats", "1") + overrides(
    env="pendulum", num_envs=2, initial_steps=20, real_steps_per_iteration=20, eval_every=20, eval_episodes=1,
    ensemble_size=2, tasks_per_model=1, imagined_trajectories=2, imagined_horizon=4, cg_iterations=2,
    max_backtracks=2, policy_hidden_sizes=(8,), model_hidden_sizes=(16,), model_batch_size=16, model_max_epochs=1,
)  # fmt: skip

# Highest priority first: the rows behind the goals on one GPU (PETS: at most 10 ms an action
# for one environment, 25 % of FP32 peak for 256; MBPO and MAAC: 100 env steps/s for one seed, 8
# seeds at 6x one; C-learning: 1 M env steps a minute on ant; Dreamer 12m: 50,000 replayed steps/s,
# many seeds at 10x one; MB-MPO: an iteration under 10 s), cheapest of each pair first.
THROUGHPUT = [
    Row("pets-1env", "PETS, mbrl-lib cartpole planner, 1 env",
        throughput("pets", "--num-envs", "1", "--steps", "10", "--repeats", "2"),
        throughput("pets", "--num-envs", "1", *PETS_TINY), "ms_per_action_step", "ms per action"),
    Row("pets-256env", "PETS, mbrl-lib cartpole planner, 256 envs planned at once",
        throughput("pets", "--num-envs", "256", "--steps", "4", "--repeats", "1"),
        throughput("pets", "--num-envs", "8", *PETS_TINY), "fraction_of_fp32_peak", "% of FP32 peak", 1.5),
    Row("mbpo-1seed", "MBPO, paper HalfCheetah (G = 40, 400 rollouts a step), model period 250, 1 seed",
        throughput("mbpo", "--num-seeds", "1", "--period", "250", "--repeats", "1"),
        throughput("mbpo", "--num-seeds", "1", *PERIOD_TINY), "env_steps_per_s", "env steps/s", 1.5, min_s=150),
    Row("mbpo-8seeds", "MBPO, paper HalfCheetah, model period 250, 8 seeds vmapped",
        throughput("mbpo", "--num-seeds", "8", "--period", "250", "--repeats", "1"),
        throughput("mbpo", "--num-seeds", "2", *PERIOD_TINY), "env_steps_per_s", "env steps/s", 1.5, min_s=170),
    Row("clearning-ant-256envs", "C-learning, brax/ant_goal, 256 envs, 1 seed",
        throughput("clearning", "--goal-tasks", "brax/ant_goal", "--num-seeds", "1", "--repeats", "2"),
        throughput("clearning", "--num-seeds", "1", *CLEARNING_TINY), "env_steps_per_minute", "env steps/min", min_s=60),
    Row("dreamer-12m-pixels-1seed", "Dreamer 12m from 64 x 64 pixels (pendulum_pixels), 1 seed",
        throughput("dreamer", "--dreamer-tasks", "pendulum_pixels", "--dreamer-sizes", "12m", "--num-seeds", "1",
                   "--repeats", "2"),
        throughput("dreamer", "--dreamer-tasks", "pendulum_pixels", "--num-seeds", "1", *DREAMER_TINY),
        "replayed_per_s", "replayed steps/s", 1.5, min_s=75),
    Row("dreamer-12m-pixels-8seeds", "Dreamer 12m from pixels, 8 seeds vmapped",
        throughput("dreamer", "--dreamer-tasks", "pendulum_pixels", "--dreamer-sizes", "12m", "--num-seeds", "8",
                   "--repeats", "1"),
        throughput("dreamer", "--dreamer-tasks", "pendulum_pixels", "--num-seeds", "2", *DREAMER_TINY),
        "replayed_per_s", "replayed steps/s", 1.5, min_s=105),
    # Under vmap, per-seed convolution kernels make grouped convolutions; the matmul form avoids them.
    Row("dreamer-12m-pixels-8seeds-matmul", "Dreamer 12m from pixels, 8 seeds vmapped, --convolution matmul",
        throughput("dreamer", "--dreamer-tasks", "pendulum_pixels", "--dreamer-sizes", "12m", "--num-seeds", "8",
                   "--repeats", "1", "--override", "convolution=matmul"),
        throughput("dreamer", "--dreamer-tasks", "pendulum_pixels", "--num-seeds", "2", *DREAMER_TINY,
                   "--override", "convolution=matmul"),
        "replayed_per_s", "replayed steps/s", 1.5, min_s=105),
    Row("dreamer-small-state-1seed", "Dreamer small from state (pendulum), 1 seed",
        throughput("dreamer", "--dreamer-tasks", "pendulum", "--dreamer-sizes", "small", "--num-seeds", "1",
                   "--repeats", "2"),
        throughput("dreamer", "--dreamer-tasks", "pendulum", "--num-seeds", "1", *DREAMER_TINY),
        "replayed_per_s", "replayed steps/s"),
    Row("dreamer-small-state-32seeds", "Dreamer small from state, 32 seeds vmapped",
        throughput("dreamer", "--dreamer-tasks", "pendulum", "--dreamer-sizes", "small", "--num-seeds", "32",
                   "--repeats", "1"),
        throughput("dreamer", "--dreamer-tasks", "pendulum", "--num-seeds", "4", *DREAMER_TINY),
        "replayed_per_s", "replayed steps/s"),
    Row("mbmpo-iteration", "MB-MPO, one paper HalfCheetah iteration (30 TRPO meta-steps), 1 seed",
        throughput("mbmpo", "--num-seeds", "1", "--meta-steps", "30", "--repeats", "1"),
        throughput("mbmpo", "--num-seeds", "1", *MBMPO_TINY), "seconds_per_iteration", "s per iteration", 1.5, min_s=95),
    Row("clearning-maze-1run", "C-learning, open point maze (32 envs), 1 run",
        throughput("clearning", "--goal-tasks", "point_maze_open", "--num-seeds", "1", "--repeats", "2"),
        throughput("clearning", "--num-seeds", "1", *CLEARNING_TINY), "env_steps_per_s", "env steps/s", 0.75),
    Row("clearning-maze-128runs", "C-learning, open point maze, 128 runs vmapped",
        throughput("clearning", "--goal-tasks", "point_maze_open", "--num-seeds", "128", "--repeats", "1"),
        throughput("clearning", "--num-seeds", "4", *CLEARNING_TINY), "env_steps_per_s", "env steps/s"),
    Row("maac-1seed", "MAAC, authors' HalfCheetah (H = 3, G = 8), model period 250, 1 seed",
        throughput("maac", "--num-seeds", "1", "--period", "250", "--repeats", "1"),
        throughput("maac", "--num-seeds", "1", *PERIOD_TINY), "env_steps_per_s", "env steps/s", 1.5, min_s=150),
    Row("maac-8seeds", "MAAC, authors' HalfCheetah, model period 250, 8 seeds vmapped",
        throughput("maac", "--num-seeds", "8", "--period", "250", "--repeats", "1"),
        throughput("maac", "--num-seeds", "2", *PERIOD_TINY), "env_steps_per_s", "env steps/s", 1.5, min_s=170),
    Row("steve-1seed", "STEVE, its authors' settings on HalfCheetah (H = 3, G = 4), model period 250, 1 seed",
        throughput("steve", "--num-seeds", "1", "--period", "250", "--repeats", "1"),
        throughput("steve", "--num-seeds", "1", *PERIOD_TINY), "env_steps_per_s", "env steps/s", 0.75),
    Row("m2ac-1seed", "M2AC, macura's HalfCheetah (H = 10, G = 40), model period 250, 1 seed",
        throughput("m2ac", "--num-seeds", "1", "--period", "250", "--repeats", "1"),
        throughput("m2ac", "--num-seeds", "1", *PERIOD_TINY), "env_steps_per_s", "env steps/s", 0.75),
    Row("planet-paper-pixels-1seed", "PlaNet at the paper's sizes and planner from pixels (pendulum_pixels), 1 seed",
        throughput("planet", "--planet-tasks", "pendulum_pixels", "--planet-variants", "paper", "--num-seeds", "1",
                   "--repeats", "1"),
        throughput("planet", "--planet-tasks", "pendulum_pixels", "--num-seeds", "1", *PLANET_TINY),
        "env_steps_per_s", "env steps/s", 0.75),
    Row("planet-state-8seeds", "PlaNet's pendulum preset from state, 8 seeds vmapped",
        throughput("planet", "--planet-tasks", "pendulum", "--planet-variants", "task", "--num-seeds", "8",
                   "--repeats", "1"),
        throughput("planet", "--planet-tasks", "pendulum", "--num-seeds", "2", *PLANET_TINY),
        "env_steps_per_s", "env steps/s", 0.75),
    Row("poplin-1env", "POPLIN-A (headline) and POPLIN-P planning, pendulum defaults (pop 100, H 30), 1 env",
        throughput("poplin", "--num-envs", "1", "--steps", "10", "--repeats", "2"),
        throughput("poplin", "--num-envs", "1", *PETS_TINY, *overrides(policy_hidden_sizes=(16,))),
        "ms_per_action_step", "ms per action", 0.75),
    Row("alphazero-tictactoe-8seeds", "AlphaZero self-play on tic-tac-toe (512 games, PUCT 32, Gumbel 8), 8 seeds",
        throughput("alphazero", "--num-seeds", "8", "--repeats", "1"),
        throughput("alphazero", "--num-seeds", "2", *ALPHAZERO_TINY), "moves_per_s", "self-play moves/s", 0.75),
    Row("muzero-cartpole-8seeds", "MuZero's loop on cartpole_discrete (16 envs, PUCT 50 and Gumbel 8), 8 seeds",
        throughput("muzero", "--num-seeds", "8", "--repeats", "1"),
        throughput("muzero", "--num-seeds", "2", *MUZERO_TINY), "env_steps_per_s", "env steps/s", 0.75),
]  # fmt: skip


def learning_row(name: str, algorithm: str, task: str, steps: int, title: str, weight: float) -> Row:
    """A full-budget entry of benchmarks/returns.py, at `steps` environment steps."""
    entry = next(e for e in returns.FULL if e.algorithm == algorithm and e.task == task)
    flags = list(entry.flags)
    flags[flags.index("--total-steps") + 1] = str(steps)
    metric = "final_eval_success" if algorithm == "clearning" else "final_eval_return"
    reference = f"{entry.reference:g}: {entry.source}; {entry.comparison}" if entry.reference is not None else ""
    return Row(
        name,
        title,
        (f"algorithms/{algorithm}.py", "--env", task, *flags),
        figure=metric,
        unit="success" if algorithm == "clearning" else "return",
        weight=weight,
        reference=reference,
    )


LEARNING = [
    learning_row("clearning-ant-jaxgcrl-10M", "clearning", "brax/ant_goal_jaxgcrl", 10_000_000,
                 "C-learning (contrastive, JaxGCRL's CRL) on JaxGCRL's Ant, 10 M steps", 2.0),
    learning_row("mbmpo-halfcheetah-100k", "mbmpo", "brax/halfcheetah", 100_000,
                 "MB-MPO on brax/halfcheetah (200-step episodes), 100k steps", 1.5),
    learning_row("pets-halfcheetah-50k", "pets", "gym/HalfCheetah-v5", 50_000,
                 "PETS on gymnasium's HalfCheetah-v5 (host stepping), 50k steps", 1.0),
    learning_row("mbpo-hopper-125k", "mbpo", "gym/Hopper-v5", 125_000,
                 "MBPO on gymnasium's Hopper-v5 (host stepping), 125k steps", 1.5),
]  # fmt: skip


# TIME LIMITS


@dataclasses.dataclass(frozen=True)
class Limits:
    floor: float
    """No row is started with less than this; a row's limit is at least this."""
    margin: float
    """Kept back at the end for the suite's own files."""
    slack: float = 2.0
    """A row may take this many times its fair share of what is left."""
    probe: float = 60.0
    """Most seconds the device probe may take."""


GPU_LIMITS = Limits(floor=20.0, margin=4.0)
TINY_LIMITS = Limits(floor=2.0, margin=0.5, probe=20.0)
# A learning run stopped early still reports its last evaluation, but one run well done beats two
# halves: each run may take all that is left (one a GPU window: --only NAME).
LEARNING_LIMITS = Limits(floor=60.0, margin=25.0, slack=math.inf)


def row_limit(left: float, weight: float, weight_left: float, limits: Limits, min_s: float = 0.0) -> float | None:
    """Seconds row i may run, from what is left of the budget; None: too little left to start it
    (less than the floor, or than the row's own `min_s`)."""
    usable = left - limits.margin
    if usable < max(limits.floor, min_s):
        return None
    if math.isinf(limits.slack):
        return usable
    return min(usable, max(limits.floor, min_s, limits.slack * left * weight / weight_left))


def min_time(row: Row, limits: Limits) -> float:
    """A row's least worthwhile time on a GPU; nothing at toy sizes."""
    return row.min_s if limits is GPU_LIMITS else 0.0


# RUNNING A ROW


def git_commit() -> str:
    """The checkout's commit, marked when the working tree differs from it; MBRLAX_COMMIT where the
    tree travelled without its .git (the lent GPU machine)."""
    if os.environ.get("MBRLAX_COMMIT"):
        return os.environ["MBRLAX_COMMIT"]
    try:
        def git(*argv: str) -> subprocess.CompletedProcess:
            return subprocess.run(["git", *argv], capture_output=True, text=True, cwd=ROOT, timeout=5)

        head = git("rev-parse", "--short", "HEAD")
        if head.returncode != 0 or not head.stdout.strip():
            return "unknown"
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return head.stdout.strip() + ("+uncommitted changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


class Log:
    def __init__(self, path: pathlib.Path):
        self.file = open(path, "a", buffering=1)
        self.lock = threading.Lock()

    def write(self, line: str, echo: bool = False):
        with self.lock:
            self.file.write(line.rstrip("\n") + "\n")
        if echo:
            print(line, flush=True)


class Job:
    """A command in a process group of its own, every line of its output into the log, stopped
    (TERM, then KILL, the whole group) when it runs past its limit."""

    # Signals sent in turn to stop a row past its limit, and the seconds each is given.
    STOP = ((signal.SIGTERM, 1.0), (signal.SIGKILL, 5.0))
    # A learning run stops on Ctrl-C with its last checkpoint and one line saying what is kept.
    STOP_GENTLY = ((signal.SIGINT, 15.0), (signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0))

    def __init__(self, argv: list[str], limit: float, env: dict, log: Log, prefix: str, stop=STOP):
        self.limit = max(limit, 0.1)
        self.stop = stop
        self.start = time.monotonic()
        self.process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        self.lines: list[str] = []
        self.timed_out = False

        def read():
            for line in self.process.stdout:
                self.lines.append(line.rstrip("\n"))
                log.write(f"[{prefix}] {line}")

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()

    def poll(self) -> bool:
        """True once the process has ended, or has been stopped at its limit."""
        if self.process.poll() is not None:
            return True
        if time.monotonic() - self.start < self.limit:
            return False
        self.timed_out = True
        for sig, grace in self.stop:
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        return True

    def outcome(self) -> dict:
        try:
            self.process.wait(timeout=10.0)
        except subprocess.TimeoutExpired:  # not gone even after SIGKILL (a device call that will not return)
            pass
        self.reader.join(timeout=2.0)
        return {
            "timed_out": self.timed_out,
            "code": self.process.returncode,
            "lines": self.lines,
            "wall_s": time.monotonic() - self.start,
        }


def run_process(argv: list[str], limit: float, env: dict, log: Log, prefix: str) -> dict:
    job = Job(argv, limit, env, log, prefix)
    while not job.poll():
        time.sleep(0.05)
    return job.outcome()


COMPILED = re.compile(r"^compiled in ([0-9.]+) s")


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def last_error(lines: list[str]) -> str:
    """The line that says why a process failed: the last one that reads like an error, else the last."""
    for line in reversed(lines):
        if re.match(r"^\w*(Error|Exception|error)\b|^\w+Error:|^error:|: error:", line.strip()):
            return line.strip()[:300]
    return next((line.strip()[:300] for line in reversed(lines) if line.strip()), "no output")


def throughput_result(row: Row, outcome: dict, scratch: pathlib.Path) -> dict:
    """A throughput row's figures, from the JSON and the Markdown throughput.py wrote."""
    compiles = [float(m.group(1)) for m in map(COMPILED.match, outcome["lines"]) if m]
    result: dict = {"compile_s": sum(compiles) if compiles else None}
    files = sorted(scratch.glob("throughput-*.json"))
    if files and not outcome["timed_out"] and outcome["code"] == 0:
        data = json.loads(files[0].read_text())
        figures = data["rows"][0] if data["rows"] else {}
        result.update(
            figures=figures,
            meta=data["meta"],
            compile_s=figures.get("compile_s", result["compile_s"]),
            markdown=next((line for line in outcome["lines"] if line.startswith("| ")), None),
        )
        value = figures.get(row.figure)
        if row.figure == "fraction_of_fp32_peak" and finite(value):
            value *= 100
        result["figure"] = value
    return result


def learning_result(row: Row, outcome: dict, run_dir: pathlib.Path) -> dict:
    """A learning run's final evaluation from its summary.json, or, stopped at its limit, its last
    evaluation so far from metrics.csv."""
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        return {
            "figure": summary.get(row.figure),
            "figures": summary,
            "compile_s": summary.get("compile_time_s"),
            "meta": {"device": summary.get("device"), "jax": summary.get("jax")},
        }
    result: dict = {"compile_s": None}
    metrics = run_dir / "metrics.csv"
    if metrics.exists():
        with open(metrics) as f:
            evaluations = list(csv.DictReader(f))
        key = row.figure.removeprefix("final_")
        if evaluations and key in evaluations[-1]:
            last = evaluations[-1]
            result["last_evaluation"] = {"env_steps": int(last["env_steps"]), key: float(last[key])}
    return result


def describe(row: Row, entry: dict) -> str:
    """The one line a finished row prints."""
    compile_s = entry.get("compile_s")
    compiled = f"compile {compile_s:.1f} s" if finite(compile_s) else "compile -"
    wall = f"wall {entry['wall_s']:.1f} s" if finite(entry.get("wall_s")) else "wall -"
    value = entry.get("figure")
    if entry["status"] == "ok" and finite(value):
        figure = f"{value:.4g} {row.unit}"
    elif entry["status"] == "ok":
        figure = f"{row.figure}: {value}"
    else:
        figure = entry["status"] + (f" ({entry['message']})" if entry.get("message") else "")
    return f"{row.name:<28} | {figure} | {compiled} | {wall}"


# --tiny: XLA's slow CPU optimisations off; the toy programs then compile about 2x to 4x faster
# (Dreamer's update at toy sizes, jax 0.10.2 on 2 cores: 28 s of CPU time with XLA's defaults, 8 s with these).
FAST_COMPILE = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true --xla_cpu_use_fusion_emitters=false"
)


def child_env(args, fast_compile: bool = True) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.tiny:
        env["JAX_PLATFORMS"] = "cpu"
        if fast_compile:
            env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()
    return env


PROBE = (
    "import json, jax; d = jax.local_devices()[0]; "
    "print(json.dumps({'platform': d.platform, 'device_kind': d.device_kind, 'num_devices': jax.local_device_count(), "
    "'jax': jax.__version__}))"
)


def probe_device(args, limits: Limits, log: Log, deadline: float) -> tuple[dict | None, dict]:
    """Which device JAX sees, from a subprocess that lets go of it at once, and the environment for
    the rows (without --tiny's XLA flags if this XLA does not know them)."""
    for fast_compile in (True, False):
        env = child_env(args, fast_compile)
        limit = min(limits.probe, max(deadline - time.monotonic() - limits.margin, 0.1))
        probe_env = dict(env, XLA_PYTHON_CLIENT_PREALLOCATE="false")
        outcome = run_process([sys.executable, "-c", PROBE], limit, probe_env, log, "probe")
        for line in reversed(outcome["lines"]):
            if line.startswith("{"):
                return json.loads(line), env
        if not (args.tiny and any("nknown flag" in line for line in outcome["lines"])):
            break
        log.write(f"this XLA refuses --tiny's flags ({FAST_COMPILE}); the rows compile with its defaults", echo=True)
    return None, env


def write_json(path: pathlib.Path, data) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False, default=str))
    tmp.replace(path)


def strict(value):
    """JSON without NaN: a non-finite float becomes None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def plan(rows: list[Row], budget: float, limits: Limits, jobs: int) -> list[float | None]:
    """The limits the rows get if every row runs to its limit (the worst case; with several jobs,
    roughly: each row is taken to use 1/jobs of the time it holds)."""
    left, out = budget, []
    for i, row in enumerate(rows):
        limit = row_limit(left, row.weight, sum(r.weight for r in rows[i:]) / jobs, limits, min_time(row, limits))
        out.append(limit)
        left -= (limit or 0.0) / jobs
    return out


def command_line(row: Row, args, out: pathlib.Path) -> list[str]:
    argv = list(row.tiny if args.tiny and row.tiny else row.argv)
    if args.mode == "learning":
        argv += ["--num-seeds", str(args.seeds)] if not argv[argv.index("--env") + 1].startswith("gym/") else []
        argv += ["--run-dir", str(out / "runs" / row.name)]
    return argv


def settle(row: Row, entry: dict, outcome: dict, scratch: pathlib.Path, mode: str) -> dict:
    """A finished row's entry: its figures, and "ok", "timed out" or "failed"."""
    entry["wall_s"] = outcome["wall_s"]
    entry["exit_code"] = outcome["code"]
    if mode == "throughput":
        entry.update(throughput_result(row, outcome, scratch))
    else:
        entry.update(learning_result(row, outcome, scratch))
    meta = entry.pop("meta", None) or {}
    entry["device"] = meta.get("device") or entry["device"]
    entry["jax"] = meta.get("jax") or entry["jax"]
    if outcome["timed_out"]:
        entry["status"] = "timed out"
        compile_s, last = entry["compile_s"], entry.get("last_evaluation")
        if finite(compile_s):
            said = f", compiled in {compile_s:.1f} s"
        elif mode == "throughput":
            said = ", before its compile finished"
        else:  # a learning run says its compile time only in its summary
            said = f", last evaluation {last}" if last else ", before its first evaluation"
        entry["message"] = f"timed out after {entry['timeout_s']:.0f} s{said}"
    elif outcome["code"] != 0:
        entry["status"] = "failed"
        entry["message"] = f"exit {outcome['code']}: {last_error(outcome['lines'])}"
    elif not finite(entry.get("figure")):
        entry["status"] = "failed"
        entry["message"] = f"no finite {row.figure} in its output"
    else:
        entry["status"] = "ok"
    return entry


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="See the module docstring.")
    parser.add_argument("--budget-s", type=float, default=540.0, help="seconds for the whole suite (default 540)")
    parser.add_argument("--out", default=None, help="folder for results.json, results.md, suite.log, scaling.png")
    parser.add_argument("--mode", choices=("throughput", "learning"), default="throughput")
    parser.add_argument("--tiny", action="store_true", help="every row at toy sizes on the CPU (CI)")
    parser.add_argument("--dry-run", action="store_true", help="print the rows, commands and budgets; run nothing")
    parser.add_argument("--only", default="", help="comma-separated row names (default: every row)")
    parser.add_argument("--seeds", type=int, default=1, help="learning mode: seeds vmapped per run (not gym/ tasks)")
    parser.add_argument(
        "--jobs", type=int, default=None, help="rows run at once (default 1; --tiny: 2, one a CPU core)"
    )
    parser.add_argument("--allow-cpu", action="store_true", help="run the full-size rows even where JAX sees no GPU")
    args = parser.parse_args(argv)
    if args.tiny and args.mode == "learning":
        parser.error("--tiny sizes the throughput rows; the learning mode has none (use --dry-run to list it)")
    if args.budget_s <= 0:
        parser.error(f"--budget-s must be positive, got {args.budget_s:g}")
    rows = LEARNING if args.mode == "learning" else THROUGHPUT
    if args.only:
        wanted = args.only.split(",")
        unknown = [name for name in wanted if name not in {r.name for r in rows}]
        if unknown:
            parser.error(f"--only: unknown row(s) {unknown}; the {args.mode} rows are {[r.name for r in rows]}")
        rows = [r for r in rows if r.name in wanted]
    limits = LEARNING_LIMITS if args.mode == "learning" else TINY_LIMITS if args.tiny else GPU_LIMITS
    default_out = ROOT / "benchmarks" / "results" / ("gpu-suite-tiny" if args.tiny else f"gpu-suite-{args.mode}")
    out = pathlib.Path(args.out or default_out).resolve()

    jobs = args.jobs or (2 if args.tiny else 1)
    if jobs < 1:
        parser.error(f"--jobs must be at least 1, got {jobs}")
    if args.dry_run:
        print(
            f"{args.mode} rows{' at toy sizes' if args.tiny else ''}, highest priority first, in a budget of "
            f"{args.budget_s:g} s; limits if every row ran to its limit (rows that finish early leave more to "
            "later ones):"
        )
        for row, limit in zip(rows, plan(rows, args.budget_s, limits, jobs)):
            budget = f"{limit:6.0f} s" if limit is not None else "skipped"
            print(f"{row.name:<28} {budget}  {row.title}\n{'':<37}python {shlex.join(command_line(row, args, out))}")
        return 0

    start = time.monotonic()
    deadline = start + args.budget_s
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "suite.log")
    commit = git_commit()
    suite = {
        "mode": args.mode,
        "tiny": args.tiny,
        "budget_s": args.budget_s,
        "commit": commit,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "host": platform.node(),
        "argv": sys.argv[1:] if argv is None else list(argv),
    }
    results = {"suite": suite, "rows": []}
    device, env = probe_device(args, limits, log, deadline)
    if device is None:
        suite.update(device="unknown", jax="unknown", status="failed: JAX did not start (see suite.log)")
    else:
        name = f"{device['num_devices']} x {device['platform']}:{device['device_kind']}"
        suite.update(device=name, jax=device["jax"])
    log.write(
        f"gpu_suite {args.mode}{' --tiny' if args.tiny else ''}: {len(rows)} rows in {args.budget_s:g} s on "
        f"{suite['device']}, jax {suite['jax']}, commit {commit}; results in {out}",
        echo=True,
    )
    if device is not None and device["platform"] != "gpu" and not (args.tiny or args.allow_cpu):
        suite["status"] = "stopped: JAX sees no GPU"
        log.write(
            "JAX sees no GPU, so the full-size rows would measure the CPU for the whole budget; stopping. "
            "Install the CUDA wheels (pip install -e '.[cuda]'), or pass --allow-cpu.",
            echo=True,
        )
        write_json(out / "results.json", strict(results))
        return 2

    pending = list(enumerate(rows))
    running: list[tuple[Row, dict, Job, pathlib.Path | None]] = []

    def finish(row: Row, entry: dict) -> None:
        results["rows"].append(entry)
        results["rows"].sort(key=lambda e: e["priority"])
        log.write(describe(row, entry), echo=True)
        suite["wall_s"] = time.monotonic() - start
        write_json(out / "results.json", strict(results))

    with tempfile.TemporaryDirectory(prefix="gpu-suite-") as scratch_root:
        while pending or running:
            while pending and len(running) < jobs:
                i, row = pending.pop(0)
                left = deadline - time.monotonic()
                weight_left = row.weight + sum(r.weight for _, r in pending)
                # With several rows at a time, each slot has the whole of what is left.
                limit = row_limit(left, row.weight, weight_left / jobs, limits, min_time(row, limits))
                argv_row = command_line(row, args, out)
                entry = {
                    "name": row.name,
                    "title": row.title,
                    "priority": i + 1,
                    "command": "python " + shlex.join(argv_row),
                    "figure_name": row.figure,
                    "unit": row.unit,
                    "figure": None,
                    "figures": {},
                    "compile_s": None,
                    "wall_s": None,
                    "timeout_s": limit,
                    "device": suite["device"],
                    "jax": suite["jax"],
                    "commit": commit,
                    "date": suite["date"],
                }
                if row.reference:
                    entry["reference"] = row.reference
                if device is None or limit is None:
                    entry["status"] = "skipped"
                    said = f"not started: {max(left, 0):.0f} s of the budget left"
                    entry["message"] = "JAX did not start" if device is None else said
                    finish(row, entry)
                    continue
                entry["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
                if args.mode == "throughput":
                    scratch = pathlib.Path(scratch_root) / row.name
                    full = [sys.executable, *argv_row, "--out", str(scratch)]
                else:
                    # A run folder from an earlier call: resumed from its last checkpoint (or kept, if done).
                    scratch = out / "runs" / row.name
                    scratch.parent.mkdir(exist_ok=True)
                    if (scratch / "config.json").exists():
                        argv_row = [argv_row[0], "--resume", str(scratch)]
                        entry["command"] = "python " + shlex.join(argv_row)
                    full = [sys.executable, *argv_row]
                    if (scratch / "summary.json").exists():
                        full = [sys.executable, "-c", "print('finished before; kept')"]
                log.write(f"[{row.name}] limit {limit:.0f} s: {entry['command']}")
                stop = Job.STOP_GENTLY if args.mode == "learning" else Job.STOP
                running.append((row, entry, Job(full, limit, env, log, row.name, stop), scratch))
            time.sleep(0.05)
            for item in [item for item in running if item[2].poll()]:
                running.remove(item)
                row, entry, job, scratch = item
                finish(row, settle(row, entry, job.outcome(), scratch, args.mode))

    markdown = [e["markdown"] for e in results["rows"] if e.get("markdown")]
    if markdown:
        (out / "results.md").write_text(
            f"Measured by benchmarks/gpu_suite.py{' --tiny (toy sizes: its figures mean nothing)' * args.tiny} "
            f"on {suite['device']}, jax {suite['jax']}, commit {commit}, {suite['date'][:10]}.\n\n"
            + "\n".join(markdown)
            + "\n"
        )
    left = deadline - time.monotonic()
    if args.mode == "throughput" and markdown and left > limits.margin + limits.floor:
        # benchmarks/scaling.py's plot of the rows above, against the number of runs.
        outcome = run_process(
            [sys.executable, "benchmarks/scaling.py", "--results", str(out / "results.json"), "--out", str(out)],
            left - limits.margin,
            dict(env, MPLBACKEND="Agg"),
            log,
            "scaling",
        )
        if outcome["code"] != 0:
            log.write(f"scaling plot not drawn: {last_error(outcome['lines'])}")
    suite["wall_s"] = time.monotonic() - start
    counts = {s: sum(e["status"] == s for e in results["rows"]) for s in ("ok", "timed out", "failed", "skipped")}
    suite["counts"] = counts
    write_json(out / "results.json", strict(results))
    log.write(
        f"suite: {', '.join(f'{n} {s}' for s, n in counts.items() if n)} in {suite['wall_s']:.0f} s; "
        f"results.json, results.md and suite.log in {out}",
        echo=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
