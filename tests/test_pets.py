"""PETS: the planner and the trajectory sampling against simple references, the presets, the Brax
path, the PETS-specific bad input, and learning pendulum. The guarantees every algorithm gives (a CLI
run and its resume, vmap, determinism, generic bad input) are tests/test_contract.py's, with
VARIANTS["tiny"]."""

from __future__ import annotations

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import SMALL_PENDULUM_PLANNING, cli_args
from mbrlax import ensemble, planners
from mbrlax.loops import mpc
from mbrlax.algorithms import pets

# The tiny preset as a Config (tests/test_gym.py, test_sweeps.py and test_determinism.py import it).
TINY = pets.Config(**pets.VARIANTS["tiny"])
TINY_ARGS = cli_args(TINY) + ["--no-progress"]



# PLANNERS against the known maximiser of a concave quadratic score over action sequences

H, LOW, HIGH = 4, jnp.array([-1.0, -2.0]), jnp.array([1.0, 2.0])
TARGET = jnp.array([[0.4, -0.8], [-0.3, 0.5], [0.0, 0.9], [-0.45, -0.4]])  # inside the bounds
WEIGHTS = jnp.array([[1.0], [2.0], [0.5], [3.0]])  # a different curvature at every time step


def quadratic(sequences, key=None):
    """Concave in the sequence [.., H, A], maximal (0) at TARGET only."""
    return -(WEIGHTS * (sequences - TARGET) ** 2).sum((-2, -1))


def start():
    """The search's start: the middle of the bounds, a spread of a quarter of their range."""
    return jnp.zeros((H, 2)), jnp.broadcast_to((HIGH - LOW) / 4.0, (H, 2))


@pytest.mark.parametrize("truncated", [True, False], ids=["truncated", "clipped"])
def test_cem_finds_the_maximum_of_a_quadratic(truncated):
    """Within 0.01 of the maximiser and narrowed around it (measured over 20 keys: 0.002 at most)."""
    mean0, std0 = start()

    def sample(key, mean, std):
        return planners.gaussian_sequences(key, mean, std, 200, LOW, HIGH, truncated=truncated)

    run = jax.jit(functools.partial(planners.cem, quadratic, sample, iterations=15, elites=20, alpha=0.1))
    mean, std = run(mean0, std0, jax.random.PRNGKey(0))
    np.testing.assert_allclose(mean, TARGET, atol=0.01)
    assert float(std.max()) < 0.01


def test_icem_finds_the_maximum_of_a_quadratic():
    """Within 0.15 of the maximiser and 98 % of the way to it in score (measured over 20 keys: 0.11
    and 99.5 % at worst). iCEM narrows more slowly than CEM here: its population shrinks to twice
    the elites, and `coloured_noise` scales every sample to unit spread over time."""
    mean0, std0 = start()
    options = dict(
        iterations=8, population=400, elites=10, alpha=0.1, noise_beta=2.0, population_decay=1.25, keep_elites=0.3
    )
    run = jax.jit(functools.partial(planners.icem, quadratic, **options))
    mean, _ = run(mean0, std0, jax.random.PRNGKey(0), LOW, HIGH)
    np.testing.assert_allclose(mean, TARGET, atol=0.15)
    assert float(quadratic(mean)) > 0.02 * float(quadratic(mean0))


def test_icem_samples_as_mbrl_libs_icem_optimizer():
    """mbrl-lib's ICEMOptimizer within one search: iteration i samples ceil(max(population /
    decay^i, 2 elites)) sequences; the middle iterations add ceil(0.3 elites) of the previous
    iteration's elites, drawn at random (not always the best); the last adds the mean only."""
    mean0, std0 = start()
    seen = []

    def score(samples, key):
        seen.append(np.asarray(samples))
        return quadratic(samples, key)

    options = dict(
        iterations=3, population=10, elites=3, alpha=0.1, noise_beta=2.0, population_decay=1.25, keep_elites=0.3
    )
    sizes, kept_ranks = [], []
    for seed in range(8):
        seen.clear()
        planners.icem(score, mean0, std0, jax.random.PRNGKey(seed), LOW, HIGH, **options)
        sizes.append([len(samples) for samples in seen])
        # iteration 0's elites, best first; the one row iteration 1 adds is one of them
        elites = seen[0][np.argsort(-np.asarray(quadratic(seen[0])), kind="stable")[:3]]
        added = seen[1][-1]
        kept_ranks.append(next(r for r in range(3) if np.array_equal(elites[r], added)))
        # the last iteration's added row is the mean it sampled around, refitted twice
        mean = np.asarray(mean0)
        for samples in seen[:2]:
            best = samples[np.argsort(-np.asarray(quadratic(samples)), kind="stable")[:3]]
            mean = 0.1 * mean + 0.9 * best.mean(axis=0)
        np.testing.assert_allclose(seen[2][-1], mean, atol=1e-6)
    assert sizes == [[10, 8 + 1, 7 + 1]] * 8  # ceil(10 / 1.25^2) = 7: mbrl-lib's ceil, not a floor's 6
    assert len(set(kept_ranks)) > 1, kept_ranks  # a random elite, not always the best


