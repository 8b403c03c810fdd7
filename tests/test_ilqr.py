"""iLQR in PETS (`--planner ilqr`): `mbrlax.ilqr.solve` against the closed-form finite-horizon LQR solution
(a Riccati recursion in numpy), its line search and regulariser on problems where a plain Newton
step fails, the planner through PETS's loop (a CLI run; vmap over seeds equals single runs) and on
its learned-reward and one-member paths, and learning pendulum."""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mbrlax import ensemble, ilqr
from mbrlax.loops import mpc
from mbrlax.algorithms import pets
from mbrlax.loops.episodes import setup

# LINEAR DYNAMICS, QUADRATIC COST: iLQR is exact after one full step

RNG = np.random.default_rng(0)
N, M, H = 3, 2, 10
A = np.eye(N) + 0.1 * RNG.normal(size=(N, N))
B = 0.5 * RNG.normal(size=(N, M))
Q = np.diag([1.0, 2.0, 0.5])
R = np.diag([0.1, 0.3])
X0 = np.array([1.0, -1.0, 0.5])


def linear(x, u):
    return jnp.asarray(A, jnp.float32) @ x + jnp.asarray(B, jnp.float32) @ u


def quadratic_cost(x, u, next_x):
    """PETS's reward comes with each step's next state: u' R u / 2 + x_t+1' Q x_t+1 / 2."""
    return 0.5 * u @ jnp.asarray(R, jnp.float32) @ u + 0.5 * next_x @ jnp.asarray(Q, jnp.float32) @ next_x


def riccati():
    """Finite-horizon LQR by the Riccati recursion, in float64: S = Q + P_t+1 (P_H = 0),
    K_t = (R + B' S B)^-1 B' S A, P_t = A' S (A - B K_t). Returns the gains K_t [H, M, N] and the
    optimal open-loop actions from X0, u_t = -K_t x_t."""
    p, gains = np.zeros((N, N)), []
    for _ in range(H):
        s = Q + p
        k = np.linalg.solve(R + B.T @ s @ B, B.T @ s @ A)
        gains.append(k)
        p = A.T @ s @ (A - B @ k)
    gains = np.array(gains[::-1])
    x, actions = X0, []
    for k in gains:
        actions.append(-k @ x)
        x = A @ x + B @ actions[-1]
    return gains, np.array(actions)


def test_ilqr_is_the_closed_form_lqr_solution_on_a_linear_system():
    """From a zero plan, with bounds that never bind and no regularisation, the first iteration's full
    step is the optimum: the actions equal the Riccati solution's and the feedback gains its -K_t;
    later iterations change the cost by rounding at most."""
    gains, actions = riccati()
    run = jax.jit(lambda x0: ilqr.solve(linear, quadratic_cost, x0, jnp.zeros((H, M)), -10.0, 10.0, iterations=3,
                                        mu_init=0.0, mu_min=0.0))
    result = run(jnp.asarray(X0, jnp.float32))
    np.testing.assert_allclose(result.actions, actions, atol=1e-5)
    np.testing.assert_allclose(result.gains, -gains, atol=1e-4)
    assert bool(result.accepted[0])
    np.testing.assert_allclose(result.costs, result.costs[0], rtol=1e-6)  # later: rounding at most
    np.testing.assert_allclose(result.states[0], X0, atol=1e-7)
    cost = sum(quadratic_cost(x, u, y) for x, u, y in zip(result.states[:-1], result.actions, result.states[1:]))
    np.testing.assert_allclose(result.cost, cost, rtol=1e-5)


def test_ilqr_vmaps_over_states():
    """Two initial states at once give what each gives alone (the LQR solution from each)."""

    def solve(x0):
        return ilqr.solve(linear, quadratic_cost, x0, jnp.zeros((H, M)), -10.0, 10.0, iterations=3)

    starts = jnp.asarray([X0, -2.0 * X0], jnp.float32)
    batched = jax.jit(jax.vmap(solve))(starts)
    for i in range(2):
        np.testing.assert_allclose(batched.actions[i], jax.jit(solve)(starts[i]).actions, atol=1e-5)


