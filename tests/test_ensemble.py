"""Unit tests of the probabilistic ensemble (mbrlax.ensemble).

References: known linear dynamics s' = A s + B a (+ small noise) for training, and `predict`'s
per-member outputs for the propagation modes. Trainings are tiny and cached per process so the file
runs in well under a minute on two CPU cores.
"""

from __future__ import annotations

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbrlax import ensemble as E

OBS, ACT = 2, 1
A = np.array([[0.9, 0.2], [-0.1, 0.8]], np.float32)
B = np.array([[0.5], [-0.3]], np.float32)


def _linear_data(n: int, seed: int, noise: float = 0.01) -> dict:
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, (n, OBS)).astype(np.float32)
    action = rng.uniform(-1, 1, (n, ACT)).astype(np.float32)
    next_obs = obs @ A.T + action @ B.T + noise * rng.standard_normal((n, OBS)).astype(np.float32)
    reward = -(obs**2).sum(-1)
    return {"obs": obs, "action": action, "next_obs": next_obs, "reward": reward}


def _clean_next(data: dict) -> np.ndarray:
    return data["obs"] @ A.T + data["action"] @ B.T


@functools.lru_cache(maxsize=None)
def _fit_fn(cfg: E.EnsembleConfig):
    """One compiled `train` per static config, shared by every test that uses that config."""
    return jax.jit(functools.partial(E.train, cfg))


def _strong(tree):
    """The same arrays without weak types, so a trained state reuses the compilation of an initial one
    (see test_train_keeps_state_types)."""
    return jax.tree_util.tree_map(lambda x: jnp.array(x, dtype=x.dtype), tree)


def _init(cfg: E.EnsembleConfig, seed: int = 0, lr: float = 3e-3, wd: float = 1e-5) -> E.EnsembleState:
    return _strong(E.init(jax.random.key(seed), cfg, OBS, ACT, lr, wd))


def _with_rates(state: E.EnsembleState, lr, wd) -> E.EnsembleState:
    """The state with other learning rate and weight decay in its optimiser's state."""
    rates = dict(learning_rate=jnp.asarray(lr, jnp.float32), weight_decay=jnp.asarray(wd, jnp.float32))
    return dataclasses.replace(state, opt_state=state.opt_state._replace(hyperparams=rates))


def _fit(
    cfg: E.EnsembleConfig,
    data: dict,
    count: int,
    seed: int = 0,
    lr: float = 3e-3,
    wd: float = 1e-5,
    state: E.EnsembleState | None = None,
):
    state = _init(cfg, seed, lr, wd) if state is None else _with_rates(state, lr, wd)
    return _fit_fn(cfg)(state, data, jnp.int32(count), jax.random.key(seed + 1))


@functools.lru_cache(maxsize=None)
def _predict_fn(cfg: E.EnsembleConfig):
    return jax.jit(functools.partial(E.predict, cfg))


def _predict(cfg, state, obs, action):
    return _predict_fn(cfg)(state, jnp.asarray(obs), jnp.asarray(action))


# Shared trainings (cached per test process).

PROB_CFG = E.EnsembleConfig(
    ensemble_size=5,
    model_elites=3,
    model_hidden_sizes=(32, 32),
    model_batch_size=64,
    model_max_epochs=300,
    model_patience=5,
    learn_reward=True,
)
DET_CFG = dataclasses.replace(PROB_CFG, model_probabilistic=False, learn_reward=False)
MASK_CAPACITY, MASK_COUNT = 160, 100
TINY_CFG = E.EnsembleConfig(
    ensemble_size=3,
    model_elites=2,
    model_hidden_sizes=(8,),
    model_batch_size=32,
    model_max_epochs=4,
    model_patience=2,
    model_eval_batch_size=64,
)


@functools.lru_cache(maxsize=None)
def _trained(probabilistic: bool):
    cfg = PROB_CFG if probabilistic else DET_CFG
    data = _linear_data(1000, seed=0)
    state, metrics = _fit(cfg, data, 1000)
    return cfg, state, jax.device_get(metrics)


# TRAINING ON KNOWN LINEAR DYNAMICS
# (One test per trained model: the training is the expensive part, and one test keeps it on one worker.)