def test_random_shooting_returns_its_best_sample_which_nears_the_maximum():
    """One step of one action: the best of 2000 uniform samples on [-1, 1] is within 0.01 of the
    maximiser except with probability below 1e-8; and it is the best sample of the score's own batch."""
    target, low, high = 0.37, jnp.array([-1.0]), jnp.array([1.0])
    seen = []

    def score(samples, key):
        seen.append(samples)
        return -((samples[..., 0, 0] - target) ** 2)

    best = planners.random_shooting(score, jax.random.PRNGKey(0), low, high, population=2000, horizon=1)
    assert best.shape == (1, 1) and abs(float(best[0, 0]) - target) < 0.01
    samples = np.asarray(seen[0])
    assert samples.shape == (2000, 1, 1) and samples.min() >= -1 and samples.max() <= 1
    assert float(best[0, 0]) == samples[np.argmin(np.abs(samples[:, 0, 0] - target)), 0, 0]


@pytest.mark.parametrize("planner", pets.PLANNERS)
def test_plan_runs_the_configured_planner(planner):
    """`plan` gives what the planner the Config names gives, with the Config's settings."""
    alpha = 0.2
    config = dataclasses.replace(
        TINY, planner=planner, horizon=H, population=16, num_elites=4, cem_iterations=2, alpha=alpha
    )
    mean0, std0 = start()
    key = jax.random.PRNGKey(1)
    planned = pets.plan(config, quadratic, mean0, std0, key, LOW, HIGH)
    if planner == "random":
        expected = planners.random_shooting(quadratic, key, LOW, HIGH, population=16, horizon=H)
    elif planner == "icem":
        options = dict(noise_beta=config.icem_noise_beta, population_decay=config.icem_population_decay)
        options.update(iterations=2, population=16, elites=4, alpha=alpha, keep_elites=config.icem_keep_elites)
        expected, _ = planners.icem(quadratic, mean0, std0, key, LOW, HIGH, **options)
    else:
        sample = functools.partial(planners.gaussian_sequences, n=16, low=LOW, high=HIGH, truncated=True)
        expected, _ = planners.cem(quadratic, sample, mean0, std0, key, iterations=2, elites=4, alpha=alpha)
    np.testing.assert_array_equal(planned, expected)


