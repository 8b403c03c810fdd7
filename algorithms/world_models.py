"""World Models (Ha and Schmidhuber, "Recurrent World Models Facilitate Policy Evolution", NeurIPS
2018; "World Models", arXiv:1803.10122): V, M and C, fitted one after the other.

V, a convolutional VAE of 64 x 64 frames x, fitted on random-policy rollouts with the free-bits ELBO
    L_V = ||x - D(z)||^2 + max(KL(N(mu, sigma^2) || N(0, I)), kl_tolerance * |z|),  z = mu + sigma eps;
M, an MDN-LSTM h_{t+1} = LSTM(h_t, [z_t, a_t]) predicting z_{t+1} per dimension as a mixture of K
Gaussians, with heads for the reward r_t and the episode's end d_{t+1}:
    L_M = -log sum_k pi_k N(z_{t+1}; mu_k, sigma_k^2) + (r_hat - r_t)^2 + BCE_w(d_hat, d_{t+1});
sampled at a temperature tau: k ~ softmax(log pi / tau), z' = mu_k + sigma_k sqrt(tau) eps;
C, a linear map a_t = tanh(W [z_t, h_t] + b) (`--controller-inputs z`: the paper's V-only ablation),
evolved by CMA-ES (evosax): each generation asks for a population, rolls every candidate out
`rollouts_per_candidate` times (all at once, vmapped) in the real task, or entirely in M's dream
(`--train-in dream`, z sampled at tau, rewards and ends from M's heads), and tells it the fitness
    f(theta) = -mean return(theta) + weight_decay * mean(theta^2)   (evosax minimises).
`--refit-every G` is the paper's iterative procedure: every G generations, new rollouts of the
current C replace the oldest stored ones and M trains on.

Departures from the paper (the rest, and why, on the page):
- The random rollouts are a random action held for 1 to 10 steps (the authors' Doom extract.py).
- Smaller than the paper by default (V a quarter as wide, population 16, 2 rollouts, few steps) to fit a
  2-core CPU; the paper's sizes are the `paper` preset.
- M's reward head, and its done head on every task, are added (the authors' Doom M has the done head).
- The weight penalty penalises; the authors' CMA-ES wrapper added it with the sign of a bonus.
- Iterative refits train M only: a refitted V would change what C's weights read.

Provenance, every departure, presets and commands: docs/algorithms/world_models.md.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from evosax.algorithms import CMA_ES

from mbrlax import presets, runner
from mbrlax.config import RunConfig, setting
from mbrlax.loops import episodes
from mbrlax.training import ConfigError, Schedule, Trainer, gradient_update, scale_action

IMAGE_SHAPE = (64, 64, 3)

# THE MATH: V's loss, M's likelihood and sampling, C


def vae_loss(x, reconstruction, mu, logvar, kl_tolerance):
    """The authors' ConvVAE loss on frames in [0, 1]: the squared error summed over pixels plus the KL
    of N(mu, exp(logvar)) from N(0, I) summed over z's dimensions and floored at kl_tolerance * |z|
    ("free bits"), each averaged over the batch. Returns (loss, reconstruction term, KL term)."""
    reconstruction_loss = jnp.sum((x - reconstruction) ** 2, axis=(-3, -2, -1))
    kl = -0.5 * jnp.sum(1.0 + logvar - mu**2 - jnp.exp(logvar), axis=-1)
    kl = jnp.maximum(kl, kl_tolerance * mu.shape[-1])
    return (reconstruction_loss + kl).mean(), reconstruction_loss.mean(), kl.mean()


def mdn_log_likelihood(logits, mean, logstd, y):
    """log sum_k pi_k N(y; mean_k, exp(logstd_k)^2) per element of y, pi = softmax(logits) over the
    last axis of logits, mean and logstd (K mixtures); y has their shape without that axis."""
    log_mix = jax.nn.log_softmax(logits, axis=-1)
    z = (y[..., None] - mean) * jnp.exp(-logstd)
    log_normal = -0.5 * z**2 - logstd - 0.5 * jnp.log(2.0 * jnp.pi)
    return jax.nn.logsumexp(log_mix + log_normal, axis=-1)


def sample_mdn(key, logits, mean, logstd, temperature):
    """One draw per element at temperature tau, as the authors' dream: a component k from
    softmax(logits / tau), then mean_k + exp(logstd_k) sqrt(tau) eps."""
    pick_key, noise_key = jax.random.split(key)
    k = jax.random.categorical(pick_key, logits / temperature, axis=-1)[..., None]
    chosen_mean = jnp.take_along_axis(mean, k, axis=-1)[..., 0]
    chosen_logstd = jnp.take_along_axis(logstd, k, axis=-1)[..., 0]
    noise = jax.random.normal(noise_key, chosen_mean.shape)
    return chosen_mean + jnp.exp(chosen_logstd) * jnp.sqrt(temperature) * noise


def done_loss(logit, done, restart_factor):
    """Sigmoid cross entropy of the end-of-episode head, the positive (rare) steps weighted
    restart_factor times, as the authors' Doom MDN-RNN."""
    weight = 1.0 + done * (restart_factor - 1.0)
    return weight * optax.sigmoid_binary_cross_entropy(logit, done)


