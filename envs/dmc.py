"""The DeepMind Control Suite through MuJoCo Playground, as JAX tasks: `dmc/<domain>_<task>`, such as
dmc/cheetah_run, dmc/walker_walk, dmc/cartpole_swingup or dmc/pendulum_swingup.

Playground writes the suite's tasks in MJX, so they step inside the compiled program like the Brax
tasks, fused runs and vmapped seeds included. It is an optional extra: pip install "mbrlax[dmc]".

The tasks' rewards are the suite's smooth tolerances on internal quantities, not functions of the
observation, so the model learns them; the tasks never terminate, and episodes are 1,000 steps
unless `episode_length` says otherwise (the suite's action repeat, usually 2 to 8 in the papers, is
`action_repeat`). MJX's JAX implementation is used on every device (Playground's default, Warp, needs
an NVIDIA GPU). Playground's own per-episode state (`info`, its RNG among it) travels under
`info["task"]`, so the wrappers' keys never mix with it.
"""

from __future__ import annotations

from brax.envs.base import Env, State

from . import classic

PREFIX = "dmc/"


def playground_name(name: str) -> str:
    """dmc/cheetah_run -> CheetahRun, dmc/ball_in_cup -> BallInCup."""
    return "".join(part.capitalize() for part in name[len(PREFIX) :].split("_"))


class PlaygroundTask(Env):
    """A Playground environment on Brax's protocol (Playground's `data` is Brax's `pipeline_state`)."""

    def __init__(self, env):
        self.env = env

    def reset(self, rng) -> State:
        s = self.env.reset(rng)
        return State(s.data, s.obs, s.reward, s.done, dict(s.metrics), {"task": s.info})

    def step(self, state: State, action) -> State:
        s = self._playground_state(state)
        n = self.env.step(s, action)
        return state.replace(
            pipeline_state=n.data,
            obs=n.obs,
            reward=n.reward,
            done=n.done,
            metrics=dict(n.metrics),
            info={**state.info, "task": n.info},
        )

    def _playground_state(self, state: State):
        from mujoco_playground._src import mjx_env

        return mjx_env.State(
            data=state.pipeline_state,
            obs=state.obs,
            reward=state.reward,
            done=state.done,
            metrics=dict(state.metrics),
            info=state.info["task"],
        )

    @property
    def observation_size(self) -> int:
        return int(self.env.observation_size)

    @property
    def action_size(self) -> int:
        return int(self.env.action_size)

    @property
    def backend(self) -> str:
        return "mjx"


def make(name: str, spec_class, **options):
    """(PlaygroundTask, EnvSpec) for a `dmc/<domain>_<task>` name, before the wrappers."""
    try:
        from mujoco_playground import dm_control_suite, registry
    except ImportError:
        raise ValueError(f'{name} needs MuJoCo Playground, the DMC extra: pip install "mbrlax[dmc]"') from None
    if options:
        raise ValueError(f"Unknown option {next(iter(options))!r} for {name} (dmc/ tasks take none).")
    task = playground_name(name)
    if task not in dm_control_suite.ALL_ENVS:
        known = ", ".join(sorted("dmc/" + _snake(n) for n in dm_control_suite.ALL_ENVS))
        raise ValueError(f"Unknown environment {name!r}; the DMC tasks are {known}.")
    config = registry.get_default_config(task)
    config.impl = "jax"
    env = PlaygroundTask(registry.load(task, config=config))
    spec = spec_class(
        name,
        env.observation_size,
        env.action_size,
        (-1.0,) * env.action_size,
        (1.0,) * env.action_size,
        int(config.episode_length),
        None,
        classic.never_terminates,
        notes=f"DeepMind Control Suite {task} (MuJoCo Playground, MJX). Reward learned (the suite's "
        "tolerances on internal quantities); never terminates.",
    )
    return env, spec


def _snake(camel: str) -> str:
    out = ""
    for ch in camel:
        out += ("_" + ch.lower()) if ch.isupper() and out else ch.lower()
    return out


def is_dmc(name: str) -> bool:
    return name.startswith(PREFIX)