def test_cem_returns_the_momentum_smoothed_mean():
    """Both references return the smoothed mean (handful-of-trials cem.py: `sol = mean`; mbrl-lib
    trajectory_opt.py: `return mu`), not the raw mean of the last elites."""
    rng = np.random.default_rng(0)
    population = jnp.asarray(rng.uniform(-1, 1, (32, 4, 2)), jnp.float32)
    target = jnp.full((4, 2), 0.5)
    mean0, std0 = jnp.zeros((4, 2)), jnp.ones((4, 2))

    def score(pop, key):
        return -((pop - target) ** 2).sum((1, 2))

    def sample(key, mean, std):
        return population  # the same candidates every iteration: the update is known in closed form

    alpha, elites = 0.3, 5
    top = population[np.argsort(-np.asarray(score(population, None)))[:elites]]
    key = jax.random.PRNGKey(0)
    mean, std = planners.cem(score, sample, mean0, std0, key, iterations=1, elites=elites, alpha=alpha)
    np.testing.assert_allclose(mean, alpha * mean0 + (1 - alpha) * top.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std**2, alpha * std0**2 + (1 - alpha) * top.var(0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(mean, top.mean(0), atol=1e-3)  # the old behaviour returned this
    # Two iterations: the smoothing compounds, the elites stay the same.
    mean2, _ = planners.cem(score, sample, mean0, std0, key, iterations=2, elites=elites, alpha=alpha)
    np.testing.assert_allclose(mean2, alpha**2 * mean0 + (1 - alpha**2) * top.mean(0), rtol=1e-5, atol=1e-6)


def test_coloured_noise_has_unit_spread_over_time_and_is_correlated_in_time():
    noise = planners.coloured_noise(jax.random.PRNGKey(0), (512, 30, 2), beta=2.0)
    assert noise.shape == (512, 30, 2)
    np.testing.assert_allclose(noise.std(axis=1).mean(), 1.0, atol=0.05)
    lag1 = np.mean(np.asarray(noise[:, 1:] * noise[:, :-1]))
    assert lag1 > 0.5  # brown-ish noise: neighbours alike; white noise would give about 0


def test_mpc_warm_starts_from_the_shifted_plan_and_acts_its_first_step():
    previous = jnp.arange(2 * 3 * 1, dtype=jnp.float32).reshape(2, 3, 1)  # 2 states, H = 3, A = 1
    obs = jnp.array([[10.0], [20.0]])

    def plan_fn(obs, warm_start, key):
        return warm_start + obs  # a stand-in planner: its result shows what it was given

    actions, plans = mpc.replan(plan_fn, obs, previous, jax.random.PRNGKey(0), jnp.array([-5.0]))
    np.testing.assert_array_equal(plans[:, :, 0], [[11, 12, 5], [24, 25, 15]])
    np.testing.assert_array_equal(actions, plans[:, 0])


# TRAJECTORY SAMPLING against a by-hand loop


def by_hand_returns(step, obs, sequence, particles):
    """A sequence's mean return over its particles, one particle and one step at a time:
    `step(particle, t, state, action) -> (next_state, reward, done)`; nothing after a termination.
    Also says whether some particle terminated before the last step."""
    totals, early = [], False
    for j in range(particles):
        state, total, alive = np.asarray(obs, np.float64), 0.0, True
        for t, action in enumerate(np.asarray(sequence)):
            state, reward, done = step(j, t, state, np.asarray(action, np.float64))
            total += float(reward) if alive else 0.0
            early |= bool(alive and done and t < len(sequence) - 1)
            alive = alive and not done
        totals.append(total)
    return np.mean(totals), early


def test_sequence_returns_of_a_linear_stub_model():
    """s' = A s + B a + 0.1 noise (a fresh draw per particle and step), reward -|s'|^2, termination
    when s'_0 > 0.3: each sequence's mean over the first P of its rows, as a loop computes it."""
    A = np.array([[1.0, 0.1], [-0.2, 0.9]], np.float32)
    B = np.array([[0.5], [0.3]], np.float32)
    n, horizon, particles, rows = 3, 6, 3, 4
    key = jax.random.PRNGKey(5)
    # The noise the stub draws at step t (the t-th key of the horizon's split), for n * rows rows.
    noise = [np.asarray(jax.random.normal(k, (n * rows, 2))) for k in jax.random.split(key, horizon)]

    def stub(states, actions, key):
        next_states = states @ A.T + actions @ B.T + 0.1 * jax.random.normal(key, states.shape)
        return next_states, -(next_states**2).sum(-1), next_states[:, 0] > 0.3

    sequences = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (n, horizon, 1)), jnp.float32)
    obs = jnp.array([0.2, -0.1])
    returns = mpc.sequence_returns(stub, obs, sequences, key, particles=particles, particle_rows=rows)

    expected, early = [], False
    for s in range(n):

        def step(j, t, state, action, s=s):  # particle j of sequence s is row s * rows + j
            next_state = A @ state + B @ action + 0.1 * noise[t][s * rows + j]
            return next_state, -(next_state**2).sum(), next_state[0] > 0.3

        mean, terminated = by_hand_returns(step, obs, sequences[s], particles)
        expected.append(mean)
        early |= terminated
    np.testing.assert_allclose(returns, expected, rtol=1e-5, atol=1e-5)
    assert early  # the termination rule was exercised

    def exploding(states, actions, key):
        return states, jnp.full(states.shape[0], jnp.inf), jnp.zeros(states.shape[0], bool)

    np.testing.assert_array_equal(mpc.sequence_returns(exploding, obs, sequences, key, particles=2), -1e10)


