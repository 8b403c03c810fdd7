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
    """[H, A, obs] the feedback gains K_t of the last backward pass whose Q_uu + mu I was positive
    definite, linearised at the plan that iteration started from (zero rows where a bound clamps)."""
    mu: jax.Array
    """The regularisation reached."""
    accepted: jax.Array
    """[iterations] whether each iteration lowered the cost."""
    costs: jax.Array
    """[iterations] the plan's cost after each iteration."""


def box_qp(hessian, gradient, lower, upper, *, iterations: int = 8, line_search_steps: int = 16):
    """min_x 0.5 x^T H x + g^T x subject to lower <= x <= upper, for a positive-definite H, by
    projected Newton (Tassa, Mansard and Todorov 2014, "Control-limited differential dynamic
    programming", Algorithm 1; their boxQP.m). From x = clip(-H^-1 g), each iteration:
    clamped c = (x_i = lower_i and grad_i > 0) or (x_i = upper_i and grad_i < 0), grad = g + H x;
    the Newton step on the free set f with the clamped held, x_f* = -H_ff^-1 (g + H x_c)_f; the
    projected line search x(s) = clip(x + s (x* - x)), s = 1, 0.6, 0.36, ..., taking the largest s
    with Armijo's decrease v(x(s)) - v(x) <= 0.1 s (x* - x)^T grad. A fixed number of iterations,
    so it jits and vmaps; once the clamped set stops changing the step is 0.
    Returns (x, free [bool]: the free set at x)."""
    size = gradient.shape[-1]
    eye = jnp.eye(size)
    steps = 0.6 ** jnp.arange(line_search_steps)

    def value(x):
        return gradient @ x + 0.5 * x @ hessian @ x

    def free_at(x):
        grad = gradient + hessian @ x
        return ~(((x <= lower) & (grad > 0)) | ((x >= upper) & (grad < 0))), grad

    def newton_on(free, rhs):
        """-H_ff^-1 rhs_f on the free set, 0 elsewhere."""
        reduced = jnp.where(free[:, None] & free[None, :], hessian, eye)
        return -jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(reduced), True), jnp.where(free, rhs, 0.0))

    def iteration(x, _):
        free, grad = free_at(x)
        target = newton_on(free, gradient + hessian @ jnp.where(free, 0.0, x))
        search = jnp.where(free, target - x, 0.0)
        slope = search @ grad
        candidates = jnp.clip(x + steps[:, None] * search, lower, upper)
        armijo = jax.vmap(value)(candidates) - value(x) <= 0.1 * steps * slope
        accept = (slope < 0) & jnp.any(armijo)
        return jnp.where(accept, candidates[jnp.argmax(armijo)], x), None

    x = jnp.clip(newton_on(jnp.ones(size, bool), gradient), lower, upper)
    x, _ = jax.lax.scan(iteration, x, None, length=iterations)
    return x, free_at(x)[0]


def backward_pass(jacobian_x, jacobian_u, cost_grad, cost_hess, actions, low, high, mu, qp_iterations: int = 8):
    """One backward pass of iLQR. Per step t: the model's Jacobians F_x [obs, obs], F_u [obs, A] at
    the nominal (x_t, u_t), and the gradient g [2 obs + A] and Hessian G of the stage cost in z = (x,
    u, x'). With J = [[I, 0], [0, I], [F_x, F_u]] and V' the next step's value expansion added to the
    x' block, Q = J^T (G + V'') J and q = J^T (g + V'). The step k solves the box QP
    min_k 0.5 k^T (Q_uu + mu I) k + Q_u^T k subject to low <= u_t + k <= high (`box_qp`, projected
    Newton as Tassa et al. 2014), and the gains on its free set f are K_f = -(Q_uu + mu I)_ff^-1 Q_ux,f,
    0 on the clamped rows. Without binding bounds, k = -(Q_uu + mu I)^-1 Q_u and K = -(Q_uu + mu I)^-1 Q_ux.
    The value expansion uses the unregularised Q and these k, K.
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
        ok = jnp.all(jnp.isfinite(jnp.linalg.cholesky(regularised)))
        # BOUNDS: the step within the box; an action clamped at its bound loses its feedback.
        k, free = box_qp(regularised, q_u, low - u, high - u, iterations=qp_iterations)
        reduced = jnp.where(free[:, None] & free[None, :], regularised, jnp.eye(action_size))
        gain = -jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(reduced), True), jnp.where(free[:, None], q_ux, 0.0))
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
    qp_iterations: int = 8,
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
    plan. Bounds: the forward pass clips every action to [low, high], and the backward pass solves
    each step's box-constrained QP by `qp_iterations` projected-Newton iterations (`box_qp`, as
    Tassa et al. 2014), dropping the feedback of the actions clamped at a bound. The cost never
    increases over iterations."""
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
        k, gains, ok = backward_pass(
            jacobian_x, jacobian_u, cost_grad, cost_hess, actions, low, high, mu, qp_iterations
        )

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
