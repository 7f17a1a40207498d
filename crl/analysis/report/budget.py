"""Report section: val accuracy against rollouts consumed, CRL's val evaluations next to each baseline's selection
(`crl.analysis.offline.budget`), drawn and tabulated at fixed budgets."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from crl.analysis.offline.budget import BUDGETS, budget_table, method_budgets, run_curves
from crl.analysis.offline.curves import val_split
from crl.analysis.report.common import ordered
from crl.analysis.report.document import Report, para
from crl.analysis.report.plots import _empty, _figure, _save
from crl.logs.reader import RunDir

NOTE = (
    "Val accuracy against rollouts consumed (episodes, or one-token forwards for the letter prior). crl: each val "
    "evaluation, after the train episodes before it plus every val evaluation so far; baselines: each row of their "
    "selection scored on val, after every selection row so far (train rows cost rollouts, give no point); none: "
    "flat. The dashed lines are the best so far (what selecting on val reports with that budget). The table takes "
    "each method's best so far at the last point within the budget; the interval is a t-interval over run seeds "
    "(one run: none)."
)


def run_budgets(run: RunDir, selection: pd.DataFrame | None, val_split: str = "val") -> dict[str, int]:
    """Rollouts each method spent before the held-out split: crl its train episodes plus its val evaluations, a
    baseline its selection rows, none and random nothing."""
    eps = run.episodes
    crl = int((eps["phase"] == "train").sum() + (eps["phase"] == f"eval:{val_split}").sum())
    return {"crl": crl, "none": 0, "random": 0, **method_budgets(selection)}


def budget_plot(curves: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    fig, (ax,) = _figure(7.2, 3.8)
    if curves.empty:
        _empty(ax, "no val points (no val evaluations and no baseline selection rows)")
        return _save(fig, path)
    top = max(float(curves["rollouts"].max()), 1.0)
    groups = ordered({str(m): g for m, g in curves.groupby("method")})
    for i, (method, g) in enumerate(groups.items()):
        color = f"C{i}"
        g = g.sort_values("rollouts")
        # the best so far holds once a method stops spending (as `budget_table` reads it): drawn to the right edge
        x, best = [*g["rollouts"].tolist(), top], [*g["best"].tolist(), g["best"].iloc[-1]]
        ax.plot(g["rollouts"], g["accuracy"], "o", color=color, ms=3, alpha=0.6)
        ax.step(x, best, where="post", color=color, ls="--", label=method)
    ax.set_xscale("symlog", linthresh=100)
    ax.set_xlabel("rollouts consumed")
    ax.set_ylabel("val accuracy")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_title(title or "Val accuracy vs rollouts")
    return _save(fig, path)


def val_split_of(run: RunDir) -> str:
    """The run's `run.val_split` (its config.yaml), default val."""
    return val_split(run.config_text)


def budget_section(
    rep: Report, run: RunDir, out: Path, selection: pd.DataFrame | None, val_split: str | None = None
) -> pd.DataFrame:
    """The curve plot and the table at `BUDGETS`; returns the curves."""
    val_split = val_split or val_split_of(run)
    s = rep.section("Accuracy vs rollouts")
    s.append(para(NOTE, "note"))
    if selection is not None and "rollouts" not in selection.columns:
        s.append(
            para("The baseline selection table predates budgets; rerun `crl analyze env=true` for its curves.", "warn")
        )
        selection = None
    curves = run_curves(run, selection, val_split)
    rep.add_image(s, "budget_curves", budget_plot(curves, out / "budget_curves.png", f"{run.task}, {val_split}"))
    if not curves.empty:
        rep.add_table(s, "budget_table", budget_table(curves, BUDGETS))
    return curves
