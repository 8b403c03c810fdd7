"""Dreamer in the form of DreamerV3 (Hafner, Pasukonis, Ba, Lillicrap, "Mastering Diverse Domains
through World Models", arXiv 2023 and Nature 2025), after DreamerV1 and V2 (ICLR 2020 and 2021).

A recurrent state-space model (`mbrlax.rssm`) learns from B x T replayed steps; actor and critic
learn only in its imagination, `horizon` steps from every posterior state:

    h_t = GRU(h_{t-1}, z_{t-1}, a_{t-1}),  prior z_t ~ p(z_t | h_t),  posterior z_t ~ q(z_t | h_t, x_t)
    model loss  = reconstruction + reward + continue
                  + dyn_scale max(free_nats, KL(sg(q) || p)) + rep_scale max(free_nats, KL(q || sg(p)))
    R_t         = r_{t+1} + gamma c_{t+1} ((1 - lambda) v_{t+1} + lambda R_{t+1})
    actor       maximises (R_t - v(s_t)) / max(1, S) + eta H[pi],  S: EMA of the P5-P95 range of R
    critic      two-hot cross-entropy against R_t and against the slow critic's values

The actor's gradient goes back through the imagined dynamics for continuous actions and is
REINFORCE for discrete ones, as the 2023 code. DreamerV3's symlog, two-hot heads, unimix, free bits
and LayerNorm are all here. `--preset v1` and `--preset v2` (on top of any task) are DreamerV1 and
V2 by Config options: Gaussian or 32 x 32 categorical latents, plain or 0.8-balanced KL, MSE heads,
ELU layers without LayerNorm, tanh- or truncated-normal actors, unnormalised returns, a slow critic.

Departures from the paper (the most important):
- Every replayed sequence starts from the zero state (DreamerV1/V2), not from a carried-over latent.
- Adam with gradient clipping as the 2023 preprint, not the Nature version's LaProp.
- The actor follows the 2023 code (danijar/dreamerv3 at 8fa35f8); the Nature version uses REINFORCE.
- Steps are agent steps: DMC "500k" frames at action repeat 2 is `--total-steps 250000 --action-repeat 2`.
- Model sizes (presets/dreamer.toml: tiny, small, 12m) are our own, not the paper's table.

Provenance, which version brought in each choice, every departure, presets and commands:
docs/algorithms/dreamer.md.
"""

from __future__ import annotations

import dataclasses
import fractions
import sys
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mbrlax import buffer as replay
from mbrlax import presets, runner, training
from mbrlax.config import setting
from mbrlax.loops.sequence import FRESH_EPISODES, SequenceConfig, evaluate_filtering, store_and_step
from mbrlax.policies import PolicyDistribution
from mbrlax.rssm import (
    BINS,
    Head,
    WorldModel,
    balanced_kl_loss,
    features,
    kl_balance,
    layer_style,
    observe_sequences,
    reconstruction_loss,
    two_hot_loss,
    two_hot_mean,
)
from mbrlax.training import ConfigError, Trainer, adam, gradient_update, make_schedule
from mbrlax.loops import episodes


# STATE


class DreamerState(NamedTuple):
    env_state: Any
    is_first: jax.Array
    """[num_envs]: the current observation starts an episode."""
    latent: Any
    """The acting model state of each environment, and the last executed action."""
    prev_action: jax.Array
    buffer: replay.TrajectoryBuffer
    episode: jax.Array
    world_model: Any
    actor: Any
    critic: Any
    slow_critic: Any
    model_opt: Any
    actor_opt: Any
    critic_opt: Any
    return_scale: jax.Array
    """EMA of the 5th-95th percentile range of imagined returns."""
    key: jax.Array
    episode_return: jax.Array
    last_episode_return: jax.Array


# HEADS: the reward and value regressions, and the modules of one task


class Regression(NamedTuple):
    """A reward or value head: "two_hot" (V3: bins in symlog space, cross-entropy) or "mse" (V1, V2:
    the mean of a unit-variance normal, loss its negative log-likelihood less the constant)."""

    kind: str = "two_hot"

    @property
    def outputs(self) -> int:
        return len(BINS) if self.kind == "two_hot" else 1

    def loss(self, out, target):
        if self.kind == "two_hot":
            return two_hot_loss(out, target)
        return 0.5 * (out[..., 0] - target) ** 2

    def mean(self, out):
        return two_hot_mean(out) if self.kind == "two_hot" else out[..., 0]


class MSERewardModel(WorldModel):
    """WorldModel whose reward head predicts one number (`reward_head="mse"`); its two-hot reward
    head is never called, so it has no parameters."""

    def setup(self):
        super().setup()
        self.reward_mean = self.head(self.config.layers, 1)

    def reward_and_continue(self, feats):
        return self.reward_mean(feats), self.continue_head(feats)[..., 0]


