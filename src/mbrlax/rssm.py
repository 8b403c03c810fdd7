"""The recurrent state-space model (RSSM) of PlaNet and Dreamer.

The model (`WorldModel`): an encoder of the observation, a deterministic recurrent state h_t (a GRU)
and a stochastic state z_t with a prior p(z_t | h_t) for imagination and a posterior
q(z_t | h_t, x_t) for filtering, and heads that decode the observation, the reward and the
continuation from the features s_t = (h_t, z_t). Its latents are DreamerV3's categoricals
(algorithms/dreamer.py) or PlaNet's diagonal Gaussians (algorithms/planet.py; DreamerV1's too); its layers are
DreamerV3's (LayerNorm and SiLU blocks, symlog inputs) by default for both, or with `activation`,
`cnn_activation` and `layer_norm` DreamerV1's and V2's (ELU, no LayerNorm but in V2's GRU), and
Dreamer's reward and continue heads predict two-hot bins and a logit (PlaNet builds a Gaussian
reward head of its own).

Shared by Dreamer and PlaNet: `observe_sequences` filters replayed sequences with the posterior,
`reconstruction_loss` scores the decoder. The acting side of their loops, which carries the
posterior state of every environment from step to step, is `mbrlax.loops.sequence`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mbrlax.config import setting
from mbrlax.networks import ACTIVATIONS


@dataclasses.dataclass(frozen=True)
class RSSMConfig:
    """The world model's sizes, declared once. Dreamer's and PlaNet's Configs extend this class,
    changing defaults only; `WorldModel` reads these fields from that Config, and the latent's own
    (Dreamer's classes and unimix, PlaNet's min_std) from the algorithm's."""

    deter_size: int = setting(512, positive=True)
    """Size of the GRU's deterministic state h (the PlaNet authors' belief size)."""
    hidden_size: int = setting(512, positive=True)
    """Width of every hidden layer (encoder/decoder MLPs, RSSM, heads, and Dreamer's actor and critic)."""
    layers: int = setting(2, positive=True)
    """Hidden layers of the vector encoder/decoder MLPs and of the heads (and Dreamer's actor and critic)."""
    stoch_size: int = setting(32, positive=True)
    """Latents in z: Dreamer's categoricals, or the dimensions of PlaNet's Gaussian."""
    cnn_depth: int = setting(32, positive=True)
    """Channels of the first convolution of the image encoder (doubled at each of its 4 layers)."""
    convolution: str = setting("xla", choices=("xla", "matmul"))
    """How the image encoder and decoder convolve: "xla" (XLA's convolution) or "matmul" (matrix products)."""
    activation: str = setting("silu", choices=("silu", "elu", "relu"))
    """Of every dense hidden layer (encoder/decoder MLPs, RSSM, heads, Dreamer's actor and critic):
    SiLU (V3), or ELU (DreamerV1's dense_act, V2's act)."""
    cnn_activation: str = setting("silu", choices=("silu", "elu", "relu"))
    """Of the image encoder's and decoder's hidden layers: SiLU (V3), ReLU (V1's cnn_act), ELU (V2)."""
    layer_norm: str = setting("all", choices=("all", "gru", "none"))
    """Where LayerNorm is: before every hidden layer's activation and in the GRU (V3), in the GRU
    only (V2's GRUCell(norm=True) with norm: none elsewhere), or nowhere (V1). Layers without it
    have a bias."""


# DREAMERV3'S TRANSFORMS AND DISTRIBUTIONS


def symlog(x):
    return jnp.sign(x) * jnp.log1p(jnp.abs(x))


def symexp(x):
    return jnp.sign(x) * jnp.expm1(jnp.abs(x))


BINS = jnp.linspace(-20.0, 20.0, 255)


