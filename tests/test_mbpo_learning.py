"""MBPO learns pendulum on a CPU, and beats SAC without the model at the same number of steps."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from mbrlax.algorithms import mbpo


def eval_returns(config: mbpo.Config, seed: int = 0) -> np.ndarray:
    trainer = mbpo.make_train(config)
    _, metrics = jax.jit(trainer)(jax.random.PRNGKey(seed), config)
    return np.asarray(metrics["eval"]["eval_return"])


@pytest.mark.slow
def test_mbpo_learns_pendulum_and_beats_sac():
    """The issue's bar, -250 or better within 5,000 steps (a random policy scores about -1200), met
    within 3,000: the default pendulum settings, 1,000 random steps and 2,000 of learning, then five
    episodes of the deterministic policy. The baseline is the paper's: SAC with one update per step,
    the same networks, the same random steps and the same budget."""
    config = dataclasses.replace(mbpo.Config(), total_steps=3000, eval_every=2000)
    mbpo_returns = eval_returns(config)
    sac_returns = eval_returns(dataclasses.replace(config, sac_only=True, updates_per_step=1))
    print(f"MBPO {mbpo_returns.round(1)}, SAC {sac_returns.round(1)}")
    assert len(mbpo_returns) == 1
    assert mbpo_returns[-1] >= -250.0, mbpo_returns
    # A clear margin: the two differ by several hundred here, while seeds of one method differ by
    # tens once pendulum is swung up.
    assert mbpo_returns[-1] > sac_returns[-1] + 300.0, (mbpo_returns, sac_returns)
