"""Networks: the RDT-style transformer, encoders, noise schedules and samplers.

    cfg = load_policy_config("rdt_small")                 # configs/policy/rdt_small.yaml -> RDTConfig
    model = RDTPolicyModel(cfg)                           # obs encoder + RDT denoiser + noise schedule
    text = make_text_encoder(cfg.text_encoder, cfg.lang_dim, cfg.max_lang_tokens)
    loss = model.compute_loss(inputs, actions)            # inputs: ModelInputs, actions (B, Ta, 128)
    chunk = model.sample(inputs, noise=w)                 # (B, Ta, 128); DPM-Solver++ 5 steps by default
"""

from robot_policy.models.diffusion import DiffusionConfig, NoiseSchedule, Sampler, sample
from robot_policy.models.encoders import ObsEncoderConfig, ObservationEncoder, blank_image
from robot_policy.models.params import count_parameters, parameter_breakdown
from robot_policy.models.rdt import (
    RDT,
    ConditionDropoutConfig,
    Conditions,
    ModelInputs,
    RDTConfig,
    RDTPolicyModel,
    load_policy_config,
    policy_config_from_dict,
)
from robot_policy.models.text import TextEncoderConfig, make_text_encoder

__all__ = [
    "RDT",
    "ConditionDropoutConfig",
    "Conditions",
    "DiffusionConfig",
    "ModelInputs",
    "NoiseSchedule",
    "ObsEncoderConfig",
    "ObservationEncoder",
    "RDTConfig",
    "RDTPolicyModel",
    "Sampler",
    "TextEncoderConfig",
    "blank_image",
    "count_parameters",
    "load_policy_config",
    "make_text_encoder",
    "parameter_breakdown",
    "policy_config_from_dict",
    "sample",
]