def two_hot(y):
    """[..., 255]: y (already in symlog space) split between its two nearest bins, by closeness."""
    y = jnp.clip(y, BINS[0], BINS[-1])
    below = jnp.clip(jnp.searchsorted(BINS, y, side="right") - 1, 0, len(BINS) - 2)
    upper = (y - BINS[below]) / (BINS[below + 1] - BINS[below])
    return (
        jax.nn.one_hot(below, len(BINS)) * (1.0 - upper)[..., None]
        + jax.nn.one_hot(below + 1, len(BINS)) * upper[..., None]
    )


def two_hot_loss(logits, target):
    """Cross-entropy of the bins' logits against the two-hot code of symlog(target)."""
    return -(jax.lax.stop_gradient(two_hot(symlog(target))) * jax.nn.log_softmax(logits)).sum(-1)


def two_hot_mean(logits):
    return symexp((jax.nn.softmax(logits) * BINS).sum(-1))


def unimix_logits(logits, unimix: float):
    """Log-probabilities of softmax(logits) mixed with `unimix` of the uniform distribution."""
    probs = (1.0 - unimix) * jax.nn.softmax(logits) + unimix / logits.shape[-1]
    return jnp.log(probs)


def sample_one_hot(key, logits):
    """A one-hot sample of each categorical by inverting its CDF: one uniform number per categorical
    rather than one per class (the Gumbel trick's), which on a CPU makes imagination markedly faster."""
    cdf = jnp.cumsum(jax.nn.softmax(logits), -1)
    uniform = jax.random.uniform(key, logits.shape[:-1] + (1,))
    index = jnp.minimum((cdf < uniform * cdf[..., -1:]).sum(-1), logits.shape[-1] - 1)
    return jax.nn.one_hot(index, logits.shape[-1])


def categorical_kl(logits_p, logits_q):
    """KL(p || q) of categoricals given as log-probabilities, summed over the last axis."""
    return (jnp.exp(logits_p) * (logits_p - logits_q)).sum(-1)


def gaussian_kl(p, q):
    """KL(p || q) of diagonal normals given as (mean, std) stacked on the last axis [..., S, 2],
    summed over the S dimensions (Dreamer's `latent="gaussian"`)."""
    mean_p, std_p, mean_q, std_q = p[..., 0], p[..., 1], q[..., 0], q[..., 1]
    return (jnp.log(std_q / std_p) + (std_p**2 + (mean_p - mean_q) ** 2) / (2.0 * std_q**2) - 0.5).sum(-1)


# THE KL BETWEEN POSTERIOR AND PRIOR, with free nats and V2's balancing


def latent_kl(p, q, latent: str = "categorical"):
    """KL(p || q) summed over the latents: of categoricals (log-probabilities [..., stoch_size,
    classes]) or of diagonal normals ((mean, std) [..., stoch_size, 2])."""
    if latent == "gaussian":
        return gaussian_kl(p, q)
    return categorical_kl(p, q).sum(-1)


def kl_balance(posterior, prior, free_nats, latent: str = "categorical", free_average: bool = False):
    """The two KL terms of the world model's loss, from the latents' statistics, each KL summed
    over the latents and clipped below at `free_nats`:

        dynamics       max(free_nats, KL(sg(q) || p))   trains the prior towards the posterior
        representation max(free_nats, KL(q || sg(p)))   holds the posterior near what is predictable

    Each step's KL is clipped (V3's free bits), or with `free_average` their mean over the batch
    (V1; V2's free_avg), when each term is a scalar. Returns (dynamics term, representation term,
    dynamics KL, representation KL); the KLs are unclipped, per step."""
    sg = jax.lax.stop_gradient
    dynamics_kl = latent_kl(sg(posterior), prior, latent)
    representation_kl = latent_kl(posterior, sg(prior), latent)
    if free_average:
        return (
            jnp.maximum(dynamics_kl.mean(), free_nats),
            jnp.maximum(representation_kl.mean(), free_nats),
            dynamics_kl,
            representation_kl,
        )
    dynamics, representation = jnp.maximum(dynamics_kl, free_nats), jnp.maximum(representation_kl, free_nats)
    return dynamics, representation, dynamics_kl, representation_kl


