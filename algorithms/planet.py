"""PlaNet: the Deep Planning Network (Hafner, Lillicrap, Fischer, Villegas, Ha, Lee, Davidson,
"Learning Latent Dynamics for Planning from Pixels", ICML 2019).

A recurrent state-space model (RSSM) learns a latent state from replayed sequences; the agent has no
policy and plans in the latent space with CEM at every step, executing the plan's first action:

    h_t = GRU(h_{t-1}, s_{t-1}, a_{t-1})      prior      p(s_t | h_t)      = N(mu, sigma)
    posterior  q(s_t | h_t, o_t) = N(mu', sigma')         heads  o_t ~ N(dec(h_t, s_t), 1)
                                                                 r_t ~ N(rew(h_t, s_t), 1)
    loss = observation_scale * -log p(o_t | h_t, s_t) + reward_scale * -log p(r_t | h_t, s_t)
           + kl_scale * max(0, KL(q(s_t | h_t, o_t) || p(s_t | h_t)) - free_nats)

on B sequences of L steps. CEM draws `population` sequences in [-1, 1] from N(mean, std), scores each
by the sum of the reward head's means along the prior's path from the current posterior state, and
refits mean and std to the `num_elites` best (no momentum, no warm start). The model is Dreamer's RSSM
(`mbrlax.rssm`), the search CEM (`mbrlax.planners`, as PETS's).

Departures from the authors' code (google-research/planet):
- Dreamer's networks (LayerNorm + SiLU, NormGRU, DreamerV3's conv encoder/decoder), one width everywhere.
- Images in [-0.5, 0.5] without 5-bit quantisation; from state, Dreamer's symlog encoder and decoder.
- From state, the pendulum preset weighs the observation's NLL by `observation_scale` 100 (theirs: 1).
- The DMC presets run from Playground's state vectors, not from pixels.
- Planning is batched over the parallel environments; the authors collect with one agent.

Provenance, every departure, presets and commands: docs/algorithms/planet.md.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mbrlax import buffer as replay
from mbrlax import planners, presets, rssm, runner
from mbrlax.config import setting
from mbrlax.loops import episodes, sequence
from mbrlax.training import ConfigError, Trainer, adam, gradient_update, make_schedule


# THE MODEL: Dreamer's RSSM with Gaussian latents and a Gaussian reward head


class PlanetModel(rssm.WorldModel):
    """rssm.WorldModel (encoder, RSSM, decoder) with `latent="gaussian"` and a reward head that
    predicts the mean of a unit-variance normal; Dreamer's two-hot reward and continue heads are
    never called, so they have no parameters."""

    def setup(self):
        super().setup()
        self.reward_mean = self.head(self.config.layers, 1)

    def __call__(self, obs, action, is_first, key):
        """Touches every layer once; used only to initialise the parameters."""
        latent, _, _ = self.observe_step(self.initial(obs.shape[0]), action, self.encode(obs), is_first, key)
        feats = rssm.features(latent)
        return self.decode(feats), self.reward(feats)

    def reward(self, feats):
        """The predicted reward (the normal's mean) at features (h, s)."""
        return self.reward_mean(feats)[..., 0]


# THE MODEL'S LOSS


def gaussian_kl(posterior, prior):
    """KL(q || p) of diagonal normals given as (mean, std) stacked on the last axis [..., S, 2],
    summed over the S dimensions: sum log(sigma_p / sigma_q) + (sigma_q^2 + (mu_q - mu_p)^2) /
    (2 sigma_p^2) - 1/2."""
    mean_q, std_q = posterior[..., 0], posterior[..., 1]
    mean_p, std_p = prior[..., 0], prior[..., 1]
    return (jnp.log(std_p / std_q) + (std_q**2 + (mean_q - mean_p) ** 2) / (2.0 * std_p**2) - 0.5).sum(-1)


def free_nats_kl(kl, free_nats):
    """max(0, KL - free_nats), as planet/training/utility.py: a KL below the threshold costs
    nothing and passes no gradient."""
    return jnp.maximum(0.0, kl - free_nats)


def planet_model_loss(params, model: PlanetModel, batch, key, free_nats, kl_scale, observation_scale, reward_scale):
    """The negative ELBO per step, averaged over B sequences of L replayed steps ([B, L, ...]
    entries): observation_scale * observation NLL + reward_scale * reward NLL + kl_scale *
    free-nats KL, the NLLs of
    unit-variance normals without their constants. Returns (loss, (posterior states [B, L], metrics))."""
    latents, posterior, prior = rssm.observe_sequences(params, model, batch, key)
    feats = rssm.features(latents)
    decoded = model.apply(params, feats, method=rssm.WorldModel.decode)
    observation_nll = 0.5 * rssm.reconstruction_loss(model, decoded, batch["obs"])
    reward_nll = 0.5 * (model.apply(params, feats, method=PlanetModel.reward) - batch["reward"]) ** 2
    kl = gaussian_kl(posterior, prior)
    kl_loss = free_nats_kl(kl, free_nats)
    loss = observation_scale * observation_nll.mean() + reward_scale * reward_nll.mean() + kl_scale * kl_loss.mean()
    metrics = {
        "model_loss": loss,
        "observation_loss": observation_nll.mean(),
        "reward_loss": reward_nll.mean(),
        "kl": kl.mean(),
        "kl_loss": kl_loss.mean(),
    }
    return loss, (jax.lax.stop_gradient(latents), metrics)


# PLAN in latent space


def latent_returns(imagine_fn, reward_fn, start, sequences, key):
    """The predicted return of each action sequence [n, H, A] from one latent state `start`: the sum
    over k = 1..H of reward_fn(s_k), where s_k = imagine_fn(s_{k-1}, a_k, key_k) steps the prior
    (sampled, as the authors' planner does). Returns [n]."""
    n, horizon = sequences.shape[:2]
    latent = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n,) + x.shape), start)

    def step(latent, inputs):
        action, step_key = inputs
        latent = imagine_fn(latent, action, step_key)
        return latent, reward_fn(latent)

    _, rewards = jax.lax.scan(step, latent, (jnp.swapaxes(sequences, 0, 1), jax.random.split(key, horizon)))
    return rewards.sum(0)


