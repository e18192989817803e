"""Observation and batch keys: one name per thing, shared by envs, the data pipeline, models and policies.

An observation (env step, or a deployed robot's sensors) and a training batch use the same keys, so the
code that turns either into model inputs is one function (:func:`robot_policy.models.inputs.make_model_inputs`).
This module sits below every layer and imports nothing.
"""

from __future__ import annotations

from typing import Final

#: (128,) unified robot state (SI units); in a batch (B, To, 128)
OBS_STATE: Final = "state"
#: (128,) 0/1 mask of the state slots the embodiment writes; in a batch (B, 128)
OBS_STATE_MASK: Final = "state_mask"
#: (Do,) task-defined privileged object features; in a batch (B, To, Do)
OBS_OBJECT: Final = "object_state"
#: prefix of camera frames: ``images/<camera>`` (H, W, 3) uint8; in a batch (B, To, H, W, 3)
IMAGE_PREFIX: Final = "images/"
#: (B, Ta, 128) unified action chunk of a training window
ACTION: Final = "action"
#: (B, 128) 0/1 mask of the action slots
ACTION_MASK: Final = "action_mask"
#: (B,) int64 index of the episode a window came from
EPISODE: Final = "episode"
#: (B,) float32 control frequency (Hz) of the window's embodiment
CTRL_FREQ: Final = "ctrl_freq"
#: (B,) int64 row of the instruction in the batch's language table
LANGUAGE_ID: Final = "language_id"
#: (B, V) bool, False where a camera is missing from the window's store (a blank frame stands in)
CAMERA_PRESENT: Final = "camera_present"
#: (B, To, V, H, W, 3) uint8, the cameras of a window stacked in the policy's camera order
IMAGES: Final = "images"
#: (B,) int64 index of the store (in the training mixture) a window came from
SOURCE: Final = "source"
