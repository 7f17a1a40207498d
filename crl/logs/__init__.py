"""Run directories: `schema` (file names, rows, `Phase`, `RunInfo`), `rows` (episodes -> rows), `atomic`
(atomic file writes), `writer` (append-only logs, checkpoints), `reader` (validated loading), `wandb`."""
