"""The MPC loop of PETS, POPLIN and PETS with iLQR: explore with random actions, then again and again
fit the probabilistic ensemble on all data and act for `retrain_every` steps with a `Planner`, which
plans from each state through the model and executes the first action (receding horizon).

A planner scores candidates by trajectory sampling (Chua et al. 2018): P particles a candidate, each
stepped through ensemble member b(p, t) (TS1: drawn afresh each step; TSinf: fixed per particle),

    R = 1/P sum_p sum_t r(s^p_t, a_t, s^p_{t+1}),   no reward after a predicted termination

(`sequence_returns`). The settings every algorithm on the loop shares are `MPCConfig`; a planner is
a `Planner` of pure functions, built by `make_planner(config, PlannerContext)`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from mbrlax import buffer as replay
from mbrlax import ensemble
from mbrlax.config import RunConfig, setting
from mbrlax.training import ConfigError, Trainer, make_schedule, restart_episodes
from mbrlax.loops.episodes import (
    evaluate_episodes,
    explore_uniformly,
    setup,
    track_returns,
    transition,
    transition_example,
)


@dataclasses.dataclass(frozen=True)
class MPCConfig(ensemble.EnsembleConfig, RunConfig):
    """The MPC loop's settings (PETS's): the loop, the search every planner shares, trajectory sampling
    and the model; the run's own (task, budget, environments, evaluation) are RunConfig's. Each
    algorithm on the loop extends it."""

    RENAMED = {"hidden_sizes": "model_hidden_sizes"}

    total_steps: int = 2000
    """Environment steps in all, over all parallel environments, random exploration included."""
    initial_steps: int | None = None
    """Random-action steps before the first model fit (default: one episode per environment)."""
    eval_every: int = 600
    """Environment steps between evaluations."""
    eval_episodes: int = 3
    """Evaluation episodes, run in parallel with the current model and planner."""
    # Search
    horizon: int = setting(30, positive=True)
    """Planning horizon H."""
    population: int = setting(100, positive=True)
    """Candidates sampled per CEM iteration."""
    num_elites: int = setting(10, positive=True)
    """Best candidates refitted per iteration."""
    cem_iterations: int = setting(5, positive=True)
    """CEM iterations per planned action."""
    alpha: float = setting(0.1, sweepable=True, within="[0, 1)")
    """CEM momentum: new mean = alpha * old + (1 - alpha) * elite mean (same for the variance)."""
    particles: int = setting(5, positive=True)
    """Particles P per candidate."""
    propagation: str = setting("tsinf", choices=ensemble.PROPAGATIONS)
    """Trajectory sampling: "ts1", "tsinf" or "expectation"."""
    retrain_every: int = setting(200, positive=True)
    """Environment steps between model fits (on all data so far)."""
    # Model (ensemble.EnsembleConfig's fields; the loop's defaults)
    ensemble_size: int = 5
    model_hidden_sizes: tuple[int, ...] = (64, 64, 64)
    model_batch_size: int = 32
    model_max_epochs: int = 25
    model_holdout_ratio: float = 0.1
    buffer_capacity: int | None = None
    """Replay capacity (default: total_steps, so nothing is forgotten)."""

    def validate(self) -> None:
        super().validate()
        if self.num_elites > self.population:
            raise ConfigError(f"num_elites ({self.num_elites}) must not exceed population ({self.population})")
        if self.retrain_every % self.num_envs:
            raise ConfigError(f"retrain_every ({self.retrain_every}) must divide by num_envs ({self.num_envs})")


class MPCState(NamedTuple):
    env_state: Any
    buffer: replay.ReplayBuffer
    model: ensemble.EnsembleState
    plan: Any
    """Each environment's planning memory, leading axis num_envs (CEM: the previous plan [H, A], for
    the warm start); an environment's is reset to the planner's `fresh` when its episode ends."""
    planner: Any
    """What the planner learns across the run (POPLIN: its policy); () for CEM, iCEM and random."""
    key: jax.Array
    episode_return: jax.Array
    """[num_envs] return of each environment's current episode so far."""
    last_episode_return: jax.Array
    """Mean return of the episodes that ended most recently."""


# PLANNERS: the seam through which a planner acts in the loop.


def replan(plan_fn, obs, previous_plans, key, fill):
    """Model predictive control for a batch of states obs [n, ...]: `plan_fn(obs, warm_start, key) ->
    plan [H, A]` for each, warm-started from its previous plan shifted by one step with `fill` [A] as
    the new last step. Returns (the plans' first actions [n, A], the plans [n, H, A])."""
    warm = jnp.concatenate([previous_plans[:, 1:], jnp.broadcast_to(fill, (len(obs), 1) + fill.shape)], axis=1)
    plans = jax.vmap(plan_fn)(obs, warm, jax.random.split(key, len(obs)))
    return plans[:, 0], plans


