"""Accuracy against rollouts consumed: CRL's val curve next to each baseline's selection, from logs only (no torch).

Curves (one row per point; columns method, seed, rollouts, accuracy, best, source):

- crl (`crl_curve`): one point per val evaluation of the run (phase `eval:<val>`, update u). rollouts = the train
  episodes of updates before u, plus (`count_val`, default) the val episodes of every evaluation up to and including
  u (picking the best checkpoint costs them, as it costs the baselines their val rows). accuracy = the val accuracy
  at u; best = the best so far (what `run.select=best_val` would report with that budget).
- selection baselines (`selection_curves`, from analysis/baseline_selection.csv of
  `crl.analysis.replay.baselines`): the rows in the order they were spent, each costing its `rollouts`; a point at
  each row scored on the val split (stage `...@<val>`), at the rollouts spent up to and including it. accuracy = that
  row's val accuracy, best = the best val row so far (static and corr: each coefficient tried on val; prompting:
  each candidate; letter_prior: its one val score). Train rows cost rollouts but give no point.
- none (`flat_curve`): no rollouts spent; a flat line at its val accuracy (phase `baseline:none:<val>`, else the
  prompting candidate `as_is` on val, which is the same unsteered model on the capped val prompts).

Each point names its `source`, where its per-prompt val outcomes are (`point_outcomes`): `update:<u>` (CRL's
eval episodes at update u), `row:<i>` (row i of baseline_selection.csv, its prompts in
analysis/baseline_val_outcomes.csv, written by `crl analyze env=true` since the baselines score the whole val split),
`phase:<phase>` (a logged phase's episodes). The study pairs methods by prompt through them.

`budget_table`: at fixed budgets (default 500, 2000, 8000 rollouts), each (method, seed)'s `best` at its last point
within the budget (none yet: left out), then the mean over seeds with a t-interval over seeds (95%; needs two
seeds; a run's deterministic baselines are one seed). Seeds are run seeds: pass the curves of several runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from crl.analysis.offline.stats import t_half_width
from crl.errors import CRLError
from crl.logs.reader import RunDir
from crl.logs.schema import BASELINE_VAL_OUTCOMES, VAL_OUTCOME_COLUMNS, Phase, base_id

BUDGETS = (500, 2000, 8000)
CURVE_COLUMNS = ["method", "seed", "rollouts", "accuracy", "best", "source"]
OUTCOME_COLUMNS = ["source", "prompt_id", "correct"]


def method_budgets(selection: pd.DataFrame | None) -> dict[str, int]:
    """Rollouts each baseline spent selecting or fitting (the sum of its selection rows); {} without rows."""
    if selection is None or selection.empty or "rollouts" not in selection.columns:
        return {}
    return {str(m): int(n) for m, n in selection.groupby("method", sort=False)["rollouts"].sum().items()}


def selection_curves(selection: pd.DataFrame, val_split: str = "val", seed: int = 0) -> pd.DataFrame:
    """Best-so-far val accuracy against rollouts for every method in a selection table (module docstring)."""
    if selection.empty:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    missing = [c for c in ("method", "stage", "accuracy", "rollouts") if c not in selection.columns]
    if missing:
        raise CRLError(
            f"the baseline selection table lacks {missing}; it was written before budgets were recorded, "
            "run the baselines again (`crl analyze env=true`)"
        )
    rows = []
    for method, g in selection.reset_index(drop=True).groupby("method", sort=False):
        spent, best = np.cumsum(g["rollouts"].to_numpy(dtype=float)), -np.inf
        for (i, r), x in zip(g.iterrows(), spent, strict=True):
            if str(r["stage"]).endswith(f"@{val_split}"):
                best = max(best, float(r["accuracy"]))
                point = {"rollouts": x, "accuracy": r["accuracy"], "best": best, "source": f"row:{i}"}
                rows.append({"method": method, "seed": seed, **point})
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def flat_curve(method: str, accuracy: float, seed: int = 0, source: str = "") -> pd.DataFrame:
    """A method that spends nothing: one point at 0 rollouts (`budget_table` carries it to every budget)."""
    point = {"rollouts": 0.0, "accuracy": accuracy, "best": accuracy, "source": source}
    return pd.DataFrame([{"method": method, "seed": seed, **point}], columns=CURVE_COLUMNS)


def crl_curve(run: RunDir, val_split: str = "val", count_val: bool = True) -> pd.DataFrame:
    """CRL's val accuracy against rollouts (module docstring); empty when the run logged no val evaluations."""
    evals = run.episodes_of(Phase.eval(val_split), latest=False)
    if evals.empty:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    train = run.episodes[run.episodes["phase"] == "train"]["update"].to_numpy()
    per = evals.groupby("update").agg(accuracy=("correct", "mean"), n=("correct", "size")).reset_index()
    per = per.sort_values("update")
    val_spent = np.cumsum(per["n"].to_numpy()) if count_val else np.zeros(len(per))
    rollouts = [float((train < u).sum() + v) for u, v in zip(per["update"], val_spent, strict=True)]
    acc = per["accuracy"].astype(float).to_numpy()
    return pd.DataFrame(
        {
            "method": "crl",
            "seed": int(run.info.seed),
            "rollouts": rollouts,
            "accuracy": acc,
            "best": np.maximum.accumulate(acc),
            "source": [f"update:{int(u)}" for u in per["update"]],
        },
        columns=CURVE_COLUMNS,
    )


