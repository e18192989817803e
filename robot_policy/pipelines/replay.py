"""Replay recorded episodes in simulation from their simulator states (``data/sim_state``).

Two checks of a recorded (or imported) episode against the simulator its store's task names:

* by states: restore every step's recorded state with ``env.reset_to`` and compare the observation there
  with the recorded one (robomimic's replay: the states alone reproduce the observations);
* by actions: restore the first state only and send the recorded actions, open loop; the observed states
  follow the recorded ones where the simulator is deterministic, and the task succeeds where it did.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robot_policy.data import format as fmt
from robot_policy.data.rig_file import (
    DEFAULT_MAX_AGE_DAYS,
    CalibrationMismatchWarning,
    FrameTransform,
    MissingCalibrationWarning,
    base_to_base_file,
    calibration_difference,
    load_rig_base_to_base,
    transform_mismatch,
    warn_calibration,
)
from robot_policy.data.store import EpisodeStore, StoreError
from robot_policy.envs.registry import load_task_config, make_env, task_config_from_dict
from robot_policy.spaces.embodiment import EmbodimentSpec
from robot_policy.spaces.unified import describe_index


@dataclass(frozen=True)
class ReplayReport:
    """What replaying one episode found. Errors are max |observed - recorded| over the episode's state mask."""

    episode: int
    steps: int
    #: restoring each step's state: the worst state error
    states_max_error: float
    #: the recorded actions sent from the first state: the worst state error, and the outcome
    actions_max_error: float
    actions_success: bool
    recorded_success: bool | None


def replay_by_states(store_path: str | Path, episode: int) -> ReplayReport:
    """Replay ``episode`` of the store at ``store_path`` in the simulator of the store's task (see the module
    docstring). Raises StoreError when the store has no simulator states or names no task."""
    store = EpisodeStore.open(store_path)
    task_raw = store.attrs.get("task")
    if not task_raw:
        raise StoreError(f"{store_path}: the store names no task (attrs.task), so there is no simulator to replay in")
    if fmt.SIM_STATE not in store.data_keys:
        raise StoreError(f"{store_path}: no data/{fmt.SIM_STATE}: the episodes carry no simulator states")
    start, end = store.episode_bounds(episode)
    sim = np.asarray(store.array(fmt.SIM_STATE)[start:end], np.float64)
    state = np.asarray(store.array(fmt.STATE)[start:end])
    action = np.asarray(store.array(fmt.ACTION)[start:end])
    meta = store.get_episode(episode, keys=[])
    mask = np.asarray(meta[fmt.STATE_MASK]) > 0
    recorded = None if int(meta[fmt.SUCCESS]) < 0 else bool(meta[fmt.SUCCESS])
    env = make_env(task_config_from_dict(dict(task_raw), where=f"{store_path} attrs.task"))
    try:
        env.reset(seed=int(meta[fmt.SEED]) if int(meta[fmt.SEED]) >= 0 else None)
        by_states = max(float(np.abs(env.reset_to(s)[fmt.STATE] - state[t])[mask].max()) for t, s in enumerate(sim))
        obs = env.reset_to(sim[0])
        by_actions, success = 0.0, False
        for t in range(end - start):
            by_actions = max(by_actions, float(np.abs(obs[fmt.STATE] - state[t])[mask].max()))
            obs, _, terminated, _, info = env.step(action[t])
            success = success or bool(info["success"])
            if terminated:
                break
    finally:
        env.close()
    return ReplayReport(episode=episode, steps=end - start, states_max_error=by_states,
                        actions_max_error=by_actions, actions_success=success, recorded_success=recorded)


# ---- robot-policy replay: one episode, to a target, with tracking error, a plot and a video -------------------

#: replay targets: the store's simulator, or the simulated robot over ROS 2 (``robot_policy.pipelines.replay_ros``)
TARGETS: tuple[str, ...] = ("sim", "ros2")
MODES: tuple[str, ...] = ("actions", "states")