# Compiled whole, ensemble.init takes a second where op by op it takes several.
init_ensemble = jax.jit(ensemble.init, static_argnums=(1, 2, 3))


def deterministic_ensemble(members: int, elites: int, learn_reward: bool, identical: bool = False):
    """A small deterministic ensemble (mean predictions only), its members different unless `identical`."""
    cfg = ensemble.EnsembleConfig(
        ensemble_size=members, model_elites=elites, model_hidden_sizes=(8,), model_probabilistic=False,
        learn_reward=learn_reward,
    )
    state = init_ensemble(jax.random.PRNGKey(3), cfg, 2, 1, 1e-3, 0.0)
    if identical:
        net = jax.tree_util.tree_map(lambda p: jnp.broadcast_to(p[:1], p.shape), state.params["net"])
        state = state.replace(params=dict(state.params, net=net))
    return cfg, state.replace(elites=jnp.arange(elites, dtype=jnp.int32)[::-1])


@pytest.mark.parametrize(
    "propagation, members, elites, particles, learn_reward, identical",
    [
        ("tsinf", 3, 3, 5, False, False),  # 5 particles over 3 members: 6 rows a sequence
        ("tsinf", 3, 2, 4, True, False),  # through the elites only, with the model's reward
        ("expectation", 3, 3, 2, False, False),
        ("ts1", 3, 3, 3, True, True),  # a fresh member each step: alike members make it checkable
    ],
)
def test_sequence_returns_through_the_ensemble(propagation, members, elites, particles, learn_reward, identical):
    """`model_step` and `sequence_returns` as the planner calls them, against a loop over particles
    and steps with `ensemble.member_mean`: TSinf keeps particle j on (elite) member j mod G, the
    expectation averages the members' means, TS1 draws members (all alike here)."""
    cfg, model = deterministic_ensemble(members, elites, learn_reward, identical)
    used = np.asarray(model.elites) if elites < members else np.arange(members)
    rows = mpc.particles_per_sequence(particles, len(used), propagation)

    def reward_fn(obs, action, next_obs):
        return -(next_obs**2).sum(-1) - 0.1 * action[..., 0] ** 2

    def termination_fn(obs, action, next_obs):
        return next_obs[..., 0] > 0.25

    step_fn = functools.partial(
        mpc.model_step,
        cfg,
        model,
        propagation=propagation,
        elites_only=elites < members,
        reward_fn=None if learn_reward else reward_fn,
        termination_fn=termination_fn,
    )
    sequences = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (3, 4, 1)), jnp.float32)
    obs = jnp.array([0.1, -0.2])
    key = jax.random.PRNGKey(0)
    returns = mpc.sequence_returns(step_fn, obs, sequences, key, particles=particles, particle_rows=rows)

    member_mean = jax.jit(functools.partial(ensemble.member_mean, cfg))  # one compilation for every call

    def member_step(member, state, action):
        next_obs, reward = member_mean(model, jnp.int32(member), state[None], action[None])
        return np.asarray(next_obs[0], np.float64), (None if reward is None else float(reward[0]))

    def step(j, t, state, action):
        state32, action32 = jnp.asarray(state, jnp.float32), jnp.asarray(action, jnp.float32)
        if propagation == "expectation":
            outs = [member_step(m, state32, action32) for m in used]
            next_state = np.mean([o[0] for o in outs], axis=0)
            model_reward = np.mean([o[1] for o in outs]) if learn_reward else None
        else:
            next_state, model_reward = member_step(used[j % len(used)], state32, action32)
        reward = model_reward if learn_reward else float(reward_fn(state, action, next_state))
        return next_state, reward, bool(termination_fn(state, action, next_state))

    expected, early = zip(*[by_hand_returns(step, obs, sequence, particles) for sequence in sequences])
    np.testing.assert_allclose(returns, expected, rtol=1e-4, atol=1e-4)
    assert any(early)  # the termination rule was exercised


