"""MB-MPO: model-based meta-policy optimization (Clavera, Rothfuss, Schulman, Fujita, Asfour,
Abbeel, "Model-Based Reinforcement Learning via Meta-Policy Optimization", CoRL 2018).

An ensemble of K dynamics models is read as K tasks, and MAML meta-learns a policy initialisation
theta that adapts quickly to whichever model it faces, hence to the real world. Task i (model
i // (M / K), M tasks in all) imagines trajectories under theta with its model alone, takes one
policy-gradient step and imagines again under the adapted policy:

    theta'_i = theta + alpha * grad_theta J_i(theta)
    theta   <- TRPO step on mean_i J_i(theta'_i(theta)),  mean KL of the adapted policies <= 0.01

differentiating through the inner step (second order). Only the adapted policies theta'_i run in the
real environment; their data refits the models. `inner_lr = 0` is the paper's no-adaptation ablation
(ME-TRPO's averaged objective). The inner estimator (`maml` or ProMP's `lvc`) and the outer optimizer
(`trpo` or `ppo`) follow the authors' code, jonasrothfuss/model_ensemble_meta_learning.

Departures from the paper (the most important):
- The K models share one 80/20 split of the real data; the paper gives each model its own.
- Imagined trajectories start from the task's own resets and stop at a predicted termination.
- Advantages: GAE with rllab's linear feature baseline, normalised per task.
- Tasks without a known reward function (brax/halfcheetah, brax/hopper) learn a reward head.
- The pendulum defaults are smaller than the paper's; `--preset paper` applies the paper's settings.

Provenance, every departure, presets and commands: docs/algorithms/mbmpo.md.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any, Callable, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mbrlax import buffer as replay
from mbrlax import ensemble, presets, runner, training, trpo
from mbrlax.config import RunConfig, setting
from mbrlax.networks import MLP
from mbrlax.training import ConfigError, Trainer, adam, gradient_update, make_schedule, restart_episodes, scale_action
from mbrlax.loops.episodes import evaluate_episodes, explore_uniformly, track_returns, transition, transition_example
from mbrlax.loops import episodes


class MBMPOState(NamedTuple):
    env_state: Any
    buffer: replay.ReplayBuffer
    model: ensemble.EnsembleState
    policy: Any
    """theta, the meta-policy's parameters."""
    policy_opt: Any
    key: jax.Array
    episode_return: jax.Array
    last_episode_return: jax.Array


# MODELS: K deterministic models, each a task's world.


# POLICY: a Gaussian whose mean is an MLP and whose log standard deviation is one vector.


class GaussianPolicy(nn.Module):
    hidden_sizes: tuple[int, ...]
    action_size: int
    init_log_std: float

    @nn.compact
    def __call__(self, obs):
        mean = MLP(self.hidden_sizes, self.action_size, "tanh")(obs)
        log_std = self.param("log_std", nn.initializers.constant(self.init_log_std), (self.action_size,))
        return mean, jnp.broadcast_to(log_std, mean.shape)


def gaussian_log_prob(mean, log_std, action):
    return (-0.5 * ((action - mean) / jnp.exp(log_std)) ** 2 - log_std - 0.5 * jnp.log(2.0 * jnp.pi)).sum(-1)


def gaussian_kl(mean_p, log_std_p, mean_q, log_std_q):
    """KL(p || q) of diagonal Gaussians, summed over the last axis."""
    var_p, var_q = jnp.exp(2.0 * log_std_p), jnp.exp(2.0 * log_std_q)
    return (log_std_q - log_std_p + (var_p + (mean_p - mean_q) ** 2) / (2.0 * var_q) - 0.5).sum(-1)


# IMAGINE: trajectories under a Gaussian policy through one deterministic model.


def to_env_action(action, low, high):
    """Gaussian samples are unbounded; the task gets them clipped to [-1, 1] and scaled to its bounds."""
    return scale_action(jnp.clip(action, -1.0, 1.0), low, high)


