"""The self-play loop of the search family (AlphaZero, ExIt) on two-player games: a batch of games
played from their first move to their end in one scan, each move chosen by a search, and every
position labelled with the final outcome z for the side to move there; matches against fixed
opponents (uniform random, a perfect player) for evaluation.

Rewards come only when a game ends, so the value target of the position at move t is

    z_t = sum_s r_s[player_t]   (+1 win, 0 draw, -1 loss for the side to move at t)

and a position after the game's end is no position (`alive` is 0 there).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


class Positions(NamedTuple):
    """The positions of a batch of games, [T, B, ...] (T: the game's longest length in moves)."""

    observation: jax.Array
    """The board from the side to move's view."""
    policy: jax.Array
    """[T, B, A]: the search's policy there (its action weights), the policy target."""
    outcome: jax.Array
    """[T, B]: z, the game's final outcome for the side to move there."""
    alive: jax.Array
    """[T, B]: 1 where the game had not ended before this move."""


def play_games(game, choose: Callable, key: jax.Array, num_games: int) -> tuple[Positions, dict]:
    """`num_games` games from their start to their end. `choose(states, move, key) -> (actions [B],
    policy [B, A])` plays every move. Returns the positions and the games' statistics: the share the
    first mover won, drew and lost, and the mean length in moves."""
    init_key, moves_key = jax.random.split(key)
    states = jax.vmap(game.env.init)(jax.random.split(init_key, num_games))
    first_mover = states.current_player

    def move(carry, inputs):
        states, totals = carry
        t, move_key = inputs
        actions, policy = choose(states, t, move_key)
        alive = 1.0 - states.terminated.astype(jnp.float32)
        record = (states.observation, policy, states.current_player, alive)
        states = jax.vmap(game.env.step)(states, actions)
        return (states, totals + states.rewards), record

    steps = (jnp.arange(game.max_moves), jax.random.split(moves_key, game.max_moves))
    (_, totals), (observation, policy, player, alive) = jax.lax.scan(
        move, (states, jnp.zeros((num_games, 2))), steps
    )
    outcome = totals[jnp.arange(num_games), player]  # [T, B]: game b's total for the player to move at t
    first = jnp.take_along_axis(totals, first_mover[:, None], axis=-1)[:, 0]
    stats = dict(
        first_mover_win=(first > 0).mean(),
        draw=(first == 0).mean(),
        first_mover_loss=(first < 0).mean(),
        game_length=alive.sum(axis=0).mean(),
    )
    return Positions(observation, policy, outcome, alive), stats


def play_match(game, agent: Callable, opponent: Callable, key: jax.Array, num_games: int, agent_first: bool):
    """The agent's outcome [B] (+1, 0, -1) in `num_games` games against `opponent`, moving first or
    second. Both are `(states, key) -> actions [B]`."""
    init_key, moves_key = jax.random.split(key)
    states = jax.vmap(game.env.init)(jax.random.split(init_key, num_games))
    agent_id = states.current_player if agent_first else 1 - states.current_player

    def move(carry, move_key):
        states, outcome = carry
        agent_key, opponent_key = jax.random.split(move_key)
        actions = jnp.where(
            states.current_player == agent_id, agent(states, agent_key), opponent(states, opponent_key)
        )
        states = jax.vmap(game.env.step)(states, actions)
        outcome = outcome + jnp.take_along_axis(states.rewards, agent_id[:, None], axis=-1)[:, 0]
        return (states, outcome), None

    (_, outcome), _ = jax.lax.scan(
        move, (states, jnp.zeros(num_games)), jax.random.split(moves_key, game.max_moves)
    )
    return outcome
