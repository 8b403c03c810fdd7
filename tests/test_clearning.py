"""C-learning and the goal tasks: relabelling stays inside episodes, the classifier's losses and
recursive weights against computations by hand, the maze's walls hold, every estimator runs, action
repeat is honoured, the run folder reports success, and the open-maze learning bar."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mbrlax.algorithms import clearning

from brax.envs.base import Env, State
from mbrlax import buffer as replay
from mbrlax import envs
from mbrlax.loops.episodes import evaluate_episodes


def filled_trajectories(lengths_per_env, capacity):
    """A trajectory store where env e's episodes have the given lengths, back to back; each step's
    obs is (env, episode, step in episode, global time), next_obs the same with the step + 1."""
    num_envs = len(lengths_per_env)
    example = {"obs": jnp.zeros(4), "next_obs": jnp.zeros(4)}
    buffer = replay.init_trajectories(example, capacity, num_envs)
    episode_of, step_of = [], []
    for lengths in lengths_per_env:
        ep = np.concatenate([np.full(n, i) for i, n in enumerate(lengths)])
        st = np.concatenate([np.arange(n) for n in lengths])
        episode_of.append(ep)
        step_of.append(st)
    total = min(len(e) for e in episode_of)
    for t in range(total):
        ep = jnp.array([e[t] for e in episode_of], jnp.int32)
        st = jnp.array([s[t] for s in step_of], jnp.float32)
        obs = jnp.stack([jnp.arange(num_envs, dtype=jnp.float32), ep.astype(jnp.float32), st, jnp.full(num_envs, t)], 1)
        buffer = replay.add_step(buffer, {"obs": obs, "next_obs": obs.at[:, 2].add(1.0)}, ep)
    return buffer, total


@pytest.mark.parametrize("capacity", [60, 37])  # 37 < 60 steps written: the store has wrapped
def test_future_goals_stay_in_their_episode(capacity):
    buffer, total = filled_trajectories([[10, 25, 25], [7, 7, 7, 7, 7, 7, 7, 7, 7]], capacity)
    steps, future = jax.jit(replay.sample_with_future, static_argnums=(2, 4))(
        buffer, jax.random.PRNGKey(0), 4096, 0.9, 30
    )
    steps, future = jax.tree_util.tree_map(np.asarray, (steps, future))
    # Same environment, same episode, and strictly later: future next_obs is k >= 1 steps on.
    np.testing.assert_array_equal(future["obs"][:, 0], steps["obs"][:, 0])
    np.testing.assert_array_equal(future["obs"][:, 1], steps["obs"][:, 1])
    offsets = future["next_obs"][:, 2] - steps["obs"][:, 2]
    assert offsets.min() >= 1
    # Only stored steps are sampled: the newest `capacity` ones.
    assert steps["obs"][:, 3].min() >= max(0, total - capacity) and steps["obs"][:, 3].max() <= total - 1
    # The future never runs past the episode's end nor past the newest stored step.
    episode_lengths = {(0, i): n for i, n in enumerate([10, 25, 25])} | {(1, i): 7 for i in range(9)}
    for s, f in zip(steps["obs"], future["obs"]):
        assert f[2] < episode_lengths[(int(s[0]), int(s[1]))] and f[3] <= total - 1
    # Offsets are geometric (mean 1 / (1 - 0.9) = 10) where the episode leaves room for them.
    roomy = steps["obs"][:, 0] == 0
    roomy &= steps["obs"][:, 1] >= 1
    roomy &= steps["obs"][:, 2] == 0
    if roomy.sum() > 30:
        assert 5.0 < offsets[roomy].mean() < 13.0
    # The last stored step of an episode has its own next observation as its future.
    last = steps["obs"][:, 2] == np.array([episode_lengths[(int(a), int(b))] - 1 for a, b in steps["obs"][:, :2]])
    assert last.any() and np.all(offsets[last] == 1)


def test_relabelled_goals_are_later_states_of_the_same_episode_and_random_goals_of_the_batch():
    """The achieved goal here is (env, episode, step): a future goal must share the first two with
    its transition and be later; the random goals are the batch's next achieved goals, permuted."""
    buffer, _ = filled_trajectories([[10, 25, 25], [7, 7, 7, 7, 7, 7, 7, 7, 7]], 60)
    sample = jax.jit(replay.sample_with_future, static_argnums=(2, 4))
    batch, future = sample(buffer, jax.random.PRNGKey(0), 256, 0.9, 30)
    future_goals, random_goals = clearning.relabelled_goals(batch, future, jax.random.PRNGKey(1), (0, 3))
    future_goals, random_goals, obs = np.asarray(future_goals), np.asarray(random_goals), np.asarray(batch["obs"])
    np.testing.assert_array_equal(future_goals[:, :2], obs[:, :2])
    assert (future_goals[:, 2] > obs[:, 2]).all()
    next_goals = np.asarray(batch["next_obs"])[:, :3]
    np.testing.assert_array_equal(np.sort(random_goals, axis=0), np.sort(next_goals, axis=0))
    assert not np.array_equal(random_goals, next_goals)
    # The actor's goals: the first half future goals, the second half random goals.
    goals = np.asarray(clearning.actor_goals(future_goals, random_goals))
    np.testing.assert_array_equal(goals[:128], future_goals[:128])
    np.testing.assert_array_equal(goals[128:], random_goals[128:])


