"""AlphaZero (Silver et al., "A general reinforcement learning algorithm that masters chess, shogi, and
Go through self-play", Science 2018) and Expert Iteration (Anthony, Tian and Barber, "Thinking Fast
and Slow with Deep Learning and Tree Search", NeurIPS 2017) as a preset, on pgx's board games.

The game's own rules are the model. A network f_theta(s) = (p, v) guides a tree search (PUCT with
Dirichlet noise at the root, or Gumbel search, by mctx); self-play picks each move from the search's
visit counts pi (sampled for the first `temperature_moves` moves, then the most visited), and every
position is labelled with the game's final outcome z for the side to move. Then

    l(theta) = (z - v)^2 - pi^T log p + c ||theta||^2

on positions drawn from the replay. ExIt (`--preset exit`) trains its apprentice on the expert's
tree-policy targets from the current iteration's games only, where AlphaZero keeps a replay.

Departures from the papers (the rest, and why, on the page):
- The network is a small MLP or residual net without batch normalisation, trained with Adam.
- Games are played in batches to their end in one program; each iteration's games start afresh.
- ExIt's value network is this one network's value head, trained with the policy (as AlphaZero).

Provenance, every departure, presets and commands: docs/algorithms/alphazero.md.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import mctx
import optax

from mbrlax import buffer as replay
from mbrlax import presets, runner
from mbrlax.config import RunConfig, setting
from mbrlax.envs import games
from mbrlax.loops import selfplay
from mbrlax.search import SearchConfig, search
from mbrlax.training import ConfigError, Trainer, adam, gradient_update, make_schedule

# THE LOSS


def alphazero_loss(logits, value, policy_target, outcome):
    """(z - v)^2 - pi^T log p, averaged over the positions; the L2 term is `l2_penalty`'s. Returns the
    loss and its two parts."""
    value_loss = ((outcome - value) ** 2).mean()
    policy_loss = optax.softmax_cross_entropy(logits, policy_target).mean()
    return value_loss + policy_loss, (value_loss, policy_loss)


def l2_penalty(params) -> jax.Array:
    """||theta||^2 over the weights (kernels), not the biases, as weight decay usually is."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return sum(jnp.sum(x**2) for path, x in leaves if "kernel" in jax.tree_util.keystr(path))


# THE NETWORK: p (logits over moves) and v in [-1, 1], from the side to move's view.


class PolicyValueNet(nn.Module):
    num_actions: int
    kind: str = "mlp"
    width: int = 64
    blocks: int = 2

    @nn.compact
    def __call__(self, observation):
        x = observation.astype(jnp.float32)
        if self.kind == "resnet":
            x = nn.relu(nn.Conv(self.width, (3, 3))(x))
            for _ in range(self.blocks):
                y = nn.relu(nn.Conv(self.width, (3, 3))(x))
                x = nn.relu(x + nn.Conv(self.width, (3, 3))(y))
            x = x.reshape(x.shape[0], -1)
        else:
            x = x.reshape(x.shape[0], -1)
            for _ in range(self.blocks):
                x = nn.relu(nn.Dense(self.width)(x))
        logits = nn.Dense(self.num_actions)(x)
        value = jnp.tanh(nn.Dense(1)(x))[..., 0]
        return logits, value


# SEARCH with the game's rules as the model


def masked_logits(logits, legal):
    return jnp.where(legal, logits - logits.max(axis=-1, keepdims=True), jnp.finfo(logits.dtype).min)


def rules_step(game, net: PolicyValueNet, params, key, action, states):
    """mctx's recurrent function: the game's own step, then f_theta at the new position; the reward is
    the mover's, and the discount -1 hands the value to the other side (0 once the game ended)."""
    del key
    mover = states.current_player
    states = jax.vmap(game.env.step)(states, action)
    logits, value = net.apply(params, states.observation)
    ended = states.terminated
    output = mctx.RecurrentFnOutput(
        reward=games.mover_reward(states, mover),
        discount=jnp.where(ended, 0.0, -1.0),
        prior_logits=masked_logits(logits, games.legal_or_any(states)),
        value=jnp.where(ended, 0.0, value),
    )
    return output, states


def search_moves(game, net, params, states, key, config, *, simulations: int, explore: bool):
    """The search's move and policy [B, A] at each state. Exploring (self-play): PUCT's root noise and
    a move drawn from the visit counts; else no noise and the most visited move (Gumbel: its winner)."""
    logits, value = net.apply(params, states.observation)
    legal = games.legal_or_any(states)
    root = mctx.RootFnOutput(prior_logits=masked_logits(logits, legal), value=value, embedding=states)
    step = functools.partial(rules_step, game, net)
    output = search(config, params, key, root, step, simulations, ~legal, explore=explore)
    return output.action, output.action_weights


# STATE


