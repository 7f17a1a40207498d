"""wandb logging: offline by default (no account, no network), `logger.mode=online` for dashboards,
`disabled` in tests. Metrics go under `charts/` and `losses/`; feature usage is a `wandb.Table` plus a bar
chart (not a histogram, which caps at 512 bins); the intervention log and final policy are artifacts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class LoggerConfig:
    mode: str = "offline"  # offline | online | disabled
    project: str = "crl"
    entity: str | None = None
    group: str | None = None
    tags: list[str] | None = None


class WandbLogger:
    def __init__(
        self, cfg: LoggerConfig, run_dir: Path, name: str, config: dict[str, Any], resume_id: str | None = None
    ):
        import wandb

        if cfg.mode not in ("offline", "online", "disabled"):
            from crl.errors import CRLError

            raise CRLError(f"logger.mode='{cfg.mode}' is unknown; use offline, online or disabled")
        self.wandb = wandb
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            group=cfg.group,
            tags=cfg.tags,
            name=name,
            config=config,
            dir=str(run_dir),
            mode=cfg.mode,
            id=resume_id,
            resume="allow" if resume_id else None,
            reinit="finish_previous",
        )
        self.id = getattr(self.run, "id", None)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def log_feature_usage(self, rows: list[dict[str, Any]], step: int) -> None:
        cols = ["feature", "count", "share", "mean_reward", "neuronpedia_url"]
        table = self.wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])
        bar = self.wandb.plot.bar(table, "feature", "share", title="Top features by share of selections")
        self.run.log({"features/usage": table, "features/top_share": bar}, step=step)

    def log_artifact(self, path: Path, name: str, kind: str) -> None:
        if Path(path).exists():
            art = self.wandb.Artifact(name=name, type=kind)
            art.add_file(str(path))
            self.run.log_artifact(art)

    def finish(self) -> None:
        self.run.finish()
