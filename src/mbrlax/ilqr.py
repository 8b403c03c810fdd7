"""iLQR (Li and Todorov 2004, "Iterative Linear Quadratic Regulator Design for Nonlinear Biological
Movement Systems"): a local search over one action sequence [H, A] through a differentiable model.

Pure and jittable: the dynamics and the stage cost are functions of one state and action, the number
of iterations is fixed, and `solve` vmaps over start states. PETS plans with it (`algorithms/pets.py
--planner ilqr`, `pets.ilqr_planner`); tests/test_ilqr.py checks it against the closed-form
finite-horizon LQR solution.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Result(NamedTuple):
    actions: jax.Array
    """[H, A] the best plan found (within the bounds)."""
    states: jax.Array
    """[H + 1, obs] its states under `dynamics_fn`, x0 first."""
    cost: jax.Array
    """Its total cost, sum over t of cost_fn(x_t, u_t, x_t+1)."""
    gains: jax.Array
    """[H, A, obs] the feedback gains K_t of the last backward pass (zero rows where a bound clamps)."""
    mu: jax.Array
    """The regularisation reached."""
    accepted: jax.Array
    """[iterations] whether each iteration lowered the cost."""
    costs: jax.Array
    """[iterations] the plan's cost after each iteration."""


def backward_pass(jacobian_x, jacobian_u, cost_grad, cost_hess, actions, low, high, mu):
    """One backward pass of iLQR. Per step t: the model's Jacobians F_x [obs, obs], F_u [obs, A] at
    the nominal (x_t, u_t), and the gradient g [2 obs + A] and Hessian G of the stage cost in z = (x,
    u, x'). With J = [[I, 0], [0, I], [F_x, F_u]] and V' the next step's value expansion added to the
    x' block, Q = J^T (G + V'') J and q = J^T (g + V'). Step k = -(Q_uu + mu I)^-1 Q_u and gains
    K = -(Q_uu + mu I)^-1 Q_ux. Where u_t + k leaves [low, high], that action's step is clamped to the
    bound and its gain row set to 0, and the other actions' step and gains are solved again with the
    clamped ones held fixed (one active-set pass, not a full box-constrained QP). The value expansion
    uses the unregularised Q and the final k, K.
    Returns (k [H, A], K [H, A, obs], ok: whether every Q_uu + mu I was positive definite)."""
    obs_size, action_size = jacobian_x.shape[-1], jacobian_u.shape[-1]

    def step(carry, inputs):
        value_grad, value_hess = carry
        f_x, f_u, g, hess, u = inputs
        jac = jnp.block(
            [
                [jnp.eye(obs_size), jnp.zeros((obs_size, action_size))],
                [jnp.zeros((action_size, obs_size)), jnp.eye(action_size)],
                [f_x, f_u],
            ]
        )
        g = g.at[obs_size + action_size :].add(value_grad)
        hess = hess.at[obs_size + action_size :, obs_size + action_size :].add(value_hess)
        q = jac.T @ g
        big_q = jac.T @ hess @ jac
        q_x, q_u = q[:obs_size], q[obs_size:]
        q_xx, q_ux, q_uu = big_q[:obs_size, :obs_size], big_q[obs_size:, :obs_size], big_q[obs_size:, obs_size:]
        regularised = q_uu + mu * jnp.eye(action_size)
        chol = jnp.linalg.cholesky(regularised)
        ok = jnp.all(jnp.isfinite(chol))
        k = -jax.scipy.linalg.cho_solve((chol, True), q_u)
        # BOUNDS: an action whose step leaves the box is clamped to the bound and loses its feedback;
        # the free actions' step and gains are solved again with the clamped ones held (one pass).
        free = (u + k >= low) & (u + k <= high)
        clamped_k = jnp.where(free, 0.0, jnp.clip(u + k, low, high) - u)
        both_free = free[:, None] & free[None, :]
        reduced = jnp.where(both_free, regularised, jnp.eye(action_size))
        rhs = jnp.where(free, q_u + regularised @ clamped_k, -clamped_k)
        reduced_chol = jnp.linalg.cholesky(reduced)
        k = -jax.scipy.linalg.cho_solve((reduced_chol, True), rhs)
        gain = -jax.scipy.linalg.cho_solve((reduced_chol, True), jnp.where(free[:, None], q_ux, 0.0))
        value_grad = q_x + gain.T @ q_uu @ k + gain.T @ q_u + q_ux.T @ k
        value_hess = q_xx + gain.T @ q_uu @ gain + gain.T @ q_ux + q_ux.T @ gain
        value_hess = 0.5 * (value_hess + value_hess.T)
        return (value_grad, value_hess), (k, gain, ok)

    carry = (jnp.zeros(obs_size), jnp.zeros((obs_size, obs_size)))
    _, (k, gains, ok) = jax.lax.scan(step, carry, (jacobian_x, jacobian_u, cost_grad, cost_hess, actions), reverse=True)
    ok = jnp.all(ok) & jnp.all(jnp.isfinite(k)) & jnp.all(jnp.isfinite(gains))
    return jnp.where(ok, k, 0.0), jnp.where(ok, gains, 0.0), ok


