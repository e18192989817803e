"""RL fine-tuning's parts, on one tiny trained base: what each promises, checked against an independent
computation.

* the zero-initialised residual makes the composite's actions equal the base's, bit for bit;
* DSRL with w fixed reproduces the base's chunk for that noise (and a chunk is a function of (obs, w));
* GAE against a case computed by hand;
* a batched base call equals one call per env (and ``DiffusionPolicy`` with that noise);
* ``VectorRollout``: reproducible seeds, finished envs restart on the next seed, chunk queues (and, marked
  xfail, the same with a stochastic sampler: a library bug);
* a loaded composite acts, bit for bit, as its algorithm's ``policy_step`` did in fine-tuning; one residual
  PPO iteration and DSRL's chunk transitions (reward, w, done) checked by hand, and their resume state;
* running statistics, the reward scaler, the replay ring, the tanh-Gaussian's log-density, the features' clip;
* a composite refuses a base other than its own.

The base is ``rdt_tiny`` trained for 40 steps on one expert episode of ``pybullet_bimanual_lift``: its
actions are far from good, which does not matter here, only that they are a deterministic function of
(observation history, noise). :func:`tiny_base_checkpoint` builds it once per session (test_finetune.py
shares it).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from robot_policy.algorithms.dsrl import DSRLNA, DSRLSAC, DSRLConfig
from robot_policy.algorithms.replay import ReplayBuffer
from robot_policy.algorithms.residual_ppo import ResidualPPO, ResidualPPOConfig, compute_gae
from robot_policy.algorithms.running_stats import RewardScaler, RunningMeanStd
from robot_policy.algorithms.vector_rollout import VectorRollout
from robot_policy.cli.main import main as cli_main
from robot_policy.envs.base import ManipulationEnv
from robot_policy.envs.registry import load_task_config, make_env
from robot_policy.envs.vector import make_vector_env
from robot_policy.keys import OBS_OBJECT, OBS_STATE
from robot_policy.models import checkpoint as ckpt
from robot_policy.models.frozen_base import FrozenBase, checkpoint_content_hash
from robot_policy.models.observation_history import ObservationHistory, stack_batches
from robot_policy.models.rl_heads import NoiseSpace, ObservationFeatures, ResidualActor, TanhGaussianActor
from robot_policy.policies.composite import (
    COMPOSITE_FORMAT,
    BaseMismatchError,
    NoiseActorComposite,
    ResidualComposite,
    load_composite,
)
from robot_policy.policies.diffusion import DiffusionPolicy
from robot_policy.spaces.unified import UNIFIED_DIM

TASK = "pybullet_bimanual_lift"
#: enough steps (lr 1e-3 without warmup) that the chunk depends on the noise and the observation; the
#: network's zero-initialised output layer keeps it near 0 for the first few
BASE_TRAIN_STEPS = 40

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_base_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The step directory of an ``rdt_tiny`` run (BASE_TRAIN_STEPS steps on one expert episode of TASK),
    built on the first call of the session and reused after (test_finetune.py calls this too)."""
    root = tmp_path_factory.getbasetemp() / "rl_tiny_base"
    run = root / "run"
    if ckpt.latest_checkpoint(run) is None:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        store = root / "lift.zarr"
        threads = torch.get_num_threads()
        try:
            assert cli_main(["collect", f"task={TASK}", "episodes=1", f"out={store}", "seed=0",
                             "record_sim_state=false"]) == 0
            assert cli_main(["train", f"dataset.path={store}", f"out={run}", "policy=rdt_tiny",
                             f"steps={BASE_TRAIN_STEPS}", "batch_size=8", "optim.warmup_steps=1", "optim.lr=1e-3",
                             "val_fraction=0", "torch_threads=1", "progress=false"]) == 0
        finally:
            torch.set_num_threads(threads)  # train set torch_threads=1 in this process
    latest = ckpt.latest_checkpoint(run)
    assert latest is not None
    return latest


@pytest.fixture(scope="session")
def base_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_base_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def base(base_ckpt: Path) -> FrozenBase:
    return FrozenBase.from_checkpoint(base_ckpt)


@pytest.fixture(scope="module")
def env() -> Iterator[ManipulationEnv]:
    e = make_env(TASK, max_steps=40)
    yield e
    e.close()


def write_composite(run_dir: Path, kind: str, algo: Any, base: FrozenBase, env_steps: int = 0) -> Path:
    """A composite checkpoint of ``algo``'s networks on ``base``, in the format ``robot-policy finetune``
    writes (``robot_policy.pipelines.finetune._checkpoint_config``), minus the resume state."""
    config = {
        "format": COMPOSITE_FORMAT,
        "composite": {"kind": kind, **algo.policy_config()},
        "base": {"path": str(base.path), "absolute_path": str(Path(str(base.path)).resolve()),
                 "content_hash": base.content_hash, "sampler": base.sampler.kind,
                 "num_steps": base.sampler.num_steps, "execute_horizon": base.default_execute_horizon,
                 "embodiment": base.embodiment.name, "language": base.language},
        "env_steps": env_steps,
    }
    return ckpt.save_checkpoint(run_dir, env_steps, config, algo.policy_state(), fsync=False)


# --- 1. the zero-initialised residual is the base, bit for bit --------------------------------------------