def controller_size(feature_size: int, action_size: int) -> int:
    """Parameters of C: a bias per action, then the weights (the authors' layout)."""
    return action_size + feature_size * action_size


def controller(theta, features):
    """a = tanh(W features + b) for one flat parameter vector theta = [b, W (features x actions)]."""
    feature_size = features.shape[-1]
    action_size = theta.shape[-1] // (feature_size + 1)
    bias, weight = theta[:action_size], theta[action_size:].reshape(feature_size, action_size)
    return jnp.tanh(features @ weight + bias)


def fitness(returns, thetas, weight_decay):
    """CMA-ES's fitness, to minimise: -(mean return over a candidate's rollouts) + weight_decay *
    mean(theta^2). `returns` [population, rollouts], `thetas` [population, parameters]."""
    return -returns.mean(axis=1) + weight_decay * jnp.mean(thetas**2, axis=1)


# THE NETWORKS: V (the authors' ConvVAE, its width a setting) and M


class Encoder(nn.Module):
    z_size: int
    depth: int

    @nn.compact
    def __call__(self, x):
        """Frames [..., 64, 64, 3] in [0, 1] -> (mu, logvar) [..., z_size]: four 4x4 convolutions of
        stride 2 with depth x (1, 2, 4, 8) channels (64 -> 31 -> 14 -> 6 -> 2)."""
        batch = x.shape[:-3]
        h = x.reshape((-1,) + IMAGE_SHAPE)
        for multiple in (1, 2, 4, 8):
            h = nn.relu(nn.Conv(self.depth * multiple, (4, 4), strides=2, padding="VALID")(h))
        h = h.reshape(h.shape[0], -1)
        mu, logvar = nn.Dense(self.z_size, name="mu")(h), nn.Dense(self.z_size, name="logvar")(h)
        return mu.reshape(batch + (self.z_size,)), logvar.reshape(batch + (self.z_size,))


class Decoder(nn.Module):
    depth: int

    @nn.compact
    def __call__(self, z):
        """z -> frames in [0, 1]: a dense layer to 32 x depth units as a 1 x 1 image, then transposed
        convolutions of stride 2, kernels 5, 5, 6, 6 (1 -> 5 -> 13 -> 30 -> 64), the last a sigmoid."""
        batch = z.shape[:-1]
        h = nn.Dense(32 * self.depth)(z.reshape(-1, z.shape[-1])).reshape(-1, 1, 1, 32 * self.depth)
        for channels, kernel in ((4 * self.depth, 5), (2 * self.depth, 5), (self.depth, 6)):
            h = nn.relu(nn.ConvTranspose(channels, (kernel, kernel), strides=(2, 2), padding="VALID")(h))
        h = nn.sigmoid(nn.ConvTranspose(3, (6, 6), strides=(2, 2), padding="VALID")(h))
        return h.reshape(batch + IMAGE_SHAPE)


class VAE(nn.Module):
    z_size: int
    depth: int

    def setup(self):
        self.encoder = Encoder(self.z_size, self.depth)
        self.decoder = Decoder(self.depth)

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return self.decoder(z)

    def __call__(self, x, key):
        mu, logvar = self.encoder(x)
        z = mu + jnp.exp(logvar / 2.0) * jax.random.normal(key, mu.shape)
        return self.decoder(z), mu, logvar