def none_val_point(run: RunDir, selection: pd.DataFrame | None, val_split: str = "val") -> tuple[float, str] | None:
    """The unsteered model's val accuracy and its source: its logged baseline phase, else prompting's as_is row on
    val (the same unsteered model)."""
    phase = str(Phase.baseline("none", val_split))
    none = run.episodes_of(phase)
    if len(none):
        return float(none["correct"].mean()), f"phase:{phase}"
    if selection is not None and "candidate" in selection.columns:
        sel = selection.reset_index(drop=True)
        row = sel[(sel["candidate"] == "as_is") & (sel["stage"] == f"prompt@{val_split}")]
        if len(row):
            return float(row["accuracy"].iloc[0]), f"row:{row.index[0]}"
    return None


def run_curves(run: RunDir, selection: pd.DataFrame | None, val_split: str = "val") -> pd.DataFrame:
    """Every curve of one run: crl, none (flat) and the selection baselines, seeded with the run's seed."""
    seed = int(run.info.seed)
    parts = [crl_curve(run, val_split)]
    none = none_val_point(run, selection, val_split)
    if none is not None:
        accuracy, source = none
        parts.append(flat_curve("none", accuracy, seed, source))
    if selection is not None and not selection.empty:
        parts.append(selection_curves(selection, val_split, seed))
    parts = [p for p in parts if not p.empty]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=CURVE_COLUMNS)


def read_val_outcomes(run_dir: str | Path) -> pd.DataFrame | None:
    """analysis/baseline_val_outcomes.csv (columns row, prompt_id, correct, ...), or None when the run has none
    (analyzed before the baselines recorded per-prompt val outcomes)."""
    path = Path(run_dir) / BASELINE_VAL_OUTCOMES
    if not path.exists():
        return None
    df = pd.read_csv(path, dtype={"prompt_id": str})
    missing = [c for c in VAL_OUTCOME_COLUMNS[:3] if c not in df.columns]  # well_formed is not read
    if missing:
        raise CRLError(f"{path} lacks the columns {missing}; run the baselines again (`crl analyze env=true`)")
    return df


def point_outcomes(run: RunDir, val_split: str = "val") -> pd.DataFrame:
    """Per-prompt val outcomes of every point `run_curves` can name (columns source, prompt_id, correct): CRL's
    val evaluations, the logged none phase on val and the baselines' val rows. Prompt ids drop a `#k` repeat
    suffix, as the baselines log them."""
    parts = []
    evals = run.episodes_of(Phase.eval(val_split), latest=False)
    if len(evals):
        parts.append(evals.assign(source="update:" + evals["update"].astype(int).astype(str)))
    phase = str(Phase.baseline("none", val_split))
    none = run.episodes_of(phase)
    if len(none):
        parts.append(none.assign(source=f"phase:{phase}"))
    rows = read_val_outcomes(run.path)
    if rows is not None:
        parts.append(rows.assign(source="row:" + rows["row"].astype(int).astype(str)))
    if not parts:
        return pd.DataFrame(columns=OUTCOME_COLUMNS)
    out = pd.concat([p[OUTCOME_COLUMNS] for p in parts], ignore_index=True)
    out["prompt_id"] = out["prompt_id"].astype(str).map(base_id)
    out["correct"] = out["correct"].astype(float)
    return out


def best_point(curve: pd.DataFrame, budget: float) -> pd.Series | None:
    """The point that holds `best` at `budget`: the first, in rollouts order, with the highest val accuracy within
    the budget (the checkpoint or candidate best-so-far selection would have picked); None before the first point."""
    within = curve[curve["rollouts"] <= budget].sort_values("rollouts", kind="stable")
    if within.empty:
        return None
    return within.loc[within["accuracy"].astype(float).idxmax()]


def at_budget(curve: pd.DataFrame, budget: float) -> float:
    """`best` at the last point within `budget` rollouts (NaN when the first point costs more)."""
    within = curve[curve["rollouts"] <= budget]
    return float(within.sort_values("rollouts")["best"].iloc[-1]) if len(within) else float("nan")


def budget_table(curves: pd.DataFrame, budgets: Sequence[float] = BUDGETS, alpha: float = 0.05) -> pd.DataFrame:
    """Per method and budget: seeds with a point within it, mean best-so-far val accuracy, t-interval over seeds."""
    rows = []
    for method, g in curves.groupby("method", sort=False):
        for b in budgets:
            vals = np.array([at_budget(c, b) for _, c in g.groupby("seed")])
            vals = vals[~np.isnan(vals)]
            n = len(vals)
            mean = float(vals.mean()) if n else float("nan")
            half = t_half_width(vals, alpha)
            rows.append(
                {"method": method, "budget": b, "n_seeds": n, "accuracy": mean, "lo": mean - half, "hi": mean + half}
            )
    return pd.DataFrame(rows, columns=["method", "budget", "n_seeds", "accuracy", "lo", "hi"])