def plan_in_latent(score_fn, key, horizon: int, action_size: int, *, population: int, elites: int, iterations: int):
    """The authors' CEM (planet/control/planning.py): from mean 0 and std 1 at every step, sequences
    N(mean, std) clipped to [-1, 1], scored by `score_fn(sequences [n, H, A], key) -> [n]`, mean and
    std refitted to the elites without smoothing. PETS's `cem` with alpha 0. Returns the plan [H, A]."""

    def sample(sample_key, mean, std):
        return planners.gaussian_sequences(sample_key, mean, std, population, -1.0, 1.0, truncated=False)

    mean, std = jnp.zeros((horizon, action_size)), jnp.ones((horizon, action_size))
    mean, _ = planners.cem(score_fn, sample, mean, std, key, iterations=iterations, elites=elites, alpha=0.0)
    return mean


def explore(action, key, noise_scale):
    """The executed action: `action` plus N(0, noise_scale), clipped to [-1, 1] (mpc_agent.py)."""
    return jnp.clip(action + noise_scale * jax.random.normal(key, action.shape), -1.0, 1.0)


# STATE


class PlanetState(NamedTuple):
    env_state: Any
    is_first: jax.Array
    """[num_envs]: the current observation starts an episode."""
    latent: Any
    """The posterior state of each environment, and the last executed action."""
    prev_action: jax.Array
    buffer: replay.TrajectoryBuffer
    episode: jax.Array
    world_model: Any
    model_opt: Any
    key: jax.Array
    episode_return: jax.Array
    last_episode_return: jax.Array


# ACT: filter the belief with the observation, plan from it, take the first action


def observe_and_plan(params, model: PlanetModel, config: Config, latent, prev_action, obs, is_first, key):
    """The posterior states [n] after `obs` [n, ...] and each one's planned first action [n, A]."""
    observe_key, plan_key = jax.random.split(key)
    embed = model.apply(params, obs, method=rssm.WorldModel.encode)
    latent, _, _ = model.apply(
        params, latent, prev_action, embed, is_first, observe_key, method=rssm.WorldModel.observe_step
    )

    def imagine(latent, action, step_key):
        return model.apply(params, latent, action, step_key, method=rssm.WorldModel.imagine_step)[0]

    def reward(latent):
        return model.apply(params, rssm.features(latent), method=PlanetModel.reward)

    def plan_one(start, one_key):
        score_fn = functools.partial(latent_returns, imagine, reward, start)
        plan = plan_in_latent(
            score_fn,
            one_key,
            config.horizon,
            prev_action.shape[-1],
            population=config.population,
            elites=config.num_elites,
            iterations=config.cem_iterations,
        )
        return plan[0]

    actions = jax.vmap(plan_one)(latent, jax.random.split(plan_key, len(prev_action)))
    return actions, latent