@pytest.mark.parametrize("built", ["from_actor", "from_checkpoint"])
def test_zero_initialised_residual_composite_equals_the_base_bit_for_bit(built: str, base: FrozenBase,
                                                                        base_ckpt: Path, env: ManipulationEnv,
                                                                        tmp_path: Path) -> None:
    """A ResidualPPO built on the base, before any update, acts exactly as the base: over 20 steps of a real
    episode (two and a half chunks, so two re-plans), every action of the composite (one per call) equals
    the action at that position of the DiffusionPolicy's chunk (executed whole, observing the other steps),
    both reset with the same seed. Built directly from the actor and through a written checkpoint."""
    algo = ResidualPPO(ResidualPPOConfig(), base, num_envs=1, seed=3)
    last = [m for m in algo.actor.net if isinstance(m, torch.nn.Linear)][-1]
    assert torch.count_nonzero(last.weight) == 0 and torch.count_nonzero(last.bias) == 0
    composite: ResidualComposite
    if built == "from_actor":
        composite = ResidualComposite(base, algo.actor, algo.features, algo.cfg.residual_scale,
                                      base.default_execute_horizon, meta={})
    else:
        loaded = load_composite(write_composite(tmp_path / "ft", "residual_ppo", algo, base))
        assert isinstance(loaded, ResidualComposite)
        composite = loaded
    policy = DiffusionPolicy.from_checkpoint(base_ckpt)
    H = policy.execute_horizon
    assert composite.execute_horizon == H == 8  # the checkpoint's: rdt_tiny's whole chunk
    seed = 11
    obs, _ = env.reset(seed=seed)
    composite.reset(seed)
    policy.reset(seed)
    executed: list[np.ndarray] = []
    chunk = np.zeros(0)
    for t in range(20):
        action = composite.predict_chunk(obs)
        assert action.unified.shape == (1, UNIFIED_DIM) and action.execute_horizon == 1
        if t % H == 0:
            chunk = policy.predict_chunk(obs).unified
        else:
            policy.observe(obs)
        assert np.array_equal(action.unified[0], chunk[t % H]), f"step {t}"
        executed.append(action.unified[0])
        obs, _, terminated, truncated, _ = env.step(action.unified[0])
        assert not (terminated or truncated)
    # not a vacuous equality: the actions move, and the re-planned chunks differ
    assert not np.array_equal(executed[0], executed[1]) and not np.array_equal(executed[0], executed[H])


def test_a_nonzero_residual_moves_the_composite_by_scale_times_its_mean(base: FrozenBase,
                                                                      env: ManipulationEnv) -> None:
    """The counterpart of the bit-for-bit test (so a composite that ignored its actor would not pass it):
    with the last layer's bias set to b, every used slot moves by residual_scale * b in normalised units."""
    algo = ResidualPPO(ResidualPPOConfig(residual_scale=0.1), base, num_envs=1, seed=0)
    last = [m for m in algo.actor.net if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.bias.fill_(0.5)
    plain = ResidualComposite(base, ResidualPPO(ResidualPPOConfig(), base, 1, seed=0).actor, algo.features, 0.1,
                              base.default_execute_horizon, meta={})
    moved = ResidualComposite(base, algo.actor, algo.features, 0.1, base.default_execute_horizon, meta={})
    obs, _ = env.reset(seed=2)
    plain.reset(5)
    moved.reset(5)
    a0 = base.to_normalized(plain.predict_chunk(obs).unified)
    a1 = base.to_normalized(moved.predict_chunk(obs).unified)
    used = base.used_action_slots
    torch.testing.assert_close(a1[:, used] - a0[:, used], torch.full((1, len(used)), 0.05), atol=1e-4, rtol=0)
    unused = np.setdiff1d(np.arange(UNIFIED_DIM), used)
    assert torch.count_nonzero(a1[:, unused]) == 0


# --- 2. DSRL with w fixed reproduces the base's chunk for that noise ---------------------------------------


def head_linear(actor: TanhGaussianActor) -> torch.nn.Linear:
    """The actor's output layer (mean and log-std)."""
    layer = actor.head[-1]
    assert isinstance(layer, torch.nn.Linear)
    return layer


def fixed_w_actor(obs_dim: int, w: torch.Tensor, w_max: float) -> TanhGaussianActor:
    """A tanh-Gaussian actor whose deterministic output is w_max * tanh(atanh(w / w_max)) ~ w for any input:
    the head's weights are zero and its bias holds atanh(w / w_max)."""
    actor = TanhGaussianActor(obs_dim, w.numel(), (32, 32, 32), w_max)
    head = head_linear(actor)
    with torch.no_grad():
        head.weight.zero_()
        head.bias[:w.numel()] = torch.atanh(w / w_max)
        head.bias[w.numel():] = -1.0
    return actor


def test_dsrl_composite_with_w_fixed_reproduces_the_base_chunk_for_that_noise(base: FrozenBase, base_ckpt: Path,
                                                                             env: ManipulationEnv) -> None:
    """A NoiseActorComposite whose actor always says w gives, at every re-plan of a real episode, exactly the
    chunk DiffusionPolicy predicts from the same history with the noise NoiseSpace.full_noise(w); the
    DiffusionPolicy is reset with another seed than the composite, so its own noise stream plays no part."""
    H = base.default_execute_horizon
    space = NoiseSpace(base, H, seed=4)
    w_target = 0.9 * space.fixed.new_empty(space.dim).uniform_(-1.5, 1.5, generator=torch.Generator().manual_seed(1))
    features = ObservationFeatures(base.normalizer, base.embodiment.state.mask, base.object_state_dim)
    actor = fixed_w_actor(features.dim, w_target, 1.5)
    obs, _ = env.reset(seed=3)
    w = actor.deterministic(features(torch.as_tensor(obs[OBS_STATE])[None], torch.as_tensor(obs[OBS_OBJECT])[None]))
    torch.testing.assert_close(w[0], w_target, atol=1e-5, rtol=0)
    composite = NoiseActorComposite(base, actor, features, space, H, meta={})
    policy = DiffusionPolicy.from_checkpoint(base_ckpt)
    composite.reset(seed=3)
    policy.reset(seed=99)
    chunks = []
    for t in range(2 * H + 1):
        if t % H == 0:
            got = composite.predict_chunk(obs)
            assert got.execute_horizon == H and got.unified.shape == (base.horizon, UNIFIED_DIM)
            want = policy.predict_chunk(obs, noise=space.full_noise(w)[0]).unified
            assert np.array_equal(got.unified, want), f"step {t}"
            chunks.append(got.unified)
        else:
            composite.observe(obs)
            policy.observe(obs)
        obs, *_ = env.step(chunks[-1][t % H])
    assert not np.array_equal(chunks[0], chunks[1])  # the history moved on, and so did the chunk


def test_a_chunk_is_a_deterministic_function_of_obs_and_w(base: FrozenBase, env: ManipulationEnv) -> None:
    """FrozenBase.sample on one history and full_noise(w): two calls agree bit for bit, regardless of torch's
    global RNG; another w gives another chunk, and so does the same w with another fixed draw."""
    hist = base.new_history()
    obs, _ = env.reset(seed=0)  # (how much the tiny base's chunk moves with its noise depends on the state)
    hist.add(obs)
    batch = hist.as_batch()
    space = NoiseSpace(base, base.default_execute_horizon, seed=0)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1, space.dim, generator=g)
    torch.manual_seed(123)
    first = base.sample(batch, space.full_noise(w))
    torch.manual_seed(456)
    again = base.sample(batch, space.full_noise(w))
    assert torch.equal(first, again)
    other_w = base.sample(batch, space.full_noise(torch.randn(1, space.dim, generator=g)))
    other_fixed = base.sample(batch, NoiseSpace(base, base.default_execute_horizon, seed=1).full_noise(w))
    assert (other_w - first).abs().max() > 1e-3 and (other_fixed - first).abs().max() > 1e-3


