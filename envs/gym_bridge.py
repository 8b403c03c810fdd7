"""Gymnasium tasks as mbrlax tasks: `gym/<id>`, such as gym/Pendulum-v1, gym/InvertedPendulum-v5,
gym/HalfCheetah-v5 or gym/CartPole-v1, for any environment with a Box or a Discrete action space.

The environments step on the host. `num_envs` copies sit in one gymnasium vector env (synchronous).
Made with `auto_reset=True` it resets an ended copy in the same step, so the final observation comes
back in `info["final_obs"]` beside the new episode's first one, as Brax's AutoReset does; made with
`auto_reset=False` an ended copy restarts on the next step instead, ignoring that step's action, which
is what `mbrlax.envs.restart_or_step` does for a JAX task (Dreamer stores the last observation, then
the first). That vector env is put behind Brax's reset/step protocol: `reset` and `step`
call it from inside the compiled program through `jax.experimental.io_callback`, in program order.
So an algorithm's training program is the same program as on a JAX task, fused or chunked; only
each environment step leaves the accelerator, and acting and learning stay compiled.

What follows from stepping on the host: such a run is one run per process (a host callback cannot be
vmapped over seeds, so `--num-seeds` above 1 is refused; sweep with several processes instead), a
resumed run starts fresh episodes (the simulators' state is not in the checkpoint), and action repeat
is the simulator's own frame skip.

`gym/AntTruncatedObs-v5` and `gym/HumanoidTruncatedObs-v5` are the MBPO paper's ant and humanoid
observations (joint positions and velocities only, 27 and 45 numbers) on gymnasium's v5 tasks.

Model-side functions: the MuJoCo tasks' termination rules are written from observations as
gymnasium's v5 environments apply them (hopper, walker2d, ant, humanoid, inverted pendulum), the
pendulum's and the pole-balancing tasks' rewards exactly; the locomotion rewards depend on the
torso's x position, which the observations leave out, so they are learned. Another task's reward is
learned, and its termination is unknown unless it cannot terminate.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from brax.envs.base import Env, State
from jax.experimental import io_callback

from . import brax_tasks, classic

PREFIX = "gym/"


def _finite(next_obs):
    return jnp.all(jnp.isfinite(next_obs), axis=-1)


def _hopper_termination(obs, action, next_obs):
    # Gymnasium checks every entry of the state after the root's x and z (obs[1:]), not the joints alone.
    z, angle, rest = next_obs[..., 0], next_obs[..., 1], next_obs[..., 1:]
    healthy = jnp.all(jnp.abs(rest) < 100.0, axis=-1) & (z > 0.7) & (jnp.abs(angle) < 0.2)
    return ~(healthy & _finite(next_obs))


def _z_range(low, high, inclusive: bool):
    def termination_fn(obs, action, next_obs):
        z = next_obs[..., 0]  # obs[0] is the torso's height (qpos[2])
        inside = ((z >= low) & (z <= high)) if inclusive else ((z > low) & (z < high))
        return ~(inside & _finite(next_obs))

    return termination_fn


def _inverted_pendulum_termination(obs, action, next_obs):
    return (jnp.abs(next_obs[..., 1]) > 0.2) | ~_finite(next_obs)


def _survival_reward(termination_fn):
    """Reward 1 a step, 0 on the step that terminates (gymnasium's v5 inverted pendulum)."""

    def reward_fn(obs, action, next_obs):
        return 1.0 - termination_fn(obs, action, next_obs).astype(jnp.float32)

    return reward_fn


_LOCOMOTION = "the reward depends on the torso's x position, which the observation leaves out, so it is learned"


def _one_a_step(obs, action, next_obs):
    return jnp.ones(next_obs.shape[:-1])


# id, or id without its version -> (reward_fn or None, termination_fn or None, notes)
KNOWN: dict[str, tuple[Callable | None, Callable | None, str]] = {
    "Pendulum": (classic.pendulum_reward, classic.never_terminates, "Reward exact; never terminates."),
    "InvertedPendulum": (
        _survival_reward(_inverted_pendulum_termination),
        _inverted_pendulum_termination,
        "Reward 1 a step while the pole stands (0 on the falling step); terminates when |obs[1]| > 0.2.",
    ),
    "CartPole": (
        classic.cartpole_balance_reward,
        classic.cartpole_balance_termination,
        "Reward 1 a step; terminates when |x| > 2.4 or |theta| > 12 degrees.",
    ),
    "InvertedPendulum-v4": (
        _one_a_step,
        _inverted_pendulum_termination,
        "Reward 1 a step, the falling step included; terminates when |obs[1]| > 0.2.",
    ),
    "HalfCheetah": (None, classic.never_terminates, f"Never terminates; {_LOCOMOTION}."),
    "Swimmer": (None, classic.never_terminates, f"Never terminates; {_LOCOMOTION}."),
    "Hopper": (None, _hopper_termination, f"Terminates unless z > 0.7, |angle| < 0.2, |obs[1:]| < 100; {_LOCOMOTION}."),
    "Walker2d": (
        None,
        lambda o, a, n: brax_tasks.walker2d_termination(o, a, n) | ~_finite(n),
        f"Terminates unless 0.8 < z < 2 and |angle| < 1; {_LOCOMOTION}.",
    ),
    "Ant": (None, _z_range(0.2, 1.0, inclusive=True), f"Terminates unless 0.2 <= z <= 1; {_LOCOMOTION}."),
    "Humanoid": (None, _z_range(1.0, 2.0, inclusive=False), f"Terminates unless 1 < z < 2; {_LOCOMOTION}."),
}


# The MBPO paper's AntTruncatedObs-v2 and HumanoidTruncatedObs-v2 kept the joint positions (without
# the root's x, y) and velocities only: 27 and 45 numbers. Gymnasium's v5 tasks drop the rest by
# these options.
TRUNCATED_OBS = {
    "AntTruncatedObs": ("Ant", {"include_cfrc_ext_in_observation": False}),
    "HumanoidTruncatedObs": (
        "Humanoid",
        {
            "include_cinert_in_observation": False,
            "include_cvel_in_observation": False,
            "include_qfrc_actuator_in_observation": False,
            "include_cfrc_ext_in_observation": False,
        },
    ),
}


def resolve(env_id: str) -> tuple[str, dict]:
    """gymnasium's id and options for an id of ours: AntTruncatedObs-v5 -> ("Ant-v5", {...})."""
    base, _, version = env_id.rpartition("-v")
    if base not in TRUNCATED_OBS:
        return env_id, {}
    if version != "5":
        raise ValueError(f"gym/{env_id}: the truncated observations are defined on the v5 task; use gym/{base}-v5.")
    task, options = TRUNCATED_OBS[base]
    return f"{task}-v5", options


class HostEnvs(Env):
    """`num_envs` gymnasium environments behind Brax's protocol, batched already: reset gives obs of
    shape [num_envs, O] (or [O] when `single`), step takes actions [num_envs, A], with the wrappers'
    `info` (steps, truncation, final_obs). With `auto_reset` it stands in for
    Batch(AutoReset(TimeLimit(task))); without, an ended copy restarts on the step after its end (see
    `mbrlax.envs.restart_or_step`)."""

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        episode_length: int,
        discrete: bool,
        single: bool,
        auto_reset: bool,
        make_kwargs: dict | None = None,
    ):
        import gymnasium as gym

        self.env_id, self.num_envs, self.discrete, self.single = env_id, num_envs, discrete, single
        self.auto_reset = auto_reset
        mode = gym.vector.AutoresetMode.SAME_STEP if auto_reset else gym.vector.AutoresetMode.NEXT_STEP
        self.vec = gym.vector.SyncVectorEnv(
            [
                lambda: gym.make(env_id, max_episode_steps=episode_length, **(make_kwargs or {}))
                for _ in range(num_envs)
            ],
            autoreset_mode=mode,
        )
        space = self.vec.single_observation_space
        self.obs_size = int(np.prod(space.shape))
        action_space = self.vec.single_action_space
        self.act_size = int(action_space.n) if discrete else int(np.prod(action_space.shape))

    # The host side: plain numpy in, plain numpy out.

    def _host_reset(self, seed):
        obs, _ = self.vec.reset(seed=int(seed))
        return np.asarray(obs, np.float32).reshape(self.num_envs, self.obs_size)

    def _host_step(self, action):
        action = np.asarray(action)
        action = action.argmax(-1) if self.discrete else action.reshape(self.vec.action_space.shape)
        obs, reward, terminated, truncated, info = self.vec.step(action)
        obs = np.asarray(obs, np.float32).reshape(self.num_envs, self.obs_size)
        final = obs.copy()
        if "final_obs" in info:
            for i in np.flatnonzero(info["_final_obs"]):
                final[i] = np.asarray(info["final_obs"][i], np.float32).reshape(self.obs_size)
        f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
        return obs, f32(reward), f32(terminated), f32(truncated & ~terminated), final

    # The device side.

    def _shape(self, x):
        return x[0] if self.single else x

    def reset(self, rng: jax.Array) -> State:
        seed = jax.random.randint(rng, (), 0, 2**31 - 1)
        obs_shape = jax.ShapeDtypeStruct((self.num_envs, self.obs_size), jnp.float32)
        obs = self._shape(io_callback(self._host_reset, obs_shape, seed, ordered=True))
        zeros = jnp.zeros(obs.shape[:-1], jnp.float32)
        info = {"steps": jnp.zeros(obs.shape[:-1], jnp.int32), "truncation": zeros, "final_obs": obs}
        return State(pipeline_state=zeros, obs=obs, reward=zeros, done=zeros, metrics={}, info=info)

    def step(self, state: State, action: jax.Array) -> State:
        n, o = self.num_envs, self.obs_size
        shapes = (
            jax.ShapeDtypeStruct((n, o), jnp.float32),
            *(jax.ShapeDtypeStruct((n,), jnp.float32) for _ in range(3)),
            jax.ShapeDtypeStruct((n, o), jnp.float32),
        )
        action = jnp.reshape(action, (n, self.act_size))
        obs, reward, terminated, truncation, final = map(
            self._shape, io_callback(self._host_step, shapes, action, ordered=True)
        )
        done = jnp.maximum(terminated, truncation)
        # Counted from each episode's first observation: the ended copies' new episodes begin on this
        # step (auto_reset) or began on this step because they had ended on the last one.
        restarted = done if self.auto_reset else state.done
        steps = jnp.where(restarted > 0, 0, state.info["steps"] + 1)
        info = {**state.info, "steps": steps, "truncation": truncation, "final_obs": final}
        return state.replace(obs=obs, reward=reward, done=done, info=info)

    @property
    def observation_size(self) -> int:
        return self.obs_size

    @property
    def action_size(self) -> int:
        return self.act_size

    @property
    def backend(self) -> str:
        return "host"


