"""The unified 128-d state/action space, embodiment specs and rotation helpers."""

from robot_policy.spaces.embodiment import (
    EmbodimentSpec,
    FieldMap,
    FieldSpec,
    SpecError,
    available_embodiments,
    load_embodiment,
)
from robot_policy.spaces.unified import SLOTS, UNIFIED_DIM, describe_index, slot

__all__ = [
    "SLOTS",
    "UNIFIED_DIM",
    "EmbodimentSpec",
    "FieldMap",
    "FieldSpec",
    "SpecError",
    "available_embodiments",
    "describe_index",
    "load_embodiment",
    "slot",
]