class Planner(NamedTuple):
    """How the MPC loop chooses actions with the model: PETS's CEM, iCEM, random shooting and iLQR,
    POPLIN's policy-guided CEM."""

    init: Callable
    """(key, config) -> what the planner learns across the run (() when nothing)."""
    fresh: Any
    """One environment's planning memory at the start of an episode (CEM: the middle plan [H, A])."""
    act: Callable
    """(learned, model, obs [n, obs], memory [n, ...], key, config) -> (actions [n, A], memory)."""
    fit: Callable
    """(learned, buffer, key, config) -> (learned, metrics dict), after every model fit."""


class PlannerContext(NamedTuple):
    """What `make_train` gives a planner factory: the run's task, the ensemble's settings and the
    model's trajectory-sampling step, `model_step_fn(model) -> step_fn(states, actions, key)`."""

    task: Any
    model_config: ensemble.EnsembleConfig
    model_step_fn: Callable
    particle_rows: int


def middle_plan(context: PlannerContext, horizon: int):
    """The plan [H, A] of actions in the middle of the bounds: where every search starts an episode."""
    low, high = context.task.low, context.task.high
    return jnp.broadcast_to((low + high) / 2.0, (horizon, low.shape[-1]))


def plan_keeping_planner(act, middle) -> Planner:
    """A planner that learns nothing across the run and keeps each environment's last plan [H, A]
    as its memory (`middle` at an episode's start)."""
    return Planner(init=lambda key, config: (), fresh=middle, act=act, fit=lambda learned, *_: (learned, {}))


# PREDICT RETURNS of action sequences by trajectory sampling through the ensemble.