class AlphaZeroState(NamedTuple):
    params: Any
    opt_state: Any
    replay: replay.ReplayBuffer
    """Positions: observation, the search's policy, the outcome for the side to move."""
    key: jax.Array


def add_positions(buffer: replay.ReplayBuffer, positions: selfplay.Positions) -> replay.ReplayBuffer:
    """The positions of a batch of games into the replay, the oldest out first; a slot after a
    game's end is no position and is left out."""
    flat = jax.tree_util.tree_map(lambda x: x.reshape((-1,) + x.shape[2:]), positions)
    rows = dict(observation=flat.observation, policy=flat.policy, outcome=flat.outcome)
    return replay.add(buffer, rows, mask=flat.alive > 0)


def learn(game, net, state: AlphaZeroState, key, config) -> tuple[AlphaZeroState, dict]:
    """`updates_per_iteration` steps of Adam down l(theta) on batches drawn uniformly from the
    positions the replay holds, each position seen through a random symmetry of the board where
    `config.symmetries` asks for it."""
    optimizer = adam()

    def loss_fn(params, batch):
        logits, value = net.apply(params, batch["observation"])
        loss, parts = alphazero_loss(logits, value, batch["policy"], batch["outcome"])
        return loss + config.l2_coefficient * l2_penalty(params), parts

    def step(carry, step_key):
        params, opt_state = carry
        sample_key, symmetry_key = jax.random.split(step_key)
        batch = replay.sample(state.replay, sample_key if config.symmetries else step_key, config.batch_size)
        if config.symmetries:
            observation, policy = games.random_symmetry(game, symmetry_key, batch["observation"], batch["policy"])
            batch = dict(batch, observation=observation, policy=policy)
        params, opt_state, loss, (value_loss, policy_loss) = gradient_update(loss_fn, params, opt_state, optimizer, batch)
        return (params, opt_state), dict(loss=loss, value_loss=value_loss, policy_loss=policy_loss)

    keys = jax.random.split(key, config.updates_per_iteration)
    (params, opt_state), metrics = jax.lax.scan(step, (state.params, state.opt_state), keys)
    return state._replace(params=params, opt_state=opt_state), jax.tree_util.tree_map(jnp.mean, metrics)


def evaluation(game, net, params, key, config) -> dict:
    """The agent (search at `eval_simulations`, no noise, the most visited move) against a uniform
    random player, pure MCTS where `mcts_opponent_simulations` asks for it and, on tic-tac-toe, the
    perfect player, as first and as second mover."""

    def agent(states, move_key):
        simulations = config.eval_simulations
        return search_moves(game, net, params, states, move_key, config, simulations=simulations, explore=False)[0]

    opponents = {"random": games.random_player}
    if config.mcts_opponent_simulations:
        opponents["mcts"] = games.mcts_player(game, config.mcts_opponent_simulations)
    if game.name == "pgx/tic_tac_toe":
        opponents["perfect"] = games.perfect_tic_tac_toe_player
    metrics = {}
    for index, ((name, opponent), first) in enumerate((item, f) for item in opponents.items() for f in (True, False)):
        side = "first" if first else "second"
        outcome = selfplay.play_match(
            game, agent, opponent, jax.random.fold_in(key, index), config.eval_episodes, agent_first=first
        )
        metrics[f"eval_win_{side}_vs_{name}"] = (outcome > 0).mean()
        metrics[f"eval_loss_{side}_vs_{name}"] = (outcome < 0).mean()
        metrics[f"eval_return_{side}_vs_{name}"] = outcome.mean()
    metrics["eval_return"] = (metrics["eval_return_first_vs_random"] + metrics["eval_return_second_vs_random"]) / 2
    return metrics


# TRAINING PROGRAM


