"""Embodiment specs: a robot's native state/action fields, where they go in the unified space, and its limits.

A spec is YAML in ``configs/embodiment/<name>.yaml``::

    name: panda_bimanual_joint
    control_hz: 20
    arms:
      right: {dof: 7, joint_pos_min: [...], joint_pos_max: [...], joint_vel_max: [...], joint_acc_max: [...]}
    state:
      right_joint_pos: {slot: right_arm_joint_pos, dim: 7, units: rad}
      right_gripper:   {slot: right_gripper_open, dim: 1, gripper: {closed: 0.0, open: 0.08}, units: m}
      right_eef_quat:  {slot: right_eef_rot6d, dim: 4, rotation: quat_xyzw}
    action:
      ...

Field transforms, native -> unified:
  * plain: copied into the first ``dim`` slots of the region (exact both ways);
  * ``gripper: {closed, open}``: affine map to the opening in [0, 1] (1 = open, 0 = closed), required on a
    ``*_gripper_open`` slot. State and action mean the same there (the action is the target opening); a
    gripper driven by a signed or binary command takes a target in its env, which converts (see
    ``robosuite_tasks.gripper_command``);
  * ``rotation: <repr>``: any representation in :data:`rotation.REPRESENTATIONS` -> 6D.

Conversions accept arbitrary leading batch dims and return float64.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from robot_policy.paths import CONFIG_DIR, available_configs, resolve_config
from robot_policy.spaces import rotation as rot
from robot_policy.spaces.unified import SLOTS, UNIFIED_DIM, describe_index, slot, slot_width


class SpecError(ValueError):
    """An embodiment spec or a native sample that does not match its spec."""


_FIELD_KEYS = {"slot", "dim", "rotation", "gripper", "units", "description"}
_ARM_KEYS = {"dof", "joint_pos_min", "joint_pos_max", "joint_vel_max", "joint_acc_max"}
_SPEC_KEYS = {"name", "description", "control_hz", "arms", "state", "action"}


@dataclass(frozen=True)
class FieldSpec:
    """One native field and its place in the unified vector.

    Attributes:
        name: native field name, e.g. ``right_joint_pos``.
        slot: unified slot region, a key of :data:`unified.SLOTS`.
        dim: native width of the field (last axis).
        rotation: native rotation representation when the field is an orientation (slot ``*_eef_rot6d``).
        gripper: ``(closed, open)`` native values when the field is a gripper opening.
        units: free text, documentation only.
    """

    name: str
    slot: str
    dim: int
    rotation: str | None = None
    gripper: tuple[float, float] | None = None
    units: str = ""

    @property
    def unified_width(self) -> int:
        return 6 if self.rotation is not None else self.dim

    @property
    def unified_slice(self) -> slice:
        start = SLOTS[self.slot].start
        return slice(start, start + self.unified_width)

    def to_unified(self, value: np.ndarray) -> np.ndarray:
        """(..., dim) native -> (..., unified_width)."""
        if self.rotation is not None:
            _, to_matrix, _ = rot.REPRESENTATIONS[self.rotation]
            return rot.matrix_to_rot6d(to_matrix(value))
        if self.gripper is not None:
            closed, open_ = self.gripper
            return (value - closed) / (open_ - closed)
        return value

    def from_unified(self, value: np.ndarray) -> np.ndarray:
        """(..., unified_width) -> (..., dim) native."""
        if self.rotation is not None:
            _, _, from_matrix = rot.REPRESENTATIONS[self.rotation]
            return np.asarray(from_matrix(rot.rot6d_to_matrix(value)))
        if self.gripper is not None:
            closed, open_ = self.gripper
            return value * (open_ - closed) + closed
        return value


def _parse_field(name: str, raw: Any, where: str) -> FieldSpec:
    at = f"{where}.{name}"
    if not isinstance(raw, Mapping):
        raise SpecError(f"{at}: expected a mapping with 'slot' and 'dim', got {type(raw).__name__}")
    unknown = set(raw) - _FIELD_KEYS
    if unknown:
        raise SpecError(f"{at}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_FIELD_KEYS)}")
    for key in ("slot", "dim"):
        if key not in raw:
            raise SpecError(f"{at}: missing '{key}'")
    slot_name = raw["slot"]
    if slot_name not in SLOTS:
        raise SpecError(f"{at}: unknown slot {slot_name!r}; valid slots: {', '.join(SLOTS)}")
    dim = raw["dim"]
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise SpecError(f"{at}: dim must be a positive integer, got {dim!r}")
    rotation = raw.get("rotation")
    gripper_raw = raw.get("gripper")
    gripper: tuple[float, float] | None = None
    if rotation is not None:
        if rotation not in rot.REPRESENTATIONS:
            raise SpecError(f"{at}: unknown rotation {rotation!r}; valid: {sorted(rot.REPRESENTATIONS)}")
        if not slot_name.endswith("eef_rot6d"):
            raise SpecError(f"{at}: rotation fields go in an '*_eef_rot6d' slot, not {slot_name!r}")
        want = rot.REPRESENTATIONS[rotation][0]
        if dim != want:
            raise SpecError(f"{at}: rotation {rotation!r} has dim {want}, spec says {dim}")
    elif slot_name.endswith("eef_rot6d") and dim != 6:
        raise SpecError(f"{at}: slot {slot_name!r} holds a 6D rotation; give 'rotation:' for dim {dim}")
    if gripper_raw is not None:
        if not isinstance(gripper_raw, Mapping) or set(gripper_raw) != {"closed", "open"}:
            raise SpecError(f"{at}: gripper must be {{closed: <native>, open: <native>}}, got {gripper_raw!r}")
        gripper = (float(gripper_raw["closed"]), float(gripper_raw["open"]))
        if gripper[0] == gripper[1]:
            raise SpecError(f"{at}: gripper closed and open are both {gripper[0]}")
        if dim != 1:
            raise SpecError(f"{at}: a gripper opening has dim 1, spec says {dim}")
    if slot_name.endswith("gripper_open") and gripper is None:
        # The slot is an opening in [0, 1] for every embodiment; a raw native value (a width, a signed
        # command) copied in would give it a second meaning.
        raise SpecError(f"{at}: slot {slot_name!r} is the gripper opening in [0, 1]; give "
                        "'gripper: {closed: <native>, open: <native>}' to map the native value onto it")
    if rotation is None and dim > slot_width(slot_name):
        raise SpecError(f"{at}: dim {dim} does not fit slot {slot_name!r} of width {slot_width(slot_name)}")
    return FieldSpec(name=name, slot=slot_name, dim=dim, rotation=rotation, gripper=gripper,
                     units=str(raw.get("units", "")))


@dataclass(frozen=True)
class FieldMap:
    """The native fields of a state or an action, in declaration order, and their unified placement."""

    fields: tuple[FieldSpec, ...]
    kind: str = "state"  # "state" or "action", for messages

    def __post_init__(self) -> None:
        owner: dict[int, str] = {}
        for f in self.fields:
            s = f.unified_slice
            for i in range(s.start, s.stop):
                if i in owner:
                    raise SpecError(
                        f"{self.kind}.{f.name}: unified slot {i} ({describe_index(i)}) is already used by "
                        f"{self.kind}.{owner[i]}"
                    )
                owner[i] = f.name

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @property
    def native_dim(self) -> int:
        return sum(f.dim for f in self.fields)

    @property
    def mask(self) -> np.ndarray:
        """(128,) float32, 1 where a field writes."""
        m = np.zeros(UNIFIED_DIM, dtype=np.float32)
        for f in self.fields:
            m[f.unified_slice] = 1.0
        return m

    def get(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.kind} has no field {name!r}; fields: {', '.join(self.names)}")

    def to_unified(self, native: Mapping[str, Any]) -> np.ndarray:
        """Native fields ``{name: (..., dim)}`` -> unified ``(..., 128)`` float64, unused slots 0."""
        unknown = set(native) - set(self.names)
        if unknown:
            raise SpecError(f"{self.kind}: unknown field(s) {sorted(unknown)}; spec has {list(self.names)}")
        values: list[np.ndarray] = []
        for f in self.fields:
            if f.name not in native:
                raise SpecError(f"{self.kind}: missing field {f.name!r}")
            v = np.asarray(native[f.name], dtype=np.float64)
            if v.ndim == 0 or v.shape[-1] != f.dim:
                raise SpecError(f"{self.kind}.{f.name}: expected shape (..., {f.dim}), got {v.shape}")
            values.append(v)
        lead = np.broadcast_shapes(*(v.shape[:-1] for v in values)) if values else ()
        out = np.zeros((*lead, UNIFIED_DIM), dtype=np.float64)
        for f, v in zip(self.fields, values):
            out[..., f.unified_slice] = f.to_unified(v)
        return out

    def from_unified(self, unified: np.ndarray) -> dict[str, np.ndarray]:
        """Unified ``(..., 128)`` -> native fields ``{name: (..., dim)}`` float64."""
        u = np.asarray(unified, dtype=np.float64)
        if u.ndim == 0 or u.shape[-1] != UNIFIED_DIM:
            raise SpecError(f"{self.kind}: expected a unified vector of shape (..., {UNIFIED_DIM}), got {u.shape}")
        return {f.name: f.from_unified(u[..., f.unified_slice]) for f in self.fields}

    def flat_to_unified(self, native_flat: np.ndarray) -> np.ndarray:
        """Native fields concatenated in declaration order ``(..., native_dim)`` -> ``(..., 128)``."""
        x = np.asarray(native_flat, dtype=np.float64)
        if x.ndim == 0 or x.shape[-1] != self.native_dim:
            raise SpecError(f"{self.kind}: expected flat native shape (..., {self.native_dim}), got {x.shape}")
        splits = np.cumsum([f.dim for f in self.fields])[:-1]
        parts = np.split(x, splits, axis=-1)
        return self.to_unified(dict(zip(self.names, parts)))

    def unified_to_flat(self, unified: np.ndarray) -> np.ndarray:
        """``(..., 128)`` -> native fields concatenated in declaration order ``(..., native_dim)``."""
        fields = self.from_unified(unified)
        return np.concatenate([fields[n] for n in self.names], axis=-1)


@dataclass(frozen=True)
class ArmLimits:
    """Joint limits of one arm in native joint order. Units: rad, rad/s, rad/s^2."""

    dof: int
    joint_pos_min: tuple[float, ...]
    joint_pos_max: tuple[float, ...]
    joint_vel_max: tuple[float, ...]
    joint_acc_max: tuple[float, ...]


def _parse_arm(side: str, raw: Any, where: str) -> ArmLimits:
    at = f"{where}.arms.{side}"
    if side not in ("right", "left"):
        raise SpecError(f"{at}: arm side must be 'right' or 'left'")
    if not isinstance(raw, Mapping):
        raise SpecError(f"{at}: expected a mapping")
    unknown = set(raw) - _ARM_KEYS
    if unknown:
        raise SpecError(f"{at}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_ARM_KEYS)}")
    missing = _ARM_KEYS - set(raw)
    if missing:
        raise SpecError(f"{at}: missing key(s) {sorted(missing)}")
    dof = raw["dof"]
    if not isinstance(dof, int) or not 1 <= dof <= 10:
        raise SpecError(f"{at}.dof: must be an integer in [1, 10], got {dof!r}")
    lists: dict[str, tuple[float, ...]] = {}
    for key in ("joint_pos_min", "joint_pos_max", "joint_vel_max", "joint_acc_max"):
        values = raw[key]
        if not isinstance(values, (list, tuple)) or len(values) != dof:
            raise SpecError(f"{at}.{key}: expected {dof} numbers, got {values!r}")
        lists[key] = tuple(float(v) for v in values)
    for j, (lo, hi) in enumerate(zip(lists["joint_pos_min"], lists["joint_pos_max"])):
        if not lo < hi:
            raise SpecError(f"{at}: joint {j}: joint_pos_min {lo} is not below joint_pos_max {hi}")
    for key in ("joint_vel_max", "joint_acc_max"):
        for j, v in enumerate(lists[key]):
            if not v > 0:
                raise SpecError(f"{at}.{key}[{j}]: must be > 0, got {v}")
    return ArmLimits(dof=dof, **lists)


@dataclass(frozen=True)
class EmbodimentSpec:
    """A robot's native interface and limits. Build with :func:`load_embodiment` or :meth:`from_dict`."""

    name: str
    control_hz: float
    state: FieldMap
    action: FieldMap
    arms: dict[str, ArmLimits] = field(default_factory=dict)
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "embodiment") -> EmbodimentSpec:
        if not isinstance(raw, Mapping):
            raise SpecError(f"{where}: expected a mapping, got {type(raw).__name__}")
        unknown = set(raw) - _SPEC_KEYS
        if unknown:
            raise SpecError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_SPEC_KEYS)}")
        for key in ("name", "control_hz", "state", "action"):
            if key not in raw:
                raise SpecError(f"{where}: missing '{key}'")
        hz = raw["control_hz"]
        if not isinstance(hz, (int, float)) or not hz > 0:
            raise SpecError(f"{where}.control_hz: must be > 0, got {hz!r}")
        arms = {side: _parse_arm(side, a, where) for side, a in (raw.get("arms") or {}).items()}
        maps = {}
        for kind in ("state", "action"):
            fields_raw = raw[kind]
            if not isinstance(fields_raw, Mapping) or not fields_raw:
                raise SpecError(f"{where}.{kind}: expected a non-empty mapping of fields")
            fields = tuple(_parse_field(n, f, f"{where}.{kind}") for n, f in fields_raw.items())
            try:
                maps[kind] = FieldMap(fields, kind=kind)
            except SpecError as e:
                raise SpecError(f"{where}.{e}") from None
            for f in fields:
                _check_against_arm(f, arms, f"{where}.{kind}.{f.name}")
        return cls(name=str(raw["name"]), control_hz=float(hz), state=maps["state"], action=maps["action"],
                   arms=arms, description=str(raw.get("description", "")), raw=dict(raw))

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data (what it was loaded from), for store attrs and checkpoints."""
        return _plain(self.raw)

    def joint_position_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(128,) lower and upper bounds in unified units for joint positions and gripper openings.

        Slots without a limit are +-inf. Used by the safety filter.
        """
        lo = np.full(UNIFIED_DIM, -np.inf)
        hi = np.full(UNIFIED_DIM, np.inf)
        for side, arm in self.arms.items():
            s = slot(f"{side}_arm_joint_pos")
            lo[s.start:s.start + arm.dof] = arm.joint_pos_min
            hi[s.start:s.start + arm.dof] = arm.joint_pos_max
            g = slot(f"{side}_gripper_open")
            lo[g], hi[g] = 0.0, 1.0
        return lo, hi


def _check_against_arm(f: FieldSpec, arms: Mapping[str, ArmLimits], at: str) -> None:
    side = f.slot.split("_", 1)[0]
    if f.slot.endswith(("arm_joint_pos", "arm_joint_vel")):
        if side not in arms:
            raise SpecError(f"{at}: joint field on the {side} arm, but 'arms' has no {side!r} entry")
        if f.dim != arms[side].dof:
            raise SpecError(f"{at}: dim {f.dim} does not match arms.{side}.dof = {arms[side].dof}")


def _plain(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def available_embodiments(config_dir: Path = CONFIG_DIR) -> list[str]:
    return available_configs("embodiment", config_dir)


def load_embodiment(name_or_path: str | Path, config_dir: Path = CONFIG_DIR) -> EmbodimentSpec:
    """Load ``configs/embodiment/<name>.yaml``, or a YAML file path. An unknown name lists the valid ones."""
    path = resolve_config("embodiment", name_or_path, config_dir, error=SpecError)
    with open(path) as fh:
        raw = yaml.safe_load(fh)
    return EmbodimentSpec.from_dict(raw, where=str(path))
