"""Run directories: the resolved config, checkpoints, append-only logs and the summary."""
