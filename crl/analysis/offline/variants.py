"""Accuracy per task variant: for a task family (crl/envs/tasks/family.py), the held-out split's accuracy broken down by
wording, direction and range, because an overall number hides a policy that helps on one wording and harms another.

From the logged episodes alone (each family episode's `meta` carries `wording`, `kind` = the direction, and `range`).
Phases, on one split: `none` = baseline:none:<split> (no steering), `selected` = eval:<split> (the selected policy),
`last` = baseline:last:<split> (the last update's policy, logged when selection picked another); of each, the latest
update. Only axes with at least two values in the split are reported; a task whose episodes carry no family fields
gives an empty table. Per (axis, value), one row:

- per phase: accuracy over its episodes, `<phase>_n` episodes and the Wilson 95% interval (`<phase>_lo`, `_hi`);
- diff = selected - none over the prompts both ran, with the paired-bootstrap 95% CI, p = exact McNemar and the
  verdict of `crl transfer` (HARM, UNSURE, GAIN, TIE), all from `transfer.paired_verdict`.

`crl train` prints one line per row under its overall accuracy and stores the rows in summary.json (`SUMMARY_KEY`);
the report shows the table (crl/analysis/report/variants.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crl.analysis.offline.stats import StatsConfig, wilson
from crl.analysis.offline.transfer import paired_verdict
from crl.logs import schema
from crl.logs.atomic import atomic_write_json
from crl.logs.reader import read_jsonl
from crl.logs.schema import Phase

AXES = (("wording", "wording"), ("direction", "kind"), ("range", "range"))  # (axis, its key in an episode's meta)
FAMILY_KEYS = ("wording", "range")  # only a family task's episodes carry these (crl/envs/tasks/compare.py)
SUMMARY_KEY = "variants"


def phases(split: str) -> dict[str, str]:
    """Role -> phase name on `split` (module docstring)."""
    return {
        "none": str(Phase.baseline("none", split)),
        "selected": str(Phase.eval(split)),
        "last": str(Phase.baseline("last", split)),
    }


def _family_rows(episodes: pd.DataFrame, phase: str) -> pd.DataFrame:
    """The phase's latest-update episodes that carry family fields, with their meta as a column of dicts."""
    if "meta" not in episodes or "phase" not in episodes:
        return episodes.iloc[0:0]
    df = episodes[episodes["phase"] == phase]
    if len(df) and "update" in df:
        df = df[df["update"] == df["update"].max()]
    meta = pd.Series([m if isinstance(m, dict) else {} for m in df["meta"]], index=df.index, dtype=object)
    keep = np.array([any(k in m for k in FAMILY_KEYS) for m in meta], dtype=bool)
    return df.assign(meta=meta)[keep]


def _per_prompt(df: pd.DataFrame) -> pd.Series:
    return df.assign(_c=df["correct"].astype(float)).groupby(df["prompt_id"].astype(str))["_c"].mean()


def variant_table(episodes: pd.DataFrame, split: str = "test", cfg: StatsConfig | None = None) -> pd.DataFrame:
    """One row per (axis, value) that varies on `split` (module docstring); empty when no episode of the split's
    phases carries family fields. `episodes`: rows of episodes.jsonl (columns phase, update, prompt_id, correct,
    meta), e.g. `RunDir.episodes`.

    >>> variant_table(pd.DataFrame({"phase": ["eval:test"], "update": [0], "prompt_id": ["p"], "correct": [True],
    ...                             "meta": [{"kind": "add"}]})).empty
    True
    """
    cfg = cfg or StatsConfig()
    by_role = {role: _family_rows(episodes, ph) for role, ph in phases(split).items()}
    by_role = {role: df for role, df in by_role.items() if len(df)}
    rows: list[dict[str, Any]] = []
    for axis, key in AXES:
        values = sorted({str(m[key]) for df in by_role.values() for m in df["meta"] if m.get(key) is not None})
        if len(values) < 2:
            continue
        for value in values:
            row: dict[str, Any] = {"axis": axis, "value": value}
            sub = {r: df[np.array([str(m.get(key)) == value for m in df["meta"]])] for r, df in by_role.items()}
            for role, d in sub.items():
                k, n = int(d["correct"].astype(bool).sum()), len(d)
                lo, hi = wilson(k, n, cfg.alpha)
                row.update({role: k / n if n else math.nan, f"{role}_lo": lo, f"{role}_hi": hi, f"{role}_n": n})
            if "none" in sub and "selected" in sub:
                a, b = _per_prompt(sub["selected"]), _per_prompt(sub["none"])
                shared = a.index.intersection(b.index)
                if len(shared):
                    r = paired_verdict(a[shared].to_numpy(), b[shared].to_numpy(), cfg)
                    row.update({"diff": r["diff"], "diff_lo": r["lo"], "diff_hi": r["hi"], "p": r["p"]})
                    row.update({"n_paired": r["n"], "verdict": r["verdict"]})
            rows.append(row)
    return pd.DataFrame(rows)


def records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows as JSON-ready dicts (NaN -> None)."""
    return json.loads(table.to_json(orient="records")) if len(table) else []


def _num(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and np.isnan(x)) else float(x)


def format_lines(rows: list[dict[str, Any]], prefix: str = "[crl]   ") -> list[str]:
    """One line per variant, under `crl train`'s overall line: before (no steering), after (the selected policy),
    their paired difference with its 95% CI and verdict, and n (the selected policy's episodes).

    >>> format_lines([{"axis": "wording", "value": "pick", "none": 0.5, "selected": 0.75, "selected_n": 8,
    ...                "diff": 0.25, "diff_lo": 0.0, "diff_hi": 0.5, "verdict": "TIE"}])
    ['[crl]   wording pick  before 0.500  after 0.750  diff +0.250 [+0.000, +0.500] TIE   (n=8)']
    """
    labels = [f"{r['axis']} {r['value']}" for r in rows]
    width = max((len(s) for s in labels), default=0)
    acc = lambda x: "  -  " if _num(x) is None else f"{x:.3f}"  # noqa: E731
    out = []
    for label, r in zip(labels, rows, strict=True):
        line = f"{prefix}{label:<{width}}  before {acc(r.get('none'))}  after {acc(r.get('selected'))}"
        if _num(r.get("diff")) is not None:
            line += f"  diff {r['diff']:+.3f} [{r['diff_lo']:+.3f}, {r['diff_hi']:+.3f}] {r['verdict']:<4}"
        n = r.get("selected_n")
        out.append(f"{line}  (n={int(n) if _num(n) is not None else 0})")
    return out


def record_variants(run_dir: str | Path, split: str, cfg: StatsConfig | None = None) -> list[dict[str, Any]]:
    """The rows of a finished run's `split`, stored in its summary.json under `SUMMARY_KEY` (an atomic rewrite that
    keeps every other key as it was). A task without family fields: [] and summary.json is left untouched."""
    run_dir = Path(run_dir)
    wanted = set(phases(split).values())
    rows = [r for r in read_jsonl(run_dir / schema.EPISODES) if r.get("phase") in wanted]
    out = records(variant_table(pd.DataFrame(rows), split, cfg)) if rows else []
    if out:
        path = run_dir / schema.SUMMARY
        summary = json.loads(path.read_text(encoding="utf-8"))
        summary[SUMMARY_KEY] = out
        atomic_write_json(path, summary)
    return out
