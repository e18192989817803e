"""Multi-stage jobs above the library layers: collection, the demo (and later RL and distillation runs)."""