def particles_per_sequence(particles: int, members: int, propagation: str) -> int:
    """Particles computed per action sequence. Under TSinf, row i of the particle batch keeps member
    i mod G (`ensemble.propagate`); with ceil(P / G) * G rows per sequence, particle j of every
    sequence keeps member j mod G, so the first P particles, the ones averaged, give each member
    floor or ceil of P / G of them, the same for every sequence. Otherwise P."""
    if propagation == "tsinf":
        return -(-particles // members) * members
    return particles


def model_step(
    model_config: ensemble.EnsembleConfig,
    model: ensemble.EnsembleState,
    states: jax.Array,
    actions: jax.Array,
    key: jax.Array,
    *,
    propagation: str,
    elites_only: bool,
    reward_fn: Callable | None,
    termination_fn: Callable,
):
    """One step of particles [m, obs] under actions [m, A] through the ensemble, by `propagation`
    (see `ensemble.propagate`; through the elites only with `elites_only`) -> (next states [m, obs],
    rewards [m], terminations [m]). `reward_fn(obs, action, next_obs)` None: the model's reward."""
    next_states, model_reward = ensemble.propagate(
        model_config, model, states, actions, key, mode=propagation, elites_only=elites_only
    )
    reward = model_reward if reward_fn is None else reward_fn(states, actions, next_states)
    return next_states, reward, termination_fn(states, actions, next_states)


def sequence_returns(step_fn: Callable, obs, sequences, key, *, particles: int, particle_rows: int | None = None):
    """Mean predicted return of each action sequence [n, H, A] from the state `obs` [obs] -> [n]:
    `particles` (P) trajectories a sequence, stepped by `step_fn(states, actions, key) -> (next_states,
    rewards, terminations)` with one key a time step; no reward after a predicted termination. Each
    sequence takes `particle_rows` rows of the batch (default P; TSinf: `particles_per_sequence`), of
    which the first P are averaged. A return that is not finite counts as -1e10."""
    n, horizon = sequences.shape[:2]
    rows = particle_rows or particles
    # Row i = particle i % rows of sequence i // rows; under TSinf it keeps member i mod G.
    states = jnp.broadcast_to(obs, (n * rows, obs.shape[-1]))
    actions = jnp.repeat(sequences, rows, axis=0)

    def step(carry, inputs):
        states, alive, total = carry
        action, step_key = inputs
        next_states, reward, done = step_fn(states, action, step_key)
        total = total + alive * reward
        alive = alive * (1.0 - done.astype(jnp.float32))
        return (next_states, alive, total), None

    carry = (states, jnp.ones(n * rows), jnp.zeros(n * rows))
    (_, _, totals), _ = jax.lax.scan(step, carry, (actions.swapaxes(0, 1), jax.random.split(key, horizon)))
    returns = totals.reshape(n, rows)[:, :particles].mean(axis=1)
    return jnp.where(jnp.isfinite(returns), returns, -1e10)


# TRAINING PROGRAM


def make_train(config: MPCConfig, env, make_planner: Callable, name: str) -> Trainer:
    """The training program, on the task `config.env` names or on `env`, a user's own `(environment,
    EnvSpec)`: explore, then fit the model on all data and act with `make_planner(config,
    PlannerContext) -> Planner` for `retrain_every` steps, again and again. `name`: what an error
    about the task calls the algorithm."""
    config.validate()
    task = setup(config, env, algorithm=name)
    spec, low, high = task.spec, task.low, task.high
    if spec.can_terminate and spec.termination_fn is None:
        raise ConfigError(f"{config.env} can terminate but has no termination function for the model")

    learn_reward = config.learn_reward or spec.reward_learned
    model_config = dataclasses.replace(config, learn_reward=learn_reward)  # what the ensemble reads
    obs_size, action_size, num_envs = spec.observation_size, spec.action_size, config.num_envs
    initial_steps = spec.episode_length * num_envs if config.initial_steps is None else config.initial_steps
    initial_steps = -(-initial_steps // num_envs) * num_envs
    schedule = make_schedule(config.total_steps, initial_steps, config.retrain_every, config.eval_every)

    def model_step_fn(model):
        # The planner propagates through the elites only when fewer than all members are elites.
        return functools.partial(
            model_step,
            model_config,
            model,
            propagation=config.propagation,
            elites_only=config.model_elite_count < config.ensemble_size,
            reward_fn=None if learn_reward else spec.reward_fn,
            termination_fn=spec.termination_fn,
        )

    particle_rows = particles_per_sequence(config.particles, config.model_elite_count, config.propagation)
    planner = make_planner(config, PlannerContext(task, model_config, model_step_fn, particle_rows))

    def fresh_memory(n: int):
        return jax.tree_util.tree_map(lambda leaf: jnp.broadcast_to(leaf, (n,) + leaf.shape), planner.fresh)

    def env_step(state: MPCState, action):
        """ACT in the real environment and store the transition."""
        next_env_state = task.env.step(state.env_state, action)
        buffer = replay.add(state.buffer, transition(state.env_state, action, next_env_state))
        done = next_env_state.done
        episode_return, last_return = track_returns(
            state.episode_return, state.last_episode_return, next_env_state.reward, done
        )
        ended = done > 0
        plan = jax.tree_util.tree_map(
            lambda fresh, kept: jnp.where(ended.reshape((-1,) + (1,) * fresh.ndim), fresh, kept),
            planner.fresh,
            state.plan,
        )
        return state._replace(
            env_state=next_env_state,
            buffer=buffer,
            plan=plan,
            episode_return=episode_return,
            last_episode_return=last_return,
        )

    def init(key, config):
        env_key, model_key, explore_key, key = jax.random.split(key, 4)
        env_state = task.env.reset(env_key)
        example = transition_example(env_state.obs[0], action_size)
        state = MPCState(
            env_state=env_state,
            buffer=replay.init(example, config.buffer_capacity or schedule.total_steps),
            model=ensemble.init(
                model_key, model_config, obs_size, action_size, config.model_lr, config.model_weight_decay
            ),
            plan=fresh_memory(num_envs),
            planner=planner.init(jax.random.fold_in(model_key, 1), config),
            key=key,
            episode_return=jnp.zeros(num_envs),
            last_episode_return=jnp.float32(0.0),
        )
        # EXPLORE with uniformly random actions.
        steps, shape = initial_steps // num_envs, (num_envs, action_size)
        return explore_uniformly(env_step, state, explore_key, steps, shape, low, high)

    def update(state: MPCState, config, update_index):
        key, train_key, act_key = jax.random.split(state.key, 3)

        # TRAIN MODEL on everything stored so far (and whatever the planner learns from the data).
        buffer = state.buffer
        model, model_metrics = ensemble.train(model_config, state.model, buffer.data, buffer.count, train_key)
        learned, planner_metrics = planner.fit(state.planner, buffer, jax.random.fold_in(train_key, 1), config)
        state = state._replace(model=model, planner=learned, key=key)

        # PLAN and ACT for retrain_every steps.
        def plan_and_step(state, step_key):
            action, plans = planner.act(state.planner, state.model, state.env_state.obs, state.plan, step_key, config)
            state = env_step(state._replace(plan=plans), action)
            return state, state.env_state.reward.mean()

        steps = config.retrain_every // num_envs
        state, rewards = jax.lax.scan(plan_and_step, state, jax.random.split(act_key, steps))
        metrics = dict(model_metrics, **planner_metrics, train_reward=rewards.mean())
        metrics["train_episode_return"] = state.last_episode_return
        return state, metrics

    def evaluate(state: MPCState, key, config):
        """EVALUATE: `eval_episodes` fresh episodes, planned for all at once with the current model."""

        def plan_action(plans, obs, step_key):
            return planner.act(state.planner, state.model, obs, plans, step_key, config)

        plans = fresh_memory(config.eval_episodes)
        return evaluate_episodes(task.eval_env, key, config.eval_episodes, spec.episode_length, plan_action, plans)

    return Trainer(
        init=init,
        update=update,
        evaluate=evaluate,
        schedule=schedule,
        spec=spec,
        fresh_episodes=restart_episodes("env_state", "episode_return"),
    )

