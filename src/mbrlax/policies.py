"""The actor's distributions of the latent-imagination family (algorithms/dreamer.py): DreamerV3's
bounded normal, DreamerV1's tanh-transformed normal, DreamerV2's truncated normal, and a categorical
with unimix for discrete actions, behind one interface (`params`, `sample`, `mode`, `log_prob`,
`entropy`, `executed`)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtr, ndtri

from mbrlax.rssm import sample_one_hot, unimix_logits


def log_one_minus_tanh_squared(u):
    """log(1 - tanh(u)^2), stably: the log-determinant of a tanh squashing."""
    return 2.0 * (jnp.log(2.0) - u - jax.nn.softplus(-2.0 * u))


def truncated_standard_normal(key, lower, upper):
    """z ~ N(0, 1) truncated to [lower, upper] (lower < 0 < upper), by inverting its CDF at a uniform
    u: a differentiable function of the bounds, so loc + scale z is a reparameterised sample (TFP's
    TruncatedNormal, which V2 used, has the same implicit gradients). Each half is inverted from its
    own tail, P(Z <= z) below the median and P(Z > z) above it, for precision; u is kept 2^-24 from
    0 and 1 (mass of the order of 1e-8 is cut from each tail), so no CDF is 0 and no gradient infinite."""
    mass = ndtr(upper) - ndtr(lower)
    u = jax.random.uniform(key, jnp.shape(lower), minval=2.0**-24)
    below = ndtr(lower) + u * mass  # P(Z <= z)
    above = ndtr(-upper) + (1.0 - u) * mass  # P(Z > z) = 1 - below
    low_half = below < 0.5
    # The branch not taken gets a harmless 0.25, so that its gradient is 0, never 0 times infinity.
    return jnp.where(low_half, ndtri(jnp.where(low_half, below, 0.25)), -ndtri(jnp.where(low_half, 0.25, above)))


def standard_normal_pdf(z):
    return jnp.exp(-0.5 * z**2) / jnp.sqrt(2.0 * jnp.pi)


class PolicyDistribution(NamedTuple):
    discrete: bool
    unimix: float
    kind: str = "bounded_normal"
    """Of continuous actions: "bounded_normal" (V3), "tanh_normal" (V1) or "trunc_normal" (V2)."""
    init_std: float = 5.0
    """tanh_normal: the std of the pre-tanh normal at a raw output of 0 (V1's action_init_std)."""
    noise: float = 0.0
    """Std of the Gaussian noise added to continuous actions while training (V1's expl_amount)."""

    def params(self, raw):
        if self.discrete:
            return unimix_logits(raw, self.unimix), None
        mean, std = jnp.split(raw, 2, -1)
        if self.kind == "tanh_normal":
            # danijar/dreamer models.py, ActionDecoder: mean_scale 5, min_std 1e-4; the pre-tanh normal.
            raw_init_std = jnp.log(jnp.expm1(self.init_std))
            return 5.0 * jnp.tanh(mean / 5.0), jax.nn.softplus(std + raw_init_std) + 1e-4
        if self.kind == "trunc_normal":
            # dreamerv2/common/nets.py, DistLayer trunc_normal: loc tanh(out), std 2 sigmoid((s +
            # init_std) / 2) + min_std, with V2's actor's init_std 0 and min_std 0.1: std in [0.1, 2.1].
            return jnp.tanh(mean), 2.0 * jax.nn.sigmoid(std / 2.0) + 0.1
        # DreamerV3's bounded normal: mean in [-1, 1], std in [0.1, 1].
        return jnp.tanh(mean), 0.9 * jax.nn.sigmoid(std + 2.0) + 0.1

    def sample(self, raw, key):
        a, b = self.params(raw)
        if self.discrete:
            return sample_one_hot(key, a)
        if self.kind == "tanh_normal":
            return jnp.tanh(a + b * jax.random.normal(key, a.shape))
        if self.kind == "trunc_normal":
            # dreamerv2/common/dists.py, TruncNormalDist: the sample clipped 1e-6 inside the bounds,
            # the gradient the unclipped one's (straight through); its `mult` is 1.
            action = a + b * truncated_standard_normal(key, (-1.0 - a) / b, (1.0 - a) / b)
            return action + jax.lax.stop_gradient(jnp.clip(action, -1.0 + 1e-6, 1.0 - 1e-6) - action)
        return a + b * jax.random.normal(key, a.shape)

    def mode(self, raw):
        """The discrete mode; tanh of the normal's mean for tanh_normal (V1 took the likeliest of 100
        samples); the mean for the bounded normal, and the loc for trunc_normal (its mode: loc is
        within the bounds)."""
        a, _ = self.params(raw)
        if self.discrete:
            return jax.nn.one_hot(a.argmax(-1), a.shape[-1])
        return jnp.tanh(a) if self.kind == "tanh_normal" else a

    def log_prob(self, raw, action):
        a, b = self.params(raw)
        if self.discrete:
            return (action * a).sum(-1)
        if self.kind == "tanh_normal":
            u = jnp.arctanh(jnp.clip(action, -1.0 + 1e-6, 1.0 - 1e-6))
            normal = -0.5 * ((u - a) / b) ** 2 - jnp.log(b) - 0.5 * jnp.log(2 * jnp.pi)
            return (normal - log_one_minus_tanh_squared(u)).sum(-1)
        normal = -0.5 * ((action - a) / b) ** 2 - jnp.log(b) - 0.5 * jnp.log(2 * jnp.pi)
        if self.kind == "trunc_normal":
            # The density on [-1, 1] (actions outside it are never sampled): the normal's over its mass there.
            return (normal - jnp.log(ndtr((1.0 - a) / b) - ndtr((-1.0 - a) / b))).sum(-1)
        return normal.sum(-1)

    def entropy(self, raw):
        """For tanh_normal, the normal's entropy plus the tanh's log-determinant at the mean: an
        approximation (V1 estimated it from samples, and gave it no weight)."""
        a, b = self.params(raw)
        if self.discrete:
            return -(jnp.exp(a) * a).sum(-1)
        if self.kind == "tanh_normal":
            return (jnp.log(b) + 0.5 * jnp.log(2 * jnp.pi * jnp.e) + log_one_minus_tanh_squared(a)).sum(-1)
        if self.kind == "trunc_normal":
            # Closed form: log(sqrt(2 pi e) b Z) + (lo phi(lo) - hi phi(hi)) / 2Z, Z = Phi(hi) - Phi(lo).
            lo, hi = (-1.0 - a) / b, (1.0 - a) / b
            mass = ndtr(hi) - ndtr(lo)
            edges = (lo * standard_normal_pdf(lo) - hi * standard_normal_pdf(hi)) / (2.0 * mass)
            return (jnp.log(b * mass) + 0.5 * jnp.log(2 * jnp.pi * jnp.e) + edges).sum(-1)
        return (jnp.log(b) + 0.5 * jnp.log(2 * jnp.pi * jnp.e)).sum(-1)

    def executed(self, action):
        """What the environment and the model receive: a normal sample clipped to the action box,
        as the 2023 code's RSSM does (dreamerv3/nets.py, action_clip 1): a times sg(1 / max(1, |a|)),
        so the gradient of an action sampled outside the box still reaches the actor, scaled by
        1 / |a|, under `actor_gradient="dynamics"`."""
        if self.discrete:
            return action
        return action * jax.lax.stop_gradient(1.0 / jnp.maximum(1.0, jnp.abs(action)))
