"""Throughput of each algorithm, measured, with the device, commit and date beside every figure.

    python benchmarks/throughput.py pets                      # CPU-sized defaults
    python benchmarks/throughput.py pets --num-envs 1,16,256  # on a GPU

Writes benchmarks/results/throughput-<algorithm>-<platform>.json and prints Markdown rows for
benchmarks/RESULTS.md. Compile time is reported apart from run time, in every row's `compile_s`,
and as a line `compiled in N s` the moment a program is compiled (so a caller that stops a run at a
time limit, as benchmarks/gpu_suite.py does, still learns it). `--override FIELD=VALUE` sets a config
field of every program timed (gpu_suite's toy sizes for CI), and each row records its overrides.
Each algorithm adds one function to BENCHMARKS that returns rows (dicts); the rest is shared.

MBPO: environment steps per second of the whole loop (model refit, branched rollouts, real steps,
G SAC updates per step) at the paper's HalfCheetah setting: 400 rollouts and 40 SAC updates per real
step, 7 members of 4 x 200, SAC 2 x 256, batch 256, on brax/halfcheetah after the 5,000 random
steps. One `update` of the training program (one model period) is timed for 1 and for N seeds
vmapped. `--period` shortens the model period from the paper's 250 steps (keeping 400 rollouts and
40 updates per step) so a CPU finishes; the refit then counts more often per step, so the figure is
a lower bound of the full-period rate.

MAAC: the same loop and measure at the MAAC authors' HalfCheetah setting: MBPO's 400 rollouts per
real step for the critic's model data, 8 members of 4 x 200, 8 updates per real step, each with an
actor gradient through 3 model steps.

MB-MPO: seconds per iteration and imagined transitions per second at the paper's HalfCheetah setting
(20 tasks on 5 models of 512 x 512, 50 imagined trajectories of 200 steps before and after each
task's adaptation, 30 meta-steps: 12 M model steps), one `update` of the training program, which also
refits the models on the 5,000 random steps and collects 4,000 real steps with the adapted policies.
`--meta-steps` shortens the iteration for a CPU; the refit and the real steps then weigh more, so
the imagined rate is a lower bound.

C-learning: environment steps per second including learning (each vector step of all environments
followed by its gradient steps) on the open point maze (its defaults: 32 environments, 4 steps of
batch 256 per vector step) and on brax/ant_goal (its preset: 256 environments, 8 steps per vector
step, 256 x 256 networks). The goal on one H100 is 1 M environment steps a minute on ant.

Dreamer: environment steps per second at train ratio 512 (one environment, an update of B x T =
16 x 64 replayed steps every second step, acting included), and the replayed steps per second that
makes, for each size preset, from state (pendulum) and from 64 x 64 pixels (pendulum_pixels), for
1 to 32 seeds vmapped. The goal on one H100 with the 12m preset: 50,000 replayed steps a second,
and 32 seeds at 10x or more the aggregate throughput of one.

MuZero: environment steps per second of the whole loop (each step a batched search of 16
environments, then the updates), PUCT with 50 simulations and Gumbel with 8, on cartpole_discrete;
and searches per second from a batch of 256 observations alone.

World Models: CMA-ES generations per minute at the default setting (cartpole_swingup_pixels, population
16 x 2 rollouts of 100 decisions, each frame through V and M), in the real task and in M's dream;
the random rollouts and V's and M's fits (`init`) are compiled but not timed.

PETS: actions planned per second and ensemble-member evaluations per second at mbrl-lib's
continuous-cartpole planner setting (population 350, horizon 15, 5 CEM iterations, 20 particles,
7 members of 4 x 200), for several numbers of environments planned for at once. The planning FLOP
rate is given as a share of the device's FP32 peak: the data-sheet peak on known GPUs; on a CPU the
rate of a large float32 matmul measured here (the practical peak of that machine), and the table
says which.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp

from mbrlax.runner import over_runs

ROOT = pathlib.Path(__file__).resolve().parent.parent

# FP32 (non-tensor-core) peaks from the vendors' data sheets, in FLOP/s.
FP32_PEAKS = {"H100": 67e12, "H200": 67e12, "A100": 19.5e12}


def device_info() -> dict:
    device = jax.local_devices()[0]
    return {"platform": device.platform, "device_kind": device.device_kind, "num_devices": jax.local_device_count()}


def fp32_peak(n: int = 2048) -> tuple[float, str]:
    kind = jax.local_devices()[0].device_kind
    for name, peak in FP32_PEAKS.items():
        if name in kind:
            return peak, f"{name} data sheet"
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    start = time.perf_counter()
    for _ in range(10):
        out = matmul(a)
    out.block_until_ready()
    return 10 * 2 * n**3 / (time.perf_counter() - start), f"measured {n}^2 float32 matmul"


def git_commit() -> str:
    """The checkout's commit; MBRLAX_COMMIT where the tree travelled without its .git."""
    import os
    import subprocess

    if os.environ.get("MBRLAX_COMMIT"):
        return os.environ["MBRLAX_COMMIT"]
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, timeout=5
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def timed(compiled, *args, repeats: int) -> float:
    """Best wall time of `repeats` calls, after one warm-up call."""
    jax.block_until_ready(compiled(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        best = min(best, time.perf_counter() - start)
    return best


def memory_mb(compiled) -> dict:
    """Device memory of one call of a compiled program, from XLA's analysis (its arguments, outputs
    and temporaries, less the outputs that reuse donated arguments); on a GPU also the allocator's
    peak so far in this process (`memory_stats`, which a CPU does not keep). The timed updates here
    are called again on the same state, so they do not donate it: their figure counts the state twice,
    where the runner's update, which donates it, needs it about once."""
    analysis = compiled.memory_analysis()
    out = {}
    if analysis is not None:
        need = (
            analysis.argument_size_in_bytes
            + analysis.output_size_in_bytes
            + analysis.temp_size_in_bytes
            - analysis.alias_size_in_bytes
        )
        out["program_memory_mb"] = need / 2**20
    stats = jax.local_devices()[0].memory_stats()
    if stats and "peak_bytes_in_use" in stats:
        out["device_peak_memory_mb"] = stats["peak_bytes_in_use"] / 2**20
    return out


def mlp_flops(sizes: list[int]) -> int:
    """Multiply-adds x 2 of one forward pass through dense layers of these widths."""
    return sum(2 * a * b for a, b in zip(sizes[:-1], sizes[1:]))


def parse_override(text: str) -> tuple[str, object]:
    """`FIELD=VALUE` of `--override`: the value read as JSON (a list becomes a tuple), else as a string."""
    field, sep, value = text.partition("=")
    if not sep or not field:
        raise argparse.ArgumentTypeError(f"--override takes FIELD=VALUE, got {text!r}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return field, tuple(parsed) if isinstance(parsed, list) else parsed


def overridden(fields: dict, args) -> dict:
    """The config fields a benchmark chose, with the command line's `--override`s on top (toy sizes
    for `benchmarks/gpu_suite.py --tiny`, or a variation of a setting); each row records them."""
    return dict(fields, **dict(args.override))


def report_compile(compile_s: float) -> None:
    """One line as soon as a program is compiled, so a caller that stops a run at a time limit
    (benchmarks/gpu_suite.py) still learns its compile time."""
    print(f"compiled in {compile_s:.2f} s", flush=True)


# PETS


def _time_planning(module, preset: dict, args, num_envs: int):
    """Planning alone, timed through `evaluate`, which plans for `eval_episodes` environments at once
    for `episode_length` steps; the environment step itself is negligible next to planning. Returns
    (config, compile seconds, seconds per evaluation, the compiled evaluation)."""
    config = module.Config(
        **overridden(
            dict(
                preset,
                episode_length=args.steps,
                eval_episodes=num_envs,
                total_steps=2 * args.steps,
                eval_every=args.steps,
                initial_steps=args.steps,
                retrain_every=args.steps,
            ),
            args,
        )
    )
    trainer = module.make_train(config)
    key = jax.random.PRNGKey(0)
    start = time.perf_counter()
    state = jax.jit(trainer.init)(key, config)
    evaluate = jax.jit(trainer.evaluate).lower(state, key, config).compile()
    compile_s = time.perf_counter() - start
    report_compile(compile_s)
    return config, compile_s, timed(evaluate, state, key, config, repeats=args.repeats), evaluate


def _planner_setting(config) -> str:
    return (
        f"pop {config.population}, H {config.horizon}, {config.cem_iterations} iters, P {config.particles}, "
        f"{config.ensemble_size} x ({len(config.model_hidden_sizes)} x {config.model_hidden_sizes[0]})"
    )


def bench_pets(args) -> list[dict]:
    from mbrlax.algorithms import pets

    rows = []
    peak, peak_source = fp32_peak(args.peak_matmul)
    for num_envs in args.num_envs:
        config, compile_s, seconds, evaluate = _time_planning(pets, pets.PRESETS["cartpole_swingup"], args, num_envs)
        actions = num_envs * args.steps
        evals_per_action = config.population * config.particles * config.horizon * config.cem_iterations
        obs_size, action_size = 5, 1
        per_eval = mlp_flops([obs_size + action_size, *config.model_hidden_sizes, 2 * obs_size])
        flop_rate = actions * evals_per_action * per_eval / seconds
        rows.append(
            {
                "algorithm": "pets",
                "setting": f"mbrl-lib cartpole: {_planner_setting(config)}",
                "num_envs": num_envs,
                "actions_per_s": actions / seconds,
                "ms_per_action_step": 1e3 * seconds / args.steps,
                "member_evals_per_s": actions * evals_per_action / seconds,
                "gflop_per_s": flop_rate / 1e9,
                "fraction_of_fp32_peak": flop_rate / peak,
                "fp32_peak_gflop_per_s": peak / 1e9,
                "peak_source": peak_source,
                "compile_s": compile_s,
                **memory_mb(evaluate),
                "steps_timed": args.steps,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def bench_poplin(args) -> list[dict]:
    """POPLIN-A (the first row, the headline) and POPLIN-P planning on the pendulum preset, as PETS's."""
    from mbrlax.algorithms import poplin

    rows = []
    for variant in ("poplin-a", "poplin-p"):
        for num_envs in args.num_envs:
            preset = dict(poplin.PRESETS["pendulum"], **poplin.VARIANTS[variant])
            config, compile_s, seconds, evaluate = _time_planning(poplin, preset, args, num_envs)
            rows.append(
                {
                    "algorithm": "poplin",
                    "setting": (
                        f"{config.search} on pendulum: {_planner_setting(config)}, "
                        f"policy {list(config.policy_hidden_sizes)}"
                    ),
                    "num_envs": num_envs,
                    "actions_per_s": num_envs * args.steps / seconds,
                    "ms_per_action_step": 1e3 * seconds / args.steps,
                    "compile_s": compile_s,
                    **memory_mb(evaluate),
                    "steps_timed": args.steps,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def pets_markdown(r: dict, meta: dict) -> str:
    return (
        f"| {r['algorithm']} | {r['setting']} | {r['num_envs']} envs | {r['actions_per_s']:.2f} actions/s "
        f"({r['ms_per_action_step']:.0f} ms per planning step) | {r['member_evals_per_s']:.3g} member evals/s | "
        f"{r['gflop_per_s']:.0f} GFLOP/s = {100 * r['fraction_of_fp32_peak']:.0f} % of FP32 peak ({r['peak_source']}) "
        f"| compile {r['compile_s']:.0f} s | {meta['device']} | {meta['commit']} | {meta['date']} |"
    )


def poplin_markdown(r: dict, meta: dict) -> str:
    return (
        f"| {r['algorithm']} | {r['setting']} | {r['num_envs']} envs | {r['actions_per_s']:.2f} actions/s "
        f"({r['ms_per_action_step']:.0f} ms per planning step) | compile {r['compile_s']:.0f} s "
        f"| {meta['device']} | {meta['commit']} | {meta['date']} |"
    )


def bench_planet(args) -> list[dict]:
    from mbrlax.algorithms import planet

    rows = []
    for task in args.planet_tasks:
        for variant in args.planet_variants:
            # One update: `model_updates` gradient steps, then `collect_steps` planned steps of one environment.
            fields = dict(planet.PRESETS[task], **({} if variant == "task" else planet.VARIANTS[variant]))
            fields = overridden(dict(fields, eval_every=fields["collect_steps"]), args)
            steps = fields["collect_steps"]
            config = planet.Config(**dict(fields, total_steps=fields["initial_steps"] + 2 * steps))
            trainer = planet.make_train(config)
            for num_seeds in args.num_seeds:
                seconds, compile_s, memory = time_one_update(trainer, config, num_seeds, args.repeats)
                rows.append(
                    {
                        "algorithm": "planet",
                        "setting": (
                            f"{config.env}, {variant}: model {config.deter_size}/{config.hidden_size}/"
                            f"{config.stoch_size}, {config.model_updates} updates of {config.batch_size} x "
                            f"{config.sequence_length} per {steps} steps, CEM {config.population}/"
                            f"{config.num_elites}/{config.cem_iterations} over {config.horizon} steps, 1 env"
                        ),
                        "num_seeds": num_seeds,
                        "env_steps_per_s": num_seeds * steps / seconds,
                        "seconds_per_update": seconds,
                        "compile_s": compile_s,
                        **memory,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


def planet_markdown(r: dict, meta: dict) -> str:
    return (
        f"| {r['algorithm']} | {r['setting']} | {r['num_seeds']} seeds | {r['env_steps_per_s']:.2f} env steps/s "
        f"(with the model's updates) | {r['seconds_per_update']:.1f} s per update | compile {r['compile_s']:.0f} s "
        f"| {meta['device']} | {meta['commit']} | {meta['date']} |"
    )


def time_one_update(trainer, config, num_seeds: int, repeats: int) -> tuple[float, float, dict]:
    """Seconds of one `update` of `num_seeds` vmapped runs of a training program (after its `init`),
    the seconds spent compiling both, and the update's memory (`memory_mb`). One seed runs
    unbatched, as the runner runs it."""
    keys = jax.random.split(jax.random.PRNGKey(0), num_seeds)
    configs = jax.tree_util.tree_map(lambda v: jnp.full((num_seeds,), v), config)
    start = time.perf_counter()
    init = jax.jit(over_runs(trainer.init, num_seeds)).lower(keys, configs).compile()
    state = init(keys, configs)
    update = over_runs(trainer.update, num_seeds, in_axes=(0, 0, None))
    update = jax.jit(update).lower(state, configs, jnp.int32(0)).compile()
    compile_s = time.perf_counter() - start
    report_compile(compile_s)
    seconds = timed(update, state, configs, jnp.int32(0), repeats=repeats)
    return seconds, compile_s, memory_mb(update)


# MBPO AND MAAC: one model period (refit, branched rollouts, real steps with G updates each)


def _period_config(Config, preset: dict, args):
    """The preset with a model period of `args.period` steps, keeping 400 rollouts per real step."""
    period = args.period
    fields = dict(
        preset,
        model_train_freq=period,
        epoch_length=max(period, 1000),
        rollout_batch_size=400 * period,
        eval_every=2 * period,
        eval_episodes=1,
        backend=args.backend,
    )
    fields = overridden(fields, args)
    return Config(**dict(fields, total_steps=fields["initial_steps"] + 2 * period))


def _time_model_periods(name: str, module, config, setting: str, args) -> list[dict]:
    """Time one `update` (one model period) of the training program for 1 and N vmapped seeds."""
    trainer = module.make_train(config)
    period = config.model_train_freq
    rows = []
    for num_seeds in args.num_seeds:
        seconds, compile_s, memory = time_one_update(trainer, config, num_seeds, args.repeats)
        steps = num_seeds * period
        rows.append(
            {
                "algorithm": name,
                "setting": f"{setting}, model period {period} steps",
                "num_seeds": num_seeds,
                "env_steps_per_s": steps / seconds,
                "env_steps_per_s_per_seed": period / seconds,
                "sac_updates_per_s": steps * config.updates_per_step / seconds,
                "seconds_per_period": seconds,
                "period": period,
                "real_steps_in_buffer": config.initial_steps,
                "backend": args.backend or "task default",
                "compile_s": compile_s,
                **memory,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def bench_mbpo(args) -> list[dict]:
    from mbrlax.algorithms import mbpo

    config = _period_config(mbpo.Config, mbpo.PRESETS["brax/halfcheetah"], args)
    setting = "paper HalfCheetah: 400 rollouts and 40 SAC updates per step"
    return _time_model_periods("mbpo", mbpo, config, setting, args)


def bench_maac(args) -> list[dict]:
    from mbrlax.algorithms import maac

    config = _period_config(maac.Config, maac.PRESETS["brax/halfcheetah"], args)
    setting = "authors' HalfCheetah: H = 3, 8 members, 400 rollouts and 8 updates per step"
    return _time_model_periods("maac", maac, config, setting, args)


def bench_m2ac(args) -> list[dict]:
    from mbrlax.algorithms import m2ac

    config = _period_config(m2ac.Config, m2ac.PRESETS["brax/halfcheetah"], args)
    setting = "macura's HalfCheetah M2AC: H = 10, masking rate 0.5, 400 rollouts and 40 updates per step"
    return _time_model_periods("m2ac", m2ac, config, setting, args)


def bench_steve(args) -> list[dict]:
    from mbrlax.algorithms import steve

    config = _period_config(steve.Config, steve.PRESETS["brax/halfcheetah"], args)
    # STEVE's critic learns from real data only: no rollouts into a model buffer.
    config = dataclasses.replace(config, rollout_batch_size=0)
    setting = "STEVE authors' settings on HalfCheetah: H = 3, batch 512, 4 updates per step"
    return _time_model_periods("steve", steve, config, setting, args)


def model_period_markdown(r: dict, meta: dict) -> str:
    return (
        f"| {r['algorithm']} | {r['setting']} | {r['num_seeds']} seeds | {r['env_steps_per_s']:.2f} env steps/s "
        f"({r['env_steps_per_s_per_seed']:.2f} per seed) | {r['sac_updates_per_s']:.0f} SAC updates/s "
        f"| compile {r['compile_s']:.0f} s | {meta['device']} | {meta['commit']} | {meta['date']} |"
    )


# MB-MPO: one iteration (model refit, meta-steps in imagination, real data with adapted policies)


def bench_mbmpo(args) -> list[dict]:
    from mbrlax.algorithms import mbmpo

    preset = dict(mbmpo.PRESETS["brax/halfcheetah"], meta_steps=args.meta_steps, backend=args.backend)
    preset = overridden(preset, args)
    preset.update(total_steps=preset["initial_steps"] + preset["real_steps_per_iteration"])
    config = mbmpo.Config(**preset)
    trainer = mbmpo.make_train(config)
    imagined = config.meta_steps * 2 * config.num_tasks * config.imagined_trajectories * config.imagined_horizon
    rows = []
    for num_seeds in args.num_seeds:
        seconds, compile_s, memory = time_one_update(trainer, config, num_seeds, args.repeats)
        rows.append(
            {
                "algorithm": "mbmpo",
                "setting": (
                    f"paper HalfCheetah: {config.num_tasks} tasks, {config.imagined_trajectories} imagined "
                    f"trajectories of {config.imagined_horizon} steps, {config.meta_steps} meta-steps, "
                    f"{config.real_steps_per_iteration} real steps"
                ),
                "num_seeds": num_seeds,
                "seconds_per_iteration": seconds,
                "imagined_transitions_per_s": num_seeds * imagined / seconds,
                "imagined_transitions_per_iteration": imagined,
                "backend": args.backend or "task default",
                "compile_s": compile_s,
                **memory,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def mbmpo_markdown(r: dict, meta: dict) -> str:
    return (
        f"| {r['algorithm']} | {r['setting']} | {r['num_seeds']} seeds | {r['seconds_per_iteration']:.1f} s per "
        f"iteration | {r['imagined_transitions_per_s']:.3g} imagined transitions/s | compile {r['compile_s']:.0f} s "
        f"| {meta['device']} | {meta['commit']} | {meta['date']} |"
    )


# C-LEARNING: environment steps per second including learning, on the goal tasks


def bench_clearning(args) -> list[dict]:
    from mbrlax.algorithms import clearning

    rows = []
    for task in args.goal_tasks:
        preset = overridden(dict(clearning.PRESETS[task], backend=args.backend), args)
        num_envs = preset.get("num_envs", clearning.Config.num_envs)
        chunk = num_envs * args.vector_steps
        preset.update(steps_per_update=chunk, initial_steps=chunk, total_steps=2 * chunk, eval_every=chunk)
        config = clearning.Config(**preset)
        trainer = clearning.make_train(config)
        for num_seeds in args.num_seeds:
            seconds, compile_s, memory = time_one_update(trainer, config, num_seeds, args.repeats)
            rows.append(
                {
                    "algorithm": "clearning",
                    "setting": (
                        f"{config.env}: {num_envs} envs, {config.updates_per_step} gradient steps of batch "
                        f"{config.batch_size} per vector step, networks {config.hidden_sizes}"
                    ),
                    "num_seeds": num_seeds,
                    "env_steps_per_s": num_seeds * chunk / seconds,
                    "env_steps_per_minute": 60 * num_seeds * chunk / seconds,
                    "gradient_steps_per_s": num_seeds * args.vector_steps * config.updates_per_step / seconds,
                    "backend": args.backend or "task default",
                    "compile_s": compile_s,
                    **memory,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def clearning_markdown(r: dict, meta: dict) -> str:
    return (
        f"| {r['algorithm']} | {r['setting']} | {r['num_seeds']} seeds | {r['env_steps_per_s']:.0f} env steps/s "
        f"({r['env_steps_per_minute']:.3g} a minute) | {r['gradient_steps_per_s']:.0f} gradient steps/s "
        f"| compile {r['compile_s']:.0f} s | {meta['device']} | {meta['commit']} | {meta['date']} |"
    )


# DREAMER: environment steps at train ratio 512 (one env, updates of 16 x 64 replayed steps)


def parameter_count(params) -> int:
    return sum(x.size for x in jax.tree_util.tree_leaves(params))


def bench_dreamer(args) -> list[dict]:
    from mbrlax.algorithms import dreamer

    rows = []
    for task in args.dreamer_tasks:
        for size in args.dreamer_sizes:
            # One update: `dreamer_env_steps` steps of one environment, an update every second step.
            steps = args.dreamer_env_steps
            # The model's size alone: VARIANTS' small and 12m are only that, its tiny a smoke run's budget too.
            sizes = ("deter_size", "hidden_size", "layers", "classes", "cnn_depth")
            model = {key: dreamer.VARIANTS[size][key] for key in sizes}
            fields = dict(model, env=task, train_ratio=512, initial_steps=1024, eval_every=steps)
            fields.update(steps_per_update=steps)
            fields = overridden(fields, args)
            config = dreamer.Config(**dict(fields, total_steps=fields["initial_steps"] + 2 * steps))
            trainer = dreamer.make_train(config)
            shapes = jax.eval_shape(trainer.init, jax.random.PRNGKey(0), config)
            params = parameter_count((shapes.world_model, shapes.actor, shapes.critic))
            updates = steps * config.train_ratio // (config.batch_size * config.sequence_length)
            for num_seeds in args.dreamer_seeds.get(size, args.num_seeds):
                seconds, compile_s, memory = time_one_update(trainer, config, num_seeds, args.repeats)
                rows.append(
                    {
                        "algorithm": "dreamer",
                        "setting": (
                            f"{config.env}, {size} ({params / 1e6:.2f} M parameters): batch {config.batch_size} "
                            f"x {config.sequence_length}, train ratio {config.train_ratio}, 1 env, "
                            f"horizon {config.horizon}"
                        ),
                        "num_seeds": num_seeds,
                        "env_steps_per_s": num_seeds * steps / seconds,
                        "replayed_per_s": num_seeds * updates * config.batch_size * config.sequence_length / seconds,
                        "ms_per_update": 1e3 * seconds / updates,
                        "parameters": params,
                        "compile_s": compile_s,
                        **memory,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


def dreamer_markdown(r: dict, meta: dict) -> str:
    return (
        f"| {r['algorithm']} | {r['setting']} | {r['num_seeds']} seeds | {r['env_steps_per_s']:.2f} env steps/s "
        f"| {r['replayed_per_s']:.0f} replayed steps/s ({r['ms_per_update']:.0f} ms per update of all seeds) "
        f"| compile {r['compile_s']:.0f} s | {meta['device']} | {meta['commit']} | {meta['date']} |"
    )


# DYNA-Q: real steps per second on the Dyna Maze, each with its n planning updates


def bench_dyna_q(args) -> list[dict]:
    import dataclasses

    from mbrlax.algorithms import dyna_q

    rows = []
    steps = 500
    for n in (0, 5, 50):
        preset = overridden(dict(dyna_q.PRESETS["dyna_maze"], planning_steps=float(n)), args)
        config = dataclasses.replace(dyna_q.Config(**preset), steps_per_update=steps, total_steps=2 * steps)
        trainer = dyna_q.make_train(config)
        for num_seeds in args.num_seeds:
            seconds, compile_s, memory = time_one_update(trainer, config, num_seeds, args.repeats)
            rows.append(
                {
                    "algorithm": "dyna_q",
                    "setting": f"{config.env}: n = {n} planning updates per real step",
                    "num_seeds": num_seeds,
                    "env_steps_per_s": num_seeds * steps / seconds,
                    "planning_updates_per_s": num_seeds * steps * n / seconds,
                    "compile_s": compile_s,
                    **memory,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def dyna_q_markdown(r: dict, meta: dict) -> str:
    return (
        f"| {r['algorithm']} | {r['setting']} | {r['num_seeds']} seeds | {r['env_steps_per_s']:.0f} env steps/s "
        f"| {r['planning_updates_per_s']:.0f} planning updates/s | compile {r['compile_s']:.1f} s "
        f"| {meta['device']} | {meta['commit']} | {meta['date']} |"
    )


# ALPHAZERO: self-play moves per second of the whole loop (games to their end, then the updates)


def bench_alphazero(args) -> list[dict]:
    import dataclasses

    from mbrlax.algorithms import alphazero

    rows = []
    for search, simulations in (("puct", 32), ("gumbel", 8)):
        preset = overridden(dict(search=search, num_simulations=simulations, eval_simulations=simulations), args)
        config = dataclasses.replace(alphazero.Config(), **preset)
        trainer = alphazero.make_train(config)
        game = alphazero.games.make_game(config.env)
        for num_seeds in args.num_seeds:
            seconds, compile_s, memory = time_one_update(trainer, config, num_seeds, args.repeats)
            # Moves counted as the budget counts them: games x the game's longest length.
            moves = config.num_envs * game.max_moves
            rows.append(
                {
                    "algorithm": "alphazero",
                    "setting": (
                        f"{config.env}: {search} with {config.num_simulations} simulations, {config.num_envs} games "
                        f"to their end, then {config.updates_per_iteration} updates of batch {config.batch_size} "
                        f"({config.network} {config.blocks} x {config.width})"
                    ),
                    "num_seeds": num_seeds,
                    "moves_per_s": num_seeds * moves / seconds,
                    "simulations_per_s": num_seeds * moves * config.num_simulations / seconds,
                    "s_per_iteration": seconds,
                    "compile_s": compile_s,
                    **memory,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def alphazero_markdown(r: dict, meta: dict) -> str:
    return (
        f"| {r['algorithm']} | {r['setting']} | {r['num_seeds']} seeds | {r['moves_per_s']:.0f} self-play moves/s "
        f"| {r['simulations_per_s']:.0f} simulations/s | {r['s_per_iteration']:.2f} s an iteration "
        f"| compile {r['compile_s']:.1f} s | {meta['device']} | {meta['commit']} | {meta['date']} |"
    )


# MUZERO: environment steps per second of the whole loop, and searches per second at a batch of 256


def bench_muzero(args) -> list[dict]:
    import dataclasses

    from mbrlax.algorithms import muzero

    rows = []
    for search, simulations in (("puct", 50), ("gumbel", 8)):
        preset = overridden(dict(search=search, num_simulations=simulations, eval_simulations=simulations), args)
        config = dataclasses.replace(muzero.Config(), **preset)
        steps = config.num_envs * config.rollout_length
        config = dataclasses.replace(config, total_steps=2 * steps, eval_every=steps)
        trainer = muzero.make_train(config)
        # Searches alone: one batched search from 256 observations of the task.
        net = muzero.MuZeroNet(trainer.spec.action_size, config.support_size, config.width, config.latent_size)
        observations = jnp.zeros((256, trainer.spec.observation_size))
        params = net.init(jax.random.PRNGKey(0), observations, jnp.zeros(256, jnp.int32))

        def searches(params, key, observations, config=config):
            model = muzero.model_functions(net, params)
            return muzero.search_actions(model, observations, key, config, simulations=config.num_simulations, explore=True)

        start = time.perf_counter()
        compiled = jax.jit(searches).lower(params, jax.random.PRNGKey(1), observations).compile()
        search_compile_s = time.perf_counter() - start
        search_s = timed(compiled, params, jax.random.PRNGKey(1), observations, repeats=args.repeats)
        for num_seeds in args.num_seeds:
            seconds, compile_s, memory = time_one_update(trainer, config, num_seeds, args.repeats)
            rows.append(
                {
                    "algorithm": "muzero",
                    "setting": (
                        f"{config.env}: {search} with {config.num_simulations} simulations, {config.num_envs} envs x "
                        f"{config.rollout_length} steps, then {config.updates_per_iteration} updates of batch "
                        f"{config.batch_size} (K = {config.unroll_steps}, n = {config.td_steps})"
                    ),
                    "num_seeds": num_seeds,
                    "env_steps_per_s": num_seeds * steps / seconds,
                    "searches_per_s_batch_256": 256 / search_s,
                    "ms_per_search_batch_256": 1000 * search_s,
                    "compile_s": compile_s + search_compile_s,
                    **memory,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def muzero_markdown(r: dict, meta: dict) -> str:
    return (
        f"| {r['algorithm']} | {r['setting']} | {r['num_seeds']} seeds | {r['env_steps_per_s']:.0f} env steps/s "
        f"| {r['searches_per_s_batch_256']:.0f} searches/s at batch 256 ({r['ms_per_search_batch_256']:.1f} ms a "
        f"batch) | compile {r['compile_s']:.1f} s | {meta['device']} | {meta['commit']} | {meta['date']} |"
    )


# WORLD MODELS: CMA-ES generations per minute (every candidate's rollouts, vmapped), real and dreamed


def bench_world_models(args) -> list[dict]:
    import dataclasses

    from mbrlax.algorithms import world_models

    rows = []
    for train_in in ("real", "dream"):
        preset = overridden(dict(train_in=train_in), args)
        config = dataclasses.replace(world_models.Config(), **preset)
        trainer = world_models.make_train(config)
        for num_seeds in args.num_seeds:
            seconds, compile_s, memory = time_one_update(trainer, config, num_seeds, args.repeats)
            episodes = config.population * config.rollouts_per_candidate
            where = "in the real task" if train_in == "real" else "in M's dream"
            rows.append(
                {
                    "algorithm": "world_models",
                    "setting": (
                        f"{config.env}: one CMA-ES generation {where}, "
                        f"population {config.population} x {config.rollouts_per_candidate} rollouts of "
                        f"{trainer.spec.episode_length} steps, V depth {config.vae_depth}, M {config.rnn_hidden} units"
                    ),
                    "num_seeds": num_seeds,
                    "generations_per_min": num_seeds * 60.0 / seconds,
                    "rollout_steps_per_s": num_seeds * episodes * trainer.spec.episode_length / seconds,
                    "compile_s": compile_s,
                    **memory,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def world_models_markdown(r: dict, meta: dict) -> str:
    return (
        f"| {r['algorithm']} | {r['setting']} | {r['num_seeds']} seeds "
        f"| {r['generations_per_min']:.1f} generations/min "
        f"| {r['rollout_steps_per_s']:.0f} candidate steps/s | compile {r['compile_s']:.0f} s "
        f"| {meta['device']} | {meta['commit']} | {meta['date']} |"
    )


BENCHMARKS = {
    "pets": (bench_pets, pets_markdown),
    "mbpo": (bench_mbpo, model_period_markdown),
    "maac": (bench_maac, model_period_markdown),
    "steve": (bench_steve, model_period_markdown),
    "poplin": (bench_poplin, poplin_markdown),
    "planet": (bench_planet, planet_markdown),
    "m2ac": (bench_m2ac, model_period_markdown),
    "mbmpo": (bench_mbmpo, mbmpo_markdown),
    "clearning": (bench_clearning, clearning_markdown),
    "dreamer": (bench_dreamer, dreamer_markdown),
    "dyna_q": (bench_dyna_q, dyna_q_markdown),
    "alphazero": (bench_alphazero, alphazero_markdown),
    "muzero": (bench_muzero, muzero_markdown),
    "world_models": (bench_world_models, world_models_markdown),
}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("algorithms", nargs="*", default=list(BENCHMARKS), help=f"any of {list(BENCHMARKS)}")
    parser.add_argument("--num-envs", default="1,16", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--steps", type=int, default=3, help="planning steps timed per call")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--num-seeds", default="1,8", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--period", type=int, default=250, help="MBPO, MAAC: environment steps per model period")
    parser.add_argument("--meta-steps", type=int, default=30, help="MB-MPO: meta-steps per iteration (the paper: 30)")
    parser.add_argument(
        "--goal-tasks",
        default="point_maze_open,brax/ant_goal",
        type=lambda s: s.split(","),
        help="C-learning: goal tasks to time",
    )
    parser.add_argument("--vector-steps", type=int, default=20, help="C-learning: vector steps timed per call")
    parser.add_argument(
        "--dreamer-tasks", default="pendulum,pendulum_pixels", type=lambda s: s.split(","), help="Dreamer: tasks"
    )
    parser.add_argument(
        "--dreamer-sizes", default="tiny,small,12m", type=lambda s: s.split(","), help="Dreamer: size presets"
    )
    parser.add_argument(
        "--planet-tasks", default="pendulum,pendulum_pixels", type=lambda s: s.split(","), help="PlaNet: tasks"
    )
    parser.add_argument(
        "--planet-variants",
        default="task,paper",
        type=lambda s: s.split(","),
        help="PlaNet: 'task' (the task's preset) or a VARIANTS name, applied on top",
    )
    parser.add_argument(
        "--dreamer-seeds",
        default="",
        type=lambda s: {k: [int(x) for x in v.split("+")] for k, v in (p.split(":") for p in s.split(",") if p)},
        help="Dreamer: seeds per size, e.g. tiny:1+8+32,12m:1 (default: --num-seeds for every size)",
    )
    parser.add_argument("--dreamer-env-steps", type=int, default=16, help="Dreamer: environment steps timed per call")
    parser.add_argument(
        "--peak-matmul", type=int, default=2048, help="PETS on a CPU: side of the matmul that measures the FP32 peak"
    )
    parser.add_argument("--backend", default=None, help="Brax backend for the Brax tasks (default: the task's own)")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        type=parse_override,
        metavar="FIELD=VALUE",
        help="set a config field of every program timed, on top of the benchmark's setting (repeatable; the value "
        "as JSON, e.g. --override model_hidden_sizes=[32,32]); each row records its overrides",
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    return parser


def main(argv=None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    unknown = [a for a in args.algorithms if a not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown algorithm(s) {unknown}; choose from {list(BENCHMARKS)}")
    info = device_info()
    meta = {
        "device": f"{info['num_devices']} x {info['platform']}:{info['device_kind']}",
        "commit": git_commit(),
        "date": datetime.date.today().isoformat(),
        "jax": jax.__version__,
    }
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.algorithms:
        bench, row_markdown = BENCHMARKS[name]
        rows = bench(args)
        if args.override:
            said = ", ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in args.override)
            for row in rows:
                row["overrides"] = dict(args.override)
                row["setting"] += f" [overridden: {said}]"
        path = out / f"throughput-{name}-{info['platform']}.json"
        path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        print("\n".join(row_markdown(r, meta) for r in rows))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
