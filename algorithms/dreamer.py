"""Dreamer in the form of DreamerV3 (Hafner, Pasukonis, Ba, Lillicrap, "Mastering Diverse Domains
through World Models", arXiv 2023 and Nature 2025), after DreamerV1 and V2 (ICLR 2020 and 2021).

A world model learns a compact state of the task from replayed sequences, and the policy learns
only inside that model. The model is a recurrent state-space model (RSSM): a deterministic
recurrent state h_t and a stochastic state z_t of `stoch_size` categorical latents,

    h_t = GRU(h_{t-1}, z_{t-1}, a_{t-1})       prior      z_t ~ p(z_t | h_t)
    posterior  z_t ~ q(z_t | h_t, x_t)         heads      x_t, r_t, c_t from s_t = (h_t, z_t)

trained on sequences of B x T replayed steps by reconstruction, reward and continue losses and two
KL terms between posterior and prior with stop-gradients on opposite sides (KL balancing): the
prior learns to predict the posterior (weight `dyn_scale`), the posterior is held close to what can
be predicted (weight `rep_scale`), each clipped below at `free_nats` so that a KL already small is
left alone. From every posterior state of the batch the actor imagines `horizon` steps; the critic
learns the lambda-returns of those imagined paths, and the actor maximises the advantage (the
lambda-return less the critic's value) divided by the spread of the returns: for continuous actions
by differentiating it back through the imagined dynamics, for discrete ones by REINFORCE, as the
2023 code does (`actor_loss_of`).

The robustness tricks of DreamerV3, each named where it is used:
- symlog: vector inputs are squashed by symlog(x) = sign(x) log(1 + |x|), and the vector decoder
  predicts symlog(x), so no observation scale needs tuning.
- two-hot: reward and value heads classify over 255 bins spread evenly on [-20, 20] in symlog
  space; the target is the two-hot encoding of symlog(y), the prediction is symexp of the expected
  bin. Cross-entropy gradients do not grow with the size of a return. Their output layers start at
  zero, so the first predictions are 0 rather than noise.
- unimix: every categorical (latents, discrete actions) mixes in 1 % of the uniform distribution,
  so no log-probability or KL can become infinite.
- straight-through sampling of the one-hot latents: forward a sample, backward the probabilities.
- free bits on each KL and a LayerNorm + SiLU after every hidden layer, including inside the GRU.
- return normalisation: advantages are divided by max(1, S), S an EMA of the 5th-95th percentile
  range of the imagined returns; large returns are scaled down, small ones are not blown up, so
  the fixed entropy scale means the same thing in every task.
- a slow critic, an EMA of the critic, whose predictions regularise the critic's targets.

Data. The loop keeps its own environment resets so that a terminal observation is stored like any
other step (its continue target is 0) and the first step of the next episode carries `is_first`:
each stored step is (x_t, a_t, r_t, is_first_t, is_terminal_t), r_t the reward that came with x_t.
A reset takes one step of the loop, so an episode of L steps takes L + 1 loop steps, and the step
count of a run includes those resets. The train ratio (replayed steps per environment step) is the
loop's structure: cycles of a fixed number of environment steps then a fixed number of updates.

What this file does differently from the papers, and why:
- Every replayed sequence starts from the zero state, as in DreamerV1/V2; DreamerV3 carries the
  latent state over from the last time the sequence's predecessor was replayed. Zero starts need
  no per-sequence storage and cost a few steps of context at the start of each sequence.
- Adam with gradient clipping (model 1000, actor and critic 100), as in the 2023 preprint; the
  Nature version uses LaProp with adaptive clipping. No replayed-value loss of the later versions.
- The actor follows the 2023 code (danijar/dreamerv3 at 8fa35f8, the last commit before the Nature
  version: configs.yaml `actor_grad_cont: backprop`, `actor_grad_disc: reinforce`; agent.py,
  ImagActorCritic.loss), which produced the paper's DMC numbers: for continuous actions the
  normalised advantage, baseline included and not stop-gradiented, is differentiated back through
  the imagined path; for discrete actions REINFORCE. The Nature version uses REINFORCE for both,
  together with LaProp, RMSNorm and other changes this file does not have; `--actor-gradient
  reinforce` gives its actor gradient for continuous actions. Imagination steps with the world
  model just updated on the batch, from that batch's posterior states, as in the 2023 code.
- A new episode's state starts at zero (DreamerV2), not at a learned initial state; Adam's epsilon
  is optax's 1e-8 (the preprint: 1e-5); evaluation takes the actor's mode, where DreamerV3 samples.
- Steps are agent steps: with `action_repeat` 2 a run of 500k steps simulates 1M frames, and the
  train ratio counts agent steps too (as the 2023 code's counter and train ratio do). The published
  DMC budgets count frames (the 2023 code logs agent steps times the repeat: dreamerv3/train.py,
  make_logger), so DMC "500k" at action repeat 2 is `--total-steps 250000 --action-repeat 2`.
- Model sizes are our own presets (tiny, small, 12m; their parameter counts are beside them below
  and in benchmarks/RESULTS.md), not the paper's table.

Reproduce the pendulum row of benchmarks/RESULTS.md:  python algorithms/dreamer.py --env pendulum
From pixels:                                          python algorithms/dreamer.py --env pendulum_pixels
"""

