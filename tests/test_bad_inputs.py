"""Every entry point refuses a user's mistake the same way: exit code 2 and one line on stderr that
begins with "error: ", no traceback, and nothing compiled or written (no run folder) first.

The table has two parts: GENERIC, the bad inputs every entry point must refuse (some derived from
the entry point's Config: each learning rate, each hidden-size tuple, a swept value out of range),
and PER_ENTRY_POINT, the mistakes particular to one algorithm. A new algorithm inherits GENERIC by
being added to ENTRY_POINTS (test_every_entry_point_is_listed fails until it is).

Each case runs `main(argv)` with `--no-progress` and `--run-dir <tmp>/run` (unless the case is about
the run folder or --resume), with the runner's `execute`, `execute_fused` and `run_programs` replaced by a function
that raises, so a case that gets through validation fails loudly instead of compiling. A tyro parse
error (SystemExit(2), tyro's own multi-line message) is accepted for input tyro itself rejects.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import pathlib
import pkgutil
from typing import Callable

import pytest

from mbrlax.algorithms import alphazero, clearning, dreamer, m2ac, maac, mbmpo, mbpo, muzero, pets, planet, poplin, steve, svg
from mbrlax.algorithms import dyna_q
from mbrlax.algorithms import world_models

# ENTRY POINTS


@dataclasses.dataclass(frozen=True)
class EntryPoint:
    name: str
    """The script the user runs: algorithms/<name>.py, and the algorithm a run folder records."""
    module: object
    Config: type
    other: str
    """Another entry point, whose run folder this one must refuse to resume."""
    bad_sweep: str | None = None
    """A traced field swept to a value its validate() refuses (default: discount=0.99,5 when discount
    is traced, else the first traced learning rate to 1e-3,-1)."""

    def main(self, argv: list[str]) -> int:
        return self.module.main(argv)

    def lr_fields(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.Config) if f.name == "lr" or f.name.endswith("_lr")]

    def has(self, name: str) -> bool:
        return name in {f.name for f in dataclasses.fields(self.Config)}

    def out_of_range_sweep(self) -> str:
        if self.bad_sweep is not None:
            return self.bad_sweep
        if "discount" in self.Config.SWEEPABLE:
            return "discount=0.99,5"
        lr = next(name for name in self.Config.SWEEPABLE if name in self.lr_fields())
        return f"{lr}=1e-3,-1"


ENTRY_POINTS = [
    EntryPoint("pets", pets, pets.Config, other="dreamer", bad_sweep="alpha=0.1,1.5"),
    EntryPoint("mbpo", mbpo, mbpo.Config, other="maac", bad_sweep="real_ratio=0.05,1.5"),
    # maac's Config takes every field of mbpo's: resuming an mbpo folder must still be refused.
    EntryPoint("maac", maac, maac.Config, other="mbpo", bad_sweep="real_ratio=0.05,1.5"),
    EntryPoint("svg", svg, svg.Config, other="mbpo", bad_sweep="real_ratio=0.05,1.5"),
    EntryPoint("mbmpo", mbmpo, mbmpo.Config, other="pets", bad_sweep="discount=0.99,5"),
    EntryPoint("clearning", clearning, clearning.Config, other="pets", bad_sweep="discount=0.99,5"),
    EntryPoint("dreamer", dreamer, dreamer.Config, other="pets", bad_sweep="discount=0.99,5"),
    # Both extend mbpo's Config: resuming an mbpo folder must still be refused.
    EntryPoint("steve", steve, steve.Config, other="mbpo", bad_sweep="real_ratio=0.05,1.5"),
    EntryPoint("m2ac", m2ac, m2ac.Config, other="mbpo", bad_sweep="real_ratio=0.05,1.5"),
    # POPLIN's Config extends PETS's: resuming a pets folder must still be refused.
    EntryPoint("poplin", poplin, poplin.Config, other="pets", bad_sweep="alpha=0.1,1.5"),
    EntryPoint("planet", planet, planet.Config, other="dreamer", bad_sweep="exploration_noise=0.3,5"),
    EntryPoint("alphazero", alphazero, alphazero.Config, other="pets", bad_sweep="l2_coefficient=1e-4,5"),
    EntryPoint("muzero", muzero, muzero.Config, other="alphazero", bad_sweep="discount=0.99,5"),
    EntryPoint("world_models", world_models, world_models.Config, other="dreamer", bad_sweep="temperature=1.0,50"),
    EntryPoint("dyna_q", dyna_q, dyna_q.Config, other="pets", bad_sweep="alpha=0.1,1.5"),
]
BY_NAME = {entry.name: entry for entry in ENTRY_POINTS}


# RUN FOLDERS the cases start from (written under tmp_path; the case's paths name them)


def config_json(entry: EntryPoint, seed: int = 0) -> str:
    """A config.json of the shape runner.main writes, for `entry`'s default Config."""
    return json.dumps(
        {
            "algorithm": entry.name,
            "config": json.loads(json.dumps(dataclasses.asdict(entry.Config()), default=str)),
            "run": {"seed": seed, "num_seeds": 1, "sweep": []},
        },
        indent=2,
    )


