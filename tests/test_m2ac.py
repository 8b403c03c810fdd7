"""M2AC: the one-vs-rest uncertainty against a hand computation, the mask keeping the expected share
(the lowest-uncertainty samples), the masking-rate schedule, the reward penalty, masked rollouts
that stop per sample (a stub model) against a plain reference, bad settings, and the pendulum
learning bar. The guarantees every algorithm gives (CLI run, resume, determinism, vmap) are
tests/test_contract.py's."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mbrlax.algorithms import m2ac, mbpo

from mbrlax import buffer as replay
from mbrlax import ensemble
from mbrlax.loops import dyna
from mbrlax.training import ConfigError


def test_one_vs_rest_uncertainty_by_hand_for_three_members():
    # One dimension: members N(0, 1), N(1, 1), N(3, 2). Member 0 against the rest {N(1, 1), N(3, 2)}:
    # rest mean (1 + 3) / 2 = 2, second moment ((1 + 1) + (2 + 9)) / 2 = 6.5, variance 6.5 - 4 = 2.5,
    # KL(N(0, 1) || N(2, 2.5)) = (ln 2.5 - ln 1 - 1 + 1 / 2.5 + 4 / 2.5) / 2.
    mean = jnp.array([[[0.0]], [[1.0]], [[3.0]]])
    var = jnp.array([[[1.0]], [[1.0]], [[2.0]]])
    expected = 0.5 * (np.log(2.5) - 1.0 + 1.0 / 2.5 + 4.0 / 2.5)
    np.testing.assert_allclose(m2ac.one_vs_rest_uncertainty(mean, var, jnp.array([0])), [expected], rtol=1e-6)
    # Member 2 against {N(0, 1), N(1, 1)}: mean 0.5, variance 1 + 0.25 = 1.25.
    expected_2 = 0.5 * (np.log(1.25) - np.log(2.0) - 1.0 + 2.0 / 1.25 + 2.5**2 / 1.25)
    np.testing.assert_allclose(m2ac.one_vs_rest_uncertainty(mean, var, jnp.array([2])), [expected_2], rtol=1e-6)


def test_one_vs_rest_uncertainty_sums_dimensions_and_samples_choose_their_member():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(3, 4, 2))
    var = rng.uniform(0.5, 2.0, size=(3, 4, 2))
    chosen = np.array([0, 2, 1, 2])

    def kl(m1, v1, m2, v2):
        return 0.5 * (np.log(v2 / v1) - 1.0 + v1 / v2 + (m1 - m2) ** 2 / v2)

    expected = []
    for i, k in enumerate(chosen):
        rest = [j for j in range(3) if j != k]
        rest_mean = mean[rest, i].mean(0)
        rest_var = (var[rest, i] + mean[rest, i] ** 2).mean(0) - rest_mean**2
        expected.append(kl(mean[k, i], var[k, i], rest_mean, rest_var).sum())
    got = m2ac.one_vs_rest_uncertainty(jnp.asarray(mean), jnp.asarray(var), jnp.asarray(chosen))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_mask_keeps_the_expected_share_of_lowest_uncertainty():
    uncertainty = jnp.array([0.9, 0.1, 0.5, 0.3, 0.8, 0.2, 0.7, 0.4])
    everyone = jnp.ones(8, bool)
    kept = m2ac.confident_mask(uncertainty, everyone, keep=3)
    assert kept.sum() == 3
    assert set(np.flatnonzero(kept)) == {1, 5, 3}  # 0.1, 0.2, 0.3
    # Only live samples compete: without 1 and 5 the lowest three are 3, 7, 2 (0.3, 0.4, 0.5).
    live = everyone.at[1].set(False).at[5].set(False)
    assert set(np.flatnonzero(m2ac.confident_mask(uncertainty, live, keep=3))) == {3, 7, 2}
    # Asking for more than are live keeps the live ones.
    few = jnp.zeros(8, bool).at[0].set(True).at[4].set(True)
    assert set(np.flatnonzero(m2ac.confident_mask(uncertainty, few, keep=5))) == {0, 4}


def test_masking_rate_schedule():
    horizon = 5
    rates = [float(m2ac.masking_rate(h, horizon, 0.5)) for h in range(horizon)]
    np.testing.assert_allclose(rates, np.array([5, 4, 3, 2, 1]) / 12.0, rtol=1e-6)
    np.testing.assert_allclose(sum(rates), horizon / 4.0, rtol=1e-6)  # B H / 4 transitions in all
    assert float(m2ac.masking_rate(0, 1, 0.5)) == 0.5
    assert float(m2ac.masking_rate(0, jnp.int32(1), 0.3)) == pytest.approx(0.3)


def test_penalised_reward():
    np.testing.assert_allclose(
        m2ac.penalised_reward(jnp.array([1.0, 2.0]), jnp.array([0.5, 10.0]), 0.1), [0.95, 1.0], rtol=1e-6
    )


def test_masked_rollouts_stop_per_sample():
    """A stub model whose observation is (id, step): every member moves it to (id, step + 1) almost
    surely, and member k predicts the reward k * id (variance 1e-6), so chosen member 0's disagreement with the rest
    grows with the id. A rollout that starts at id 0 terminates at once. The stored rows must be, step by step, the
    floor(w_h B) lowest ids among the rollouts still going, and only those go on."""
    batch_size, horizon = 8, 3
    ids = jnp.arange(16.0) % 8
    real = replay.init({"obs": jnp.zeros(2)}, 16)
    real = replay.add(real, {"obs": jnp.stack([ids, jnp.zeros(16)], -1)})
    example = {"obs": jnp.zeros(2), "action": jnp.zeros(1), "reward": 0.0, "next_obs": jnp.zeros(2), "terminated": 0.0}
    model_buffer = replay.init(example, batch_size * horizon)

    def policy(obs, key):
        return jnp.zeros((obs.shape[0], 1)), jnp.zeros(obs.shape[0])

    def members(obs, action):
        next_obs = obs + jnp.array([0.0, 1.0])
        mean = jnp.stack([jnp.concatenate([next_obs, (k * obs[:, :1])], -1) for k in range(3)])
        var = jnp.concatenate([jnp.full(mean.shape[:-1] + (2,), 1e-12), jnp.full(mean.shape[:-1] + (1,), 1e-6)], -1)
        return mean, var

    def dynamics(obs, action, key):  # member 0's mean, the one elite
        return obs + jnp.array([0.0, 1.0]), jnp.zeros(obs.shape[0]), jnp.zeros(obs.shape[0], jnp.int32)

    def termination(obs, action, next_obs):
        return obs[:, 0] == 0  # exact at the start, where id 0 is kept or not

    key = jax.random.PRNGKey(3)
    buffer, added, metrics = m2ac.masked_rollouts(
        policy,
        dynamics,
        members,
        termination,
        real,
        model_buffer,
        key,
        length=horizon,
        batch_size=batch_size,
        one_step_rate=0.5,
        penalty_coef=0.1,
    )
    # The reference: the same starts, then plain numpy.
    starts = np.asarray(replay.sample(real, jax.random.split(key)[0], batch_size)["obs"][:, 0])
    alive = np.ones(batch_size, bool)
    expected = []
    for h in range(horizon):
        keep = int(np.floor((horizon - h) / (2 * (horizon + 1)) * batch_size))  # 3, 2, 1
        candidates = sorted(np.flatnonzero(alive), key=lambda i: (starts[i], i))[:keep]
        kept = np.zeros(batch_size, bool)
        kept[candidates] = True
        expected += [(starts[i], h) for i in candidates]
        alive = kept & (starts != 0)
    stored = np.asarray(buffer.data["obs"][: int(added)])
    assert int(added) == len(expected) and buffer.count == len(expected)
    assert sorted(map(tuple, stored.round().astype(int).tolist())) == sorted((int(i), h) for i, h in expected)
    # The reward is member 0's (zero) less alpha times its uncertainty: against
    # members 1 and 2 (rewards id and 2 id) the rest has mean 1.5 id and variance 1e-6 + 0.25 id^2.
    rewards = np.asarray(buffer.data["reward"][: int(added)])
    idx = stored[:, 0].round()
    rest_var = 1e-6 + 0.25 * idx**2
    uncertainty = 0.5 * (np.log(rest_var / 1e-6) - 1.0 + 1e-6 / rest_var + (1.5 * idx) ** 2 / rest_var)
    np.testing.assert_allclose(rewards, -0.1 * uncertainty, rtol=1e-4, atol=1e-5)
    assert 0.0 <= float(metrics["rollouts_alive"]) <= 1.0


def test_ts1_members_are_the_members_propagate_uses():
    """Without noise, propagate's draw for each sample is the mean of the member ts1_members names."""
    config = m2ac.Config(**m2ac.VARIANTS["tiny"])
    model_config = config
    model = ensemble.init(jax.random.PRNGKey(0), model_config, 3, 1, 1e-3, 5e-5)
    model = model.replace(elites=jnp.array([2, 0]))
    obs = jax.random.normal(jax.random.PRNGKey(1), (11, 3))
    action = jax.random.normal(jax.random.PRNGKey(2), (11, 1))
    key = jax.random.PRNGKey(3)
    next_obs, reward = ensemble.propagate(
        model_config, model, obs, action, key, mode="ts1", elites_only=True, sample=False
    )
    chosen = ensemble.ts1_members(key, 11, model.elites)
    assert set(np.asarray(chosen).tolist()) == {0, 2}
    next_mean, _, reward_mean, _ = ensemble.predict(model_config, model, obs, action)
    rows = jnp.arange(11)
    np.testing.assert_allclose(next_obs, next_mean[chosen, rows], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(reward, reward_mean[chosen, rows], rtol=1e-5, atol=1e-6)


def test_one_step_rollouts_keeping_everything_unpenalised_are_mbpos():
    """w = 1, H = 1, alpha = 0: the masked rollouts store what MBPO's branched rollouts store, bit for bit."""
    config = m2ac.Config(**m2ac.VARIANTS["tiny"])
    model_config = config
    model = ensemble.init(jax.random.PRNGKey(0), model_config, 3, 1, 1e-3, 5e-5)
    real = replay.init({"obs": jnp.zeros(3)}, 32)
    real = replay.add(real, {"obs": jax.random.normal(jax.random.PRNGKey(1), (32, 3))})
    example = {"obs": jnp.zeros(3), "action": jnp.zeros(1), "reward": 0.0, "next_obs": jnp.zeros(3), "terminated": 0.0}

    def policy(obs, key):
        return jnp.tanh(obs[:, :1] + jax.random.normal(key, (obs.shape[0], 1))), jnp.zeros(obs.shape[0])

    def propagate(obs, action, key):
        return ensemble.propagate(model_config, model, obs, action, key, mode="ts1", elites_only=True)

    def dynamics(obs, action, key):
        return (*propagate(obs, action, key), ensemble.ts1_members(key, obs.shape[0], model.elites))

    def members(obs, action):
        next_mean, next_var, reward_mean, reward_var = ensemble.predict(model_config, model, obs, action)
        return (
            jnp.concatenate([next_mean, reward_mean[..., None]], -1),
            jnp.concatenate([next_var, reward_var[..., None]], -1),
        )

    def never(obs, action, next_obs):
        return jnp.zeros(obs.shape[0], bool)

    key = jax.random.PRNGKey(2)
    empty = replay.init(example, 16)
    theirs, _ = dyna.branched_rollouts(policy, propagate, never, real, empty, key, length=1, batch_size=16)
    ours, added, _ = m2ac.masked_rollouts(
        policy,
        dynamics,
        members,
        never,
        real,
        empty,
        key,
        length=1,
        batch_size=16,
        one_step_rate=1.0,
        penalty_coef=0.0,
    )
    assert int(added) == 16
    for name in example:
        np.testing.assert_array_equal(ours.data[name], theirs.data[name], err_msg=name)


def test_bad_settings():
    with pytest.raises(ConfigError, match="sac_only"):
        m2ac.Config(sac_only=True).validate()
    with pytest.raises(ConfigError, match="ensemble_size"):
        m2ac.Config(ensemble_size=1, model_elites=1).validate()


@pytest.mark.slow
def test_m2ac_learns_pendulum():
    """The issue's bar, -250 or better within 5,000 steps (a random policy scores about -1200), met
    sooner: the default pendulum settings (H = 5), 4,000 steps (1,000 of them random), five evaluation
    episodes of the deterministic policy after 2,000, 3,000 and 4,000 steps. At 3,000 steps the bar is
    met by this fused program (-148) but not by the CLI's run of the same seed (-502): too close."""
    config = dataclasses.replace(m2ac.Config(), total_steps=4000)
    _, metrics = jax.jit(m2ac.make_train(config))(jax.random.PRNGKey(0), config)
    returns = np.asarray(metrics["eval"]["eval_return"])
    print(f"M2AC {returns.round(1)}")
    assert len(returns) == 3
    assert returns[-1] >= -250.0, returns