def test_noise_space_places_w_in_the_executed_used_part_of_x_T(base: FrozenBase) -> None:
    """full_noise writes w (B, H * n_used) into rows < H at the used slots, in row-major order, and keeps the
    seeded fixed draw everywhere else; executed_actions reads back exactly that part."""
    H = 3
    space = NoiseSpace(base, H, seed=7)
    used = base.used_action_slots
    assert space.dim == H * len(used)
    assert torch.equal(space.fixed, NoiseSpace(base, H, seed=7).fixed)
    w = torch.arange(2 * space.dim, dtype=torch.float32).reshape(2, space.dim)
    x = space.full_noise(w)
    assert x.shape == (2, base.horizon, UNIFIED_DIM)
    assert torch.equal(x[1, 0, used[1]], w[1, 1]) and torch.equal(x[0, 2, used[0]], w[0, 2 * len(used)])
    assert torch.equal(space.executed_actions(x), w)
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[:, :H, used] = False
    assert torch.equal(x[mask], space.fixed.expand(2, -1, -1)[mask])


# --- 3. GAE against a hand-computed case --------------------------------------------------------------------


def test_gae_matches_a_hand_computed_rollout_with_a_done_in_the_middle() -> None:
    """T=3 steps of N=2 envs, gamma=0.9, lambda=0.8 (gamma*lambda=0.72); env 1's episode ends with step 1, so
    its advantage at step 1 neither bootstraps nor carries step 2's."""
    rewards = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0.2], [0.4, 0.6], [0.3, 0.1]], dtype=torch.float64)
    dones = torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    last_value = torch.tensor([0.7, 0.9], dtype=torch.float64)
    adv, ret = compute_gae(rewards, values, dones, last_value, gamma=0.9, lam=0.8)
    # env 0, no done:
    #   t=2: delta = 1 + 0.9*0.7 - 0.3 = 1.33                   A2 = 1.33
    #   t=1: delta = 0 + 0.9*0.3 - 0.4 = -0.13                  A1 = -0.13 + 0.72*1.33   = 0.8276
    #   t=0: delta = 1 + 0.9*0.4 - 0.5 = 0.86                   A0 = 0.86 + 0.72*0.8276  = 1.455872
    # env 1, done with step 1:
    #   t=2: delta = 0 + 0.9*0.9 - 0.1 = 0.71                   A2 = 0.71
    #   t=1: delta = 1 + 0 (done: no bootstrap) - 0.6 = 0.4     A1 = 0.4 (nothing carried over the end)
    #   t=0: delta = 0 + 0.9*0.6 - 0.2 = 0.34                   A0 = 0.34 + 0.72*0.4     = 0.628
    expected = torch.tensor([[1.455872, 0.628], [0.8276, 0.4], [1.33, 0.71]], dtype=torch.float64)
    torch.testing.assert_close(adv, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(ret, expected + values, atol=1e-12, rtol=0)



@pytest.mark.parametrize(("schedule", "at_half"), [("constant", 1.0), ("linear", 0.5), ("cosine", 0.5)])
def test_residual_ppo_learning_rates_follow_the_schedule_over_the_budget(base: FrozenBase, schedule: str,
                                                                       at_half: float) -> None:
    cfg = ResidualPPOConfig(lr_schedule=schedule, actor_lr=3e-4, critic_lr=5e-3)
    algo = ResidualPPO(cfg, base, num_envs=1, seed=0)
    for fraction, expected in ((0.0, 1.0), (0.5, at_half), (1.0, 1.0 if schedule == "constant" else 0.0),
                               (1.7, 1.0 if schedule == "constant" else 0.0)):  # past the budget: clamped
        algo.set_progress(fraction)
        assert algo.actor_opt.param_groups[0]["lr"] == pytest.approx(3e-4 * expected, abs=1e-12)
        assert algo.critic_opt.param_groups[0]["lr"] == pytest.approx(5e-3 * expected, abs=1e-12)
    algo.set_progress(0.25)
    assert algo.lr_multiplier == pytest.approx({"constant": 1.0, "linear": 0.75,
                                                "cosine": 0.5 * (1 + math.cos(math.pi / 4))}[schedule])
    with pytest.raises(ValueError, match="lr_schedule"):
        ResidualPPOConfig(lr_schedule="step")


def test_residual_ppo_exploration_log_std_anneals_only_when_asked(base: FrozenBase) -> None:
    fixed = ResidualPPO(ResidualPPOConfig(log_std=-1.0), base, num_envs=1, seed=0)
    annealed = ResidualPPO(ResidualPPOConfig(log_std=-1.0, log_std_final=-2.0), base, num_envs=1, seed=0)
    for algo in (fixed, annealed):
        algo.set_progress(0.5)
    assert torch.all(fixed.actor.log_std == -1.0)
    torch.testing.assert_close(annealed.actor.log_std, torch.full_like(annealed.actor.log_std, -1.5))
    annealed.set_progress(3.0)  # past the budget: clamped at the final value
    torch.testing.assert_close(annealed.actor.log_std, torch.full_like(annealed.actor.log_std, -2.0))
    # the distribution the PPO ratio uses follows it
    feats = torch.zeros(2, annealed.features.dim)
    a_base = torch.zeros(2, annealed.used.numel())
    torch.testing.assert_close(annealed.actor.distribution(feats, a_base).stddev,
                               torch.full((2, annealed.used.numel()), math.exp(-2.0)))

# --- 4. a batched base call equals per-env calls ------------------------------------------------------------


def test_batched_base_call_equals_per_env_calls_and_diffusion_policy(base: FrozenBase, base_ckpt: Path,
                                                                    env: ManipulationEnv) -> None:
    """Four histories (resets with seeds 0..3, then 0..3 steps, so they differ in content and length) stacked
    into one FrozenBase.sample call give each history's chunk as a call on it alone does (allclose: a batch
    may reorder float sums), and that per-env call is DiffusionPolicy.predict_chunk with the same noise."""
    policy = DiffusionPolicy.from_checkpoint(base_ckpt)
    noise = torch.randn(4, base.horizon, UNIFIED_DIM, generator=torch.Generator().manual_seed(0))
    histories: list[ObservationHistory] = []
    observations: list[list[dict[str, np.ndarray]]] = []
    for i in range(4):
        obs, _ = env.reset(seed=i)
        seen = [obs]
        policy.reset(i)
        chunk = policy.predict_chunk(obs).unified
        for k in range(i):
            obs, *_ = env.step(chunk[k])
            seen.append(obs)
        h = base.new_history()
        for o in seen:
            h.add(o)
        histories.append(h)
        observations.append(seen)
    batched = base.sample(stack_batches([h.as_batch() for h in histories]), noise)
    assert batched.shape == (4, base.horizon, UNIFIED_DIM)
    singles = [base.sample(h.as_batch(), noise[i:i + 1])[0] for i, h in enumerate(histories)]
    for i in range(4):
        torch.testing.assert_close(batched[i], singles[i], atol=1e-5, rtol=0)
        policy.reset(seed=1000 + i)  # its own noise is not used
        for o in observations[i][:-1]:
            policy.observe(o)
        chunk = policy.predict_chunk(observations[i][-1], noise=noise[i]).unified
        assert np.array_equal(chunk, base.to_unified(singles[i]))
        np.testing.assert_allclose(chunk, base.to_unified(batched[i]), atol=1e-4, rtol=0)
    # the histories do differ, so the batch is not four copies of one input
    assert min((singles[i] - singles[j]).abs().max() for i in range(4) for j in range(i)) > 1e-4


# --- 5. VectorRollout on real vector envs ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def vector_env() -> Iterator[Any]:
    envs = make_vector_env(load_task_config(TASK, max_steps=12), 2)
    yield envs
    envs.close()


def _roll(rollout: VectorRollout, max_steps: int = 100) -> tuple[list[tuple[int, bool, int]], list[np.ndarray],
                                                               list[np.ndarray]]:
    """Drive ``rollout`` with the base alone until its seeds run out (at most ``max_steps`` lockstep steps):
    (finished episodes, executed actions, episode seeds before each step)."""
    rollout.start()
    finished: list[tuple[int, bool, int]] = []
    actions: list[np.ndarray] = []
    seeds: list[np.ndarray] = []
    while rollout.active.any():
        assert len(actions) < max_steps, f"the seeds did not run out in {max_steps} steps: {finished}"
        due = rollout.due()
        if due.any():
            rollout.plan(rollout.draw_noise(due), due)
        assert not rollout.due().any()
        a = rollout.base.to_unified(rollout.base_actions())
        actions.append(a)
        seeds.append(rollout.episode_seed.copy())
        step = rollout.step(a)
        for i in np.flatnonzero(step.done):
            finished.append((int(step.finished_seed[i]), bool(step.success[i]), int(step.finished_length[i])))
        assert np.all(step.finished_seed[~step.done] == -1) and np.all(step.finished_length[~step.done] == 0)
    return finished, actions, seeds


def test_vector_rollout_is_reproducible_from_its_seeds(base: FrozenBase, vector_env: Any) -> None:
    """Two envs, three episode seeds, 12-step episodes: the two first seeds start, both time out at step 12,
    env 0 restarts on the third seed and env 1 (no seed left) goes inactive (its steps are not counted). The
    same seeds give the same episodes and the same actions, bit for bit, in a second rollout."""
    runs = []
    for _ in range(2):
        rollout = VectorRollout(vector_env, base, iter([50, 51, 52]), execute_horizon=5)
        finished, actions, seeds = _roll(rollout)
        runs.append((finished, actions, seeds, rollout.env_steps))
    (finished, actions, seeds, env_steps), (finished2, actions2, _, env_steps2) = runs
    assert finished == [(50, False, 12), (51, False, 12), (52, False, 12)]
    assert finished2 == finished and env_steps == env_steps2 == 36
    assert len(actions) == len(actions2) == 24
    assert all(np.array_equal(a, b) for a, b in zip(actions, actions2, strict=True))
    assert [s.tolist() for s in seeds] == [[50, 51]] * 12 + [[52, 51]] * 12  # env 0 restarted on the next seed
    assert not np.array_equal(actions[11][0], actions[12][0])  # a new episode, a new chunk


def test_vector_rollout_episode_matches_a_lone_env_of_that_seed(base: FrozenBase, vector_env: Any) -> None:
    """The episode seeded 52 (third of the list: env 0's second episode) executes the actions of a rollout
    in which it is the first episode of env 1: the env state and the base's noise come from the seed only."""
    _, actions, seeds = _roll(VectorRollout(vector_env, base, iter([50, 51, 52]), execute_horizon=5))
    _, alone, alone_seeds = _roll(VectorRollout(vector_env, base, iter([7, 52]), execute_horizon=5))
    assert [s.tolist() for s in alone_seeds] == [[7, 52]] * 12
    ep = [a[0] for a, s in zip(actions, seeds, strict=True) if s[0] == 52]
    ep_alone = [a[1] for a in alone]
    assert len(ep) == len(ep_alone) == 12
    for t, (a, b) in enumerate(zip(ep, ep_alone, strict=True)):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=0, err_msg=f"step {t}")


