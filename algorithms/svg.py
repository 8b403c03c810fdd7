"""SVG: stochastic value gradients (Heess et al. 2015; SAC-SVG(H), Amos et al. 2021), run by maac.py.

The actor follows the gradient of a return it computes through a learned, reparameterised model and
closes with a learned critic. The family shares one implementation with MAAC, whose file has the
math and says where each variant differs from its paper. This entry point runs SAC-SVG(H) (H = 3,
critic on real data only) unless a variant preset says otherwise:

    python algorithms/svg.py --env pendulum                   # SAC-SVG(3)
    python algorithms/svg.py --env pendulum --preset svg1     # SVG(1): one model step, then the critic
    python algorithms/svg.py --env pendulum --preset svg0     # SVG(0): no model (SAC)
    python algorithms/svg.py --env pendulum --horizon 5       # SAC-SVG(5)
"""

from __future__ import annotations

import sys

from mbrlax.algorithms import maac

# Every task's preset with the SAC-SVG variant on top; the variants themselves to switch between.
PRESETS = {
    **{task: {**settings, **maac.VARIANTS["sac-svg"]} for task, settings in maac.TASKS.items()},
    **maac.VARIANTS,
}


def main(argv=None) -> int:
    return maac.main(argv, algorithm="svg", presets=PRESETS)


if __name__ == "__main__":
    sys.exit(main())