def test_probabilistic_ensemble_learns_linear_dynamics():
    cfg, state, metrics = _trained(True)
    test = _linear_data(500, seed=1)
    mean, var, reward_mean, reward_var = jax.device_get(_predict(cfg, state, test["obs"], test["action"]))
    chex.assert_shape((mean, var), (cfg.ensemble_size, 500, OBS))
    chex.assert_shape((reward_mean, reward_var), (cfg.ensemble_size, 500))

    # One-step accuracy on in-distribution points, for the ensemble mean and for every member.
    assert np.abs(mean.mean(0) - _clean_next(test)).max() < 0.05
    member_err = np.abs(mean - _clean_next(test)).max()
    assert member_err < 0.08, member_err
    # The aleatoric variance is learnt near the noise level (0.01**2), not left at its initial value.
    assert var.mean() < 1e-3, var.mean()

    # Learnt reward -|s|^2 (it spans [-2, 0]).
    reward_err = np.abs(reward_mean.mean(0) - test["reward"])
    assert reward_err.mean() < 0.03 and reward_err.max() < 0.15, (reward_err.mean(), reward_err.max())
    assert np.all(reward_var > 0)

    # Total predictive variance (mean of member variances + variance of member means) is much larger
    # far from the data than on it.
    def total_var(obs, action):
        m, v, _, _ = jax.device_get(_predict(cfg, state, obs, action))
        return (v.mean(0) + m.var(0)).mean(-1)  # [n]

    on_data = total_var(test["obs"], test["action"]).mean()
    far = total_var(np.array([[5.0, 5.0], [10.0, -10.0]], np.float32), np.zeros((2, ACT), np.float32))
    assert np.all(far > 10 * on_data), (far, on_data)

    # Early stopping: patience 5 stops the fit long before model_max_epochs=300; 20 % of 1000 held out.
    assert cfg.model_patience < metrics["model_epochs"] < cfg.model_max_epochs, metrics["model_epochs"]
    assert metrics["model_holdout_size"] == 200
    assert np.isfinite(metrics["model_train_loss"])
    assert 0 < metrics["model_holdout_mse"] < 0.05
    elites = np.asarray(state.elites)
    chex.assert_shape(elites, (cfg.model_elite_count,))
    assert len(set(elites.tolist())) == cfg.model_elite_count
    assert np.all((elites >= 0) & (elites < cfg.ensemble_size))


def test_deterministic_ensemble_learns_linear_dynamics():
    cfg, state, metrics = _trained(False)
    test = _linear_data(500, seed=1)
    mean, _, reward, _ = _predict(cfg, state, test["obs"], test["action"])
    assert np.abs(np.asarray(mean).mean(0) - _clean_next(test)).max() < 0.05
    np.testing.assert_array_equal(np.asarray(reward), 0.0)  # no reward head
    assert 0 < metrics["model_holdout_mse"] < 0.05
    assert cfg.model_patience < metrics["model_epochs"] < cfg.model_max_epochs
    # A deterministic model adds no noise: sampling or not gives the same particles, and no reward.
    key = jax.random.key(3)
    with_noise, r = E.propagate(cfg, state, test["obs"][:10], test["action"][:10], key, "ts1", sample=True)
    without, _ = E.propagate(cfg, state, test["obs"][:10], test["action"][:10], key, "ts1", sample=False)
    assert r is None
    chex.assert_trees_all_close(with_noise, without)


# EARLY STOPPING AND ELITES (on TINY_CFG and MASK_CAPACITY-sized data: one shared compilation)


def test_elites_are_members_with_lowest_holdout_error():
    """Shift each member's normalised mean output by its own offset s_k: its holdout error becomes
    about s_k**2, so the elites must be the members with the smallest offsets, best first."""
    cfg = TINY_CFG
    offsets = np.array([40.0, 5.0, 15.0], np.float32)
    state = _init(cfg)
    last = f"Dense_{len(cfg.model_hidden_sizes)}"
    out = E.target_size(cfg, OBS)
    net = jax.tree_util.tree_map(np.array, state.params["net"])
    net["params"][last]["bias"][:, :out] += offsets[:, None]  # the mean half; log-variances untouched
    shifted = state.replace(params=dict(state.params, net=_strong(net)))
    # At learning rate 0 the parameters stay as they are; the first epoch improves on "no error yet",
    # no later one improves, so the fit stops after `patience` more epochs.
    fitted, metrics = _fit(cfg, _linear_data(MASK_CAPACITY, seed=6), MASK_COUNT, lr=0.0, wd=0.0, state=shifted)
    chex.assert_trees_all_close(fitted.params["net"], shifted.params["net"])
    assert int(metrics["model_epochs"]) == 1 + cfg.model_patience
    np.testing.assert_array_equal(np.asarray(fitted.elites), np.argsort(offsets)[: cfg.model_elite_count])
    np.testing.assert_array_equal(np.asarray(fitted.elites), [1, 2])
    expected = np.mean(np.sort(offsets)[: cfg.model_elite_count] ** 2)
    np.testing.assert_allclose(float(metrics["model_holdout_mse"]), expected, rtol=0.1)