def test_ilqr_keeps_the_bounds_and_beats_the_clipped_lqr_plan():
    """With a bound that binds (|u| <= 0.3 on both actions, where the unbounded optimum reaches 1.3)
    every action stays within it, and the cost ends below that of the LQR plan clipped to the bound."""
    x0 = jnp.asarray(-2.0 * X0, jnp.float32)
    result = jax.jit(lambda x0: ilqr.solve(linear, quadratic_cost, x0, jnp.zeros((H, M)), -0.3, 0.3, iterations=6))(x0)
    assert float(jnp.abs(result.actions).max()) <= 0.3 + 1e-7
    x, plan = -2.0 * X0, []
    for k in riccati()[0]:
        plan.append(np.clip(-k @ x, -0.3, 0.3))
        x = A @ x + B @ plan[-1]
    _, _, clipped_cost = ilqr.rollout(linear, quadratic_cost, x0, jnp.asarray(plan, jnp.float32), -0.3, 0.3)
    assert float(result.cost) < float(clipped_cost), (float(result.cost), float(clipped_cost))


# LINE SEARCH AND REGULARISATION where a plain Gauss-Newton step fails


# THE BOX QP of each backward step: projected Newton against every active set


def brute_force_box_qp(h, g, lower, upper):
    """The exact minimiser of 0.5 x'Hx + g'x on the box, in float64: for a convex QP it is the best
    feasible point among the 3^n choices of each coordinate at its lower bound, its upper bound, or
    free (the free ones solving their part of the Newton system)."""
    best, best_value = None, np.inf
    for choice in itertools.product((-1, 0, 1), repeat=len(g)):
        choice = np.array(choice)
        x = np.where(choice < 0, lower, np.where(choice > 0, upper, 0.0))
        free = choice == 0
        if free.any():
            rhs = g[free] + h[np.ix_(free, ~free)] @ x[~free]
            x[free] = -np.linalg.solve(h[np.ix_(free, free)], rhs)
        if np.all(x >= lower - 1e-12) and np.all(x <= upper + 1e-12):
            value = g @ x + 0.5 * x @ h @ x
            if value < best_value:
                best, best_value = x, value
    return best, best_value


