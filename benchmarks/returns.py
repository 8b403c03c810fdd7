"""The learning-curve suite: every algorithm on its reference tasks, several seeds vmapped, the
evaluation curves against the papers' numbers.

    python benchmarks/returns.py --quick                 # every algorithm, small budgets, a CPU
    python benchmarks/returns.py                         # the papers' budgets (a GPU's work)
    python benchmarks/returns.py --only mbpo,dreamer --seeds 8

Each (algorithm, task) entry is one run of the algorithm's own file, with its run folder under
benchmarks/results/returns/<quick|full>/<algorithm>-<task>/, so it has its checkpoints: run the same
command again after a kill and finished entries are kept, the interrupted one resumes from its last
evaluation, and the rest start. Then it writes, in the same folder:
- curves.csv: every evaluation of every run,
- <task>.png: each algorithm's mean and spread over seeds on that task, the reference as a line,
- summary.png: all the tasks' panels in one figure,
- table.md: task, budget, our final mean and spread over seeds, the reference and its source, wall
  time and device (the rows for benchmarks/RESULTS.md).

The quick budgets are fractions of the CPU presets, chosen so the suite ends in under 20 minutes on
two cores; they check that nothing regressed, and no published figure exists at them. The full
budgets are the papers' (on the Brax and DMC versions of their tasks); their references come from
shared/REFERENCES.md, each with its source.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib
import json
import math
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "returns"


@dataclasses.dataclass(frozen=True)
class Entry:
    algorithm: str
    task: str
    flags: tuple[str, ...]
    """Command-line flags on top of the task's preset: the budget and its evaluation period."""
    reference: float | None = None
    source: str = ""


RANDOM_PENDULUM = "no published figure at this budget; a random policy scores about -1200"

QUICK = [
    Entry("pets", "pendulum", ("--total-steps", "1000", "--eval-every", "200"), None, RANDOM_PENDULUM),
    Entry("mbpo", "pendulum", ("--total-steps", "3000", "--eval-every", "1000"), None, RANDOM_PENDULUM),
    Entry("maac", "pendulum", ("--total-steps", "3000", "--eval-every", "1000"), None, RANDOM_PENDULUM),
    Entry("svg", "pendulum", ("--total-steps", "3000", "--eval-every", "1000"), None, RANDOM_PENDULUM),
    Entry("mbmpo", "pendulum", ("--total-steps", "4200", "--eval-every", "1600"), None, RANDOM_PENDULUM),
    Entry(
        "clearning",
        "point_maze_open",
        ("--total-steps", "9600", "--eval-every", "3200"),
        None,
        "success rate; a random policy reaches about 0.2",
    ),
    Entry("dreamer", "pendulum", ("--total-steps", "3000", "--eval-every", "1000"), None, RANDOM_PENDULUM),
]

FULL = [
    Entry(
        "pets",
        "brax/halfcheetah",
        ("--total-steps", "200000"),
        2288,
        "PETS on gym HalfCheetah at 200k (POPLIN paper's table, 4 seeds)",
    ),
    Entry(
        "mbpo",
        "brax/hopper",
        ("--total-steps", "125000"),
        3300,
        "MBPO Hopper at 125k, about 3.2-3.4k (MBPO paper, figure 2)",
    ),
    Entry(
        "mbpo",
        "brax/halfcheetah",
        ("--total-steps", "400000"),
        11000,
        "MBPO HalfCheetah at 400k, about 10-12k (MBPO paper, figure 2)",
    ),
    Entry(
        "maac",
        "brax/hopper",
        ("--preset", "sac-svg", "--total-steps", "1000000"),
        3917,
        "SAC-SVG(H) Hopper at 1M, best evaluation (Amos et al. 2021)",
    ),
    Entry(
        "mbmpo",
        "brax/halfcheetah",
        ("--total-steps", "100000"),
        550,
        "MB-MPO HalfCheetah, 200-step episodes at 100k (Clavera et al. 2018)",
    ),
    Entry(
        "dreamer",
        "dmc/cheetah_run",
        ("--preset", "12m", "--total-steps", "500000", "--action-repeat", "2"),
        600,
        "DreamerV3 DMC proprio cheetah_run at 500k (Hafner et al.)",
    ),
    Entry(
        "dreamer",
        "dmc/walker_walk",
        ("--preset", "12m", "--total-steps", "500000", "--action-repeat", "2"),
        941,
        "DreamerV3 DMC proprio walker_walk at 500k (Hafner et al.)",
    ),
    Entry(
        "clearning",
        "brax/ant_goal",
        ("--total-steps", "10000000", "--estimator", "contrastive"),
        0.64,
        "success: contrastive RL on Ant after 10 M steps (JaxGCRL, Bortkiewicz et al. 2025)",
    ),
]


def folder_name(entry: Entry) -> str:
    return f"{entry.algorithm}-{entry.task.replace('/', '_')}"