def model_world(model_config, model, member, spec):
    """Model `member`'s world, `(obs, action) -> (next_obs, reward, ended)`: the member's mean
    prediction, the task's reward (the model's learned one where the task declares none) and the
    task's termination, both on the action the task would receive."""
    low, high = jnp.asarray(spec.action_low), jnp.asarray(spec.action_high)

    def world(obs, action):
        next_obs, learned_reward = ensemble.member_mean(model_config, model, member, obs, jnp.clip(action, -1.0, 1.0))
        # The authors clip predicted observations to [-1000, 1000] against runaway models
        # (sandbox/ours/sampler/MAML_model_sampler/maml_model_vec_env_executor.py, clip_obs=True).
        next_obs = jnp.clip(next_obs, -1000.0, 1000.0)
        env_action = to_env_action(action, low, high)
        reward = learned_reward if spec.reward_fn is None else spec.reward_fn(obs, env_action, next_obs)
        return next_obs, reward, spec.termination_fn(obs, env_action, next_obs)

    return world


def imagine(apply, params, world, start, key, horizon):
    """`horizon` steps [T, N, ...] from the observations `start` [N, O] under the Gaussian policy
    `apply(params, obs) -> (mean, log_std)` through `world(obs, action) -> (next_obs, reward, ended)`:
    obs, action, reward (0 once ended), alive, log_prob, and the policy's mean and log_std. A path
    is data, not a function of params: no gradient flows into it."""

    def step(carry, step_key):
        obs, alive = carry
        mean, log_std = apply(params, obs)
        action = mean + jnp.exp(log_std) * jax.random.normal(step_key, mean.shape)
        next_obs, reward, ended = world(obs, action)
        path_step = {
            "obs": obs,
            "action": action,
            "reward": reward * alive,
            "alive": alive,
            "log_prob": gaussian_log_prob(mean, log_std, action),
            "mean": mean,
            "log_std": log_std,
        }
        return (next_obs, alive * (1.0 - ended.astype(jnp.float32))), path_step

    _, path = jax.lax.scan(step, (start, jnp.ones(start.shape[0])), jax.random.split(key, horizon))
    return jax.tree_util.tree_map(jax.lax.stop_gradient, path)


# ADVANTAGES: discounted returns, rllab's linear feature baseline, GAE.


def discounted_returns(rewards, discount):
    """sum_k gamma^k r_{t+k} from every step t of [T, N] rewards to the end."""

    def backwards(carry, reward):
        carry = reward + discount * carry
        return carry, carry

    _, returns = jax.lax.scan(backwards, jnp.zeros_like(rewards[0]), rewards, reverse=True)
    return returns


def linear_baseline(obs, returns, alive, reg=1e-5):
    """Fit b(s_t, t) = w . [o, o^2, t, t^2, t^3, 1] (o clipped to [-10, 10], t in hundreds of steps)
    to the returns of one task's trajectories [T, N, ...] by ridge regression on the live steps."""
    T, N = returns.shape
    o = jnp.clip(obs, -10.0, 10.0)
    t = jnp.broadcast_to((jnp.arange(T) / 100.0)[:, None, None], (T, N, 1))
    features = jnp.concatenate([o, o**2, t, t**2, t**3, jnp.ones_like(t)], axis=-1) * alive[..., None]
    flat = features.reshape(T * N, -1)
    gram = flat.T @ flat + reg * jnp.eye(flat.shape[1])
    weights = jnp.linalg.solve(gram, flat.T @ (returns * alive).reshape(-1))
    return (features @ weights) * alive


def advantages(rewards, baseline, alive, discount, gae_lambda):
    """GAE over [T, N] trajectories that stop where `alive` turns 0 (no value after the last step),
    normalised over the live steps."""
    next_value = jnp.concatenate([baseline[1:], jnp.zeros_like(baseline[:1])]) * jnp.concatenate(
        [alive[1:], jnp.zeros_like(alive[:1])]
    )
    deltas = (rewards + discount * next_value - baseline) * alive

    def backwards(carry, delta):
        carry = delta + discount * gae_lambda * carry
        return carry, carry

    _, adv = jax.lax.scan(backwards, jnp.zeros_like(rewards[0]), deltas, reverse=True)
    count = jnp.maximum(alive.sum(), 1.0)
    mean = (adv * alive).sum() / count
    std = jnp.sqrt((((adv - mean) * alive) ** 2).sum() / count)
    return (adv - mean) / (std + 1e-8) * alive


