"""SVG: stochastic value gradients (Heess et al. 2015; SAC-SVG(H), Amos et al. 2021), run by maac.py.

The actor follows the gradient of a return it computes through a learned, reparameterised model and
closes with a learned critic. The family shares one implementation with MAAC, whose file has the
math and says where each variant differs from its paper. This entry point runs SAC-SVG(H) unless a
variant preset says otherwise. H counts as the SAC-SVG authors count it (facebookresearch/svg,
svg/dx.py and svg/agent.py): H actions, H - 1 model steps, the critic at the H-th action, which is
`--horizon H-1` here. On the Brax tasks of their paper (hopper, walker2d, halfcheetah) a task's preset
is their regime (config/train.yaml and config/env/mbpo_*.yaml: one update per step, 10,000 steps of
model-free warm-up, 4 x 512 networks at learning rate 1e-4, batches of 1024, initial temperature 0.1,
the task's target-entropy schedule and budget); on pendulum it is SAC-SVG(3)'s method at MAAC's small
pendulum scale, and `--preset sac-svg` gives their regime on any task:

    python algorithms/svg.py --env pendulum                   # SAC-SVG(3), pendulum-sized
    python algorithms/svg.py --env brax/hopper                # SAC-SVG(3), the authors' Hopper run
    python algorithms/svg.py --env pendulum --preset svg1     # SVG(1): one model step, then the critic
    python algorithms/svg.py --env pendulum --preset svg0     # SVG(0): no model, exactly SAC
    python algorithms/svg.py --env pendulum --horizon 4       # SAC-SVG(5)
"""

from __future__ import annotations

import sys

from mbrlax.algorithms import maac

# Every task's preset with SAC-SVG on top (the authors' regime where they ran the task, the method
# alone on pendulum); the variants themselves to switch between.
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