def test_no_holdout_runs_max_epochs():
    # 4 valid entries * holdout_ratio 0.2 -> no holdout (the same path as model_holdout_ratio=0.0, without
    # compiling another config).
    cfg = TINY_CFG
    assert cfg.model_patience < cfg.model_max_epochs
    _, metrics = _fit(cfg, _linear_data(MASK_CAPACITY, seed=2), 4)
    assert int(metrics["model_holdout_size"]) == 0
    assert int(metrics["model_epochs"]) == cfg.model_max_epochs


def test_no_holdout_ranks_elites_on_training_data():
    """With holdout_ratio 0 (the references' PETS fits): max_epochs epochs, no split, and the elites
    ranked by their error on the training data, as mbrl-lib does without a validation set."""
    cfg = dataclasses.replace(TINY_CFG, model_holdout_ratio=0.0)
    offsets = np.array([40.0, 5.0, 15.0], np.float32)
    state = _init(cfg)
    last = f"Dense_{len(cfg.model_hidden_sizes)}"
    out = E.target_size(cfg, OBS)
    net = jax.tree_util.tree_map(np.array, state.params["net"])
    net["params"][last]["bias"][:, :out] += offsets[:, None]
    shifted = state.replace(params=dict(state.params, net=_strong(net)))
    fitted, metrics = _fit(cfg, _linear_data(MASK_CAPACITY, seed=6), MASK_COUNT, lr=0.0, wd=0.0, state=shifted)
    assert int(metrics["model_holdout_size"]) == 0
    assert int(metrics["model_epochs"]) == cfg.model_max_epochs
    np.testing.assert_array_equal(np.asarray(fitted.elites), [1, 2])


def test_targets_left_unnormalised_when_asked():
    """normalize_targets=False (the references): the target statistics stay 0 and 1, the fit still
    learns the dynamics in raw units, and predict maps nothing back."""
    cfg = dataclasses.replace(TINY_CFG, model_normalize_targets=False, model_hidden_sizes=(32, 32), model_max_epochs=40, model_patience=40)
    data = _linear_data(400, seed=3)
    state, _ = _fit(cfg, data, 400)
    np.testing.assert_array_equal(np.asarray(state.target_mean), 0.0)
    np.testing.assert_array_equal(np.asarray(state.target_std), 1.0)
    test = _linear_data(200, seed=4)
    mean, _, _, _ = _predict(cfg, state, test["obs"], test["action"])
    # The next state's spread is about 0.6; a fit that learned the dynamics is far closer.
    assert np.abs(np.asarray(mean).mean(0) - _clean_next(test)).mean() < 0.06
    # With normalisation on, the statistics are those of the stored deltas.
    normed, _ = _fit(TINY_CFG, _linear_data(MASK_CAPACITY, seed=0), MASK_COUNT)
    deltas = (lambda d: d["next_obs"][:MASK_COUNT] - d["obs"][:MASK_COUNT])(_linear_data(MASK_CAPACITY, seed=0))
    np.testing.assert_allclose(np.asarray(normed.target_mean), deltas.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(normed.target_std), deltas.std(0), rtol=1e-4, atol=1e-5)


