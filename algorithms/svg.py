"""SVG: stochastic value gradients (Heess et al., "Learning Continuous Control Policies by Stochastic Value
Gradients", NeurIPS 2015) and SAC-SVG(H) (Amos et al., "On the model-based stochastic value gradient for
continuous reinforcement learning", L4DC 2021), on the pathwise Dyna loop it shares with MAAC.

The actor follows the gradient of a return it computes through a learned, reparameterised model and closes
with a learned critic: J(theta) of mbrlax.loops.pathwise, which runs this family and MAAC with one
implementation and has the math. This entry point runs SAC-SVG(H) unless a variant preset (svg0, svg1, maac) says otherwise. H counts
as the SAC-SVG authors count it (facebookresearch/svg, svg/dx.py and svg/agent.py): H actions, H - 1 model
steps, the critic at the H-th action, which is `--horizon H-1` here.

Departures from the papers and the authors' code (the most important; the rest on maac.md):
- SVG(1) bootstraps from the soft twin Q with fresh noise; SVG(1)-ER's noise inference is not done.
- SAC-SVG's deterministic GRU model is MBPO's probabilistic ensemble here, refitted every model period.
- Only the ensemble normalises its inputs; the actor and critics see raw observations.
- On pendulum a task's preset is SAC-SVG(3)'s method at MAAC's small pendulum scale, not their regime.

Provenance, every departure, presets and commands: docs/algorithms/svg.md.
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
    return pathwise.make_train(config, env, name="SVG")


# SETTINGS: the Config and its presets


@dataclasses.dataclass(frozen=True)
class Config(pathwise.PathwiseConfig):
    """SVG settings: the Dyna loop's (the data loop and the critic) and the pathwise actor's."""


# Presets, as data: presets/svg.toml, every task's preset MAAC's with SAC-SVG on top (the authors'
# regime where they ran the task, the method alone on pendulum), and MAAC's variants; built from the
# family's parts in presets/pathwise.toml.
TASKS, VARIANTS = presets.load(__file__)
PRESETS: dict[str, dict[str, Any]] = {**TASKS, **VARIANTS}


def main(argv=None) -> int:
    return runner.main("svg", Config, PRESETS, functools.partial(pathwise.make_train, name="svg.py"), argv)


if __name__ == "__main__":
    sys.exit(main())
