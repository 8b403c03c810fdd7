"""Pure-JAX classic control tasks on Brax's env protocol; they compile in seconds on a CPU.

`pipeline_state` holds the physical state as a flat array. The swing-up tasks never terminate, so
their `done` only ever comes from the time limit; the balancing cart-pole terminates when it falls.
"""

import math

import jax
import jax.numpy as jnp
from brax.envs.base import Env, State


def never_terminates(obs, action, next_obs):
    """Termination function of tasks without terminal states: all False, batch-shaped."""
    del obs, action
    return jnp.zeros(jnp.shape(next_obs)[:-1], bool)


class _Classic(Env):
    """Shared plumbing: subclasses define `_init(key)`, `_obs(x)` and `_step(x, a) -> (x, r)`, and
    `_terminated(x)` (of the state after the step) if the task has terminal states."""

    obs_size: int
    act_size: int = 1
    max_action: float = 1.0

    def reset(self, rng: jax.Array) -> State:
        x = self._init(rng)
        zero = jnp.zeros((), jnp.float32)
        return State(pipeline_state=x, obs=self._obs(x), reward=zero, done=zero)

    def step(self, state: State, action: jax.Array) -> State:
        x, reward = self._step(state.pipeline_state, action)
        done = jnp.asarray(self._terminated(x), jnp.float32)
        return state.replace(pipeline_state=x, obs=self._obs(x), reward=reward, done=done)

    def _terminated(self, x):
        return False

    @property
    def observation_size(self) -> int:
        return self.obs_size

    @property
    def action_size(self) -> int:
        return self.act_size

    @property
    def backend(self) -> str:
        return "jax"


class Pendulum(_Classic):
    """Gymnasium's Pendulum-v1, step for step: state (theta, theta_dot), theta = 0 upright.

    The cost is taken on the state before the update, as gymnasium does, so it depends on
    (obs, action) only; theta is left unwrapped in the state and enters the obs through cos/sin.
    """

    obs_size = 3
    g, m, l, dt, max_speed, max_torque = 10.0, 1.0, 1.0, 0.05, 8.0, 2.0
    max_action = max_torque

    def _init(self, key):
        high = jnp.array([jnp.pi, 1.0])
        return jax.random.uniform(key, (2,), minval=-high, maxval=high)

    def _obs(self, x):
        return jnp.stack([jnp.cos(x[0]), jnp.sin(x[0]), x[1]])

    def _step(self, x, action):
        th, thdot = x[0], x[1]
        u = jnp.clip(action[0], -self.max_torque, self.max_torque)
        normalized = (th + jnp.pi) % (2 * jnp.pi) - jnp.pi
        cost = normalized**2 + 0.1 * thdot**2 + 0.001 * u**2
        accel = 3 * self.g / (2 * self.l) * jnp.sin(th) + 3.0 / (self.m * self.l**2) * u
        thdot = jnp.clip(thdot + accel * self.dt, -self.max_speed, self.max_speed)
        return jnp.stack([th + thdot * self.dt, thdot]), -cost


def pendulum_reward(obs, action, next_obs):
    """Pendulum-v1 reward from the pre-step obs; atan2 recovers the wrapped angle."""
    del next_obs
    th = jnp.arctan2(obs[..., 1], obs[..., 0])
    u = jnp.clip(action[..., 0], -Pendulum.max_torque, Pendulum.max_torque)
    return -(th**2 + 0.1 * obs[..., 2] ** 2 + 0.001 * u**2)


class CartpoleSwingup(_Classic):
    """Cart-pole swing-up with a continuous force; theta = 0 upright, the pole starts hanging down.

    Constants are those of the classic balancing task (Barto, Sutton & Anderson 1983, as in
    gymnasium's CartPole): gravity 9.8, cart 1.0 kg, pole 0.1 kg, pole half-length 0.5 m, frictionless,
    force = 10 N x action. A 0.01 s step (1000 steps = 10 s, as in DMC's swing-up) with
    semi-implicit Euler keeps the spinning pole stable. The cart is unbounded; the reward's centring
    term keeps it near the origin instead of a termination.

    obs = (x, cos theta, sin theta, x_dot, theta_dot); reward (see `cartpole_reward`) in [0, 1].
    """

    obs_size = 5
    gravity, cart_mass, pole_mass, half_length, force_scale, dt = 9.8, 1.0, 0.1, 0.5, 10.0, 0.01

    def _init(self, key):
        noise = jax.random.uniform(key, (4,), minval=-0.05, maxval=0.05)
        return noise.at[1].add(jnp.pi)  # (x, theta, x_dot, theta_dot)

    def _obs(self, x):
        return jnp.stack([x[0], jnp.cos(x[1]), jnp.sin(x[1]), x[2], x[3]])

    def _step(self, x, action):
        pos, th, vel, thdot = x[0], x[1], x[2], x[3]
        a = jnp.clip(action[0], -1.0, 1.0)
        total = self.cart_mass + self.pole_mass
        cos, sin = jnp.cos(th), jnp.sin(th)
        temp = (self.force_scale * a + self.pole_mass * self.half_length * thdot**2 * sin) / total
        thacc = (self.gravity * sin - cos * temp) / (self.half_length * (4.0 / 3.0 - self.pole_mass * cos**2 / total))
        xacc = temp - self.pole_mass * self.half_length * thacc * cos / total
        vel, thdot = vel + self.dt * xacc, thdot + self.dt * thacc
        nxt = jnp.stack([pos + self.dt * vel, th + self.dt * thdot, vel, thdot])
        # The reward is evaluated on the emitted obs so that `cartpole_reward` reproduces it exactly.
        return nxt, cartpole_reward(self._obs(x), action, self._obs(nxt))


