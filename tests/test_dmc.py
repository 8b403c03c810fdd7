"""dmc/ tasks: the DeepMind Control Suite through MuJoCo Playground (the optional DMC extra). Without
the extra they say which one to install; with it they run in the fused, vmapped program."""

from __future__ import annotations

import builtins
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import cli_args
from mbrlax.algorithms import mbpo
from mbrlax.envs import make

import test_mbpo


def test_missing_extra_is_named(monkeypatch):
    real_import = builtins.__import__

    def no_playground(name, *args, **kwargs):
        if name.startswith("mujoco_playground"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_playground)
    with pytest.raises(ValueError, match=r'pip install "mbrlax\[dmc\]"'):
        make("dmc/cheetah_run")


def test_dmc_task_steps_under_the_wrappers():
    pytest.importorskip("mujoco_playground")
    env, spec = make("dmc/cartpole_swingup", num_envs=3, auto_reset=True, episode_length=4)
    assert spec.observation_size == 5 and spec.action_size == 1 and spec.reward_learned and not spec.can_terminate
    state = jax.jit(env.reset)(jax.random.PRNGKey(0))
    step = jax.jit(env.step)
    dones = []
    for _ in range(5):
        state = step(state, jnp.ones((3, 1)))
        dones.append(np.asarray(state.done))
        assert np.all(np.isfinite(state.obs)) and np.all((state.reward >= 0) & (state.reward <= 1))
    np.testing.assert_array_equal(np.stack(dones)[:, 0], [0, 0, 0, 1, 0])  # the 4-step limit, then a new episode
    with pytest.raises(ValueError, match="dmc/cheetah_run"):
        make("dmc/cheeta_run")


def test_mbpo_runs_on_a_dmc_task_with_two_seeds(tmp_path):
    pytest.importorskip("mujoco_playground")
    run = tmp_path / "run"
    args = ["--env", "dmc/pendulum_swingup", *cli_args(test_mbpo.TINY), "--num-seeds", "2"]
    assert mbpo.main(args + ["--no-progress", "--run-dir", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert len(summary["final_eval_return_per_run"]) == 2 and np.all(np.isfinite(summary["final_eval_return_per_run"]))
