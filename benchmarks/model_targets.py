"""Does standardising the model's targets help? The held-out one-step prediction error and NLL of a
fitted ensemble, with and without target normalisation (`EnsembleConfig.normalize_targets`), on
random-policy data; the figures behind the choice in src/mbrlax/ensemble.py (benchmarks/RESULTS.md,
"Target normalisation").

    python benchmarks/model_targets.py pendulum 2000 0,1,2
    python benchmarks/model_targets.py brax/inverted_pendulum 2000 0,1,2   # Brax's spring backend
"""

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from mbrlax import ensemble, envs
from mbrlax.training import transition

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("env")
parser.add_argument("steps", type=int, help="training transitions")
parser.add_argument("seeds", help="comma-separated seeds")
parser.add_argument("--epochs", type=int, default=25, help="most epochs a fit")
args = parser.parse_args()
env_name, steps, seeds, epochs = args.env, args.steps, [int(s) for s in args.seeds.split(",")], args.epochs
num_envs = 8
opts = {"backend": "spring"} if env_name.startswith("brax/") else {}
env, spec = envs.make(env_name, num_envs=num_envs, auto_reset=True, **opts)
low, high = jnp.asarray(spec.action_low), jnp.asarray(spec.action_high)
learn_reward = bool(spec.reward_learned)

def collect(key, n):
    reset_key, key = jax.random.split(key)
    state = env.reset(reset_key)
    def step(state, k):
        a = jax.random.uniform(k, (num_envs, spec.action_size), minval=low, maxval=high)
        nxt = env.step(state, a)
        return nxt, transition(state, a, nxt)
    _, data = jax.lax.scan(step, state, jax.random.split(key, n // num_envs))
    return jax.tree_util.tree_map(lambda x: x.reshape((-1,) + x.shape[2:]), data)

collect = jax.jit(collect, static_argnums=1)
base = ensemble.EnsembleConfig(num_members=5, num_elites=5, hidden_sizes=(200, 200, 200, 200), learn_reward=learn_reward,
                               batch_size=32, max_epochs=epochs, holdout_ratio=0.1)
print(f"{env_name}: {steps} train transitions (random policy, {num_envs} envs), test 5000 fresh; learn_reward={learn_reward}; "
      f"5 x 4x200, batch 32, lr 1e-3, wd 5e-5, 10% holdout early stopping, at most {epochs} epochs", flush=True)
for seed in seeds:
    key = jax.random.PRNGKey(seed)
    dkey, tkey, ikey, fkey = jax.random.split(key, 4)
    data = collect(dkey, steps)
    test = collect(tkey, 5000)
    tgt = test["next_obs"] - test["obs"]
    if learn_reward:
        tgt = jnp.concatenate([tgt, test["reward"][:, None]], -1)
    for norm in (True, False):
        cfg = dataclasses.replace(base, normalize_targets=norm)
        t0 = time.time()
        st = ensemble.init(ikey, cfg, spec.observation_size, spec.action_size)
        st, m = jax.jit(lambda s, d, c, k: ensemble.train(cfg, s, d, c, k, 1e-3, 5e-5))(st, data, jnp.int32(steps), fkey)
        nm, nv, rm, rv = ensemble.predict(cfg, st, test["obs"], test["action"])
        mean = nm - test["obs"]; var = nv
        if learn_reward:
            mean = jnp.concatenate([mean, rm[..., None]], -1); var = jnp.concatenate([var, rv[..., None]], -1)
        # Per-dimension MSE of the ensemble mean, divided by the target variance (1 = predicting the mean)
        ens_mean = mean.mean(0)
        rel = ((ens_mean - tgt) ** 2).mean(0) / tgt.var(0)
        # NLL of the ensemble's Gaussian mixture approximated by moment matching, per dimension, mean over dims
        mvar = var.mean(0) + mean.var(0)
        nll = 0.5 * (jnp.log(2 * jnp.pi * mvar) + (tgt - ens_mean) ** 2 / mvar).mean()
        print(f"seed {seed} normalize_targets={norm!s:5}: rel. MSE per dim {np.round(np.asarray(rel), 4).tolist()} "
              f"mean {float(rel.mean()):.4f}; NLL/dim {float(nll):.3f}; epochs {int(m['model_epochs'])}; {time.time()-t0:.0f} s",
              flush=True)
