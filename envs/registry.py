"""`make(name, ...)`: a task, the standard wrappers around it, and its `EnvSpec`."""

import dataclasses
import difflib
import math
from typing import Callable

import jax
import jax.numpy as jnp
from brax import envs as brax_envs

from . import brax_tasks, catch, classic, dmc, goals, gym_bridge, gymnax_bridge, mazes, pixels
from .wrappers import ActionRepeat, AutoReset, Batch, TimeLimit


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """What an algorithm needs to know about a task besides the env itself.

    `reward_fn(obs, action, next_obs)` and `termination_fn(obs, action, next_obs)` are pure JAX over
    the last axis and broadcast over leading axes. `reward_fn` None: the reward must be learned
    (`notes` says why). `termination_fn` None: the task terminates by a rule obs cannot express.
    `episode_length` counts `env.step` calls, i.e. agent steps after action repeat.
    Image tasks (`image_shape` set) observe uint8 images; their functions take obs of that shape.
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
    """Discrete actions are one-hot float vectors of size `action_size` (bounds 0 and 1); the task
    acts on their argmax, so buffers and wrappers see a float vector like any other action."""
    notes: str = ""
    goal_slice: tuple[int, int] | None = None
    """Goal tasks: obs[start:stop] is the commanded goal (None: not a goal task)."""
    achieved_slice: tuple[int, int] | None = None
    """Goal tasks: obs[start:stop] is what the goal is compared with (the achieved goal)."""
    success_radius: float | None = None
    """Goal tasks: success is an achieved goal within this distance of the commanded one."""
    image_shape: tuple[int, int, int] | None = None
    """Image tasks: obs is a uint8 image of this (height, width, channels) shape, and
    `observation_size` its number of elements (None: obs is a float vector)."""
    tabular: bool = False
    """Tabular tasks (mazes.py): obs is the one-hot of the state's index among `observation_size`
    states, and actions are discrete, as tabular methods (dyna_q.py) read them."""
    steps_on_host: bool = False
    """The task steps in Python on the host (gym/): it cannot be vmapped over runs, and no checkpoint
    holds its simulators' state, so a resumed run starts new episodes (`Trainer.fresh_episodes`)."""

    @property
    def reward_learned(self) -> bool:
        return self.reward_fn is None

    @property
    def can_terminate(self) -> bool:
        return self.termination_fn not in (classic.never_terminates, pixels.never_terminates_image)


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


def _pixels(name, cls, render, episode_length, notes):
    def build(**options):
        _reject(name, options, ())
        env = pixels.Pixels(cls(), render)
        return env, EnvSpec(
            name,
            env.observation_size,
            env.action_size,
            (-cls.max_action,),
            (cls.max_action,),
            episode_length,
            None,
            # Kept rather than None: it says the task never terminates, so a continuation
            # predictor is not needed, and it broadcasts over image obs like the vector one.
            pixels.never_terminates_image,
            notes=notes,
            image_shape=env.image_shape,
        )

    return build


def _cartpole_discrete(**options):
    _reject("cartpole_discrete", options, ())
    env = classic.CartpoleBalance()
    return env, EnvSpec(
        "cartpole_discrete",
        env.observation_size,
        env.action_size,
        (0.0, 0.0),
        (1.0, 1.0),
        500,
        classic.cartpole_balance_reward,
        classic.cartpole_balance_termination,
        discrete=True,
        notes="Gymnasium CartPole-v1; one-hot action of size 2 (argmax 0: left, 1: right); reward 1 "
        "per step; terminates when |x| > 2.4 or |theta| > 12 degrees.",
    )


def _catch(**options):
    _reject("catch", options, ())
    env = catch.Catch()
    return env, EnvSpec(
        "catch",
        env.observation_size,
        env.action_size,
        (0.0,) * 3,
        (1.0,) * 3,
        10,
        catch.catch_reward,
        catch.catch_termination,
        discrete=True,
        notes="bsuite's Catch (catch.py): a 10 x 5 board flattened; one-hot action of size 3 (argmax 0: "
        "left, 1: stay, 2: right); reward +1 or -1 when the ball lands, after 9 steps, which ends the episode.",
    )


