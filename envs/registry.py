"""`make(name, ...)`: a task, the standard wrappers around it, and its `EnvSpec`."""

import dataclasses
import difflib
import math
from typing import Callable

import jax
from brax import envs as brax_envs

from . import brax_tasks, classic
from .wrappers import ActionRepeat, AutoReset, Batch, TimeLimit


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """What an algorithm needs to know about a task besides the env itself.

    `reward_fn(obs, action, next_obs)` and `termination_fn(obs, action, next_obs)` are pure JAX over
    the last axis and broadcast over leading axes. `reward_fn` None: the reward must be learned
    (`notes` says why). `termination_fn` None: the task terminates by a rule obs cannot express.
    `episode_length` counts `env.step` calls, i.e. agent steps after action repeat.
    """

    name: str
    observation_size: int
    action_size: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    episode_length: int
    reward_fn: Callable | None
    termination_fn: Callable | None
    discrete: bool = False
    notes: str = ""

    @property
    def reward_learned(self) -> bool:
        return self.reward_fn is None

    @property
    def can_terminate(self) -> bool:
        return self.termination_fn is not classic.never_terminates


def _classic(name, cls, reward_fn, episode_length, notes):
    def build(**options):
        _reject(name, options, ())
        env = cls()
        return env, EnvSpec(
            name,
            env.observation_size,
            env.action_size,
            (-cls.max_action,),
            (cls.max_action,),
            episode_length,
            reward_fn,
            classic.never_terminates,
            notes=notes,
        )

    return build


def _brax(task):
    def build(**options):
        _reject(f"brax/{task}", options, ("backend",))
        backend = options.get("backend", "generalized")  # brax's own default for every task
        if backend not in brax_tasks.BACKENDS:
            raise ValueError(
                f"Option backend={backend!r} for brax/{task} is not one of {', '.join(brax_tasks.BACKENDS)}."
            )
        env = brax_envs.get_environment(task, backend=backend)
        reward_fn, termination_fn, notes = brax_tasks.TASKS[task]
        # These backends hold joints with stiff springs / position corrections, so the poles' world
        # pose drifts from the kinematics of the observed angles (by ~0.1 m in tests).
        if task == "inverted_double_pendulum" and backend in ("spring", "positional"):
            reward_fn = termination_fn = None
        obs_size = jax.eval_shape(env.reset, jax.random.PRNGKey(0)).obs.shape[-1]
        act = env.action_size
        return env, EnvSpec(
            f"brax/{task}",
            obs_size,
            act,
            (-1.0,) * act,
            (1.0,) * act,
            1000,
            reward_fn,
            termination_fn,
            notes=f"backend={backend}. {notes}",
        )

    return build


_REGISTRY = {
    "pendulum": _classic(
        "pendulum",
        classic.Pendulum,
        classic.pendulum_reward,
        200,
        "Gymnasium Pendulum-v1; reward exact from (obs, action). Never terminates.",
    ),
    "cartpole_swingup": _classic(
        "cartpole_swingup",
        classic.CartpoleSwingup,
        classic.cartpole_reward,
        1000,
        "Reward exact from (action, next_obs). Never terminates; the cart is unbounded.",
    ),
    **{f"brax/{task}": _brax(task) for task in brax_tasks.TASKS},
}


def _reject(name, options, accepted):
    for key in options:
        if key not in accepted:
            raise ValueError(f"Unknown option {key!r} for {name} (accepted: {', '.join(accepted) or 'none'}).")


def list_envs() -> list[str]:
    """Sorted names accepted by `make`."""
    return sorted(_REGISTRY)


def make(
    name: str,
    *,
    episode_length: int | None = None,
    action_repeat: int = 1,
    num_envs: int | None = None,
    auto_reset: bool = False,
    **task_options,
):
    """Builds Batch(AutoReset(ActionRepeat(TimeLimit(task)))), each layer only when asked for.

    `episode_length` counts task steps (default: the task's own); with action repeat the episode
    has ceil(episode_length / action_repeat) agent steps, which is what the spec reports.
    """
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        close += [n for n in _REGISTRY if n.endswith("/" + name) and n not in close]
        hint = f" (close matches: {', '.join(map(repr, close))})" if close else ""
        raise ValueError(f"Unknown environment {name!r}{hint}; see mbrlax.envs.list_envs() for all.")
    for option, value, least in (
        ("episode_length", episode_length, 1),
        ("action_repeat", action_repeat, 1),
        ("num_envs", num_envs, 1),
    ):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
            raise ValueError(f"Option {option}={value!r} must be a positive integer.")
    env, spec = _REGISTRY[name](**task_options)

    length = episode_length or spec.episode_length
    env = TimeLimit(env, length)
    if action_repeat > 1:
        env = ActionRepeat(env, action_repeat)
        spec = dataclasses.replace(
            spec,
            reward_fn=None,
            notes=f"{spec.notes} action_repeat={action_repeat}: the reward is a sum over repeated "
            "steps, not a function of (obs, action, next_obs), so it must be learned.",
        )
    spec = dataclasses.replace(spec, episode_length=math.ceil(length / action_repeat))
    if auto_reset:
        env = AutoReset(env)
    if num_envs is not None:
        env = Batch(env, num_envs)
    return env, spec