def with_advantages(path, discount, gae_lambda):
    """The path with its normalised GAE advantages and its mean undiscounted return."""
    returns = discounted_returns(path["reward"], discount)
    baseline = linear_baseline(path["obs"], returns, path["alive"])
    adv = advantages(path["reward"], baseline, path["alive"], discount, gae_lambda)
    return dict(path, advantage=adv, path_return=path["reward"].sum(0).mean())


# OBJECTIVES: the inner policy-gradient step and the outer step's surrogates. `apply(params, obs)`
# gives the policy's mean and log standard deviation; a path holds obs, action, log_prob, mean and
# log_std (of the policy that sampled it), advantage and alive, each [T, N, ...].


def _live_mean(values, path):
    return (values * path["alive"]).sum() / jnp.maximum(path["alive"].sum(), 1.0)


def log_likelihood_surrogate(apply, params, path):
    """MAML's estimator, the authors' inner objective: the mean over live steps of log pi(a|s) A
    (model_ensemble_meta_learning, sandbox/ours/algos/ModelMAML/model_maml_npo.py:
    `- tf.reduce_mean(logli * adv_vars[i])`). Its gradient is the policy gradient; its Hessian,
    mean(A grad^2 log pi), leaves out the dependence of the sampling distribution on theta."""
    mean, log_std = apply(params, path["obs"])
    return _live_mean(gaussian_log_prob(mean, log_std, path["action"]) * path["advantage"], path)


def likelihood_ratio_surrogate(apply, params, path):
    """The mean over live steps of pi(a|s) / pi_old(a|s) A, pi_old the policy that sampled the path
    (its log_prob, a constant). The outer objective of TRPO; as the inner objective it is ProMP's
    low-variance-curvature (LVC) estimator (ProMP, meta_policy_search/meta_algos/pro_mp.py,
    `_adapt_objective_sym`): the same gradient at pi_old, plus the curvature term
    mean(A grad log pi grad log pi^T) in its Hessian."""
    mean, log_std = apply(params, path["obs"])
    ratio = jnp.exp(gaussian_log_prob(mean, log_std, path["action"]) - path["log_prob"])
    return _live_mean(ratio * path["advantage"], path)


INNER_SURROGATES = {"maml": log_likelihood_surrogate, "lvc": likelihood_ratio_surrogate}


def adapt(apply, params, path, inner_lr, estimator="maml"):
    """theta' = theta + alpha grad J(theta): one policy-gradient step on the task's own paths, with
    the inner surrogate `estimator` ("maml" or "lvc"); the two differ in the meta-gradient only."""
    grads = jax.grad(INNER_SURROGATES[estimator], argnums=1)(apply, params, path)
    return jax.tree_util.tree_map(lambda p, g: p + inner_lr * g, params, grads)


def clipped_surrogate(apply, params, path, clip_eps):
    """PPO's objective: min(r A, clip(r, 1 - eps, 1 + eps) A) over the live steps."""
    mean, log_std = apply(params, path["obs"])
    ratio = jnp.exp(gaussian_log_prob(mean, log_std, path["action"]) - path["log_prob"])
    gain = jnp.minimum(ratio * path["advantage"], jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * path["advantage"])
    return _live_mean(gain, path)


def post_adaptation_objective(apply, theta, pre_paths, post_paths, inner_lr, clip_eps=None, estimator="maml"):
    """The meta-objective: mean over tasks of the surrogate of theta'_i(theta) on the task's
    post-update paths (the likelihood-ratio surrogate, TRPO's; PPO's clipped one when `clip_eps` is
    given), where theta'_i(theta) adapts theta on the task's pre-update paths. Its gradient in theta
    goes through the inner step (second order)."""

    def per_task(pre, post):
        adapted = adapt(apply, theta, pre, inner_lr, estimator)
        if clip_eps is None:
            return likelihood_ratio_surrogate(apply, adapted, post)
        return clipped_surrogate(apply, adapted, post, clip_eps)

    return jax.vmap(per_task)(pre_paths, post_paths).mean()


def post_adaptation_kl(apply, theta, pre_paths, post_paths, inner_lr, estimator="maml"):
    """TRPO's constraint: the mean over every task's live post-update steps together of
    KL(sampling policy || pi_theta'_i(theta)), the adapted policies after the step, differentiated
    through the inner step (the authors' model_maml_npo.py: `kl_constrain_step = -1`, and
    `reduce_mean(concat(kls))` over all tasks' samples, so a task with more live steps weighs more)."""

    def per_task(pre, post):
        mean, log_std = apply(adapt(apply, theta, pre, inner_lr, estimator), post["obs"])
        kl = gaussian_kl(post["mean"], post["log_std"], mean, log_std)
        return (kl * post["alive"]).sum(), post["alive"].sum()

    total, live = jax.vmap(per_task)(pre_paths, post_paths)
    return total.sum() / jnp.maximum(live.sum(), 1.0)


