"""Training: the loop, optimizer and schedules, checkpoints, distributed helpers."""