class MDNRNN(nn.Module):
    """M: one LSTM step on [z_t, a_t], then from h_{t+1} the mixture's (logits, means, log std) per
    dimension of z_{t+1} [..., z_size, K], the reward of the step and the logit of d_{t+1}."""

    z_size: int
    hidden: int
    mixtures: int

    @nn.compact
    def __call__(self, carry, z, action):
        carry, h = nn.OptimizedLSTMCell(self.hidden, name="lstm")(carry, jnp.concatenate([z, action], axis=-1))
        out = nn.Dense(self.z_size * self.mixtures * 3 + 2, name="head")(h)
        mixture = out[..., :-2].reshape(out.shape[:-1] + (self.z_size, 3 * self.mixtures))
        logits, mean, logstd = jnp.split(mixture, 3, axis=-1)
        return carry, (logits, mean, logstd, out[..., -2], out[..., -1])

    def initial_carry(self, batch: tuple[int, ...]):
        zeros = jnp.zeros(batch + (self.hidden,))
        return zeros, zeros


def clipped_adam(learning_rate, grad_clip: float):
    """Adam after clipping each gradient element to [-grad_clip, grad_clip] (the authors' MDN-RNN),
    its learning rate in its state so that a sweep over it is a vmap."""
    make = lambda learning_rate: optax.chain(optax.clip(grad_clip), optax.adam(learning_rate))  # noqa: E731
    return optax.inject_hyperparams(make)(learning_rate)


# DATA: random-policy rollouts, and rollouts of controllers in the real task or in M's dream


class Rollouts(NamedTuple):
    """Whole episodes, batch-major: V's latents of every frame and what happened between them."""

    mu: jax.Array
    """[N, T + 1, z]"""
    logvar: jax.Array
    action: jax.Array
    """[N, T, actions], in C's range [-1, 1]"""
    reward: jax.Array
    """[N, T]"""
    terminated: jax.Array
    """[N, T]: the step ended the episode by termination (not by the time limit)."""
    mask: jax.Array
    """[N, T]: the step belongs to the episode (it had not ended before)."""


def random_rollouts(env, key, num_episodes: int, length: int, action_size: int, low, high):
    """Whole episodes of a random action held for a random 1 to 10 steps (the authors' Doom
    extract.py). Returns the frames [N, T + 1, 64, 64, 3] and a Rollouts whose mu, logvar are None."""
    reset_key, key = jax.random.split(key)
    state = env.reset(reset_key)

    def step(carry, step_key):
        state, action, hold, alive = carry
        action_key, hold_key = jax.random.split(step_key)
        fresh = hold <= 0
        drawn = jax.random.uniform(action_key, (num_episodes, action_size), minval=-1.0, maxval=1.0)
        action = jnp.where(fresh[:, None], drawn, action)
        hold = jnp.where(fresh, jax.random.randint(hold_key, (num_episodes,), 1, 11), hold) - 1
        next_state = env.step(state, scale_action(action, low, high))
        terminated = next_state.done * (1.0 - next_state.info["truncation"])
        row = (state.obs, action, next_state.reward, terminated, alive)
        return (next_state, action, hold, alive * (1.0 - next_state.done)), row

    zeros = jnp.zeros(num_episodes)
    carry = (state, jnp.zeros((num_episodes, action_size)), zeros.astype(jnp.int32), jnp.ones(num_episodes))
    (state, _, _, _), (frames, actions, rewards, terminated, mask) = jax.lax.scan(
        step, carry, jax.random.split(key, length)
    )
    frames = jnp.concatenate([frames, state.obs[None]], axis=0)
    swap = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731
    return swap(frames), Rollouts(None, None, swap(actions), swap(rewards), swap(terminated), swap(mask))


def encode_episodes(vae: VAE, vae_params, frames):
    """V's (mu, logvar) of every frame [N, T + 1, ...], one episode at a time to bound the memory."""
    return jax.lax.map(lambda f: vae.apply(vae_params, f.astype(jnp.float32) / 255.0, method=VAE.encode), frames)


