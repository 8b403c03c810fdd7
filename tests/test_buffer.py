"""Unit tests of the fixed-capacity replay buffer (mbrlax.buffer) against a Python deque reference."""

from __future__ import annotations

import collections

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbrlax import buffer as rb

OBS = 3


def _example():
    return {"obs": jnp.zeros(OBS), "reward": jnp.zeros(()), "done": jnp.zeros((), jnp.bool_)}


def _batch(ids):
    """Transitions whose every leaf encodes its id (ids start at 1, so an unwritten slot reads 0)."""
    ids = np.asarray(ids, np.float32)
    return {
        "obs": jnp.asarray(ids[:, None] * np.array([1.0, 10.0, 100.0], np.float32)),
        "reward": jnp.asarray(-ids),
        "done": jnp.asarray(ids.astype(np.int64) % 2 == 0),
    }


def _assert_rows_consistent(rows):
    """Every leaf of a row comes from the same transition (sampling keeps leaves aligned)."""
    ids = np.asarray(rows["obs"][:, 0])
    np.testing.assert_allclose(np.asarray(rows["obs"]), ids[:, None] * np.array([1.0, 10.0, 100.0]))
    np.testing.assert_allclose(np.asarray(rows["reward"]), -ids)
    np.testing.assert_array_equal(np.asarray(rows["done"]), ids.astype(np.int64) % 2 == 0)
    return ids


class BufferTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_init_shapes_and_dtypes(self):
        buf = rb.init(_example(), capacity=8)
        chex.assert_shape(buf.data["obs"], (8, OBS))
        chex.assert_shape(buf.data["reward"], (8,))
        chex.assert_type(buf.data["done"], jnp.bool_)
        self.assertEqual(buf.capacity, 8)
        mask = self.variant(rb.valid_mask)(buf)
        chex.assert_shape(mask, (8,))
        self.assertFalse(bool(mask.any()))

    @chex.variants(with_jit=True, without_jit=True)
    def test_sample_returns_only_added_entries(self):
        buf = rb.init(_example(), capacity=32)
        buf = self.variant(rb.add)(buf, _batch(np.arange(1, 6)))
        rows = self.variant(rb.sample, static_argnums=2)(buf, jax.random.key(0), 500)
        chex.assert_shape(rows["obs"], (500, OBS))
        chex.assert_shape(rows["reward"], (500,))
        ids = _assert_rows_consistent(rows)
        # Only ids 1..5 were added; an empty slot would read as id 0.
        self.assertTrue(set(ids.astype(int).tolist()) <= {1, 2, 3, 4, 5})
        # Uniform with replacement: 500 draws over 5 entries hit every one of them.
        self.assertEqual(set(ids.astype(int).tolist()), {1, 2, 3, 4, 5})

    @chex.variants(with_jit=True, without_jit=True)
    def test_wraparound_matches_deque_reference(self):
        capacity = 10
        add = self.variant(rb.add)
        newest = self.variant(rb.newest, static_argnums=1)
        mask_fn = self.variant(rb.valid_mask)
        sample = self.variant(rb.sample, static_argnums=2)
        rng = np.random.default_rng(0)
        buf = rb.init(_example(), capacity=capacity)
        ref = collections.deque(maxlen=capacity)
        next_id = 1
        for step in range(24):
            size = int(rng.choice([1, 3, 7, 10]))  # a few sizes: each one compiles once
            ids = list(range(next_id, next_id + size))
            next_id += size
            buf = add(buf, _batch(ids))
            ref.extend(ids)
            self.assertEqual(int(buf.count), len(ref))
            self.assertEqual(int(buf.position), (next_id - 1) % capacity)
            np.testing.assert_array_equal(np.asarray(mask_fn(buf)), np.arange(capacity) < len(ref))
            # The stored valid entries are exactly the newest `capacity` ids (oldest overwritten).
            stored = np.asarray(buf.data["obs"][:, 0])[np.asarray(mask_fn(buf))]
            self.assertEqual(sorted(stored.astype(int).tolist()), sorted(ref))
            # newest(n) returns the last n added, oldest first.
            for n in {1, len(ref)}:
                got = _assert_rows_consistent(newest(buf, n))
                self.assertEqual(got.astype(int).tolist(), list(ref)[-n:])
            if step % 8 == 7:
                drawn = _assert_rows_consistent(sample(buf, jax.random.key(step), 200))
                self.assertTrue(set(drawn.astype(int).tolist()) <= set(ref))

    @chex.variants(with_jit=True, without_jit=True)
    def test_count_saturates_at_capacity(self):
        buf = rb.init(_example(), capacity=6)
        add = self.variant(rb.add)
        counts = []
        for i in range(5):
            buf = add(buf, _batch(np.arange(1, 4) + 3 * i))
            counts.append(int(buf.count))
        self.assertEqual(counts, [3, 6, 6, 6, 6])
        self.assertTrue(bool(rb.valid_mask(buf).all()))
        # A batch of exactly the capacity fills the buffer in one call.
        full = add(rb.init(_example(), capacity=6), _batch(np.arange(1, 7)))
        self.assertEqual(int(full.count), 6)
        self.assertEqual(int(full.position), 0)
        self.assertEqual(_assert_rows_consistent(rb.newest(full, 6)).astype(int).tolist(), [1, 2, 3, 4, 5, 6])

    @chex.variants(with_jit=True, without_jit=True)
    def test_valid_mask_partial(self):
        buf = rb.init(_example(), capacity=7)
        buf = self.variant(rb.add)(buf, _batch([1, 2, 3]))
        np.testing.assert_array_equal(
            np.asarray(self.variant(rb.valid_mask)(buf)), [True, True, True, False, False, False, False]
        )

    def test_newest_after_wrap_in_order(self):
        buf = rb.init(_example(), capacity=5)
        buf = rb.add(buf, _batch([1, 2, 3, 4]))
        buf = rb.add(buf, _batch([5, 6, 7]))  # overwrites 1 and 2; position wraps to 2
        self.assertEqual(int(buf.position), 2)
        self.assertEqual(_assert_rows_consistent(rb.newest(buf, 5)).astype(int).tolist(), [3, 4, 5, 6, 7])
        self.assertEqual(_assert_rows_consistent(rb.newest(buf, 2)).astype(int).tolist(), [6, 7])

    def test_jit_and_nojit_agree(self):
        def run(add, sample):
            buf = rb.init(_example(), capacity=9)
            rng = np.random.default_rng(1)
            next_id = 1
            draws = []
            for step in range(10):
                size = int(rng.choice([2, 9]))
                buf = add(buf, _batch(range(next_id, next_id + size)))
                next_id += size
                draws.append(sample(buf, jax.random.key(step), 16))
            return buf, draws

        eager = run(rb.add, rb.sample)
        jitted = run(jax.jit(rb.add), jax.jit(rb.sample, static_argnums=2))
        chex.assert_trees_all_equal(jax.device_get(eager), jax.device_get(jitted))

    def test_vmap_over_seeds_equals_separate_buffers(self):
        num_seeds, capacity = 3, 8
        single = rb.init(_example(), capacity)
        stacked = jax.tree_util.tree_map(lambda x: jnp.stack([x] * num_seeds), single)
        separate = [single] * num_seeds
        add = jax.jit(rb.add)
        sample = jax.jit(rb.sample, static_argnums=2)
        vadd = jax.jit(jax.vmap(rb.add))
        vsample = jax.jit(jax.vmap(rb.sample, in_axes=(0, 0, None)), static_argnums=2)
        rng = np.random.default_rng(2)
        next_id = 1
        for step in range(5):
            size = int(rng.choice([3, 8]))  # same size for every seed (static shapes)
            batches = []
            for s in range(num_seeds):
                ids = np.arange(next_id, next_id + size) + 1000 * s  # each seed gets its own data
                batches.append(_batch(ids))
                separate[s] = add(separate[s], batches[-1])
            next_id += size
            stacked = vadd(stacked, jax.tree_util.tree_map(lambda *xs: np.stack(xs), *batches))
            keys = jax.random.split(jax.random.key(step), num_seeds)
            drawn = jax.device_get(vsample(stacked, keys, 11))
            got = jax.device_get(stacked)
            for s in range(num_seeds):
                chex.assert_trees_all_equal(jax.tree_util.tree_map(lambda x: x[s], got), jax.device_get(separate[s]))
                chex.assert_trees_all_equal(
                    jax.tree_util.tree_map(lambda x: x[s], drawn),
                    jax.device_get(sample(separate[s], keys[s], 11)),
                )

    def test_batch_larger_than_capacity_raises(self):
        buf = rb.init(_example(), capacity=4)
        with pytest.raises(ValueError, match="capacity"):
            rb.add(buf, _batch([1, 2, 3, 4, 5]))
        with pytest.raises(ValueError, match="capacity"):
            jax.jit(rb.add)(buf, _batch([1, 2, 3, 4, 5]))

    def test_nonpositive_capacity_raises(self):
        with pytest.raises(ValueError, match="capacity"):
            rb.init(_example(), capacity=0)


