"""Model-side reward and termination functions of Brax's tasks, read off brax/envs/*.py (0.14).

Each is declared only where it reproduces what the Brax env itself reports from
(obs, action, next_obs); otherwise it is None and `NOTES` says why. Shared facts of Brax's
locomotion tasks: every one excludes the root x (and y) position from obs, and rewards forward
velocity as the finite difference of that position over the step, which the obs (instantaneous
qd, sometimes clipped) cannot reproduce, so their rewards must be learned. Their healthy reward is
paid on every step, the terminating one included, and `done` = not healthy after the step.
"""

import jax.numpy as jnp

from .classic import never_terminates

BACKENDS = ("generalized", "positional", "spring", "mjx")
_FORWARD = (
    "the forward reward is the finite difference of the root position over the step, "
    "and that position is excluded from obs"
)


def _norm(x):
    """Euclidean norm over the last axis with a zero (not NaN) gradient at 0; brax.math.safe_norm
    ignores `axis` and so cannot be batched."""
    sq = jnp.sum(jnp.square(x), axis=-1)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _outside_z(lo, hi):
    def termination_fn(obs, action, next_obs):
        z = next_obs[..., 0]  # obs[0] is q[2], the root height, equal to x.pos[0, 2] here
        return (z < lo) | (z > hi)

    return termination_fn


def hopper_termination(obs, action, next_obs):
    z, angle, joints = next_obs[..., 0], next_obs[..., 1], next_obs[..., 1:5]
    healthy = jnp.all((-100.0 < joints) & (joints < 100.0), axis=-1)
    return ~(healthy & (z > 0.7) & (angle > -0.2) & (angle < 0.2))


def walker2d_termination(obs, action, next_obs):
    z, angle = next_obs[..., 0], next_obs[..., 1]
    return ~((z > 0.8) & (z < 2.0) & (angle > -1.0) & (angle < 1.0))


def inverted_pendulum_reward(obs, action, next_obs):
    return jnp.ones(jnp.shape(next_obs)[:-1], jnp.float32)


def inverted_pendulum_termination(obs, action, next_obs):
    return jnp.abs(next_obs[..., 1]) > 0.2


def _double_pendulum_tip(next_obs):
    """Tip of the second pole from obs (x, sin q1, sin q2, cos q1, cos q2, ...): two 0.6 m poles
    hinged about y at the cart, so the tip is at q1 and q1 + q2 from vertical."""
    s1, s2, c1, c2 = (next_obs[..., i] for i in (1, 2, 3, 4))
    x = next_obs[..., 0] + 0.6 * s1 + 0.6 * (s1 * c2 + c1 * s2)
    return x, 0.6 * c1 + 0.6 * (c1 * c2 - s1 * s2)


def inverted_double_pendulum_termination(obs, action, next_obs):
    return _double_pendulum_tip(next_obs)[1] <= 1.0


def inverted_double_pendulum_reward(obs, action, next_obs):
    x, y = _double_pendulum_tip(next_obs)
    w1, w2 = next_obs[..., 6], next_obs[..., 7]
    alive = jnp.where(y <= 1.0, 0.0, 10.0)
    return alive - (0.01 * x**2 + (y - 2.0) ** 2) - (1e-3 * w1**2 + 5e-3 * w2**2)


def reacher_reward(obs, action, next_obs):
    # next_obs[-3:] is tip - target after the step; the action is used unscaled.
    return -_norm(next_obs[..., -3:]) - jnp.sum(jnp.square(action), axis=-1)


def pusher_reward(obs, action, next_obs):
    # Brax scores the state *before* the step, whose tip/object/goal positions are in `obs`,
    # and the control cost on the action rescaled from [-1, 1] to ctrlrange [-2, 2].
    tip, obj, goal = obs[..., 14:17], obs[..., 17:20], obs[..., 20:23]
    scaled = (action + 1.0) * (2.0 - -2.0) * 0.5 + -2.0
    return -_norm(obj - goal) - 0.1 * jnp.sum(jnp.square(scaled), axis=-1) - 0.5 * _norm(obj - tip)


# task -> (reward_fn, termination_fn, notes)
TASKS = {
    "ant": (
        None,
        _outside_z(0.2, 1.0),
        f"Reward learned: {_FORWARD}. Terminates when torso z (obs[0]) leaves [0.2, 1.0].",
    ),
    "halfcheetah": (None, never_terminates, f"Reward learned: {_FORWARD}. Never terminates."),
    "hopper": (
        None,
        hopper_termination,
        f"Reward learned: {_FORWARD}. Termination is exact except for Brax's extra rule "
        "|qd| < 100, which obs cannot check (it clips velocities to 10); qd that large "
        "means the simulation has blown up.",
    ),
    "humanoid": (
        None,
        _outside_z(1.0, 2.0),
        "Reward learned: the forward reward is the finite difference of the centre of "
        "mass over the step, which obs does not contain. Terminates when torso z "
        "(obs[0]) leaves [1.0, 2.0].",
    ),
    "inverted_pendulum": (
        inverted_pendulum_reward,
        inverted_pendulum_termination,
        "Reward 1 per step, terminating step included; done when |hinge angle| = |obs[1]| > 0.2.",
    ),
    "inverted_double_pendulum": (
        inverted_double_pendulum_reward,
        inverted_double_pendulum_termination,
        "Tip height from obs sines/cosines; done when it is <= 1. The reward is exact while "
        "the hinge speeds are <= 10 rad/s, where obs clips them (they stayed below 7 on every "
        "live transition in testing). Both functions assume exact joint kinematics, so they "
        "are None under the spring and positional backends.",
    ),
    "pusher": (
        pusher_reward,
        never_terminates,
        "Reward exact from obs (the pre-step body positions) and action. Never terminates.",
    ),
    "reacher": (
        reacher_reward,
        never_terminates,
        "Reward exact from next_obs[-3:] (tip to target) and action. Never terminates.",
    ),
    "walker2d": (
        None,
        walker2d_termination,
        f"Reward learned: {_FORWARD}. Terminates unless 0.8 < z < 2 and |angle| < 1 (obs[0], obs[1]).",
    ),
}
