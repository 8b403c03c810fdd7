"""Tree search with a model, by DeepMind's mctx (batched and jittable): PUCT with Dirichlet noise at
the root, as AlphaZero and MuZero (`mctx.muzero_policy`), or Gumbel search (Danihelka et al. 2022:
Gumbel top-k at the root, sequential halving, completed Q-values; `mctx.gumbel_muzero_policy`).
Two players are one tree whose discount is -1: a value is always the side to move's."""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import mctx

from mbrlax.config import setting

SEARCHES = ("puct", "gumbel")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """The search's settings, declared once. The Config of every algorithm that plans by tree search
    extends this class, changing defaults only, and `search` reads these fields from it."""

    search: str = setting("puct", choices=SEARCHES)
    """"puct" (AlphaZero's and MuZero's, Dirichlet noise at the root) or "gumbel" (Gumbel search, few simulations)."""
    num_simulations: int = setting(32, positive=True)
    """Simulations per move while acting (self-play, or the environment's steps)."""
    eval_simulations: int = setting(32, positive=True)
    """Simulations per move in evaluation."""
    dirichlet_alpha: float = setting(0.3, positive=True)
    """Root noise Dir(alpha) (AlphaZero: 0.3 chess, 0.15 shogi, 0.03 Go; MuZero on Atari: 0.25)."""
    dirichlet_fraction: float = setting(0.25, within="[0, 1]")
    """Share of the root prior that is noise (AlphaZero and MuZero: 0.25)."""
    max_considered_actions: int = setting(16, positive=True)
    """Gumbel search: moves sampled at the root (Gumbel top-k); at most the legal ones are."""


def search(
    config: SearchConfig,
    params,
    key: jax.Array,
    root: mctx.RootFnOutput,
    recurrent_fn: Callable,
    num_simulations: int,
    invalid_actions: jax.Array | None,
    *,
    explore: bool,
    temperature: float = 1.0,
) -> mctx.PolicyOutput:
    """One search from each root of the batch, of the kind `config.search` names.
    `recurrent_fn(params, key, action, embedding) -> (mctx.RecurrentFnOutput, embedding)` steps the
    model. PUCT: `action_weights` are the visit frequencies, and the action is drawn from the visit
    counts at `temperature` when exploring (with the root's Dirichlet noise), else the most visited.
    Gumbel: `action_weights` are the improved policy (softmax of the prior logits plus the completed
    Q-values' transform) and the action is sequential halving's winner, with Gumbel noise when
    exploring and without (the deterministic choice) in evaluation."""
    if config.search == "gumbel":
        return mctx.gumbel_muzero_policy(
            params,
            key,
            root,
            recurrent_fn,
            num_simulations,
            invalid_actions=invalid_actions,
            max_num_considered_actions=min(config.max_considered_actions, root.prior_logits.shape[-1]),
            qtransform=mctx.qtransform_completed_by_mix_value,
            gumbel_scale=1.0 if explore else 0.0,
        )
    return mctx.muzero_policy(
        params,
        key,
        root,
        recurrent_fn,
        num_simulations,
        invalid_actions=invalid_actions,
        dirichlet_fraction=config.dirichlet_fraction if explore else 0.0,
        dirichlet_alpha=config.dirichlet_alpha,
        temperature=temperature if explore else 0.0,
    )
