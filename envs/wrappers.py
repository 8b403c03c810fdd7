"""Wrappers around Brax's env protocol: time limit, action repeat, auto reset, batch.

`make` stacks them as Batch(AutoReset(ActionRepeat(TimeLimit(task)))), so the time limit counts
task steps, repetition stops at the step that ended the episode (termination or time limit), and
the reset draws a fresh state per environment before the vmap.
"""

import jax
import jax.numpy as jnp
from brax.envs.base import Env, State, Wrapper


def _select(pred, on_true, on_false):
    """Pytree `where` for a scalar predicate (one environment)."""
    return jax.tree_util.tree_map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


class TimeLimit(Wrapper):
    """Ends episodes after `episode_length` task steps and marks truncation apart from termination.

    Adds `info["steps"]` (int32), `info["truncation"]` and `info["final_obs"]` (the obs itself; the
    key exists so code that reads it works with or without AutoReset). Casts reward and done to
    float32 arrays: some Brax tasks return Python floats, which would change a scan carry's type.
    """

    def __init__(self, env: Env, episode_length: int):
        super().__init__(env)
        self.episode_length = int(episode_length)

    def reset(self, rng: jax.Array) -> State:
        state = self.env.reset(rng)
        info = {
            **state.info,
            "steps": jnp.zeros((), jnp.int32),
            "truncation": jnp.zeros((), jnp.float32),
            "final_obs": state.obs,
        }
        return state.replace(reward=jnp.zeros((), jnp.float32), done=jnp.zeros((), jnp.float32), info=info)

    def step(self, state: State, action: jax.Array) -> State:
        # Tasks that never set `done` (halfcheetah, reacher, ...) pass the incoming one through, so a
        # done left over from the previous step would read as a termination.
        # Brax tasks update `metrics` in place; the copy keeps the caller's state unchanged.
        state = self.env.step(state.replace(done=jnp.zeros_like(state.done), metrics=dict(state.metrics)), action)
        steps = state.info["steps"] + 1
        terminated = jnp.asarray(state.done, jnp.float32)
        timed_out = steps >= self.episode_length
        truncation = jnp.where(timed_out, 1.0 - terminated, 0.0).astype(jnp.float32)
        info = {**state.info, "steps": steps, "truncation": truncation, "final_obs": state.obs}
        return state.replace(
            reward=jnp.asarray(state.reward, jnp.float32),
            done=jnp.maximum(terminated, timed_out.astype(jnp.float32)),
            info=info,
        )


class ActionRepeat(Wrapper):
    """Applies each action `repeat` times, summing rewards; the steps after `done` are discarded."""

    def __init__(self, env: Env, repeat: int):
        super().__init__(env)
        self.repeat = int(repeat)

    def step(self, state: State, action: jax.Array) -> State:
        def body(carry, _):
            state, total, ended = carry
            nxt = self.env.step(state, action)
            state = _select(ended, state, nxt)
            total = total + jnp.where(ended, 0.0, nxt.reward)
            return (state, total, jnp.logical_or(ended, state.done > 0)), None

        # A scan rather than an unrolled loop keeps compile time independent of `repeat`.
        init = (state, jnp.zeros((), jnp.float32), jnp.zeros((), bool))
        (state, total, _), _ = jax.lax.scan(body, init, None, length=self.repeat)
        return state.replace(reward=total)


class AutoReset(Wrapper):
    """Starts a new episode, from a freshly sampled initial state, whenever `done`.

    Brax's AutoResetWrapper restores the episode's cached first state; here every reset uses a new
    key from `info["rng"]`, so a model sees as many start states as there are episodes. The returned
    state keeps the ending step's reward, done and truncation; `info["final_obs"]` is that step's
    true next observation, while `obs` already belongs to the new episode.
    """

    def reset(self, rng: jax.Array) -> State:
        rng, sub = jax.random.split(rng)
        state = self.env.reset(sub)
        return state.replace(info={**state.info, "rng": rng, "final_obs": state.obs})

    def step(self, state: State, action: jax.Array) -> State:
        rng, sub = jax.random.split(state.info["rng"])
        nxt = self.env.step(state, action)
        # Both branches are computed: under vmap a cond would run both anyway.
        fresh = self.env.reset(sub)
        done = nxt.done > 0
        info = _select(
            done, {k: v for k, v in fresh.info.items() if k != "rng"}, {k: v for k, v in nxt.info.items() if k != "rng"}
        )
        info.update(rng=rng, final_obs=nxt.obs, truncation=nxt.info["truncation"])
        return nxt.replace(
            pipeline_state=_select(done, fresh.pipeline_state, nxt.pipeline_state),
            obs=jnp.where(done, fresh.obs, nxt.obs),
            info=info,
        )


class Batch(Wrapper):
    """Vmaps `num_envs` copies: reset splits the key, step takes actions of shape [num_envs, A]."""

    def __init__(self, env: Env, num_envs: int):
        super().__init__(env)
        self.num_envs = int(num_envs)

    def reset(self, rng: jax.Array) -> State:
        return jax.vmap(self.env.reset)(jax.random.split(rng, self.num_envs))

    def step(self, state: State, action: jax.Array) -> State:
        return jax.vmap(self.env.step)(state, action)
