"""Training: the Trainer, accumulation, schedules, checkpoints and logging."""