def real_returns(env, parts, thetas, key, config, length: int, low, high, record: bool = False):
    """Each controller theta [n, D] drives one of the n copies of `env` for an episode: every frame
    encoded by V to a sampled z, a = C([z, h]), then h <- M's LSTM on (z, a) (not run for C on z
    alone). Returns the undiscounted returns [n]; with `record`, also the Rollouts of the episodes."""
    vae, vae_params, rnn, rnn_params = parts
    n = thetas.shape[0]
    reset_key, key = jax.random.split(key)
    state = env.reset(reset_key)
    use_h = config.controller_inputs == "zh"

    def step(carry, step_key):
        state, lstm, total, alive = carry
        mu, logvar = vae.apply(vae_params, state.obs.astype(jnp.float32) / 255.0, method=VAE.encode)
        z = mu + jnp.exp(logvar / 2.0) * jax.random.normal(step_key, mu.shape)
        features = jnp.concatenate([z, lstm[1]], axis=-1) if use_h else z
        action = jax.vmap(controller)(thetas, features)
        next_state = env.step(state, scale_action(action, low, high))
        if use_h or record:
            lstm, _ = rnn.apply(rnn_params, lstm, z, action)
        total = total + alive * next_state.reward
        terminated = next_state.done * (1.0 - next_state.info["truncation"])
        row = (mu, logvar, action, next_state.reward, terminated, alive) if record else None
        return (next_state, lstm, total, alive * (1.0 - next_state.done)), row

    carry = (state, rnn.initial_carry((n,)), jnp.zeros(n), jnp.ones(n))
    (state, _, total, _), rows = jax.lax.scan(step, carry, jax.random.split(key, length))
    if not record:
        return total
    mu, logvar, actions, rewards, terminated, mask = rows
    last_mu, last_logvar = vae.apply(vae_params, state.obs.astype(jnp.float32) / 255.0, method=VAE.encode)
    swap = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731
    mu = swap(jnp.concatenate([mu, last_mu[None]], axis=0))
    logvar = swap(jnp.concatenate([logvar, last_logvar[None]], axis=0))
    return total, Rollouts(mu, logvar, swap(actions), swap(rewards), swap(terminated), swap(mask))


def dream_returns(parts, thetas, data: Rollouts, key, config, length: int, can_terminate: bool):
    """Each controller theta [n, D] acts for an episode entirely inside M: z_0 drawn from V's
    posterior of a stored episode's first frame, then a = C([z, h]), M's step, z' sampled at the
    temperature tau, the reward from M's head, and the episode over once the done head's logit is
    positive (on tasks that terminate). Returns the dreamed returns [n]."""
    _, _, rnn, rnn_params = parts
    n = thetas.shape[0]
    pick_key, noise_key, key = jax.random.split(key, 3)
    start = jax.random.randint(pick_key, (n,), 0, data.mu.shape[0])
    mu, logvar = data.mu[start, 0], data.logvar[start, 0]
    z = mu + jnp.exp(logvar / 2.0) * jax.random.normal(noise_key, mu.shape)
    use_h = config.controller_inputs == "zh"

    def step(carry, step_key):
        z, lstm, total, alive = carry
        features = jnp.concatenate([z, lstm[1]], axis=-1) if use_h else z
        action = jax.vmap(controller)(thetas, features)
        lstm, (logits, mean, logstd, reward, done_logit) = rnn.apply(rnn_params, lstm, z, action)
        z = sample_mdn(step_key, logits, mean, logstd, config.temperature)
        total = total + alive * reward
        if can_terminate:
            alive = alive * (done_logit <= 0.0)
        return (z, lstm, total, alive), None

    carry = (z, rnn.initial_carry((n,)), jnp.zeros(n), jnp.ones(n))
    (_, _, total, _), _ = jax.lax.scan(step, carry, jax.random.split(key, length))
    return total


# TRAIN V and M: supervised passes over the stored rollouts, minibatches by lax.scan


def fit_vae(vae: VAE, params, frames, key, config):
    """`vae_steps` Adam steps on minibatches of frames drawn uniformly from every stored frame."""
    flat = frames.reshape((-1,) + IMAGE_SHAPE)
    optimizer = optax.inject_hyperparams(optax.adam)(config.vae_lr)

    def loss_fn(params, x, key):
        reconstruction, mu, logvar = vae.apply(params, x, key)
        loss, reconstruction_loss, kl = vae_loss(x, reconstruction, mu, logvar, config.kl_tolerance)
        return loss, (reconstruction_loss, kl)

    def step(carry, step_key):
        params, opt_state = carry
        index_key, noise_key = jax.random.split(step_key)
        index = jax.random.randint(index_key, (config.vae_batch_size,), 0, flat.shape[0])
        x = flat[index].astype(jnp.float32) / 255.0
        params, opt_state, loss, (reconstruction_loss, kl) = gradient_update(
            loss_fn, params, opt_state, optimizer, x, noise_key
        )
        return (params, opt_state), (loss, reconstruction_loss, kl)

    carry = (params, optimizer.init(params))
    (params, _), (loss, reconstruction_loss, kl) = jax.lax.scan(step, carry, jax.random.split(key, config.vae_steps))
    return params, dict(vae_loss=loss[-1], vae_reconstruction=reconstruction_loss[-1], vae_kl=kl[-1])


