"""Small networks shared by the algorithms."""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": nn.silu,
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "elu": nn.elu,
}
ACTIVATION_NAMES = tuple(sorted(ACTIVATIONS))


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


class MLP(nn.Module):
    """Dense layers with an activation between them; the last layer is linear."""

    hidden_sizes: Sequence[int]
    output_size: int
    activation: str = "silu"
    layer_norm: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = activation(self.activation)
        for size in self.hidden_sizes:
            x = nn.Dense(size)(x)
            if self.layer_norm:
                x = nn.LayerNorm()(x)
            x = act(x)
        return nn.Dense(self.output_size)(x)


class TwinQ(nn.Module):
    """Two independent Q-networks Q(s, a) -> [2, n], evaluated as one vmapped pair (clipped double Q)."""

    hidden_sizes: Sequence[int]
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        pair = nn.vmap(
            MLP,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=2,
        )
        inputs = jnp.concatenate([obs, action], axis=-1)
        return pair(self.hidden_sizes, 1, self.activation)(inputs)[..., 0]


class GaussianHead(nn.Module):
    """An MLP to the mean and log standard deviation of a diagonal Gaussian, log-std clipped."""

    hidden_sizes: Sequence[int]
    action_size: int
    activation: str = "relu"
    log_std_min: float = -20.0
    log_std_max: float = 2.0

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = MLP(self.hidden_sizes, 2 * self.action_size, self.activation)(obs)
        mean, log_std = jnp.split(out, 2, axis=-1)
        return mean, jnp.clip(log_std, self.log_std_min, self.log_std_max)


# TANH-GAUSSIAN DISTRIBUTION: a Gaussian squashed into (-1, 1), the policy of SAC, MBPO and MAAC.


def tanh_gaussian_sample(mean: jax.Array, log_std: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A reparameterised sample a = tanh(mean + std * eps) and its log-density (summed over the
    last axis), with the change of variables of the tanh written in a form that stays finite."""
    pre_tanh = mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape)
    gaussian = -0.5 * (((pre_tanh - mean) / jnp.exp(log_std)) ** 2 + 2.0 * log_std + jnp.log(2.0 * jnp.pi))
    # log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), exact and stable for large |u|.
    log_det = 2.0 * (jnp.log(2.0) - pre_tanh - jax.nn.softplus(-2.0 * pre_tanh))
    return jnp.tanh(pre_tanh), (gaussian - log_det).sum(-1)


def tanh_gaussian_mode(mean: jax.Array) -> jax.Array:
    """The deterministic action used in evaluation: the squashed mean."""
    return jnp.tanh(mean)
