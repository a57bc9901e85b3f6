"""Training: losses, learning-rate schedule, the pretraining loop, checkpoints of training state."""
