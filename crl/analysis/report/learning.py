"""Report section on learning: the val curve, what was selected, and the train/val/test gap."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from crl.analysis.report import plots
from crl.analysis.report.document import Report, para
from crl.logs.reader import RunDir


def learning_section(rep: Report, run: RunDir, out: Path) -> None:
    sel = run.summary.get("selection")
    s = rep.section("Learning")
    if not sel:
        s.append(para("This run has no val evaluations (run.eval_every=0 or an older run).", "warn"))
        return
    val = pd.DataFrame(sel["val_curve"])
    m = run.metrics
    train = pd.DataFrame(
        {
            "update": m["update"],
            "reward": m.get("charts/mean_reward"),
            "noop_share": m.get("charts/noop_share"),
        }
    ).dropna()
    chosen = sel["selected_update"]
    rep.add_image(s, "learning_curve", plots.learning_curve(val, train, out / "learning_curve.png", chosen, run.name))
    best = val.loc[val["accuracy"].idxmax()] if len(val) else None
    rule = "best val accuracy (ties: earlier update)" if sel["rule"] == "best_val" else "the last update"
    text = f"Selection rule: {rule}. Selected update {chosen} of {sel['last_update']}"
    if sel.get("stopped_early"):
        text += " (stopped early: no better val accuracy for run.patience evaluations)"
    if best is not None and sel.get("val_before") is not None:
        text += f"; val accuracy {sel['val_before']:.3f} at update 0 (untrained), best {best['accuracy']:.3f}."
    if chosen == 0:
        text += " No trained policy beat the untrained one on val, so the reported policy does not steer."
    s.append(para(text))
    gap = [{"split": "train (sample)", **_acc(sel.get("train_selected"))}]
    if sel.get("val_selected") is not None:
        gap.append({"split": "val", "accuracy": sel["val_selected"]})
    gap.append({"split": run.summary.get("split", "test"), **_acc(run.summary.get("after"))})
    if sel.get("test_last"):
        gap.append(
            {"split": f"{run.summary.get('split', 'test')} (last policy, not selected)", **_acc(sel["test_last"])}
        )
    rep.add_table(s, "generalization_gap", pd.DataFrame(gap))
    s.append(para("A train accuracy far above val and test means the policy memorised train prompts."))
    rep.add_table(s, "val_curve", val)


def _acc(d: dict | None) -> dict:
    if not d:
        return {}
    return {k: d[k] for k in ("accuracy", "well_formed", "noop_share", "steers_per_episode", "n") if k in d}