# TASKS: each imagines through its own model and adapts on its own paths.


def imagine_tasks(apply, params, world_of, members, starts, keys, *, horizon, discount, gae_lambda, one_per_task=False):
    """Every task's paths [M, T, N, ...] with advantages: task i imagines through the world
    `world_of(members[i])` from `starts[i]` [N, O] with `keys[i]`, under `params`, or with
    `one_per_task` under its own params[i]."""

    def run(task_params, member, start, key):
        return with_advantages(imagine(apply, task_params, world_of(member), start, key, horizon), discount, gae_lambda)

    return jax.vmap(run, in_axes=(0 if one_per_task else None, 0, 0, 0))(params, members, starts, keys)


def adapt_tasks(apply, params, paths, inner_lr, estimator):
    """ADAPT: every task's inner step from theta on its own paths [M, ...] -> parameters [M, ...]."""
    return jax.vmap(adapt, in_axes=(None, None, 0, None, None))(apply, params, paths, inner_lr, estimator)


def policies_per_env(adapted, count):
    """Adapted parameters [M, ...] for `count` environments: environment j runs task j mod M's policy."""
    return jax.tree_util.tree_map(lambda p: p[jnp.arange(count) % p.shape[0]], adapted)


# OUTER STEP: the meta-update of theta on the post-adaptation objective, given the paths.


def adam_ascent(learning_rate=None):
    """Adam up the gradient (PPO's outer step raises its objective): Adam on the negated gradient,
    its rate kept in its state from `init` (`training.adam`)."""
    negate = optax.stateless(lambda grads, params: jax.tree_util.tree_map(jnp.negative, grads))
    return optax.chain(negate, adam(learning_rate))


def outer_step(apply, theta, opt_state, pre_paths, post_paths, config):
    """Improve theta on the tasks' pre- and post-update paths [M, T, N, ...]: one TRPO step
    (`config.outer_optimizer == "trpo"`) or `config.outer_steps` Adam steps on PPO's clipped
    objective, both differentiated through the inner step, with the run's (traced) inner_lr,
    max_kl, cg_damping, backtrack_ratio and clip_eps. Returns theta, the
    optimiser's state (PPO's) and metrics: the objective, and the post-adaptation KL from the
    policies that sampled `post_paths` to the new adapted ones."""
    inner_lr, estimator = config.inner_lr, config.inner_estimator

    def objective_fn(params, clip_eps=None):
        return post_adaptation_objective(apply, params, pre_paths, post_paths, inner_lr, clip_eps, estimator)

    def kl_fn(params):
        return post_adaptation_kl(apply, params, pre_paths, post_paths, inner_lr, estimator)

    if config.outer_optimizer == "trpo":
        theta, info = trpo.step(
            objective_fn,
            kl_fn,
            theta,
            config.max_kl,
            cg_iterations=config.cg_iterations,
            damping=config.cg_damping,
            backtrack_ratio=config.backtrack_ratio,
            max_backtracks=config.max_backtracks,
        )
        objective, step_metrics = info["objective"], {"outer_step_taken": info["accepted"]}
    else:

        def ppo_step(carry, _):
            params, opt_state = carry
            clipped = lambda p: (objective_fn(p, config.clip_eps), None)  # noqa: E731
            params, opt_state, objective, _ = gradient_update(
                clipped, params, opt_state, adam_ascent()
            )
            return (params, opt_state), objective

        (theta, opt_state), objectives = jax.lax.scan(ppo_step, (theta, opt_state), None, config.outer_steps)
        objective, step_metrics = objectives[-1], {}
    return theta, opt_state, {"outer_objective": objective, "outer_kl": kl_fn(theta), **step_metrics}


# META-STEP: Algorithm 1's inner loop, adapt then improve theta through the adaptation.