from __future__ import annotations

import dataclasses
import fractions
import sys
from typing import Any, ClassVar, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mbrlax import buffer as replay
from mbrlax import runner
from mbrlax.envs import restart_or_step
from mbrlax.training import (
    ConfigError,
    Trainer,
    adam,
    check_fields,
    evaluate_episodes,
    make_env,
    make_schedule,
    require_positive,
    scale_action,
    track_returns,
)


@dataclasses.dataclass(frozen=True)
class Config:
    """Dreamer settings. Traced (sweepable) fields: model_lr, actor_lr, critic_lr, discount,
    return_lambda, entropy_scale, slow_critic_rate, dyn_scale, rep_scale, free_nats."""

    SWEEPABLE: ClassVar[tuple[str, ...]] = (
        "model_lr",
        "actor_lr",
        "critic_lr",
        "discount",
        "return_lambda",
        "entropy_scale",
        "slow_critic_rate",
        "dyn_scale",
        "rep_scale",
        "free_nats",
    )

    # Run
    env: str = "pendulum"
    """Task name (see `mbrlax.envs.list_envs()`); image tasks such as pendulum_pixels train from pixels."""
    total_steps: int = 20_000
    """Agent steps in all (an action repeated counts once), over all parallel environments, the
    random prefill and resets included."""
    num_envs: int = 1
    """Parallel environments."""
    episode_length: int | None = None
    """Steps per episode (default: the task's own)."""
    action_repeat: int = 1
    """Repeat each action this many times."""
    backend: str | None = None
    """Brax physics backend for brax/* tasks (default: the task's own)."""
    initial_steps: int = 1000
    """Steps with uniformly random actions before learning starts (the replay's prefill)."""
    steps_per_update: int = 500
    """Environment steps per jitted update of the training program (progress and logging granularity)."""
    eval_every: int = 2000
    """Environment steps between evaluations."""
    eval_episodes: int = 10
    """Evaluation episodes of the deterministic policy, run in parallel."""
    # Replay
    batch_size: int = 16
    """B: sequences per update."""
    sequence_length: int = 64
    """T: steps per replayed sequence."""
    train_ratio: int = 512
    """Replayed steps (B x T per update) per environment step: with B x T = 1024, 512 is an update
    every second environment step."""
    buffer_capacity: int | None = None
    """Steps of each environment kept (default: all of the run's)."""
    # World model and networks (the size presets tiny, small and 12m set these)
    deter_size: int = 512
    """Size of the GRU's deterministic state h."""
    hidden_size: int = 512
    """Width of every hidden layer (MLPs, RSSM, heads, actor, critic)."""
    layers: int = 2
    """Hidden layers of the encoder/decoder MLPs, the heads, the actor and the critic."""
    stoch_size: int = 32
    """Categorical latents in z."""
    classes: int = 32
    """Classes of each latent."""
    cnn_depth: int = 32
    """Channels of the first convolution of the image encoder (doubled at each of its 4 layers)."""
    unimix: float = 0.01
    """Share of the uniform distribution mixed into every categorical."""
    # World-model learning
    model_lr: float = 1e-4
    """Adam learning rate of the world model."""
    dyn_scale: float = 0.5
    """Weight of the dynamics KL, KL(sg(posterior) || prior)."""
    rep_scale: float = 0.1
    """Weight of the representation KL, KL(posterior || sg(prior))."""
    free_nats: float = 1.0
    """Free bits: each KL (summed over the latents) is clipped below at this many nats."""
    model_grad_clip: float = 1000.0
    """Global gradient-norm clip of the world model."""
    # Behaviour learning
    horizon: int = 15
    """Imagined steps from every posterior state."""
    discount: float = 0.997
    """gamma of the imagined returns."""
    return_lambda: float = 0.95
    """lambda of the lambda-returns."""
    actor_gradient: Literal["auto", "dynamics", "reinforce"] = "auto"
    """How the actor learns (`actor_loss_of`): "dynamics", the normalised advantage differentiated back
    through the imagined dynamics (continuous actions only); "reinforce", log pi times the normalised
    advantage; "auto", as the 2023 DreamerV3 code: dynamics for continuous actions, REINFORCE for
    discrete ones."""
    actor_lr: float = 3e-5
    """Adam learning rate of the actor."""
    critic_lr: float = 3e-5
    """Adam learning rate of the critic."""
    entropy_scale: float = 3e-4
    """eta: weight of the actor's entropy bonus (advantages are normalised, so one value fits all tasks)."""
    slow_critic_rate: float = 0.02
    """EMA rate of the slow critic per update."""
    return_scale_decay: float = 0.99
    """EMA decay of the 5th-95th percentile range of the returns."""
    actor_grad_clip: float = 100.0
    """Global gradient-norm clip of the actor and of the critic."""

    def validate(self) -> None:
        check_fields(self)
        require_positive(
            self,
            (
                "total_steps",
                "num_envs",
                "initial_steps",
                "steps_per_update",
                "eval_every",
                "eval_episodes",
                "batch_size",
                "sequence_length",
                "train_ratio",
                "deter_size",
                "hidden_size",
                "layers",
                "stoch_size",
                "classes",
                "cnn_depth",
                "horizon",
            ),
        )
        for name in ("initial_steps", "steps_per_update"):
            if getattr(self, name) % self.num_envs:
                raise ConfigError(f"{name} ({getattr(self, name)}) must divide by num_envs ({self.num_envs})")
        if self.initial_steps // self.num_envs < self.sequence_length:
            raise ConfigError(
                f"initial_steps per environment ({self.initial_steps // self.num_envs}) must cover one replayed "
                f"sequence (sequence_length {self.sequence_length})"
            )
        if self.buffer_capacity is not None and self.buffer_capacity < self.sequence_length:
            raise ConfigError(
                f"sequence_length ({self.sequence_length}) is longer than the buffer "
                f"(buffer_capacity {self.buffer_capacity} steps per environment)"
            )
        steps, updates = self.cycle
        if (self.steps_per_update // self.num_envs) % steps:
            raise ConfigError(
                f"train_ratio {self.train_ratio} with {self.num_envs} environments and {self.batch_size} x "
                f"{self.sequence_length} replayed steps per update is {updates} update(s) every {steps} "
                f"environment step(s) of each environment; steps_per_update / num_envs "
                f"({self.steps_per_update // self.num_envs}) must divide by {steps}"
            )
        if not 0.0 < self.discount <= 1.0:
            raise ConfigError(f"discount must be in (0, 1], got {self.discount}")
        for name in ("return_lambda", "slow_critic_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.unimix <= 1.0:
            # Without it a class's probability can underflow to 0 and its log-probability to -inf.
            raise ConfigError(f"unimix must be in (0, 1], got {self.unimix}")

    @property
    def cycle(self) -> tuple[int, int]:
        """(vector steps, updates) of one train-ratio cycle, in lowest terms."""
        ratio = fractions.Fraction(self.train_ratio * self.num_envs, self.batch_size * self.sequence_length)
        return ratio.denominator, ratio.numerator


SIZES: dict[str, dict[str, Any]] = {
    # Parameters (world model, actor, critic): 0.22 M on pendulum, 0.68 M from 64 x 64 images.
    # Learns pendulum on a CPU in minutes.
    "tiny": dict(deter_size=64, hidden_size=64, layers=1, classes=8, cnn_depth=8),
    # 2.5 M on pendulum, 4.6 M from images.
    "small": dict(deter_size=256, hidden_size=256, layers=2, classes=16, cnn_depth=16),
    # 9.7 M on pendulum, 12.7 M from images.
    "12m": dict(deter_size=512, hidden_size=512, layers=2, classes=32, cnn_depth=16),
}

# Tasks' presets; the sizes above are variants that apply on top (`--env pendulum --preset 12m`).
TASKS: dict[str, dict[str, Any]] = {
    "pendulum": dict(env="pendulum", total_steps=10_000, **SIZES["tiny"], model_lr=3e-4, actor_lr=1e-4, critic_lr=1e-4),
    "pendulum_pixels": dict(
        env="pendulum_pixels", total_steps=50_000, **SIZES["small"], model_lr=3e-4, actor_lr=1e-4, critic_lr=1e-4
    ),
    "cartpole_swingup": dict(
        env="cartpole_swingup", total_steps=100_000, action_repeat=2, eval_every=10_000, **SIZES["small"]
    ),
    "cartpole_swingup_pixels": dict(
        env="cartpole_swingup_pixels", total_steps=200_000, action_repeat=2, eval_every=10_000, **SIZES["small"]
    ),
    "cartpole_discrete": dict(env="cartpole_discrete", total_steps=20_000, **SIZES["small"]),
    "brax/inverted_pendulum": dict(env="brax/inverted_pendulum", total_steps=50_000, eval_every=5000, **SIZES["small"]),
    "brax/halfcheetah": dict(
        env="brax/halfcheetah",
        total_steps=500_000,
        num_envs=16,
        initial_steps=16_000,
        steps_per_update=16_000,
        eval_every=50_000,
        action_repeat=2,
        train_ratio=512,
        **SIZES["12m"],
    ),
}
PRESETS: dict[str, dict[str, Any]] = {**TASKS, **SIZES}


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


# NETWORKS


class Block(nn.Module):
    """Dense, LayerNorm, SiLU: DreamerV3's hidden layer (no bias: the norm has one)."""

    units: int

    @nn.compact
    def __call__(self, x):
        return nn.silu(nn.LayerNorm(epsilon=1e-3)(nn.Dense(self.units, use_bias=False)(x)))


class Head(nn.Module):
    """`layers` Blocks then a linear output; `zero_init` starts the output at exactly 0 (two-hot heads)."""

    units: int
    layers: int
    outputs: int
    zero_init: bool = False

    @nn.compact
    def __call__(self, x):
        for _ in range(self.layers):
            x = Block(self.units)(x)
        init = nn.initializers.zeros if self.zero_init else nn.initializers.lecun_normal()
        return nn.Dense(self.outputs, kernel_init=init)(x)


class NormGRU(nn.Module):
    """A GRU whose gates see a LayerNorm of their inputs; the update gate is biased towards keeping
    the state (sigmoid(u - 1)), which eases learning over long sequences."""

    size: int

    @nn.compact
    def __call__(self, x, state):
        parts = nn.LayerNorm(epsilon=1e-3)(nn.Dense(3 * self.size, use_bias=False)(jnp.concatenate([x, state], -1)))
        reset, candidate, update = jnp.split(parts, 3, -1)
        candidate = jnp.tanh(jax.nn.sigmoid(reset) * candidate)
        update = jax.nn.sigmoid(update - 1.0)
        return update * candidate + (1.0 - update) * state


class ImageEncoder(nn.Module):
    """Four stride-2 convolutions (64 x 64 -> 4 x 4) of depth d, 2d, 4d, 8d, flattened."""

    depth: int

    @nn.compact
    def __call__(self, image):
        x = image.astype(jnp.float32) / 255.0 - 0.5
        lead = x.shape[:-3]
        x = x.reshape((-1,) + x.shape[-3:])
        for multiple in (1, 2, 4, 8):
            x = nn.Conv(self.depth * multiple, (4, 4), strides=(2, 2), padding="SAME", use_bias=False)(x)
            x = nn.silu(nn.LayerNorm(epsilon=1e-3)(x))
        return x.reshape(lead + (-1,))


class ImageDecoder(nn.Module):
    """The encoder mirrored: features -> 4 x 4 x 8d -> transposed convolutions -> image - 0.5."""

    depth: int
    shape: tuple[int, int, int]

    @nn.compact
    def __call__(self, features):
        lead = features.shape[:-1]
        height, width, channels = self.shape[0] // 16, self.shape[1] // 16, 8 * self.depth
        x = nn.Dense(height * width * channels)(features).reshape((-1, height, width, channels))
        for multiple in (4, 2, 1):
            x = nn.ConvTranspose(self.depth * multiple, (4, 4), strides=(2, 2), padding="SAME", use_bias=False)(x)
            x = nn.silu(nn.LayerNorm(epsilon=1e-3)(x))
        x = nn.ConvTranspose(self.shape[-1], (4, 4), strides=(2, 2), padding="SAME")(x)
        return x.reshape(lead + self.shape)


def features(latent):
    """s_t = (h_t, z_t) flattened: what every head, the actor and the critic read."""
    stoch = latent["stoch"]
    return jnp.concatenate([latent["deter"], stoch.reshape(stoch.shape[:-2] + (-1,))], -1)


class WorldModel(nn.Module):
    """Encoder, RSSM and heads. Each method is one step; the loops over time live outside, in
    `jax.lax.scan`, calling `apply(..., method=...)`."""

    config: Config
    obs_shape: tuple[int, ...]
    action_size: int

    def setup(self):
        c = self.config
        self.image = len(self.obs_shape) == 3
        if self.image:
            self.encoder = ImageEncoder(c.cnn_depth)
            self.decoder = ImageDecoder(c.cnn_depth, self.obs_shape)
        else:
            self.encoder = nn.Sequential([Block(c.hidden_size) for _ in range(c.layers)])
            self.decoder = Head(c.hidden_size, c.layers, self.obs_shape[0])
        self.dynamics_input = Block(c.hidden_size)
        self.gru = NormGRU(c.deter_size)
        self.prior_net = Head(c.hidden_size, 1, c.stoch_size * c.classes)
        self.posterior_net = Head(c.hidden_size, 1, c.stoch_size * c.classes)
        self.reward_head = Head(c.hidden_size, c.layers, len(BINS), zero_init=True)
        self.continue_head = Head(c.hidden_size, c.layers, 1)

    def __call__(self, obs, action, is_first, key):
        """Touches every layer once; used only to initialise the parameters."""
        latent, _, _ = self.observe_step(self.initial(obs.shape[0]), action, self.encode(obs), is_first, key)
        return self.decode(features(latent)), self.reward_and_continue(features(latent))

    def initial(self, batch: int):
        c = self.config
        return {"deter": jnp.zeros((batch, c.deter_size)), "stoch": jnp.zeros((batch, c.stoch_size, c.classes))}

    def encode(self, obs):
        return self.encoder(obs if self.image else symlog(obs))

    def decode(self, feats):
        """The image (minus 0.5) or symlog of the vector observation."""
        return self.decoder(feats)

    def reward_and_continue(self, feats):
        """(reward bin logits, continue logit)."""
        return self.reward_head(feats), self.continue_head(feats)[..., 0]

    def _sample(self, raw, key):
        """Straight-through sample of the latents from raw logits; returns (one-hot z, log-probs)."""
        c = self.config
        logits = unimix_logits(raw.reshape(raw.shape[:-1] + (c.stoch_size, c.classes)), c.unimix)
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
        prior_logits = unimix_logits(
            self.prior_net(deter).reshape(deter.shape[:-1] + (self.config.stoch_size, self.config.classes)),
            self.config.unimix,
        )
        stoch, posterior_logits = self._sample(self.posterior_net(jnp.concatenate([deter, embed], -1)), key)
        return {"deter": deter, "stoch": stoch}, posterior_logits, prior_logits


# THE POLICY'S DISTRIBUTIONS: a bounded normal for continuous actions, a categorical for discrete ones.


class PolicyDistribution(NamedTuple):
    discrete: bool
    unimix: float

    def params(self, raw):
        if self.discrete:
            return unimix_logits(raw, self.unimix), None
        mean, std = jnp.split(raw, 2, -1)
        # DreamerV3's bounded normal: mean in [-1, 1], std in [0.1, 1].
        return jnp.tanh(mean), 0.9 * jax.nn.sigmoid(std + 2.0) + 0.1

    def sample(self, raw, key):
        a, b = self.params(raw)
        if self.discrete:
            return sample_one_hot(key, a)
        return a + b * jax.random.normal(key, a.shape)

    def mode(self, raw):
        a, _ = self.params(raw)
        return jax.nn.one_hot(a.argmax(-1), a.shape[-1]) if self.discrete else a

    def log_prob(self, raw, action):
        a, b = self.params(raw)
        if self.discrete:
            return (action * a).sum(-1)
        return (-0.5 * ((action - a) / b) ** 2 - jnp.log(b) - 0.5 * jnp.log(2 * jnp.pi)).sum(-1)

    def entropy(self, raw):
        a, b = self.params(raw)
        if self.discrete:
            return -(jnp.exp(a) * a).sum(-1)
        return (jnp.log(b) + 0.5 * jnp.log(2 * jnp.pi * jnp.e)).sum(-1)

    def executed(self, action):
        """What the environment and the model receive: a normal sample clipped to the action box,
        as the 2023 code's RSSM does (dreamerv3/nets.py, action_clip 1): a times sg(1 / max(1, |a|)),
        so the gradient of an action sampled outside the box still reaches the actor, scaled by
        1 / |a|, under `actor_gradient="dynamics"`."""
        if self.discrete:
            return action
        return action * jax.lax.stop_gradient(1.0 / jnp.maximum(1.0, jnp.abs(action)))


# RETURNS


def lambda_returns(rewards, continues, values, discount, lam):
    """R_t = r_{t+1} + gamma c_{t+1} ((1 - lambda) v_{t+1} + lambda R_{t+1}), R_H = v_H. Inputs are
    [H + 1, ...] over imagined steps (rewards[0], continues[0] unused); returns [H, ...]."""

    def backward(next_return, step):
        reward, cont, value = step
        ret = reward + discount * cont * ((1.0 - lam) * value + lam * next_return)
        return ret, ret

    _, returns = jax.lax.scan(backward, values[-1], (rewards[1:], continues[1:], values[1:]), reverse=True)
    return returns


def updated_return_scale(return_scale, returns, decay):
    """S <- decay S + (1 - decay) (P95 - P5) of the returns. The 2023 code (dreamerv3/jaxutils.py,
    Moments, impl perc_ema) keeps one EMA of each percentile, both from 0; their difference is this
    EMA of the range. It is updated before it is used, as there."""
    returns = jax.lax.stop_gradient(returns)
    spread = jnp.percentile(returns, 95) - jnp.percentile(returns, 5)
    return decay * return_scale + (1.0 - decay) * spread


def actor_loss_of(returns, values, weights, log_prob, entropy, return_scale, entropy_scale, gradient: str):
    """The actor's loss over imagined steps [H, N], as ImagActorCritic.loss of the 2023 code
    (danijar/dreamerv3 at 8fa35f8, dreamerv3/agent.py):

        A_t  = (R_t - v(s_t)) / max(1, S)          (its offset, the EMA of P5, cancels)
        loss = -mean_t,n[ sg(w_t) (objective_t + eta H[pi(. | s_t)]) ]
        objective_t = A_t                           "dynamics" (the code's actor_grad_cont: backprop)
                    = log pi(a_t | s_t) sg(A_t)     "reinforce"

    With "dynamics" nothing in A_t is stop-gradiented: R_t and also the baseline v(s_t) are
    differentiated back through the imagined states, so for t >= 1 the gradient of -v(s_t) through
    a_{t-1} counts too (DreamerV2's "dynamics", dreamerv2/agent.py, maximised R_t alone). `values`
    is v(s_t) of the current critic at the same states as `returns`; `weights` w_t =
    prod_{k<=t} (gamma c_k) / gamma from the continue predictions (never differentiated); S is
    already updated with these returns (and only divides: never differentiated either)."""
    sg = jax.lax.stop_gradient
    advantage = (returns - values) / jnp.maximum(1.0, sg(return_scale))
    if gradient == "dynamics":
        objective = advantage
    elif gradient == "reinforce":
        objective = log_prob * sg(advantage)
    else:
        raise ValueError(f"gradient must be 'dynamics' or 'reinforce', got {gradient!r}")
    return -(sg(weights) * (objective + entropy_scale * entropy)).mean()


class DreamerState(NamedTuple):
    env_state: Any
    is_first: jax.Array
    """[num_envs]: the current observation starts an episode."""
    latent: Any
    """The acting model state of each environment, and the last executed action."""
    prev_action: jax.Array
    buffer: replay.TrajectoryBuffer
    episode: jax.Array
    world_model: Any
    actor: Any
    critic: Any
    slow_critic: Any
    model_opt: Any
    actor_opt: Any
    critic_opt: Any
    return_scale: jax.Array
    """EMA of the 5th-95th percentile range of imagined returns."""
    key: jax.Array
    episode_return: jax.Array
    last_episode_return: jax.Array


def make_train(config: Config) -> Trainer:
    config.validate()
    try:
        env, spec = make_env(config, num_envs=config.num_envs)
        eval_env, _ = make_env(config, num_envs=config.eval_episodes)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    obs_shape = tuple(spec.image_shape) if spec.image_shape else (spec.observation_size,)
    if len(obs_shape) == 3 and (obs_shape[0] % 16 or obs_shape[1] % 16):
        raise ConfigError(
            f"the image encoder halves the image 4 times, so its height and width must divide by 16; "
            f"{config.env} gives images of shape {obs_shape}"
        )

    num_envs, B, T, H = config.num_envs, config.batch_size, config.sequence_length, config.horizon
    action_size = spec.action_size
    low, high = jnp.asarray(spec.action_low), jnp.asarray(spec.action_high)
    schedule = make_schedule(config.total_steps, config.initial_steps, config.steps_per_update, config.eval_every)
    steps_per_env = schedule.total_steps // num_envs
    capacity = min(config.buffer_capacity or steps_per_env, steps_per_env)
    if T > capacity:
        raise ConfigError(f"sequence_length ({T}) is longer than the run's {capacity} steps per environment")
    if spec.discrete and config.actor_gradient == "dynamics":
        raise ConfigError(
            f"actor_gradient dynamics needs continuous actions to differentiate; {config.env} has discrete ones "
            "(use reinforce)"
        )
    # "auto": the 2023 code's actor_grad_cont: backprop and actor_grad_disc: reinforce (configs.yaml).
    actor_gradient = config.actor_gradient
    if actor_gradient == "auto":
        actor_gradient = "reinforce" if spec.discrete else "dynamics"
    cycle_steps, cycle_updates = config.cycle
    world_model = WorldModel(config, obs_shape, action_size)
    policy = PolicyDistribution(spec.discrete, config.unimix)
    actor_net = Head(config.hidden_size, config.layers, action_size * (1 if spec.discrete else 2))
    critic_net = Head(config.hidden_size, config.layers, len(BINS), zero_init=True)
    model_optimizer = lambda hp: adam(hp["model_lr"], config.model_grad_clip)  # noqa: E731
    actor_optimizer = lambda hp: adam(hp["actor_lr"], config.actor_grad_clip)  # noqa: E731
    critic_optimizer = lambda hp: adam(hp["critic_lr"], config.actor_grad_clip)  # noqa: E731

    def env_action(action):
        return action if spec.discrete else scale_action(action, low, high)

    # WORLD MODEL LOSS on B sequences of T replayed steps.

    def world_model_loss(params, batch, key, hparams):
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
        latents, posterior, prior = jax.tree_util.tree_map(time_major, (latents, posterior, prior))
        feats = features(latents)
        decoded = world_model.apply(params, feats, method=WorldModel.decode)
        if len(obs_shape) == 3:
            target = batch["obs"].astype(jnp.float32) / 255.0 - 0.5
            reconstruction = ((decoded - target) ** 2).sum((-3, -2, -1))
        else:
            reconstruction = ((decoded - symlog(batch["obs"])) ** 2).sum(-1)
        reward_logits, continue_logit = world_model.apply(params, feats, method=WorldModel.reward_and_continue)
        reward_loss = two_hot_loss(reward_logits, batch["reward"])
        continue_loss = optax.sigmoid_binary_cross_entropy(continue_logit, 1.0 - batch["is_terminal"])
        # KL balancing with free bits: the prior moves towards the posterior faster than the reverse.
        sg = jax.lax.stop_gradient
        dynamics_kl = categorical_kl(sg(posterior), prior).sum(-1)
        representation_kl = categorical_kl(posterior, sg(prior)).sum(-1)
        loss = (
            reconstruction
            + reward_loss
            + continue_loss
            + hparams["dyn_scale"] * jnp.maximum(dynamics_kl, hparams["free_nats"])
            + hparams["rep_scale"] * jnp.maximum(representation_kl, hparams["free_nats"])
        ).mean()
        metrics = {
            "model_loss": loss,
            "reconstruction_loss": reconstruction.mean(),
            "reward_loss": reward_loss.mean(),
            "continue_loss": continue_loss.mean(),
            "dynamics_kl": dynamics_kl.mean(),
            "representation_kl": representation_kl.mean(),
        }
        return loss, (sg(latents), metrics)

    # IMAGINE horizon steps from every posterior state.

    def imagine(model_params, actor_params, start, key):
        """Imagined paths: [H + 1, N, F] features and [H, N, A] actions. The actor reads the state
        under a stop-gradient, so with `actor_gradient="dynamics"` its gradient flows only through
        the actions it takes, into the model's next states (DreamerV1/V2)."""

        def step(latent, step_key):
            action_key, model_key = jax.random.split(step_key)
            raw = actor_net.apply(actor_params, jax.lax.stop_gradient(features(latent)))
            action = policy.sample(raw, action_key)
            next_latent, _ = world_model.apply(
                model_params, latent, policy.executed(action), model_key, method=WorldModel.imagine_step
            )
            return next_latent, (latent, action)

        last, (latents, actions) = jax.lax.scan(step, start, jax.random.split(key, H))
        latents = jax.tree_util.tree_map(lambda seq, x: jnp.concatenate([seq, x[None]]), latents, last)
        return features(latents), actions

    def returns_of(model_params, critic, feats, first_continue, hparams):
        """lambda-returns [H, N] of imagined paths, the critic's values v(s_t) [H, N] at their
        states, and their weights: a path that the model says ended counts no more after its end."""
        reward_logits, continue_logit = world_model.apply(
            model_params, feats[1:], method=WorldModel.reward_and_continue
        )
        # The first step's continuation is known from the data; later ones are the head's mode.
        continues = jnp.concatenate([first_continue, (continue_logit > 0).astype(jnp.float32)])
        rewards = jnp.concatenate([jnp.zeros_like(first_continue), two_hot_mean(reward_logits)])
        values = two_hot_mean(critic_net.apply(critic, feats))
        returns = lambda_returns(rewards, continues, values, hparams["discount"], hparams["return_lambda"])
        weights = jnp.cumprod(hparams["discount"] * continues, 0)[:-1] / hparams["discount"]
        return returns, values[:-1], jax.lax.stop_gradient(weights)

    # UPDATE ACTOR on the imagined paths.

    def actor_loss(actor, model, state: DreamerState, start, first_continue, key, hparams):
        """`actor_loss_of` on paths imagined by the actor in `model`. With REINFORCE the paths are
        constants; with the dynamics gradient the return and the baseline are differentiated back
        through the imagined states into the actor's actions."""
        model = jax.lax.stop_gradient(model)
        feats, actions = imagine(model, actor, start, key)
        if actor_gradient == "reinforce":
            feats, actions = jax.lax.stop_gradient((feats, actions))
        returns, values, weights = returns_of(model, state.critic, feats, first_continue, hparams)
        return_scale = updated_return_scale(state.return_scale, returns, config.return_scale_decay)
        raw = actor_net.apply(actor, jax.lax.stop_gradient(feats[:-1]))
        entropy = policy.entropy(raw)
        loss = actor_loss_of(
            returns,
            values,
            weights,
            policy.log_prob(raw, jax.lax.stop_gradient(actions)),
            entropy,
            return_scale,
            hparams["entropy_scale"],
            actor_gradient,
        )
        paths = jax.lax.stop_gradient((feats, returns, weights))
        return loss, (paths, return_scale, entropy.mean())

    # UPDATE CRITIC towards the lambda-returns, held near the slow critic.

    def critic_loss(critic, slow_critic, feats, returns, weights):
        logits = critic_net.apply(critic, feats[:-1])
        slow_values = two_hot_mean(critic_net.apply(slow_critic, feats[:-1]))
        return (weights * (two_hot_loss(logits, returns) + two_hot_loss(logits, slow_values))).mean()

    def train_step(state: DreamerState, key, hparams):
        sample_key, model_key, imagine_key = jax.random.split(key, 3)
        batch = replay.sample_sequences(state.buffer, sample_key, B, T)
        (_, (latents, metrics)), grads = jax.value_and_grad(world_model_loss, has_aux=True)(
            state.world_model, batch, model_key, hparams
        )
        updates, model_opt = model_optimizer(hparams).update(grads, state.model_opt)
        world_model_params = optax.apply_updates(state.world_model, updates)

        # Imagination starts from the posterior states of the world model before this update and
        # steps with the updated one, as the 2023 code does (dreamerv3/agent.py, Agent.train: its
        # optimiser writes the new parameters before the behaviour imagines).
        start = jax.tree_util.tree_map(lambda x: x.reshape((B * T,) + x.shape[2:]), latents)
        first_continue = 1.0 - batch["is_terminal"].reshape(1, -1)
        (pi_loss, (paths, return_scale, entropy)), grads = jax.value_and_grad(actor_loss, has_aux=True)(
            state.actor, world_model_params, state, start, first_continue, imagine_key, hparams
        )
        updates, actor_opt = actor_optimizer(hparams).update(grads, state.actor_opt)
        actor = optax.apply_updates(state.actor, updates)

        feats, returns, weights = paths
        v_loss, grads = jax.value_and_grad(critic_loss)(state.critic, state.slow_critic, feats, returns, weights)
        updates, critic_opt = critic_optimizer(hparams).update(grads, state.critic_opt)
        critic = optax.apply_updates(state.critic, updates)
        slow_critic = optax.incremental_update(critic, state.slow_critic, hparams["slow_critic_rate"])
        state = state._replace(
            world_model=world_model_params,
            actor=actor,
            critic=critic,
            slow_critic=slow_critic,
            model_opt=model_opt,
            actor_opt=actor_opt,
            critic_opt=critic_opt,
            return_scale=return_scale,
        )
        metrics.update(
            actor_loss=pi_loss,
            critic_loss=v_loss,
            actor_entropy=entropy,
            imagined_return=returns.mean(),
            return_scale=return_scale,
        )
        return state, metrics

    # ACT: update each environment's model state with its observation, act, store, step or reset.

    def observe_and_act(model_params, actor_params, latent, prev_action, obs, is_first, key, greedy: bool):
        model_key, action_key = jax.random.split(key)
        embed = world_model.apply(model_params, obs, method=WorldModel.encode)
        latent, _, _ = world_model.apply(
            model_params, latent, prev_action, embed, is_first, model_key, method=WorldModel.observe_step
        )
        raw = actor_net.apply(actor_params, features(latent))
        action = policy.mode(raw) if greedy else policy.sample(raw, action_key)
        return policy.executed(action), latent

    def vector_step(state: DreamerState, key, explore: bool):
        act_key, random_key, reset_key = jax.random.split(key, 3)
        env_state = state.env_state
        action, latent = observe_and_act(
            state.world_model,
            state.actor,
            state.latent,
            state.prev_action,
            env_state.obs,
            state.is_first,
            act_key,
            False,
        )
        if explore:
            if spec.discrete:
                action = jax.nn.one_hot(jax.random.randint(random_key, (num_envs,), 0, action_size), action_size)
            else:
                action = jax.random.uniform(random_key, (num_envs, action_size), minval=-1.0, maxval=1.0)
        entry = {
            "obs": env_state.obs,
            "action": action,
            "reward": env_state.reward,
            "is_first": state.is_first,
            "is_terminal": env_state.done * (1.0 - env_state.info["truncation"]),
        }
        buffer = replay.add_step(state.buffer, entry, state.episode)
        # An environment whose episode ended has had its last observation stored; it resets now.
        ended = env_state.done > 0
        next_env_state = restart_or_step(env, env_state, env_action(action), reset_key)
        episode_return, last_return = track_returns(
            state.episode_return, state.last_episode_return, next_env_state.reward, next_env_state.done
        )
        return state._replace(
            env_state=next_env_state,
            is_first=ended.astype(jnp.float32),
            latent=latent,
            prev_action=action,
            buffer=buffer,
            episode=state.episode + ended.astype(jnp.int32),
            episode_return=episode_return,
            last_episode_return=last_return,
        )

    def example_entry(obs):
        zero = jnp.float32(0.0)
        return {"obs": obs, "action": jnp.zeros(action_size), "reward": zero, "is_first": zero, "is_terminal": zero}

    def init(key, hparams):
        env_key, model_key, actor_key, critic_key, explore_key, key = jax.random.split(key, 6)
        env_state = env.reset(env_key)
        obs = env_state.obs
        model_params = world_model.init(
            model_key, obs[:1], jnp.zeros((1, action_size)), jnp.ones(1), jax.random.PRNGKey(0)
        )
        feat_size = config.deter_size + config.stoch_size * config.classes
        actor = actor_net.init(actor_key, jnp.zeros((1, feat_size)))
        critic = critic_net.init(critic_key, jnp.zeros((1, feat_size)))
        state = DreamerState(
            env_state=env_state,
            is_first=jnp.ones(num_envs),
            latent=world_model.apply(model_params, num_envs, method=WorldModel.initial),
            prev_action=jnp.zeros((num_envs, action_size)),
            buffer=replay.init_trajectories(example_entry(obs[0]), capacity, num_envs),
            episode=jnp.zeros(num_envs, jnp.int32),
            world_model=model_params,
            actor=actor,
            critic=critic,
            slow_critic=critic,
            model_opt=model_optimizer(hparams).init(model_params),
            actor_opt=actor_optimizer(hparams).init(actor),
            critic_opt=critic_optimizer(hparams).init(critic),
            return_scale=jnp.float32(0.0),
            key=key,
            episode_return=jnp.zeros(num_envs),
            last_episode_return=jnp.float32(0.0),
        )
        # PREFILL the replay with uniformly random actions.
        state, _ = jax.lax.scan(
            lambda s, k: (vector_step(s, k, True), None),
            state,
            jax.random.split(explore_key, config.initial_steps // num_envs),
        )
        return state

    def update(state: DreamerState, hparams, update_index):
        """steps_per_update environment steps in train-ratio cycles: `cycle_steps` vector steps, then
        `cycle_updates` updates of world model, critic and actor."""
        del update_index

        def cycle(state, cycle_key):
            act_key, learn_key = jax.random.split(cycle_key)
            state, _ = jax.lax.scan(
                lambda s, k: (vector_step(s, k, False), None), state, jax.random.split(act_key, cycle_steps)
            )
            state, metrics = jax.lax.scan(
                lambda s, k: train_step(s, k, hparams), state, jax.random.split(learn_key, cycle_updates)
            )
            return state, jax.tree_util.tree_map(jnp.mean, metrics)

        key, cycles_key = jax.random.split(state.key)
        num_cycles = config.steps_per_update // num_envs // cycle_steps
        state, metrics = jax.lax.scan(cycle, state._replace(key=key), jax.random.split(cycles_key, num_cycles))
        metrics = jax.tree_util.tree_map(jnp.mean, metrics)
        metrics["train_episode_return"] = state.last_episode_return
        return state, metrics

    def evaluate(state: DreamerState, key, hparams):
        """Returns of the actor's mode, the model state filtered along each episode."""
        episodes = config.eval_episodes

        def act(carry, obs, step_key):
            latent, prev_action, is_first = carry
            action, latent = observe_and_act(
                state.world_model, state.actor, latent, prev_action, obs, is_first, step_key, True
            )
            return env_action(action), (latent, action, jnp.zeros(episodes))

        carry = (
            world_model.apply(state.world_model, episodes, method=WorldModel.initial),
            jnp.zeros((episodes, action_size)),
            jnp.ones(episodes),
        )
        return evaluate_episodes(eval_env, key, episodes, spec.episode_length, act, carry)

    return Trainer(init=init, update=update, evaluate=evaluate, schedule=schedule)


def main(argv=None) -> int:
    return runner.main("dreamer", Config, PRESETS, make_train, argv)


if __name__ == "__main__":
    sys.exit(main())
