"""gym/ tasks: gymnasium environments stepping on the host behind Brax's protocol. Their spec and
model-side functions agree with gymnasium's own steps, and every landed algorithm runs on them."""

from __future__ import annotations

import json
import shutil

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import cli_args
from mbrlax.algorithms import clearning, dreamer, maac, mbmpo, mbpo, pets, svg
from mbrlax.envs import gym_bridge, make, restart_or_step

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


MUJOCO_TASKS = ["Hopper-v5", "Walker2d-v5", "Ant-v5", "Humanoid-v5", "InvertedPendulum-v4"]
MUJOCO_TASKS += ["AntTruncatedObs-v5", "HumanoidTruncatedObs-v5"]


@pytest.mark.parametrize("env_id", MUJOCO_TASKS)
def test_mujoco_termination_functions_match_gymnasium(env_id):
    """Declared from observations, each termination rule (and v4's reward) agrees with gymnasium's
    own `terminated` on every step of random play, episodes that end included. The MBPO paper's
    truncated observations have its 27 and 45 numbers."""
    _, spec = make(f"gym/{env_id}", num_envs=1)
    gym_id, options = gym_bridge.resolve(env_id)
    env = gymnasium.make(gym_id, **options)
    sizes = {"AntTruncatedObs-v5": 27, "HumanoidTruncatedObs-v5": 45}
    assert spec.observation_size == sizes.get(env_id, env.observation_space.shape[0])
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    ends = 0
    for _ in range(400):
        action = rng.uniform(env.action_space.low, env.action_space.high).astype(np.float32)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        args = (jnp.asarray(obs, jnp.float32), jnp.asarray(action), jnp.asarray(next_obs, jnp.float32))
        assert bool(spec.termination_fn(*args)) == terminated
        if spec.reward_fn is not None:
            np.testing.assert_allclose(spec.reward_fn(*args), reward)
        ends += int(terminated)
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset(seed=int(rng.integers(1 << 30)))
    if "Ant" not in env_id:  # random play rarely flips the ant; the others fall
        assert ends > 0


def test_host_env_without_auto_reset_restarts_an_ended_copy_on_the_next_step():
    """Made without auto-reset (as Dreamer makes it), an ended copy's last observation comes back with
    `done`, and the next step begins its new episode; within an episode the cart moves by gymnasium's
    Euler step x' = x + 0.02 x_dot, so no step restarts a running episode."""
    env, _ = make("gym/CartPole-v1", num_envs=2)
    state = jax.jit(env.reset)(jax.random.PRNGKey(0))
    step = jax.jit(lambda s, a, k: restart_or_step(env, s, a, k))
    rng = np.random.default_rng(0)
    ends = longest = 0
    length = np.zeros(2, int)
    for t in range(150):
        action = jax.nn.one_hot(rng.integers(0, 2, 2), 2)
        nxt = step(state, action, jax.random.PRNGKey(t))
        obs, new_obs = np.asarray(state.obs), np.asarray(nxt.obs)
        for i in range(2):
            if state.done[i] > 0:  # restarted: a fresh state near zero, nothing gained
                assert np.all(np.abs(new_obs[i]) <= 0.05) and nxt.reward[i] == 0 and nxt.done[i] == 0
                ends, length[i] = ends + 1, 0
            else:
                np.testing.assert_allclose(new_obs[i, 0], obs[i, 0] + 0.02 * obs[i, 1], rtol=1e-5, atol=1e-6)
                length[i] += 1
                longest = max(longest, length[i])
        state = nxt
    assert ends > 2 and longest >= 8


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


# Every algorithm on the terminating task; on Pendulum-v1 all but MBPO and Dreamer, whose resume test
# below runs them there first, and SVG, which is MAAC's loop with another actor objective.
GYM_RUNS = [(name, "gym/InvertedPendulum-v5") for name in ALGORITHMS]
GYM_RUNS += [(name, "gym/Pendulum-v1") for name in ALGORITHMS if name not in ("mbpo", "dreamer", "svg")]


@pytest.mark.parametrize("algorithm, task", GYM_RUNS)
def test_every_algorithm_runs_on_gymnasium_tasks(algorithm, task, tmp_path):
    main, args = ALGORITHMS[algorithm]
    summary = _summary(main, ["--env", task, *args], tmp_path)
    assert np.isfinite(summary["final_eval_return"])
    if task == "gym/InvertedPendulum-v5":
        assert 0 < summary["final_eval_return"] <= 1000
        # Training episodes end (random play topples the pole within tens of steps) and have lasted
        # more than one step, so the training loop steps its environments rather than restarting them.
        rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
        column = rows[0].split(",").index("train_episode_return")
        assert float(rows[-1].split(",")[column]) > 1


@pytest.mark.parametrize(
    "main, extra, message",
    [
        (pets.main, ["--env", "gym/Pendulum-v1", "--num-seeds", "2"], "one run of it"),
        (pets.main, ["--env", "gym/NoSuchTask-v0"], "gymnasium says"),
        (mbpo.main, ["--env", "gym/AntTruncatedObs-v4"], "defined on the v5 task"),
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


@pytest.mark.parametrize("algorithm", ["mbpo", "dreamer"])
def test_a_killed_gym_run_resumes_in_fresh_episodes(algorithm, tmp_path):
    """The simulators' state is not in a checkpoint: a resumed gym/ run takes new environments and
    new episodes (for Dreamer, a new first step of its memory) and runs to the end."""
    main, args = ALGORITHMS[algorithm]
    args = ["--env", "gym/Pendulum-v1", *args, "--no-progress"]
    if algorithm == "dreamer":
        args += ["--total-steps", "384"]  # two evaluations, so a checkpoint is left after removing one
    run = tmp_path / "run"
    assert main(args + ["--run-dir", str(run)]) == 0
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert len(steps) == 2
    shutil.rmtree(run / "checkpoints" / str(steps[-1]))
    first = json.loads((run / "summary.json").read_text())
    (run / "summary.json").unlink()
    assert main(["--resume", str(run), "--no-progress"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert np.isfinite(summary["final_eval_return"]) and summary["env_steps"] == first["env_steps"]
    assert len((run / "metrics.csv").read_text().splitlines()) == 1 + 2