def meta_step(apply, imagine_fn, config, carry, key):
    """One meta-step, a `lax.scan` body over keys: every task adapts theta on paths imagined under
    theta, then theta takes the outer step on paths imagined under the adapted policies.
    `imagine_fn(params, key, one_per_task=False)` gives every task's paths [M, T, N, ...] through its
    own model, under params or, with `one_per_task`, under task i's params[i]."""
    theta, opt_state = carry
    pre_key, post_key = jax.random.split(key)
    pre = imagine_fn(theta, pre_key)
    adapted = adapt_tasks(apply, theta, pre, config.inner_lr, config.inner_estimator)
    post = imagine_fn(adapted, post_key, one_per_task=True)
    theta, opt_state, metrics = outer_step(apply, theta, opt_state, pre, post, config)
    returns = {"imagined_return_pre": pre["path_return"].mean(), "imagined_return_post": post["path_return"].mean()}
    return (theta, opt_state), {**returns, **metrics}


# ACT and EVALUATE: the adapted policies in the real environment.


def sample_actions(apply, params, obs, key):
    """One Gaussian action per environment, environment j acting with params[j]: obs [n, O] -> [n, A]."""
    mean, log_std = jax.vmap(apply)(params, obs[:, None])
    return (mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape))[:, 0]


def evaluate_adapted_and_theta(eval_env, spec, apply, adapted, theta, key, num_episodes):
    """Deterministic episodes of the adapted policies [M, ...] (episode j runs task j mod M's) and of
    theta, from the same initial states: `evaluate_episodes`'s metrics for each. One loop runs both,
    so the task's step is traced and optimised once, not twice: for the paper HalfCheetah, lowering
    5.0 -> 3.7 s and XLA's HLO passes 5.2 -> 3.3 s (CPU seconds, a shared 2-core CPU)."""
    low, high = jnp.asarray(spec.action_low), jnp.asarray(spec.action_high)
    episode_params = policies_per_env(adapted, num_episodes)

    def adapted_mean(carry, obs, step_key):
        mean, _ = jax.vmap(apply)(episode_params, obs[:, None])
        return to_env_action(mean[:, 0], low, high), carry

    def theta_mean(carry, obs, step_key):
        mean, _ = apply(theta, obs)
        return to_env_action(mean, low, high), carry

    def episodes(use_adapted):
        act = lambda *args: jax.lax.cond(use_adapted, adapted_mean, theta_mean, *args)  # noqa: E731
        return evaluate_episodes(eval_env, key, num_episodes, spec.episode_length, act)

    both = jax.lax.map(episodes, jnp.array([True, False]))
    return tuple(jax.tree_util.tree_map(lambda x, i=i: x[i], both) for i in (0, 1))


# TRAINING PROGRAM: what make_train builds once, the run's start and its real steps.


def check_task(config: Config, spec) -> None:
    """A ConfigError for a task that can end but has no termination function: imagined trajectories
    stop where it says."""
    if spec.termination_fn is None:
        raise ConfigError(
            f"{config.env} can terminate but has no termination function, which imagined trajectories need"
        )


def start_state_sampler(start_env, num_tasks: int, num_trajectories: int):
    """`start_states(key)`: initial observations [M, N, O] of every task's imagined trajectories, from
    one reset of `start_env`'s M x N environments."""

    # Jitted so that its three calls in an update are traced once, not three times: lowering the
    # paper HalfCheetah update went from 5.4 to 4.5 s (CPU seconds, a shared 2-core CPU), most of it
    # tracing Brax's reset of M x N environments. XLA inlines the calls again: the same program.
    @jax.jit
    def start_states(start_key):
        """Initial observations [M, N, O] of every task's imagined trajectories."""
        return start_env.reset(start_key).obs.reshape(num_tasks, num_trajectories, -1)

    return start_states


class Components(NamedTuple):
    """What make_train builds once from the static config and the task, for init, update and evaluate."""

    task: episodes.Setup
    schedule: training.Schedule
    model_config: ensemble.EnsembleConfig
    policy_net: GaussianPolicy
    task_model: jax.Array
    """[M]: task i imagines with model i // tasks_per_model, so each adapted policy sees its own model only."""
    horizon: int
    """Length of an imagined trajectory."""
    start_states: Callable[[jax.Array], jax.Array]
    """`start_state_sampler`'s: initial observations [M, N, O] of every task's imagined trajectories."""
    num_tasks: int
    num_envs: int