def test_goal_slices_of_an_observation():
    obs = jnp.array([[0.0, 1.0, 2.0, 3.0, 4.0]])
    np.testing.assert_array_equal(clearning.with_goal(obs, jnp.array([[7.0, 8.0]]), (2, 4)), [[0, 1, 7, 8, 4]])
    np.testing.assert_array_equal(clearning.without_goal(obs, (2, 4)), [[0, 1, 4]])
    np.testing.assert_array_equal(clearning.achieved_goal(obs, (0, 2)), [[0, 1]])


# C-LEARNING: the classifier's losses and recursive weights against computations by hand.


def log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def test_td_weight_is_the_smaller_twins_odds_clipped_and_held_fixed():
    """w = exp(min over twins of the next logit), clipped at 1 / (1 - gamma) = 2 for gamma = 0.5."""
    next_logits = jnp.array([[0.0, 2.0, -1.0], [1.0, 3.0, -2.0]])
    weight = clearning.td_weight(next_logits, 0.5)
    np.testing.assert_allclose(weight, [1.0, 2.0, math.exp(-2.0)], rtol=1e-6)
    gradient = jax.grad(lambda x: clearning.td_weight(x, 0.5).sum())(next_logits)
    np.testing.assert_array_equal(gradient, np.zeros((2, 3)))


def test_td_critic_loss_by_hand():
    """A batch of two transitions and twin classifiers with known logits, the weights by hand."""
    gamma = 0.5
    next_goal = [[1.0, -0.5], [0.5, 2.0]]  # [twin, transition]: C(s, a, s')
    random = [[-1.0, 0.25], [0.0, -2.0]]  # C(s, a, g), g a random goal
    next_random = [[0.0, 2.0], [-0.5, 3.0]]  # C'(s', a', g) of the target twins
    weights = [math.exp(-0.5), 1 / (1 - gamma)]  # exp(min over twins), the second clipped at 2
    by_hand = 0.0
    for k in range(2):
        for i in range(2):
            positive = -(1 - gamma) * log_sigmoid(next_goal[k][i])
            negative = -gamma * weights[i] * log_sigmoid(random[k][i]) - log_sigmoid(-random[k][i])
            by_hand += (positive + negative) / 2  # the mean over the batch, summed over the twins
    weight = clearning.td_weight(jnp.array(next_random), gamma)
    np.testing.assert_allclose(weight, weights, rtol=1e-6)
    loss = clearning.td_critic_loss(jnp.array(next_goal), jnp.array(random), weight, gamma)
    np.testing.assert_allclose(loss, by_hand, rtol=1e-6)
    # The TD target: on random goals alone the loss is least where C / (1 - C) = gamma w.
    at_target = jnp.log(gamma * weight)[None].repeat(2, 0)
    gradient = jax.grad(clearning.td_critic_loss, 1)(jnp.array(next_goal), at_target, weight, gamma)
    np.testing.assert_allclose(gradient, np.zeros((2, 2)), atol=1e-6)


