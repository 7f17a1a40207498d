"""Report sections on where to steer: the coefficient tolerance of one run, and accuracy, feature diversity
and token types per layer across the runs of a layer sweep."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from crl.analysis.offline.layers import (
    LayerConfig,
    coef_sweep_max,
    coef_tolerance,
    constrained,
    format_tolerance,
    layer_claim,
    layer_table,
)
from crl.analysis.offline.stats import StatsConfig
from crl.analysis.report import plots
from crl.analysis.report.document import Report, para
from crl.logs.reader import RunDir


def coef_section(rep: Report, run: RunDir, baselines: dict[str, str], out: Path) -> None:
    """One run: the coefficient sweep (summary.json "coef_sweep") and its tolerance."""
    s = rep.section("Layer comparison and coefficient tolerance")
    s.append(
        para(
            f"Single run at layer {run.layer}; compare layers with `crl compare 'dirs=[...]'` over a layer sweep.",
            "note",
        )
    )
    sweep = run.summary.get("coef_sweep")
    if not sweep:
        return
    r0 = float(run.episodes_of(baselines["none"])["well_formed"].mean()) if "none" in baselines else None
    tol = coef_tolerance(sweep, r0, LayerConfig().tolerance_frac)
    sw = pd.DataFrame(sweep)
    rep.add_table(s, "coef_sweep", sw)
    ceiling = tol > 0 and tol == coef_sweep_max(sweep)  # a lower bound: "coefficient tolerance >= 4 (sweep max)"
    s.append(
        para(
            f"coefficient tolerance {'' if ceiling else '= '}{format_tolerance(tol, ceiling)} (largest |coef| with it "
            "and every smaller one keeping the well-formed rate >= 0.9 x unsteered)"
        )
    )
    if constrained(run.config_text):
        s.append(
            para(
                "On a constrained task outputs are well-formed by construction, so tolerance by well-formed rate "
                "does not apply.",
                "note",
            )
        )
    rep.add_image(s, "coef_sweep", plots.coef_sweep_plot(sw, out / "coef_sweep.png", tol))


def layers_section(rep: Report, runs: list[RunDir], split: str | None, stats_cfg: StatsConfig, out: Path) -> None:
    """Several runs: one layer table per (task, model) that has runs at two or more layers."""
    s = rep.section("Layer comparison")
    by_task: dict[tuple[str, str], list[RunDir]] = {}
    for r in runs:
        by_task.setdefault((r.task, str(r.info.model)), []).append(r)
    shown = False
    for ti, ((task, model), group) in enumerate(by_task.items()):
        if len({r.layer for r in group}) < 2:
            continue
        lcfg = LayerConfig(split=split)
        lt = layer_table(group, lcfg, stats_cfg)
        s.append(para(f"{task} on {model}"))
        s.append(para("Layer claim (syntactic early, semantic late, larger coefficients later): "
                      + layer_claim(lt, lcfg.min_share_change)[1] + "."))  # fmt: skip
        rep.add_table(s, f"layers_{ti}", lt)
        rep.add_image(s, f"layers_{ti}", plots.layer_comparison(lt, out / f"layers_{ti}.png"))
        shown = True
    if not shown:
        s.append(para("No task has runs at two or more layers.", "note"))