def test_vector_rollout_plans_every_execute_horizon_steps(base: FrozenBase, vector_env: Any) -> None:
    """After plan, due() is False for execute_horizon - 1 more steps and True after execute_horizon steps; the
    executed base action walks the chunk in order."""
    H = 3
    rollout = VectorRollout(vector_env, base, iter(range(100, 110)), execute_horizon=H)
    rollout.start()
    assert rollout.due().all()
    chunks = rollout.plan(rollout.draw_noise(rollout.due()))
    assert rollout.base_calls == 1 and chunks.shape == (2, base.horizon, UNIFIED_DIM)
    for k in range(H):
        assert not rollout.due().any(), f"due after {k} steps"
        assert torch.equal(rollout.base_actions(), chunks[:, k])
        rollout.step(base.to_unified(rollout.base_actions()))
    assert rollout.due().all()
    assert rollout.plan(rollout.draw_noise(np.zeros(2, bool)), np.zeros(2, bool)).shape[0] == 0
    with pytest.raises(ValueError, match="execute_horizon"):
        VectorRollout(vector_env, base, iter([0]), execute_horizon=base.horizon + 1)


@pytest.fixture
def one_env_vector() -> Iterator[Any]:
    """One in-process env with 12-step episodes, shaped like fine-tuning's vector env (autoreset off)."""
    from gymnasium.vector import AutoresetMode, SyncVectorEnv

    envs = SyncVectorEnv([lambda: make_env(TASK, max_steps=12)], autoreset_mode=AutoresetMode.DISABLED)
    yield envs
    envs.close()


