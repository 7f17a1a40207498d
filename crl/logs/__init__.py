"""Run directories: `schema` (file names, rows, `Phase`, `RunInfo`), `rows` (episodes -> rows), `writer`
(atomic writes, append-only logs, checkpoints), `reader` (validated loading), `wandb` (the wandb logger)."""