def regular_file(entry, tmp: pathlib.Path):
    (tmp / "run").write_text("not a folder\n")


def another_run(entry, tmp: pathlib.Path):
    (tmp / "run").mkdir()
    # seed 3: a config.json the refused command (seed 0) would write differs from this one
    (tmp / "run" / "config.json").write_text(config_json(entry, seed=3))
    (tmp / "run" / "metrics.jsonl").write_text(json.dumps({"run": 0, "update": 1, "env_steps": 100}) + "\n")


def truncated_config(entry, tmp: pathlib.Path):
    (tmp / "run").mkdir()
    (tmp / "run" / "config.json").write_text(config_json(entry)[:20])


def config_without_fields(entry, tmp: pathlib.Path):
    (tmp / "run").mkdir()
    (tmp / "run" / "config.json").write_text(json.dumps({"algorithm": entry.name}))


def a_run(entry, tmp: pathlib.Path):
    (tmp / "run").mkdir()
    (tmp / "run" / "config.json").write_text(config_json(entry))


def config_of_the_wrong_type(entry, tmp: pathlib.Path):
    (tmp / "run").mkdir()
    saved = json.loads(config_json(entry))
    saved["config"]["total_steps"] = "abc"
    (tmp / "run" / "config.json").write_text(json.dumps(saved))


def checkpoints_a_file(entry, tmp: pathlib.Path):
    a_run(entry, tmp)
    (tmp / "run" / "checkpoints").write_text("not a folder\n")


def other_algorithms_run(entry, tmp: pathlib.Path):
    (tmp / "run").mkdir()
    (tmp / "run" / "config.json").write_text(config_json(BY_NAME[entry.other]))
    (tmp / "run" / "metrics.jsonl").write_text(json.dumps({"run": 0, "update": 1, "env_steps": 100}) + "\n")


# CASES


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...] | Callable[[EntryPoint], tuple[str, ...]]
    """The flags; "{run}" stands for <tmp>/run."""
    contains: str | Callable[[EntryPoint], str] | None = None
    """A text the message must contain (a field's name also matches its flag, --field-name)."""
    needs: tuple[str, ...] = ()
    """Config fields the case needs; an entry point whose Config lacks one does not get the case."""
    setup: Callable[[EntryPoint, pathlib.Path], None] | None = None
    own_run_dir: bool = False
    """The case is about the run folder or --resume: no --run-dir added."""
    skip_if_importable: str | None = None

    def argv_for(self, entry: EntryPoint, tmp: pathlib.Path) -> list[str]:
        argv = self.argv(entry) if callable(self.argv) else self.argv
        argv = [a.replace("{run}", str(tmp / "run")) for a in argv]
        return [*argv, "--no-progress", *([] if self.own_run_dir else ["--run-dir", str(tmp / "run")])]

    def needle(self, entry: EntryPoint) -> str | None:
        return self.contains(entry) if callable(self.contains) else self.contains


def _first_traced_lr(entry: EntryPoint) -> str:
    """The first traced learning rate; where there is none (a tabular method's step size, dyna_q's
    alpha), the first traced field."""
    traced = entry.Config.SWEEPABLE
    return next((name for name in traced if name in entry.lr_fields()), traced[0])