def test_mc_critic_loss_by_hand():
    """Cross-entropy: future goals labelled 1, random goals 0, mean over the batch, sum over twins."""
    future = [[2.0, -1.0], [0.5, 0.0]]
    random = [[-3.0, 1.0], [0.0, 0.5]]
    by_hand = sum(-(log_sigmoid(future[k][i]) + log_sigmoid(-random[k][i])) / 2 for k in range(2) for i in range(2))
    np.testing.assert_allclose(clearning.mc_critic_loss(jnp.array(future), jnp.array(random)), by_hand, rtol=1e-6)


def test_classifier_actor_loss_is_minus_c_or_minus_log_c():
    logit = jnp.array([0.0, 2.0])
    c = [0.5, 1 / (1 + math.exp(-2.0))]
    np.testing.assert_allclose(clearning.classifier_actor_loss(logit, False), -(c[0] + c[1]) / 2, rtol=1e-6)
    np.testing.assert_allclose(
        clearning.classifier_actor_loss(logit, True), -(math.log(c[0]) + math.log(c[1])) / 2, rtol=1e-6
    )


def test_point_maze_walls_and_success():
    env, spec = envs.make("point_maze_u")
    assert spec.goal_slice == (2, 4) and spec.achieved_slice == (0, 2) and spec.success_radius == 0.5
    state = env.reset(jax.random.PRNGKey(0))
    # Put the point in the bottom-left cell (x in [1, 2], y in [1, 2]) and the goal in the top-left.
    x = jnp.array([1.5, 1.5, 1.5, 3.5])
    state = state.replace(pipeline_state=x, obs=x)
    step = jax.jit(env.step)
    for _ in range(12):  # straight up: the wall row between them stops it
        state = step(state, jnp.array([0.0, 1.0]))
    assert float(state.obs[1]) < 2.0 and float(state.metrics["success"]) == 0.0
    for _ in range(12):  # along the bottom to the right, up the corridor, back along the top
        state = step(state, jnp.array([1.0, 0.0]))
    for _ in range(12):
        state = step(state, jnp.array([0.0, 1.0]))
    np.testing.assert_allclose(state.obs[:2], [3.75, 3.75])  # stopped by the outer walls
    for _ in range(8):
        state = step(state, jnp.array([-1.0, 0.0]))
    assert float(state.metrics["distance"]) < 0.5 and float(state.metrics["success"]) == 1.0
    assert float(state.reward) == 1.0


def tiny(**changes):
    """The `tiny` preset's Config on the open maze, with `changes`."""
    return dataclasses.replace(clearning.Config(), **clearning.VARIANTS["tiny"], **changes)



# td runs in the CLI test below (and the contract tests), contrastive in the JaxGCRL test.
@pytest.mark.parametrize("estimator", ["mc", "hybrid"])
def test_every_estimator_runs_and_reports_success(estimator):
    config = tiny(estimator=estimator)
    _, metrics = jax.jit(clearning.make_train(config))(jax.random.PRNGKey(0), config)
    for name, value in {**metrics["train"], **metrics["eval"]}.items():
        assert np.isfinite(np.asarray(value)).all(), name
    success = np.asarray(metrics["eval"]["eval_success"])
    assert success.shape == (2,) and ((success >= 0) & (success <= 1)).all()
    assert (np.asarray(metrics["eval"]["eval_final_distance"]) >= 0).all()


def test_action_repeat_is_honoured():
    """With action_repeat 2 an episode of the open maze's 50 steps takes 25 actions: the 40 random
    steps of the tiny preset's exploration already end one episode in every environment."""
    trainer = clearning.make_train(tiny(action_repeat=2))
    assert trainer.spec.episode_length == envs.make("point_maze_open")[1].episode_length // 2 == 25
    state = jax.jit(trainer.init)(jax.random.PRNGKey(0), tiny())
    np.testing.assert_array_equal(state.episode, np.ones(8))
    assert int(state.buffer.count) == 40


