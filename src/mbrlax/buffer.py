"""A fixed-capacity replay buffer that lives inside the compiled training program.

The buffer is a pytree: its storage never changes shape, so `add` and `sample` compile once and a
`vmap` over seeds gives every seed its own buffer. "All the data so far" is a masked pass over the
capacity (`valid_mask`), never a slice of dynamic size.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class ReplayBuffer:
    data: Any
    """Pytree of arrays, each of shape [capacity, ...]."""
    position: jax.Array
    """Index the next transition is written to (wraps around: oldest data is overwritten)."""
    count: jax.Array
    """Number of valid entries, at most the capacity."""

    @property
    def capacity(self) -> int:
        return jax.tree_util.tree_leaves(self.data)[0].shape[0]


def init(example: Any, capacity: int) -> ReplayBuffer:
    """An empty buffer whose entries have the structure, shapes and dtypes of `example`."""
    if capacity <= 0:
        raise ValueError(f"buffer capacity must be positive, got {capacity}")
    data = jax.tree_util.tree_map(lambda x: jnp.zeros((capacity,) + jnp.shape(x), jnp.asarray(x).dtype), example)
    return ReplayBuffer(data=data, position=jnp.int32(0), count=jnp.int32(0))


def add(buffer: ReplayBuffer, batch: Any, mask: jax.Array | None = None) -> ReplayBuffer:
    """Append a batch of transitions (every leaf has a leading batch axis of the same size). With a
    boolean `mask` [batch] only the rows where it is true are written, packed one after another, so a
    variable number of rows goes in without a shape that depends on it."""
    batch_size = jax.tree_util.tree_leaves(batch)[0].shape[0]
    capacity = buffer.capacity
    if batch_size > capacity:
        raise ValueError(f"cannot add {batch_size} transitions to a buffer of capacity {capacity}")
    chex.assert_trees_all_equal_structs(buffer.data, batch)
    if mask is None:
        offsets, num_added = jnp.arange(batch_size), batch_size
        indices = (buffer.position + offsets) % capacity
    else:
        offsets = jnp.cumsum(mask) - 1
        num_added = mask.sum().astype(jnp.int32)
        # Rows left out point past the end and are dropped by the scatter.
        indices = jnp.where(mask, (buffer.position + offsets) % capacity, capacity)
    data = jax.tree_util.tree_map(lambda store, x: store.at[indices].set(x, mode="drop"), buffer.data, batch)
    return buffer.replace(
        data=data,
        position=(buffer.position + num_added) % capacity,
        count=jnp.minimum(buffer.count + num_added, capacity),
    )


def sample(buffer: ReplayBuffer, key: jax.Array, batch_size: int, newest: jax.Array | int | None = None) -> Any:
    """Uniform sample with replacement from the valid entries (the buffer must not be empty), or with
    `newest` (may be traced) from the `newest` most recently added entries only."""
    if newest is None:
        # Valid entries are always the first `count` slots: writing starts at 0 and only wraps once full.
        indices = jax.random.randint(key, (batch_size,), 0, jnp.maximum(buffer.count, 1))
    else:
        available = jnp.maximum(jnp.minimum(buffer.count, newest), 1)
        age = jax.random.randint(key, (batch_size,), 0, available)
        indices = (buffer.position - 1 - age) % buffer.capacity
    return jax.tree_util.tree_map(lambda store: store[indices], buffer.data)


def valid_mask(buffer: ReplayBuffer) -> jax.Array:
    """[capacity] bool: which slots hold data."""
    return jnp.arange(buffer.capacity) < buffer.count


def newest(buffer: ReplayBuffer, num: int) -> Any:
    """The `num` most recently added entries, oldest first (static size; garbage if fewer stored)."""
    indices = (buffer.position - num + jnp.arange(num)) % buffer.capacity
    return jax.tree_util.tree_map(lambda store: store[indices], buffer.data)


# TRAJECTORIES: the same fixed-capacity store, time-major per environment, for learners that draw
# goals from the future of a transition inside its own episode (goal relabelling).


@struct.dataclass
class TrajectoryBuffer:
    data: Any
    """Pytree of arrays, each [capacity, num_envs, ...]: row t holds every environment's step t."""
    episode: jax.Array
    """[capacity, num_envs] int32: which episode of its environment each stored step belongs to."""
    position: jax.Array
    count: jax.Array


