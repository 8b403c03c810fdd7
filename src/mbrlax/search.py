"""Tree search with a model, by DeepMind's mctx (batched and jittable): PUCT with Dirichlet noise at
the root, as AlphaZero and MuZero (`mctx.muzero_policy`), or Gumbel search (Danihelka et al. 2022:
Gumbel top-k at the root, sequential halving, completed Q-values; `mctx.gumbel_muzero_policy`).
Two players are one tree whose discount is -1: a value is always the side to move's."""

from __future__ import annotations

from typing import Callable

import jax
import mctx

SEARCHES = ("puct", "gumbel")


def search(
    kind: str,
    params,
    key: jax.Array,
    root: mctx.RootFnOutput,
    recurrent_fn: Callable,
    num_simulations: int,
    invalid_actions: jax.Array,
    *,
    dirichlet_fraction: float = 0.25,
    dirichlet_alpha: float = 0.3,
    temperature: float = 1.0,
    max_considered_actions: int = 16,
    gumbel_scale: float = 1.0,
) -> mctx.PolicyOutput:
    """One search from each root of the batch. `recurrent_fn(params, key, action, embedding) ->
    (mctx.RecurrentFnOutput, embedding)` steps the model. PUCT: the action is drawn from the visit
    counts at `temperature` (0: the most visited) and `action_weights` are the visit frequencies;
    Gumbel: the action is sequential halving's winner and `action_weights` the improved policy
    (softmax of the prior logits plus the completed Q-values' transform); `gumbel_scale` 0 drops the
    Gumbel noise, so the winner is the deterministic choice (evaluation)."""
    if kind == "gumbel":
        return mctx.gumbel_muzero_policy(
            params,
            key,
            root,
            recurrent_fn,
            num_simulations,
            invalid_actions=invalid_actions,
            max_num_considered_actions=max_considered_actions,
            qtransform=mctx.qtransform_completed_by_mix_value,
            gumbel_scale=gumbel_scale,
        )
    return mctx.muzero_policy(
        params,
        key,
        root,
        recurrent_fn,
        num_simulations,
        invalid_actions=invalid_actions,
        dirichlet_fraction=dirichlet_fraction,
        dirichlet_alpha=dirichlet_alpha,
        temperature=temperature,
    )