GENERIC = [
    Case("total-steps-0", ("--total-steps", "0"), "total_steps"),
    Case("total-steps-negative", ("--total-steps", "-5"), "total_steps"),
    Case("total-steps-1e12", ("--total-steps", "1000000000000"), "total_steps"),
    Case("total-steps-3e9", ("--total-steps", "3000000000"), "total_steps"),
    Case("total-steps-not-a-number", ("--total-steps", "abc")),  # tyro's own error
    Case("unknown-flag", ("--no-such-flag", "1")),  # tyro's own error
    Case("eval-every-0", ("--eval-every", "0"), "eval_every"),
    Case("eval-episodes-0", ("--eval-episodes", "0"), "eval_episodes"),
    Case("num-seeds-0", ("--num-seeds", "0"), "num_seeds"),
    Case("num-seeds-negative", ("--num-seeds", "-3"), "num_seeds"),
    Case("seed-overflows", ("--seed", "99999999999999999999"), "seed"),
    Case("checkpoint-every-0", ("--checkpoint-every", "0"), "checkpoint_every"),
    Case("env-unknown", ("--env", "no_such_task"), "no_such_task"),
    Case("env-gymnax-unknown", ("--env", "gymnax/NoSuchGame-v0"), "gymnax/NoSuchGame-v0"),
    Case("preset-unknown", ("--preset", "no_such_preset"), "no_such_preset"),
    Case("num-envs-0", ("--num-envs", "0"), "num_envs", needs=("num_envs",)),
    Case("episode-length-0", ("--episode-length", "0"), "episode_length", needs=("episode_length",)),
    Case("episode-length-negative", ("--episode-length", "-1"), "episode_length", needs=("episode_length",)),
    Case("action-repeat-0", ("--action-repeat", "0"), "action_repeat", needs=("action_repeat",)),
    Case("buffer-capacity-negative", ("--buffer-capacity", "-5"), "buffer_capacity", needs=("buffer_capacity",)),
    Case("buffer-capacity-1e11", ("--buffer-capacity", "100000000000"), "buffer_capacity", needs=("buffer_capacity",)),
    # Sweeps
    Case("sweep-unknown-field", ("--sweep", "no_such_field=1,2"), "no_such_field"),
    Case(
        "sweep-traced-out-of-range",
        lambda e: ("--sweep", e.out_of_range_sweep()),
        lambda e: e.out_of_range_sweep().partition("=")[0],
    ),
    Case("sweep-lr-nan", lambda e: ("--sweep", f"{_first_traced_lr(e)}=1e-3,nan"), _first_traced_lr),
    Case("sweep-not-numbers", lambda e: ("--sweep", f"{_first_traced_lr(e)}=1e-3,abc"), _first_traced_lr),
    Case("sweep-without-values", lambda e: ("--sweep", _first_traced_lr(e)), _first_traced_lr),
    Case("sweep-static-value-invalid", lambda e: ("--sweep", f"total_steps=0,{e.Config().total_steps}"), "total_steps"),
    # Tracking, run folder, resume, multi-host
    Case("track-wandb-missing", ("--track", "wandb"), "wandb", skip_if_importable="wandb"),
    Case("run-dir-is-a-file", ("--run-dir", "{run}"), setup=regular_file, own_run_dir=True),
    Case("run-dir-holds-another-run", ("--run-dir", "{run}"), "--resume", setup=another_run, own_run_dir=True),
    Case("resume-missing-folder", ("--resume", "{run}"), own_run_dir=True),
    Case("resume-a-file", ("--resume", "{run}"), setup=regular_file, own_run_dir=True),
    Case("resume-truncated-config", ("--resume", "{run}"), "config.json", setup=truncated_config, own_run_dir=True),
    Case("resume-config-without-fields", ("--resume", "{run}"), setup=config_without_fields, own_run_dir=True),
    Case(
        "resume-other-algorithm",
        ("--resume", "{run}"),
        lambda e: e.other,
        setup=other_algorithms_run,
        own_run_dir=True,
    ),
    Case("resume-fused", ("--resume", "{run}", "--fused"), "--fused", setup=a_run, own_run_dir=True),
    Case("resume-another-preset", ("--resume", "{run}", "--preset", "tiny"), "--preset tiny", setup=a_run, own_run_dir=True),
    Case("resume-config-wrong-type", ("--resume", "{run}"), "total_steps", setup=config_of_the_wrong_type, own_run_dir=True),
    Case("resume-checkpoints-a-file", ("--resume", "{run}"), "checkpoints", setup=checkpoints_a_file, own_run_dir=True),
    Case("num-processes-without-coordinator", ("--num-processes", "2"), "coordinator"),
    Case("process-id-without-coordinator", ("--process-id", "1"), "coordinator"),
]