def rnn_loss(rnn: MDNRNN, params, z, data_rows, restart_factor):
    """M's loss over whole episodes, teacher forced: z [B, T + 1, z], the rows (action, reward,
    terminated, mask) [B, T, ...]. The mixture's negative log likelihood of z_{t+1} (mean over z's
    dimensions), the reward's squared error and the weighted done cross entropy, each averaged
    over the steps inside the episodes."""
    action, reward, terminated, mask = data_rows
    swap = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731

    def step(carry, inputs):
        z_t, a_t = inputs
        return rnn.apply(params, carry, z_t, a_t)

    _, (logits, mean, logstd, reward_hat, done_logit) = jax.lax.scan(
        step, rnn.initial_carry(z.shape[:1]), (swap(z[:, :-1]), swap(action))
    )
    mask = swap(mask)
    count = jnp.maximum(mask.sum(), 1.0)
    nll = -mdn_log_likelihood(logits, mean, logstd, swap(z[:, 1:])).mean(axis=-1)
    z_loss = (nll * mask).sum() / count
    reward_loss = ((reward_hat - swap(reward)) ** 2 * mask).sum() / count
    end_loss = (done_loss(done_logit, swap(terminated), restart_factor) * mask).sum() / count
    return z_loss + reward_loss + end_loss, (z_loss, reward_loss, end_loss)


def fit_rnn(rnn: MDNRNN, params, opt_state, data: Rollouts, key, config):
    """`rnn_steps` steps of clipped Adam, each on `rnn_batch_size` whole episodes drawn uniformly,
    their z drawn afresh from V's posteriors (the authors' rnn_train.py)."""
    optimizer = clipped_adam(config.rnn_lr, config.grad_clip)

    def loss_fn(params, z, rows):
        loss, parts = rnn_loss(rnn, params, z, rows, config.restart_factor)
        return loss, parts

    def step(carry, step_key):
        params, opt_state = carry
        index_key, noise_key = jax.random.split(step_key)
        index = jax.random.randint(index_key, (config.rnn_batch_size,), 0, data.mu.shape[0])
        mu, logvar = data.mu[index], data.logvar[index]
        z = mu + jnp.exp(logvar / 2.0) * jax.random.normal(noise_key, mu.shape)
        rows = (data.action[index], data.reward[index], data.terminated[index], data.mask[index])
        params, opt_state, loss, parts = gradient_update(loss_fn, params, opt_state, optimizer, z, rows)
        return (params, opt_state), (loss, *parts)

    (params, opt_state), (loss, z_loss, reward_loss, end_loss) = jax.lax.scan(
        step, (params, opt_state), jax.random.split(key, config.rnn_steps)
    )
    metrics = dict(rnn_loss=loss[-1], rnn_z_nll=z_loss[-1], rnn_reward_loss=reward_loss[-1], rnn_done_loss=end_loss[-1])
    return params, opt_state, metrics


# EVOLVE C: one CMA-ES generation


def generation(strategy, params, es_state, key, rollouts, config):
    """Ask evosax's CMA-ES for a population, roll each candidate out `rollouts_per_candidate` times
    in one batch (`rollouts(thetas [n, D], key) -> returns [n]`), tell it the fitness. Returns the
    new state and the returns [population, rollouts_per_candidate]."""
    ask_key, rollout_key, tell_key = jax.random.split(key, 3)
    thetas, es_state = strategy.ask(ask_key, es_state, params)
    returns = rollouts(jnp.repeat(thetas, config.rollouts_per_candidate, axis=0), rollout_key)
    returns = returns.reshape(config.population, config.rollouts_per_candidate)
    es_state, _ = strategy.tell(tell_key, thetas, fitness(returns, thetas, config.weight_decay), es_state, params)
    return es_state, returns


# STATE


class WorldModelsState(NamedTuple):
    vae_params: Any
    rnn_params: Any
    rnn_opt_state: Any
    es_state: Any
    """evosax's CMA-ES state over C's flat parameters (its mean is the controller evaluated)."""
    data: Rollouts
    """The stored episodes as V's latents: the random rollouts, then (with refits) C's newest."""
    next_slot: jax.Array
    """Where a refit's new episodes go in `data` (a ring over the stored episodes)."""
    fit_metrics: dict
    """V's and M's losses at the end of their latest fit."""
    key: jax.Array


# TRAINING PROGRAM


class Parts(NamedTuple):
    """What `make_train` builds once from the Config and the task."""

    task: episodes.Setup
    vae: VAE
    rnn: MDNRNN
    strategy: Any
    num_params: int
    """C's parameters."""
    collect_env: Any
    """The random rollouts' batch of environments."""
    candidate_env: Any
    """Every candidate's rollouts at once (training in the real task), or None."""
    refit_env: Any
    """The iterative procedure's rollouts of C's mean, or None."""
    uses_m: bool
    """M is fitted unless nothing reads it: C on z alone, trained in the real task."""