def balanced_kl_loss(posterior, prior, free_nats, balance, kl_scale, latent="categorical", free_average=False):
    """V2's KL loss (dreamerv2/common/nets.py, kl_loss with forward False):
    kl_scale (balance max(free, KL(sg(q) || p)) + (1 - balance) max(free, KL(q || sg(p)))); balance 0.5
    is kl_scale max(free, KL(q || p)) with gradients to both sides (V1's, and V2's code for 0.5).
    Per step, or a scalar with `free_average`."""
    if balance == 0.5:
        kl = latent_kl(posterior, prior, latent)
        return kl_scale * jnp.maximum(kl.mean() if free_average else kl, free_nats)
    dynamics, representation, _, _ = kl_balance(posterior, prior, free_nats, latent, free_average)
    return kl_scale * (balance * dynamics + (1.0 - balance) * representation)



# NETWORKS


def layer_style(config) -> dict:
    """The keywords of `Block` and `Head` that a Config's `activation` and `layer_norm` give."""
    return dict(activation=config.activation, norm=config.layer_norm == "all")


class Block(nn.Module):
    """Dense, LayerNorm, SiLU: DreamerV3's hidden layer (no bias: the norm has one). With `norm`
    False, Dense with a bias then the activation (DreamerV1's and V2's layers)."""

    units: int
    activation: str = "silu"
    norm: bool = True

    @nn.compact
    def __call__(self, x):
        if not self.norm:
            return ACTIVATIONS[self.activation](nn.Dense(self.units)(x))
        return ACTIVATIONS[self.activation](nn.LayerNorm(epsilon=1e-3)(nn.Dense(self.units, use_bias=False)(x)))


class Head(nn.Module):
    """`layers` Blocks then a linear output; `zero_init` starts the output at exactly 0 (two-hot heads)."""

    units: int
    layers: int
    outputs: int
    zero_init: bool = False
    activation: str = "silu"
    norm: bool = True

    @nn.compact
    def __call__(self, x):
        for _ in range(self.layers):
            x = Block(self.units, self.activation, self.norm)(x)
        init = nn.initializers.zeros if self.zero_init else nn.initializers.lecun_normal()
        return nn.Dense(self.outputs, kernel_init=init)(x)


class NormGRU(nn.Module):
    """A GRU whose gates see a LayerNorm of their inputs; the update gate is biased towards keeping
    the state (sigmoid(u - 1)), which eases learning over long sequences. With `norm` False, no
    LayerNorm and a bias (`layer_norm="none"`)."""

    size: int
    norm: bool = True

    @nn.compact
    def __call__(self, x, state):
        inputs = jnp.concatenate([x, state], -1)
        if self.norm:
            parts = nn.LayerNorm(epsilon=1e-3)(nn.Dense(3 * self.size, use_bias=False)(inputs))
        else:
            parts = nn.Dense(3 * self.size)(inputs)
        reset, candidate, update = jnp.split(parts, 3, -1)
        candidate = jnp.tanh(jax.nn.sigmoid(reset) * candidate)
        update = jax.nn.sigmoid(update - 1.0)
        return update * candidate + (1.0 - update) * state


def stride2_convolution(x, kernel):
    """A 4 x 4 convolution with stride 2 and SAME padding of NHWC `x` with an HWIO `kernel`, as
    XLA's convolution computes it, written as 16 strided slices and one matrix product."""
    height, width = x.shape[1] // 2, x.shape[2] // 2
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    slices = [padded[:, i : i + 2 * height : 2, j : j + 2 * width : 2, :] for i in range(4) for j in range(4)]
    return jnp.concatenate(slices, -1) @ kernel.reshape(-1, kernel.shape[-1])


