"""Equal-budget learning curves of CRL and GRPO (`crl curves`, and a section of `crl rl-compare`'s report): the plot,
the HTML section and page, the printed table. The numbers and their definitions are in crl/analysis/offline/curves.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from crl.analysis.offline import curves as oc
from crl.analysis.offline.stats import StatsConfig
from crl.analysis.offline.text import text_table
from crl.analysis.report.document import Report, para
from crl.analysis.report.plots import _empty, _figure, _save
from crl.config import CurvesConfig
from crl.errors import CRLError

COLOR = {oc.CRL: "#4c72b0", oc.GRPO: "#dd8452"}
PLOT = "curves.png"
SECTION = "Learning curves at equal budget"
_BUDGET_COLUMNS = [
    "rollouts",
    "n_prompts",
    "base",
    "crl_acc",
    "crl_lo",
    "crl_hi",
    "crl_ci",
    "grpo_acc",
    "grpo_lo",
    "grpo_hi",
    "grpo_ci",
    "crl_gain",
    "crl_gain_lo",
    "crl_gain_hi",
    "grpo_gain",
    "grpo_gain_lo",
    "grpo_gain_hi",
    "share",
    "share_lo",
    "share_hi",
    "note",
    "crl_wall_s",
    "grpo_wall_s",
]
_TEST_COLUMNS = ["split", *_BUDGET_COLUMNS[1:-2], "crl_rollouts", "grpo_rollouts"]


def curves_plot(result: oc.Curves, path: str | Path) -> Path:
    """Left: val accuracy against rollouts (each run thin; the mean over seeds with its CI at the shared budgets; the
    base model dashed). Right: the same against training wall time (each run; the mean at the mean wall time)."""
    fig, (ax, ax2) = _figure(11.0, 4.0, ncols=2)
    points = result.points()
    b = result.budgets
    for method in oc.METHODS:
        mine = points[points["method"] == method]
        for _, run in mine.groupby("path"):
            ax.plot(run["rollouts"], run["accuracy"], color=COLOR[method], lw=0.8, alpha=0.35)
            timed = run.dropna(subset=["wall_seconds"])
            if len(timed):
                ax2.plot(timed["wall_seconds"], timed["accuracy"], color=COLOR[method], lw=0.8, alpha=0.35)
        seeds = int(b[f"{method}_seeds"].iloc[0]) if len(b) else 0
        label = f"{oc.LABEL[method]}, mean of {seeds} seed{'s' if seeds != 1 else ''}"
        ax.plot(b["rollouts"], b[f"{method}_acc"], "o-", color=COLOR[method], label=label)
        ax.fill_between(b["rollouts"], b[f"{method}_lo"], b[f"{method}_hi"], color=COLOR[method], alpha=0.15)
        walls = b[[f"{method}_wall_s", f"{method}_acc", f"{method}_lo", f"{method}_hi"]].dropna()
        if len(walls):
            err = [walls[f"{method}_acc"] - walls[f"{method}_lo"], walls[f"{method}_hi"] - walls[f"{method}_acc"]]
            ax2.errorbar(
                walls[f"{method}_wall_s"], walls[f"{method}_acc"], yerr=err, fmt="o-", color=COLOR[method], label=label
            )
    if len(b):
        base = float(b["base"].iloc[0])
        for a in (ax, ax2):
            a.axhline(base, color="#8c8c8c", ls="--", lw=1, label=f"base model ({base:.3f})")
    ax.set_xlabel("rollouts (CRL episodes = GRPO completions)")
    ax.set_ylabel(f"val accuracy (greedy, {result.runs[0].val_split})")
    ax.set_title("accuracy vs rollouts", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    if points["wall_seconds"].notna().any():
        ax2.set_xlabel("training wall time, s (val evaluations excluded)")
        ax2.set_ylabel("val accuracy")
        ax2.set_title("accuracy vs wall time", fontsize=9)
        ax2.legend(fontsize=7, loc="best")
    else:
        _empty(ax2, "no per-update timings in these runs' metrics.jsonl")
    return _save(fig, path)


def curves_section(rep: Report, result: oc.Curves, out: Path, title: str = SECTION) -> None:
    """The headline, the plot, the per-budget table, the test row and the runs."""
    s = rep.section(title)
    later = result.budgets[result.budgets["rollouts"] > 0]
    defined = len(later) and not oc.is_missing(later["share"].iloc[-1])
    s.append(para(result.headline, "" if defined else "warn"))
    for w in result.warnings:
        s.append(para(w, "warn"))
    rep.add_image(s, "curves", curves_plot(result, Path(out) / PLOT))
    s.append(
        para(
            "Val accuracy at each budget every run was evaluated at (rollouts: training episodes before the "
            "evaluation, CRL's episodes and GRPO's completions alike). acc CI: t over seeds, or with one seed the "
            "Wilson interval over prompts. gain = acc - base (the model neither steered nor tuned, at 0 rollouts); "
            "share = CRL's gain / GRPO's gain, defined only where GRPO's gain CI lies above 0. Gain and share CIs: "
            "bootstrap over the (shared, paired) prompts and each method's seeds. wall_s: mean training seconds before "
            "the evaluation (val evaluations, model loading and checkpoints not counted).",
            "note",
        )
    )
    rep.add_table(s, "curves_budgets", result.budgets, columns=_BUDGET_COLUMNS)
    if len(result.test):
        s.append(
            para(
                "The test split, from each run's summary.json evaluations: before = the base model (no steering), "
                "after = the run's selected model (best val over its whole budget; *_rollouts: that budget).",
                "note",
            )
        )
        rep.add_table(s, "curves_test", result.test, columns=_TEST_COLUMNS)
    else:
        s.append(para("No test comparison: a run lacks its test evaluation of the base model or of its selection."))
    rep.add_table(s, "curves_runs", result.runs_table())


def pair_section(rep: Report, crl_run: str, grpo_run: str, out: Path, cfg: StatsConfig | None = None) -> None:
    """`crl rl-compare`'s section for its one pair of runs; a problem reading their curves is a note, not a failure."""
    try:
        crl, grpo = oc.read_curves([crl_run], [grpo_run])
        result = oc.pool(crl, grpo, cfg)
    except CRLError as e:
        rep.section(SECTION).append(para(f"No learning curves: {e}.", "warn"))
        return
    oc.write(result, out)
    curves_section(rep, result, out)