def test_decay_rates_per_layer_and_biases():
    """The authors' decay: 2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4 on the weights of the five layers,
    none on the biases; the log-variance bounds are never decayed."""
    cfg = E.EnsembleConfig(
        ensemble_size=2, model_elites=1, model_hidden_sizes=(4, 4, 4, 4), model_layer_decay_scale=(0.25, 0.5, 0.75, 0.75, 1.0),
        model_decay_biases=False,
    )
    params = E.init(jax.random.key(0), cfg, OBS, ACT, 1e-2, 1e-4).params
    rates = E.decay_rates(E.DecayLayout.of(cfg), params, 1e-4)
    for i, expected in enumerate([2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4]):
        np.testing.assert_allclose(rates["net"]["params"][f"Dense_{i}"]["kernel"], expected)
        assert rates["net"]["params"][f"Dense_{i}"]["bias"] == 0.0
    assert rates["max_logvar"] == 0.0 and rates["min_logvar"] == 0.0
    # The default: one traced rate on every weight and bias.
    default = E.decay_rates(E.DecayLayout.of(TINY_CFG), _init(TINY_CFG).params, 3e-5)
    assert all(r == 3e-5 for r in jax.tree_util.tree_leaves(default["net"]))
    # One Adam step from zero gradients moves only what is decayed: biases stay.
    opt = E.optimizer(cfg, 1e-2, 1e-4)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = opt.update(zeros, opt.init(params), params)
    assert float(jnp.abs(updates["net"]["params"]["Dense_0"]["bias"]).max()) == 0.0
    assert float(jnp.abs(updates["net"]["params"]["Dense_0"]["kernel"]).max()) > 0.0
    with pytest.raises(ValueError, match="model_layer_decay_scale"):
        E.init(jax.random.key(0), dataclasses.replace(cfg, model_layer_decay_scale=(1.0,)), OBS, ACT, 1e-3, 0.0)


def test_authors_init_is_truncated_normal_with_half_lecun_std():
    cfg = E.EnsembleConfig(ensemble_size=4, model_elites=2, model_hidden_sizes=(200, 200), model_authors_init=True)
    net = E.init(jax.random.key(0), cfg, 20, 4, 1e-3, 0.0).params["net"]["params"]
    for name, fan_in in (("Dense_0", 24), ("Dense_1", 200), ("Dense_2", 200)):
        kernel, bias = np.asarray(net[name]["kernel"]), np.asarray(net[name]["bias"])
        std = 1.0 / (2.0 * np.sqrt(fan_in))
        assert np.abs(kernel).max() <= 2.0 * std + 1e-7
        # A normal truncated at 2 std has 0.88 of its untruncated standard deviation.
        np.testing.assert_allclose(kernel.std(), 0.8796 * std, rtol=0.05)
        np.testing.assert_array_equal(bias, 0.0)
    # Members differ.
    assert not np.allclose(net["Dense_0"]["kernel"][0], net["Dense_0"]["kernel"][1])


def test_logvar_bounds_fixed_unless_learned():
    cfg = TINY_CFG
    assert cfg.model_probabilistic and not cfg.model_learn_logvar_bounds
    state, _ = _fit(cfg, _linear_data(MASK_CAPACITY, seed=0), MASK_COUNT)
    np.testing.assert_array_equal(np.asarray(state.params["max_logvar"]), 0.5)
    np.testing.assert_array_equal(np.asarray(state.params["min_logvar"]), -10.0)


def test_train_keeps_state_types():
    cfg = TINY_CFG
    trained, _ = _fit(cfg, _linear_data(MASK_CAPACITY, seed=0), MASK_COUNT)
    initial = E.init(jax.random.key(0), cfg, OBS, ACT, 3e-3, 1e-5)
    chex.assert_trees_all_equal_structs(trained, initial)
    spec = lambda x: (x.shape, str(x.dtype), bool(jax.typeof(x).weak_type))  # noqa: E731
    assert jax.tree_util.tree_map(spec, initial) == jax.tree_util.tree_map(spec, trained)


# MASKING, DETERMINISM, VMAP