# Transposed convolution, stride 2, kernel 4, SAME (lax.conv_transpose pads the dilated input by 2 on
# each side): output row 2m + a sums rows m + offset of the input padded by 1, times the kernel's tap.
TRANSPOSE_TAPS = {0: ((0, 0), (1, 2)), 1: ((1, 1), (2, 3))}  # phase a -> ((offset, tap), (offset, tap))


def stride2_transposed_convolution(x, kernel):
    """flax's ConvTranspose (4 x 4, stride 2, SAME, kernel not flipped) of NHWC `x`, as four
    matrix products, one per phase of the output's rows and columns, interleaved."""
    n, height, width, _ = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    rows = []
    for a in (0, 1):
        phases = []
        for b in (0, 1):
            taps = [(i, ti, j, tj) for i, ti in TRANSPOSE_TAPS[a] for j, tj in TRANSPOSE_TAPS[b]]
            inputs = jnp.concatenate([padded[:, i : i + height, j : j + width, :] for i, _, j, _ in taps], -1)
            phases.append(inputs @ jnp.concatenate([kernel[ti, tj] for _, ti, _, tj in taps], 0))
        rows.append(jnp.stack(phases, 3))
    return jnp.stack(rows, 2).reshape(n, 2 * height, 2 * width, -1)


class StridedConv(nn.Module):
    """nn.Conv(features, (4, 4), strides=(2, 2), padding="SAME") (or its ConvTranspose), the same
    parameters, computed as matrix products (Dreamer's and PlaNet's `Config.convolution`)."""

    features: int
    transpose: bool = False
    use_bias: bool = False

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (4, 4, x.shape[-1], self.features))
        y = (stride2_transposed_convolution if self.transpose else stride2_convolution)(x, kernel)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,))
        return y


class ImageEncoder(nn.Module):
    """Four stride-2 convolutions (64 x 64 -> 4 x 4) of depth d, 2d, 4d, 8d, flattened."""

    depth: int
    convolution: str = "xla"
    activation: str = "silu"
    norm: bool = True
    """LayerNorm after each convolution (which then has no bias), before the activation."""

    @nn.compact
    def __call__(self, image):
        x = image.astype(jnp.float32) / 255.0 - 0.5
        lead = x.shape[:-3]
        x = x.reshape((-1,) + x.shape[-3:])
        bias = not self.norm
        for i, multiple in enumerate((1, 2, 4, 8)):
            if self.convolution == "matmul":
                x = StridedConv(self.depth * multiple, use_bias=bias, name=f"Conv_{i}")(x)
            else:
                x = nn.Conv(self.depth * multiple, (4, 4), strides=(2, 2), padding="SAME", use_bias=bias)(x)
            x = ACTIVATIONS[self.activation](nn.LayerNorm(epsilon=1e-3)(x) if self.norm else x)
        return x.reshape(lead + (-1,))


class ImageDecoder(nn.Module):
    """The encoder mirrored: features -> 4 x 4 x 8d -> transposed convolutions -> image - 0.5."""

    depth: int
    shape: tuple[int, int, int]
    convolution: str = "xla"
    activation: str = "silu"
    norm: bool = True

    @nn.compact
    def __call__(self, features):
        lead = features.shape[:-1]
        height, width, channels = self.shape[0] // 16, self.shape[1] // 16, 8 * self.depth
        x = nn.Dense(height * width * channels)(features).reshape((-1, height, width, channels))
        outputs = [(self.depth * multiple, False) for multiple in (4, 2, 1)] + [(self.shape[-1], True)]
        for i, (size, last) in enumerate(outputs):
            bias = last or not self.norm
            if self.convolution == "matmul":
                x = StridedConv(size, transpose=True, use_bias=bias, name=f"ConvTranspose_{i}")(x)
            else:
                x = nn.ConvTranspose(size, (4, 4), strides=(2, 2), padding="SAME", use_bias=bias)(x)
            if not last:
                x = ACTIVATIONS[self.activation](nn.LayerNorm(epsilon=1e-3)(x) if self.norm else x)
        return x.reshape(lead + self.shape)


