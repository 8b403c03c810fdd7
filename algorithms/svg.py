"""SVG: stochastic value gradients (Heess et al., "Learning Continuous Control Policies by Stochastic Value
Gradients", NeurIPS 2015) and SAC-SVG(H) (Amos et al., "On the model-based stochastic value gradient for
continuous reinforcement learning", L4DC 2021), run by maac.py.

The actor follows the gradient of a return it computes through a learned, reparameterised model and closes
with a learned critic: J(theta) of maac.py, which runs this family and MAAC with one implementation and has
the math. This entry point runs SAC-SVG(H) unless a variant preset (svg0, svg1, maac) says otherwise. H counts
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

import sys

from mbrlax.algorithms import maac

# Every task's preset with SAC-SVG on top (the authors' regime where they ran the task, the method
# alone on pendulum); each preset's provenance: docs/algorithms/svg.md, "Presets".
TASKS = {
    **{
        task: {**settings, **maac.VARIANTS["sac-svg"], **maac.SAC_SVG_TASKS.get(task, {})}
        for task, settings in maac.TASKS.items()
    },
    "pendulum": {**maac.TASKS["pendulum"], **maac.SAC_SVG_METHOD},
}
# MAAC's variants; tiny keeps SAC-SVG's method (no model data for the critic) at MAAC's tiny sizes.
VARIANTS = {**maac.VARIANTS, "tiny": {**maac.VARIANTS["tiny"], **maac.SAC_SVG_METHOD}}
PRESETS = {**TASKS, **VARIANTS}


def main(argv=None) -> int:
    return maac.main(argv, algorithm="svg", presets=PRESETS)


if __name__ == "__main__":
    sys.exit(main())
