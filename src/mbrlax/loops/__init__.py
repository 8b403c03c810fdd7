"""The loops several algorithms share, each taking a typed NamedTuple of pure functions: `dyna`, the
Dyna loop of MBPO, MAAC, SVG, STEVE and M2AC (refits, branched rollouts, G agent updates a step)."""