class Networks(NamedTuple):
    """The modules of one task, whose parameters live in `DreamerState`."""

    world_model: WorldModel
    actor: Head
    """Reads features s_t, gives the policy's raw outputs."""
    critic: Head
    """Reads features s_t, gives the value head's outputs (`value`)."""
    policy: PolicyDistribution
    reward: Regression = Regression()
    value: Regression = Regression()


# THE WORLD MODEL'S LOSS on B sequences of T replayed steps


def world_model_loss(
    params,
    world_model: WorldModel,
    batch,
    key,
    dyn_scale,
    rep_scale,
    free_nats,
    *,
    kl_balance_weight=None,
    kl_scale=1.0,
    free_average: bool = False,
    reward: Regression = Regression(),
):
    """Reconstruction, reward and continue losses and the KL terms, averaged over a batch of
    sequences ([B, T, ...] entries of the replay). The KL terms: with `kl_balance_weight` None,
    V3's dyn_scale * dynamics + rep_scale * representation; with a weight alpha, V2's
    kl_scale (alpha dynamics + (1 - alpha) representation), where alpha 0.5 is the plain
    max(free_nats, KL(q || p)) with gradients to both (V1, and V2's code for 0.5). Returns (loss,
    (posterior states [B, T] under a stop-gradient, metrics))."""
    latents, posterior, prior = observe_sequences(params, world_model, batch, key)
    feats = features(latents)
    decoded = world_model.apply(params, feats, method=WorldModel.decode)
    reconstruction = reconstruction_loss(world_model, decoded, batch["obs"])
    reward_out, continue_logit = world_model.apply(params, feats, method="reward_and_continue")
    reward_loss = reward.loss(reward_out, batch["reward"])
    continue_loss = optax.sigmoid_binary_cross_entropy(continue_logit, 1.0 - batch["is_terminal"])
    dynamics, representation, dynamics_kl, representation_kl = kl_balance(
        posterior, prior, free_nats, world_model.latent, free_average
    )
    if kl_balance_weight is None:
        loss = (reconstruction + reward_loss + continue_loss + dyn_scale * dynamics + rep_scale * representation).mean()
    else:
        kl_loss = balanced_kl_loss(
            posterior, prior, free_nats, kl_balance_weight, kl_scale, world_model.latent, free_average
        )
        loss = (reconstruction + reward_loss + continue_loss + kl_loss).mean()
    metrics = {
        "model_loss": loss,
        "reconstruction_loss": reconstruction.mean(),
        "reward_loss": reward_loss.mean(),
        "continue_loss": continue_loss.mean(),
        "dynamics_kl": dynamics_kl.mean(),
        "representation_kl": representation_kl.mean(),
    }
    return loss, (jax.lax.stop_gradient(latents), metrics)


# IMAGINE horizon steps from every posterior state


def imagine(model_params, actor_params, networks: Networks, start, key, horizon: int):
    """Paths the actor takes in the world model from the states `start` ([N] latents): features
    [H + 1, N, F] (the first are the start's) and actions [H, N, A]. The actor reads the state under
    a stop-gradient, so with `actor_gradient="dynamics"` its gradient flows only through the actions
    it takes, into the model's next states (DreamerV1/V2)."""
    world_model, policy = networks.world_model, networks.policy

    def step(latent, step_key):
        action_key, model_key = jax.random.split(step_key)
        raw = networks.actor.apply(actor_params, jax.lax.stop_gradient(features(latent)))
        action = policy.sample(raw, action_key)
        next_latent, _ = world_model.apply(
            model_params, latent, policy.executed(action), model_key, method=WorldModel.imagine_step
        )
        return next_latent, (latent, action)

    last, (latents, actions) = jax.lax.scan(step, start, jax.random.split(key, horizon))
    latents = jax.tree_util.tree_map(lambda seq, x: jnp.concatenate([seq, x[None]]), latents, last)
    return features(latents), actions


# RETURNS


def lambda_returns(rewards, continues, values, discount, lam):
    """R_t = r_{t+1} + gamma c_{t+1} ((1 - lambda) v_{t+1} + lambda R_{t+1}), R_H = v_H. Inputs are
    [H + 1, ...] over imagined steps (rewards[0], continues[0] unused); returns [H, ...]."""

    def backward(next_return, step):
        reward, cont, value = step
        ret = reward + discount * cont * ((1.0 - lam) * value + lam * next_return)
        return ret, ret

    _, returns = jax.lax.scan(backward, values[-1], (rewards[1:], continues[1:], values[1:]), reverse=True)
    return returns


