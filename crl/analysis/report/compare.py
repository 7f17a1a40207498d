"""`compare_runs`: several run directories in one report: accuracy vs baselines pooled over seeds, layers,
and (one SAE only) features.

Feature ids mean different things in different SAEs, so feature-level sections are refused
(features=require) or skipped with a warning (features=auto) when the runs' sae_identity differ; accuracy
and layer comparisons do not compare feature ids and are always shown. Settings: `crl.config.CompareConfig`
(conf/compare.yaml). A directory in `dirs` that is a sweep (`crl train -m`) stands for its finished runs; each of its
jobs that failed or did not finish is one warning line.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from crl.analysis.offline.features import FeatureConfig
from crl.analysis.offline.stats import StatsConfig
from crl.analysis.report.accuracy import pooled_sections
from crl.analysis.report.cards import FeatureRefs
from crl.analysis.report.common import Result, publish, warn
from crl.analysis.report.document import Report
from crl.analysis.report.seeds import seeds_section
from crl.analysis.report.sweeps import layers_section
from crl.analysis.report.usage import across_runs_section
from crl.config import CompareConfig
from crl.errors import CRLError
from crl.logs.reader import RunDir, load_run, sweep_jobs
from crl.logs.schema import RUN_JSON

_FEATURE_MODES = ("auto", "require", "skip")


def _feature_mode(mode: Any) -> str:
    # features=true/false arrive as bools or, through the str-typed setting, as "True"/"False".
    text = str(mode).lower()
    text = {"true": "require", "false": "skip"}.get(text, text)
    if text not in _FEATURE_MODES:
        raise CRLError(f"features='{mode}' is unknown; use auto, require or skip")
    return text


def _feature_skip(runs: list[RunDir], mode: str, warnings: list[str]) -> tuple[str, str] | None:
    """(reason, css class) to skip the feature sections, or None to show them."""
    saes = sorted({r.sae_identity for r in runs})
    if len(saes) > 1:
        msg = f"runs use {len(saes)} different SAEs ({', '.join(saes)}): feature ids are not comparable across SAEs"
        if mode == "require":
            raise CRLError(msg + "; compare feature usage only within one SAE (or use features=auto)")
        if mode == "auto":
            warn(msg + ", so feature-level sections are skipped; accuracy is still compared", warnings)
    if mode == "skip":
        return ("features=skip", "note")
    return ("the runs use different SAEs", "warn") if len(saes) > 1 else None


def _runs_table(runs: list[RunDir]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "run": r.name,
                "dir": str(r.path),
                "task": r.task,
                "model": r.info.model,
                "layer": r.layer,
                "coef": r.info.coef,
                "seed": r.info.seed,
                "sae_identity": r.sae_identity,
            }
            for r in runs
        ]
    )


def _load_runs(dirs: list[str], warnings: list[str]) -> list[RunDir]:
    """Each run directory in `dirs`; a sweep's finished runs (its other jobs: one warning each)."""
    runs = []
    for d in dirs:
        path = Path(d).expanduser()
        jobs = [] if (path / RUN_JSON).exists() else sweep_jobs(path)
        if not jobs:  # a run directory, or not a directory of runs at all: load_run says which
            runs.append(load_run(d, include_train=False))
            continue
        for job, problem in jobs:
            try:
                if problem:
                    raise CRLError(problem)
                runs.append(load_run(job, include_train=False))
            except CRLError as e:
                warn(f"sweep {d}: left out {job.relative_to(path)}: {e}", warnings)
    return runs


def compare_runs(cfg: CompareConfig) -> Result:
    """Compare several runs (see the module docstring); writes PNGs and report.html into the out dir."""
    mode = _feature_mode(cfg.features)
    warnings: list[str] = []
    runs = _load_runs(list(cfg.dirs or []), warnings)
    if len(runs) < 2:
        raise CRLError(
            f"compare needs at least two finished runs (got {len(runs)}); pass 'dirs=[runs/a,runs/b]' or a sweep's "
            "directory 'dirs=[runs/sweep-...]'"
        )
    skip = _feature_skip(runs, mode, warnings)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(cfg.out_dir) if cfg.out_dir else Path("runs") / f"compare-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    stats_cfg = StatsConfig(n_boot=cfg.n_boot, seed=cfg.seed)

    rep = Report(f"CRL comparison of {len(runs)} runs")
    rep.add_table(rep.section("Summary"), "runs", _runs_table(runs))
    pooled_sections(rep, runs, cfg.split, stats_cfg, out, warnings)
    layers_section(rep, runs, cfg.split, stats_cfg, out)
    fcfg = FeatureConfig(top_k=cfg.top_k, min_share=cfg.min_share, n_boot=cfg.n_boot, seed=cfg.seed)
    # One SAE: its cards label the features (steering effects are per run, so cards.html shows none here).
    refs = FeatureRefs.of(runs[0]) if skip is None else FeatureRefs()
    if skip is None:
        rep.sections[0][1].append(refs.note_html())
    across_runs_section(rep, runs, cfg.split, fcfg, skip, refs)
    if skip is None:
        seeds_section(rep, runs, cfg.split, refs)
    refs.write_pages(out, f"Features of {len(runs)} compared runs")
    return publish(rep, out, cfg.wandb, f"compare-{stamp}", warnings)