def derived_cases(entry: EntryPoint) -> list[Case]:
    """GENERIC cases built from the entry point's Config: every learning rate NaN, infinite, negative
    and beyond float32 (finite as the flag's float64, infinite in the program); every hidden-size tuple
    with a layer of 0 units."""
    cases = []
    for name in entry.lr_fields():
        flag = "--" + name.replace("_", "-")
        cases.append(Case(f"{name}-nan", (flag, "nan"), name))
        cases.append(Case(f"{name}-inf", (flag, "inf"), name))
        cases.append(Case(f"{name}-negative", (flag, "-0.1"), name))
        cases.append(Case(f"{name}-beyond-float32", (flag, "1e39"), name))
    for field in dataclasses.fields(entry.Config):
        if field.name.endswith("hidden_sizes"):
            cases.append(Case(f"{field.name}-zero-layer", ("--" + field.name.replace("_", "-"), "64", "0"), field.name))
    return cases


PER_ENTRY_POINT: dict[str, list[Case]] = {
    "pets": [
        Case("model-hidden-sizes-negative", ("--model-hidden-sizes", "-1"), "model_hidden_sizes"),
        Case("hidden-sizes-old-spelling", ("--hidden-sizes", "16"), "is now --model-hidden-sizes"),
        Case("initial-steps-negative", ("--initial-steps", "-5"), "initial_steps"),
        Case("num-elites-over-population", ("--num-elites", "1000"), "num_elites"),
        Case("population-0", ("--population", "0"), "population"),
        Case("horizon-0", ("--horizon", "0"), "horizon"),
        Case("model-elites-over-ensemble", ("--model-elites", "6"), "model_elites"),
        Case("planner-unknown", ("--planner", "nope"), "planner"),
    ],
    "mbpo": [
        Case("real-ratio-1.5", ("--real-ratio", "1.5"), "real_ratio"),
        Case("real-ratio-negative", ("--real-ratio", "-0.1"), "real_ratio"),
        Case("model-elites-over-ensemble", ("--model-elites", "10"), "model_elites"),
        Case("num-elites-old-spelling", ("--num-elites", "3"), "is now --model-elites"),
        Case("rollout-schedule-backwards", ("--rollout-schedule", "5", "2", "1", "5"), "rollout_schedule"),
        Case("tau-0", ("--tau", "0"), "tau"),
    ],
    "maac": [
        Case("env-discrete", ("--env", "cartpole_discrete"), "maac.py"),
        Case("horizon-negative", ("--horizon", "-1"), "horizon"),
        Case("initial-alpha-0", ("--initial-alpha", "0"), "initial_alpha"),
        Case("horizon-with-sac-only", ("--sac-only", "--horizon", "3"), "sac_only"),
    ],
    "svg": [
        Case("env-discrete", ("--env", "cartpole_discrete"), "svg.py"),
        Case("env-pixels", ("--env", "pendulum_pixels"), "svg.py"),
        Case("horizon-negative", ("--horizon", "-1"), "horizon"),
        Case("real-ratio-1.5", ("--real-ratio", "1.5"), "real_ratio"),
    ],
    "mbmpo": [
        Case("inner-lr-negative", ("--inner-lr", "-0.1"), "inner_lr"),
        Case("imagined-horizon-0", ("--imagined-horizon", "0"), "imagined_horizon"),
        Case("ensemble-size-0", ("--ensemble-size", "0"), "ensemble_size"),
        Case("num-models-old-spelling", ("--num-models", "3"), "is now --ensemble-size"),
        Case("model-elites-set", ("--model-elites", "2"), "model_elites"),
        Case("clip-eps-1.5", ("--clip-eps", "1.5"), "clip_eps"),
        Case("num-envs-not-dividing", ("--num-envs", "3"), "num_envs"),
    ],
    "clearning": [
        Case("env-not-a-goal-task", ("--env", "pendulum"), "pendulum"),
        Case("batch-size-odd", ("--batch-size", "255"), "batch_size"),
        Case("num-envs-not-dividing", ("--num-envs", "3"), "num_envs"),
        Case("discount-1", ("--discount", "1.0"), "discount"),
    ],
    "dreamer": [
        # --total-steps 3000000000 is in GENERIC.
        Case("horizon-0", ("--horizon", "0"), "horizon"),
        Case("buffer-capacity-under-sequence", ("--buffer-capacity", "10"), "buffer_capacity"),
        Case("unimix-0", ("--unimix", "0"), "unimix"),
        Case("hidden-size-0", ("--hidden-size", "0"), "hidden_size"),
        Case("sequence-length-0", ("--sequence-length", "0"), "sequence_length"),
        Case("kl-balance-1.5", ("--kl-balance", "1.5"), "kl_balance"),
    ],
    "poplin": [
        Case("planner-not-cem", ("--planner", "random"), "planner"),
        Case("search-unknown", ("--search", "nope"), "search"),
        Case("policy-hidden-sizes-negative", ("--policy-hidden-sizes", "-1"), "policy_hidden_sizes"),
        Case("policy-epochs-0", ("--policy-epochs", "0"), "policy_epochs"),
        Case("action-noise-var-0", ("--action-noise-var", "0"), "action_noise_var"),
    ],
    "planet": [
        Case("horizon-0", ("--horizon", "0"), "horizon"),
        Case("elites-over-population", ("--num-elites", "2000"), "num_elites"),
        Case("buffer-capacity-under-sequence", ("--buffer-capacity", "5"), "buffer_capacity"),
        Case("min-std-0", ("--min-std", "0"), "min_std"),
        Case("discrete-actions", ("--env", "cartpole_discrete"), "discrete"),
    ],
    "alphazero": [
        Case("one-player-task", ("--env", "pendulum"), "two-player"),
        Case("simulations-0", ("--num-simulations", "0"), "num_simulations"),
        Case("eval-simulations-0", ("--eval-simulations", "0"), "eval_simulations"),
        Case("search-unknown", ("--search", "nope"), "search"),
        Case("dirichlet-fraction-2", ("--dirichlet-fraction", "2"), "dirichlet_fraction"),
        Case("max-moves-0", ("--max-moves", "0"), "max_moves"),
        Case("replay-under-an-iteration", ("--replay-capacity", "100"), "replay_capacity"),
    ],
    "muzero": [
        Case("env-continuous", ("--env", "pendulum"), "muzero.py"),
        Case("simulations-0", ("--num-simulations", "0"), "num_simulations"),
        Case("eval-simulations-0", ("--eval-simulations", "0"), "eval_simulations"),
        Case("search-unknown", ("--search", "nope"), "search"),
        Case("unroll-steps-0", ("--unroll-steps", "0"), "unroll_steps"),
        Case("td-steps-0", ("--td-steps", "0"), "td_steps"),
        Case("replay-under-a-window", ("--replay-capacity", "16"), "replay_capacity"),
        Case("initial-steps", ("--initial-steps", "100"), "initial_steps"),
    ],
    "world_models": [
        Case("vector-observations", ("--env", "pendulum"), "64 x 64 RGB"),
        Case("population-1", ("--population", "1"), "population"),
        Case("population-0", ("--population", "0"), "population"),
        Case("rollouts-per-candidate-0", ("--rollouts-per-candidate", "0"), "rollouts_per_candidate"),
        Case("generations-0", ("--generations", "0"), "generations"),
        Case("train-in-unknown", ("--train-in", "nope"), "train_in"),
        Case("controller-inputs-unknown", ("--controller-inputs", "zc"), "controller_inputs"),
        Case("temperature-0", ("--temperature", "0"), "temperature"),
        Case("refit-rollouts-over-store", ("--refit-every", "5", "--refit-rollouts", "1000"), "refit_rollouts"),
    ],
    "dyna_q": [
        Case("continuous-task", ("--env", "pendulum"), "tabular"),
        Case("planning-steps-fraction", ("--planning-steps", "2.5"), "planning_steps"),
        Case("planning-steps-negative", ("--planning-steps", "-1"), "planning_steps"),
        Case("kappa-negative", ("--kappa", "-0.1"), "kappa"),
        Case("steps-per-update-0", ("--steps-per-update", "0"), "steps_per_update"),
        Case("episode-length", ("--episode-length", "100"), "episode_length"),
    ],
}