def check_task(spec) -> None:
    if spec.image_shape != IMAGE_SHAPE or spec.discrete:
        shape = spec.image_shape or (spec.observation_size,)
        seen = "discrete actions" if spec.discrete else f"observations of shape {shape}"
        raise ConfigError(
            f"world_models.py needs 64 x 64 RGB frames and continuous actions (cartpole_swingup_pixels, "
            f"pendulum_pixels); {spec.name} has {seen}"
        )


def es_params(parts: Parts, config):
    return parts.strategy.default_params.replace(std_init=jnp.asarray(config.sigma_init, jnp.float32))


def initial_state(parts: Parts, key, config) -> WorldModelsState:
    """Random-policy rollouts, V fitted on their frames, every frame encoded, M fitted on the codes;
    CMA-ES starts at C = 0."""
    collect_key, vae_key, vae_fit_key, rnn_key, rnn_fit_key, es_key, key = jax.random.split(key, 7)
    task, vae, rnn = parts.task, parts.vae, parts.rnn
    length, action_size = task.spec.episode_length, task.spec.action_size
    # COLLECT: random-policy rollouts
    frames, data = random_rollouts(
        parts.collect_env, collect_key, config.random_rollouts, length, action_size, task.low, task.high
    )
    # TRAIN V, then encode every frame
    vae_params = vae.init(vae_key, jnp.zeros((1,) + IMAGE_SHAPE), vae_key)
    vae_params, vae_metrics = fit_vae(vae, vae_params, frames, vae_fit_key, config)
    mu, logvar = encode_episodes(vae, vae_params, frames)
    data = data._replace(mu=mu, logvar=logvar)
    # TRAIN M
    lstm = rnn.initial_carry((1,))
    rnn_params = rnn.init(rnn_key, lstm, jnp.zeros((1, config.z_size)), jnp.zeros((1, action_size)))
    rnn_opt_state = clipped_adam(config.rnn_lr, config.grad_clip).init(rnn_params)
    rnn_metrics = {name: jnp.float32(0.0) for name in ("rnn_loss", "rnn_z_nll", "rnn_reward_loss", "rnn_done_loss")}
    if parts.uses_m:
        rnn_params, rnn_opt_state, rnn_metrics = fit_rnn(rnn, rnn_params, rnn_opt_state, data, rnn_fit_key, config)
    es_state = parts.strategy.init(es_key, jnp.zeros(parts.num_params), es_params(parts, config))
    # Typed as `tell` returns it (evosax starts some fields weakly typed), so `update` compiles once.
    es_state = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=x.dtype), es_state)
    fit_metrics = dict(vae_metrics, **rnn_metrics)
    return WorldModelsState(vae_params, rnn_params, rnn_opt_state, es_state, data, jnp.int32(0), fit_metrics, key)


def refit(parts: Parts, state: WorldModelsState, config) -> WorldModelsState:
    """The iterative procedure: `refit_rollouts` episodes of C's mean replace the oldest stored
    ones, then M trains on for `rnn_steps` steps."""
    collect_key, fit_key, key = jax.random.split(state.key, 3)
    task, rnn = parts.task, parts.rnn
    networks = (parts.vae, state.vae_params, rnn, state.rnn_params)
    mean = jnp.broadcast_to(state.es_state.mean, (config.refit_rollouts, parts.num_params))
    length = task.spec.episode_length
    env = parts.refit_env
    _, new = real_returns(env, networks, mean, collect_key, config, length, task.low, task.high, record=True)
    slots = (state.next_slot + jnp.arange(config.refit_rollouts)) % config.random_rollouts
    data = jax.tree_util.tree_map(lambda old, fresh: old.at[slots].set(fresh), state.data, new)
    rnn_params, rnn_opt_state, metrics = fit_rnn(rnn, state.rnn_params, state.rnn_opt_state, data, fit_key, config)
    next_slot = (state.next_slot + config.refit_rollouts) % config.random_rollouts
    fit_metrics = dict(state.fit_metrics, **metrics)
    return state._replace(
        rnn_params=rnn_params, rnn_opt_state=rnn_opt_state, data=data, next_slot=next_slot,
        fit_metrics=fit_metrics, key=key,
    )  # fmt: skip


