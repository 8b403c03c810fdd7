"""The mbrl-lib half of benchmarks/vs_mbrl_lib.py. It runs inside mbrl-lib 0.2.0's own virtual
environment, which vs_mbrl_lib.py makes, and prints one JSON line of measurements. It needs no
mbrlax.

mbrl-lib 0.2.0 pins hydra-core 1.0.3, which does not run on Python 3.11. With hydra-core 1.3 and
omegaconf 2.3 its example configs compose unchanged, but hydra 1.3 instantiates nested configs by
default, which mbrl-lib's code did not expect. So the model and PETS agent configs are instantiated
with `_recursive_: false`. MBPO's SAC agent names `gym.env.Box`; it is pointed at gymnasium's Box.

Its own training functions run as they are, with timers around the calls that matter: the planner's
`act`, the random first episode, MBPO's evaluation episodes.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys
import tempfile
import time

import gymnasium as gym
import hydra
import mbrl
import mbrl.algorithms.mbpo
import mbrl.algorithms.pets
import mbrl.env.cartpole_continuous
import mbrl.env.reward_fns
import mbrl.env.termination_fns
import mbrl.planning
import mbrl.util.common
import numpy as np
import omegaconf
import torch


# The wheel leaves out the conf/action_optimizer group that main.yaml names; this is its cem option,
# as in mbrl-lib's repository: CEM from the overrides' settings, returning the mean of the elites.
CEM = {
    "_target_": "mbrl.planning.CEMOptimizer",
    "num_iterations": "${overrides.cem_num_iters}",
    "elite_ratio": "${overrides.cem_elite_ratio}",
    "population_size": "${overrides.cem_population_size}",
    "alpha": "${overrides.cem_alpha}",
    "lower_bound": "???",
    "upper_bound": "???",
    "return_mean_elites": True,
    "device": "${device}",
    "clipped_normal": "${overrides.cem_clipped_normal}",
}


def compose(algorithm: str, overrides: str, extra: list[str]) -> omegaconf.DictConfig:
    with tempfile.TemporaryDirectory() as conf:
        shutil.copytree(pathlib.Path(mbrl.__file__).parent / "examples" / "conf", conf, dirs_exist_ok=True)
        (pathlib.Path(conf) / "action_optimizer").mkdir(exist_ok=True)
        omegaconf.OmegaConf.save(omegaconf.OmegaConf.create(CEM), pathlib.Path(conf) / "action_optimizer" / "cem.yaml")
        with hydra.initialize_config_dir(config_dir=conf, version_base="1.1"):  # hydra 1.0 semantics
            cfg = hydra.compose("main", overrides=[f"algorithm={algorithm}", f"overrides={overrides}", *extra])
    omegaconf.OmegaConf.set_struct(cfg, False)
    cfg.dynamics_model["_recursive_"] = False
    return cfg


def cartpole(seed: int):
    env = gym.wrappers.TimeLimit(mbrl.env.cartpole_continuous.CartPoleEnv(), max_episode_steps=200)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    return env


class Timer:
    """Wraps `owner.name` to add its wall time and calls to this timer (`active` while it runs)."""

    def __init__(self, owner, name: str):
        self.seconds, self.calls, self.active = 0.0, 0, False
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            start, self.active = time.perf_counter(), True
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1
                self.active = False

        setattr(owner, name, timed)


def run_pets(steps: int, seed: int, device: str) -> dict:
    """mbrl-lib's PETS example (overrides=pets_cartpole): one random episode, then `steps` planned ones."""
    cfg = compose("pets", "pets_cartpole", [f"device={device}", f"seed={seed}", f"overrides.num_steps={steps}"])
    cfg.algorithm.agent["_recursive_"] = False
    torch.manual_seed(seed)
    env = cartpole(seed)
    act = Timer(mbrl.planning.TrajectoryOptimizerAgent, "act")
    explore = Timer(mbrl.util.common, "rollout_agent_trajectories")
    # The returns of the planned episodes, in order (the random first episode steps elsewhere).
    returns, episode = [], [0.0]
    step_env = mbrl.util.common.step_env_and_add_to_buffer

    def counting_step(*args, **kwargs):
        out = step_env(*args, **kwargs)
        if explore.active:
            return out
        episode[0] += float(out[1])
        if out[2] or out[3]:
            returns.append(episode[0])
            episode[0] = 0.0
        return out

    mbrl.util.common.step_env_and_add_to_buffer = counting_step
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as work_dir:
            mbrl.algorithms.pets.train(
                env,
                mbrl.env.termination_fns.cartpole,
                mbrl.env.reward_fns.cartpole,
                cfg,
                silent=True,
                work_dir=work_dir,
            )
    finally:
        mbrl.util.common.step_env_and_add_to_buffer = step_env
    loop = time.perf_counter() - start - explore.seconds
    return {
        "planned_steps": act.calls,
        "seconds_per_action": act.seconds / act.calls,
        "seconds_per_step_with_model_training": loop / act.calls,
        "episode_returns": returns,
        "setting": {k: cfg.overrides[k] for k in ("planning_horizon", "cem_population_size", "cem_num_iters")}
        | {"particles": cfg.algorithm.num_particles, "ensemble": cfg.dynamics_model.ensemble_size},
    }


