"""Two-player board games from pgx (an optional extra, `mbrlax[games]`), named `pgx/<id>`: the
protocol next to Brax's is pgx's own State (current_player, observation from the side to move,
legal_action_mask, rewards per player, terminated). `make_game` gives the game; the players here
(uniform random, pure Monte-Carlo tree search with random rollouts, and the perfect player of
tic-tac-toe, by minimax over its 5,478 positions) are the opponents an evaluation plays against."""

from __future__ import annotations

import difflib
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import mctx
import numpy as np

GAMES = ("tic_tac_toe", "connect_four", "othello", "hex", "go_9x9")
"""The pgx games `pgx/<id>` names."""


class Game(NamedTuple):
    """A pgx game: `env.init(key)` and `env.step(state, action)`, for one game (vmap them)."""

    name: str
    env: Any
    num_actions: int
    observation_shape: tuple[int, ...]
    max_moves: int
    """The longest game, in moves (a bound for a game played to its end in one scan)."""


MAX_MOVES = {"tic_tac_toe": 9, "connect_four": 42, "othello": 60 + 4, "hex": 121, "go_9x9": 2 * 81}
"""Moves of the longest game: boards filled (othello's passes and go's captures bound it loosely)."""


def is_game(name: str) -> bool:
    return name.startswith("pgx/")


def not_a_game(name: str, algorithm: str) -> str:
    """One sentence for a task that is no two-player game, naming the closest names there are."""
    from .registry import list_envs

    known = ["pgx/" + game for game in GAMES] + list(list_envs())
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return f"{algorithm} plays two-player games, pgx/<game> ({', '.join(GAMES)}); {name} is none{hint}"


def make_game(name: str, env=None, max_moves: int | None = None) -> Game:
    """The game `pgx/<id>` names, or `env`, a user's own game on pgx's protocol under that name
    (then `max_moves` must bound its length unless the name is a known game's). A ValueError for a
    name that is no game, and one that says how to install pgx where it is missing."""
    game_id = name.removeprefix("pgx/")
    if env is None:
        if not is_game(name) or game_id not in GAMES:
            raise ValueError(not_a_game(name, "the game"))
        try:
            import pgx
        except ImportError:
            raise ValueError(f"{name} needs pgx: pip install 'mbrlax[games]'") from None
        env = pgx.make(game_id)
    else:
        check_protocol(name, env)
    if max_moves is None and game_id not in MAX_MOVES:
        raise ValueError(f"{name}: a game of your own needs max_moves, the longest game in moves")
    bound = max_moves or MAX_MOVES[game_id]
    return Game(name, env, env.num_actions, tuple(env.observation_shape), bound)


PROTOCOL = ("current_player", "observation", "legal_action_mask", "rewards", "terminated")
"""The fields of pgx's State that the search family reads."""


def check_protocol(name: str, env) -> None:
    """A game of your own: its first position must carry pgx's fields and a legal-move mask of one
    boolean per move, with at least one move legal. A ValueError says which is not so."""
    state = env.init(jax.random.PRNGKey(0))
    missing = [field for field in PROTOCOL if not hasattr(state, field)]
    if missing:
        raise ValueError(f"{name}: a game of your own follows pgx's protocol; its state has no {', '.join(missing)}")
    mask = np.asarray(state.legal_action_mask)
    if mask.shape != (env.num_actions,) or mask.dtype != bool:
        raise ValueError(
            f"{name}: legal_action_mask must be {env.num_actions} booleans (one per move), got {mask.dtype} of shape {mask.shape}"
        )
    if not mask.any():
        raise ValueError(f"{name}: the first position's legal_action_mask allows no move")


def legal_or_any(states):
    """The legal moves, or every move where the game has ended (a search needs one; it is not played)."""
    return states.legal_action_mask | states.terminated[:, None]


def mover_reward(states, mover):
    """Each game's reward for the player `mover` [B] (pgx gives one reward per player)."""
    return jnp.take_along_axis(states.rewards, mover[:, None], axis=-1)[:, 0]


# SYMMETRIES: a board seen rotated or mirrored is the same position, with its moves permuted.


class Symmetries(NamedTuple):
    """A game's symmetries as permutations: transform k puts the board's cell `cells[k, j]` at cell j
    (cells in row-major order) and the move `actions[k, j]` at move j."""

    cells: np.ndarray
    """[S, H * W]"""
    actions: np.ndarray
    """[S, A]"""


def _dihedral(n: int, extra_actions: int) -> Symmetries:
    """The 8 rotations and reflections of an n x n board whose moves are its cells, then
    `extra_actions` moves (a pass) that no symmetry moves."""
    board = np.arange(n * n).reshape(n, n)
    views = [np.rot90(board, r) for r in range(4)]
    cells = np.stack([v.reshape(-1) for v in views + [np.fliplr(v) for v in views]])
    extra = np.broadcast_to(np.arange(n * n, n * n + extra_actions), (8, extra_actions))
    return Symmetries(cells, np.concatenate([cells, extra], axis=1))


def _mirror(height: int, width: int) -> Symmetries:
    """The identity and the left-right mirror of a board whose moves are its columns (Connect Four)."""
    board = np.arange(height * width).reshape(height, width)
    cells = np.stack([board.reshape(-1), board[:, ::-1].reshape(-1)])
    return Symmetries(cells, np.stack([np.arange(width), np.arange(width)[::-1]]))


SYMMETRIES = {
    "tic_tac_toe": lambda: _dihedral(3, 0),
    "connect_four": lambda: _mirror(6, 7),
    "othello": lambda: _dihedral(8, 1),
    "go_9x9": lambda: _dihedral(9, 1),
}
"""The games whose symmetries are known here; hex (a rhombus: only the half turn) and a game of your
own have none."""