def test_unknown_estimator_is_refused_by_the_cli(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        clearning.main(["--preset", "tiny", "--estimator", "sarsa", "--run-dir", str(tmp_path / "r")])
    assert exit_info.value.code == 2


@pytest.mark.slow
def test_td_clearning_reaches_goals_in_the_open_maze():
    """The issue's bar, success at least 0.8 on the open point maze after a small budget, met in a
    third of the defaults' 60,000 steps: 22,400 (3,200 random, then two evaluation periods of 9,600)
    from 32 environments, with a random policy far below."""
    config = dataclasses.replace(clearning.Config(), total_steps=22_400)
    _, metrics = jax.jit(clearning.make_train(config))(jax.random.PRNGKey(0), config)
    success = np.asarray(metrics["eval"]["eval_success"])
    print(f"C-learning success {success.round(2)}")
    assert success.shape == (2,) and success[-1] >= 0.8, success

    env, spec = envs.make("point_maze_open", num_envs=200)

    def uniform(carry, obs, key):
        return jax.random.uniform(key, (200, 2), minval=-1.0, maxval=1.0), carry

    random_success = float(
        evaluate_episodes(env, jax.random.PRNGKey(1), 200, spec.episode_length, uniform)["eval_success"]
    )
    print(f"random policy success {random_success:.2f}")
    assert random_success < 0.5 and success[-1] > random_success + 0.4


# CONTRASTIVE RL: the losses against computations by hand.


def test_contrastive_actor_loss_is_alpha_log_prob_minus_logit():
    """contrastive_rl's actor loss: mean(alpha log pi - logit), the logit unsquashed, so its gradient
    in the logit is -1/n however negative the logit (a sigmoid's would vanish)."""
    log_prob, logit = jnp.array([-1.0, 2.0]), jnp.array([3.0, -12.0])
    loss = clearning.contrastive_actor_loss(log_prob, logit, 0.2)
    np.testing.assert_allclose(loss, ((0.2 * -1.0 - 3.0) + (0.2 * 2.0 + 12.0)) / 2, rtol=1e-6)
    np.testing.assert_allclose(jax.grad(clearning.contrastive_actor_loss, 1)(log_prob, logit, 0.2), [-0.5, -0.5])
    np.testing.assert_allclose(jax.grad(clearning.contrastive_actor_loss, 0)(log_prob, logit, 0.2), [0.1, 0.1])
    # alpha is a fixed weight for the actor: no gradient flows into it from this loss.
    assert float(jax.grad(clearning.contrastive_actor_loss, 2)(log_prob, logit, 0.2)) == 0.0


def test_temperature_loss_by_hand():
    """alpha * mean(-log pi - target): alpha = 0.5, entropies 1 and 3 against a target of -2."""
    log_alpha, log_prob = jnp.log(0.5), jnp.array([-1.0, -3.0])
    np.testing.assert_allclose(clearning.temperature_loss(log_alpha, log_prob, -2.0), 0.5 * (3.0 + 5.0) / 2, rtol=1e-6)
    # Entropy above the target: alpha falls (positive gradient in log alpha); below it, it rises.
    assert float(jax.grad(clearning.temperature_loss)(log_alpha, log_prob, -2.0)) > 0
    assert float(jax.grad(clearning.temperature_loss)(log_alpha, log_prob, 5.0)) < 0


def test_distance_energy_and_infonce_with_logsumexp_penalty_by_hand():
    """JaxGCRL's critic: energy -||phi - psi||, InfoNCE over each row, + 0.1 mean(logsumexp_row^2)."""
    phi = jnp.array([[0.0, 0.0], [3.0, 4.0]])
    psi = jnp.array([[0.0, 0.0], [0.0, 4.0]])
    logits = clearning.energy(phi[:, None], psi[None], "distance")
    eps = 1e-6  # inside the square root, as JaxGCRL writes it
    by_hand = [[-math.sqrt(eps), -math.sqrt(16 + eps)], [-math.sqrt(25 + eps), -math.sqrt(9 + eps)]]
    np.testing.assert_allclose(logits, by_hand, rtol=1e-6)
    np.testing.assert_allclose(clearning.energy(phi, psi, "distance"), [by_hand[0][0], by_hand[1][1]], rtol=1e-6)

    def lse(values):
        return math.log(sum(math.exp(v) for v in values))

    rows = [lse(by_hand[0]), lse(by_hand[1])]
    cols = [lse([by_hand[0][0], by_hand[1][0]]), lse([by_hand[0][1], by_hand[1][1]])]
    diag = [by_hand[0][0], by_hand[1][1]]
    forward = -((diag[0] - rows[0]) + (diag[1] - rows[1])) / 2
    backward = -((diag[0] - cols[0]) + (diag[1] - cols[1])) / 2
    penalty = 0.1 * (rows[0] ** 2 + rows[1] ** 2) / 2
    np.testing.assert_allclose(clearning.contrastive_critic_loss(logits, "infonce", 0.1), forward + penalty, rtol=1e-5)
    np.testing.assert_allclose(clearning.contrastive_critic_loss(logits, "infonce_backward", 0.0), backward, rtol=1e-5)

    # NCE with the dot energy: the mean over all B x B pairs of the sigmoid cross-entropy.
    dot = clearning.energy(phi[:, None], psi[None], "dot")
    np.testing.assert_allclose(dot, [[0.0, 0.0], [0.0, 16.0]])

    def bce(x, label):
        p = 1 / (1 + math.exp(-x))
        return -math.log(p) if label else -math.log(1 - p)

    nce = (bce(0.0, 1) + bce(0.0, 0) + bce(0.0, 0) + bce(16.0, 1)) / 4
    np.testing.assert_allclose(clearning.contrastive_critic_loss(dot, "nce", 0.0), nce, rtol=1e-5)


def test_contrastive_defaults_follow_contrastive_rl():
    config = clearning.Config()
    assert config.repr_size == 64 and config.entropy_coefficient is None and config.target_entropy_per_dim == 0.0
    preset = clearning.PRESETS["jaxgcrl"]
    assert preset["contrastive_loss"] == "infonce" and preset["energy"] == "distance"
    assert preset["logsumexp_penalty"] == 0.1 and preset["target_entropy_per_dim"] == -0.5


def test_jaxgcrl_critic_and_learned_temperature_run():
    config = tiny(**clearning.VARIANTS["jaxgcrl"])
    _, metrics = jax.jit(clearning.make_train(config))(jax.random.PRNGKey(0), config)
    for name, value in {**metrics["train"], **metrics["eval"]}.items():
        assert np.isfinite(np.asarray(value)).all(), name
    alpha = np.asarray(metrics["train"]["alpha"])
    assert (alpha > 0).all() and not np.allclose(alpha, 1.0)  # learned, away from its start exp(0)


class PassThroughGoal(Env):
    """A 1-D walk t = 0, 1, 2, ... whose goal is at t = `goal_step`: success there only."""

    def __init__(self, goal_step):
        self.goal_step = goal_step

    def _state(self, t, state=None):
        distance = jnp.abs(t - self.goal_step).astype(jnp.float32)
        metrics = {"distance": distance, "success": (distance < 0.5).astype(jnp.float32)}
        zero = jnp.zeros((), jnp.float32)
        return State(pipeline_state=t, obs=jnp.array([t], jnp.float32), reward=zero, done=zero, metrics=metrics)

    def reset(self, rng):
        return self._state(jnp.int32(0))

    def step(self, state, action):
        return self._state(state.pipeline_state + 1)

    observation_size = property(lambda self: 1)
    action_size = property(lambda self: 1)
    backend = property(lambda self: "jax")


@pytest.mark.parametrize("goal_step, any_, final", [(2, 1.0, 0.0), (5, 1.0, 1.0), (9, 0.0, 0.0)])
def test_success_at_any_step_and_at_the_end(goal_step, any_, final):
    """Five steps past t = 1, ..., 5: a goal at 2 is reached and left (any 1, final 0)."""
    env = jax.vmap(PassThroughGoal(goal_step).reset), jax.vmap(PassThroughGoal(goal_step).step)

    class Batched:
        reset = staticmethod(lambda key: env[0](jax.random.split(key, 3)))
        step = staticmethod(env[1])

    metrics = evaluate_episodes(Batched, jax.random.PRNGKey(0), 3, 5, lambda c, obs, k: (jnp.zeros((3, 1)), c))
    assert float(metrics["eval_success"]) == float(metrics["eval_success_any"]) == any_
    assert float(metrics["eval_success_final"]) == final
    assert float(metrics["eval_final_distance"]) == abs(5 - goal_step)