@dataclass
class ReplayConfig:
    """``robot-policy replay`` options."""

    #: episode store to replay from (zarr directory)
    store: str = ""
    #: episode index in the store
    episode: int = 0
    #: where to replay: sim (the store's simulator) or ros2 (the simulated robot over ROS 2 topics)
    target: str = "sim"
    #: actions: the recorded actions open loop from the recorded first state; states: every step's recorded
    #: simulator state through reset_to (sim only)
    mode: str = "actions"
    #: task config (configs/task/NAME.yaml) of the target; empty = the task recorded in the store
    task: str = ""
    #: output directory for replay.json, tracking.png and replay.mp4; empty = replay/<store name>_ep<N>
    out: str = ""
    #: render a video of the replay (camera below)
    video: bool = True
    #: camera to render the video from; empty = the task's first camera, else the env's first
    camera: str = ""
    #: video frame height and width (pixels)
    video_size: int = 160
    #: target=ros2: ROS_DOMAIN_ID (0-101); -1: derived from the process id, so parallel runs do not meet
    domain_id: int = -1
    #: the target rig's calibration (calib/RIG or its base_to_base.yaml): its base-to-base transform is checked
    #: against the one the store was recorded with; empty = no check
    calibration: str = ""
    #: a calibration file older than this (days) warns; null = no age limit
    calibration_max_age_days: float | None = DEFAULT_MAX_AGE_DAYS
    #: a missing base-to-base file is an error instead of a warning
    calibration_required: bool = False
    #: the recorded and the rig's base-to-base transforms may differ by this much (mm, deg) without a warning
    calibration_tol_mm: float = 5.0
    calibration_tol_deg: float = 0.5

    def __post_init__(self) -> None:
        if not self.store:
            raise ValueError("replay: store= is required (an episode store path)")
        if self.target not in TARGETS:
            raise ValueError(f"replay: target={self.target!r}; targets: {', '.join(TARGETS)}")
        if self.mode not in MODES:
            raise ValueError(f"replay: mode={self.mode!r}; modes: {', '.join(MODES)}")
        if self.target == "ros2" and self.mode == "states":
            raise ValueError("replay: mode=states needs a simulator's reset_to; target=ros2 replays mode=actions")
        if self.episode < 0:
            raise ValueError(f"replay: episode={self.episode} must be >= 0")
        if not -1 <= self.domain_id <= 101:
            raise ValueError(f"replay: domain_id={self.domain_id} must be -1 (automatic) or 0..101")
        if self.video_size < 16:
            raise ValueError(f"replay: video_size={self.video_size} must be >= 16 pixels")
        for key in ("calibration_tol_mm", "calibration_tol_deg"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"replay: {key}={getattr(self, key)} must be >= 0")


@dataclass(frozen=True)
class RecordedEpisode:
    """One episode's arrays as replay needs them. Shapes: T steps, 128 unified."""

    index: int
    seed: int | None
    recorded_success: bool | None
    action: np.ndarray  # (T, 128) commanded targets
    state: np.ndarray  # (T, 128) observed before each action
    state_mask: np.ndarray  # (128,) bool
    action_mask: np.ndarray  # (128,) bool
    sim_state: np.ndarray | None  # (T, S) get_state() before each action, when recorded
    control_hz: float


def load_episode(store: EpisodeStore, episode: int) -> RecordedEpisode:
    """Read ``episode`` from ``store``; IndexError names the store's episode count."""
    if not 0 <= episode < store.n_episodes:
        raise IndexError(f"{store.path}: episode {episode} out of range; the store holds {store.n_episodes}")
    start, end = store.episode_bounds(episode)
    meta = store.get_episode(episode, keys=[])
    sim = (np.asarray(store.array(fmt.SIM_STATE)[start:end], np.float64)
           if fmt.SIM_STATE in store.data_keys else None)
    return RecordedEpisode(
        index=episode, seed=int(meta[fmt.SEED]) if int(meta[fmt.SEED]) >= 0 else None,
        recorded_success=None if int(meta[fmt.SUCCESS]) < 0 else bool(meta[fmt.SUCCESS]),
        action=np.asarray(store.array(fmt.ACTION)[start:end], np.float64),
        state=np.asarray(store.array(fmt.STATE)[start:end], np.float64),
        state_mask=np.asarray(meta[fmt.STATE_MASK]) > 0, action_mask=np.asarray(meta[fmt.ACTION_MASK]) > 0,
        sim_state=sim, control_hz=float(store.control_hz))


def joint_indices(spec: EmbodimentSpec) -> tuple[np.ndarray, list[str]]:
    """Unified indices of the arm joint positions both commanded and measured (action and state fields that
    share a ``*_arm_joint_pos`` slot), and their names (``right_arm_joint_pos[0]``, ...). Grippers are left
    out: a closed command on a grasped object never tracks, by design."""
    state_slots = {f.slot for f in spec.state.fields}
    idx: list[int] = []
    for f in spec.action.fields:
        if f.slot.endswith("arm_joint_pos") and f.slot in state_slots:
            s = f.unified_slice
            idx.extend(range(s.start, s.start + f.dim))
    if not idx:
        raise ValueError(f"embodiment {spec.name}: no arm joint positions both commanded and measured; "
                         "tracking error needs joint-position actions")
    return np.asarray(idx), [describe_index(i) for i in idx]


