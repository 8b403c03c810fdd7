"""MuZero (Schrittwieser et al., "Mastering Atari, Go, chess and shogi by planning with a learned
model", Nature 2020), and Gumbel MuZero (Danihelka et al., "Policy improvement by planning with
Gumbel", ICLR 2022) as `--search gumbel`, on single-agent tasks with discrete actions.

A model learned in a latent space: representation s^0 = h(o_t), dynamics (r^k, s^k) = g(s^{k-1},
a_{t+k}), prediction (p^k, v^k) = f(s^k). A tree search through the model (mctx: PUCT with Dirichlet
noise at the root, or Gumbel) picks every action; its policy pi is the policy target. On a replayed
position t, unrolled K steps through the actions that were taken,

    l_t(theta) = sum_{k=0..K} [ l^p(pi_{t+k}, p^k) + c_v l^v(z_{t+k}, v^k) ] + sum_{k=1..K} l^r(u_{t+k}, r^k)
    z_t = u_{t+1} + gamma u_{t+2} + ... + gamma^{n-1} u_{t+n} + gamma^n v^-(o_{t+n})

plus c ||theta||^2, where u are the rewards and v^- a target network's value. Value and reward are
categorical over a support in the transformed space h(x) = sign(x)(sqrt(|x| + 1) - 1) + 0.001 x, and
l^v, l^r are the cross entropies against the two-hot projection of h(target). The gradient through
each unrolled latent into the next dynamics step is halved, and the unrolled steps' losses have their
gradient scaled by 1/K. Positions may be drawn with priority |v^0 - z| (`--prioritized`).

Departures from the paper (the rest, and why, on the page):
- The n-step bootstrap is a target network's value of o_{t+n} (MuZero Reanalyse's choice), not the
  search's stored root value (the pseudocode's make_target); a time limit bootstraps, a termination not.
- Small MLPs with the latent min-max scaled to [0, 1]; Adam, not SGD with momentum.
- Acting and learning alternate inside one compiled program (no asynchronous actors).
- Reanalyse (`--reanalyse-fraction`) refreshes the policy targets of a share of each batch only.

Provenance, every departure, presets and commands: docs/algorithms/muzero.md.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import mctx
import optax

from mbrlax import buffer as replay
from mbrlax import presets, runner
from mbrlax.config import RunConfig, setting
from mbrlax.loops import episodes
from mbrlax.search import SearchConfig, search
from mbrlax.training import ConfigError, Trainer, adam, gradient_update, make_schedule, restart_episodes

# THE VALUE TRANSFORM AND ITS CATEGORICAL REPRESENTATION


def value_transform(x, eps: float = 0.001):
    """h(x) = sign(x) (sqrt(|x| + 1) - 1) + eps x (Pohlen et al. 2018; MuZero's appendix F)."""
    return jnp.sign(x) * (jnp.sqrt(jnp.abs(x) + 1.0) - 1.0) + eps * x


def inverse_value_transform(y, eps: float = 0.001):
    """h^-1(y) = sign(y) (((sqrt(1 + 4 eps (|y| + 1 + eps)) - 1) / (2 eps))^2 - 1)."""
    root = (jnp.sqrt(1.0 + 4.0 * eps * (jnp.abs(y) + 1.0 + eps)) - 1.0) / (2.0 * eps)
    return jnp.sign(y) * (root**2 - 1.0)


def two_hot(x, support_size: int):
    """The projection of x (already transformed) onto the integers -S..S: weight 1 - (x - floor x) on
    floor x and x - floor x on the next one, so the expectation is x (clipped to [-S, S])."""
    x = jnp.clip(x, -support_size, support_size)
    low = jnp.floor(x)
    upper_weight = (x - low)[..., None]
    index = (low + support_size).astype(jnp.int32)
    atoms = 2 * support_size + 1
    return jax.nn.one_hot(index, atoms) * (1.0 - upper_weight) + jax.nn.one_hot(index + 1, atoms) * upper_weight


def scalar_target(x, support_size: int):
    """The categorical target of a scalar: two_hot(h(x))."""
    return two_hot(value_transform(x), support_size)


def to_scalar(logits):
    """A categorical prediction's scalar: h^-1 of its expectation over the support -S..S."""
    support_size = (logits.shape[-1] - 1) // 2
    support = jnp.arange(-support_size, support_size + 1, dtype=jnp.float32)
    return inverse_value_transform((jax.nn.softmax(logits) * support).sum(axis=-1))


# TARGETS


def n_step_values(rewards, terminated, ended, next_values, discount, n: int, positions: int):
    """z_k for the positions k = 0..positions-1 of a window of rows (axis -1, at least positions + n - 1
    long): sum_{i<m} gamma^i u_{k+i} + gamma^m v^-(o'_{k+m-1}), where m = n, or fewer where the episode
    ends at row k+m-1; the bootstrap is 0 when that end is a termination. Row j holds the reward u_j of
    its action, whether the episode terminated or ended (termination or time limit) there, and the
    target network's value of its next observation (the final one where the episode ended)."""
    total = jnp.zeros(rewards.shape[:-1] + (positions,))
    alive = jnp.ones_like(total)
    for i in range(n):
        row = slice(i, i + positions)
        total = total + alive * discount**i * rewards[..., row]
        stop = jnp.maximum(ended[..., row], float(i == n - 1))
        total = total + alive * stop * discount ** (i + 1) * (1.0 - terminated[..., row]) * next_values[..., row]
        alive = alive * (1.0 - ended[..., row])
    return total


def unroll_masks(terminated, ended, positions: int):
    """Per position k = 0..positions-1 of a window: `alive` (no episode end in rows before k, so o_{t+k}
    is the episode's) and `known` (alive, or past a termination, an absorbing state whose value and
    rewards are 0; past a time limit nothing is known)."""
    before = jnp.cumsum(ended[..., : positions - 1], axis=-1)
    alive = jnp.concatenate([jnp.ones_like(ended[..., :1]), (before == 0).astype(ended.dtype)], axis=-1)
    first_end_terminated = jnp.cumsum((alive * terminated[..., :positions])[..., :-1], axis=-1)
    absorbing = jnp.concatenate([jnp.zeros_like(ended[..., :1]), first_end_terminated], axis=-1)
    return alive, alive + absorbing


# THE UNROLL AND THE LOSS


def scale_gradient(x, scale):
    """x in the forward pass; its gradient times `scale` in the backward pass."""
    return x * scale + jax.lax.stop_gradient(x) * (1.0 - scale)


def unroll(represent, dynamics, predict, observation, actions):
    """s^0 = h(o), (r^k, s^k) = g(s^{k-1}, a_k), (p^k, v^k) = f(s^k) for k = 1..K (actions [B, K]). As in
    the pseudocode's update_weights, each s^k (k >= 1) passes through scale_gradient(s^k, 0.5) after its
    own predictions and before the next dynamics step, so d v^k / d s^0 carries 0.5^(k-1).
    Returns policy and value logits [B, K+1, ...] and reward logits [B, K, ...]."""
    latent = represent(observation)
    policy, value = predict(latent)

    def step(latent, action):
        latent, reward = dynamics(latent, action)
        step_policy, step_value = predict(latent)
        return scale_gradient(latent, 0.5), (reward, step_policy, step_value)

    _, (rewards, policies, values) = jax.lax.scan(step, latent, actions.T)
    swap = lambda x: jnp.moveaxis(x, 0, 1)  # noqa: E731
    policies = jnp.concatenate([policy[:, None], swap(policies)], axis=1)
    values = jnp.concatenate([value[:, None], swap(values)], axis=1)
    return policies, values, swap(rewards)


def muzero_loss(policy_logits, value_logits, reward_logits, targets, value_coefficient, weights=None):
    """sum_k l^p + c_v l^v + l^r per position (the k >= 1 terms' gradient scaled by 1/K), averaged over
    the batch with importance `weights` (prioritised replay). `targets`: policy [B, K+1, A], value
    [B, K+1], reward [B, K] (scalars), policy_mask and known [B, K+1]. Returns the loss, its parts
    and the per-position scalar value error of k = 0 (the new priority)."""
    unrolled = reward_logits.shape[1]
    support_size = (value_logits.shape[-1] - 1) // 2
    policy = optax.softmax_cross_entropy(policy_logits, targets["policy"]) * targets["policy_mask"]
    value = optax.softmax_cross_entropy(value_logits, scalar_target(targets["value"], support_size)) * targets["known"]
    reward = optax.softmax_cross_entropy(reward_logits, scalar_target(targets["reward"], support_size))
    reward = jnp.concatenate([jnp.zeros_like(reward[:, :1]), reward * targets["known"][:, :-1]], axis=1)
    per_step = policy + value_coefficient * value + reward
    scale = jnp.concatenate([jnp.ones((1,)), jnp.full((unrolled,), 1.0 / unrolled)])
    per_position = scale_gradient(per_step, scale).sum(axis=1)
    weights = jnp.ones_like(per_position) if weights is None else weights
    parts = dict(policy_loss=policy.mean(), value_loss=value.mean(), reward_loss=reward.mean())
    return (weights * per_position).mean(), parts, jnp.abs(to_scalar(value_logits[:, 0]) - targets["value"][:, 0])


def l2_penalty(params) -> jax.Array:
    """||theta||^2 over the weights (kernels), not the biases."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return sum(jnp.sum(x**2) for path, x in leaves if "kernel" in jax.tree_util.keystr(path))


# THE NETWORKS: h, g and f, MLPs over vector observations


def scale_latent(s):
    """Min-max scaling of each latent to [0, 1], as the paper's appendix does to the hidden state."""
    low, high = s.min(axis=-1, keepdims=True), s.max(axis=-1, keepdims=True)
    return (s - low) / jnp.maximum(high - low, 1e-5)


class MLP(nn.Module):
    width: int
    out: int
    layers: int = 2

    @nn.compact
    def __call__(self, x):
        for _ in range(self.layers):
            x = nn.relu(nn.Dense(self.width)(x))
        return nn.Dense(self.out)(x)


class MuZeroNet(nn.Module):
    num_actions: int
    support_size: int
    width: int = 64
    latent_size: int = 64

    def setup(self):
        atoms = 2 * self.support_size + 1
        self.representation = MLP(self.width, self.latent_size)
        self.transition = MLP(self.width, self.latent_size)
        self.reward_head = MLP(self.width, atoms, layers=1)
        self.policy_head = MLP(self.width, self.num_actions, layers=1)
        self.value_head = MLP(self.width, atoms, layers=1)

    def represent(self, observation):
        return scale_latent(self.representation(observation.reshape(observation.shape[0], -1).astype(jnp.float32)))

    def dynamics(self, latent, action):
        x = jnp.concatenate([latent, jax.nn.one_hot(action, self.num_actions)], axis=-1)
        return scale_latent(self.transition(x)), self.reward_head(x)

    def predict(self, latent):
        return self.policy_head(latent), self.value_head(latent)

    def __call__(self, observation, action):
        latent, reward = self.dynamics(self.represent(observation), action)
        return self.predict(latent), reward


def model_functions(net: MuZeroNet, params):
    """h, g and f with the parameters bound, as `unroll` and the search take them."""
    represent = lambda o: net.apply(params, o, method=MuZeroNet.represent)  # noqa: E731
    dynamics = lambda s, a: net.apply(params, s, a, method=MuZeroNet.dynamics)  # noqa: E731
    predict = lambda s: net.apply(params, s, method=MuZeroNet.predict)  # noqa: E731
    return represent, dynamics, predict


# SEARCH in the learned model


def search_actions(model, observation, key, config, *, simulations: int, explore: bool):
    """The search's action [B], policy [B, A] (its action weights) and root value [B] from each
    observation, through `model` = (h, g, f) (`model_functions`). Exploring: PUCT's root noise and an
    action drawn from the visit counts at `temperature`, or Gumbel's noisy winner; else the most
    visited action or the noiseless winner."""
    represent, dynamics, predict = model
    latent = represent(observation)
    logits, value = predict(latent)
    root = mctx.RootFnOutput(prior_logits=logits, value=to_scalar(value), embedding=latent)

    def recurrent_fn(params, key, action, latent):
        del params, key  # the model's parameters are bound in `model`
        latent, reward = dynamics(latent, action)
        logits, value = predict(latent)
        reward = to_scalar(reward)
        discount = jnp.full_like(reward, config.discount)
        output = mctx.RecurrentFnOutput(reward=reward, discount=discount, prior_logits=logits, value=to_scalar(value))
        return output, latent

    temperature = config.temperature
    output = search(config, None, key, root, recurrent_fn, simulations, None, explore=explore, temperature=temperature)
    return output.action, output.action_weights, output.search_tree.summary().value


# STATE


class MuZeroState(NamedTuple):
    params: Any
    target_params: Any
    """theta^-, the parameters that value the n-step bootstraps, refreshed every `target_update_every` updates."""
    opt_state: Any
    replay: replay.TrajectoryBuffer
    """Every environment's steps, time-major: the windows of K + n rows the loss unrolls over."""
    env_state: Any
    episode_return: jax.Array
    last_return: jax.Array
    learner_steps: jax.Array
    max_priority: jax.Array
    key: jax.Array


# ACT: `rollout_length` steps of every environment, each action a search's


def act(net, env, state: MuZeroState, key, config) -> MuZeroState:
    """Each step: a search from every environment's observation with the current parameters, the
    action played, and the step stored with the search's policy and root value."""
    num_actions = net.num_actions

    def step(carry, step_key):
        env_state, buffer, episode_return, last_return = carry
        model = model_functions(net, state.params)
        action, policy, root_value = search_actions(
            model, env_state.obs, step_key, config, simulations=config.num_simulations, explore=True
        )
        next_state = env.step(env_state, jax.nn.one_hot(action, num_actions))
        ended = next_state.done
        row = dict(
            obs=env_state.obs,
            action=action,
            reward=next_state.reward,
            terminated=ended * (1.0 - next_state.info["truncation"]),
            ended=ended,
            next_obs=next_state.info["final_obs"],
            policy=policy,
            root_value=root_value,
            priority=jnp.full_like(root_value, state.max_priority),
        )
        # The store's episode ids go unused: the rows' end flags mark where episodes end.
        buffer = replay.add_step(buffer, row, jnp.zeros(ended.shape, jnp.int32))
        episode_return, last_return = episodes.track_returns(episode_return, last_return, next_state.reward, ended)
        return (next_state, buffer, episode_return, last_return), None

    carry = (state.env_state, state.replay, state.episode_return, state.last_return)
    (env_state, buffer, episode_return, last_return), _ = jax.lax.scan(
        step, carry, jax.random.split(key, config.rollout_length)
    )
    return state._replace(env_state=env_state, replay=buffer, episode_return=episode_return, last_return=last_return)


# LEARN: `updates_per_iteration` steps of Adam on windows drawn from the replay


def window_targets(net, target_params, window, config):
    """The unroll's targets from a window of K + n rows: n-step values from theta^-, rewards, search
    policies, and the masks of positions past an episode's end."""
    positions = config.unroll_steps + 1
    represent, _, predict = model_functions(net, target_params)
    next_obs = window["next_obs"]
    flat = next_obs.reshape((-1,) + next_obs.shape[2:])
    next_values = jax.lax.stop_gradient(to_scalar(predict(represent(flat))[1]).reshape(next_obs.shape[:2]))
    rewards, terminated, ended = window["reward"], window["terminated"], window["ended"]
    values = n_step_values(rewards, terminated, ended, next_values, config.discount, config.td_steps, positions)
    alive, known = unroll_masks(terminated, ended, positions)
    return dict(
        value=values * alive,
        reward=window["reward"][:, : positions - 1] * alive[:, :-1],
        policy=window["policy"][:, :positions],
        policy_mask=alive,
        known=known,
    )


def reanalyse(net, params, window, targets, key, config):
    """MuZero Reanalyse's fresh policy targets: for the first `reanalyse_fraction` x batch windows, the
    policy of a new search (as acting searches, root noise included) with the current parameters at
    each of the K + 1 positions, in place of the one stored when the step was played."""
    count = round(config.reanalyse_fraction * config.batch_size)
    if count == 0:
        return targets
    positions = config.unroll_steps + 1
    observations = window["obs"][:count, :positions]
    flat = observations.reshape((count * positions,) + observations.shape[2:])
    model = model_functions(net, params)
    _, policy, _ = search_actions(model, flat, key, config, simulations=config.num_simulations, explore=True)
    fresh = jax.lax.stop_gradient(policy).reshape((count, positions, -1))
    return dict(targets, policy=targets["policy"].at[:count].set(fresh))


def learn(net, state: MuZeroState, key, config) -> tuple[MuZeroState, dict]:
    """Each update: windows of K + n steps drawn uniformly (or by priority), their targets from theta^-
    (and fresh policies, with Reanalyse), one Adam step down the unrolled loss, and theta^- refreshed
    every `target_update_every` updates."""
    optimizer = adam()
    length = config.unroll_steps + config.td_steps

    def loss_fn(params, window, targets, weights):
        represent, dynamics, predict = model_functions(net, params)
        actions = window["action"][:, : config.unroll_steps]
        policies, values, rewards = unroll(represent, dynamics, predict, window["obs"][:, 0], actions)
        loss, parts, error = muzero_loss(policies, values, rewards, targets, config.value_coefficient, weights)
        return loss + config.l2_coefficient * l2_penalty(params), (parts, error)

    def step(carry, step_key):
        params, target_params, opt_state, buffer, learner_steps, max_priority = carry
        if config.prioritized:
            window, (rows, envs), probability = replay.sample_sequences_by_priority(
                buffer, step_key, config.batch_size, length, buffer.data["priority"], config.priority_exponent
            )
            # Bounded below: before the replay holds a window no start is valid and every probability is 0.
            scaled = jnp.maximum(probability * buffer.count * buffer.episode.shape[1], 1e-6)
            weights = scaled**-config.priority_correction
            weights = weights / weights.max()
        else:
            window, weights = replay.sample_sequences(buffer, step_key, config.batch_size, length), None
        targets = window_targets(net, target_params, window, config)
        targets = reanalyse(net, params, window, targets, jax.random.fold_in(step_key, 1), config)
        new_params, new_opt, loss, (parts, error) = gradient_update(
            loss_fn, params, opt_state, optimizer, window, targets, weights
        )
        # Nothing is learned until the replay holds a whole window.
        ready = buffer.count >= length
        keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(ready, a, b), new, old)  # noqa: E731
        params, opt_state = keep(new_params, params), keep(new_opt, opt_state)
        if config.prioritized:
            old = buffer.data["priority"]
            priority = old.at[rows, envs].set(jnp.where(ready, error + 1e-6, old[rows, envs]))
            buffer = buffer.replace(data=dict(buffer.data, priority=priority))
            max_priority = jnp.maximum(max_priority, jnp.where(ready, error.max(), 0.0))
        learner_steps = learner_steps + ready.astype(jnp.int32)
        refresh = learner_steps % config.target_update_every == 0
        target_params = jax.tree_util.tree_map(lambda p, t: jnp.where(refresh, p, t), params, target_params)
        return (params, target_params, opt_state, buffer, learner_steps, max_priority), dict(loss=loss, **parts)

    carry = (state.params, state.target_params, state.opt_state, state.replay, state.learner_steps, state.max_priority)
    carry, metrics = jax.lax.scan(step, carry, jax.random.split(key, config.updates_per_iteration))
    params, target_params, opt_state, buffer, learner_steps, max_priority = carry
    state = state._replace(
        params=params, target_params=target_params, opt_state=opt_state, replay=buffer,
        learner_steps=learner_steps, max_priority=max_priority,
    )  # fmt: skip
    return state, jax.tree_util.tree_map(jnp.mean, metrics)