@pytest.mark.parametrize("sampling", ["bootstrap", "shuffle"])
def test_rows_beyond_count_are_ignored(sampling):
    cfg = dataclasses.replace(TINY_CFG, model_sampling=sampling)
    data = _linear_data(MASK_CAPACITY, seed=4)
    garbage = {k: v.copy() for k, v in data.items()}
    for v in garbage.values():
        v[MASK_COUNT:] = 1e6
    clean_state, clean_metrics = jax.device_get(_fit(cfg, data, MASK_COUNT))
    dirty_state, dirty_metrics = jax.device_get(_fit(cfg, garbage, MASK_COUNT))
    chex.assert_tree_all_finite(dirty_state.params)
    chex.assert_trees_all_close(dirty_state, clean_state, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(dirty_metrics, clean_metrics, rtol=1e-6, atol=1e-7)
    # The normalisation statistics come from the valid rows only.
    inputs = np.concatenate([data["obs"][:MASK_COUNT], data["action"][:MASK_COUNT]], -1)
    np.testing.assert_allclose(dirty_state.input_mean, inputs.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dirty_state.input_std, inputs.std(0), rtol=1e-4)


def test_same_key_same_result_and_vmap_equivalence():
    cfg = TINY_CFG
    data = _linear_data(MASK_CAPACITY, seed=5)
    state0 = _init(cfg)
    count, wd = jnp.int32(MASK_COUNT), jnp.float32(1e-5)
    keys = jax.random.split(jax.random.key(7), 2)
    lrs = jnp.array([1e-3, 3e-3], jnp.float32)  # a traced hyperparameter swept alongside the seed

    def fit(state, data, count, key, lr, wd):
        return E.train(cfg, _with_rates(state, lr, wd), data, count, key)

    first = jax.device_get(jax.jit(fit)(state0, data, count, keys[0], lrs[0], wd))
    again = jax.device_get(jax.jit(fit)(state0, data, count, keys[0], lrs[0], wd))
    other = jax.device_get(jax.jit(fit)(state0, data, count, keys[1], lrs[1], wd))
    chex.assert_trees_all_equal(first, again)
    assert not np.allclose(
        first[0].params["net"]["params"]["Dense_0"]["kernel"], other[0].params["net"]["params"]["Dense_0"]["kernel"]
    )
    batched = jax.jit(jax.vmap(fit, in_axes=(None, None, None, 0, 0, None)))
    batched = jax.device_get(batched(state0, data, count, keys, lrs, wd))
    for i, single in enumerate((first, other)):
        got = jax.tree_util.tree_map(lambda x: x[i], batched)
        np.testing.assert_array_equal(got[0].elites, single[0].elites)
        assert got[1]["model_epochs"] == single[1]["model_epochs"]
        chex.assert_trees_all_close(got, single, rtol=1e-4, atol=1e-5)


def test_bad_config_raises():
    with pytest.raises(ValueError, match="model_elites"):
        E.init(jax.random.key(0), E.EnsembleConfig(ensemble_size=3, model_elites=4), OBS, ACT, 1e-3, 0.0)
    with pytest.raises(ValueError, match="model_sampling"):
        E.init(jax.random.key(0), dataclasses.replace(TINY_CFG, model_sampling="jackknife"), OBS, ACT, 1e-3, 0.0)
    with pytest.raises(ValueError, match="model_holdout_ratio"):
        E.init(jax.random.key(0), dataclasses.replace(TINY_CFG, model_holdout_ratio=1.0), OBS, ACT, 1e-3, 0.0)


# PROPAGATION (against predict's per-member outputs; an untrained ensemble whose members differ)

P_OBS, P_ACT = 3, 2
P_CFG = E.EnsembleConfig(ensemble_size=5, model_elites=3, model_hidden_sizes=(16,), learn_reward=True)
P_ELITES = np.array([4, 1, 3], np.int32)  # deliberately not sorted and not a prefix


@functools.lru_cache(maxsize=None)
def _prop_state():
    state = E.init(jax.random.key(11), P_CFG, P_OBS, P_ACT, 1e-3, 0.0)
    rng = np.random.default_rng(12)
    out = E.target_size(P_CFG, P_OBS)
    # Non-trivial normalisation, so that the propagation has to undo it like predict does.
    return state.replace(
        input_mean=jnp.asarray(rng.normal(size=P_OBS + P_ACT), jnp.float32),
        input_std=jnp.asarray(rng.uniform(0.5, 2.0, P_OBS + P_ACT), jnp.float32),
        target_mean=jnp.asarray(rng.normal(size=out), jnp.float32),
        target_std=jnp.asarray(rng.uniform(0.5, 2.0, out), jnp.float32),
        elites=jnp.asarray(P_ELITES),
    )


def _prop_inputs(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (
        jnp.asarray(rng.normal(size=(n, P_OBS)), jnp.float32),
        jnp.asarray(rng.normal(size=(n, P_ACT)), jnp.float32),
    )


def _member_of_rows(next_obs, reward, member_obs, member_reward):
    """For each output row, the member whose mean it equals (asserting that exactly one matches)."""
    rows = np.concatenate([np.asarray(next_obs), np.asarray(reward)[:, None]], -1)  # [n, d]
    members = np.concatenate([np.asarray(member_obs), np.asarray(member_reward)[..., None]], -1)  # [K, n, d]
    dist = np.abs(members - rows[None]).max(-1)  # [K, n]
    best = dist.argmin(0)
    srt = np.sort(dist, axis=0)
    assert np.all(srt[0] < 1e-4), srt[0]
    assert np.all(srt[1] > 1e-2), "members too alike to tell apart"
    return best


@functools.lru_cache(maxsize=None)
def _prop_jit(mode: str, elites_only: bool = False, sample: bool = False):
    """A compiled propagation, shared across tests (the mapping tests also run it without jit)."""
    return jax.jit(functools.partial(E.propagate, P_CFG, mode=mode, elites_only=elites_only, sample=sample))


def test_propagate_output_shapes():
    state = _prop_state()
    obs, action = _prop_inputs(7)  # 7 particles over 5 members (3 elites): padded groups
    # (The combinations that the other tests compile anyway, so this adds little compilation.)
    for mode, elites_only, sample in [
        ("ts1", False, True),
        ("expectation", False, True),
        ("ts1", True, False),
        ("tsinf", True, False),
        ("expectation", True, True),
    ]:
        next_obs, reward = _prop_jit(mode, elites_only, sample)(state, obs, action, jax.random.key(0))
        chex.assert_shape(next_obs, (7, P_OBS))
        chex.assert_shape(reward, (7,))
        chex.assert_tree_all_finite((next_obs, reward))
    mean, var, reward_mean, reward_var = _predict(P_CFG, state, obs, action)
    chex.assert_shape((mean, var), (P_CFG.ensemble_size, 7, P_OBS))
    chex.assert_shape((reward_mean, reward_var), (P_CFG.ensemble_size, 7))


class PropagateTest(chex.TestCase):
    def _propagate(self, mode, elites_only=False, sample=False):
        return self.variant(
            lambda s, o, a, k: E.propagate(P_CFG, s, o, a, k, mode=mode, elites_only=elites_only, sample=sample)
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_tsinf_particle_i_uses_member_i_mod_k(self):
        state = _prop_state()
        for n in (10, 7):  # 7 particles over 5 members: the batch is padded
            obs, action = _prop_inputs(n, seed=n)
            mean, _, reward_mean, _ = _predict(P_CFG, state, obs, action)
            next_obs, reward = self._propagate("tsinf")(state, obs, action, jax.random.key(1))
            member = np.arange(n) % P_CFG.ensemble_size
            chex.assert_trees_all_close(next_obs, mean[member, np.arange(n)], atol=1e-5, rtol=1e-5)
            chex.assert_trees_all_close(reward, reward_mean[member, np.arange(n)], atol=1e-5, rtol=1e-5)

    @chex.variants(with_jit=True)  # (eager ts1 compiles dozens of small ops: slow and adds little)
    def test_ts1_rows_are_member_means_in_equal_groups(self):
        state = _prop_state()
        n = 10
        obs, action = _prop_inputs(n, seed=n)
        mean, _, reward_mean, _ = _predict(P_CFG, state, obs, action)
        propagate = self._propagate("ts1")
        assignments = []
        for seed in range(3):
            next_obs, reward = propagate(state, obs, action, jax.random.key(seed))
            chex.assert_shape(next_obs, (n, P_OBS))
            member = _member_of_rows(next_obs, reward, mean, reward_mean)
            # A random permutation split into K equal groups: every member runs n / K particles.
            np.testing.assert_array_equal(np.bincount(member, minlength=P_CFG.ensemble_size), n // P_CFG.ensemble_size)
            assignments.append(tuple(member))
        # A fresh draw every call: the assignment depends on the key.
        assert len(set(assignments)) > 1


def test_ts1_with_batch_not_divisible_by_members():
    state = _prop_state()
    obs, action = _prop_inputs(7)  # 7 particles over 5 members: the permutation is padded to 10
    mean, _, reward_mean, _ = _predict(P_CFG, state, obs, action)
    for seed in range(3):
        next_obs, reward = _prop_jit("ts1", False, False)(state, obs, action, jax.random.key(seed))
        member = _member_of_rows(next_obs, reward, mean, reward_mean)
        assert np.bincount(member, minlength=P_CFG.ensemble_size).max() <= 2


def test_expectation_is_mean_of_member_means():
    state = _prop_state()
    obs, action = _prop_inputs(7)
    mean, _, reward_mean, _ = _predict(P_CFG, state, obs, action)
    next_obs, reward = _prop_jit("expectation", False, True)(state, obs, action, jax.random.key(2))
    chex.assert_trees_all_close(next_obs, mean.mean(0), atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(reward, reward_mean.mean(0), atol=1e-5, rtol=1e-5)
    elite_obs, elite_reward = _prop_jit("expectation", True, True)(state, obs, action, jax.random.key(3))
    chex.assert_trees_all_close(elite_obs, mean[P_ELITES].mean(0), atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(elite_reward, reward_mean[P_ELITES].mean(0), atol=1e-5, rtol=1e-5)


def test_elites_only_uses_only_elites():
    state = _prop_state()
    n = 7
    obs, action = _prop_inputs(n)
    mean, _, reward_mean, _ = _predict(P_CFG, state, obs, action)
    next_obs, reward = _prop_jit("tsinf", True, False)(state, obs, action, jax.random.key(4))
    member = P_ELITES[np.arange(n) % len(P_ELITES)]  # particle i -> elites[i mod num_elites]
    chex.assert_trees_all_close(next_obs, mean[member, np.arange(n)], atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(reward, reward_mean[member, np.arange(n)], atol=1e-5, rtol=1e-5)
    used = set()
    for seed in range(4):
        next_obs, reward = _prop_jit("ts1", True, False)(state, obs, action, jax.random.key(seed))
        used |= set(_member_of_rows(next_obs, reward, mean, reward_mean).tolist())
    assert used == set(P_ELITES.tolist()), used


def test_sampled_particles_follow_member_gaussians():
    """tsinf with noise: the particles of member k have the mean and variance that predict gives."""
    state = _prop_state()
    K, per_member = P_CFG.ensemble_size, 2000
    obs, action = _prop_inputs(1, seed=5)
    mean, var, reward_mean, reward_var = jax.device_get(_predict(P_CFG, state, obs, action))
    n = K * per_member
    tiled_obs, tiled_action = jnp.tile(obs, (n, 1)), jnp.tile(action, (n, 1))
    propagate = _prop_jit("tsinf", False, True)
    next_obs, reward = jax.device_get(propagate(state, tiled_obs, tiled_action, jax.random.key(5)))
    chex.assert_shape(next_obs, (n, P_OBS))
    by_member = next_obs.reshape(per_member, K, P_OBS).swapaxes(0, 1)  # particle i -> member i mod K
    r_by_member = reward.reshape(per_member, K).T
    tol = 4 * np.sqrt(var[:, 0] / per_member)
    assert np.all(np.abs(by_member.mean(1) - mean[:, 0]) < tol)
    np.testing.assert_allclose(by_member.var(1), var[:, 0], rtol=0.15)
    assert np.all(np.abs(r_by_member.mean(1) - reward_mean[:, 0]) < 4 * np.sqrt(reward_var[:, 0] / per_member))
    np.testing.assert_allclose(r_by_member.var(1), reward_var[:, 0], rtol=0.15)
    # ts1 with noise differs from ts1 without it, on the same key.
    noisy, _ = _prop_jit("ts1", False, True)(state, tiled_obs[:7], tiled_action[:7], jax.random.key(6))
    clean, _ = _prop_jit("ts1", False, False)(state, tiled_obs[:7], tiled_action[:7], jax.random.key(6))
    assert not np.allclose(noisy, clean)


def test_unknown_mode_raises():
    obs, action = _prop_inputs(5)
    with pytest.raises(ValueError, match="propagation"):
        E.propagate(P_CFG, _prop_state(), obs, action, jax.random.key(0), mode="ts2")