def _cartpole_continuous(**options):
    _reject("cartpole_continuous", options, ())
    env = classic.CartpoleContinuous()
    return env, EnvSpec(
        "cartpole_continuous",
        env.observation_size,
        env.action_size,
        (-1.0,),
        (1.0,),
        200,
        classic.cartpole_balance_reward,
        classic.cartpole_balance_termination,
        notes="mbrl-lib's continuous cart-pole: CartPole-v1 with a force of 10 N x action in [-1, 1]; "
        "reward 1 per step; terminates when |x| > 2.4 or |theta| > 12 degrees; 200 steps.",
    )


def _maze(name):
    def build(**options):
        _reject(name, options, ())
        env = mazes.MAZES[name]()
        return env, EnvSpec(
            name,
            env.observation_size,
            env.action_size,
            (0.0,) * env.action_size,
            (1.0,) * env.action_size,
            # No time limit: an episode ends at the goal, however long it takes (the book's first
            # episode takes about 1700 steps).
            2**31 - 1,
            None,
            None,
            discrete=True,
            tabular=True,
            notes=f"{mazes.NOTES[name]} Reward 1 into G, where the episode ends and the agent is back at S in the same "
            "step; the reward and the end must be learned (the observation after G is S's, and the walls move).",
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


def _goal_spec(name, env, episode_length, termination_fn, notes, backend=None):
    act = env.action_size
    low, high = (-1.0,) * act, (1.0,) * act
    return EnvSpec(
        name,
        env.observation_size,
        act,
        low,
        high,
        episode_length,
        goals.goal_reward(env.achieved_slice, env.goal_slice, env.success_radius),
        termination_fn,
        notes=(f"backend={backend}. " if backend else "") + notes,
        goal_slice=env.goal_slice,
        achieved_slice=env.achieved_slice,
        success_radius=env.success_radius,
    )


def _point_maze(name, layout, episode_length):
    def build(**options):
        _reject(name, options, ())
        env = goals.PointMaze(layout)
        notes = "Goal task (goals.py); reward 1 within the success radius; never terminates."
        return env, _goal_spec(name, env, episode_length, classic.never_terminates, notes)

    return build


def _brax_goal(
    name, task, wrapper, episode_length, termination_fn, options_allowed=("backend",), default_backend="generalized",
    notes="Goal task (goals.py); reward 1 within the success radius.", **task_options,
):
    def build(**options):
        _reject(name, options, options_allowed)
        backend = options.pop("backend", default_backend)
        if backend not in brax_tasks.BACKENDS:
            raise ValueError(f"Option backend={backend!r} for {name} is not one of {', '.join(brax_tasks.BACKENDS)}.")
        env = wrapper(brax_envs.get_environment(task, backend=backend, **task_options), **options)
        return env, _goal_spec(name, env, episode_length, termination_fn, notes, backend)

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
    "pendulum_pixels": _pixels(
        "pendulum_pixels",
        classic.Pendulum,
        pixels.render_pendulum,
        200,
        "Pendulum observed as 64x64 RGB uint8 images (pixels.py); the reward must be learned from "
        "images (the velocity it costs is not in one frame). Never terminates.",
    ),
    "cartpole_swingup_pixels": _pixels(
        "cartpole_swingup_pixels",
        classic.CartpoleSwingup,
        pixels.render_cartpole,
        1000,
        "Cart-pole swing-up observed as 64x64 RGB uint8 images (pixels.py); the reward must be "
        "learned from images. Never terminates; the cart is drawn clipped to the view x in [-2, 2].",
    ),
    "cartpole_discrete": _cartpole_discrete,
    "cartpole_continuous": _cartpole_continuous,
    "catch": _catch,
    **{f"brax/{task}": _brax(task) for task in brax_tasks.TASKS},
    **{name: _maze(name) for name in mazes.MAZES},
    "point_maze_open": _point_maze("point_maze_open", goals.OPEN, 50),
    "point_maze_u": _point_maze("point_maze_u", goals.U_MAZE, 75),
    "brax/reacher_goal": _brax_goal("brax/reacher_goal", "reacher", goals.ReacherGoal, 50, classic.never_terminates),
    "brax/ant_goal": _brax_goal(
        "brax/ant_goal", "ant", goals.AntGoal, 1000, brax_tasks.TASKS["ant"][1], ("backend", "goal_radius")
    ),
    # JaxGCRL's Ant: spring physics by default, as their create_env (Ant(backend=backend or "spring")).
    "brax/ant_goal_jaxgcrl": _brax_goal(
        "brax/ant_goal_jaxgcrl",
        "ant",
        goals.AntGoalJaxGCRL,
        1000,
        goals.ant_jaxgcrl_termination,
        ("backend", "goal_distance"),
        "spring",
        "Goal task (goals.py): JaxGCRL's Ant, goal 10 from the origin, success within 0.5; reward 1 within the "
        "success radius. Terminates when torso z (obs[2]) leaves [0.2, 1.0].",
        exclude_current_positions_from_observation=False,
    ),
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
    `gym/<id>` names a gymnasium environment (gym_bridge.py: batched on the host already, and
    resetting as `auto_reset` asks), `dmc/<domain>_<task>` a DeepMind Control Suite task (dmc.py,
    wrapped like the others), `gymnax/<id>` a gymnax task (gymnax_bridge.py, wrapped like the others).
    """
    for option, value, least in (
        ("episode_length", episode_length, 1),
        ("action_repeat", action_repeat, 1),
        ("num_envs", num_envs, 1),
    ):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
            raise ValueError(f"Option {option}={value!r} must be a positive integer.")
    if gym_bridge.is_gym(name):
        return gym_bridge.make(
            name,
            EnvSpec,
            episode_length=episode_length,
            action_repeat=action_repeat,
            num_envs=num_envs,
            auto_reset=auto_reset,
            **task_options,
        )
    if dmc.is_dmc(name):
        env, spec = dmc.make(name, EnvSpec, **task_options)
    elif gymnax_bridge.is_gymnax(name):
        env, spec = gymnax_bridge.make(name, EnvSpec, **task_options)
    elif name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        close += [n for n in _REGISTRY if n.endswith("/" + name) and n not in close]
        hint = f" (close matches: {', '.join(map(repr, close))})" if close else ""
        raise ValueError(
            f"Unknown environment {name!r}{hint}; see mbrlax.envs.list_envs() for all, besides gymnasium's "
            "as gym/<id>, gymnax's as gymnax/<id> and the DeepMind Control Suite as dmc/<domain>_<task>."
        )
    else:
        env, spec = _REGISTRY[name](**task_options)

    return wrap(
        env, spec, episode_length=episode_length, action_repeat=action_repeat, num_envs=num_envs, auto_reset=auto_reset
    )


def wrap(
    env,
    spec: EnvSpec,
    *,
    episode_length: int | None = None,
    action_repeat: int = 1,
    num_envs: int | None = None,
    auto_reset: bool = False,
):
    """The standard wrappers around a task on Brax's protocol, as `make` puts them around a registered
    one: Batch(AutoReset(ActionRepeat(TimeLimit(env)))), each layer only when asked for, with the
    spec's episode length and reward function updated to match. A user's own environment and its
    `EnvSpec` go through here (`make_train(config, env=(env, spec))`)."""
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


def restart_or_step(env, state, action: jax.Array, key: jax.Array):
    """One step of a batched environment made without auto-reset: a copy whose episode ended on the
    last step (`state.done`) starts a new one, the others step with `action`. A host (gym/) env does
    this itself on the step after an end; a JAX env resets every copy and keeps the ended ones'."""
    if isinstance(env, gym_bridge.HostEnvs):
        return env.step(state, action)
    ended = state.done > 0
    restarted, stepped = env.reset(key), env.step(state, action)
    return jax.tree_util.tree_map(
        lambda a, b: jnp.where(ended.reshape(ended.shape + (1,) * (a.ndim - 1)), a, b), restarted, stepped
    )
