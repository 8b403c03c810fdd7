"""The loops several algorithms share, each taking a typed NamedTuple of pure functions: `dyna`, the
Dyna loop of MBPO, MAAC, SVG, STEVE and M2AC (refits, branched rollouts, G agent updates a step);
`sequence`, the acting side Dreamer and PlaNet share (a filtered latent per environment, sequence
replay)."""
