"""Training: optimizers and schedulers from config, the epoch loop, checkpoints."""