def test_vector_rollout_refuses_a_stochastic_sampler(base_ckpt: Path, one_env_vector: Any) -> None:
    """Only x_T is drawn from an episode's seed, so a sampler with per-step noise (DDPM, DDIM with eta > 0)
    would make episodes depend on torch's global RNG and the composites run another policy: it is refused,
    and a deterministic sampler (DDIM with eta 0) is accepted."""
    ddpm = FrozenBase.from_checkpoint(base_ckpt, sampler="ddpm", num_steps=10)
    with pytest.raises(ValueError, match="stochastic sampler"):
        VectorRollout(one_env_vector, ddpm, iter([5]))
    VectorRollout(one_env_vector, FrozenBase.from_checkpoint(base_ckpt, sampler="ddim", num_steps=4), iter([5]))


# --- the algorithms on one in-process env: what they collect and store, and the composites they write ---------


def test_a_composite_acts_as_the_algorithm_evaluated_it_in_fine_tuning(base: FrozenBase, env: ManipulationEnv,
                                                                       one_env_vector: Any, tmp_path: Path) -> None:
    """The episode of seed s run by the loaded composite in one env executes, bit for bit, the actions the
    algorithm's ``policy_step`` (what fine-tuning's periodic evaluation runs) takes for seed s in a vector
    rollout of one env: the base's noise is drawn from the seed alike, and the actor reads the same features.
    Checked for a residual whose output is not zero and for a noise actor with its initial (random) weights.
    (One env: with more, the batched base call may round differently, and closed-loop physics amplifies it.)"""
    residual = ResidualPPO(ResidualPPOConfig(hidden=[32, 32]), base, num_envs=1, seed=0)
    last = [m for m in residual.actor.net if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        torch.nn.init.normal_(last.weight, std=0.5)
    dsrl = DSRLSAC(DSRLConfig(hidden=[32, 32, 32]), base, num_envs=1, seed=0)
    for kind, algo in (("residual_ppo", residual), ("dsrl_sac", dsrl)):
        rollout = VectorRollout(one_env_vector, base, iter([21]))
        rollout.start()
        trained = []
        for _ in range(12):
            actions = algo.policy_step(rollout)
            trained.append(actions[0])
            rollout.step(actions)
        composite = load_composite(write_composite(tmp_path / kind, kind, algo, base))
        obs, _ = env.reset(seed=21)
        composite.reset(21)
        chunk = np.zeros(0)
        for t in range(12):
            if kind == "residual_ppo" or t % composite.execute_horizon == 0:
                chunk = composite.predict_chunk(obs).unified
            else:
                composite.observe(obs)
            action = chunk[0] if kind == "residual_ppo" else chunk[t % composite.execute_horizon]
            assert np.array_equal(action, trained[t]), f"{kind} step {t}"
            obs, *_ = env.step(action)


def test_residual_ppo_iteration_collects_a_consistent_batch_and_updates(base: FrozenBase,
                                                                        one_env_vector: Any) -> None:
    """rollout_steps=16 on one env with 12-step episodes: the batch is (16, 1, ...), the episode that timed out
    is reported (seed, False, 12) with done at step 11, the stored log-probabilities are the actor's, the
    advantages are compute_gae's on the stored values; the update moves the zero-initialised residual; and
    train_state/load restores every network, optimiser and counter into a fresh instance."""
    cfg = ResidualPPOConfig(rollout_steps=16, hidden=[32, 32], update_epochs=2, num_minibatches=2)
    algo = ResidualPPO(cfg, base, num_envs=1, seed=0)
    rollout = VectorRollout(one_env_vector, base, iter(range(300, 400)))
    rollout.start()
    batch, episodes = algo.collect(rollout)
    assert episodes == [(300, False, 12)]
    assert batch["done"][:, 0].tolist() == [0.0] * 11 + [1.0] + [0.0] * 4
    assert batch["feats"].shape == (16, 1, algo.features.dim) and batch["residual"].shape == (16, 1, 16)
    # the critic's extra input is the elapsed fraction: 0/12 .. 11/12 over the first episode, then 0/12 again
    elapsed = batch["critic_feats"][:, 0, -1]
    torch.testing.assert_close(elapsed, torch.tensor([t / 12 for t in range(12)] + [t / 12 for t in range(4)]))
    torch.testing.assert_close(batch["critic_feats"][..., :-1], batch["feats"])
    logp = algo.actor.distribution(batch["feats"][:, 0], batch["a_base"][:, 0]).log_prob(batch["residual"][:, 0])
    torch.testing.assert_close(batch["logp"][:, 0], logp.sum(-1))
    feats, a_base, _ = algo._inputs(rollout)
    last_value = algo.critic(algo._critic_features(feats, rollout), a_base).detach()
    adv, ret = compute_gae(batch["reward"], batch["value"], batch["done"], last_value, cfg.gamma, cfg.gae_lambda)
    torch.testing.assert_close(batch["advantages"], adv)
    torch.testing.assert_close(batch["returns"], ret)
    stats = algo.update(batch)
    assert algo.updates == 1 and {"policy_loss", "value_loss", "approx_kl", "epochs"} <= set(stats)
    last = [m for m in algo.actor.net if isinstance(m, torch.nn.Linear)][-1]
    assert torch.count_nonzero(last.weight) > 0
    tensors, plain = algo.train_state()
    fresh = ResidualPPO(cfg, base, num_envs=1, seed=5)
    fresh.load(algo.policy_state(), tensors, json.loads(json.dumps(plain)))
    for a, b in ((algo.actor, fresh.actor), (algo.critic, fresh.critic)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert torch.equal(algo.generator.get_state(), fresh.generator.get_state()) and fresh.updates == 1
    assert fresh.reward_scaler.state_dict() == algo.reward_scaler.state_dict()


@pytest.mark.parametrize("kind", ["dsrl_sac", "dsrl_na"])
def test_dsrl_chunk_transitions_carry_the_mean_of_reward_minus_one(kind: str, base: FrozenBase,
                                                                   one_env_vector: Any) -> None:
    """One env, 12-step episodes, chunks of 8: per episode a full chunk (steps 0-7: reward 8 * (0 - 1) / 8 = -1,
    not done) and one cut by the time-out (steps 8-11: 4 * (0 - 1) / 8 = -0.5, done). The replay's w is the
    w the base decoded (what warm-up drew), its features the observation's at the chunk's start; DSRL-NA's
    action is the executed part of the chunk. Updates start after warm-up; the state round-trips."""
    cfg = DSRLConfig(hidden=[32, 32, 32], warmup_chunks=2, batch_size=2, utd=1, iteration_env_steps=16,
                     na_decode_batch=2)
    algo: Any = (DSRLSAC if kind == "dsrl_sac" else DSRLNA)(cfg, base, num_envs=1, seed=0)
    rollout = VectorRollout(one_env_vector, base, iter(range(500, 600)))
    rollout.start()
    first_feats = algo._feats(rollout)[0].clone()
    planned: list[torch.Tensor] = []
    original_plan = rollout.plan

    def plan(noise: torch.Tensor, mask: np.ndarray | None = None) -> torch.Tensor:
        planned.append(noise.clone())
        return original_plan(noise, mask)

    rollout.plan = plan  # type: ignore[method-assign]
    episodes: list[tuple[int, bool, int]] = []
    for _ in range(24):
        _, ended = algo.collect_step(rollout)
        episodes += ended
    assert episodes == [(500, False, 12), (501, False, 12)]
    assert len(algo.replay) == 4 and algo.chunks_seen == 4
    np.testing.assert_allclose(algo.replay.data["reward"][:4], [-1.0, -0.5, -1.0, -0.5], atol=1e-6)
    assert algo.replay.data["done"][:4].tolist() == [0.0, 1.0, 0.0, 1.0]
    assert len(planned) == 4
    for j, noise in enumerate(planned):
        assert torch.equal(torch.as_tensor(algo.replay.data["w"][j]), algo.noise.executed_actions(noise)[0])
        assert (algo.replay.data["w"][j] == algo.replay.data["w"][j].clip(-cfg.w_max, cfg.w_max)).all()
    assert torch.equal(torch.as_tensor(algo.replay.data["feats"][0]), first_feats)
    if kind == "dsrl_na":
        assert algo.replay.data["action"].shape[1] == algo.noise.dim
        assert (algo.replay.data["action"][:4] != 0).any()
        # every stored (s, w, action) is a triple of the base's map, so Q^W can regress on it without a decode
        rows = {k: torch.as_tensor(v[:4]) for k, v in algo.replay.data.items()}
        decoded = algo._decode(rows["state_hist"], rows.get("object_hist"), rows["w"])
        torch.testing.assert_close(decoded, rows["action"], atol=1e-5, rtol=0)
    metrics, _ = algo.train_iteration(rollout)
    assert algo.updates > 0 and metrics["replay_size"] == len(algo.replay) > 4
    tensors, plain = algo.train_state()
    fresh = (DSRLSAC if kind == "dsrl_sac" else DSRLNA)(cfg, base, num_envs=1, seed=9)
    fresh.load(algo.policy_state(), tensors, json.loads(json.dumps(plain)))
    assert (fresh.updates, fresh.chunks_seen, len(fresh.replay), fresh.replay.pos) == (
        algo.updates, algo.chunks_seen, len(algo.replay), algo.replay.pos)
    assert all(np.array_equal(fresh.replay.data[k], algo.replay.data[k]) for k in algo.replay.data)
    assert torch.equal(fresh.log_alpha, algo.log_alpha)
    for name, module in algo._modules().items():
        other = fresh._modules()[name]
        assert all(torch.equal(x, y) for x, y in zip(module.state_dict().values(), other.state_dict().values(),
                                                     strict=True)), name


# --- 6. running statistics, reward scaling, replay, the tanh-Gaussian, features -------------------------------


def test_running_mean_std_merges_batches_exactly() -> None:
    """Batches of different sizes merge into the mean and variance of their concatenation (with the
    epsilon pseudo-count at mean 0, variance 1 the class starts from)."""
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, n) for n in (1, 7, 50, 3)]
    rms = RunningMeanStd(epsilon=1e-4)
    for b in batches:
        rms.update(b)
    rms.update(np.zeros(0))  # an empty batch changes nothing
    data = np.concatenate(batches)
    n, eps = data.size, 1e-4
    mean = data.sum() / (n + eps)
    var = (eps * (1.0 + mean ** 2) + ((data - mean) ** 2).sum()) / (n + eps)  # the pseudo-sample's share included
    assert rms.count == pytest.approx(n + eps)
    assert rms.mean == pytest.approx(mean, rel=1e-12)
    assert rms.var == pytest.approx(var, rel=1e-10)
    assert rms.mean == pytest.approx(data.mean(), rel=1e-5) and rms.var == pytest.approx(data.var(), rel=1e-4)
    copy = RunningMeanStd()
    copy.load_state_dict(rms.state_dict())
    assert copy.state_dict() == rms.state_dict()