def imagined_returns(model_params, critic_params, networks: Networks, feats, first_continue, discount, return_lambda):
    """lambda-returns [H, N] of imagined paths (features [H + 1, N, F]), the values v(s_t) [H, N] at
    their states of the critic `critic_params` (the slow critic's with `slow_target`), and their
    weights: a path that the model says ended counts no more after its end. `first_continue` [1, N]:
    the start states' continuation, known from the data."""
    reward_out, continue_logit = networks.world_model.apply(
        model_params, feats[1:], method="reward_and_continue"
    )
    # Later continuations are the head's mode.
    continues = jnp.concatenate([first_continue, (continue_logit > 0).astype(jnp.float32)])
    rewards = jnp.concatenate([jnp.zeros_like(first_continue), networks.reward.mean(reward_out)])
    values = networks.value.mean(networks.critic.apply(critic_params, feats))
    returns = lambda_returns(rewards, continues, values, discount, return_lambda)
    weights = jnp.cumprod(discount * continues, 0)[:-1] / discount
    return returns, values[:-1], jax.lax.stop_gradient(weights)


def updated_return_scale(return_scale, returns, decay):
    """S <- decay S + (1 - decay) (P95 - P5) of the returns. The 2023 code (dreamerv3/jaxutils.py,
    Moments, impl perc_ema) keeps one EMA of each percentile, both from 0; their difference is this
    EMA of the range. It is updated before it is used, as there."""
    returns = jax.lax.stop_gradient(returns)
    spread = jnp.percentile(returns, 95) - jnp.percentile(returns, 5)
    return decay * return_scale + (1.0 - decay) * spread


# UPDATE ACTOR on the imagined paths


def actor_loss(
    returns,
    values,
    weights,
    log_prob,
    entropy,
    return_scale,
    entropy_scale,
    gradient: str,
    *,
    mix=0.1,
    normalise: bool = True,
    dynamics_baseline: bool = True,
):
    """The actor's loss over imagined steps [H, N], as ImagActorCritic.loss of the 2023 code
    (danijar/dreamerv3 at 8fa35f8, dreamerv3/agent.py):

        A_t  = (R_t - v(s_t)) / max(1, S)          (its offset, the EMA of P5, cancels)
        loss = -mean_t,n[ sg(w_t) (objective_t + eta H[pi(. | s_t)]) ]
        objective_t = A_t                           "dynamics" (the code's actor_grad_cont: backprop)
                    = log pi(a_t | s_t) sg(A_t)     "reinforce"

    With "dynamics" nothing in A_t is stop-gradiented: R_t and also the baseline v(s_t) are
    differentiated back through the imagined states, so for t >= 1 the gradient of -v(s_t) through
    a_{t-1} counts too (DreamerV2's "dynamics", dreamerv2/agent.py, maximised R_t alone). `values`
    is v(s_t) of the current critic at the same states as `returns`; `weights` w_t =
    prod_{k<=t} (gamma c_k) / gamma from the continue predictions (never differentiated); S is
    already updated with these returns (and only divides: never differentiated either).

    V1 and V2: without `normalise` nothing divides; without `dynamics_baseline` the dynamics
    objective is R_t alone; "both" (V2's actor_grad both) is mix * dynamics + (1 - mix) * reinforce."""
    sg = jax.lax.stop_gradient
    if normalise:
        advantage = (returns - values) / jnp.maximum(1.0, sg(return_scale))
        through_dynamics = advantage if dynamics_baseline else returns / jnp.maximum(1.0, sg(return_scale))
    else:
        advantage = returns - values
        through_dynamics = advantage if dynamics_baseline else returns
    if gradient == "dynamics":
        objective = through_dynamics
    elif gradient == "reinforce":
        objective = log_prob * sg(advantage)
    elif gradient == "both":
        objective = mix * through_dynamics + (1.0 - mix) * log_prob * sg(advantage)
    else:
        raise ValueError(f"gradient must be 'dynamics', 'reinforce' or 'both', got {gradient!r}")
    return -(sg(weights) * (objective + entropy_scale * entropy)).mean()


def imagined_actor_loss(
    actor_params,
    networks: Networks,
    model_params,
    critic_params,
    return_scale,
    start,
    first_continue,
    key,
    *,
    horizon: int,
    discount,
    return_lambda,
    entropy_scale,
    return_scale_decay: float,
    gradient: str,
    mix=0.1,
    normalise: bool = True,
    dynamics_baseline: bool = True,
):
    """`actor_loss` on paths the actor imagines from `start` in the world model (held fixed). With
    REINFORCE the paths are constants; with the dynamics gradient the return and the baseline are
    differentiated back through the imagined states into the actor's actions. Returns (loss,
    ((features, returns, weights) of the paths, the updated return scale, the mean entropy))."""
    model_params = jax.lax.stop_gradient(model_params)
    feats, actions = imagine(model_params, actor_params, networks, start, key, horizon)
    if gradient == "reinforce":
        feats, actions = jax.lax.stop_gradient((feats, actions))
    returns, values, weights = imagined_returns(
        model_params, critic_params, networks, feats, first_continue, discount, return_lambda
    )
    return_scale = updated_return_scale(return_scale, returns, return_scale_decay)
    raw = networks.actor.apply(actor_params, jax.lax.stop_gradient(feats[:-1]))
    entropy = networks.policy.entropy(raw)
    loss = actor_loss(
        returns,
        values,
        weights,
        networks.policy.log_prob(raw, jax.lax.stop_gradient(actions)),
        entropy,
        return_scale,
        entropy_scale,
        gradient,
        mix=mix,
        normalise=normalise,
        dynamics_baseline=dynamics_baseline,
    )
    paths = jax.lax.stop_gradient((feats, returns, weights))
    return loss, (paths, return_scale, entropy.mean())