def cases_of(entry: EntryPoint) -> list[Case]:
    generic = [case for case in GENERIC if all(entry.has(name) for name in case.needs)]
    return generic + derived_cases(entry) + PER_ENTRY_POINT.get(entry.name, [])


CASES = [pytest.param(entry, case, id=f"{entry.name}-{case.id}") for entry in ENTRY_POINTS for case in cases_of(entry)]


# THE TEST


def snapshot(root: pathlib.Path) -> dict[str, bytes | None]:
    """Every folder (None) and file (its bytes) under `root`."""
    return {
        str(path.relative_to(root)): None if path.is_dir() else path.read_bytes() for path in sorted(root.rglob("*"))
    }


def _reached_execution(*args, **kwargs):
    raise AssertionError("reached execution")


def _mentions(message: str, needle: str) -> bool:
    return needle in message or needle in message.replace("-", "_")


@pytest.mark.parametrize("entry,case", CASES)
def test_bad_input_is_refused(entry: EntryPoint, case: Case, tmp_path, monkeypatch, capsys):
    if case.skip_if_importable is not None:
        try:
            importlib.import_module(case.skip_if_importable)
        except ImportError:
            pass
        else:
            pytest.skip(f"{case.skip_if_importable} is installed")
    from mbrlax.runner import cli, execution

    monkeypatch.setattr(cli, "run_programs", _reached_execution)
    monkeypatch.setattr(execution, "execute", _reached_execution)
    monkeypatch.setattr(execution, "execute_fused", _reached_execution)
    cwd = tmp_path / "cwd"  # the default runs/<name> folder would land here
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    if case.setup is not None:
        case.setup(entry, tmp_path)
    before = snapshot(tmp_path)
    argv = case.argv_for(entry, tmp_path)
    capsys.readouterr()

    problems = []
    parse_error = False
    code = None
    try:
        code = entry.main(argv)
    except SystemExit as exit:
        parse_error = True
        code = exit.code
    except AssertionError as error:
        if "reached execution" not in str(error):
            raise
        problems.append("reached execution")
    except Exception as error:  # noqa: BLE001: any exception is the failure being looked for
        problems.append(f"raised {type(error).__name__}: {' '.join(str(error).split())[:200]}")
    _, err = capsys.readouterr()

    if code != 2 and not problems:
        problems.append(f"{'SystemExit' if parse_error else 'returned'} {code!r}, not 2")
    if not parse_error and not problems:
        lines = err.splitlines()
        if len(lines) != 1:
            problems.append(f"stderr has {len(lines)} lines, not 1: {err[-600:]!r}")
        elif not lines[0].startswith("error: ") or not lines[0][len("error: ") :].strip():
            problems.append(f"stderr does not begin with 'error: ' and a message: {lines[0]!r}")
        else:
            needle = case.needle(entry)
            if needle is not None and not _mentions(lines[0], needle):
                problems.append(f"message does not name {needle!r}: {lines[0]!r}")
    after = snapshot(tmp_path)
    if after != before:
        created = sorted(set(after) - set(before))
        changed = sorted(k for k in set(after) & set(before) if after[k] != before[k])
        removed = sorted(set(before) - set(after))
        problems.append(f"files touched: created {created[:5]}, changed {changed[:5]}, removed {removed[:5]}")
    if (tmp_path / "run").exists() and case.setup is None:
        problems.append("run folder created")
    assert not problems, f"{entry.name}.py {' '.join(argv)}: " + "; ".join(problems)


def test_every_entry_point_is_listed():
    """An algorithm file with a main() is an entry point, and gets the whole table."""
    import mbrlax.algorithms as package

    found = set()
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"mbrlax.algorithms.{info.name}")
        if callable(getattr(module, "main", None)):
            found.add(info.name)
    assert found == set(BY_NAME), f"entry points not in ENTRY_POINTS: {sorted(found - set(BY_NAME))}"


def test_table_is_large_enough():
    assert all(len(cases_of(entry)) >= 12 for entry in ENTRY_POINTS)
    assert len(CASES) >= 7 * 12
