"""gymnax's tasks as mbrlax tasks: `gymnax/<id>`, such as gymnax/Catch-bsuite, gymnax/CartPole-v1 or
gymnax/Breakout-MinAtar (Lange, "gymnax: A JAX-based Reinforcement Learning Environment Library", 2022).
An optional extra: pip install "mbrlax[gymnax]".

gymnax writes its tasks in JAX, so they step inside the compiled program like our own: fused runs,
vmapped seeds and `Batch` all apply. `GymnaxTask` puts one gymnax environment (`gymnax.make(id)`: the
environment and its default parameters) behind Brax's protocol, as the tasks of classic.py are:
- actions: a Discrete task takes a one-hot float vector of size n and acts on its argmax, as
  cartpole_discrete and catch do (`EnvSpec.discrete`); a Box task takes a float vector of the space's
  size, reshaped to the space's shape;
- observations: flattened to a float32 vector, row-major (MinAtar's 10 x 10 x C boolean channels
  become 100 * C numbers, channel fastest), since the discrete-action algorithms (muzero.py, and
  dreamer.py's vector encoder) read vectors;
- episode ends: gymnax's `step` resets an ended episode itself; here the task calls gymnax's
  `step_env` (the transition without the reset), so it reports the terminal observation and `done`
  (termination only), and our wrappers do the rest as for every task: TimeLimit truncates at gymnax's
  own `max_steps_in_episode` (the spec's episode length), and AutoReset or `restart_or_step` draws the
  new episode. The keys are gymnax's: each step splits the key it carries into (step, reset) as
  gymnax's `step` does and passes the first to `step_env`, so a transition is gymnax's own for the
  same key (`info["final_observation"]` of gymnax's `step`, i.e. before its reset).
The task's own state is `pipeline_state = {"state": gymnax's state, "key": the key of the next step}`.

Model-side functions are known for Catch-bsuite (the board is catch.py's) and CartPole-v1 (that of
cartpole_discrete); every other task's reward is learned and its termination is unknown.
"""

from __future__ import annotations

import difflib
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from brax.envs.base import Env, State

from . import catch, classic

PREFIX = "gymnax/"
INSTALL = 'pip install "mbrlax[gymnax]"'

# id -> (reward_fn or None, termination_fn or None, episode length or None for gymnax's own, notes)
KNOWN: dict[str, tuple[Callable | None, Callable | None, int | None, str]] = {
    "Catch-bsuite": (
        catch.catch_reward,
        catch.catch_termination,
        # gymnax's limit (1000 steps) never binds: the ball always lands on the 9th step. 10 is catch's
        # figure, so an evaluation scans 10 steps, not 1000.
        10,
        "bsuite's Catch in gymnax: the 10 x 5 board of catch.py flattened; one-hot action of size 3 (argmax 0: "
        "left, 1: stay, 2: right); reward +1 or -1 when the ball lands, after 9 steps, which ends the episode.",
    ),
    "CartPole-v1": (
        classic.cartpole_balance_reward,
        classic.cartpole_balance_termination,
        None,
        "CartPole-v1 in gymnax; one-hot action of size 2 (argmax 0: left, 1: right); reward 1 per step; "
        "terminates when |x| > 2.4 or |theta| > 12 degrees.",
    ),
}