@pytest.mark.parametrize("particles, members", [(20, 7), (5, 3), (20, 5)])
def test_tsinf_gives_every_sequence_the_same_even_split_of_members(particles, members):
    """TSinf with P particles over G members: each member carries floor or ceil of P / G particles of
    every sequence, the same members for every sequence (the original refuses G not dividing P)."""
    P_run = mpc.particles_per_sequence(particles, members, "tsinf")
    assert P_run % members == 0 and particles <= P_run < particles + members
    assert mpc.particles_per_sequence(particles, members, "ts1") == particles
    # Which member ensemble.propagate uses for each row, laid out as PETS lays out its particles.
    cfg = ensemble.EnsembleConfig(ensemble_size=members, model_hidden_sizes=(8,))
    state = init_ensemble(jax.random.PRNGKey(1), cfg, 2, 1, 1e-3, 0.0)
    sequences = 4
    obs = jnp.asarray(np.random.default_rng(0).normal(size=(sequences * P_run, 2)), jnp.float32)
    action = jnp.zeros((sequences * P_run, 1))

    @jax.jit
    def propagate_and_predict(state, obs, action):
        next_obs, _ = ensemble.propagate(cfg, state, obs, action, jax.random.PRNGKey(2), mode="tsinf", sample=False)
        return next_obs, ensemble.predict(cfg, state, obs, action)[0]

    next_obs, per_member = propagate_and_predict(state, obs, action)
    member = np.abs(np.asarray(per_member) - np.asarray(next_obs)[None]).max(-1).argmin(0).reshape(sequences, P_run)
    counted = member[:, :particles]
    for s in range(sequences):
        np.testing.assert_array_equal(counted[s], counted[0])
    counts = np.bincount(counted[0], minlength=members)
    assert set(counts) <= {particles // members, -(-particles // members)} and counts.sum() == particles


# CONFIG AND PRESETS


def test_the_ensemble_reads_the_model_fields_of_the_config():
    """One name from the flag to the core: the ensemble's functions take PETS's Config itself."""
    config = dataclasses.replace(TINY, ensemble_size=4, model_elites=3, model_hidden_sizes=(7, 9))
    assert isinstance(config, ensemble.EnsembleConfig)
    state = init_ensemble(jax.random.PRNGKey(0), config, 2, 1, 1e-3, 0.0)
    layers = state.params["net"]["params"]
    assert layers["Dense_0"]["kernel"].shape == (4, 3, 7)
    assert layers["Dense_2"]["kernel"].shape == (4, 9, 4)  # mean and log-variance of 2
    assert state.elites.shape == (3,) and TINY.model_elite_count == TINY.ensemble_size  # None: all members


def test_old_spelling_of_a_renamed_flag_names_the_new_one(capsys, tmp_path):
    assert pets.main(TINY_ARGS + ["--hidden-sizes", "16", "16", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err == "error: --hidden-sizes is now --model-hidden-sizes (the model's settings have one name in every algorithm)\n"
    assert pets.main(TINY_ARGS + ["--sweep", "hidden_sizes=16", "--run-dir", str(tmp_path / "s")]) == 2
    assert "--hidden-sizes is now --model-hidden-sizes" in capsys.readouterr().err


def test_presets_are_valid_and_name_their_sources_values():
    assert pets.Config.SWEEPABLE == ("model_lr", "model_weight_decay", "alpha")
    assert pets.PRESETS == {**pets.TASKS, **pets.VARIANTS} and "tiny" in pets.VARIANTS
    for name, preset in pets.PRESETS.items():
        pets.Config(**preset).validate()
    # mbrl-lib's pets_halfcheetah.yaml (with gaussian_mlp_ensemble.yaml and algorithm/pets.yaml).
    cheetah = pets.Config(**pets.PRESETS["brax/halfcheetah"])
    assert (cheetah.model_lr, cheetah.model_weight_decay, cheetah.model_batch_size) == (2.8e-4, 1e-4, 32)
    assert (cheetah.model_holdout_ratio, cheetah.model_max_epochs, cheetah.retrain_every) == (0.0, 12, 1000)
    assert (cheetah.ensemble_size, cheetah.model_elites, cheetah.propagation, cheetah.particles) == (7, 5, "ts1", 20)
    assert (cheetah.population, cheetah.num_elites, cheetah.alpha, cheetah.horizon) == (400, 64, 0.12, 30)
    # handful-of-trials dmbrl/config/halfcheetah.py, default.py and BNN.train's defaults.
    original = pets.Config(**pets.PRESETS["brax/halfcheetah-original"])
    assert (original.ensemble_size, original.model_lr, original.model_batch_size) == (5, 1e-3, 32)
    assert (original.model_holdout_ratio, original.model_max_epochs) == (0.0, 5)
    decays = [original.model_weight_decay * s for s in original.model_layer_decay_scale]
    np.testing.assert_allclose(decays, [2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4])
    assert original.model_learn_logvar_bounds and not original.model_decay_biases and original.model_authors_init
    assert (original.population, original.num_elites, original.alpha, original.particles) == (500, 50, 0.1, 20)
    assert original.propagation == "tsinf" and not original.model_normalize_targets


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--preset", "halfcheeta"], "brax/halfcheetah"),
        (["--retrain-every", "50", "--num-envs", "3"], "num_envs"),
        (["--env", "cartpole_discrete"], "discrete action space"),
        (["--env", "pendulum_pixels"], "observations are images"),
        (["--model-holdout-ratio", "1.0"], "model_holdout_ratio"),
        (["--propagation", "ts2"], "propagation"),
        (["--sampling", "uniform"], "sampling"),
        (["--planner", "icem", "--icem-population-decay", "0.5"], "icem_population_decay"),
        (["--model-layer-decay-scale", "1", "1"], "model_layer_decay_scale"),
        (["--model-layer-decay-scale", "1", "1", "-1", "1"], "model_layer_decay_scale"),
    ],
)
def test_bad_input_exits_2_with_one_sentence(extra, message, capsys, tmp_path):
    """PETS's own checks (the generic ones: tests/test_bad_inputs.py and test_contract.py)."""
    code = pets.main(TINY_ARGS + extra + ["--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_resume_with_another_config_is_refused(tmp_path, capsys):
    """A folder written before `hidden_sizes` became `model_hidden_sizes` is read with the new name:
    the refusal is about the flag that changes the config, not an unknown field."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    saved = {name: value for name, value in dataclasses.asdict(TINY).items() if name != "model_hidden_sizes"}
    (run_dir / "config.json").write_text(
        json.dumps(
            {
                "algorithm": "pets",
                "config": saved | {"hidden_sizes": [16, 16]},
                "run": {"seed": 0, "num_seeds": 1, "sweep": []},
            }
        )
    )
    assert pets.main(["--resume", str(run_dir), "--horizon", "7"]) == 2
    assert "another config" in capsys.readouterr().err


# END TO END


@pytest.mark.slow
def test_learns_pendulum():
    """A smaller version of the issue's bar (-250 within 15 episodes, with a random policy near -1200),
    with a small planner and model (members of 2 x 32 units; CEM over 50 sequences, 5 elites, 3
    iterations): after one random and six planned episodes, three evaluation episodes average better
    than -400. A planner that ignores the model, or a model that learned nothing, stays near -1000 or
    worse. Measured: -253, -202, -128 and -195 for seeds 0 to 3 (batched); the default settings
    reach -253 on seed 0, in six times the time."""
    config = dataclasses.replace(pets.Config(env="pendulum"), **SMALL_PENDULUM_PLANNING)
    _, metrics = jax.jit(pets.make_train(config))(jax.random.PRNGKey(0), config)
    assert metrics["eval"]["eval_return"].shape == (1,)
    final = float(metrics["eval"]["eval_return"][-1])
    assert final > -400, f"PETS reached only {final:.0f} on pendulum"


def test_brax_task_with_learned_reward_and_known_termination():
    """The Brax path: a terminating task, the reward learned by the ensemble, termination known."""
    config = dataclasses.replace(
        TINY,
        env="brax/inverted_pendulum",
        backend="spring",
        learn_reward=True,
        episode_length=20,
        total_steps=60,
        eval_every=20,
        retrain_every=20,
    )
    trainer = pets.make_train(config)
    state, metrics = jax.jit(trainer)(jax.random.PRNGKey(0), config)
    assert np.isfinite(metrics["train"]["model_train_loss"]).all()
    # The model has a reward output: the target is the 4-dim state delta plus the reward.
    assert state.model.target_mean.shape == (5,)
    # Returns are counts of steps before the pole fell: at least 1, at most the episode length.
    returns = np.asarray(metrics["eval"]["eval_return"])
    assert ((returns >= 1) & (returns <= 20)).all()
