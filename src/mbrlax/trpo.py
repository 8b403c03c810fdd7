"""TRPO's update (Schulman et al. 2015, "Trust Region Policy Optimization"): a natural-gradient step
found by conjugate gradient, scaled to the KL bound, with a backtracking line search; as the MB-MPO
authors' ConjugateGradientOptimizer (sandbox_maml/rocky/tf/optimizers/conjugate_gradient_optimizer.py,
cg from rllab_maml/misc/krylov.py).

Pure and jittable, with fixed loop lengths. MB-MPO's outer step takes it (`algorithms/mbmpo.py`,
`outer_step`); tests/test_mbmpo.py checks it against a dense solve on MB-MPO's own objective.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree


def conjugate_gradient(matvec, b, iterations, residual_tol=1e-10):
    """Solve A x = b for a symmetric positive definite A given as `matvec`, by `iterations` steps of
    conjugate gradient from x = 0; once the squared residual is below `residual_tol` the iterate is
    kept (rllab's `krylov.cg` breaks there), so the loop length is fixed."""

    def body(_, carry):
        x, r, p, rdotr = carry
        z = matvec(p)
        v = rdotr / (p @ z)
        x_new, r_new = x + v * p, r - v * z
        new_rdotr = r_new @ r_new
        updated = (x_new, r_new, r_new + (new_rdotr / rdotr) * p, new_rdotr)
        return jax.tree_util.tree_map(lambda new, old: jnp.where(rdotr >= residual_tol, new, old), updated, carry)

    return jax.lax.fori_loop(0, iterations, body, (jnp.zeros_like(b), b, b, b @ b))[0]


def step(objective_fn, kl_fn, params, max_kl, *, cg_iterations, damping, backtrack_ratio, max_backtracks):
    """One TRPO step that raises `objective_fn` with `kl_fn` <= max_kl (kl_fn is 0 at `params`).

    The direction s solves (H + damping I) s = g by conjugate gradient, with g the objective's
    gradient and H the Hessian of kl_fn at params (the Fisher information there); the full step
    beta s has beta = sqrt(2 max_kl / s.(H + damping I)s), where the quadratic model of the KL reaches
    max_kl. The line search tries backtrack_ratio^n beta s, n = 0 .. max_backtracks - 1, and takes the
    first that improves the objective and keeps the KL within max_kl; if none does, params stay.
    Returns the new params and the objective before, the objective and KL after, the number of
    tries and whether a step was taken."""
    flat, unravel = ravel_pytree(params)
    objective = lambda x: objective_fn(unravel(x))
    kl = lambda x: kl_fn(unravel(x))
    before, grad = jax.value_and_grad(objective)(flat)
    _, hessian_vp = jax.linearize(jax.grad(kl), flat)

    def fisher_vp(v):
        return hessian_vp(v) + damping * v

    direction = conjugate_gradient(fisher_vp, grad, cg_iterations)
    step_size = jnp.sqrt(2.0 * max_kl / (direction @ fisher_vp(direction) + 1e-8))
    full_step = jnp.where(jnp.isnan(step_size), 1.0, step_size) * direction

    def keep_searching(carry):
        tries, accepted, _, _ = carry
        return (tries < max_backtracks) & ~accepted

    def try_next(carry):
        tries, _, _, _ = carry
        candidate = flat + backtrack_ratio**tries * full_step
        value, divergence = objective(candidate), kl(candidate)
        return tries + 1, (value > before) & (divergence <= max_kl), value, divergence

    init = (jnp.int32(0), jnp.bool_(False), before, jnp.zeros_like(before))
    tries, accepted, value, divergence = jax.lax.while_loop(keep_searching, try_next, init)
    new = jnp.where(accepted, flat + backtrack_ratio ** (tries - 1) * full_step, flat)
    info = {
        "objective_before": before,
        "objective": jnp.where(accepted, value, before),
        "kl": jnp.where(accepted, divergence, 0.0),
        "tries": tries,
        "accepted": accepted.astype(jnp.float32),
    }
    return unravel(new), info