def test_reward_scaler_divides_by_the_std_of_discounted_returns_reset_at_episode_ends() -> None:
    """gamma=0.5, two envs: the discounted returns fed to the statistics are computed by hand, env 0's reset
    after its episode ends; each scaled reward is the raw one over sqrt(var + eps) after that step's update."""
    scaler = RewardScaler(2, gamma=0.5)
    reference = RunningMeanStd()
    steps = [(np.array([1.0, 0.0]), np.array([False, False])),
             (np.array([1.0, 1.0]), np.array([True, False])),
             (np.array([0.0, 2.0]), np.array([False, False]))]
    # returns: step 0 -> [1, 0]; step 1 -> [0.5*1 + 1, 0.5*0 + 1] = [1.5, 1] (env 0 then reset to 0);
    #          step 2 -> [0.5*0 + 0, 0.5*1 + 2] = [0, 2.5]
    expected_returns = [[1.0, 0.0], [1.5, 1.0], [0.0, 2.5]]
    for (reward, done), ret in zip(steps, expected_returns, strict=True):
        scaled = scaler(reward, done)
        reference.update(np.array(ret))
        np.testing.assert_allclose(scaled, reward / np.sqrt(reference.var + 1e-8), rtol=1e-12)
    np.testing.assert_allclose(scaler.returns, [0.0, 2.5])
    restored = RewardScaler(2, gamma=0.5)
    restored.load_state_dict(json.loads(json.dumps(scaler.state_dict())))  # what a checkpoint stores
    r = np.array([1.0, 1.0])
    np.testing.assert_array_equal(restored(r, np.array([False, False])), scaler(r, np.array([False, False])))