def features(latent):
    """s_t = (h_t, z_t) flattened: what every head, the actor and the critic read."""
    stoch = latent["stoch"]
    return jnp.concatenate([latent["deter"], stoch.reshape(stoch.shape[:-2] + (-1,))], -1)


class WorldModel(nn.Module):
    """Encoder, RSSM and heads. Each method is one step; the loops over time live outside, in
    `jax.lax.scan`, calling `apply(..., method=...)`.

    `latent`: "categorical", DreamerV3's `stoch_size` one-hot latents of `classes` classes (z is
    [..., stoch_size, classes], the statistics are unimix log-probabilities of that shape), or
    "gaussian", PlaNet's diagonal normal of `stoch_size` dimensions with std softplus(.) +
    `config.min_std` (z is [..., stoch_size, 1], the statistics [..., stoch_size, 2] are (mean, std)
    stacked; algorithms/planet.py). Only the fields the chosen latent needs are read from `config`.
    Its layers follow `config.activation`, `cnn_activation` and `layer_norm` (`RSSMConfig`); a
    subclass's extra heads should be built with `head`."""

    config: Any
    obs_shape: tuple[int, ...]
    action_size: int
    latent: str = "categorical"

    def setup(self):
        c = self.config
        self.image = len(self.obs_shape) == 3
        style = layer_style(c)
        if self.image:
            convolutions = dict(activation=c.cnn_activation, norm=style["norm"])
            self.encoder = ImageEncoder(c.cnn_depth, c.convolution, **convolutions)
            self.decoder = ImageDecoder(c.cnn_depth, self.obs_shape, c.convolution, **convolutions)
        else:
            self.encoder = nn.Sequential([Block(c.hidden_size, **style) for _ in range(c.layers)])
            self.decoder = self.head(c.layers, self.obs_shape[0])
        self.dynamics_input = Block(c.hidden_size, **style)
        self.gru = NormGRU(c.deter_size, norm=c.layer_norm != "none")
        stats_size = c.stoch_size * (2 if self.latent == "gaussian" else c.classes)
        self.prior_net = self.head(1, stats_size)
        self.posterior_net = self.head(1, stats_size)
        self.reward_head = self.head(c.layers, len(BINS), zero_init=True)
        self.continue_head = self.head(c.layers, 1)

    def head(self, layers: int, outputs: int, zero_init: bool = False) -> Head:
        """A Head of `layers` hidden layers of the config's width and layer style."""
        return Head(self.config.hidden_size, layers, outputs, zero_init, **layer_style(self.config))

    def __call__(self, obs, action, is_first, key):
        """Touches every layer once; used only to initialise the parameters."""
        latent, _, _ = self.observe_step(self.initial(obs.shape[0]), action, self.encode(obs), is_first, key)
        return self.decode(features(latent)), self.reward_and_continue(features(latent))

    def initial(self, batch: int):
        c = self.config
        classes = 1 if self.latent == "gaussian" else c.classes
        return {"deter": jnp.zeros((batch, c.deter_size)), "stoch": jnp.zeros((batch, c.stoch_size, classes))}

    def encode(self, obs):
        return self.encoder(obs if self.image else symlog(obs))

    def decode(self, feats):
        """The image (minus 0.5) or symlog of the vector observation."""
        return self.decoder(feats)

    def reward_and_continue(self, feats):
        """(reward bin logits, continue logit)."""
        return self.reward_head(feats), self.continue_head(feats)[..., 0]

    def _statistics(self, raw):
        """The latent distribution from a prior or posterior network's raw output: unimix
        log-probabilities [..., stoch_size, classes], or (mean, std) [..., stoch_size, 2]."""
        c = self.config
        if self.latent == "gaussian":
            mean, std = jnp.split(raw, 2, -1)
            return jnp.stack([mean, jax.nn.softplus(std) + c.min_std], -1)
        return unimix_logits(raw.reshape(raw.shape[:-1] + (c.stoch_size, c.classes)), c.unimix)

    def _sample(self, raw, key):
        """A sample of the latents from a network's raw output and the distribution's statistics:
        categorical, a straight-through one-hot z with its log-probs; gaussian, a reparameterised
        sample [..., stoch_size, 1] with (mean, std)."""
        if self.latent == "gaussian":
            stats = self._statistics(raw)
            mean, std = stats[..., 0], stats[..., 1]
            return (mean + std * jax.random.normal(key, mean.shape))[..., None], stats
        logits = self._statistics(raw)
        sample = sample_one_hot(key, logits)
        probs = jnp.exp(logits)
        return sample + probs - jax.lax.stop_gradient(probs), logits

    def _recur(self, latent, action):
        stoch = latent["stoch"].reshape(latent["stoch"].shape[:-2] + (-1,))
        return self.gru(self.dynamics_input(jnp.concatenate([stoch, action], -1)), latent["deter"])

    def imagine_step(self, latent, action, key):
        """Prior step: h_t from (h, z, a) of the step before, z_t ~ p(z_t | h_t)."""
        deter = self._recur(latent, action)
        stoch, logits = self._sample(self.prior_net(deter), key)
        return {"deter": deter, "stoch": stoch}, logits

    def observe_step(self, latent, action, embed, is_first, key):
        """Posterior step: as `imagine_step`, then z_t ~ q(z_t | h_t, x_t). Where `is_first`, the
        previous state and action are zeroed: a new episode starts from the initial state."""
        keep = 1.0 - is_first.astype(jnp.float32)
        latent = jax.tree_util.tree_map(lambda x: x * keep.reshape(keep.shape + (1,) * (x.ndim - 1)), latent)
        deter = self._recur(latent, action * keep[..., None])
        prior_logits = self._statistics(self.prior_net(deter))
        stoch, posterior_logits = self._sample(self.posterior_net(jnp.concatenate([deter, embed], -1)), key)
        return {"deter": deter, "stoch": stoch}, posterior_logits, prior_logits


