"""Training state and updates: BC, residual PPO, latent-noise SAC, distillation."""