def init_trajectories(example: Any, capacity: int, num_envs: int) -> TrajectoryBuffer:
    """An empty store of `capacity` steps of `num_envs` environments; `example` is one step of one env."""
    if capacity <= 0:
        raise ValueError(f"buffer capacity must be positive, got {capacity}")
    data = jax.tree_util.tree_map(
        lambda x: jnp.zeros((capacity, num_envs) + jnp.shape(x), jnp.asarray(x).dtype), example
    )
    episode = jnp.full((capacity, num_envs), -1, jnp.int32)
    return TrajectoryBuffer(data=data, episode=episode, position=jnp.int32(0), count=jnp.int32(0))


def add_step(buffer: TrajectoryBuffer, step: Any, episode: jax.Array) -> TrajectoryBuffer:
    """Write one step of every environment ([num_envs, ...] leaves) and their episode numbers."""
    capacity = buffer.episode.shape[0]
    data = jax.tree_util.tree_map(lambda store, x: store.at[buffer.position].set(x), buffer.data, step)
    return buffer.replace(
        data=data,
        episode=buffer.episode.at[buffer.position].set(episode),
        position=(buffer.position + 1) % capacity,
        count=jnp.minimum(buffer.count + 1, capacity),
    )


def sample_with_future(buffer: TrajectoryBuffer, key: jax.Array, batch_size: int, discount, max_offset: int):
    """Uniform steps, each with a step of its own future: offset k >= 1 drawn from the geometric
    distribution P(k) proportional to discount^(k - 1), truncated to the N offsets that stay inside the
    episode (k <= N, where N - 1 is the number of later steps of the episode already stored) and
    renormalised over them: P(k) = (1 - discount) discount^(k - 1) / (1 - discount^N).

    This is how the references draw future goals: contrastive_rl's `contrastive/builder.py`
    (probabilities discount^(j - i) over the later states j of the episode, then a categorical draw),
    c_learning's `truncated_geometric` in `c_learning/c_learning_utils.py` (the same, up to its offset
    starting at 0) and JaxGCRL's `flatten_batch`. Clamping an untruncated draw to the last step instead
    would pile the tail's mass onto the episode's final state: on 50-step episodes at discount 0.99,
    79 % of goals would be the final state, against 8.6 % here.

    Returns (steps, future_steps); a future step's `next_obs` is the state k steps after the step's
    `obs`, so the last step of an episode still has one (its own next observation). `max_offset`
    (static) bounds the search for the episode's end: the longest episode."""
    capacity = buffer.episode.shape[0]
    num_envs = buffer.episode.shape[1]
    time_key, env_key, offset_key = jax.random.split(key, 3)
    # Once full, the oldest row is the one about to be overwritten; before that, row 0.
    oldest = jnp.where(buffer.count < capacity, 0, buffer.position)
    t = (oldest + jax.random.randint(time_key, (batch_size,), 0, jnp.maximum(buffer.count, 1))) % capacity
    e = jax.random.randint(env_key, (batch_size,), 0, num_envs)
    # Steps after t in the same episode and already written: the leading run of matches.
    later = (t[:, None] + 1 + jnp.arange(max_offset)[None, :]) % capacity
    stored_after = jnp.arange(max_offset)[None, :] < ((buffer.position - 1 - t) % capacity)[:, None]
    same = (buffer.episode[later, e[:, None]] == buffer.episode[t, e][:, None]) & stored_after
    offset = truncated_geometric(offset_key, jnp.cumprod(same, axis=1).sum(axis=1) + 1, discount)
    future_t = (t + offset - 1) % capacity
    take = lambda rows: jax.tree_util.tree_map(lambda store: store[rows, e], buffer.data)  # noqa: E731
    return take(t), take(future_t)