def environment_step(state: PlanetState, key, config: Config, task, model: PlanetModel, random: bool):
    """One step of every environment: uniformly random actions if `random` (the seed episodes), else
    the plan's first action with exploration noise; then store and step (sequence.store_and_step)."""
    act_key, noise_key, reset_key = jax.random.split(key, 3)
    env_state = state.env_state
    if random:
        embed = model.apply(state.world_model, env_state.obs, method=rssm.WorldModel.encode)
        latent, _, _ = model.apply(
            state.world_model,
            state.latent,
            state.prev_action,
            embed,
            state.is_first,
            act_key,
            method=rssm.WorldModel.observe_step,
        )
        action = jax.random.uniform(noise_key, state.prev_action.shape, minval=-1.0, maxval=1.0)
    else:
        planned, latent = observe_and_plan(
            state.world_model,
            model,
            config,
            state.latent,
            state.prev_action,
            env_state.obs,
            state.is_first,
            act_key,
        )
        action = explore(planned, noise_key, config.exploration_noise)
    return sequence.store_and_step(state, action, latent, reset_key, task)


# TRAINING PROGRAM


def check_task(config: Config, spec) -> tuple[int, ...]:
    """The observation's shape; a ConfigError for a task PlaNet cannot learn: discrete actions, or
    images whose height and width the encoder cannot halve 4 times."""
    if spec.discrete:
        raise ConfigError(f"PlaNet plans continuous actions; {spec.name} has a discrete action space")
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