def run_entry(entry: Entry, folder: pathlib.Path, seeds: int):
    """Run (or resume, or keep) one entry."""
    module = importlib.import_module(f"mbrlax.algorithms.{entry.algorithm}")
    if (folder / "config.json").exists():
        earlier = json.loads((folder / "config.json").read_text())["run"]["num_seeds"]
        if earlier != seeds:
            raise SystemExit(
                f"{folder} holds a run with {earlier} seeds, not {seeds}; pass --seeds {earlier} to keep it, "
                "or delete the folder to start that entry again"
            )
    if (folder / "summary.json").exists():
        print(f"{folder.name}: done before, kept", flush=True)
    else:
        if (folder / "config.json").exists():
            argv = ["--resume", str(folder)]
        else:
            argv = ["--env", entry.task, *entry.flags, "--num-seeds", str(seeds), "--run-dir", str(folder)]
        code = module.main(argv)
        if code != 0:
            raise SystemExit(f"{entry.algorithm} on {entry.task} failed (exit {code}); run again to resume")


def read_curves(entry: Entry, folder: pathlib.Path) -> list[dict]:
    with open(folder / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    metric = "eval_success" if entry.algorithm == "clearning" else "eval_return"
    return [
        {
            "algorithm": entry.algorithm,
            "task": entry.task,
            "run": int(r["run"]),
            "env_steps": int(r["env_steps"]),
            "value": float(r[metric]),
            "metric": metric,
        }
        for r in rows
    ]


def plot(curves: list[dict], entries: list[Entry], path: pathlib.Path, tasks: list[str]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    columns = min(len(tasks), 3)
    fig, axes = plt.subplots(
        math.ceil(len(tasks) / columns), columns, figsize=(5 * columns, 3.6 * math.ceil(len(tasks) / columns))
    )
    axes = np.atleast_1d(axes).ravel()
    for ax, task in zip(axes, tasks):
        for entry in [e for e in entries if e.task == task]:
            rows = [c for c in curves if c["task"] == task and c["algorithm"] == entry.algorithm]
            steps = sorted({r["env_steps"] for r in rows})
            values = np.array([[r["value"] for r in rows if r["env_steps"] == s] for s in steps])
            mean, spread = values.mean(1), values.std(1)
            line = ax.plot(steps, mean, marker="o", ms=3, label=f"{entry.algorithm} ({values.shape[1]} seeds)")[0]
            ax.fill_between(steps, mean - spread, mean + spread, color=line.get_color(), alpha=0.15)
            if entry.reference is not None:
                ax.axhline(entry.reference, color=line.get_color(), ls="--", lw=1, label=f"{entry.algorithm}: paper")
        ax.set_title(task)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("success" if task.endswith("_goal") or "maze" in task else "return")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(tasks) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small budgets for a CPU (under 20 minutes)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per entry (default: 2 quick, 5 full)")
    parser.add_argument("--only", default="", help="comma-separated algorithms to run (default: all)")
    args = parser.parse_args()
    mode = "quick" if args.quick else "full"
    seeds = args.seeds or (2 if args.quick else 5)
    entries = QUICK if args.quick else FULL
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {e.algorithm for e in entries}
        if unknown:
            parser.error(f"--only: no entries for {', '.join(sorted(unknown))}")
        entries = [e for e in entries if e.algorithm in wanted]
    out = OUT / mode
    out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    for entry in entries:
        run_entry(entry, out / folder_name(entry), seeds)

    # The table and plots cover every entry of this mode that has finished, run now or before, so a
    # run with --only updates its rows without dropping the others.
    entries = [e for e in (QUICK if args.quick else FULL) if (out / folder_name(e) / "summary.json").exists()]
    curves, table = [], []
    for entry in entries:
        folder = out / folder_name(entry)
        summary = json.loads((folder / "summary.json").read_text())
        curves += read_curves(entry, folder)
        rows = [c for c in curves if c["algorithm"] == entry.algorithm and c["task"] == entry.task]
        last_step = max(r["env_steps"] for r in rows)
        finals = [r["value"] for r in rows if r["env_steps"] == last_step]
        final, spread = statistics.fmean(finals), statistics.pstdev(finals)
        reference = "-" if entry.reference is None else f"{entry.reference:g}"
        table.append(
            f"| {entry.algorithm} | {entry.task} | {summary['env_steps']:,} | {final:.2f} ± {spread:.2f} "
            f"({len(finals)} seeds) | {reference} | {entry.source} | {summary['wall_time_s']:.0f} s "
            f"| {summary['device']} | {summary['commit']} | {summary['date'][:10]} |"
        )

    with open(out / "curves.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(curves[0]))
        writer.writeheader()
        writer.writerows(curves)
    tasks = list(dict.fromkeys(e.task for e in entries))
    for task in tasks:
        plot(curves, entries, out / f"{task.replace('/', '_')}.png", [task])
    plot(curves, entries, out / "summary.png", tasks)
    header = (
        "| algorithm | task | budget (env steps) | final evaluation, mean ± spread | reference | source "
        "| wall time | device | commit | date |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    (out / "table.md").write_text(header + "\n".join(table) + "\n")
    print(header + "\n".join(table))
    print(f"suite: {time.perf_counter() - start:.0f} s; curves, plots and table.md in {out}")


if __name__ == "__main__":
    sys.exit(main())