def test_replay_buffer_is_a_ring_and_samples_stored_rows() -> None:
    """Capacity 4, rows 0..5 added in two batches: the ring holds 4, 5, 2, 3 and writes next at position 2;
    samples are (batch, *shape) drawn from the stored rows only; its state round-trips."""
    buf = ReplayBuffer(4, {"x": (2,), "r": ()})
    buf.add(x=np.array([[0, 0], [1, 1], [2, 2]], np.float32), r=np.array([0, 1, 2], np.float32))
    assert (len(buf), buf.pos) == (3, 3)
    sample = buf.sample(64, torch.Generator().manual_seed(0))
    assert set(sample["r"].tolist()) <= {0.0, 1.0, 2.0}
    buf.add(x=np.array([[3, 3], [4, 4], [5, 5]], np.float32), r=np.array([3, 4, 5], np.float32))
    assert (len(buf), buf.pos) == (4, 2)
    assert buf.data["r"].tolist() == [4.0, 5.0, 2.0, 3.0]
    sample = buf.sample(256, torch.Generator().manual_seed(1))
    assert sample["x"].shape == (256, 2) and sample["r"].shape == (256,) and sample["x"].dtype == torch.float32
    assert set(sample["r"].tolist()) == {2.0, 3.0, 4.0, 5.0}  # 256 draws of 4 rows: all of them, no other
    assert torch.equal(sample["x"][:, 0], sample["r"]) and torch.equal(sample["x"][:, 1], sample["r"])  # rows stay whole
    restored = ReplayBuffer(4, {"x": (2,), "r": ()})
    restored.load_tensors(buf.state_tensors(), buf.size, buf.pos)
    assert all(np.array_equal(restored.data[k], buf.data[k]) for k in buf.data) and restored.pos == 2
    with pytest.raises(KeyError, match="expected fields"):
        buf.add(x=np.zeros((1, 2), np.float32))
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(0, {"x": ()})


def test_tanh_gaussian_log_prob_matches_torch_distributions() -> None:
    """TanhGaussianActor.sample's log-probability equals torch's density of w = w_max * tanh(u),
    u ~ N(mean, std) (TransformedDistribution with TanhTransform and AffineTransform), for small dims in
    float64, including w near the box's edge; samples lie inside the box and deterministic() is the
    squashed mean."""
    from torch.distributions import (
        AffineTransform,
        Independent,
        Normal,
        TanhTransform,
        TransformedDistribution,
    )

    torch.manual_seed(0)
    actor = TanhGaussianActor(5, 3, (16, 16, 16), w_max=1.5).double()
    with torch.no_grad():
        head_linear(actor).bias[:3] += torch.tensor([0.0, 1.5, -2.5], dtype=torch.float64)  # a mean near tanh's tails
    feats = torch.randn(64, 5, dtype=torch.float64)
    w, logp = actor.sample(feats, torch.Generator().manual_seed(3))
    assert w.shape == (64, 3) and logp.shape == (64,)
    assert (w.abs() < 1.5).all()
    mean, log_std = actor(feats)
    dist = Independent(TransformedDistribution(Normal(mean, log_std.exp()),
                                               [TanhTransform(), AffineTransform(0.0, 1.5)]), 1)
    torch.testing.assert_close(logp, dist.log_prob(w), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(actor.deterministic(feats), 1.5 * torch.tanh(mean))
    # a numerical check that needs no formula: in one dimension, exp(log_prob) of the actor's own samples,
    # integrated along the sorted samples, is their empirical CDF (a missing Jacobian or box term is not)
    one = TanhGaussianActor(2, 1, (8, 8, 8), w_max=1.5).double()
    with torch.no_grad():
        head_linear(one).weight.zero_()
        head_linear(one).bias.copy_(torch.tensor([1.0, 0.0], dtype=torch.float64))  # u ~ N(1, 1): strongly squashed
        w1, lp1 = one.sample(torch.zeros(20_000, 2, dtype=torch.float64), torch.Generator().manual_seed(0))
    order = torch.argsort(w1[:, 0])
    ws, dens = w1[order, 0], lp1[order].exp()
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumulative_trapezoid(dens, ws)])
    empirical = torch.arange(len(ws), dtype=torch.float64) / len(ws)
    assert float((cdf - empirical).abs().max()) < 0.02
    assert float(cdf[-1]) == pytest.approx(1.0, abs=0.02)