def cartpole_reward(obs, action, next_obs):
    """upright x centred x small-control, each smooth and in [0, 1], on the post-step obs.

    upright = (1 + cos theta) / 2; centred = (1 + exp(-x^2)) / 2 halves the reward far from the
    origin without removing the incentive to swing up; control = 1 - 0.1 a^2 costs at most 10%.
    """
    del obs
    upright = (1.0 + next_obs[..., 1]) / 2.0
    centred = (1.0 + jnp.exp(-(next_obs[..., 0] ** 2))) / 2.0
    control = 1.0 - 0.1 * jnp.clip(action[..., 0], -1.0, 1.0) ** 2
    return upright * centred * control


class CartpoleBalance(_Classic):
    """Gymnasium's CartPole-v1, step for step, with a discrete action given as a one-hot vector.

    The action is a float vector of size 2 and the task pushes in the direction of its argmax
    (0: left, 1: right) with 10 N, so every task's action stays a float vector of shape
    [action_size] for buffers and wrappers. Explicit Euler with a 0.02 s step; reward 1 on every
    step, the terminating one included; terminates when |x| > 2.4 m or |theta| > 12 degrees.

    state = obs = (x, x_dot, theta, theta_dot), gymnasium's order (not CartpoleSwingup's).
    """

    obs_size, act_size = 4, 2
    gravity, cart_mass, pole_mass, half_length, force_mag, tau = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
    x_threshold, theta_threshold = 2.4, 12 * 2 * math.pi / 360

    def _init(self, key):
        return jax.random.uniform(key, (4,), minval=-0.05, maxval=0.05)

    def _obs(self, x):
        return x

    def _step(self, x, action):
        pos, vel, th, thdot = x[0], x[1], x[2], x[3]
        force = self._force(action)
        total = self.cart_mass + self.pole_mass
        cos, sin = jnp.cos(th), jnp.sin(th)
        temp = (force + self.pole_mass * self.half_length * thdot**2 * sin) / total
        thacc = (self.gravity * sin - cos * temp) / (self.half_length * (4.0 / 3.0 - self.pole_mass * cos**2 / total))
        xacc = temp - self.pole_mass * self.half_length * thacc * cos / total
        # Explicit Euler: positions move with the old velocities, as gymnasium's default does.
        nxt = jnp.stack([pos + self.tau * vel, vel + self.tau * xacc, th + self.tau * thdot, thdot + self.tau * thacc])
        return nxt, jnp.ones((), jnp.float32)

    def _terminated(self, x):
        return cartpole_balance_termination(None, None, x)

    def _force(self, action):
        return jnp.where(jnp.argmax(action) == 1, self.force_mag, -self.force_mag)


class CartpoleContinuous(CartpoleBalance):
    """mbrl-lib's `cartpole_continuous`: CartPole-v1's dynamics, reward and termination with a force
    of 10 N x the action in [-1, 1] (the benchmark task of its PETS and MBPO examples, 200 steps)."""

    act_size = 1

    def _force(self, action):
        return self.force_mag * jnp.clip(action[0], -1.0, 1.0)


def cartpole_balance_reward(obs, action, next_obs):
    """CartpoleBalance's reward: 1 on every step, batch-shaped."""
    del obs, action
    return jnp.ones(jnp.shape(next_obs)[:-1], jnp.float32)


def cartpole_balance_termination(obs, action, next_obs):
    """CartpoleBalance ends when the cart leaves the track or the pole leans past 12 degrees."""
    del obs, action
    x, theta = next_obs[..., 0], next_obs[..., 2]
    return (jnp.abs(x) > CartpoleBalance.x_threshold) | (jnp.abs(theta) > CartpoleBalance.theta_threshold)