def make(name: str, spec_class, *, episode_length, action_repeat, num_envs, auto_reset, **options):
    """`mbrlax.envs.make` for a `gym/<id>` name: (HostEnvs, EnvSpec)."""
    try:
        import gymnasium as gym
    except ImportError:  # pragma: no cover - gymnasium is a dependency
        raise ValueError("gym/ tasks need gymnasium") from None
    env_id, make_kwargs = resolve(name[len(PREFIX) :])
    if options:
        raise ValueError(f"Unknown option {next(iter(options))!r} for {name} (gym/ tasks take none).")
    if action_repeat != 1:
        raise ValueError(f"{name} steps on the host; action_repeat is the simulator's own frame skip there.")
    try:
        probe = gym.make(env_id, **make_kwargs)
    except gym.error.Error as error:
        raise ValueError(f"Unknown environment {name!r}: gymnasium says {error}") from None
    except ImportError as error:
        raise ValueError(
            f'{name} needs a package gymnasium lacks here ({error}); for MuJoCo tasks: pip install "mbrlax[gym]"'
        ) from None
    action_space, obs_space = probe.action_space, probe.observation_space
    length = episode_length or (probe.spec.max_episode_steps if probe.spec else None) or 1000
    probe.close()
    discrete = isinstance(action_space, gym.spaces.Discrete)
    if not discrete and not isinstance(action_space, gym.spaces.Box):
        raise ValueError(f"{name}'s action space is {type(action_space).__name__}; mbrlax takes Box or Discrete.")
    if not isinstance(obs_space, gym.spaces.Box):
        raise ValueError(f"{name}'s observation space is {type(obs_space).__name__}; mbrlax takes Box.")
    unknown = (None, None, "Reward learned; no termination function known.")
    reward_fn, termination_fn, notes = KNOWN.get(env_id, KNOWN.get(env_id.split("-v")[0], unknown))
    if discrete:
        size = int(action_space.n)
        low, high = (0.0,) * size, (1.0,) * size
    else:
        low = tuple(float(x) for x in np.ravel(action_space.low))
        high = tuple(float(x) for x in np.ravel(action_space.high))
    env = HostEnvs(env_id, num_envs or 1, length, discrete, num_envs is None, auto_reset, make_kwargs)
    spec = spec_class(
        name,
        env.observation_size,
        env.action_size,
        low,
        high,
        length,
        reward_fn,
        termination_fn,
        discrete=discrete,
        steps_on_host=True,
        notes=f"gymnasium's {env_id}{' with ' + str(make_kwargs) if make_kwargs else ''}, stepping on the host. {notes}",
    )
    return env, spec


def is_gym(name: str) -> bool:
    return name.startswith(PREFIX)