# MASKED ADD AND SAMPLING THE NEWEST ENTRIES

_masked_add = jax.jit(rb.add)
_sample_newest = jax.jit(rb.sample, static_argnums=2)


def _stored_ids(buf):
    return np.asarray(buf.data["obs"][:, 0]).astype(int)


def test_masked_add_writes_only_masked_rows_packed_in_order():
    buf = rb.init(_example(), capacity=8)
    mask = jnp.array([True, False, True, True, False, True])
    buf = _masked_add(buf, _batch([1, 2, 3, 4, 5, 6]), mask)
    assert int(buf.count) == 4 and int(buf.position) == 4
    # Rows 1, 3, 4, 6 fill slots 0..3 in order, every leaf alike; the rest stay empty (id 0).
    assert _stored_ids(buf).tolist() == [1, 3, 4, 6, 0, 0, 0, 0]
    _assert_rows_consistent(jax.tree_util.tree_map(lambda x: x[:4], buf.data))
    assert not np.asarray(buf.data["reward"][4:]).any()
    # An all-false mask writes nothing and moves nothing.
    same = _masked_add(buf, _batch([7, 8, 9, 10, 11, 12]), jnp.zeros(6, bool))
    chex.assert_trees_all_equal(jax.device_get(same), jax.device_get(buf))
    # An all-true mask is the same as no mask.
    ids = _batch([7, 8, 9, 10, 11, 12])
    chex.assert_trees_all_equal(
        jax.device_get(_masked_add(buf, ids, jnp.ones(6, bool))), jax.device_get(rb.add(buf, ids))
    )


def test_masked_add_wraparound_matches_deque_reference():
    capacity = 10
    rng = np.random.default_rng(3)
    buf = rb.init(_example(), capacity=capacity)
    ref = collections.deque(maxlen=capacity)
    next_id, written = 1, 0
    for _ in range(30):
        size = int(rng.choice([4, 7, 10]))  # each size compiles once
        ids = np.arange(next_id, next_id + size)
        next_id += size
        mask = rng.random(size) < 0.6
        buf = _masked_add(buf, _batch(ids), jnp.asarray(mask))
        ref.extend(ids[mask].tolist())
        written += int(mask.sum())
        assert int(buf.count) == len(ref) == min(written, capacity)
        assert int(buf.position) == written % capacity
        valid = np.asarray(rb.valid_mask(buf))
        assert sorted(_stored_ids(buf)[valid].tolist()) == sorted(ref)
        # Packed in order across the wrap: the newest entries, oldest first, are the reference's tail.
        if ref:
            assert _assert_rows_consistent(rb.newest(buf, len(ref))).astype(int).tolist() == list(ref)


@pytest.mark.parametrize("newest", [1, 3, 7, 10])
def test_sample_newest_draws_only_the_newest_entries(newest):
    capacity = 10
    buf = rb.init(_example(), capacity=capacity)
    ref = collections.deque(maxlen=capacity)
    next_id = 1
    for size in (4, 7, 6, 3):  # 20 ids: the buffer wraps twice; position ends at 0
        ids = list(range(next_id, next_id + size))
        next_id += size
        buf = rb.add(buf, _batch(ids))
        ref.extend(ids)
        drawn = _assert_rows_consistent(_sample_newest(buf, jax.random.key(next_id), 400, newest)).astype(int)
        expected = set(list(ref)[-newest:])
        assert set(drawn.tolist()) == expected  # only the newest ones, and (400 draws) all of them


def test_sample_newest_more_than_stored_draws_all_valid_entries():
    buf = rb.add(rb.init(_example(), capacity=16), _batch([1, 2, 3, 4, 5]))
    for newest in (5, 6, 100):
        drawn = _assert_rows_consistent(_sample_newest(buf, jax.random.key(newest), 400, newest)).astype(int)
        assert set(drawn.tolist()) == {1, 2, 3, 4, 5}  # never an empty slot (id 0)
    # `newest` may be a traced value, per run of a vmap.
    counts = jnp.array([1, 2, 50])
    drawn = jax.jit(jax.vmap(rb.sample, in_axes=(None, 0, None, 0)), static_argnums=2)(
        buf, jax.random.split(jax.random.key(0), 3), 300, counts
    )
    ids = np.asarray(drawn["obs"][..., 0]).astype(int)
    assert [set(row.tolist()) for row in ids] == [{5}, {4, 5}, {1, 2, 3, 4, 5}]