class GymnaxTask(Env):
    """One gymnax environment with its parameters on Brax's protocol (see the module's docstring)."""

    def __init__(self, env, params, discrete: bool):
        self.env, self.params, self.discrete = env, params, discrete
        self.action_shape = tuple(env.action_space(params).shape)
        self.obs_size = int(np.prod(env.observation_space(params).shape))
        self.act_size = int(env.action_space(params).n) if discrete else int(np.prod(self.action_shape))

    def _action(self, action: jax.Array):
        if self.discrete:
            return jnp.argmax(action, axis=-1).astype(jnp.int32)
        return jnp.reshape(action, self.action_shape)

    def reset(self, rng: jax.Array) -> State:
        key, reset_key = jax.random.split(rng)
        obs, state = self.env.reset_env(reset_key, self.params)
        # Arrays of fixed dtype (gymnax's resets hold Python ints and bools), so a scan's carry keeps its type.
        state = jax.tree_util.tree_map(jnp.asarray, state)
        zero = jnp.zeros((), jnp.float32)
        return State(
            pipeline_state={"state": state, "key": key},
            obs=jnp.ravel(obs).astype(jnp.float32),
            reward=zero,
            done=zero,
            metrics={},
            info={},
        )

    def step(self, state: State, action: jax.Array) -> State:
        key, sub = jax.random.split(state.pipeline_state["key"])
        step_key, _ = jax.random.split(sub)  # gymnax's step: (step key, reset key) of the key it gets
        old = state.pipeline_state["state"]
        obs, gymnax_state, reward, terminated, _ = self.env.step_env(step_key, old, self._action(action), self.params)
        # Each field keeps its dtype (and drops weak typing), so a scan's carry keeps its type.
        gymnax_state = jax.tree_util.tree_map(lambda new, was: jnp.asarray(new, was.dtype), gymnax_state, old)
        return state.replace(
            pipeline_state={"state": gymnax_state, "key": key},
            obs=jnp.ravel(obs).astype(jnp.float32),
            reward=jnp.asarray(reward, jnp.float32),
            done=jnp.asarray(terminated, jnp.float32),
        )

    @property
    def observation_size(self) -> int:
        return self.obs_size

    @property
    def action_size(self) -> int:
        return self.act_size

    @property
    def backend(self) -> str:
        return "gymnax"


def make(name: str, spec_class, **options):
    """(GymnaxTask, EnvSpec) for a `gymnax/<id>` name, before the wrappers."""
    try:
        import gymnax
        from gymnax.environments import spaces
    except ImportError as error:
        missing = (getattr(error, "name", None) or "").split(".")[0]
        if missing and missing != "gymnax":  # gymnax 1.0.1 imports six without declaring it
            raise ValueError(
                f"{name}: gymnax is installed but cannot be imported without {missing!r}: pip install {missing}"
            ) from None
        raise ValueError(f"{name} needs gymnax, which cannot be imported here ({error}): {INSTALL}") from None
    if options:
        raise ValueError(f"Unknown option {next(iter(options))!r} for {name} (gymnax/ tasks take none).")
    env_id = name[len(PREFIX) :]
    if env_id not in gymnax.registered_envs:
        close = difflib.get_close_matches(env_id, gymnax.registered_envs, n=3, cutoff=0.5)
        hint = f" (close matches: {', '.join(repr(PREFIX + c) for c in close)})" if close else ""
        raise ValueError(
            f"Unknown environment {name!r}{hint}; gymnax's are {', '.join(PREFIX + i for i in gymnax.registered_envs)}."
        )
    try:
        env, params = gymnax.make(env_id)
    except Exception as error:  # MNISTBandit-bsuite downloads MNIST when made
        raise ValueError(f"gymnax could not make {name}: {type(error).__name__}: {error}") from None
    action_space, obs_space = env.action_space(params), env.observation_space(params)
    discrete = isinstance(action_space, spaces.Discrete)
    if not discrete and not isinstance(action_space, spaces.Box):
        raise ValueError(f"{name}'s action space is {type(action_space).__name__}; mbrlax takes Box or Discrete.")
    if not isinstance(obs_space, spaces.Box):
        raise ValueError(f"{name}'s observation space is {type(obs_space).__name__}; mbrlax takes Box.")
    task = GymnaxTask(env, params, discrete)
    reward_fn, termination_fn, length, notes = KNOWN.get(
        env_id, (None, None, None, "Reward learned; no termination function known.")
    )
    length = length or int(params.max_steps_in_episode)
    if discrete:
        low, high = (0.0,) * task.action_size, (1.0,) * task.action_size
    else:
        low = tuple(float(x) for x in np.broadcast_to(action_space.low, task.action_shape).ravel())
        high = tuple(float(x) for x in np.broadcast_to(action_space.high, task.action_shape).ravel())
    shape = tuple(obs_space.shape)
    spec = spec_class(
        name,
        task.observation_size,
        task.action_size,
        low,
        high,
        length,
        reward_fn,
        termination_fn,
        discrete=discrete,
        notes=f"gymnax's {env_id}, observation {shape} flattened to {task.observation_size} float32 numbers. {notes}",
    )
    return task, spec


def is_gymnax(name: str) -> bool:
    return name.startswith(PREFIX)