def table_text(result: oc.Curves) -> str:
    """The per-budget table as plain text (what `crl curves` prints)."""

    def acc(r: pd.Series, m: str) -> str:
        return f"{r[f'{m}_acc']:.3f} [{r[f'{m}_lo']:.3f}, {r[f'{m}_hi']:.3f}]"

    def share(r: pd.Series) -> str:
        if oc.is_missing(r["share"]):
            return "undefined"
        return f"{r['share']:.0%} [{r['share_lo']:.0%}, {r['share_hi']:.0%}]"

    rows = [("rollouts", "base", "CRL val acc", "GRPO val acc", "CRL share of GRPO's gain")]
    for _, r in result.budgets.iterrows():
        rows.append((str(int(r["rollouts"])), f"{r['base']:.3f}", acc(r, oc.CRL), acc(r, oc.GRPO), share(r)))
    for _, r in result.test.iterrows():
        rows.append((f"{r['split']} (sel.)", f"{r['base']:.3f}", acc(r, oc.CRL), acc(r, oc.GRPO), share(r)))
    return "\n".join(text_table(rows))


@dataclass
class CurvesOutput:
    result: oc.Curves
    out: Path
    files: dict[str, Path]
    html: Path


def make_curves(cfg: CurvesConfig) -> CurvesOutput:
    """`crl curves`: read and check the runs (one CRLError line on bad input), pool them, write the tables, the plot
    and report.html into the out dir (default runs/curves-<timestamp>)."""
    crl, grpo = oc.read_curves(cfg.crl_runs, cfg.grpo_runs)
    result = oc.pool(crl, grpo, StatsConfig(n_boot=cfg.n_boot, seed=cfg.seed))
    out = Path(cfg.out_dir) if cfg.out_dir else Path("runs") / f"curves-{time.strftime('%Y%m%d-%H%M%S')}"
    files = oc.write(result, out)
    ident = crl[0].info
    rep = Report(f"CRL vs GRPO at equal budget: {ident.task}, {ident.model}, layer {ident.layer}")
    curves_section(rep, result, out, "CRL vs GRPO")
    files["plot"] = out / PLOT
    return CurvesOutput(result, out, files, rep.write(out / "report.html"))
