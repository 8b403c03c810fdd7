"""MBPO: model-based policy optimization (Janner, Fu, Zhang, Levine, "When to Trust Your Model:
Model-Based Policy Optimization", NeurIPS 2019).

SAC learns the policy, mostly from data a learned model makes up. Every `model_train_freq` real steps a
probabilistic ensemble is refitted on all real data; then branched rollouts of k steps start from real
states (the policy acts, a random elite predicts next state and reward) and fill a model buffer that
keeps the newest rollouts. k grows with the epoch, as a better model can be trusted further:

    k(epoch) = floor(k_a + clip((epoch - epoch_a) / (epoch_b - epoch_a), 0, 1) * (k_b - k_a))

After every real step SAC takes G gradient steps on batches whose first floor(real_ratio x batch) rows
are real and the rest imagined. `--sac-only` turns the model off (SAC at the same G); plain SAC is
`--sac-only --updates-per-step 1`.

Departures from the paper's code (the most important; why, and the rest, on the page):
- A random elite per sample is a random split of the rollout batch into equal groups, one per elite.
- The model buffer has a fixed capacity for the longest rollouts; sampling reads the paper's pool exactly.
- The ensemble: one weight decay, fixed log-variance bounds, LeCun-normal weights, standardised targets.
- Model fits stop after 5 epochs without a 1 % holdout gain, and after `model_max_epochs` at most.
- Brax's tasks, not gym MuJoCo's: other observations (ant, humanoid untruncated) and physics.

Provenance, every departure, presets and commands: docs/algorithms/mbpo.md.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from mbrlax import presets, runner
from mbrlax.loops import dyna
from mbrlax.training import Trainer

# MATH: the rollout schedule, the branched rollouts and the mixed batches are the Dyna loop's as MBPO
# defined it (mbrlax.loops.dyna: rollout_length, branched_rollouts, training_batch).


def make_train(config: Config, env=None, name: str = "MBPO") -> Trainer:
    """The training program, on the task `config.env` names or on `env`, a user's own `(environment,
    EnvSpec)`: the Dyna loop with none of its parts changed."""
    return dyna.make_train(config, env, dyna.DynaParts(), name=name)


# SETTINGS: the Config and its presets


@dataclasses.dataclass(frozen=True)
class Config(dyna.DynaConfig):
    """MBPO settings: the Dyna loop's, as they stand (mbrlax.loops.dyna.DynaConfig)."""


# Presets, as data: presets/mbpo.toml (a task's settings, and variants of the method and sizes).
TASKS, VARIANTS = presets.load(__file__)
PRESETS: dict[str, dict[str, Any]] = {**TASKS, **VARIANTS}


def main(argv=None) -> int:
    return runner.main("mbpo", Config, PRESETS, make_train, argv)


if __name__ == "__main__":
    sys.exit(main())
