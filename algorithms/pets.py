"""PETS: probabilistic ensembles with trajectory sampling (Chua, Calandra, McAllister, Levine,
"Deep Reinforcement Learning in a Handful of Trials using Probabilistic Dynamics Models", NeurIPS 2018).

A probabilistic ensemble learns the dynamics, s' - s ~ N(mu_k(s, a), sigma_k^2(s, a)) for member k. At
every step a planner scores action sequences a_0..a_{H-1} from the current state s_0 by

    R(a) = 1/P sum_p sum_t r(s^p_t, a_t, s^p_{t+1}),   s^p_{t+1} ~ member b(p, t) at (s^p_t, a_t)

(TS1: b drawn afresh each step; TSinf: b(p) fixed for the horizon; no reward after a predicted end).
CEM refits mean and variance to the elites with momentum alpha (new = alpha old + (1 - alpha) elites').
The first action of the plan is executed, the plan is shifted by one step to warm-start the next
search, and the model is refitted on all data every `retrain_every` steps.
`--planner ilqr` (Li and Todorov 2004; `ilqr_planner`, `mbrlax.ilqr`) instead linearises the
ensemble's mean along one plan, quadratises -reward and solves the time-varying LQR problem backwards
(box-constrained QP per step), with a line search over several step sizes at once.

Departures from the paper:
- Planning is batched over the parallel environments (and seeds); the paper plans one state at a time.
- CEM always runs `cem_iterations` (the original also stops when the largest variance is below 0.001).
- TSinf accepts particle counts the members do not divide: particle j keeps member j mod G.
- iCEM is mbrl-lib's ICEMOptimizer within one search; its elites are not carried to the next planning step.
- Brax locomotion rewards are learned as an extra output (the paper's are known).

Provenance, every departure, presets and commands: docs/algorithms/pets.md.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any

import jax
import jax.numpy as jnp

from mbrlax import ensemble, ilqr, planners, presets, runner
from mbrlax.config import setting
from mbrlax.loops import mpc
from mbrlax.training import ConfigError, Trainer

PLANNERS = ("cem", "icem", "random")
"""The planners over sampled action sequences that `plan` runs; "ilqr" (`ilqr_planner`) is the other choice."""


# PLAN: search over action sequences [H, A] for the one of highest `score_fn(sequences [n, H, A],
# key) -> [n]`; every planner returns the plan (and, where it keeps one, its final spread).


def plan(config: Config, score_fn, mean, std, key, low, high):
    """The plan [H, A] that `config.planner` finds for one state, whose sequences `score_fn` scores,
    searching from `mean` [H, A] (the warm start) with the spread `std` [H, A]."""
    if config.planner == "random":
        return planners.random_shooting(score_fn, key, low, high, population=config.population, horizon=config.horizon)
    if config.planner == "icem":
        mean, _ = planners.icem(
            score_fn,
            mean,
            std,
            key,
            low,
            high,
            iterations=config.cem_iterations,
            population=config.population,
            elites=config.num_elites,
            alpha=config.alpha,
            noise_beta=config.icem_noise_beta,
            population_decay=config.icem_population_decay,
            keep_elites=config.icem_keep_elites,
        )
        return mean

    def sample(key, mean, std):
        truncated = config.sampling == "truncated"
        return planners.gaussian_sequences(key, mean, std, config.population, low, high, truncated=truncated)

    iterations, elites = config.cem_iterations, config.num_elites
    mean, _ = planners.cem(score_fn, sample, mean, std, key, iterations=iterations, elites=elites, alpha=config.alpha)
    return mean


def action_sequence_planner(config: Config, context: mpc.PlannerContext) -> mpc.Planner:
    """PETS's planners over open-loop action sequences: `config.planner` (CEM, iCEM or random
    shooting) searches for each state from its previous plan shifted by one step, with a spread of a
    quarter of the action range; each sequence is scored by `sequence_returns`."""
    low, high, horizon = context.task.low, context.task.high, config.horizon
    middle = mpc.middle_plan(context, horizon)
    initial_std = jnp.broadcast_to((high - low) / 4.0, (horizon, low.shape[-1]))

    def act(learned, model, obs, plans, key, config):
        step_fn = context.model_step_fn(model)

        def plan_one(obs, warm_start, key):
            score_fn = functools.partial(
                mpc.sequence_returns, step_fn, obs, particles=config.particles, particle_rows=context.particle_rows
            )
            return plan(config, score_fn, warm_start, initial_std, key, low, high)

        return mpc.replan(plan_one, obs, plans, key, middle[0])

    return mpc.plan_keeping_planner(act, middle)


def ilqr_planner(config: Config, context: mpc.PlannerContext) -> mpc.Planner:
    """Model predictive control by `mbrlax.ilqr.solve` through the ensemble: for each state,
    `ilqr_iterations` iterations from its previous plan shifted by one step (the middle of the bounds as the new last
    step; the middle plan at an episode's start); the first action is executed.

    Dynamics: the deterministic mean prediction, averaged over the planning members (the elites, as
    `ensemble.propagate(..., mode="expectation")`), or one elite's mean with `ilqr_member`; no
    sampling, so no particles. Cost: minus the task's known `reward_fn(obs, action, next_obs)`, or
    minus the ensemble's learned reward (then the model is evaluated once more for the cost).
    Terminations are ignored in the cost (a smooth approximation: pendulum and cartpole_swingup never
    terminate; on a task that does, the plan values reward after a predicted termination too)."""
    low, high, horizon = context.task.low, context.task.high, config.horizon
    middle = mpc.middle_plan(context, horizon)
    model_config, reward_fn = context.model_config, context.task.spec.reward_fn
    elites_only = model_config.model_elite_count < model_config.ensemble_size
    learn_reward = model_config.learn_reward

    def act(learned, model, obs, plans, key, config):
        def predict(x, u):
            """The model's mean next state [obs] and learned reward (None if not learned) for one x, u."""
            if config.ilqr_member is None:
                # "expectation" draws no noise: the key is unused.
                unused_key, mode = jax.random.PRNGKey(0), dict(mode="expectation", elites_only=elites_only)
                next_x, reward = ensemble.propagate(model_config, model, x[None], u[None], unused_key, **mode)
            else:
                member = model.elites[config.ilqr_member]
                next_x, reward = ensemble.member_mean(model_config, model, member, x[None], u[None])
            return next_x[0], None if reward is None else reward[0]

        def dynamics(x, u):
            return predict(x, u)[0]

        def cost(x, u, next_x):
            return -(predict(x, u)[1] if learn_reward else reward_fn(x, u, next_x))

        def plan_one(obs, warm_start, key):
            result = ilqr.solve(
                dynamics,
                cost,
                obs,
                warm_start,
                low,
                high,
                iterations=config.ilqr_iterations,
                line_search_steps=config.ilqr_line_search_steps,
                mu_init=config.ilqr_mu_init,
                mu_min=config.ilqr_mu_min,
                mu_factor=config.ilqr_mu_factor,
                min_step=config.ilqr_min_step,
            )
            return result.actions

        return mpc.replan(plan_one, obs, plans, key, middle[0])

    return mpc.plan_keeping_planner(act, middle)


# TRAINING PROGRAM


def make_train(config: Config, env=None) -> Trainer:
    """The MPC loop with the planner `config.planner` names, on the task `config.env` names or on
    `env`, a user's own `(environment, EnvSpec)`."""
    make_planner = ilqr_planner if config.planner == "ilqr" else action_sequence_planner
    return mpc.make_train(config, env, make_planner, name="PETS")


# SETTINGS: the Config and its presets


@dataclasses.dataclass(frozen=True)
class Config(mpc.MPCConfig):
    """PETS settings: the MPC loop's (the model, trajectory sampling, the search's size) and the
    planner's; the run fields (task, budget, environments, evaluation) are RunConfig's."""

    planner: str = setting("cem", choices=PLANNERS + ("ilqr",))
    """The planner: "cem", "icem", "random" (shooting) or "ilqr" (iterative LQR, see `ilqr_planner`)."""
    sampling: str = setting("truncated", choices=("truncated", "clipped"))
    """"truncated" (variance shrunk so 2 std stay in bounds, as mbrl-lib) or "clipped" normal."""
    icem_noise_beta: float = 2.0
    """iCEM: exponent of the coloured noise (0 white, 2 pink-to-brown)."""
    icem_population_decay: float = 1.25
    """iCEM: the population shrinks by this factor each iteration."""
    icem_keep_elites: float = 0.3
    """iCEM: share of the elites carried into the next iteration's population."""
    ilqr_iterations: int = setting(10, positive=True)
    """iLQR: iterations (linearise, backward pass, line search) per planned action."""
    ilqr_line_search_steps: int = setting(8, positive=True)
    """iLQR: step sizes tried at once each iteration, geometrically from 1 down to ilqr_min_step."""
    ilqr_min_step: float = setting(1e-3, within="(0, 1]")
    """iLQR: the smallest step size of the line search."""
    ilqr_mu_init: float = setting(1.0, within="[0, 1e10]")
    """iLQR: the regulariser mu (added to Q_uu) at the start of every plan."""
    ilqr_mu_min: float = setting(1e-6, within="[0, 1e10]")
    """iLQR: the smallest mu an accepted step lowers it to."""
    ilqr_mu_factor: float = setting(4.0, within="(1, 1e3]")
    """iLQR: mu is divided by this after an accepted step and multiplied by it after a rejected one."""
    ilqr_member: int | None = None
    """iLQR: rank of the elite whose mean prediction is the dynamics (0: best); None: the elites' mean."""

    def validate(self) -> None:
        super().validate()
        if self.ilqr_member is not None and self.ilqr_member >= self.model_elite_count:
            raise ConfigError(
                f"ilqr_member ({self.ilqr_member}) must be below the number of elites "
                f"({self.model_elite_count})"
            )
        if self.planner == "icem" and self.icem_population_decay < 1.0:
            raise ConfigError(f"icem_population_decay must be at least 1, got {self.icem_population_decay}")


# Presets, as data: presets/pets.toml (a task's settings, and variants of the method and sizes).
TASKS, VARIANTS = presets.load(__file__)
PRESETS: dict[str, dict[str, Any]] = {**TASKS, **VARIANTS}


def main(argv=None) -> int:
    return runner.main("pets", Config, PRESETS, make_train, argv)


if __name__ == "__main__":
    sys.exit(main())