def tracking_error(commanded: np.ndarray, measured: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-joint RMS and max of |measured - commanded| over time. (T, J), (T, J) -> (J,), (J,), in the
    joints' units (rad). Row t of ``measured`` is the position one control period after command t."""
    commanded, measured = np.asarray(commanded, np.float64), np.asarray(measured, np.float64)
    if commanded.shape != measured.shape or commanded.ndim != 2 or len(commanded) == 0:
        raise ValueError(f"tracking_error: commanded {commanded.shape} and measured {measured.shape} must be "
                         "the same non-empty (T, J)")
    err = measured - commanded
    return np.sqrt(np.mean(err**2, axis=0)), np.abs(err).max(axis=0)


def check_embodiment(recorded: str, target: str, where: str) -> None:
    """Refuse to replay an episode of one robot on another: the joint targets would mean nothing there."""
    if recorded != target:
        raise ValueError(f"{where}: the episode was recorded with embodiment {recorded!r} but the target runs "
                         f"{target!r}; replay needs the same robot")


@dataclass(frozen=True)
class ReplayResult:
    """What one ``robot-policy replay`` found. Errors in rad (joints) or the state's units (mode=states)."""

    episode: int
    target: str
    mode: str
    steps: int
    success: bool
    recorded_success: bool | None
    joint_names: list[str]
    #: per joint: RMS and max |measured - commanded| (rad)
    tracking_rms: list[float]
    tracking_max: list[float]
    #: mode=states: max |observed - recorded| over the state mask; mode=actions: the same along the open loop;
    #: None where the target has no recorded state to compare (ros2)
    state_max_error: float | None
    commanded: np.ndarray  # (T, J) rad
    measured: np.ndarray  # (T, J) rad
    frames: list[np.ndarray]  # video frames (H, W, 3) uint8; empty when video=false
    extra: dict[str, float]

    def summary(self) -> dict[str, object]:
        """JSON-ready summary (replay.json)."""
        return {"episode": self.episode, "target": self.target, "mode": self.mode, "steps": self.steps,
                "success": self.success, "recorded_success": self.recorded_success,
                "tracking_rms_rad": dict(zip(self.joint_names, self.tracking_rms)),
                "tracking_max_rad": dict(zip(self.joint_names, self.tracking_max)),
                "tracking_rms_mean_rad": float(np.mean(self.tracking_rms)),
                "tracking_max_overall_rad": float(np.max(self.tracking_max)),
                "state_max_error": self.state_max_error, **self.extra}


def replay_in_sim(cfg: ReplayConfig, store: EpisodeStore, ep: RecordedEpisode) -> ReplayResult:
    """Replay ``ep`` in the simulator: by actions from the recorded first state (or ``reset(seed)`` when the
    store has no simulator states), or by states through ``reset_to`` every step."""
    task = (load_task_config(cfg.task) if cfg.task else
            task_config_from_dict(dict(store.attrs.get("task") or {}), where=f"{store.path} attrs.task"))
    check_embodiment(store.embodiment.name, task.embodiment, f"{store.path} episode {ep.index} -> task {task.name}")
    if cfg.mode == "states" and ep.sim_state is None:
        raise StoreError(f"{store.path}: no data/{fmt.SIM_STATE}: mode=states needs recorded simulator states")
    idx, names = joint_indices(store.embodiment)
    env = make_env(task)
    camera = cfg.camera or (task.cameras[0] if task.cameras else
                            (env.available_cameras[0] if env.available_cameras else ""))
    frames: list[np.ndarray] = []

    def grab() -> None:
        if cfg.video and camera:
            frames.append(env.render(camera, cfg.video_size, cfg.video_size))

    measured, state_err, success = [], 0.0, False
    try:
        obs, _ = env.reset(seed=ep.seed)
        if ep.sim_state is not None:
            obs = env.reset_to(ep.sim_state[0])
        grab()
        for t in range(len(ep.action)):
            if cfg.mode == "states":
                obs = env.reset_to(ep.sim_state[t])  # type: ignore[index]  # checked above
                state_err = max(state_err, float(np.abs(obs[fmt.STATE] - ep.state[t])[ep.state_mask].max()))
                # measured = where the recorded state went one step later; the last step has no successor
                nxt = ep.sim_state[t + 1] if t + 1 < len(ep.action) else None  # type: ignore[index]
                if nxt is not None:
                    measured.append(np.asarray(env.reset_to(nxt)[fmt.STATE], np.float64)[idx])
                else:
                    env.reset_to(ep.sim_state[t])  # type: ignore[index]
                    obs, _, _, _, info = env.step(ep.action[t])
                    measured.append(np.asarray(obs[fmt.STATE], np.float64)[idx])
                success = success or env.is_success()
            else:
                state_err = max(state_err, float(np.abs(obs[fmt.STATE] - ep.state[t])[ep.state_mask].max()))
                obs, _, _, _, info = env.step(ep.action[t])
                measured.append(np.asarray(obs[fmt.STATE], np.float64)[idx])
                success = success or bool(info["success"])
            grab()
    finally:
        env.close()
    commanded = ep.action[:, idx]
    rms, mx = tracking_error(commanded, np.stack(measured))
    return ReplayResult(episode=ep.index, target="sim", mode=cfg.mode, steps=len(ep.action), success=success,
                        recorded_success=ep.recorded_success, joint_names=names, tracking_rms=rms.tolist(),
                        tracking_max=mx.tolist(), state_max_error=state_err, commanded=commanded,
                        measured=np.stack(measured), frames=frames, extra={})


def plot_tracking(path: Path, result: ReplayResult, control_hz: float) -> Path:
    """PNG: one panel per joint, commanded (dashed) against measured (solid) position over time (s)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and in tests
    import matplotlib.pyplot as plt

    n = len(result.joint_names)
    cols = 2 if n > 7 else 1
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 1.4 * rows + 0.8), sharex=True, squeeze=False)
    t = np.arange(result.steps) / control_hz
    # column-major so that each arm (7 consecutive joints) fills one column
    for j, name in enumerate(result.joint_names):
        ax = axes[j % rows, j // rows]
        ax.plot(t, result.commanded[:, j], "--", lw=1, label="commanded")
        ax.plot(t, result.measured[:, j], lw=1, label="measured")
        ax.set_ylabel(name.replace("_arm_joint_pos", ""), fontsize=7)
        ax.tick_params(labelsize=6)
        ax.set_title(f"rms {result.tracking_rms[j]:.2g}, max {result.tracking_max[j]:.2g} rad", fontsize=6, pad=2)
    for ax in axes[-1]:
        ax.set_xlabel("time (s)", fontsize=7)
    axes[0, 0].legend(fontsize=6, loc="upper right")
    fig.suptitle(f"episode {result.episode}, {result.target} by {result.mode}: commanded vs measured (rad)",
                 fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def check_calibration(cfg: ReplayConfig, store: EpisodeStore) -> dict[str, Any] | None:
    """The target rig's base-to-base transform (``cfg.calibration``) against the store's ``base_to_base`` attr.

    A stale or missing rig file, a store that recorded none, and a difference beyond the tolerance are
    :class:`~robot_policy.data.rig_file.CalibrationWarning` s naming both; the summary says what was found."""
    if not cfg.calibration:
        return None
    file = base_to_base_file(cfg.calibration)
    current = load_rig_base_to_base(file, max_age_days=cfg.calibration_max_age_days, required=cfg.calibration_required)
    raw = store.attrs.get("base_to_base")
    out: dict[str, Any] = {"file": str(file), "found": current is not None, "recorded": raw is not None}
    if current is None:
        return out
    if raw is None:
        warn_calibration(f"{store.path}: records no base-to-base transform, so {file}'s "
                         f"T_{current.parent}_{current.child} cannot be checked against the rig it was recorded on "
                         "(record with the rig config's calibration.base_to_base)", MissingCalibrationWarning)
        return out
    recorded = FrameTransform.from_attrs(raw, f"{store.path} attrs.base_to_base")
    problem = transform_mismatch(recorded, current, tol_m=cfg.calibration_tol_mm * 1e-3,
                                 tol_deg=cfg.calibration_tol_deg)
    out["matches"] = problem is None
    difference = calibration_difference(recorded, current)
    if difference is not None:
        out.update(difference_mm=difference[0] * 1e3, difference_deg=difference[1])
    if problem is not None:
        warn_calibration(f"{file} against {store.path}: {problem}", CalibrationMismatchWarning)
    return out


def run_replay(cfg: ReplayConfig) -> dict[str, object]:
    """``robot-policy replay``: replay one episode to the target, write replay.json, tracking.png and (video=true
    with a camera) replay.mp4 under ``cfg.out``; returns the summary."""
    import json

    from robot_policy.eval.video import write_mp4

    store = EpisodeStore.open(cfg.store)
    ep = load_episode(store, cfg.episode)
    calibration = check_calibration(cfg, store)
    if cfg.target == "sim":
        result = replay_in_sim(cfg, store, ep)
    else:
        from robot_policy.pipelines.replay_ros import replay_on_ros

        result = replay_on_ros(cfg, store, ep)
    out = Path(cfg.out or f"replay/{Path(cfg.store).stem}_ep{cfg.episode}")
    out.mkdir(parents=True, exist_ok=True)
    summary = result.summary()
    summary["plot"] = str(plot_tracking(out / "tracking.png", result, ep.control_hz))
    if result.frames:
        summary["video"] = str(write_mp4(out / "replay.mp4", result.frames, ep.control_hz))
    summary["store"] = str(cfg.store)
    if calibration is not None:
        summary["calibration"] = calibration
    (out / "replay.json").write_text(json.dumps(summary, indent=1))
    return summary