def evaluation(parts: Parts, state: WorldModelsState, key, config) -> dict:
    """C's distribution mean, in the real task, over `eval_episodes` episodes in parallel."""
    task = parts.task
    networks = (parts.vae, state.vae_params, parts.rnn, state.rnn_params)
    mean = jnp.broadcast_to(state.es_state.mean, (config.eval_episodes, parts.num_params))
    returns = real_returns(task.eval_env, networks, mean, key, config, task.spec.episode_length, task.low, task.high)
    return {"eval_return": returns.mean(), "eval_return_std": returns.std()}


def make_train(config: Config, env=None) -> Trainer:
    """The training program on the image task `config.env` names, or on `env`, a user's own
    `(environment, EnvSpec)` with 64 x 64 RGB observations and continuous actions: `init` collects
    the random rollouts and fits V, then M; each `update` is one CMA-ES generation."""
    config.validate()
    task = episodes.setup(config, env, auto_reset=False)
    spec = task.spec
    check_task(spec)
    length, action_size = spec.episode_length, spec.action_size
    feature_size = config.z_size + (config.rnn_hidden if config.controller_inputs == "zh" else 0)
    num_params = controller_size(feature_size, action_size)
    candidates = config.population * config.rollouts_per_candidate
    parts = Parts(
        task,
        VAE(config.z_size, config.vae_depth),
        MDNRNN(config.z_size, config.rnn_hidden, config.num_mixtures),
        CMA_ES(config.population, jnp.zeros(num_params)),
        num_params,
        collect_env=task.copies(config.random_rollouts)[0],
        candidate_env=task.copies(candidates)[0] if config.train_in == "real" else None,
        refit_env=task.copies(config.refit_rollouts)[0] if config.refit_every > 0 else None,
        uses_m=config.controller_inputs == "zh" or config.train_in == "dream",
    )
    schedule = Schedule(
        initial_steps=config.random_rollouts * length,
        steps_per_update=candidates * length if config.train_in == "real" else 0,
        updates_per_eval=config.eval_every,
        num_evals=-(-config.generations // config.eval_every),
    )

    def update(state: WorldModelsState, config, update_index):
        if config.refit_every > 0:
            # The update index is the same for every run of a batch, so this stays one branch under vmap.
            due = (update_index > 0) & (update_index % config.refit_every == 0)
            state = jax.lax.cond(due, lambda s: refit(parts, s, config), lambda s: s, state)
        rollout_key, key = jax.random.split(state.key)
        networks = (parts.vae, state.vae_params, parts.rnn, state.rnn_params)

        def rollouts(thetas, key):
            # ROLL OUT every candidate, in the real task or in M's dream
            if config.train_in == "real":
                return real_returns(parts.candidate_env, networks, thetas, key, config, length, task.low, task.high)
            return dream_returns(networks, thetas, state.data, key, config, length, spec.can_terminate)

        es_state, returns = generation(
            parts.strategy, es_params(parts, config), state.es_state, rollout_key, rollouts, config
        )
        metrics = dict(
            state.fit_metrics,
            train_episode_return=returns.mean(),
            best_candidate_return=returns.mean(axis=1).max(),
            cma_sigma=es_state.std,
        )
        return state._replace(es_state=es_state, key=key), metrics

    init, evaluate = functools.partial(initial_state, parts), functools.partial(evaluation, parts)
    return Trainer(init=init, update=update, evaluate=evaluate, schedule=schedule, spec=spec)


# SETTINGS: the Config and its presets


@dataclasses.dataclass(frozen=True)
class Config(RunConfig):
    """World Models settings; the run's (task, evaluation) are RunConfig's, but the budget is
    `generations`."""

    BUDGET: ClassVar[str] = "generations"

    env: str = "cartpole_swingup_pixels"
    """A task with 64 x 64 RGB observations and continuous actions: cartpole_swingup_pixels, pendulum_pixels."""
    total_steps: int = 10_000
    """Not read: world_models.py's budget is `generations` (the environment steps it takes are reported)."""
    initial_steps: int = 0
    """Not read: the random data is `random_rollouts` whole episodes."""
    episode_length: int | None = setting(400, positive=True)
    """Task steps per episode (400 with action repeat 4: 100 decisions of C)."""
    action_repeat: int = setting(4, positive=True)
    """Each of C's actions is held this many task steps."""
    generations: int = setting(40, positive=True)
    """CMA-ES generations, one per update, after the random rollouts and V's and M's fits."""
    eval_every: int = setting(10, positive=True)
    """Generations between evaluations of C's mean in the real task."""
    eval_episodes: int = setting(16, positive=True)
    """Real episodes per evaluation, in parallel."""
    train_in: str = setting("real", choices=("real", "dream"))
    """Where C's candidates are rolled out: the real task, or M's dream (the paper's Doom experiment)."""
    controller_inputs: str = setting("zh", choices=("zh", "z"))
    """C's input: [z, h] (V + M + C), or z alone (the paper's V-only ablation)."""
    # Data
    random_rollouts: int = setting(64, positive=True)
    """Random-policy episodes that V and M are fitted on (the paper: 10,000); also the store's size."""
    refit_every: int = setting(0, within="[0, 1000000]")
    """The iterative procedure: generations between refits of M on new rollouts of C (0: never)."""
    refit_rollouts: int = setting(16, positive=True)
    """Episodes of C's mean collected at each refit, replacing the oldest stored ones."""
    # V
    z_size: int = setting(32, positive=True)
    """Size of z (the paper: 32)."""
    vae_depth: int = setting(8, positive=True)
    """Channels of V's first convolution; the others are 2, 4, 8 times it (the paper: 32)."""
    kl_tolerance: float = setting(0.5, within="[0, 100]")
    """Free bits: the KL term is floored at kl_tolerance * z_size (the authors: 0.5)."""
    vae_lr: float = setting(1e-3, sweepable=True)
    """V's Adam learning rate (the authors: 1e-4 over 10 epochs of 10M frames)."""
    vae_batch_size: int = setting(32, positive=True)
    """Frames per step of V's fit (the authors: 100)."""
    vae_steps: int = setting(500, positive=True)
    """Adam steps of V's fit."""
    # M
    rnn_hidden: int = setting(256, positive=True)
    """Units of M's LSTM (the paper: 256 on CarRacing)."""
    num_mixtures: int = setting(5, positive=True)
    """Gaussians per dimension of z in M's mixture (the paper: 5)."""
    rnn_lr: float = setting(1e-3, sweepable=True)
    """M's Adam learning rate (the authors: 1e-3)."""
    grad_clip: float = setting(1.0, within="(0, 1000]")
    """Each gradient element of M clipped to [-grad_clip, grad_clip] (the authors: 1.0)."""
    rnn_batch_size: int = setting(16, positive=True)
    """Whole episodes per step of M's fit (the authors: 100)."""
    rnn_steps: int = setting(300, positive=True)
    """Adam steps of M's fit (the authors: 4,000), and of each refit."""
    restart_factor: float = setting(10.0, within="[1, 1000]")
    """Weight of the steps that end an episode in the done head's loss (the authors' Doom: 10)."""
    temperature: float = setting(1.0, sweepable=True, within="(0, 10]")
    """tau of M's sampling in the dream (the paper's Doom: 1.15; the authors' doomrnn.py: 1.25)."""
    # C and CMA-ES
    population: int = setting(16, positive=True)
    """CMA-ES candidates per generation (the paper: 64)."""
    rollouts_per_candidate: int = setting(2, positive=True)
    """Episodes each candidate's fitness averages (the paper: 16)."""
    sigma_init: float = setting(0.1, sweepable=True, within="(0, 100]")
    """CMA-ES's initial step size (the authors: 0.1)."""
    weight_decay: float = setting(0.01, sweepable=True, within="[0, 100]")
    """Penalty weight_decay * mean(theta^2) added to the fitness (the authors: 0.01)."""

    def validate(self) -> None:
        super().validate()
        if self.total_steps != 10_000:
            raise ConfigError("world_models.py counts its budget in generations: set --generations, not --total-steps")
        if self.initial_steps != 0:
            raise ConfigError(
                "initial_steps must be 0 for world_models.py: its random data is --random-rollouts episodes"
            )
        if self.population < 2:
            raise ConfigError(f"population must be at least 2 for CMA-ES to rank candidates, got {self.population}")
        if self.refit_every > 0 and self.refit_rollouts > self.random_rollouts:
            raise ConfigError(
                f"refit_rollouts ({self.refit_rollouts}) must not exceed random_rollouts ({self.random_rollouts}), "
                "the number of episodes stored"
            )


# Presets, as data: presets/world_models.toml (the tasks, the paper's sizes, the dream, tiny).
TASKS, VARIANTS = presets.load(__file__)
PRESETS: dict[str, dict[str, Any]] = {**TASKS, **VARIANTS}


def main(argv=None) -> int:
    return runner.main("world_models", Config, PRESETS, make_train, argv)


if __name__ == "__main__":
    sys.exit(main())
