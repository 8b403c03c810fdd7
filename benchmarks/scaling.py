"""Aggregate throughput against the number of runs vmapped, one panel per algorithm, from the JSON
that benchmarks/throughput.py wrote:

    python benchmarks/scaling.py            # reads benchmarks/results/throughput-*-<platform>.json
    python benchmarks/scaling.py --platform gpu
    python benchmarks/scaling.py --results results/gpu/results.json --out results/gpu   # gpu_suite's rows

Writes benchmarks/results/scaling-<platform>.png. Each line is one setting of an algorithm; the
dashed line is perfect scaling from its single run (N runs at N times the throughput of one), which
a saturated device (two CPU cores are saturated by one run) cannot follow. PETS's axis is the
number of environments planned for at once.
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"

# The aggregate throughput each algorithm's rows report, and its label.
METRICS = {
    "pets": ("num_envs", "actions_per_s", "actions planned / s"),
    "mbpo": ("num_seeds", "env_steps_per_s", "env steps / s (all seeds)"),
    "maac": ("num_seeds", "env_steps_per_s", "env steps / s (all seeds)"),
    "mbmpo": ("num_seeds", "imagined_transitions_per_s", "imagined transitions / s"),
    "clearning": ("num_seeds", "env_steps_per_s", "env steps / s (all seeds)"),
    "dreamer": ("num_seeds", "replayed_per_s", "replayed steps / s (all seeds)"),
}


def panels_from_throughput(platform: str) -> list[tuple]:
    """One panel per algorithm from benchmarks/results/throughput-<algorithm>-<platform>.json."""
    panels = []
    for name, (axis, metric, label) in METRICS.items():
        path = RESULTS / f"throughput-{name}-{platform}.json"
        if path.exists():
            data = json.loads(path.read_text())
            panels.append((name, axis, metric, label, data["rows"], data["meta"]["device"]))
    return panels


def panels_from_suite(path: pathlib.Path) -> list[tuple]:
    """One panel per algorithm from the rows of benchmarks/gpu_suite.py's results.json that ran."""
    data = json.loads(path.read_text())
    done = [row for row in data["rows"] if row.get("status") == "ok" and row.get("figures")]
    panels = []
    for name, (axis, metric, label) in METRICS.items():
        rows = [row["figures"] for row in done if row["figures"].get("algorithm") == name]
        rows = [row for row in rows if metric in row]
        if rows:
            panels.append((name, axis, metric, label, rows, data["suite"]["device"]))
    return panels


def draw(panels: list[tuple], out: pathlib.Path) -> None:
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (name, axis, metric, label, rows, device) in zip(axes[0], panels):
        settings = collections.defaultdict(list)
        for row in rows:
            settings[row["setting"]].append((row.get(axis) or 1, row[metric]))
        for setting, points in settings.items():
            points.sort()
            xs, ys = zip(*points)
            line = ax.plot(xs, ys, "o-", label=setting[:48])[0]
            if xs[0] == 1 and len(xs) > 1:
                ax.plot(xs, [ys[0] * x for x in xs], "--", color=line.get_color(), alpha=0.4)
        ax.set(title=f"{name} ({device})", xlabel=axis.replace("_", " "), ylabel=label, xscale="log", yscale="log")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--platform", default="cpu")
    parser.add_argument("--results", default=None, help="a results.json of benchmarks/gpu_suite.py instead")
    parser.add_argument("--out", default=None, help="folder for the PNG (default: benchmarks/results)")
    args = parser.parse_args(argv)
    if args.results:
        panels = panels_from_suite(pathlib.Path(args.results))
        name = "scaling.png"
    else:
        panels = panels_from_throughput(args.platform)
        name = f"scaling-{args.platform}.png"
    if not panels:
        raise SystemExit(f"no throughput rows for platform {args.platform!r} in {args.results or RESULTS}")
    out = pathlib.Path(args.out or RESULTS) / name
    draw(panels, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