def truncated_geometric(key: jax.Array, num_offsets: jax.Array, discount) -> jax.Array:
    """One draw per entry of `num_offsets` (int [B], each >= 1) from {1, ..., N} with P(k) proportional
    to discount^(k - 1), by inverting its distribution function: k = ceil(log(1 - u (1 - d^N)) / log d)."""
    n = num_offsets.astype(jnp.float32)
    uniform = jax.random.uniform(key, num_offsets.shape)
    log_discount = jnp.log(jnp.clip(discount, 1e-6, 1.0))
    undiscounted = log_discount > -1e-7  # discount 1: uniform over the N offsets
    safe_log = jnp.where(undiscounted, -1.0, log_discount)
    mass = -jnp.expm1(n * safe_log)  # 1 - d^N, accurate for d near 1
    k = jnp.where(undiscounted, uniform * n, jnp.log1p(-uniform * mass) / safe_log)
    return jnp.clip(jnp.ceil(k).astype(jnp.int32), 1, num_offsets)


def sample_sequences(buffer: TrajectoryBuffer, key: jax.Array, batch_size: int, length: int) -> Any:
    """`batch_size` windows of `length` consecutive stored steps, each from one environment, uniform
    over every window that lies inside the stored data (a window never wraps past the newest step).
    Leaves come back batch-major, [batch_size, length, ...]. Windows may cross episode boundaries; the
    data marks them (Dreamer stores an `is_first` flag). The buffer must hold at least `length` steps."""
    capacity, num_envs = buffer.episode.shape
    if length > capacity:
        raise ValueError(f"sequence length {length} is longer than the buffer's capacity of {capacity} steps")
    start_key, env_key = jax.random.split(key)
    oldest = jnp.where(buffer.count < capacity, 0, buffer.position)
    num_starts = jnp.maximum(buffer.count - length + 1, 1)
    start = oldest + jax.random.randint(start_key, (batch_size,), 0, num_starts)
    rows = (start[:, None] + jnp.arange(length)[None, :]) % capacity
    env = jax.random.randint(env_key, (batch_size, 1), 0, num_envs)
    return jax.tree_util.tree_map(lambda store: store[rows, env], buffer.data)


def sample_sequences_by_priority(
    buffer: TrajectoryBuffer, key: jax.Array, batch_size: int, length: int, priority: jax.Array, exponent
):
    """`batch_size` windows as `sample_sequences` draws them, but each start (row, environment) with
    probability proportional to priority^exponent ([capacity, num_envs]) among the starts whose window
    lies inside the stored data (prioritised replay, Schaul et al. 2016). Draws invert the cumulative
    sum of the masses: one pass over the capacity, then a binary search per draw. Returns (windows,
    (rows, envs) of the starts, each drawn start's probability)."""
    capacity, num_envs = buffer.episode.shape
    if length > capacity:
        raise ValueError(f"sequence length {length} is longer than the buffer's capacity of {capacity} steps")
    oldest = jnp.where(buffer.count < capacity, 0, buffer.position)
    age = (jnp.arange(capacity) - oldest) % capacity
    valid = age <= buffer.count - length
    mass = jnp.where(valid[:, None], priority**exponent, 0.0).reshape(-1)
    cdf = jnp.cumsum(mass)
    total = jnp.maximum(cdf[-1], 1e-30)
    draws = jax.random.uniform(key, (batch_size,)) * total
    flat = jnp.clip(jnp.searchsorted(cdf, draws, side="right"), 0, mass.size - 1)
    rows, envs = flat // num_envs, flat % num_envs
    window_rows = (rows[:, None] + jnp.arange(length)[None, :]) % capacity
    windows = jax.tree_util.tree_map(lambda store: store[window_rows, envs[:, None]], buffer.data)
    return windows, (rows, envs), mass[flat] / total
