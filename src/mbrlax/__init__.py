"""mbrlax: model-based reinforcement learning in JAX."""

__version__ = "0.1.0"


def sweep(algorithm, env, grid=None, seeds=1, **kwargs):
    """A grid of hyperparameters x seeds of one algorithm, as few compiled programs as the grid
    allows; see `mbrlax.sweeps.sweep`. Imported on first use so `import mbrlax` stays light."""
    from mbrlax.sweeps import sweep as run_sweep

    return run_sweep(algorithm, env, grid, seeds, **kwargs)