# UPDATE CRITIC towards the lambda-returns, held near the slow critic


def critic_loss(
    critic_params,
    critic_apply,
    slow_critic_params,
    feats,
    returns,
    weights,
    value: Regression = Regression(),
    regularise: bool = True,
):
    """Weighted loss of the critic's head (`value`: V3's two-hot cross-entropy, or V1/V2's squared
    error) at the imagined states `feats[:-1]` against the lambda-returns and, with `regularise`,
    against the slow critic's values there (V3's regulariser; with `slow_target` the returns already
    come from the slow critic, as V2's). `critic_apply(params, feats)` gives the head's outputs."""
    out = critic_apply(critic_params, feats[:-1])
    if not regularise:
        return (weights * value.loss(out, returns)).mean()
    slow_values = value.mean(critic_apply(slow_critic_params, feats[:-1]))
    return (weights * (value.loss(out, returns) + value.loss(out, slow_values))).mean()


# ONE UPDATE of world model, actor and critic


def optimizers(config: Config, start: bool = False):
    """Adam of the world model, the actor and the critic, with their clips: with `start`, to start
    states with the run's learning rates (traced); without, to step states, which keep their rates."""
    rates = (config.model_lr, config.actor_lr, config.critic_lr) if start else (None, None, None)
    clips = (config.model_grad_clip, config.actor_grad_clip, config.actor_grad_clip)
    return tuple(adam(rate, clip) for rate, clip in zip(rates, clips))


def resolved_actor_gradient(config: Config, discrete: bool) -> str:
    """"dynamics" or "reinforce"; "auto" as the 2023 code's actor_grad_cont: backprop and
    actor_grad_disc: reinforce (configs.yaml). A ConfigError for "dynamics" with discrete actions."""
    if discrete and config.actor_gradient in ("dynamics", "both"):
        raise ConfigError(
            f"actor_gradient {config.actor_gradient} needs continuous actions to differentiate; {config.env} has "
            "discrete ones (use reinforce)"
        )
    if config.actor_gradient == "auto":
        return "reinforce" if discrete else "dynamics"
    return config.actor_gradient


def world_model_options(config: Config, networks: Networks) -> dict:
    """`world_model_loss`'s keywords other than V3's defaults (none for V3's settings)."""
    options = {}
    if config.kl_balance is not None:
        options.update(kl_balance_weight=config.kl_balance, kl_scale=config.kl_scale)
    if config.free_average:
        options.update(free_average=True)
    if networks.reward.kind != "two_hot":
        options.update(reward=networks.reward)
    return options


def periodic_slow_critic(critic, slow_critic, updates, config: Config):
    """V2's update_slow_target (dreamerv2/agent.py): every `slow_critic_every` critic updates (from
    the first, `updates` counting those before this one), slow <- f critic + (1 - f) slow with f
    `slow_critic_rate` (1 at the first: a copy)."""
    due = updates % config.slow_critic_every == 0
    rate = jnp.where(updates == 0, 1.0, config.slow_critic_rate)
    return jax.tree_util.tree_map(
        lambda new, old: jnp.where(due, rate * new + (1.0 - rate) * old, old), critic, slow_critic
    )