def build_components(config: Config, task: episodes.Setup) -> Components:
    """The schedule, the models, the policy and the imagined starts of the run `config` on `task`."""
    M, N = config.num_tasks, config.imagined_trajectories
    # Every task's imagined starts come from one reset of M x N environments, outside the vmap
    # over tasks, so that a task stepping on the host (gym/) is reset once, not under vmap.
    start_env, _ = task.copies(M * N)
    return Components(
        task=task,
        schedule=make_schedule(
            config.total_steps, config.initial_steps, config.real_steps_per_iteration, config.eval_every
        ),
        model_config=dataclasses.replace(config, learn_reward=task.spec.reward_fn is None),
        policy_net=GaussianPolicy(config.policy_hidden_sizes, task.spec.action_size, config.init_log_std),
        task_model=jnp.arange(M) // config.tasks_per_model,
        horizon=config.imagined_horizon or task.spec.episode_length,
        start_states=start_state_sampler(start_env, M, N),
        num_tasks=M,
        num_envs=config.num_envs,
    )


def imagination(parts: Components, model, config: Config):
    """`imagine_fn(params, key, one_per_task=False)`: every task's paths through its own model, with
    the run's (traced) discount and gae_lambda."""
    apply, M = parts.policy_net.apply, parts.num_tasks
    world_of = lambda member: model_world(parts.model_config, model, member, parts.task.spec)  # noqa: E731
    settings = dict(horizon=parts.horizon, discount=config.discount, gae_lambda=config.gae_lambda)

    def imagine_fn(params, key, one_per_task=False):
        keys = jax.random.split(key, M + 1)  # one per task, then the start states'
        starts = parts.start_states(keys[M])
        return imagine_tasks(
            apply, params, world_of, parts.task_model, starts, keys[:M], **settings, one_per_task=one_per_task
        )

    return imagine_fn


def adapt_all(apply, policy, paths, config: Config):
    """Every task's inner step from `policy` on its own paths, with the run's (traced) inner_lr."""
    return adapt_tasks(apply, policy, paths, config.inner_lr, config.inner_estimator)


def env_step(task: episodes.Setup, state: MBMPOState, action) -> MBMPOState:
    """One step of the real environments on Gaussian actions [num_envs, A], into the replay as the
    task received them."""
    next_env_state = task.env.step(state.env_state, to_env_action(action, task.low, task.high))
    stored = jnp.clip(action, -1.0, 1.0)  # what the task received, in [-1, 1]: the model's input
    buffer = replay.add(state.buffer, transition(state.env_state, stored, next_env_state))
    episode_return, last_return = track_returns(
        state.episode_return, state.last_episode_return, next_env_state.reward, next_env_state.done
    )
    return state._replace(
        env_state=next_env_state, buffer=buffer, episode_return=episode_return, last_episode_return=last_return
    )


