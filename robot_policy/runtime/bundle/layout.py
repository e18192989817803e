"""The file names of a deploy bundle (the layout is described in :mod:`robot_policy.runtime.bundle.export`)."""

POLICY = "policy.json"
NORMALIZER = "normalizer.json"
EMBODIMENT = "embodiment.json"
LANGUAGE = "language.safetensors"
WEIGHTS = "model.safetensors"