def run_mbpo(exploration_steps: int, steps: int, seed: int, device: str) -> dict:
    """mbrl-lib's MBPO example on the same cart-pole (overrides=mbpo_cartpole), `exploration_steps`
    with the untrained agent, then `steps` timed steps; its evaluation episodes are not counted."""
    cfg = compose(
        "mbpo",
        "mbpo_cartpole",
        [
            f"device={device}",
            f"seed={seed}",
            f"overrides.num_steps={steps}",
            f"algorithm.initial_exploration_steps={exploration_steps}",
        ],
    )
    # Given here, the bounds are kept by mbrl-lib's complete_agent_cfg, and gymnasium's Box takes them.
    cfg.algorithm.agent.action_space = {
        "_target_": "gymnasium.spaces.Box",
        "_convert_": "all",
        "low": -1.0,
        "high": 1.0,
        "shape": [1],
    }
    torch.manual_seed(seed)
    env, test_env = cartpole(seed), cartpole(seed + 1)
    explore = Timer(mbrl.util.common, "rollout_agent_trajectories")
    evaluation = Timer(mbrl.algorithms.mbpo, "evaluate")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as work_dir:
        mbrl.algorithms.mbpo.train(
            env, test_env, mbrl.env.termination_fns.cartpole, cfg, silent=True, work_dir=work_dir
        )
    loop = time.perf_counter() - start - explore.seconds - evaluation.seconds
    o = cfg.overrides
    return {
        "timed_steps": steps,
        "seconds_per_step": loop / steps,
        "setting": {
            "rollouts_per_step": o.effective_model_rollouts_per_step,
            "sac_updates_per_step": o.num_sac_updates_per_step,
            "sac_hidden": o.sac_hidden_size,
            "model_train_every": o.freq_train_model,
        },
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pets-steps", type=int, default=400)
    parser.add_argument("--mbpo-exploration-steps", type=int, default=200)
    parser.add_argument("--mbpo-steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="torch device: cpu or cuda:0")
    args = parser.parse_args()
    result = {"library": f"mbrl-lib {mbrl.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads)"}
    result["pets"] = run_pets(args.pets_steps, args.seed, args.device)
    print("mbrl-lib PETS:", json.dumps(result["pets"], default=float), file=sys.stderr, flush=True)
    result["mbpo"] = run_mbpo(args.mbpo_exploration_steps, args.mbpo_steps, args.seed, args.device)
    print("RESULT " + json.dumps(result, default=float), flush=True)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