def initial_state(key, config: Config, parts: Components) -> MBMPOState:
    """The state a run starts from: fresh environments, models, theta and its optimiser, and a
    replay of the whole run, filled by `initial_steps` uniformly random steps (EXPLORE)."""
    spec, num_envs = parts.task.spec, parts.num_envs
    obs_size, action_size = spec.observation_size, spec.action_size
    env_key, model_key, policy_key, explore_key, key = jax.random.split(key, 5)
    env_state = parts.task.env.reset(env_key)
    policy = parts.policy_net.init(policy_key, jnp.zeros((1, obs_size)))
    state = MBMPOState(
        env_state=env_state,
        buffer=replay.init(transition_example(env_state.obs[0], action_size), parts.schedule.total_steps),
        model=ensemble.init(
            model_key, parts.model_config, obs_size, action_size, config.model_lr, config.model_weight_decay
        ),
        policy=policy,
        policy_opt=adam_ascent(config.outer_lr).init(policy),
        key=key,
        episode_return=jnp.zeros(num_envs),
        last_episode_return=jnp.float32(0.0),
    )
    step = functools.partial(env_step, parts.task)
    return explore_uniformly(step, state, explore_key, config.initial_steps // num_envs, (num_envs, action_size))


def collect_adapted(state: MBMPOState, key, config: Config, parts: Components, env_params) -> MBMPOState:
    """COLLECT `real_steps_per_iteration` real steps, environment j acting with env_params[j]."""

    def real_step(state, step_key):
        action = sample_actions(parts.policy_net.apply, env_params, state.env_state.obs, step_key)
        return env_step(parts.task, state, action), None

    steps = config.real_steps_per_iteration // parts.num_envs
    state, _ = jax.lax.scan(real_step, state, jax.random.split(key, steps))
    return state


def make_train(config: Config, env=None) -> Trainer:
    """The training program on the task `config.env` names, or on `env`, a user's own
    `(environment, EnvSpec)` on Brax's protocol."""
    config.validate()
    task = episodes.setup(config, env, algorithm="MB-MPO")
    check_task(config, task.spec)
    parts = build_components(config, task)
    apply, num_envs, obs_size = parts.policy_net.apply, parts.num_envs, task.spec.observation_size

    def init(key, config):
        return initial_state(key, config, parts)

    def update(state: MBMPOState, config, update_index):
        """One iteration: refit the models, meta-learn in imagination, collect real data adapted."""
        del update_index
        key, fit_key, meta_key, adapt_key, collect_key = jax.random.split(state.key, 5)

        # TRAIN MODELS on all real data.
        buffer = state.buffer
        model, model_metrics = ensemble.train(parts.model_config, state.model, buffer.data, buffer.count, fit_key)

        # META-LEARN in imagination.
        imagine_fn = imagination(parts, model, config)
        (policy, policy_opt), meta_metrics = jax.lax.scan(
            functools.partial(meta_step, apply, imagine_fn, config),
            (state.policy, state.policy_opt),
            jax.random.split(meta_key, config.meta_steps),
        )

        # COLLECT real data with the policies adapted from the new theta.
        env_params = policies_per_env(adapt_all(apply, policy, imagine_fn(policy, adapt_key), config), num_envs)
        state = state._replace(model=model, policy=policy, policy_opt=policy_opt, key=key)
        state = collect_adapted(state, collect_key, config, parts, env_params)
        metrics = dict(model_metrics, **jax.tree_util.tree_map(jnp.mean, meta_metrics))
        _, log_std = apply(policy, jnp.zeros((1, obs_size)))
        metrics.update(policy_std=jnp.exp(log_std).mean(), train_episode_return=state.last_episode_return)
        return state, metrics

    def evaluate(state: MBMPOState, key, config):
        """Deterministic returns of the adapted policies and of theta on the same initial states, and
        what the inner step gains in imagination: each adapted policy run on its own model from the
        same start states with the same noise as the pre-update paths it adapted on (common random
        numbers)."""
        adapt_key, episodes_key = jax.random.split(key)
        imagine_fn = imagination(parts, state.model, config)
        pre = imagine_fn(state.policy, adapt_key)
        adapted = adapt_all(apply, state.policy, pre, config)
        gain = imagine_fn(adapted, adapt_key, one_per_task=True)["path_return"].mean() - pre["path_return"].mean()
        adapted_returns, pre_returns = evaluate_adapted_and_theta(
            task.eval_env, task.spec, apply, adapted, state.policy, episodes_key, config.eval_episodes
        )
        return dict(
            adapted_returns, eval_return_pre_update=pre_returns["eval_return"], eval_imagined_adaptation_gain=gain
        )

    fresh_episodes = restart_episodes("env_state", "episode_return")
    return Trainer(init, update, evaluate, parts.schedule, spec=task.spec, fresh_episodes=fresh_episodes)


# SETTINGS: the Config and its presets


@dataclasses.dataclass(frozen=True)
class Config(ensemble.EnsembleConfig, RunConfig):
    """MB-MPO settings."""

    RENAMED = {"num_models": "ensemble_size"}

    # Run
    total_steps: int = 7400
    """Real environment steps in all, random exploration included."""
    num_envs: int = 4
    """Parallel real environments; environment j runs adapted policy j mod (number of tasks)."""
    episode_length: int | None = None
    """Steps per episode (default: the task's own; the paper: 200)."""
    initial_steps: int = setting(1000, positive=True)
    """Uniformly random real steps before the first iteration (the paper: 5000)."""
    eval_every: int = 1600
    """Real steps between evaluations."""
    eval_episodes: int = 6
    """Evaluation episodes (deterministic policies), run in parallel; each adapted policy in turn."""
    real_steps_per_iteration: int = setting(800, positive=True)
    """Real steps collected by the adapted policies per iteration (the paper: 4000)."""
    # Meta-learning
    tasks_per_model: int = setting(2, positive=True)
    """Adapted policies per model, M / K (the paper: 4, so 20 tasks)."""
    imagined_trajectories: int = setting(20, positive=True)
    """Trajectories imagined per task, before and after adaptation (the paper: 50)."""
    imagined_horizon: int | None = setting(None, positive=True)
    """Length of an imagined trajectory (default: the episode length; the paper: 200)."""
    meta_steps: int = setting(15, positive=True)
    """Meta-steps per iteration, each with fresh imagined data (the paper: 30)."""
    inner_estimator: Literal["maml", "lvc"] = setting("maml", choices=("maml", "lvc"))
    """Inner surrogate: maml (mean of log pi x advantage, the authors') or lvc (ProMP's likelihood ratio)."""
    # 0 is the no-adaptation ablation, not a missing learning rate.
    inner_lr: float = setting(0.02, sweepable=True, may_be_zero=True)
    """alpha: step size of the inner policy-gradient step (the paper: 0.001; 0 for no adaptation)."""
    outer_optimizer: Literal["trpo", "ppo"] = setting("trpo", choices=("trpo", "ppo"))
    """Outer step: trpo (one KL-constrained natural-gradient step per meta-step, the paper's) or ppo."""
    max_kl: float = setting(0.01, sweepable=True, positive=True)
    """TRPO: bound on the mean KL between the adapted policies before and after the step (the paper: 0.01)."""
    cg_iterations: int = setting(10, positive=True)
    """TRPO: conjugate-gradient iterations for the natural-gradient direction (the authors': 10)."""
    cg_damping: float = setting(1e-5, sweepable=True, within="[0, inf)")
    """TRPO: damping added to the KL's Hessian, H + damping I (the authors': 1e-5)."""
    backtrack_ratio: float = setting(0.8, sweepable=True, within="(0, 1)")
    """TRPO: line-search shrink factor (the authors': 0.8)."""
    max_backtracks: int = setting(15, positive=True)
    """TRPO: step sizes the line search tries before it keeps theta (the authors': 15)."""
    outer_steps: int = setting(5, positive=True)
    """PPO: Adam steps on the clipped surrogate per meta-step."""
    outer_lr: float = setting(1e-3, sweepable=True)
    """PPO: Adam learning rate of the meta-policy theta."""
    clip_eps: float = setting(0.2, sweepable=True, within="(0, 1)")
    """PPO: clipping range of the outer step."""
    discount: float = setting(0.99, sweepable=True, within="[0, 1]")
    """Discount factor gamma."""
    gae_lambda: float = setting(1.0, sweepable=True, within="[0, 1]")
    """GAE lambda (the paper: 1, returns minus the baseline)."""
    policy_hidden_sizes: tuple[int, ...] = (32, 32)
    """Hidden widths of the Gaussian policy's mean (tanh)."""
    init_log_std: float = 0.0
    """Initial log standard deviation of the policy, the same in every state."""
    # Models (ensemble.EnsembleConfig's fields): K deterministic models, every one an elite (each is a
    # task's world), each on its own bootstrap of one 80/20 split, kept at its best holdout snapshot.
    ensemble_size: int = 3
    model_hidden_sizes: tuple[int, ...] = (64, 64)
    model_activation: str = "relu"
    model_probabilistic: bool = False
    model_weight_decay: float = 0.0

    @property
    def num_tasks(self) -> int:
        return self.ensemble_size * self.tasks_per_model

    def validate(self) -> None:
        super().validate()
        if self.model_elites is not None:
            raise ConfigError("model_elites must stay unset: every model is a task's world, so every one is used")
        for name in ("real_steps_per_iteration", "initial_steps"):
            if getattr(self, name) % self.num_envs:
                raise ConfigError(f"{name} ({getattr(self, name)}) must divide by num_envs ({self.num_envs})")


# Presets, as data: presets/mbmpo.toml (a task's settings, and variants applied on top).
TASKS, VARIANTS = presets.load(__file__)
PRESETS: dict[str, dict[str, Any]] = {**TASKS, **VARIANTS}


def main(argv=None) -> int:
    return runner.main("mbmpo", Config, PRESETS, make_train, argv)


if __name__ == "__main__":
    sys.exit(main())