def symmetries(game: Game) -> Symmetries | None:
    """The game's symmetries, or None where none is known."""
    game_id = game.name.removeprefix("pgx/")
    return SYMMETRIES[game_id]() if game_id in SYMMETRIES else None


def apply_symmetry(table: Symmetries, k, observation, policy):
    """Position b of a batch (observation [B, H, W, C], policy [B, A]) seen through symmetry k[b]."""
    batch, height, width, channels = observation.shape
    flat = observation.reshape(batch, height * width, channels)
    cells, actions = jnp.asarray(table.cells)[k], jnp.asarray(table.actions)[k]
    flat = jnp.take_along_axis(flat, cells[..., None], axis=1)
    return flat.reshape(observation.shape), jnp.take_along_axis(policy, actions, axis=1)


def random_symmetry(game: Game, key, observation, policy):
    """Each position of a batch seen through one of the game's symmetries, drawn uniformly and
    independently (`apply_symmetry`); unchanged where the game has none."""
    table = symmetries(game)
    if table is None:
        return observation, policy
    k = jax.random.randint(key, observation.shape[:1], 0, len(table.cells))
    return apply_symmetry(table, k, observation, policy)


# OPPONENTS: (state, key) -> action for a batch of states; every one plays a legal move.


def random_player(state, key):
    """A legal move uniformly at random, for each state of the batch."""
    logits = jnp.where(state.legal_action_mask, 0.0, -jnp.inf)
    return jax.random.categorical(key, logits, axis=-1)


def rollout_outcome(game: Game, states, key) -> jax.Array:
    """The outcome [B] (+1, 0, -1) for the side to move in each state when both sides play uniformly
    random moves to the game's end (0 where it has already ended: pgx's step is then a no-op)."""
    player = states.current_player

    def move(carry, move_key):
        states, total = carry
        states = jax.vmap(game.env.step)(states, random_player(states, move_key))
        return (states, total + mover_reward(states, player)), None

    keys = jax.random.split(key, game.max_moves)
    (_, total), _ = jax.lax.scan(move, (states, jnp.zeros(player.shape)), keys)
    return total


def mcts_player(game: Game, simulations: int):
    """Pure Monte-Carlo tree search: each leaf valued by one random rollout (`rollout_outcome`), a
    uniform prior over the legal moves, no network; mctx's PUCT (c = 1.25) with no root noise, and
    the most visited move is played. Returns a player `(states, key) -> actions`."""

    def uniform(states):
        return jnp.where(legal_or_any(states), 0.0, jnp.finfo(jnp.float32).min)

    def recurrent_fn(params, key, action, states):
        del params
        mover = states.current_player
        states = jax.vmap(game.env.step)(states, action)
        ended = states.terminated
        output = mctx.RecurrentFnOutput(
            reward=mover_reward(states, mover),
            discount=jnp.where(ended, 0.0, -1.0),
            prior_logits=uniform(states),
            value=jnp.where(ended, 0.0, rollout_outcome(game, states, key)),
        )
        return output, states

    def player(states, key):
        value_key, search_key = jax.random.split(key)
        root = mctx.RootFnOutput(prior_logits=uniform(states), value=rollout_outcome(game, states, value_key), embedding=states)
        invalid = ~legal_or_any(states)
        output = mctx.muzero_policy(
            None, search_key, root, recurrent_fn, simulations, invalid_actions=invalid, dirichlet_fraction=0.0, temperature=0.0
        )
        return output.action

    return player


@functools.cache
def perfect_tic_tac_toe_moves() -> np.ndarray:
    """[3^9, 9] bool: for each board (cell i's digit in base 3, 0 empty, 1 the side to move, 2 the
    other), the moves that keep the minimax value, found by exhaustive search from every board
    reachable in play. A board not reachable in play has no move marked."""
    lines = [(0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6)]
    table = np.zeros((3**9, 9), bool)

    def won(board, mark):
        return any(all(board[i] == mark for i in line) for line in lines)

    @functools.cache
    def value(board: tuple) -> int:
        """The value for the side to move (marked 1): +1 win, 0 draw, -1 loss, with perfect play."""
        if won(board, 2):
            return -1
        moves = [i for i in range(9) if board[i] == 0]
        if not moves:
            return 0
        outcomes = {}
        for i in moves:
            after = tuple(2 if c == 1 else 1 if c == 2 else 0 for c in board[:i] + (1,) + board[i + 1 :])
            outcomes[i] = -value(after)  # the board as the opponent, now to move, sees it
        best = max(outcomes.values())
        index = sum(c * 3**k for k, c in enumerate(board))
        for i, outcome in outcomes.items():
            table[index, i] = outcome == best
        return best

    value((0,) * 9)  # the side to move first
    value((0, 0, 0, 0, 2, 0, 0, 0, 0))  # and every board reached after any first move, from the other side
    for first in range(9):
        board = [0] * 9
        board[first] = 2
        value(tuple(board))
    return table


def perfect_tic_tac_toe_player(state, key):
    """A move that keeps tic-tac-toe's minimax value, uniformly among them, for each state: pgx's
    observation [3, 3, 2] holds the side to move's marks in channel 0, the other's in channel 1."""
    table = jnp.asarray(perfect_tic_tac_toe_moves())
    cells = state.observation.reshape(state.observation.shape[0], 9, 2).astype(jnp.int32)
    index = ((cells[..., 0] + 2 * cells[..., 1]) * 3 ** jnp.arange(9)).sum(axis=-1)
    good = table[index] & state.legal_action_mask
    logits = jnp.where(good, 0.0, -jnp.inf)
    return jax.random.categorical(key, logits, axis=-1)
