"""Probabilistic ensemble of dynamics models (Chua et al. 2018), shared by PETS, MBPO, MB-MPO, MAAC.

K members, each an MLP from the normalised (obs, action) to the mean and log-variance of the target
(next_obs - obs, and the reward when it is learned). The K members are one stacked set of parameters
evaluated with `vmap`, so an ensemble costs one batched matmul a layer.

Training, as in the authors' code (kchua/handful-of-trials `dmbrl/modeling/models/BNN.py`,
jannerm/mbpo `mbpo/models/bnn.py`) and mbrl-lib (`mbrl/models/gaussian_mlp.py`,
`mbrl/models/model_trainer.py`):
- inputs standardised by the mean and standard deviation of the stored data (the authors fit their
  scaler on the training split, mbrl-lib on all stored data, as here);
- Gaussian negative log-likelihood (or MSE for a deterministic ensemble), mean over the batch and
  the outputs, summed over members; Adam with weight decay added to the gradient (an L2 penalty);
- every member sees its own bootstrap of the training set (or its own shuffle);
- a holdout split for early stopping (stop after `model_patience` epochs in which no member improved its
  holdout error by `model_min_improvement`), the best parameters of each member kept, and the elites
  chosen by holdout error. Without a holdout (`model_holdout_ratio` 0, as the authors' PETS and mbrl-lib's
  pets_cartpole and pets_halfcheetah) every fit runs `model_max_epochs` epochs, keeps the last parameters, and the elites are
  chosen by their error on the training data (as mbrl-lib, which scores on the training set when it
  has no validation set).

Targets: neither the authors' code nor mbrl-lib normalises them (their scalers and `Normalizer`
see the inputs only). Here `model_normalize_targets` (default on) also standardises each target dimension
by its data statistics before the loss, and maps predictions back. It makes every output dimension
weigh alike in the loss, the holdout error and the log-variance bounds (fixed at [-10, 0.5] in
normalised units, i.e. relative to each dimension's spread, not in raw units where a small-scale
dimension such as an angle delta can sit below exp(-10) or a large reward above exp(0.5)). It
lowered the held-out one-step error and NLL on every seed measured (benchmarks/RESULTS.md, "Target
normalisation"). PETS's presets that name the authors' code or mbrl-lib turn it off (`model_normalize_targets=False`, the
references' behaviour).

Options for the authors' model details, each off by default: `model_learn_logvar_bounds` (the bounds as
parameters with the penalty 0.01 * (sum max - sum min)), `model_layer_decay_scale` (a weight decay per
layer: the authors' 2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4 is 1e-4 times 0.25, 0.5, 0.75, 0.75, 1),
`model_decay_biases=False` (the authors decay weights only; mbrl-lib's torch Adam decays biases too) and
`model_authors_init` (weights from a normal truncated at two standard deviations with std
1 / (2 sqrt(fan_in)), biases zero, as both references; the default is flax's LeCun normal, std
1 / sqrt(fan_in)).

All of it without dynamic shapes: the data is the buffer's whole capacity with a count, the split is
a random order of the valid slots, and the epoch and minibatch loops are `while` loops whose trip
counts are traced values.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from mbrlax.config import ConfigError, check_fields, setting
from mbrlax.networks import ACTIVATION_NAMES, MLP

PROPAGATIONS = ("ts1", "tsinf", "expectation")


@dataclasses.dataclass(frozen=True)
class EnsembleConfig:
    """The model's settings, declared once. Every Config of a model-based loop extends this class,
    changing defaults only, and the ensemble's functions read these fields from that Config: one
    name for a setting from the command line to the core. The static ones fix shapes and loops."""

    ensemble_size: int = setting(7, positive=True)
    """Ensemble members K."""
    model_elites: int | None = setting(None, positive=True)
    """Members used to predict, the best by holdout error (by training error without one); None: all."""
    model_hidden_sizes: tuple[int, ...] = (200, 200, 200, 200)
    """Hidden layer widths of each member."""
    model_activation: str = setting("silu", choices=ACTIVATION_NAMES)
    """Hidden activation (silu is the swish of the PETS paper)."""
    model_probabilistic: bool = True
    """Gaussian outputs trained by negative log-likelihood; False: a deterministic MSE ensemble."""
    learn_reward: bool = False
    """Predict the reward as an extra output (where the task's reward is not a known function)."""
    model_learn_logvar_bounds: bool = False
    """Learn the log-variance bounds with the penalty 0.01 * (sum max - sum min), as the original."""
    model_normalize_targets: bool = True
    """Standardise the targets by their data statistics (the references normalise the inputs only)."""
    model_layer_decay_scale: tuple[float, ...] | None = None
    """Multiplier of model_weight_decay per layer, hidden layers then output (None: 1 everywhere)."""
    model_decay_biases: bool = True
    """Weight decay on the biases too (mbrl-lib's Adam: yes; the authors' code: weights only)."""
    model_authors_init: bool = False
    """Weights ~ truncated normal with std 1 / (2 sqrt(fan_in)) as both references (else LeCun normal)."""
    model_lr: float = setting(1e-3, sweepable=True)
    """Adam learning rate of the ensemble."""
    model_weight_decay: float = setting(5e-5, sweepable=True, within="[0, inf)")
    """Weight decay of the ensemble."""
    model_batch_size: int = setting(256, positive=True)
    """Minibatch size per member."""
    model_max_epochs: int = setting(50, positive=True)
    """Most passes over the training data in one fit."""
    model_patience: int = setting(5, positive=True)
    """Stop a fit after this many epochs in which no member improved its holdout error."""
    model_min_improvement: float = setting(0.01, within="[0, inf)")
    """Relative holdout improvement that counts (0.01 = 1 %)."""
    model_holdout_ratio: float = setting(0.2, within="[0, 1)")
    """Share of the data held out for early stopping and elites; 0: no split, model_max_epochs a fit."""
    model_max_holdout: int = setting(5000, positive=True)
    """Cap on the holdout size (MBPO's code caps it at 5000)."""
    model_sampling: str = setting("bootstrap", choices=("bootstrap", "shuffle"))
    """How members see the data: "bootstrap" (each its own resample) or "shuffle" (each its own order)."""
    model_eval_batch_size: int = setting(2048, positive=True)
    """Chunk size of the holdout evaluation pass."""

    @property
    def model_elite_count(self) -> int:
        """The members used to predict: model_elites, or all of them."""
        return self.model_elites or self.ensemble_size

    def validate(self) -> None:
        """The declared checks (the Config's own, when this is part of one) and those relating fields."""
        parent = getattr(super(), "validate", None)
        parent() if parent is not None else check_fields(self)
        check_settings(self)


def check_settings(cfg: EnsembleConfig) -> None:
    """The checks that relate the model's fields; a ConfigError names the first that fails."""
    if cfg.model_elites is not None and not 1 <= cfg.model_elites <= cfg.ensemble_size:
        raise ConfigError(f"model_elites must be between 1 and ensemble_size ({cfg.ensemble_size}), got {cfg.model_elites}")
    scale = cfg.model_layer_decay_scale
    if scale is not None and len(scale) != len(cfg.model_hidden_sizes) + 1:
        raise ConfigError(
            f"model_layer_decay_scale needs one value per layer ({len(cfg.model_hidden_sizes) + 1}), got {len(scale)}"
        )
    if scale is not None and any(not item >= 0 for item in scale):
        raise ConfigError(f"model_layer_decay_scale must be 0 or positive, got {scale}")


@struct.dataclass
class EnsembleState:
    params: Any
    """{"net": member parameters stacked on a leading [K] axis, "max_logvar", "min_logvar"}."""
    opt_state: Any
    input_mean: jax.Array
    input_std: jax.Array
    target_mean: jax.Array
    target_std: jax.Array
    elites: jax.Array
    """[num_elites] int32 indices of the members with the lowest holdout error."""


def _network(cfg: EnsembleConfig, output_size: int) -> MLP:
    outputs = 2 * output_size if cfg.model_probabilistic else output_size
    return MLP(hidden_sizes=cfg.model_hidden_sizes, output_size=outputs, activation=cfg.model_activation)


def target_size(cfg: EnsembleConfig, obs_size: int) -> int:
    return obs_size + int(cfg.learn_reward)


class DecayLayout(NamedTuple):
    """Which parameters decay and how much, per layer (static: the optimiser's structure)."""

    layer_scale: tuple[float, ...] | None
    biases: bool

    @classmethod
    def of(cls, cfg: EnsembleConfig) -> DecayLayout:
        return cls(cfg.model_layer_decay_scale, cfg.model_decay_biases)


def decay_rates(layout: DecayLayout, params: Any, weight_decay) -> Any:
    """The weight decay of every parameter: `weight_decay`, times the layer's `layer_scale`; zero for
    the biases unless `biases`, and zero for the log-variance bounds."""

    def rate(path, _):
        names = [getattr(entry, "key", getattr(entry, "name", None)) for entry in path]
        if names[0] != "net" or (names[-1] == "bias" and not layout.biases):
            return 0.0
        if layout.layer_scale is None:
            return weight_decay
        layer = next(int(n.split("_")[-1]) for n in names if isinstance(n, str) and n.startswith("Dense_"))
        return weight_decay * layout.layer_scale[layer]

    return jax.tree_util.tree_map_with_path(rate, params)


def _adam_with_decay(learning_rate, weight_decay, layout: DecayLayout) -> optax.GradientTransformation:
    # Decay is coupled (added to the gradient: the gradient of the authors' penalty
    # decay * ||W||^2 / 2, and what torch's Adam does in mbrl-lib) and spares the bounds.
    def add_decay(updates, state, params):
        rates = decay_rates(layout, params, weight_decay)
        return jax.tree_util.tree_map(lambda g, p, r: g + r * p, updates, params, rates), state

    decay = optax.GradientTransformation(lambda params: optax.EmptyState(), add_decay)
    return optax.chain(decay, optax.scale_by_adam(), optax.scale(-learning_rate))


def optimizer(cfg: EnsembleConfig, learning_rate=0.0, weight_decay=0.0) -> optax.GradientTransformation:
    """Adam with weight decay, the rate and decay kept in its state (optax's `inject_hyperparams`):
    `init` stores the run's (traced, so a sweep over them is a vmap) and `update` reads them there."""
    layout = DecayLayout.of(cfg)
    return optax.inject_hyperparams(_adam_with_decay, static_args="layout")(learning_rate, weight_decay, layout)


def _authors_init(key: jax.Array, net: Any) -> Any:
    """Every kernel [K, fan_in, out] redrawn from a normal truncated at 2 std with std
    1 / (2 sqrt(fan_in)) (handful-of-trials and jannerm/mbpo `FC.construct_vars`, mbrl-lib's
    `truncated_normal_init`); biases zero."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(net)
    keys = jax.random.split(key, len(leaves))
    new = []
    for (path, leaf), k in zip(leaves, keys):
        if getattr(path[-1], "key", None) == "kernel":
            std = 1.0 / (2.0 * jnp.sqrt(leaf.shape[-2]))
            leaf = std * jax.random.truncated_normal(k, -2.0, 2.0, leaf.shape, leaf.dtype)
        else:
            leaf = jnp.zeros_like(leaf)
        new.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, new)


def init(
    key: jax.Array, cfg: EnsembleConfig, obs_size: int, action_size: int, learning_rate, weight_decay
) -> EnsembleState:
    """Members' parameters, and an optimiser state that keeps `learning_rate` and `weight_decay`
    (traced: a sweep's) for every later `train`."""
    check_fields(cfg)
    check_settings(cfg)
    input_size, output_size = obs_size + action_size, target_size(cfg, obs_size)
    network = _network(cfg, output_size)
    member_keys = jax.random.split(key, cfg.ensemble_size)
    net = jax.vmap(lambda k: network.init(k, jnp.zeros((1, input_size))))(member_keys)
    if cfg.model_authors_init:
        net = _authors_init(jax.random.fold_in(key, 1), net)
    params = {
        "net": net,
        # Initial soft bounds of the authors' code: log-variance in about [-10, 0.5].
        "max_logvar": jnp.full((output_size,), 0.5, jnp.float32),
        "min_logvar": jnp.full((output_size,), -10.0, jnp.float32),
    }
    return EnsembleState(
        params=params,
        opt_state=optimizer(cfg, jnp.float32(learning_rate), jnp.float32(weight_decay)).init(params),
        input_mean=jnp.zeros(input_size),
        input_std=jnp.ones(input_size),
        target_mean=jnp.zeros(output_size),
        target_std=jnp.ones(output_size),
        elites=jnp.arange(cfg.model_elite_count, dtype=jnp.int32),
    )


# FORWARD PASS


def _apply_members(cfg: EnsembleConfig, params: Any, inputs: jax.Array, output_size: int):
    """Normalised inputs [G, n, in] through G stacked members -> mean, log-variance [G, n, out]."""
    network = _network(cfg, output_size)
    out = jax.vmap(network.apply)(params["net"], inputs)
    if not cfg.model_probabilistic:
        return out, jnp.zeros_like(out)
    mean, raw_logvar = jnp.split(out, 2, axis=-1)
    # Soft bounds keep the variance away from 0 and infinity while keeping gradients alive.
    logvar = params["max_logvar"] - jax.nn.softplus(params["max_logvar"] - raw_logvar)
    logvar = params["min_logvar"] + jax.nn.softplus(logvar - params["min_logvar"])
    return mean, logvar


def _normalise_inputs(state: EnsembleState, obs: jax.Array, action: jax.Array) -> jax.Array:
    return (jnp.concatenate([obs, action], axis=-1) - state.input_mean) / state.input_std


def predict(cfg: EnsembleConfig, state: EnsembleState, obs: jax.Array, action: jax.Array):
    """Every member's prediction for a batch [n, ...]: next-obs mean, variance [K, n, obs] and the
    reward mean and variance [K, n] (zeros when the reward is not learned), in the data's units."""
    output_size = state.target_mean.shape[0]
    inputs = _normalise_inputs(state, obs, action)
    mean, logvar = _apply_members(
        cfg, state.params, jnp.broadcast_to(inputs, (cfg.ensemble_size,) + inputs.shape), output_size
    )
    mean = mean * state.target_std + state.target_mean
    var = jnp.exp(logvar) * state.target_std**2 if cfg.model_probabilistic else jnp.zeros_like(mean)
    obs_size = obs.shape[-1]
    next_mean = obs + mean[..., :obs_size]
    if cfg.learn_reward:
        return next_mean, var[..., :obs_size], mean[..., obs_size], var[..., obs_size]
    zeros = jnp.zeros(mean.shape[:-1])
    return next_mean, var[..., :obs_size], zeros, zeros


def propagate(
    cfg: EnsembleConfig,
    state: EnsembleState,
    obs: jax.Array,
    action: jax.Array,
    key: jax.Array,
    mode: str = "ts1",
    elites_only: bool = False,
    sample: bool = True,
):
    """One model step for n particles [n, ...] -> (next_obs [n, obs], reward [n] or None).

    - "ts1": every particle goes through a freshly drawn member at every step (TS1 of the paper).
      Drawn as a random permutation split into equal groups, one group per member, so each member
      runs once on n/G inputs instead of every member on all n.
    - "tsinf": particle i stays with member i mod G for the whole trajectory (TSinf); the caller keeps
      the particle order fixed over the horizon.
    - "expectation": the mean prediction over members, no noise.
    G is the number of members used: all K, or the elites with `elites_only`.
    """
    if mode not in PROPAGATIONS:
        raise ValueError(f"propagation must be one of {PROPAGATIONS}, got {mode!r}")
    n, obs_size = obs.shape
    output_size = state.target_mean.shape[0]
    params = state.params
    if elites_only:
        params = dict(params, net=jax.tree_util.tree_map(lambda p: p[state.elites], params["net"]))
    groups = cfg.model_elite_count if elites_only else cfg.ensemble_size
    inputs = _normalise_inputs(state, obs, action)
    _, noise_key = jax.random.split(key)

    if mode == "expectation":
        mean, _ = _apply_members(cfg, params, jnp.broadcast_to(inputs, (groups,) + inputs.shape), output_size)
        out = mean.mean(axis=0)
    else:
        # Particle order[j] goes to member j mod G. A batch that does not divide by G is padded.
        padded = -(-n // groups) * groups
        order = jnp.concatenate([_particle_order(key, n, mode), jnp.arange(padded - n)])
        grouped = inputs[order].reshape(padded // groups, groups, -1).swapaxes(0, 1)
        mean, logvar = _apply_members(cfg, params, grouped, output_size)
        if sample and cfg.model_probabilistic:
            mean = mean + jnp.exp(0.5 * logvar) * jax.random.normal(noise_key, mean.shape)
        out = mean.swapaxes(0, 1).reshape(padded, output_size)[:n]
        out = jnp.zeros((n, output_size)).at[order[:n]].set(out)

    out = out * state.target_std + state.target_mean
    next_obs = obs + out[:, :obs_size]
    reward = out[:, obs_size] if cfg.learn_reward else None
    return next_obs, reward


def _particle_order(key: jax.Array, n: int, mode: str) -> jax.Array:
    """The order in which `propagate(..., key, mode)` deals n particles out: order[j] goes to member j mod G."""
    perm_key, _ = jax.random.split(key)
    return jax.random.permutation(perm_key, n) if mode == "ts1" else jnp.arange(n)


def ts1_members(key: jax.Array, n: int, members: jax.Array) -> jax.Array:
    """[n] the member `propagate(..., key, mode="ts1")` sends each of n particles through, of `members`
    (the elites' indices with `elites_only`, else all): for a method that must know which member drew
    each sample (M2AC's one-vs-rest uncertainty)."""
    dealt = members[jnp.arange(n) % members.shape[0]].astype(jnp.int32)
    return jnp.zeros(n, jnp.int32).at[_particle_order(key, n, "ts1")].set(dealt)


def member_mean(cfg: EnsembleConfig, state: EnsembleState, member: jax.Array, obs: jax.Array, action: jax.Array):
    """The mean prediction of one member (an int32 index, may be traced) for [n, ...] inputs ->
    (next_obs [n, obs], reward [n] or None): a deterministic model, as MB-MPO gives each task."""
    output_size = state.target_mean.shape[0]
    params = dict(state.params, net=jax.tree_util.tree_map(lambda p: p[member][None], state.params["net"]))
    mean, _ = _apply_members(cfg, params, _normalise_inputs(state, obs, action)[None], output_size)
    out = mean[0] * state.target_std + state.target_mean
    obs_size = obs.shape[-1]
    return obs + out[:, :obs_size], (out[:, obs_size] if cfg.learn_reward else None)


# TRAIN


def _loss(cfg: EnsembleConfig, params, inputs, targets, weights, output_size):
    """Per-member loss [K] on normalised [K, b, ...] minibatches with [K, b] weights."""
    mean, logvar = _apply_members(cfg, params, inputs, output_size)
    if cfg.model_probabilistic:
        per_sample = ((mean - targets) ** 2 * jnp.exp(-logvar) + logvar).mean(-1)
    else:
        per_sample = ((mean - targets) ** 2).mean(-1)
    loss = (per_sample * weights).sum(-1) / jnp.maximum(weights.sum(-1), 1.0)
    return loss


def _masked_moments(x: jax.Array, mask: jax.Array):
    # `where`, not a product with the mask: padding may hold anything, NaN included.
    mask = mask[:, None]
    count = jnp.maximum(mask.sum(), 1)
    mean = jnp.where(mask, x, 0.0).sum(0) / count
    std = jnp.sqrt(jnp.where(mask, (x - mean) ** 2, 0.0).sum(0) / count)
    # A constant feature would divide by zero; leave it unscaled.
    return mean, jnp.where(std < 1e-6, 1.0, std)


class Normalised(NamedTuple):
    """A fit's data in the units the members train in, and the moments that made them."""

    inputs: jax.Array
    """[capacity, obs + act] (obs, action) standardised by the valid entries' moments."""
    targets: jax.Array
    """[capacity, out] next_obs - obs (and the reward), standardised when the config says so."""
    input_mean: jax.Array
    input_std: jax.Array
    target_mean: jax.Array
    target_std: jax.Array


class Split(NamedTuple):
    """Which valid entries each member trains on and which are held out, fixed for one fit."""

    order: jax.Array
    """[capacity] a random order of the valid slots first; its first n_holdout are held out."""
    n_holdout: jax.Array
    n_train: jax.Array
    resample: jax.Array
    """[K, capacity] member k's j-th training example is train position resample[k, j]."""


def normalise(cfg: EnsembleConfig, state: EnsembleState, data: dict, count: jax.Array) -> Normalised:
    """Inputs (obs, action) and targets (next_obs - obs, and the reward when it is learned), each
    standardised by the mean and spread of the first `count` entries (targets only with
    `normalize_targets`)."""
    inputs_raw = jnp.concatenate([data["obs"], data["action"]], axis=-1)
    targets_raw = data["next_obs"] - data["obs"]
    if cfg.learn_reward:
        targets_raw = jnp.concatenate([targets_raw, data["reward"][:, None]], axis=-1)
    valid = jnp.arange(data["obs"].shape[0]) < count
    input_mean, input_std = _masked_moments(inputs_raw, valid)
    if cfg.model_normalize_targets:
        target_mean, target_std = _masked_moments(targets_raw, valid)
    else:
        target_mean, target_std = jnp.zeros_like(state.target_mean), jnp.ones_like(state.target_std)
    inputs = (inputs_raw - input_mean) / input_std
    targets = (targets_raw - target_mean) / target_std
    return Normalised(inputs, targets, input_mean, input_std, target_mean, target_std)


def split(cfg: EnsembleConfig, split_key, boot_key, count: jax.Array, capacity: int) -> Split:
    """A random order of the valid slots, of which the first min(count x holdout_ratio, max_holdout)
    are held out; with `sampling="bootstrap"` each member resamples the rest with replacement."""
    valid = jnp.arange(capacity) < count
    order = jnp.argsort(jnp.where(valid, jax.random.uniform(split_key, (capacity,)), 2.0))
    n_holdout = jnp.minimum((count * cfg.model_holdout_ratio).astype(jnp.int32), cfg.model_max_holdout)
    n_train = count - n_holdout
    if cfg.model_sampling == "bootstrap":
        resample = jax.random.randint(boot_key, (cfg.ensemble_size, capacity), 0, jnp.maximum(n_train, 1))
    else:
        resample = jnp.broadcast_to(jnp.arange(capacity), (cfg.ensemble_size, capacity))
    return Split(order, n_holdout, n_train, resample)


def member_errors(cfg: EnsembleConfig, params, data: Normalised, order: jax.Array, size) -> jax.Array:
    """Mean squared error of each member's mean [K] (in the units of the targets as trained) on the
    first `size` entries of `order`: the holdout set, or without a holdout a random share of the
    training data."""
    capacity, output_size = order.shape[0], data.targets.shape[-1]
    E, K = cfg.model_eval_batch_size, cfg.ensemble_size
    num_chunks = (size + E - 1) // E

    def chunk(c, total):
        j = c * E + jnp.arange(E)
        weights = (j < size).astype(jnp.float32)
        idx = order[jnp.minimum(j, capacity - 1)]
        x = jnp.broadcast_to(data.inputs[idx], (K, E, data.inputs.shape[-1]))
        mean, _ = _apply_members(cfg, params, x, output_size)
        return total + (((mean - data.targets[idx]) ** 2).mean(-1) * weights).sum(-1)

    return jax.lax.fori_loop(0, num_chunks, chunk, jnp.zeros(K)) / jnp.maximum(size, 1)


def fit_epochs(cfg: EnsembleConfig, state: EnsembleState, data: Normalised, parts: Split, key):
    """Epochs of minibatch Adam on each member's training examples until `max_epochs`, or until no
    member's holdout error improved by `min_improvement` (relative) for `patience` epochs; each
    member keeps its best parameters by holdout error (without a holdout: the last). Returns (params
    with the best networks, optimiser state, each member's best holdout error [K], epochs run, the
    last epoch's mean training loss)."""
    capacity, output_size = parts.order.shape[0], data.targets.shape[-1]
    K, B = cfg.ensemble_size, cfg.model_batch_size
    adam_with_decay = optimizer(cfg)  # the rate and decay come from state.opt_state
    order, n_holdout, n_train, resample = parts

    def loss_fn(params, idx, weights):
        return _loss(cfg, params, data.inputs[idx], data.targets[idx], weights, output_size)

    def penalty(params):
        if not (cfg.model_probabilistic and cfg.model_learn_logvar_bounds):
            return 0.0
        return 0.01 * (params["max_logvar"].sum() - params["min_logvar"].sum())

    def total_loss(params, idx, weights):
        if not cfg.model_learn_logvar_bounds:
            # Fixed bounds: no gradient, so Adam leaves them where they were initialised.
            params = dict(
                params,
                max_logvar=jax.lax.stop_gradient(params["max_logvar"]),
                min_logvar=jax.lax.stop_gradient(params["min_logvar"]),
            )
        return loss_fn(params, idx, weights).sum() + penalty(params)

    def train_epoch(params, opt_state, key):
        position_in_train = jnp.argsort(
            jnp.where(jnp.arange(capacity) < n_train, jax.random.uniform(key, (K, capacity)), 2.0), axis=-1
        )
        num_batches = (n_train + B - 1) // B

        def minibatch(b, carry):
            params, opt_state, loss_sum = carry
            j = b * B + jnp.arange(B)
            weights = jnp.broadcast_to((j < n_train).astype(jnp.float32), (K, B))
            j = jnp.minimum(j, capacity - 1)
            positions = jnp.take_along_axis(resample, position_in_train[:, j], axis=-1)
            idx = order[jnp.minimum(n_holdout + positions, capacity - 1)]
            loss, grads = jax.value_and_grad(total_loss)(params, idx, weights)
            updates, opt_state = adam_with_decay.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss_sum + loss

        params, opt_state, loss_sum = jax.lax.fori_loop(0, num_batches, minibatch, (params, opt_state, 0.0))
        return params, opt_state, loss_sum / jnp.maximum(num_batches, 1) / K

    # EARLY STOPPING over epochs: keep each member's best parameters by holdout error.
    def keep_going(carry):
        epoch, since_improved = carry[0], carry[1]
        return (epoch < cfg.model_max_epochs) & (since_improved < cfg.model_patience)

    def epoch_step(carry):
        epoch, since_improved, params, opt_state, best_params, best_error, key, _ = carry
        key, epoch_key = jax.random.split(key)
        params, opt_state, train_loss = train_epoch(params, opt_state, epoch_key)
        error = member_errors(cfg, params, data, order, n_holdout)
        improved = (best_error - error) / jnp.abs(best_error) > cfg.model_min_improvement
        improved = improved | ~jnp.isfinite(best_error)
        # Without holdout data there is nothing to stop on: train for max_epochs, keep the last.
        improved = improved | (n_holdout == 0)
        best_params = jax.tree_util.tree_map(
            lambda new, old: jnp.where(improved.reshape((K,) + (1,) * (new.ndim - 1)), new, old),
            params["net"],
            best_params,
        )
        best_error = jnp.where(improved, error, best_error)
        since_improved = jnp.where(improved.any() | (n_holdout == 0), 0, since_improved + 1)
        return epoch + 1, since_improved, params, opt_state, best_params, best_error, key, train_loss

    init_carry = (
        jnp.int32(0),
        jnp.int32(0),
        state.params,
        state.opt_state,
        state.params["net"],
        jnp.full((K,), jnp.inf),
        key,
        jnp.float32(0.0),
    )
    epochs, _, params, opt_state, best_net, best_error, _, train_loss = jax.lax.while_loop(
        keep_going, epoch_step, init_carry
    )
    return dict(params, net=best_net), opt_state, best_error, epochs, train_loss


def train(
    cfg: EnsembleConfig,
    state: EnsembleState,
    data: dict,
    count: jax.Array,
    key: jax.Array,
):
    """Fit the ensemble on the first `count` entries of `data` (keys obs, action, next_obs and, when
    the reward is learned, reward; each [capacity, ...]), at the learning rate and weight decay its
    optimiser state keeps (from `init`): normalise, split, the epochs, the elites. Returns the new
    state and metrics."""
    normalised = normalise(cfg, state, data, count)
    split_key, boot_key, key = jax.random.split(key, 3)
    parts = split(cfg, split_key, boot_key, count, data["obs"].shape[0])
    params, opt_state, best_error, epochs, train_loss = fit_epochs(cfg, state, normalised, parts, key)
    if cfg.model_holdout_ratio == 0.0 and cfg.model_elite_count < cfg.ensemble_size:
        # No holdout: rank the members by their error on (at most max_holdout of) the training data.
        best_error = member_errors(cfg, params, normalised, parts.order, jnp.minimum(count, cfg.model_max_holdout))
    elites = jnp.argsort(best_error)[: cfg.model_elite_count].astype(jnp.int32)
    new_state = EnsembleState(
        params=params,
        opt_state=opt_state,
        input_mean=normalised.input_mean,
        input_std=normalised.input_std,
        target_mean=normalised.target_mean,
        target_std=normalised.target_std,
        elites=elites,
    )
    metrics = {
        "model_train_loss": train_loss,
        "model_holdout_mse": jnp.where(parts.n_holdout > 0, best_error[elites].mean(), 0.0),
        "model_holdout_size": parts.n_holdout,
        "model_epochs": epochs,
    }
    return new_state, metrics