def random_box_qps(size: int, count: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        factor = rng.normal(size=(size, size))
        h = factor @ factor.T + 0.05 * np.eye(size)  # coupled: large off-diagonal terms
        yield h, 2.0 * rng.normal(size=size), -0.5 * np.ones(size), 0.5 * np.ones(size)


@pytest.mark.parametrize("size", [2, 3])
def test_box_qp_is_the_exact_minimiser_on_random_coupled_problems(size):
    """200 random coupled problems per size: the projected-Newton solution equals the brute-force one,
    including problems whose clamped set changes after the clipped unconstrained start (the one-pass
    estimate before it got some of these wrong, with a wrong sign in one dimension)."""
    solve = jax.jit(jax.vmap(lambda h, g, lo, hi: ilqr.box_qp(h, g, lo, hi)))
    problems = list(random_box_qps(size, 200, seed=size))
    h, g, lower, upper = (np.array(part) for part in zip(*problems))
    x, free = solve(*(jnp.asarray(part, jnp.float32) for part in (h, g, lower, upper)))
    changed = 0
    for i in range(len(problems)):
        exact, exact_value = brute_force_box_qp(h[i], g[i], lower[i], upper[i])
        np.testing.assert_allclose(x[i], exact, atol=2e-4, err_msg=f"problem {i}")
        np.testing.assert_array_equal(free[i], (exact > lower[i] + 1e-6) & (exact < upper[i] - 1e-6))
        start = np.clip(-np.linalg.solve(h[i], g[i]), lower[i], upper[i])
        changed += not np.allclose(start, exact, atol=1e-4)
    assert changed >= 20, changed  # the iterations, not the start, found these


def test_a_backward_step_with_two_coupled_actions_solves_its_box_qp():
    """One backward step whose Q_uu and Q_u are given by the stage cost alone (no dynamics): its step
    k is the box QP's minimiser, and the clamped action's gain row is 0."""
    h = np.array([[2.0, 1.8], [1.8, 2.0]])
    g = np.array([2.0, 1.0])  # the optimum (-0.5, -0.05); the one-pass estimate gave (-0.5, +0.5)
    exact, _ = brute_force_box_qp(h, g, -0.5 * np.ones(2), 0.5 * np.ones(2))
    hess = np.zeros((4, 4))
    hess[1:3, 1:3] = h
    hess[1:3, 0] = hess[0, 1:3] = [0.3, -0.2]  # Q_ux, for the gains
    grad = np.zeros(4)
    grad[1:3] = g
    k, gains, ok = ilqr.backward_pass(
        jnp.zeros((1, 1, 1)), jnp.zeros((1, 1, 2)), jnp.asarray(grad[None], jnp.float32),
        jnp.asarray(hess[None], jnp.float32), jnp.zeros((1, 2)), -0.5, 0.5, 0.0,
    )
    assert bool(ok)
    np.testing.assert_allclose(k[0], exact, atol=1e-5)
    clamped = np.abs(exact) >= 0.5 - 1e-6
    assert clamped.any() and not clamped.all()
    np.testing.assert_array_equal(gains[0][clamped], 0.0)
    free = ~clamped
    np.testing.assert_allclose(gains[0][free, 0], -np.array([0.3, -0.2])[free] / h[free, free], rtol=1e-5)


def test_the_line_search_shortens_a_step_that_would_not_lower_the_cost():
    """x' = u - u^3, cost (x' - 1.2)^2, one step from u = 0 (cost 1.44): the full Gauss-Newton step
    (u = 1.2) lands on x' = -0.53 (cost 2.99), so with the full step alone the iteration is rejected
    and the plan kept; the line search's shorter steps lower the cost, and it keeps the cheapest."""

    def dynamics(x, u):
        return x + u - u**3

    def cost(x, u, next_x):
        return ((next_x - 1.2) ** 2).sum()

    def run(steps):
        return ilqr.solve(dynamics, cost, jnp.zeros(1), jnp.zeros((1, 1)), -5.0, 5.0, iterations=1,
                          line_search_steps=steps, mu_init=0.0, mu_min=0.0)

    full_step_only = run(1)
    assert not bool(full_step_only.accepted[0]) and float(full_step_only.cost) == pytest.approx(1.44)
    searched = run(8)
    u = 1.2 * np.geomspace(1.0, 1e-3, 8)  # the steps tried: the cheapest wins (u = 0.45, cost 0.71)
    assert bool(searched.accepted[0])
    np.testing.assert_allclose(searched.cost, np.min((u - u**3 - 1.2) ** 2), rtol=1e-5)


def test_regularisation_handles_a_concave_control_cost():
    """Q_uu < 0 (a cost that rewards large actions, -u^2, inside |u| <= 1): the unregularised
    backward pass is refused (not positive definite) and changes nothing; iLQR, from mu = 1, raises
    mu until Q_uu + mu I is positive definite and then pushes every action out to a bound within 30
    iterations, its cost never rising from one iteration to the next (the escape from near u = 0, a
    maximum of -u^2, is slow: small regularised steps)."""

    def dynamics(x, u):
        return x + 0.1 * jnp.sin(x) + u

    def cost(x, u, next_x):
        return 0.1 * (next_x**2).sum() - (u**2).sum()

    x0, init = jnp.array([0.2]), jnp.full((5, 1), 0.05)
    jac_x, jac_u = jax.vmap(jax.jacfwd(dynamics, argnums=(0, 1)))(jnp.zeros((5, 1)), init)
    hess = jnp.broadcast_to(jnp.diag(jnp.array([0.0, -2.0, 0.2])), (5, 3, 3))
    k, gains, ok = ilqr.backward_pass(jac_x, jac_u, jnp.zeros((5, 3)), hess, init, -1.0, 1.0, 0.0)
    assert not bool(ok) and not np.any(np.asarray(k)) and not np.any(np.asarray(gains))

    _, _, start = ilqr.rollout(dynamics, cost, x0, init, -1.0, 1.0)
    result = jax.jit(lambda x0: ilqr.solve(dynamics, cost, x0, init, -1.0, 1.0, iterations=30, mu_init=1.0))(x0)
    costs = np.concatenate([[float(start)], np.asarray(result.costs)])
    assert np.all(np.isfinite(costs)) and np.all(np.diff(costs) <= 0.0), costs
    assert not bool(result.accepted[0]) and bool(result.accepted[1])  # mu = 1 refused, mu = 4 works
    assert costs[-1] < costs[0] - 4.0  # from 0.09 to -4.6 (measured): every action at a bound
    np.testing.assert_allclose(np.abs(result.actions), 1.0)


# THE PLANNER IN PETS'S LOOP

TINY = dataclasses.replace(pets.Config(**pets.VARIANTS["tiny"]), planner="ilqr", ilqr_iterations=2,
                           ilqr_line_search_steps=3)



# The CLI run, kill and resume, determinism, vmapped neighbours and bad input: tests/test_contract.py
# ("pets-ilqr").


@pytest.mark.parametrize("learn_reward, member", [(True, None), (False, 1)], ids=["learned-reward", "one-member"])
def test_the_planner_with_a_learned_reward_or_one_member(learn_reward, member):
    """The planner's other paths, on an untrained ensemble for two states at once: the reward from the
    model's reward output, or the dynamics of one elite. Each gives finite plans within the bounds
    whose first actions are the ones acted, and the memory is the new plans."""
    config = dataclasses.replace(TINY, learn_reward=learn_reward, ilqr_member=member)
    task = setup(config, None, algorithm="PETS")
    model_config = dataclasses.replace(config, learn_reward=learn_reward)
    obs_size, action_size = task.spec.observation_size, task.spec.action_size
    model = ensemble.init(jax.random.PRNGKey(0), model_config, obs_size, action_size, 1e-3, 0.0)
    planner = pets.ilqr_planner(config, mpc.PlannerContext(task, model_config, None, config.particles))
    obs = jax.random.normal(jax.random.PRNGKey(1), (2, obs_size))
    memory = jnp.broadcast_to(planner.fresh, (2,) + planner.fresh.shape)
    actions, plans = jax.jit(planner.act)((), model, obs, memory, jax.random.PRNGKey(2), config)
    assert actions.shape == (2, action_size) and plans.shape == (2, config.horizon, action_size)
    assert np.all(np.isfinite(plans)) and np.all(plans >= task.low) and np.all(plans <= task.high)
    np.testing.assert_array_equal(actions, plans[:, 0])
    assert not np.allclose(plans, memory)  # iLQR moved away from the middle plan


def test_bad_ilqr_member_is_refused():
    with pytest.raises(pets.ConfigError, match="ilqr_member"):
        dataclasses.replace(TINY, ilqr_member=2).validate()


@pytest.mark.slow
def test_ilqr_learns_pendulum():
    """PETS with iLQR on pendulum (random policy about -1200): one random and six planned episodes
    with members of 2 x 32 units and 5 iLQR iterations; the three evaluation episodes then average
    -250 or better, in the mean of seeds 0 and 1 (vmapped). Measured (4 seeds vmapped, 2-core CPU
    shared): -247.5, -153.1, -121.1, -199.3 for seeds 0 to 3, so seed 0 alone sits at the bar."""
    config = dataclasses.replace(
        pets.Config(env="pendulum", planner="ilqr"),
        total_steps=1400,
        eval_every=1400,
        model_hidden_sizes=(32, 32),
        ilqr_iterations=5,
    )
    keys = jnp.stack([jax.random.PRNGKey(0), jax.random.PRNGKey(1)])
    configs = jax.tree_util.tree_map(lambda v: jnp.stack([v, v]), config)
    _, metrics = jax.jit(jax.vmap(pets.make_train(config)))(keys, configs)
    final = np.asarray(metrics["eval"]["eval_return"])[:, -1]
    assert final.mean() >= -250, f"PETS with iLQR reached only {final.round()} on pendulum (seeds 0 and 1)"
