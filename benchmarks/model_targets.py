"""Does standardising the model's targets help? The held-out one-step prediction error and NLL of a
fitted ensemble, with and without target normalisation (`EnsembleConfig.model_normalize_targets`), on
random-policy data; the figures behind the choice in src/mbrlax/ensemble.py (benchmarks/RESULTS.md,
"Target normalisation of the dynamics model").

    python benchmarks/model_targets.py pendulum 2000 0,1,2
    python benchmarks/model_targets.py brax/inverted_pendulum 2000 0,1,2   # Brax's spring backend

The ensemble is 5 members of 4 x 200 (batch 32, learning rate 1e-3, weight decay 5e-5, a 10 %
holdout with early stopping, at most --epochs epochs), fitted on the training transitions and scored
on 5,000 fresh ones. Error: the squared error of the ensemble mean over the target's variance, per
dimension (1 = predicting the mean); NLL: the Gaussian NLL per dimension of the members' mixture,
matched by its first two moments.
"""

import argparse
import dataclasses
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from mbrlax import ensemble, envs
from mbrlax.loops.episodes import transition

NUM_ENVS = 8
TEST_TRANSITIONS = 5000


def random_policy_data(env, spec, key, num_transitions):
    """Transitions of uniformly random actions from NUM_ENVS environments, flattened to [N, ...]."""
    low, high = jnp.asarray(spec.action_low), jnp.asarray(spec.action_high)
    reset_key, key = jax.random.split(key)

    def step(state, step_key):
        action = jax.random.uniform(step_key, (NUM_ENVS, spec.action_size), minval=low, maxval=high)
        next_state = env.step(state, action)
        return next_state, transition(state, action, next_state)

    _, data = jax.lax.scan(step, env.reset(reset_key), jax.random.split(key, num_transitions // NUM_ENVS))
    return jax.tree_util.tree_map(lambda x: x.reshape((-1,) + x.shape[2:]), data)


def scores(config, state, test):
    """(error per dimension, mean NLL per dimension) of the fitted ensemble on `test`."""
    next_mean, next_var, reward_mean, reward_var = ensemble.predict(config, state, test["obs"], test["action"])
    mean, var, target = next_mean - test["obs"], next_var, test["next_obs"] - test["obs"]
    if config.learn_reward:
        mean = jnp.concatenate([mean, reward_mean[..., None]], -1)
        var = jnp.concatenate([var, reward_var[..., None]], -1)
        target = jnp.concatenate([target, test["reward"][:, None]], -1)
    ensemble_mean = mean.mean(0)
    error = ((ensemble_mean - target) ** 2).mean(0) / target.var(0)
    mixture_var = var.mean(0) + mean.var(0)
    nll = 0.5 * (jnp.log(2 * jnp.pi * mixture_var) + (target - ensemble_mean) ** 2 / mixture_var).mean()
    return np.asarray(error), float(nll)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("env")
    parser.add_argument("steps", type=int, help="training transitions")
    parser.add_argument("seeds", help="comma-separated seeds")
    parser.add_argument("--epochs", type=int, default=25, help="most epochs a fit")
    args = parser.parse_args(argv)
    options = {"backend": "spring"} if args.env.startswith("brax/") else {}
    env, spec = envs.make(args.env, num_envs=NUM_ENVS, auto_reset=True, **options)
    collect = jax.jit(lambda key, n: random_policy_data(env, spec, key, n), static_argnums=1)
    base = ensemble.EnsembleConfig(
        ensemble_size=5,
        model_elites=5,
        model_hidden_sizes=(200, 200, 200, 200),
        learn_reward=bool(spec.reward_learned),
        model_batch_size=32,
        model_max_epochs=args.epochs,
        model_holdout_ratio=0.1,
    )
    print(f"{args.env}: {args.steps} random-policy transitions to fit, {TEST_TRANSITIONS} fresh ones to score", flush=True)
    for seed in (int(s) for s in args.seeds.split(",")):
        data_key, test_key, init_key, fit_key = jax.random.split(jax.random.PRNGKey(seed), 4)
        data, test = collect(data_key, args.steps), collect(test_key, TEST_TRANSITIONS)
        for normalize in (True, False):
            config = dataclasses.replace(base, model_normalize_targets=normalize)
            start = time.time()
            state = ensemble.init(init_key, config, spec.observation_size, spec.action_size, 1e-3, 5e-5)
            fit = jax.jit(lambda s, d, n, k, c=config: ensemble.train(c, s, d, n, k))
            state, metrics = fit(state, data, jnp.int32(args.steps), fit_key)
            error, nll = scores(config, state, test)
            print(
                f"seed {seed} model_normalize_targets={normalize!s:5}: error per dimension {np.round(error, 4).tolist()}, "
                f"mean {error.mean():.4f}; NLL per dimension {nll:.3f}; {int(metrics['model_epochs'])} epochs; "
                f"{time.time() - start:.0f} s",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
