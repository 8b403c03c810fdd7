"""Searches over action sequences [H, A] that score them through a model: CEM (the
cross-entropy method, as handful-of-trials' and mbrl-lib's CEMOptimizer), iCEM (Pinneri et al.,
"Sample-efficient Cross-Entropy Method for Real-time Planning", CoRL 2020, as mbrl-lib's
ICEMOptimizer within one search) and random shooting. Each takes `score_fn(sequences [n, H, A],
key) -> [n]` (higher is better) and returns the plan (and, where it keeps one, its final spread).
PETS, POPLIN and PlaNet plan with them; iLQR, the local search through a differentiable model, is
`mbrlax.ilqr`."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def gaussian_sequences(key, mean, std, n: int, low, high, *, truncated: bool = True):
    """n sequences around `mean` [H, A] with spread `std`, inside the bounds: a normal truncated at 2
    std whose std shrinks so that 2 std stay in bounds (`truncated`), or a normal clipped to them."""
    shape = (n,) + mean.shape
    if truncated:
        std = jnp.minimum(std, jnp.minimum(mean - low, high - mean) / 2.0)
        return mean + std * jax.random.truncated_normal(key, -2.0, 2.0, shape)
    return jnp.clip(mean + std * jax.random.normal(key, shape), low, high)


def coloured_noise(key, shape, beta):
    """Gaussian noise [n, H, A] with power spectrum 1/f^beta along the time axis (axis 1), each
    sample scaled to unit standard deviation over time (colorednoise's `powerlaw_psd_gaussian`
    divides by the theoretical standard deviation instead, so its samples' spreads vary)."""
    n, horizon, action_size = shape
    freqs = jnp.fft.rfftfreq(horizon)
    freqs = freqs.at[0].set(freqs[1] if horizon > 1 else 1.0)
    scale = freqs ** (-beta / 2.0)
    real_key, imag_key = jax.random.split(key)
    spectrum_shape = (n, action_size, freqs.shape[0])
    spectrum = scale * (jax.random.normal(real_key, spectrum_shape) + 1j * jax.random.normal(imag_key, spectrum_shape))
    signal = jnp.fft.irfft(spectrum, n=horizon, axis=-1)
    signal = signal / jnp.maximum(signal.std(axis=-1, keepdims=True), 1e-6)
    return signal.swapaxes(1, 2)


def cem_refit(mean, std, population, returns, elites: int, alpha):
    """One CEM update: the `elites` best sequences of `population` [n, H, A] by `returns` [n]; the new
    mean and variance are alpha * old + (1 - alpha) * the elites' (both references smooth the variance,
    not the standard deviation). Returns (mean, std, elites best first)."""
    _, top = jax.lax.top_k(returns, elites)
    best = population[top]
    mean = alpha * mean + (1.0 - alpha) * best.mean(axis=0)
    std = jnp.sqrt(alpha * std**2 + (1.0 - alpha) * best.var(axis=0))
    return mean, std, best


def cem(score_fn, sample_fn, mean, std, key, *, iterations: int, elites: int, alpha):
    """Cross-entropy method: `iterations` rounds of sampling with `sample_fn(key, mean, std)`, scoring
    with `score_fn(population, key)` (higher is better) and `cem_refit`. Returns the final smoothed
    (mean, std): the mean is the plan, as handful-of-trials' CEMOptimizer (`sol = mean`) and
    mbrl-lib's (`return mu`), not the raw mean of the last elites."""

    def iteration(carry, key):
        mean, std = carry
        sample_key, score_key = jax.random.split(key)
        population = sample_fn(sample_key, mean, std)
        mean, std, _ = cem_refit(mean, std, population, score_fn(population, score_key), elites, alpha)
        return (mean, std), None

    (mean, std), _ = jax.lax.scan(iteration, (mean, std), jax.random.split(key, iterations))
    return mean, std


def icem(
    score_fn,
    mean,
    std,
    key,
    low,
    high,
    *,
    iterations: int,
    population: int,
    elites: int,
    alpha,
    noise_beta: float,
    population_decay: float,
    keep_elites: float,
):
    """iCEM (Pinneri et al. 2020) as mbrl-lib's ICEMOptimizer runs one search: CEM whose samples are
    coloured noise (`coloured_noise`, clipped to the bounds), whose population shrinks to
    ceil(max(population / population_decay^i, 2 elites)) at iteration i, which carries a random
    ceil(`keep_elites` x elites) of its elites into the next iteration, and whose last iteration
    (when there are several) adds the mean itself instead. Returns the smoothed (mean, std), the
    mean as ICEMOptimizer with `return_mean_elites: true`."""
    kept = None
    num_kept = math.ceil(keep_elites * elites)
    # Iterations have different population sizes, so they are unrolled (static shapes each).
    for i, iter_key in enumerate(jax.random.split(key, iterations)):
        sample_key, return_key, keep_key = jax.random.split(iter_key, 3)
        n = math.ceil(max(population / population_decay**i, 2 * elites))
        noise = coloured_noise(sample_key, (n,) + mean.shape, noise_beta)
        samples = jnp.clip(mean + std * noise, low, high)
        if i > 0 and i == iterations - 1:
            samples = jnp.concatenate([samples, mean[None]])
        elif kept is not None:
            samples = jnp.concatenate([samples, kept])
        mean, std, best = cem_refit(mean, std, samples, score_fn(samples, return_key), elites, alpha)
        kept = best[jax.random.permutation(keep_key, elites)[:num_kept]]
    return mean, std


def random_shooting(score_fn, key, low, high, *, population: int, horizon: int):
    """The best of `population` sequences of `horizon` uniformly random actions within the bounds."""
    sample_key, return_key = jax.random.split(key)
    samples = jax.random.uniform(sample_key, (population, horizon) + low.shape, minval=low, maxval=high)
    return samples[jnp.argmax(score_fn(samples, return_key))]