def train_step(state: DreamerState, key, config: Config, networks: Networks, actor_gradient: str):
    """Sample B sequences of T steps, then one step of the world model, of the actor on the paths it
    imagines from the batch's posterior states, and of the critic on the same paths; the slow critic
    follows. `actor_gradient`: "dynamics" or "reinforce" ("auto" already resolved)."""
    model_optimizer, actor_optimizer, critic_optimizer = optimizers(config)
    B, T = config.batch_size, config.sequence_length
    sample_key, model_key, imagine_key = jax.random.split(key, 3)
    batch = replay.sample_sequences(state.buffer, sample_key, B, T)
    options = world_model_options(config, networks)
    world_model, model_opt, _, (latents, metrics) = gradient_update(
        (lambda *args: world_model_loss(*args, **options)) if options else world_model_loss,
        state.world_model,
        state.model_opt,
        model_optimizer,
        networks.world_model,
        batch,
        model_key,
        config.dyn_scale,
        config.rep_scale,
        config.free_nats,
    )

    # Imagination starts from the posterior states of the world model before this update and
    # steps with the updated one, as the 2023 code does (dreamerv3/agent.py, Agent.train: its
    # optimiser writes the new parameters before the behaviour imagines).
    start = jax.tree_util.tree_map(lambda x: x.reshape((B * T,) + x.shape[2:]), latents)
    first_continue = 1.0 - batch["is_terminal"].reshape(1, -1)
    behaviour = dict(
        horizon=config.horizon,
        discount=config.discount,
        return_lambda=config.return_lambda,
        entropy_scale=config.entropy_scale,
        return_scale_decay=config.return_scale_decay,
        gradient=actor_gradient,
    )
    if actor_gradient == "both":
        behaviour.update(mix=config.actor_grad_mix)
    if not config.return_normalisation or not config.dynamics_baseline:
        behaviour.update(normalise=config.return_normalisation, dynamics_baseline=config.dynamics_baseline)
    actor, actor_opt, pi_loss, (paths, return_scale, entropy) = gradient_update(
        lambda actor, *args: imagined_actor_loss(actor, *args, **behaviour),
        state.actor,
        state.actor_opt,
        actor_optimizer,
        networks,
        world_model,
        state.slow_critic if config.slow_target else state.critic,
        state.return_scale,
        start,
        first_continue,
        imagine_key,
    )

    feats, returns, weights = paths
    critic_options = {} if networks.value.kind == "two_hot" and not config.slow_target else dict(
        value=networks.value, regularise=not config.slow_target
    )
    critic, critic_opt, v_loss, _ = gradient_update(
        lambda critic, *args: (critic_loss(critic, *args, **critic_options), None),
        state.critic,
        state.critic_opt,
        critic_optimizer,
        networks.critic.apply,
        state.slow_critic,
        feats,
        returns,
        weights,
    )
    if config.slow_critic_every == 1:
        slow_critic = optax.incremental_update(critic, state.slow_critic, config.slow_critic_rate)
    else:
        slow_critic = periodic_slow_critic(critic, state.slow_critic, critic_opt.count - 1, config)
    state = state._replace(
        world_model=world_model,
        actor=actor,
        critic=critic,
        slow_critic=slow_critic,
        model_opt=model_opt,
        actor_opt=actor_opt,
        critic_opt=critic_opt,
        return_scale=return_scale,
    )
    metrics.update(
        actor_loss=pi_loss,
        critic_loss=v_loss,
        actor_entropy=entropy,
        imagined_return=returns.mean(),
        return_scale=return_scale,
    )
    return state, metrics


# ACT: update each environment's model state with its observation, act, store the step, step or reset


def observe_and_act(
    model_params, actor_params, networks: Networks, latent, prev_action, obs, is_first, key, greedy: bool
):
    """The executed action (the actor's mode if `greedy`, else a sample) and the posterior state."""
    model_key, action_key = jax.random.split(key)
    world_model, policy = networks.world_model, networks.policy
    embed = world_model.apply(model_params, obs, method=WorldModel.encode)
    latent, _, _ = world_model.apply(
        model_params, latent, prev_action, embed, is_first, model_key, method=WorldModel.observe_step
    )
    raw = networks.actor.apply(actor_params, features(latent))
    action = policy.mode(raw) if greedy else policy.sample(raw, action_key)
    return policy.executed(action), latent


def environment_step(state: DreamerState, key, task: episodes.Setup, networks: Networks, explore: bool):
    """One step of every environment: act (uniformly at random if `explore`), store the step with
    its observation, reward, first and terminal flags, then step each environment, or reset the ones
    whose episode ended (a reset takes a step of its own, so the terminal observation is stored)."""
    act_key, random_key, reset_key = jax.random.split(key, 3)
    env_state = state.env_state
    action, latent = observe_and_act(
        state.world_model,
        state.actor,
        networks,
        state.latent,
        state.prev_action,
        env_state.obs,
        state.is_first,
        act_key,
        False,
    )
    if networks.policy.noise > 0 and not explore and not task.spec.discrete:
        # V1's additive_gaussian exploration (expl_amount): noise on the policy's sample, clipped.
        noise = networks.policy.noise * jax.random.normal(jax.random.fold_in(act_key, 1), action.shape)
        action = jnp.clip(action + noise, -1.0, 1.0)
    if explore:
        (num_envs, action_size), spec = action.shape, task.spec
        if spec.discrete:
            action = jax.nn.one_hot(jax.random.randint(random_key, (num_envs,), 0, action_size), action_size)
        else:
            action = jax.random.uniform(random_key, (num_envs, action_size), minval=-1.0, maxval=1.0)
    return store_and_step(state, action, latent, reset_key, task)


# TRAINING PROGRAM


