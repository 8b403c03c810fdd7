"""Pure-JAX 64 x 64 RGB renderings of the classic tasks, and a wrapper that observes them.

Each shape is drawn from per-pixel distances over a fixed grid, so rendering is a handful of
elementwise array operations that jit and vmap like the physics. Edges are anti-aliased (a pixel's
coverage falls linearly over one pixel across the edge), so that a sub-pixel movement still changes
the image: a hard-edged renderer would hide small velocities from a model learning from pixels.
"""

import jax
import jax.numpy as jnp
import numpy as np
from brax.envs.base import Env, State, Wrapper

from .classic import CartpoleSwingup, Pendulum

SIZE = 64
IMAGE_SHAPE = (SIZE, SIZE, 3)

# Pixel centres, (row, col), row 0 at the top. NumPy, so they are compile-time constants.
_CENTRES = np.arange(SIZE, dtype=np.float32) + 0.5
_ROWS, _COLS = np.meshgrid(_CENTRES, _CENTRES, indexing="ij")

WHITE = np.array([255.0, 255.0, 255.0], np.float32)
DARK = np.array([40.0, 40.0, 40.0], np.float32)
ROD = np.array([204.0, 77.0, 77.0], np.float32)  # gymnasium's pendulum red
POLE = np.array([202.0, 152.0, 101.0], np.float32)  # gymnasium's cart-pole tan


def _segment_distance(a, b):
    """Distance of every pixel centre to the segment a-b (points as (row, col))."""
    d = b - a
    # Where along the segment each pixel projects; the floor keeps a dot (a == b) finite.
    t = ((_ROWS - a[0]) * d[0] + (_COLS - a[1]) * d[1]) / jnp.maximum(d @ d, 1e-6)
    t = jnp.clip(t, 0.0, 1.0)
    return jnp.hypot(_ROWS - a[0] - t * d[0], _COLS - a[1] - t * d[1])


def _coverage(signed_distance):
    """Fraction of a pixel inside a shape, from the signed distance of its centre to the edge."""
    return jnp.clip(0.5 - signed_distance, 0.0, 1.0)


def _capsule(a, b, half_width):
    return _coverage(_segment_distance(a, b) - half_width)


def _box(centre, half_height, half_width):
    # The larger per-axis distance is the true signed distance except just off the corners, where
    # it errs by under a pixel's coverage.
    return _coverage(jnp.maximum(jnp.abs(_ROWS - centre[0]) - half_height, jnp.abs(_COLS - centre[1]) - half_width))


def _paint(image, coverage, colour):
    return image + coverage[..., None] * (colour - image)


def _to_uint8(image):
    return jnp.round(jnp.clip(image, 0.0, 255.0)).astype(jnp.uint8)


def render_pendulum(state: jax.Array) -> jax.Array:
    """classic.Pendulum's state (theta, theta_dot) as a uint8 [64, 64, 3] image.

    theta = 0 points up (towards row 0) and positive theta turns counter-clockwise, as gymnasium
    draws it. The rod spans 24 px of the 32 px from the centre to the border, leaving room for its
    rounded tip.
    """
    theta = state[0]
    pivot = jnp.array([SIZE / 2, SIZE / 2])
    length = 24.0 * Pendulum.l
    tip = pivot + length * jnp.stack([-jnp.cos(theta), -jnp.sin(theta)])
    image = jnp.broadcast_to(WHITE, IMAGE_SHAPE)
    image = _paint(image, _capsule(pivot, tip, 3.0), ROD)
    image = _paint(image, _capsule(pivot, pivot, 1.5), DARK)  # the pivot, a dot
    return _to_uint8(image)


# Cart-pole: [-2, 2] m across the image; the track low enough that the upright pole (1 m = 16 px)
# has room above it, and high enough that the hanging pole stays inside the image.
_SCALE = SIZE / 4.0  # px per m
_TRACK_ROW = 40.5  # a pixel centre, so the 1 px track is one crisp row
_CART_HALF_WIDTH, _CART_HALF_HEIGHT = 0.25 * _SCALE, 0.125 * _SCALE


def render_cartpole(state: jax.Array) -> jax.Array:
    """classic.CartpoleSwingup's state (x, theta, x_dot, theta_dot) as a uint8 [64, 64, 3] image.

    theta = 0 is the pole upright and positive theta leans it towards +x (rightwards), as in
    gymnasium's CartPole. The cart is unbounded, so it is drawn clipped to the view; past the edge
    the image no longer shows x, only the pole relative to the cart.
    """
    x, theta = state[0], state[1]
    col = SIZE / 2 + jnp.clip(x * _SCALE, -SIZE / 2 + _CART_HALF_WIDTH, SIZE / 2 - _CART_HALF_WIDTH)
    cart = jnp.stack([_TRACK_ROW, col])
    pole_length = 2 * CartpoleSwingup.half_length * _SCALE
    tip = cart + pole_length * jnp.stack([-jnp.cos(theta), jnp.sin(theta)])
    image = jnp.broadcast_to(WHITE, IMAGE_SHAPE)
    track = _coverage(jnp.abs(_ROWS - _TRACK_ROW) - 0.5)
    image = _paint(image, track, DARK)
    image = _paint(image, _box(cart, _CART_HALF_HEIGHT, _CART_HALF_WIDTH), DARK)
    image = _paint(image, _capsule(cart, tip, 1.25), POLE)
    return _to_uint8(image)


def never_terminates_image(obs, action, next_obs):
    """`classic.never_terminates` for image observations: all False over the batch axes (obs[:-3])."""
    del obs, action
    return jnp.zeros(jnp.shape(next_obs)[:-3], bool)


class Pixels(Wrapper):
    """Observes `render(pipeline_state)`, a uint8 [64, 64, 3] image, instead of the task's vector.

    It must wrap the task itself (inside TimeLimit), so that the time limit's `final_obs` and the
    automatic reset's fresh obs are images too.
    """

    def __init__(self, env: Env, render):
        super().__init__(env)
        self.render = render

    def reset(self, rng: jax.Array) -> State:
        state = self.env.reset(rng)
        return state.replace(obs=self.render(state.pipeline_state))

    def step(self, state: State, action: jax.Array) -> State:
        state = self.env.step(state, action)
        return state.replace(obs=self.render(state.pipeline_state))

    @property
    def observation_size(self) -> int:
        return SIZE * SIZE * 3

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return IMAGE_SHAPE