# FILTER replayed sequences with the posterior


def observe_sequences(params, world_model: WorldModel, batch, key):
    """Filter B replayed sequences of T steps with the posterior, each from the zero state: the
    posterior states [B, T] and the statistics of the posterior and of the prior [B, T, ...] at each
    step (categorical log-probabilities, or Gaussian (mean, std): `WorldModel.latent`)."""
    B, T = batch["is_first"].shape
    embed = world_model.apply(params, batch["obs"], method=WorldModel.encode)
    # The action that led into step t is the one stored at t - 1; each sequence starts afresh.
    prev_action = jnp.concatenate([jnp.zeros_like(batch["action"][:, :1]), batch["action"][:, :-1]], 1)
    is_first = batch["is_first"].at[:, 0].set(1.0)

    def observe(latent, inputs):
        embed_t, action_t, first_t, key_t = inputs
        latent, posterior, prior = world_model.apply(
            params, latent, action_t, embed_t, first_t, key_t, method=WorldModel.observe_step
        )
        return latent, (latent, posterior, prior)

    time_major = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731
    _, (latents, posterior, prior) = jax.lax.scan(
        observe,
        world_model.apply(params, B, method=WorldModel.initial),
        (time_major(embed), time_major(prev_action), time_major(is_first), jax.random.split(key, T)),
    )
    return jax.tree_util.tree_map(time_major, (latents, posterior, prior))


def reconstruction_loss(world_model: WorldModel, decoded, obs):
    """Squared error summed over the observation: of the image scaled to [-0.5, 0.5], or of symlog
    of the vector observation."""
    if len(world_model.obs_shape) == 3:
        target = obs.astype(jnp.float32) / 255.0 - 0.5
        return ((decoded - target) ** 2).sum((-3, -2, -1))
    return ((decoded - symlog(obs)) ** 2).sum(-1)
