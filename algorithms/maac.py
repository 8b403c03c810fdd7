"""MAAC: model-augmented actor-critic (Clavera, Fu, Abbeel, "Model-Augmented Actor-Critic: Backpropagating
through Paths", ICLR 2020), with the stochastic value gradient family as presets: SVG(0) and SVG(1) (Heess et al.,
"Learning Continuous Control Policies by Stochastic Value Gradients", NeurIPS 2015) and SAC-SVG(H) (Amos et al.,
"On the model-based stochastic value gradient for continuous reinforcement learning", L4DC 2021).

The actor climbs an H-step return computed through the learned model and differentiated end to end along the
path: the policy draws a_t = tanh(mu(s_t) + sigma(s_t) * eps_t), a random elite s_{t+1} = s_t + mu_f(s_t, a_t)
+ sigma_f(s_t, a_t) * xi_t, the reward r(s_t, a_t, s_{t+1}) is differentiable, and the twin soft Q closes the sum:

    J(theta) = E[ sum_{t<H} gamma^t (r_t - alpha log pi(a_t|s_t))
                  + gamma^H (min_i Q_i(s_H, a_H) - alpha log pi(a_H|s_H)) ]

with gamma^t zero after a predicted termination; H = 0 is SAC's own actor. The objective, the presets the
family shares and the loop are in mbrlax.loops.pathwise, on the Dyna loop (loops.dyna).
SAC-SVG's code counts actions: their SAC-SVG(H) is `--horizon H-1` here.

Departures from the papers and the authors' code (the most important; why, and the rest, on the page):
- Termination is the task's known function, a mask in J that is not differentiated (a step function).
- The reward in J is the task's own function where it has one; `--no-known-reward` uses the model's reward head.
- Each imagined step sends every start state through its own random elite, not one member for the batch.
- Actor and critic gradients are clipped to a global norm of 5 by default: our choice, from no paper.
- SAC-SVG's deterministic GRU model is MBPO's probabilistic ensemble here, refitted every model period.

Provenance, every departure, presets and commands: docs/algorithms/maac.md.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any

from mbrlax import presets, runner
from mbrlax.loops import pathwise
from mbrlax.training import Trainer


def make_train(config: Config, env=None) -> Trainer:
    """The training program, on the task `config.env` names or on `env`, a user's own `(environment,
    EnvSpec)`."""
    return pathwise.make_train(config, env, name="MAAC")


# SETTINGS: the Config and its presets


@dataclasses.dataclass(frozen=True)
class Config(pathwise.PathwiseConfig):
    """MAAC settings: the Dyna loop's (the data loop and the critic) and the pathwise actor's."""


# Presets, as data: presets/maac.toml (a task's settings, and variants of the method and sizes),
# built from the family's parts in presets/pathwise.toml.
TASKS, VARIANTS = presets.load(__file__)
PRESETS: dict[str, dict[str, Any]] = {**TASKS, **VARIANTS}


def main(argv=None) -> int:
    return runner.main("maac", Config, PRESETS, functools.partial(pathwise.make_train, name="maac.py"), argv)


if __name__ == "__main__":
    sys.exit(main())