def rollout(dynamics_fn, cost_fn, x0, actions, low, high, nominal_states=None, gains=None):
    """States [H + 1, obs], actions [H, A] and total cost of the closed loop u_t = clip(actions_t +
    gains_t (x_t - nominal_t), low, high) (open loop without gains). A cost that is not finite is
    +inf, so it is never chosen."""

    def step(carry, inputs):
        x, total = carry
        u, nominal, gain = inputs
        if gain is not None:
            u = u + gain @ (x - nominal)
        u = jnp.clip(u, low, high)
        x_next = dynamics_fn(x, u)
        return (x_next, total + cost_fn(x, u, x_next)), (x_next, u)

    inputs = (actions, nominal_states, gains)
    (_, total), (states, actions) = jax.lax.scan(step, (x0, jnp.float32(0.0)), inputs)
    states = jnp.concatenate([x0[None], states])
    return states, actions, jnp.where(jnp.isfinite(total), total, jnp.inf)


def solve(
    dynamics_fn,
    cost_fn,
    x0,
    actions_init,
    low,
    high,
    *,
    iterations: int,
    line_search_steps: int = 8,
    mu_init=1.0,
    mu_min=1e-6,
    mu_factor=4.0,
    min_step=1e-3,
) -> Result:
    """Iterative LQR from the plan `actions_init` [H, A] for the state x0 [obs]: minimises
    sum_t cost_fn(x_t, u_t, x_t+1) with x_t+1 = dynamics_fn(x_t, u_t) (both for one state and action)
    over u_t in [low, high], for exactly `iterations` iterations (jittable, vmappable over x0).

    Each iteration linearises the dynamics at the current trajectory (forward-mode Jacobians,
    `jax.jacfwd`) and quadratises the stage cost in (x, u, x') (`jax.hessian`; second derivatives of
    the dynamics are left out, as in iLQR), runs `backward_pass` with the regulariser mu on Q_uu, then
    rolls out the closed loop with the step scaled by each of `line_search_steps` sizes from 1 down to
    `min_step` (geometrically spaced, all evaluated at once) and keeps the cheapest rollout if it costs
    less than the current plan. Levenberg-Marquardt schedule: an accepted step divides mu by
    `mu_factor` (down to `mu_min`; below it, mu_min), a rejected step or a backward pass whose
    Q_uu + mu I is not positive definite multiplies it by `mu_factor` (at least to 1e-6) and keeps the
    plan. Bounds: the forward pass clips every action to [low, high] and the backward pass clamps the
    step at the bound, drops that action's feedback and re-solves the others' step once (exact for one
    action dimension; with several, a one-pass estimate of the active set). The cost never increases
    over iterations."""
    low = jnp.broadcast_to(low, actions_init.shape[-1:])
    high = jnp.broadcast_to(high, actions_init.shape[-1:])
    obs_size = x0.shape[-1]
    steps = jnp.geomspace(1.0, min_step, line_search_steps) if line_search_steps > 1 else jnp.ones(1)

    def stage_cost_z(z):
        x, u, x_next = jnp.split(z, [obs_size, z.shape[0] - obs_size])
        return cost_fn(x, u, x_next)

    linearise = jax.vmap(jax.jacfwd(dynamics_fn, argnums=(0, 1)))
    quadratise = jax.vmap(lambda z: (jax.grad(stage_cost_z)(z), jax.hessian(stage_cost_z)(z)))

    def iteration(carry, _):
        states, actions, cost, mu, gains_last = carry
        jacobian_x, jacobian_u = linearise(states[:-1], actions)
        z = jnp.concatenate([states[:-1], actions, states[1:]], axis=-1)
        cost_grad, cost_hess = quadratise(z)
        k, gains, ok = backward_pass(jacobian_x, jacobian_u, cost_grad, cost_hess, actions, low, high, mu)

        # LINE SEARCH: every step size's closed-loop rollout at once; keep the cheapest.
        def try_step(step):
            return rollout(dynamics_fn, cost_fn, x0, actions + step * k, low, high, states[:-1], gains)

        new_states, new_actions, new_costs = jax.vmap(try_step)(steps)
        best = jnp.argmin(new_costs)
        accept = ok & (new_costs[best] < cost)
        states = jnp.where(accept, new_states[best], states)
        actions = jnp.where(accept, new_actions[best], actions)
        cost = jnp.where(accept, new_costs[best], cost)
        lowered = mu / mu_factor
        lowered = jnp.where(lowered < mu_min, mu_min, lowered)
        mu = jnp.where(accept, lowered, jnp.maximum(mu * mu_factor, 1e-6))
        gains_last = jnp.where(ok, gains, gains_last)
        return (states, actions, cost, mu, gains_last), (accept, cost)

    actions = jnp.clip(actions_init, low, high)
    states, actions, cost = rollout(dynamics_fn, cost_fn, x0, actions, low, high)
    gains = jnp.zeros(actions.shape + (obs_size,))
    carry = (states, actions, cost, jnp.float32(mu_init), gains)
    (states, actions, cost, mu, gains), (accepted, costs) = jax.lax.scan(iteration, carry, None, length=iterations)
    return Result(actions=actions, states=states, cost=cost, gains=gains, mu=mu, accepted=accepted, costs=costs)