def test_tanh_gaussian_log_std_is_clamped() -> None:
    """The head's log-std is clamped to [-5, 2]."""
    actor = TanhGaussianActor(3, 2, (8, 8, 8))
    with torch.no_grad():
        head_linear(actor).weight.zero_()
        head_linear(actor).bias.copy_(torch.tensor([0.0, 0.0, -50.0, 50.0]))
    _, log_std = actor(torch.zeros(1, 3))
    assert log_std.tolist() == [[-5.0, 2.0]]


def test_observation_features_clip_and_restrict_to_used_slots(base: FrozenBase) -> None:
    """Features are the normalised used state slots then the zero-padded object state, each clipped to
    +-obs_clip; a missing object state (the base was trained with one) is a KeyError."""
    mask = np.asarray(base.embodiment.state.mask)
    used = np.flatnonzero(mask > 0)
    feats = ObservationFeatures(base.normalizer, mask, base.object_state_dim, clip=3.0)
    assert base.object_state_dim == 12 and feats.dim == len(used) + 12
    state = torch.zeros(3, UNIFIED_DIM)
    state[0, used] = 1e6
    state[1, used] = -1e6
    obj = torch.zeros(3, 7)  # narrower than the 12 the base was trained on: zero-padded
    obj[0] = 1e6
    obj[1] = -1e6
    out = feats(state, obj)
    assert out.shape == (3, feats.dim)
    assert (out[0, : len(used) + 7] == 3.0).all() and (out[1, : len(used) + 7] == -3.0).all()
    assert out.abs().max() <= 3.0
    # an ordinary observation is the normaliser's output on the used slots (not clipped)
    expected = base.normalizer.normalize(OBS_STATE, state[2:])[:, used]
    torch.testing.assert_close(out[2, : len(used)], expected[0].clamp(-3, 3))
    tight = ObservationFeatures(base.normalizer, mask, base.object_state_dim, clip=0.25)
    assert tight(state, obj).abs().max() <= 0.25 and (tight(state, obj)[0, : len(used)] == 0.25).all()
    with pytest.raises(KeyError, match="object_state"):
        feats(state, None)


def test_residual_actor_starts_at_zero_with_fixed_std() -> None:
    """ResidualActor's mean is exactly 0 for any input before training; its std is exp(log_std), input-free."""
    actor = ResidualActor(6, 4, (16, 16), log_std=-1.0)
    dist = actor.distribution(torch.randn(5, 6) * 100, torch.randn(5, 4))
    assert torch.count_nonzero(dist.mean) == 0
    torch.testing.assert_close(dist.stddev, torch.full((5, 4), math.exp(-1.0)))


# --- 7. a composite refuses another base -----------------------------------------------------------------------


def _other_base(base_ckpt: Path, where: Path, change: str) -> Path:
    """A copy of the base checkpoint with one weight or the config changed (same shapes: it would load)."""
    shutil.copytree(base_ckpt, where)
    if change == "weights":
        state = load_file(str(where / ckpt.MODEL))
        name = next(iter(state))
        state[name] = state[name] + 1e-3
        save_file(state, str(where / ckpt.MODEL))
    else:
        meta = json.loads((where / ckpt.CONFIG).read_text())
        meta["note"] = "another base"
        (where / ckpt.CONFIG).write_text(json.dumps(meta))
    return where


@pytest.mark.parametrize("change", ["weights", "config"])
@pytest.mark.parametrize("kind", ["residual_ppo", "dsrl_sac"])
def test_composite_refuses_a_base_other_than_its_own(kind: str, change: str, base: FrozenBase, base_ckpt: Path,
                                                     tmp_path: Path) -> None:
    """load_composite(path, base=<a copy of the base with a weight or its config changed>) raises
    BaseMismatchError naming both hashes; base=<an unchanged copy elsewhere> (a moved base) loads."""
    algo: Any = (ResidualPPO(ResidualPPOConfig(hidden=[16, 16]), base, 1) if kind == "residual_ppo"
                 else DSRLSAC(DSRLConfig(hidden=[16, 16, 16]), base, 1))
    path = write_composite(tmp_path / "ft", kind, algo, base)
    other = _other_base(base_ckpt, tmp_path / "other", change)
    with pytest.raises(BaseMismatchError, match=checkpoint_content_hash(other)):
        load_composite(path, base=other)
    moved = tmp_path / "moved"
    shutil.copytree(base_ckpt, moved)
    loaded = load_composite(path, base=moved)
    assert loaded.base.path == moved.resolve() and loaded.base.content_hash == base.content_hash
    assert isinstance(loaded, ResidualComposite if kind == "residual_ppo" else NoiseActorComposite)


# --- refusals ------------------------------------------------------------------------------------------------------


def test_dsrl_na_refuses_a_base_with_cameras(base: FrozenBase) -> None:
    """DSRL-NA keeps the base's inputs in its replay: a base that sees cameras is refused."""
    base.cameras.append("front")
    try:
        with pytest.raises(ValueError, match="cameras"):
            DSRLNA(DSRLConfig(), base, 1)
    finally:
        base.cameras.remove("front")


@pytest.mark.parametrize(("field", "value"), [("rollout_steps", 0), ("gamma", 0.0), ("gae_lambda", 1.5),
                                              ("residual_scale", 0.0)])
def test_residual_ppo_config_rejects_bad_values(field: str, value: float) -> None:
    """Values outside an option's range fail when the config is built, not mid-run."""
    kwargs: dict[str, Any] = {field: value}
    with pytest.raises(ValueError):
        ResidualPPOConfig(**kwargs)


@pytest.mark.parametrize(("field", "value"), [("w_max", 0.0), ("utd", 0), ("batch_size", 0), ("gamma", 1.5),
                                              ("tau", 0.0)])
def test_dsrl_config_rejects_bad_values(field: str, value: float) -> None:
    """Values outside an option's range fail when the config is built, not mid-run."""
    kwargs: dict[str, Any] = {field: value}
    with pytest.raises(ValueError):
        DSRLConfig(**kwargs)
