"""The loops several algorithms share, each taking a typed NamedTuple of pure functions: `dyna`, the
Dyna loop of MBPO, STEVE and M2AC (refits, branched rollouts, G agent updates a step); `pathwise`,
the Dyna loop with a pathwise actor (MAAC, SVG); `mpc`, the MPC loop of PETS and POPLIN (fit, then
plan and act with a `Planner`); `sequence`, the acting side Dreamer and PlaNet share (a filtered
latent per environment, sequence replay)."""
