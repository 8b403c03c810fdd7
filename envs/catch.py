"""bsuite's Catch (Osband et al., "Behaviour Suite for Reinforcement Learning", ICLR 2020) in pure
JAX on Brax's protocol: a ball falls one row a step down a 10 x 5 board from a random column of the
top row; a paddle on the bottom row, starting in the middle column, moves left, stays or moves right
(a one-hot action of size 3). When the ball reaches the bottom row the episode ends with reward +1
if the paddle is under it, else -1; every other step gives 0, so an episode is 9 steps.

obs = the board flattened row by row (50 numbers): 1 at the ball and at the paddle, 0 elsewhere, as
bsuite's `_observation` draws it (one cell when the paddle holds the ball).
"""

import jax
import jax.numpy as jnp

from .classic import _Classic

ROWS, COLUMNS = 10, 5


class Catch(_Classic):
    """state = (ball row, ball column, paddle column) as floats."""

    obs_size, act_size = ROWS * COLUMNS, 3

    def _init(self, key):
        column = jax.random.randint(key, (), 0, COLUMNS).astype(jnp.float32)
        return jnp.stack([jnp.float32(0.0), column, jnp.float32(COLUMNS // 2)])

    def _obs(self, x):
        board = jnp.zeros((ROWS, COLUMNS), jnp.float32)
        board = board.at[x[0].astype(jnp.int32), x[1].astype(jnp.int32)].set(1.0)
        return board.at[ROWS - 1, x[2].astype(jnp.int32)].set(1.0).reshape(-1)

    def _step(self, x, action):
        paddle = jnp.clip(x[2] + jnp.argmax(action) - 1.0, 0.0, COLUMNS - 1.0)
        row = jnp.minimum(x[0] + 1.0, ROWS - 1.0)
        landed = row == ROWS - 1
        reward = jnp.where(landed, jnp.where(paddle == x[1], 1.0, -1.0), 0.0)
        return jnp.stack([row, x[1], paddle]), reward.astype(jnp.float32)

    def _terminated(self, x):
        return x[0] >= ROWS - 1


def catch_termination(obs, action, next_obs):
    """The ball has reached the bottom row: the rows above it are empty."""
    del obs, action
    return next_obs[..., : (ROWS - 1) * COLUMNS].sum(axis=-1) == 0


def catch_reward(obs, action, next_obs):
    """+1 or -1 when the ball lands (the bottom row holds one cell if caught, two if missed), else 0."""
    del obs, action
    landed = catch_termination(None, None, next_obs)
    caught = next_obs[..., (ROWS - 1) * COLUMNS :].sum(axis=-1) < 1.5
    return jnp.where(landed, jnp.where(caught, 1.0, -1.0), 0.0)