@pytest.mark.parametrize("written", [9, 30])  # partly filled, and wrapped around (capacity 12)
def test_sample_sequences_are_consecutive_stored_steps_of_one_env(written):
    """Each window is `length` consecutive steps of one environment, all written, in order, never
    across the write head; every possible window start comes up."""
    capacity, num_envs, length = 12, 3, 4
    buffer = rb.init_trajectories({"t": jnp.int32(0), "env": jnp.int32(0)}, capacity, num_envs)
    for t in range(written):
        step = {"t": jnp.full(num_envs, t + 1, jnp.int32), "env": jnp.arange(num_envs, dtype=jnp.int32)}
        buffer = rb.add_step(buffer, step, jnp.zeros(num_envs, jnp.int32))
    windows = jax.jit(rb.sample_sequences, static_argnums=(2, 3))(buffer, jax.random.PRNGKey(0), 2000, length)
    times, envs = np.asarray(windows["t"]), np.asarray(windows["env"])
    assert times.shape == (2000, length)
    oldest = max(1, written - capacity + 1)
    assert (np.diff(times, axis=1) == 1).all()
    assert times.min() == oldest and times.max() == written
    assert set(times[:, 0]) == set(range(oldest, written - length + 2))
    assert (envs == envs[:, :1]).all() and set(envs[:, 0]) == set(range(num_envs))


def test_sequence_longer_than_capacity_is_refused():
    buffer = rb.init_trajectories({"t": jnp.int32(0)}, 8, 2)
    with pytest.raises(ValueError, match="longer than the buffer"):
        rb.sample_sequences(buffer, jax.random.PRNGKey(0), 4, 9)


def test_truncated_geometric_matches_its_distribution():
    for n, discount in [(5, 0.5), (50, 0.99), (3, 1.0)]:
        draws = np.asarray(rb.truncated_geometric(jax.random.PRNGKey(n), jnp.full(100_000, n), discount))
        expected = discount ** np.arange(n)
        expected /= expected.sum()
        assert draws.min() >= 1 and draws.max() <= n
        np.testing.assert_allclose(np.bincount(draws, minlength=n + 1)[1:] / draws.size, expected, atol=0.006)


def test_future_goals_are_renormalised_within_the_episode_not_clamped_to_its_end():
    """Whole 50-step episodes at discount 0.99: a step i steps before the end has N = 50 - i offsets left,
    and the final state is its goal with probability d^(N-1) (1-d) / (1-d^N): 8.6 % averaged over the
    episode. Clamping an untruncated geometric draw to the end gives d^(N-1), 79 % on average."""
    episode_length, episodes, num_envs, discount = 50, 4, 2, 0.99
    buffer = rb.init_trajectories({"obs": jnp.zeros(2), "next_obs": jnp.zeros(2)}, episode_length * episodes, num_envs)
    add = jax.jit(rb.add_step)
    for t in range(episode_length * episodes):
        step_in_episode = jnp.full((num_envs, 1), t % episode_length, jnp.float32)
        obs = jnp.concatenate([step_in_episode, jnp.full((num_envs, 1), t // episode_length, jnp.float32)], 1)
        next_obs = obs.at[:, 0].add(1.0)
        buffer = add(buffer, {"obs": obs, "next_obs": next_obs}, jnp.full(num_envs, t // episode_length, jnp.int32))
    steps, future = rb.sample_with_future(buffer, jax.random.PRNGKey(0), 40_000, discount, episode_length)
    steps, future = np.asarray(steps["obs"]), np.asarray(future["next_obs"])
    np.testing.assert_array_equal(future[:, 1], steps[:, 1])  # the same episode
    final = future[:, 0] == episode_length
    left = episode_length - np.arange(episode_length)
    expected = np.mean(discount ** (left - 1) * (1 - discount) / (1 - discount**left))
    assert abs(final.mean() - expected) < 0.01, (final.mean(), expected)
    # Steps 30 before the end: the offsets follow the renormalised law over 1..30.
    offsets = (future[:, 0] - steps[:, 0])[steps[:, 0] == episode_length - 30]
    law = discount ** np.arange(30) / np.sum(discount ** np.arange(30))
    assert abs(offsets.mean() - np.sum(np.arange(1, 31) * law)) < 0.6
