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
budgets are the papers', in their units (DreamerV3's DMC budgets count frames: 500k frames are 250k
agent steps at action repeat 2), on the papers' tasks where we have them: gymnasium's MuJoCo tasks
(stepping on the host, so each seed is a run of its own in `seed-<i>/`), MuJoCo Playground's DMC,
JaxGCRL's Ant. Each reference names its paper, task, budget and method variant, and each entry says
how far our run is comparable with it ("like for like", "approximate: ...", "not comparable: ...").
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
    """Where the reference comes from: the paper's task, its budget in the paper's units (environment
    steps or frames) and the method variant that produced it."""
    comparison: str = ""
    """How our run relates to the reference: "like for like", "approximate: ..." or "not comparable:
    ...", with what differs."""

    @property
    def host_task(self) -> bool:
        """gymnasium tasks step on the host: one run per process, so each seed is a run of its own."""
        return self.task.startswith("gym/")


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

# DreamerV3's DMC budgets count environment frames; our --total-steps counts agent steps.
DMC_STEPS = str(500_000 // 2)
DREAMER_DMC = (
    "approximate: MuJoCo Playground's MJX port of the DeepMind Control Suite, not dm_control itself; our 12m preset "
    "has the widths of the 2023 code's dmc_proprio config (deter 512, 2 x 512 layers) and its train ratio 512, "
    "and algorithms/dreamer.py lists what else differs (Adam's epsilon, the initial state, ...)"
)
GYM_V5 = "the paper ran gym's MuJoCo v2 task (mujoco-py), this is gymnasium's v5 of it (same observation and reward terms)"

FULL = [
    Entry(
        "pets",
        "gym/HalfCheetah-v5",
        ("--preset", "brax/halfcheetah", "--total-steps", "200000"),
        2288,
        "PETS (CEM, TSinf, 5 members) on gym HalfCheetah at 200k environment steps: the POPLIN paper's table "
        "(Wang and Ba 2020, 4 seeds), its own PETS run",
        f"approximate: our preset is mbrl-lib's pets_halfcheetah (TS1 over 5 of 7 elites, population 400) with the "
        f"reward learned, where POPLIN's PETS computes it from the observation; {GYM_V5}",
    ),
    Entry(
        "mbpo",
        "gym/Hopper-v5",
        ("--preset", "brax/hopper", "--total-steps", "125000"),
        3300,
        "MBPO on Hopper at 125k environment steps, about 3.2-3.4k read off the curve (Janner et al. 2019, figure 2)",
        f"approximate: the paper's Hopper settings (brax/hopper preset: G = 20, k 1 to 15 over epochs 20-100); "
        f"{GYM_V5}; the bar is read off a curve",
    ),
    Entry(
        "mbpo",
        "gym/HalfCheetah-v5",
        ("--preset", "brax/halfcheetah", "--total-steps", "400000"),
        11000,
        "MBPO on HalfCheetah at 400k environment steps, about 10-12k read off the curve (Janner et al. 2019, "
        "figure 2)",
        f"approximate: the paper's HalfCheetah settings (G = 40, k = 1); {GYM_V5}; the bar is read off a curve",
    ),
    Entry(
        "svg",
        "gym/Hopper-v5",
        ("--preset", "brax/hopper", "--total-steps", "1000000"),
        3917,
        "SAC-SVG(H) on Hopper at 1M environment steps, their horizon=3 (2 model steps), the best evaluation over "
        "training, mean of 10 seeds (Amos et al. 2021, table 1)",
        f"approximate: svg.py's brax/hopper preset is the authors' regime (facebookresearch/svg config/train.yaml "
        f"and mbpo_hopper.yaml), but the model is our probabilistic ensemble where theirs is a deterministic GRU, "
        f"observations are not normalised (algorithms/maac.py lists the differences), and we report the final "
        f"evaluation, not the best; {GYM_V5}",
    ),
    Entry(
        "mbmpo",
        "brax/halfcheetah",
        ("--total-steps", "100000"),
        550,
        "MB-MPO on HalfCheetah with 200-step episodes at 100k environment steps, about 550 read off the curve "
        "(Clavera et al. 2018)",
        "approximate: Brax's halfcheetah, not the rllab/gym one of the paper, and its reward is learned here "
        "where the paper's is computed from the observation; the bar is read off a curve",
    ),
    Entry(
        "dreamer",
        "dmc/cheetah_run",
        ("--preset", "12m", "--total-steps", DMC_STEPS, "--action-repeat", "2", "--eval-every", "5000"),
        600,
        "DreamerV3 (2023 code: backprop actor gradient) on DMC proprio cheetah_run at 500k environment frames, "
        "i.e. 250k agent steps at action repeat 2 (Hafner et al. 2023)",
        DREAMER_DMC,
    ),
    Entry(
        "dreamer",
        "dmc/walker_walk",
        ("--preset", "12m", "--total-steps", DMC_STEPS, "--action-repeat", "2", "--eval-every", "5000"),
        941,
        "DreamerV3 (2023 code: backprop actor gradient) on DMC proprio walker_walk at 500k environment frames, "
        "i.e. 250k agent steps at action repeat 2 (Hafner et al. 2023)",
        DREAMER_DMC,
    ),
    Entry(
        "clearning",
        "brax/ant_goal_jaxgcrl",
        ("--preset", "jaxgcrl", "--total-steps", "10000000"),
        0.64,
        "success at any step of an episode (JaxGCRL's eval/episode_success_any) after 10 M environment steps: "
        "contrastive RL with InfoNCE, energy -||phi - psi|| and a 0.1 logsumexp^2 penalty, on JaxGCRL's Ant "
        "(goal 10 from the origin, success within 0.5, 1000-step episodes) (Bortkiewicz et al. 2025)",
        "approximate: JaxGCRL's task on Brax's ant and its scale, but the preset's forward InfoNCE is crl.py's "
        "default where their scripts/train.sh runs the backward one (--contrastive-loss infonce_backward), our "
        "encoders are ReLU MLPs where theirs are swish, and our actor also sees random goals for half of the "
        "batch (algorithms/clearning.py)",
    ),
]


def folder_name(entry: Entry) -> str:
    return f"{entry.algorithm}-{entry.task.replace('/', '_')}"


def run_folders(entry: Entry, folder: pathlib.Path, seeds: int) -> list[tuple[pathlib.Path, list[str]]]:
    """The runs of an entry and their command lines: one run of all seeds vmapped, or for a host task
    (gym/) one run per seed, each in `seed-<i>/`."""
    base = ["--env", entry.task, *entry.flags]
    if entry.host_task:
        return [(folder / f"seed-{i}", [*base, "--seed", str(i)]) for i in range(seeds)]
    return [(folder, [*base, "--num-seeds", str(seeds)])]


def run_entry(entry: Entry, folder: pathlib.Path, seeds: int):
    """Run (or resume, or keep) one entry."""
    module = importlib.import_module(f"mbrlax.algorithms.{entry.algorithm}")
    if entry.host_task and folder.exists():
        earlier = len(list(folder.glob("seed-*")))
        if earlier > seeds:  # fewer: a kill between seeds, which the loop below resumes
            raise SystemExit(
                f"{folder} holds {earlier} seeds, not {seeds}; pass --seeds {earlier} to keep it, "
                "or delete the folder to start that entry again"
            )
    elif (folder / "config.json").exists():
        earlier = json.loads((folder / "config.json").read_text())["run"]["num_seeds"]
        if earlier != seeds:
            raise SystemExit(
                f"{folder} holds a run with {earlier} seeds, not {seeds}; pass --seeds {earlier} to keep it, "
                "or delete the folder to start that entry again"
            )
    for run_folder, argv in run_folders(entry, folder, seeds):
        if (run_folder / "summary.json").exists():
            print(f"{run_folder.relative_to(OUT)}: done before, kept", flush=True)
            continue
        if (run_folder / "config.json").exists():
            argv = ["--resume", str(run_folder)]
        else:
            argv = [*argv, "--run-dir", str(run_folder)]
        code = module.main(argv)
        if code != 0:
            raise SystemExit(f"{entry.algorithm} on {entry.task} failed (exit {code}); run again to resume")


def finished(entry: Entry, folder: pathlib.Path) -> bool:
    runs = sorted(folder.glob("seed-*")) if entry.host_task else [folder]
    return bool(runs) and all((run / "summary.json").exists() for run in runs)


def read_curves(entry: Entry, folder: pathlib.Path) -> list[dict]:
    """Every evaluation of every run of an entry; a host task's seeds are numbered as runs."""
    metric = "eval_success" if entry.algorithm == "clearning" else "eval_return"
    runs = sorted(folder.glob("seed-*")) if entry.host_task else [folder]
    curves = []
    for index, run in enumerate(runs):
        with open(run / "metrics.csv") as f:
            for r in csv.DictReader(f):
                curves.append(
                    {
                        "algorithm": entry.algorithm,
                        "task": entry.task,
                        "run": index if entry.host_task else int(r["run"]),
                        "env_steps": int(r["env_steps"]),
                        "value": float(r[metric]),
                        "metric": metric,
                    }
                )
    return curves


def read_summary(entry: Entry, folder: pathlib.Path) -> dict:
    """The entry's summary: a host task's seeds ran one after another, so their wall times add up."""
    runs = sorted(folder.glob("seed-*")) if entry.host_task else [folder]
    summaries = [json.loads((run / "summary.json").read_text()) for run in runs]
    return dict(summaries[-1], wall_time_s=sum(s["wall_time_s"] for s in summaries))


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
        ax.set_ylabel("success" if "_goal" in task or "maze" in task else "return")
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
    entries = [e for e in (QUICK if args.quick else FULL) if finished(e, out / folder_name(e))]
    curves, table = [], []
    for entry in entries:
        folder = out / folder_name(entry)
        summary = read_summary(entry, folder)
        curves += read_curves(entry, folder)
        rows = [c for c in curves if c["algorithm"] == entry.algorithm and c["task"] == entry.task]
        last_step = max(r["env_steps"] for r in rows)
        finals = [r["value"] for r in rows if r["env_steps"] == last_step]
        final, spread = statistics.fmean(finals), statistics.pstdev(finals)
        reference = "-" if entry.reference is None else f"{entry.reference:g}"
        table.append(
            f"| {entry.algorithm} | {entry.task} | {summary['env_steps']:,} | {final:.2f} ± {spread:.2f} "
            f"({len(finals)} seeds) | {reference} | {entry.source} | {entry.comparison or '-'} "
            f"| {summary['wall_time_s']:.0f} s "
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
        "| algorithm | task | budget (agent steps) | final evaluation, mean ± spread | reference | source "
        "| compared | wall time | device | commit | date |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    (out / "table.md").write_text(header + "\n".join(table) + "\n")
    print(header + "\n".join(table))
    print(f"suite: {time.perf_counter() - start:.0f} s; curves, plots and table.md in {out}")


if __name__ == "__main__":
    sys.exit(main())
