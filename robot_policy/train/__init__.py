"""Training loops, checkpoints (safetensors + JSON), EMA, logging, distributed launch."""