# TRAINING PROGRAM


def make_train(config: Config, env=None) -> Trainer:
    """The training program on the task `config.env` names, or on `env`, a user's own
    `(environment, EnvSpec)` with discrete actions: iterations of `rollout_length` searched steps of
    `num_envs` environments, then `updates_per_iteration` updates of h, g and f."""
    config.validate()
    task = episodes.setup(config, env)
    spec = task.spec
    if not spec.discrete or spec.image_shape is not None:
        kind = "images for observations" if spec.discrete else "a continuous action space"
        raise ConfigError(f"muzero.py searches over discrete actions from vector observations; {spec.name} has {kind}")
    net = MuZeroNet(spec.action_size, config.support_size, config.width, config.latent_size)
    steps_per_update = config.num_envs * config.rollout_length
    schedule = make_schedule(config.total_steps, 0, steps_per_update, config.eval_every)
    capacity = -(-config.replay_capacity // config.num_envs)  # rows of num_envs steps
    if capacity < config.unroll_steps + config.td_steps:
        raise ConfigError(
            f"replay_capacity ({config.replay_capacity:,}) holds fewer than unroll_steps + td_steps "
            f"({config.unroll_steps + config.td_steps}) steps of each of the {config.num_envs} environments"
        )

    def init(key, config):
        net_key, env_key, key = jax.random.split(key, 3)
        env_state = task.env.reset(env_key)
        params = net.init(net_key, env_state.obs, jnp.zeros(config.num_envs, jnp.int32))
        obs = env_state.obs[0]
        example = dict(
            obs=obs, action=jnp.int32(0), reward=jnp.float32(0.0), terminated=jnp.float32(0.0),
            ended=jnp.float32(0.0), next_obs=obs, policy=jnp.zeros(spec.action_size),
            root_value=jnp.float32(0.0), priority=jnp.float32(0.0),
        )  # fmt: skip
        zeros = jnp.zeros(config.num_envs)
        return MuZeroState(
            params, params, adam(config.lr).init(params), replay.init_trajectories(example, capacity, config.num_envs),
            env_state, zeros, jnp.float32(0.0), jnp.int32(0), jnp.float32(1.0), key,
        )  # fmt: skip

    def update(state: MuZeroState, config, update_index):
        key, act_key, learn_key = jax.random.split(state.key, 3)
        state = act(net, task.env, state._replace(key=key), act_key, config)
        state, metrics = learn(net, state, learn_key, config)
        return state, dict(metrics, train_episode_return=state.last_return)

    def evaluate(state: MuZeroState, key, config):
        def policy(carry, obs, step_key):
            model = model_functions(net, state.params)
            simulations = config.eval_simulations
            action, _, _ = search_actions(model, obs, step_key, config, simulations=simulations, explore=False)
            return jax.nn.one_hot(action, spec.action_size), carry

        return episodes.evaluate_episodes(task.eval_env, key, config.eval_episodes, spec.episode_length, policy)

    return Trainer(
        init=init, update=update, evaluate=evaluate, schedule=schedule, spec=spec,
        fresh_episodes=restart_episodes("env_state", "episode_return"),
    )  # fmt: skip


# SETTINGS: the Config and its presets


@dataclasses.dataclass(frozen=True)
class Config(SearchConfig, RunConfig):
    """MuZero settings; the search's are SearchConfig's, the run's (task, budget, evaluation)
    RunConfig's."""

    env: str = "cartpole_discrete"
    """A task with discrete actions and vector observations: cartpole_discrete, catch, gymnax/<id>, or your own."""
    total_steps: int = setting(61_440, positive=True)
    """Environment steps in all, over all parallel environments, every one chosen by a search."""
    num_envs: int = setting(16, positive=True)
    """Environments acting at once, each step a batched search."""
    initial_steps: int = 0
    """No random steps: the search acts from the first step, with the untrained model."""
    eval_every: int = setting(4096, positive=True)
    """Environment steps between evaluations."""
    eval_episodes: int = setting(8, positive=True)
    """Evaluation episodes in parallel: search without noise, the most visited action (Gumbel: its winner)."""
    # Search: SearchConfig's fields with MuZero on Atari's simulations and root noise; and the temperature
    num_simulations: int = 50
    eval_simulations: int = 50
    dirichlet_alpha: float = 0.25
    temperature: float = setting(1.0, within="[0, 100]")
    """PUCT: acting draws from the visit counts raised to 1 / temperature (0: the most visited)."""
    # Model and targets
    unroll_steps: int = setting(5, positive=True)
    """K, the steps the model is unrolled through from each replayed position (5)."""
    td_steps: int = setting(10, positive=True)
    """n of the n-step value target (Atari: 10)."""
    discount: float = setting(0.997, sweepable=True, within="(0, 1]")
    """gamma (Atari: 0.997)."""
    support_size: int = setting(20, positive=True)
    """S: value and reward are categorical over the integers -S..S of h(x) (Atari: 300)."""
    width: int = setting(64, positive=True)
    """Units of each hidden layer of h, g and f."""
    latent_size: int = setting(64, positive=True)
    """Size of the latent state s."""
    target_update_every: int = setting(100, positive=True)
    """Updates between refreshes of the target network theta^- that values the bootstraps."""
    # Learning
    lr: float = setting(3e-3, sweepable=True)
    """Adam's learning rate."""
    l2_coefficient: float = setting(1e-4, sweepable=True, within="[0, 1]")
    """c of c ||theta||^2 (MuZero: 1e-4)."""
    value_coefficient: float = setting(0.25, sweepable=True, within="[0, 100]")
    """c_v, the value loss's weight (MuZero Reanalyse: 0.25)."""
    batch_size: int = setting(128, positive=True)
    """Replayed positions per update."""
    rollout_length: int = setting(8, positive=True)
    """Steps each environment acts between learning phases."""
    updates_per_iteration: int = setting(16, positive=True)
    """Updates after each `rollout_length` steps of the `num_envs` environments."""
    replay_capacity: int = setting(100_000, positive=True)
    """Environment steps kept (the newest), over all environments."""
    prioritized: bool = False
    """Draw positions in proportion to priority^alpha, priority |v^0 - z| (new ones: the largest so far)."""
    priority_exponent: float = setting(1.0, within="[0, 10]")
    """alpha of prioritised replay (MuZero: 1)."""
    priority_correction: float = setting(1.0, within="[0, 1]")
    """beta of the importance weights (1 / (N P(i)))^beta (MuZero: 1)."""
    reanalyse_fraction: float = setting(0.0, within="[0, 1]")
    """Share of each batch whose policy targets a new search recomputes (MuZero Reanalyse); 0: none."""

    def validate(self) -> None:
        super().validate()
        if self.initial_steps != 0:
            raise ConfigError("initial_steps must be 0: muzero.py's search chooses every step, from the first")
        if self.action_repeat != 1:
            raise ConfigError("action_repeat must be 1 for muzero.py: the model steps once per action")


# Presets, as data: presets/muzero.toml (a task's settings, and variants: Gumbel, tiny).
TASKS, VARIANTS = presets.load(__file__)
PRESETS: dict[str, dict[str, Any]] = {**TASKS, **VARIANTS}


def main(argv=None) -> int:
    return runner.main("muzero", Config, PRESETS, make_train, argv)


if __name__ == "__main__":
    sys.exit(main())