def initial_state(key, config: Config, task, model: PlanetModel, capacity: int, num_envs: int) -> PlanetState:
    """The state a run starts from: fresh environments, model and optimiser, a replay of `capacity`
    steps per environment, filled by the SEED EPISODES' `initial_steps` uniformly random steps."""
    action_size = task.spec.action_size
    env_key, model_key, explore_key, key = jax.random.split(key, 4)
    env_state = task.env.reset(env_key)
    obs = env_state.obs
    params = model.init(model_key, obs[:1], jnp.zeros((1, action_size)), jnp.ones(1), jax.random.PRNGKey(0))
    zero = jnp.float32(0.0)
    entry = {"obs": obs[0], "action": jnp.zeros(action_size), "reward": zero, "is_first": zero, "is_terminal": zero}
    state = PlanetState(
        env_state=env_state,
        is_first=jnp.ones(num_envs),
        latent=model.apply(params, num_envs, method=rssm.WorldModel.initial),
        prev_action=jnp.zeros((num_envs, action_size)),
        buffer=replay.init_trajectories(entry, capacity, num_envs),
        episode=jnp.zeros(num_envs, jnp.int32),
        world_model=params,
        model_opt=adam(config.model_lr, config.model_grad_clip).init(params),
        key=key,
        episode_return=jnp.zeros(num_envs),
        last_episode_return=jnp.float32(0.0),
    )
    state, _ = jax.lax.scan(
        lambda s, k: (environment_step(s, k, config, task, model, True), None),
        state,
        jax.random.split(explore_key, config.initial_steps // num_envs),
    )
    return state


def train_step(state: PlanetState, key, config: Config, model: PlanetModel, optimizer):
    """One gradient step of the model on B replayed sequences of L steps."""
    sample_key, model_key = jax.random.split(key)
    batch = replay.sample_sequences(state.buffer, sample_key, config.batch_size, config.sequence_length)
    params, opt_state, _, (_, metrics) = gradient_update(
        planet_model_loss,
        state.world_model,
        state.model_opt,
        optimizer,
        model,
        batch,
        model_key,
        config.free_nats,
        config.kl_scale,
        config.observation_scale,
        config.reward_scale,
    )
    return state._replace(world_model=params, model_opt=opt_state), metrics


def train_then_collect(state: PlanetState, config: Config, task, model: PlanetModel, optimizer, num_envs: int):
    """One update of the run: TRAIN the model `model_updates` steps, then COLLECT `collect_steps`
    steps with the planner. Returns (state, metrics)."""
    key, train_key, collect_key = jax.random.split(state.key, 3)
    state, metrics = jax.lax.scan(
        lambda s, k: train_step(s, k, config, model, optimizer),
        state,
        jax.random.split(train_key, config.model_updates),
    )
    metrics = jax.tree_util.tree_map(jnp.mean, metrics)

    def collect(state, step_key):
        state = environment_step(state, step_key, config, task, model, False)
        return state, state.env_state.reward.mean()

    state, rewards = jax.lax.scan(
        collect, state._replace(key=key), jax.random.split(collect_key, config.collect_steps // num_envs)
    )
    metrics["train_reward"] = rewards.mean()
    metrics["train_episode_return"] = state.last_episode_return
    return state, metrics


def make_train(config: Config, env=None) -> Trainer:
    """The training program of `config`; `env`: None for the task `config.env` names, or a user's own
    `(environment, EnvSpec)` on Brax's protocol. Resets are the loop's own, as Dreamer's."""
    config.validate()
    task = episodes.setup(config, env, auto_reset=False)
    eval_env, spec = task.eval_env, task.spec
    obs_shape = check_task(config, spec)
    num_envs = config.num_envs
    schedule = make_schedule(config.total_steps, config.initial_steps, config.collect_steps, config.eval_every)
    capacity = replay_capacity(config, schedule.total_steps)
    model = PlanetModel(config, obs_shape, spec.action_size, latent="gaussian")
    optimizer = adam(max_grad_norm=config.model_grad_clip)

    def init(key, config):
        return initial_state(key, config, task, model, capacity, num_envs)

    def update(state: PlanetState, config, update_index):
        """TRAIN the model, then COLLECT with the planner."""
        del update_index
        return train_then_collect(state, config, task, model, optimizer, num_envs)

    # EVALUATE the planner without exploration noise, the belief filtered along each episode.

    def evaluate(state: PlanetState, key, config):
        def choose(latent, prev_action, obs, is_first, step_key):
            return observe_and_plan(state.world_model, model, config, latent, prev_action, obs, is_first, step_key)

        initial = model.apply(state.world_model, config.eval_episodes, method=rssm.WorldModel.initial)
        return sequence.evaluate_filtering(task, eval_env, key, config.eval_episodes, initial, choose)

    return Trainer(
        init=init,
        update=update,
        evaluate=evaluate,
        schedule=schedule,
        spec=spec,
        fresh_episodes=sequence.FRESH_EPISODES,
    )


# SETTINGS: the Config and its presets


@dataclasses.dataclass(frozen=True)
class Config(sequence.SequenceConfig):
    """PlaNet settings; the run's, the replay's and the model's sizes are `sequence.SequenceConfig`'s.
    Steps are agent steps: with `action_repeat` R each step simulates R frames."""

    total_steps: int = 2000
    """Agent steps in all, over all parallel environments, the random seed episodes and resets included."""
    initial_steps: int = setting(400, positive=True)
    """Steps with uniformly random actions before learning starts (the authors: 5 seed episodes)."""
    collect_steps: int = setting(200, positive=True)
    """Environment steps collected between rounds of model training (one jitted update)."""
    model_updates: int = setting(100, positive=True)
    """Gradient steps of the model before each collection (the authors: 100 per episode)."""
    eval_every: int = 400
    """Environment steps between evaluations."""
    eval_episodes: int = 3
    """Evaluation episodes, planned without exploration noise, run in parallel."""
    # Replay and model (SequenceConfig's and rssm.RSSMConfig's fields: Dreamer's RSSM, Gaussian latents)
    batch_size: int = 50
    sequence_length: int = 50
    deter_size: int = 200
    hidden_size: int = 200
    stoch_size: int = 30
    min_std: float = setting(0.1, positive=True)
    """Added to the softplus of the latent's std (the authors' min_stddev)."""
    # Model learning
    model_lr: float = setting(1e-3, sweepable=True)
    """Adam learning rate of the model."""
    free_nats: float = setting(3.0, sweepable=True)
    """KL below this many nats (per step, summed over the latent) is not penalised."""
    kl_scale: float = setting(1.0, sweepable=True)
    """Weight of the KL term (the authors' divergence_scale)."""
    observation_scale: float = setting(1.0, sweepable=True)
    """Weight of the observation's negative log-likelihood (the authors' image_loss_scale)."""
    reward_scale: float = setting(10.0, sweepable=True)
    """Weight of the reward's negative log-likelihood (the authors' reward_loss_scale)."""
    model_grad_clip: float = setting(1000.0, positive=True)
    """Global gradient-norm clip of the model."""
    # Planner (CEM in latent space)
    horizon: int = setting(12, positive=True)
    """Planning horizon H (agent steps)."""
    population: int = setting(1000, positive=True)
    """Candidate action sequences per CEM iteration."""
    num_elites: int = setting(100, positive=True)
    """Best sequences the mean and std are refitted to."""
    cem_iterations: int = setting(10, positive=True)
    """CEM iterations per planned action."""
    exploration_noise: float = setting(0.3, sweepable=True, within="[0, 2]")
    """Std of the Gaussian noise added to the planned action while collecting (not in evaluation)."""

    def validate(self) -> None:
        super().validate()
        for name in ("initial_steps", "collect_steps"):
            if getattr(self, name) % self.num_envs:
                raise ConfigError(f"{name} ({getattr(self, name)}) must divide by num_envs ({self.num_envs})")
        if self.num_elites > self.population:
            raise ConfigError(f"num_elites ({self.num_elites}) must not exceed population ({self.population})")


# Presets, as data: presets/planet.toml (a task's settings, and variants of the method and sizes).
TASKS, VARIANTS = presets.load(__file__)
PRESETS: dict[str, dict[str, Any]] = {**TASKS, **VARIANTS}


def main(argv=None) -> int:
    return runner.main("planet", Config, PRESETS, make_train, argv)


if __name__ == "__main__":
    sys.exit(main())