def make_train(config: Config, env=None) -> Trainer:
    """The training program on the game `config.env` names, or on `env`, a user's own game on pgx's
    protocol (`init(key)`, `step(state, action)`, `num_actions`, `observation_shape`): iterations of
    `num_envs` self-play games to their end, then `updates_per_iteration` updates."""
    config.validate()
    try:
        game = games.make_game(config.env, env, max_moves=config.max_moves)
    except ValueError as error:
        raise ConfigError(f"alphazero.py: {error}") from None
    net = PolicyValueNet(game.num_actions, config.network, config.width, config.blocks)
    moves_per_iteration = config.num_envs * game.max_moves
    schedule = make_schedule(config.total_steps, 0, moves_per_iteration, config.eval_every)
    capacity = config.replay_capacity or moves_per_iteration
    if capacity < moves_per_iteration:
        raise ConfigError(
            f"replay_capacity ({capacity:,}) holds less than one iteration's positions "
            f"(num_envs x the game's {game.max_moves} moves = {moves_per_iteration:,})"
        )

    def init(key, config):
        init_key, key = jax.random.split(key)
        params = net.init(init_key, jnp.zeros((1,) + game.observation_shape))
        observation = jax.eval_shape(game.env.init, init_key).observation
        example = dict(
            observation=jnp.zeros(observation.shape, observation.dtype),
            policy=jnp.zeros(game.num_actions),
            outcome=jnp.float32(0.0),
        )
        return AlphaZeroState(params, adam(config.lr).init(params), replay.init(example, capacity), key)

    def update(state: AlphaZeroState, config, update_index):
        key, play_key, learn_key = jax.random.split(state.key, 3)

        def choose(states, move, move_key):
            action, policy = search_moves(
                game, net, state.params, states, move_key, config, simulations=config.num_simulations, explore=True
            )
            greedy = jnp.argmax(policy, axis=-1)
            return jnp.where(move < config.temperature_moves, action, greedy), policy

        positions, stats = selfplay.play_games(game, choose, play_key, config.num_envs)
        # ExIt's apprentice learns from this iteration's games only: the replay starts empty.
        empty = dict(position=jnp.zeros_like(state.replay.position), count=jnp.zeros_like(state.replay.count))
        kept = state.replay if config.replay_capacity else state.replay.replace(**empty)
        state = state._replace(replay=add_positions(kept, positions), key=key)
        state, metrics = learn(game, net, state, learn_key, config)
        return state, dict(metrics, **stats, train_episode_return=stats["first_mover_win"] - stats["first_mover_loss"])

    def evaluate(state: AlphaZeroState, key, config):
        return evaluation(game, net, state.params, key, config)

    return Trainer(init=init, update=update, evaluate=evaluate, schedule=schedule)


# SETTINGS: the Config and its presets


@dataclasses.dataclass(frozen=True)
class Config(SearchConfig, RunConfig):
    """AlphaZero settings; the search's are SearchConfig's, the run's (task, budget, evaluation)
    RunConfig's."""

    env: str = "pgx/tic_tac_toe"
    """The game, pgx/<id>: tic_tac_toe, connect_four, othello, hex, go_9x9."""
    total_steps: int = 460_800
    """Self-play moves in all, counted as games x the game's longest length (9 for tic-tac-toe)."""
    num_envs: int = 512
    """Self-play games played at once per iteration."""
    initial_steps: int = 0
    """No random moves before learning: the first iteration's search uses the untrained network."""
    eval_every: int = 46_080
    """Self-play moves between evaluations."""
    eval_episodes: int = 100
    """Games per opponent and side in an evaluation (against random; on tic-tac-toe, perfect too)."""
    mcts_opponent_simulations: int = 0
    """Also evaluate against pure MCTS with random rollouts at this many simulations a move; 0: not."""
    # Search: SearchConfig's fields at their defaults (PUCT, 32 simulations, Dir(0.3) at 0.25); and
    temperature_moves: int = 2
    """Self-play moves drawn from the visit counts before the most visited is played (chess: 30)."""
    # Network and learning
    network: str = setting("mlp", choices=("mlp", "resnet"))
    """An MLP over the flat board, or a residual net of 3 x 3 convolutions."""
    width: int = setting(64, positive=True)
    """Units (MLP) or channels (residual net) per layer."""
    blocks: int = setting(2, positive=True)
    """Hidden layers (MLP) or residual blocks."""
    lr: float = setting(1e-3, sweepable=True)
    """Adam's learning rate."""
    l2_coefficient: float = setting(1e-4, sweepable=True, within="[0, 1]")
    """c of the loss's c ||theta||^2 (AlphaZero: 1e-4)."""
    batch_size: int = setting(256, positive=True)
    """Positions per update."""
    updates_per_iteration: int = setting(32, positive=True)
    """Updates after each iteration's games."""
    symmetries: bool = False
    """Learn from each replayed position through a random rotation or reflection of the board, where
    the game has them (AlphaGo Zero's augmentation; the AlphaZero paper did without)."""
    replay_capacity: int | None = setting(100_000, positive=True)
    """Positions kept (the newest); None: only the current iteration's (ExIt)."""
    max_moves: int | None = setting(None, positive=True)
    """The longest game in moves, which a scan plays to its end (None: the named game's own bound)."""

    def validate(self) -> None:
        super().validate()
        if not games.is_game(self.env):
            raise ConfigError(games.not_a_game(self.env, "alphazero.py"))
        if self.episode_length is not None or self.action_repeat != 1:
            raise ConfigError("alphazero.py plays whole games: episode_length and action_repeat do not apply")


# Presets, as data: presets/alphazero.toml (a game's settings, and variants: ExIt, Gumbel, tiny).
TASKS, VARIANTS = presets.load(__file__)
PRESETS: dict[str, dict[str, Any]] = {**TASKS, **VARIANTS}


def main(argv=None) -> int:
    return runner.main("alphazero", Config, PRESETS, make_train, argv)


if __name__ == "__main__":
    sys.exit(main())
