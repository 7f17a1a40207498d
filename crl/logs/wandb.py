"""wandb logging: offline by default (no account, no network), `logger.mode=online` for dashboards,
`disabled` in tests. Metrics go under `charts/` and `losses/`; feature usage is a `wandb.Table` plus a bar
chart (not a histogram, which caps at 512 bins); the intervention log and final policy are artifacts.

Every wandb run of CRL (training, and the analyze/compare reports) starts in `init_run`, from one
`crl.config.WandbConfig`; with mode=disabled it returns None and wandb is never imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crl.config import WandbConfig


def init_run(
    cfg: WandbConfig,
    name: str,
    config: dict[str, Any] | None = None,
    run_dir: Path | None = None,
    job_type: str | None = None,
    resume_id: str | None = None,
) -> Any:
    """A started wandb run, or None when `cfg.mode` is disabled."""
    if cfg.mode == "disabled":
        return None
    import wandb

    return wandb.init(
        project=cfg.project,
        entity=cfg.entity,
        group=cfg.group,
        tags=cfg.tags,
        name=name,
        config=config,
        dir=str(run_dir) if run_dir is not None else None,
        job_type=job_type,
        mode=cfg.mode,
        id=resume_id,
        resume="allow" if resume_id else None,
        reinit="finish_previous",
    )


class WandbLogger:
    """The training run's wandb run; every method does nothing when logging is disabled."""

    def __init__(
        self, cfg: WandbConfig, run_dir: Path, name: str, config: dict[str, Any], resume_id: str | None = None
    ):
        self.run = init_run(cfg, name, config, run_dir, resume_id=resume_id)
        self.id = getattr(self.run, "id", None)

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def log_feature_usage(self, rows: list[dict[str, Any]], step: int) -> None:
        if self.run is None:
            return
        import wandb

        # label: the feature card's heuristic label; card: its page in the run's report (both None without cards)
        cols = ["feature", "label", "card", "count", "share", "mean_reward", "neuronpedia_url"]
        table = wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])
        bar = wandb.plot.bar(table, "feature", "share", title="Top features by share of selections")
        self.run.log({"features/usage": table, "features/top_share": bar}, step=step)

    def log_artifact(self, path: Path, name: str, kind: str) -> None:
        if self.run is not None and Path(path).exists():
            import wandb

            art = wandb.Artifact(name=name, type=kind)
            art.add_file(str(path))
            self.run.log_artifact(art)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
