"""gym/ tasks: gymnasium environments stepping on the host behind Brax's protocol. Their spec and
model-side functions agree with gymnasium's own steps, and every landed algorithm runs on them."""

from __future__ import annotations

import json

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import cli_args
from mbrlax.algorithms import clearning, dreamer, maac, mbmpo, mbpo, pets, svg
from mbrlax.envs import make

import test_maac
import test_mbmpo
import test_mbpo
import test_pets


@pytest.mark.parametrize("name", ["gym/Pendulum-v1", "gym/InvertedPendulum-v5", "gym/CartPole-v1"])
def test_host_steps_match_gymnasium_and_the_model_side_functions(name):
    """The same seed through mbrlax's bridge (jitted, batched) and through gymnasium directly gives the
    same observations, rewards and ends; the spec's reward and termination functions reproduce them."""
    env, spec = make(name, num_envs=2, auto_reset=True)
    gym_env = gymnasium.make_vec(
        name[4:], num_envs=2, vectorization_mode="sync", vector_kwargs={"autoreset_mode": "SameStep"}
    )
    assert spec.discrete == (name == "gym/CartPole-v1")
    assert spec.can_terminate == (name != "gym/Pendulum-v1")
    rng = np.random.default_rng(0)
    state = jax.jit(env.reset)(jax.random.PRNGKey(3))
    seed = int(jax.random.randint(jax.random.PRNGKey(3), (), 0, 2**31 - 1))
    obs, _ = gym_env.reset(seed=seed)
    np.testing.assert_allclose(state.obs, obs, rtol=1e-6)
    step = jax.jit(env.step)
    ends = 0
    for _ in range(120):
        action = rng.uniform(np.asarray(spec.action_low), np.asarray(spec.action_high), (2, spec.action_size))
        nxt = step(state, jnp.asarray(action, jnp.float32))
        gym_action = action.argmax(-1) if spec.discrete else action
        obs, reward, terminated, truncated, info = gym_env.step(gym_action)
        np.testing.assert_allclose(nxt.obs, obs, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(nxt.reward, reward, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(nxt.done, terminated | truncated)
        final = nxt.info["final_obs"]
        # Pendulum's reward is taken before the step: from the obs, the action and the final obs.
        expected = spec.reward_fn(state.obs, jnp.asarray(action, jnp.float32), final)
        np.testing.assert_allclose(expected, reward, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(spec.termination_fn(state.obs, action, final), terminated)
        ends += int(terminated.sum())
        state = nxt
    if spec.can_terminate:
        assert ends > 0  # random actions topple the poles


def _summary(main, args, tmp_path) -> dict:
    run = tmp_path / "run"
    assert main(args + ["--no-progress", "--run-dir", str(run)]) == 0
    return json.loads((run / "summary.json").read_text())


def _without_env(config) -> list[str]:
    args = cli_args(config)
    if "--env" in args:
        i = args.index("--env")
        del args[i : i + 2]
    return args


DREAMER_ARGS = ["--preset", "tiny", "--total-steps", "320", "--initial-steps", "128", "--steps-per-update", "64"]
DREAMER_ARGS += ["--eval-every", "192", "--eval-episodes", "2", "--batch-size", "4", "--sequence-length", "16"]
DREAMER_ARGS += ["--train-ratio", "8", "--horizon", "3", "--episode-length", "60"]

ALGORITHMS = {
    "pets": (pets.main, _without_env(test_pets.TINY)),
    "mbpo": (mbpo.main, _without_env(test_mbpo.TINY)),
    "maac": (maac.main, _without_env(test_maac.TINY)),
    "svg": (svg.main, _without_env(test_maac.TINY)),
    "mbmpo": (mbmpo.main, _without_env(test_mbmpo.TINY)),
    "dreamer": (dreamer.main, DREAMER_ARGS),
}


@pytest.mark.parametrize("task", ["gym/Pendulum-v1", "gym/InvertedPendulum-v5"])
@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_every_algorithm_runs_on_gymnasium_tasks(algorithm, task, tmp_path):
    main, args = ALGORITHMS[algorithm]
    summary = _summary(main, ["--env", task, *args], tmp_path)
    assert np.isfinite(summary["final_eval_return"])
    if task == "gym/InvertedPendulum-v5":
        assert 0 < summary["final_eval_return"] <= 1000


@pytest.mark.parametrize(
    "main, extra, message",
    [
        (pets.main, ["--env", "gym/Pendulum-v1", "--num-seeds", "2"], "one run of it"),
        (pets.main, ["--env", "gym/NoSuchTask-v0"], "gymnasium says"),
        (pets.main, ["--env", "gym/CartPole-v1"], "discrete action space"),
        (pets.main, ["--env", "gym/Pendulum-v1", "--action-repeat", "2"], "frame skip"),
        (clearning.main, ["--env", "gym/Pendulum-v1"], "needs a goal task"),
    ],
)
def test_bad_input_exits_2_with_one_sentence(main, extra, message, capsys, tmp_path):
    code = main(extra + ["--no-progress", "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1
