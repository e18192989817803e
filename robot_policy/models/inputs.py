"""From batches of windows (or one observation history) to the model's inputs, in normalised units.

Shared by training (batches from the mixture dataset) and inference (the policy's observation history),
so both normalise and lay out inputs identically.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from robot_policy.data import format as fmt
from robot_policy.data.normalizer import Normalizer
from robot_policy.keys import ACTION_MASK, CAMERA_PRESENT, CTRL_FREQ, IMAGES, LANGUAGE_ID, OBS_STATE_MASK
from robot_policy.models.rdt import ModelInputs
from robot_policy.models.text import TextEncoder


class LanguageTable:
    """Instructions encoded once: ids -> (tokens (B, L, D), mask (B, L)). Encoders are frozen."""

    def __init__(self, encoder: TextEncoder, texts: Sequence[str]) -> None:
        self.texts = list(texts)
        with torch.no_grad():
            self.tokens, self.mask = encoder.encode(self.texts if self.texts else [""])

    def to(self, device: torch.device | str) -> LanguageTable:
        self.tokens, self.mask = self.tokens.to(device), self.mask.to(device)
        return self

    def lookup(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        ids = ids.to(self.tokens.device)
        return self.tokens[ids], self.mask[ids]


def make_model_inputs(batch: dict[str, Tensor], normalizer: Normalizer, language: LanguageTable | None,
                      device: torch.device | str = "cpu") -> ModelInputs:
    """Batch of windows -> ModelInputs on ``device``.

    Expects ``state`` (B, To, 128), ``state_mask``/``action_mask`` (B, 128), ``ctrl_freq`` (B,), and when
    the policy uses them ``language_id`` (B,), ``object_state`` (B, To, Do), ``images`` (B, To, V, H, W, 3)
    uint8 with ``camera_present`` (B, V). RDT conditions on the latest state only (no proprio history).
    """
    state = batch[fmt.STATE][:, -1].to(device)
    inputs = ModelInputs(
        state=normalizer.normalize(fmt.STATE, state),
        state_mask=batch[OBS_STATE_MASK].to(device).float(),
        action_mask=batch[ACTION_MASK].to(device).float(),
        ctrl_freq=batch[CTRL_FREQ].to(device).float(),
    )
    if language is not None and LANGUAGE_ID in batch:
        inputs.lang_tokens, inputs.lang_mask = language.lookup(batch[LANGUAGE_ID].to(device))
    if fmt.OBJECT_STATE in batch:
        inputs.object_state = normalizer.normalize(fmt.OBJECT_STATE, batch[fmt.OBJECT_STATE].to(device).float())
    if IMAGES in batch:
        inputs.images = batch[IMAGES].to(device).permute(0, 1, 2, 5, 3, 4)  # (B, To, V, 3, H, W) uint8
        inputs.camera_present = batch[CAMERA_PRESENT].to(device)
    return inputs


def normalized_actions(batch: dict[str, Tensor], normalizer: Normalizer, device: torch.device | str = "cpu") -> Tensor:
    """(B, Ta, 128) actions of the batch in normalised units."""
    return normalizer.normalize(fmt.ACTION, batch[fmt.ACTION].to(device).float())