def check_task(config: Config, spec) -> tuple[int, ...]:
    """The observation's shape; a ConfigError for images whose height and width the encoder cannot
    halve 4 times."""
    obs_shape = tuple(spec.image_shape) if spec.image_shape else (spec.observation_size,)
    if len(obs_shape) == 3 and (obs_shape[0] % 16 or obs_shape[1] % 16):
        raise ConfigError(
            f"the image encoder halves the image 4 times, so its height and width must divide by 16; "
            f"{config.env} gives images of shape {obs_shape}"
        )
    return obs_shape


def replay_capacity(config: Config, total_steps: int) -> int:
    """Steps of each environment the replay keeps: `buffer_capacity`, at most the run's; a
    ConfigError if one replayed sequence is longer."""
    steps_per_env = total_steps // config.num_envs
    capacity = min(config.buffer_capacity or steps_per_env, steps_per_env)
    if config.sequence_length > capacity:
        raise ConfigError(
            f"sequence_length ({config.sequence_length}) is longer than the run's {capacity} steps per environment"
        )
    return capacity


def initial_state(key, config: Config, task: episodes.Setup, networks: Networks, capacity: int, num_envs: int):
    """The state a run starts from: fresh environments, networks and optimisers, a replay of
    `capacity` steps per environment, PREFILLED with `initial_steps` uniformly random steps."""
    action_size = task.spec.action_size
    env_key, model_key, actor_key, critic_key, explore_key, key = jax.random.split(key, 6)
    env_state = task.env.reset(env_key)
    obs = env_state.obs
    model_params = networks.world_model.init(
        model_key, obs[:1], jnp.zeros((1, action_size)), jnp.ones(1), jax.random.PRNGKey(0)
    )
    feat_size = config.deter_size + config.stoch_size * (1 if config.latent == "gaussian" else config.classes)
    actor = networks.actor.init(actor_key, jnp.zeros((1, feat_size)))
    critic = networks.critic.init(critic_key, jnp.zeros((1, feat_size)))
    model_optimizer, actor_optimizer, critic_optimizer = optimizers(config, start=True)
    zero = jnp.float32(0.0)
    entry = {"obs": obs[0], "action": jnp.zeros(action_size), "reward": zero, "is_first": zero}
    state = DreamerState(
        env_state=env_state,
        is_first=jnp.ones(num_envs),
        latent=networks.world_model.apply(model_params, num_envs, method=WorldModel.initial),
        prev_action=jnp.zeros((num_envs, action_size)),
        buffer=replay.init_trajectories(dict(entry, is_terminal=zero), capacity, num_envs),
        episode=jnp.zeros(num_envs, jnp.int32),
        world_model=model_params,
        actor=actor,
        critic=critic,
        slow_critic=critic,
        model_opt=model_optimizer.init(model_params),
        actor_opt=actor_optimizer.init(actor),
        critic_opt=critic_optimizer.init(critic),
        return_scale=jnp.float32(0.0),
        key=key,
        episode_return=jnp.zeros(num_envs),
        last_episode_return=jnp.float32(0.0),
    )
    state, _ = jax.lax.scan(
        lambda s, k: (environment_step(s, k, task, networks, True), None),
        state,
        jax.random.split(explore_key, config.initial_steps // num_envs),
    )
    return state


def update_in_cycles(
    state: DreamerState,
    config: Config,
    task: episodes.Setup,
    networks: Networks,
    actor_gradient: str,
    num_envs: int,
    cycle: tuple[int, int],
):
    """One update of the run: steps_per_update environment steps in train-ratio cycles, each
    `cycle` = (vector steps, updates): ACT that many vector steps, then TRAIN world model, actor and
    critic that many times. Returns (state, metrics)."""
    cycle_steps, cycle_updates = cycle

    def one_cycle(state, cycle_key):
        act_key, learn_key = jax.random.split(cycle_key)
        # ACT
        state, _ = jax.lax.scan(
            lambda s, k: (environment_step(s, k, task, networks, False), None),
            state,
            jax.random.split(act_key, cycle_steps),
        )
        # TRAIN
        state, metrics = jax.lax.scan(
            lambda s, k: train_step(s, k, config, networks, actor_gradient),
            state,
            jax.random.split(learn_key, cycle_updates),
        )
        return state, jax.tree_util.tree_map(jnp.mean, metrics)

    key, cycles_key = jax.random.split(state.key)
    num_cycles = config.steps_per_update // num_envs // cycle_steps
    state, metrics = jax.lax.scan(one_cycle, state._replace(key=key), jax.random.split(cycles_key, num_cycles))
    metrics = jax.tree_util.tree_map(jnp.mean, metrics)
    metrics["train_episode_return"] = state.last_episode_return
    return state, metrics


def make_train(config: Config, env=None) -> Trainer:
    """The training program of `config`; `env`: None for the task `config.env` names, or a user's own
    `(environment, EnvSpec)` on Brax's protocol. Dreamer keeps its own resets (see the docstring)."""
    config.validate()
    task = episodes.setup(config, env, auto_reset=False)
    eval_env, spec = task.eval_env, task.spec
    obs_shape = check_task(config, spec)
    num_envs, action_size = config.num_envs, spec.action_size
    schedule = make_schedule(config.total_steps, config.initial_steps, config.steps_per_update, config.eval_every)
    capacity = replay_capacity(config, schedule.total_steps)
    actor_gradient = resolved_actor_gradient(config, spec.discrete)
    cycle = config.cycle
    value = Regression(config.value_head)
    networks = Networks(
        world_model=(MSERewardModel if config.reward_head == "mse" else WorldModel)(
            config, obs_shape, action_size, latent=config.latent
        ),
        actor=Head(config.hidden_size, config.layers, action_size * (1 if spec.discrete else 2), **layer_style(config)),
        critic=Head(
            config.hidden_size, config.layers, value.outputs, value.kind == "two_hot", **layer_style(config)
        ),
        policy=PolicyDistribution(
            spec.discrete, config.unimix, config.actor_dist, config.actor_init_std, config.action_noise
        ),
        reward=Regression(config.reward_head),
        value=value,
    )

    def init(key, config):
        return initial_state(key, config, task, networks, capacity, num_envs)

    def update(state: DreamerState, config, update_index):
        """steps_per_update environment steps in train-ratio cycles of acting, then training."""
        del update_index
        return update_in_cycles(state, config, task, networks, actor_gradient, num_envs, cycle)

    # EVALUATE the actor's mode, the model state filtered along each episode.

    def evaluate(state: DreamerState, key, config):
        def choose(latent, prev_action, obs, is_first, step_key):
            return observe_and_act(
                state.world_model, state.actor, networks, latent, prev_action, obs, is_first, step_key, True
            )

        initial = networks.world_model.apply(state.world_model, config.eval_episodes, method=WorldModel.initial)
        return evaluate_filtering(task, eval_env, key, config.eval_episodes, initial, choose)

    return Trainer(
        init=init,
        update=update,
        evaluate=evaluate,
        schedule=schedule,
        spec=spec,
        fresh_episodes=FRESH_EPISODES,
    )


# SETTINGS: the Config and its presets


@dataclasses.dataclass(frozen=True)
class Config(SequenceConfig):
    """Dreamer settings; the run's, the replay's and the world model's sizes are `SequenceConfig`'s."""

    total_steps: int = 20_000
    """Agent steps in all, over all parallel environments, the random prefill and resets included."""
    initial_steps: int = setting(1000, positive=True)
    """Steps with uniformly random actions before learning starts (the replay's prefill)."""
    steps_per_update: int = setting(500, positive=True)
    """Environment steps per jitted update of the training program (progress and logging granularity)."""
    eval_every: int = 2000
    """Environment steps between evaluations."""
    eval_episodes: int = 10
    """Evaluation episodes of the deterministic policy, run in parallel."""
    # Replay and latents (the sizes tiny, small and 12m: presets/dreamer.toml)
    train_ratio: int = setting(512, positive=True)
    """Replayed steps (B x T per update) per environment step."""
    classes: int = setting(32, positive=True)
    """Classes of each categorical latent."""
    # Without unimix a class's probability can underflow to 0 and its log-probability to -inf.
    unimix: float = setting(0.01, within="(0, 1]")
    """Share of the uniform distribution mixed into every categorical."""
    latent: str = setting("categorical", choices=("categorical", "gaussian"))
    """z: `stoch_size` categoricals of `classes` (V2, V3), or a diagonal normal of `stoch_size` (V1)."""
    min_std: float = setting(0.1, positive=True)
    """Gaussian latent: added to the softplus of its std (V1's models.py, RSSM: 0.1)."""
    # World-model learning
    model_lr: float = setting(1e-4, sweepable=True)
    """Adam learning rate of the world model."""
    dyn_scale: float = setting(0.5, sweepable=True)
    """Weight of the dynamics KL, KL(sg(posterior) || prior)."""
    rep_scale: float = setting(0.1, sweepable=True)
    """Weight of the representation KL, KL(posterior || sg(prior))."""
    free_nats: float = setting(1.0, sweepable=True)
    """Free bits: each KL (summed over the latents) is clipped below at this many nats."""
    kl_balance: float | None = setting(None, within="[0, 1]")
    """None: V3's dyn_scale and rep_scale. alpha: V2's kl_scale (alpha dynamics + (1 - alpha)
    representation); 0.5 is the plain KL(q || p) (V1)."""
    kl_scale: float = setting(1.0, sweepable=True)
    """Weight of the KL terms when `kl_balance` is set (V1's kl_scale, V2's loss_scales.kl)."""
    free_average: bool = False
    """Clip the batch's mean KL at free_nats (V1; V2's free_avg), not each step's (V3)."""
    reward_head: str = setting("two_hot", choices=("two_hot", "mse"))
    """The reward head: two-hot bins in symlog space (V3), or a unit-variance normal's mean (V1, V2)."""
    model_grad_clip: float = 1000.0
    """Global gradient-norm clip of the world model."""
    # Behaviour learning
    horizon: int = setting(15, positive=True)
    """Imagined steps from every posterior state."""
    discount: float = setting(0.997, sweepable=True, within="(0, 1]")
    """gamma of the imagined returns."""
    return_lambda: float = setting(0.95, sweepable=True, within="[0, 1]")
    """lambda of the lambda-returns."""
    actor_gradient: Literal["auto", "dynamics", "reinforce", "both"] = "auto"
    """How the actor learns (`actor_loss`): "dynamics", "reinforce", "both" (V2's mix), or "auto"
    (by the action space)."""
    actor_grad_mix: float = setting(0.1, sweepable=True, within="[0, 1]")
    """With actor_gradient "both": the dynamics objective's share (V2's actor_grad_mix)."""
    actor_dist: str = setting("bounded_normal", choices=("bounded_normal", "tanh_normal", "trunc_normal"))
    """Continuous actions: V3's bounded normal, V1's tanh-squashed normal, or V2's normal truncated to [-1, 1]."""
    actor_init_std: float = setting(5.0, positive=True)
    """tanh_normal: the pre-tanh std at a raw output of 0 (V1's action_init_std)."""
    action_noise: float = setting(0.0, within="[0, 10]")
    """Std of Gaussian noise on training actions, clipped to the box (V1's expl_amount)."""
    actor_lr: float = setting(3e-5, sweepable=True)
    """Adam learning rate of the actor."""
    critic_lr: float = setting(3e-5, sweepable=True)
    """Adam learning rate of the critic."""
    entropy_scale: float = setting(3e-4, sweepable=True)
    """eta: weight of the actor's entropy bonus (advantages are normalised, so one value fits all tasks)."""
    value_head: str = setting("two_hot", choices=("two_hot", "mse"))
    """The critic's head: two-hot bins in symlog space (V3), or a unit-variance normal's mean (V1, V2)."""
    slow_target: bool = False
    """The lambda-returns bootstrap from the slow critic, the critic's only target (V2's slow_target),
    rather than from the critic, regularised towards the slow critic (V3)."""
    slow_critic_rate: float = setting(0.02, sweepable=True, within="[0, 1]")
    """EMA rate of the slow critic per update (V2's slow_target_fraction)."""
    slow_critic_every: int = setting(1, positive=True)
    """Critic updates between updates of the slow critic (V2's slow_target_update)."""
    return_normalisation: bool = True
    """Divide advantages by max(1, S) (V3); V1 and V2 do not."""
    dynamics_baseline: bool = True
    """The dynamics objective is R_t - v(s_t) (the 2023 V3 code), not R_t alone (V1, V2)."""
    return_scale_decay: float = 0.99
    """EMA decay of the 5th-95th percentile range of the returns."""
    actor_grad_clip: float = 100.0
    """Global gradient-norm clip of the actor and of the critic."""

    def validate(self) -> None:
        super().validate()
        for name in ("initial_steps", "steps_per_update"):
            if getattr(self, name) % self.num_envs:
                raise ConfigError(f"{name} ({getattr(self, name)}) must divide by num_envs ({self.num_envs})")
        steps, updates = self.cycle
        if (self.steps_per_update // self.num_envs) % steps:
            raise ConfigError(
                f"train_ratio {self.train_ratio} with {self.num_envs} environments and {self.batch_size} x "
                f"{self.sequence_length} replayed steps per update is {updates} update(s) every {steps} "
                f"environment step(s) of each environment; steps_per_update / num_envs "
                f"({self.steps_per_update // self.num_envs}) must divide by {steps}"
            )

    @property
    def cycle(self) -> tuple[int, int]:
        """(vector steps, updates) of one train-ratio cycle, in lowest terms."""
        ratio = fractions.Fraction(self.train_ratio * self.num_envs, self.batch_size * self.sequence_length)
        return ratio.denominator, ratio.numerator


# Presets, as data: presets/dreamer.toml (a task's settings, and variants: the smoke run and the
# model sizes small and 12m, whose settings are its [parts] size-tiny, size-small and size-12m).
TASKS, VARIANTS = presets.load(__file__)
PRESETS: dict[str, dict[str, Any]] = {**TASKS, **VARIANTS}


def main(argv=None) -> int:
    return runner.main("dreamer", Config, PRESETS, make_train, argv)


if __name__ == "__main__":
    sys.exit(main())
