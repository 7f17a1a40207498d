"""What each feature a run steered with does to the next token, read back from the run directory (no torch).

`crl.analysis.replay.steer_effects` measures it with the model and writes <run_dir>/analysis/feature_effects.json:

    {"run", "phase", "sae_identity", "model", "coef", "coef_mode", "split", "n_features_left_out", ...,
     "features": {"<feature id>": [{"level", "coef", "kl_neutral", "kl_task", "top1_changed_neutral",
                                    "top1_changed_task", "n_neutral", "n_task", "n_uses",
                                    "promotes": [[token, delta_logprob], ...], "demotes": [...]}, ...]}}

one entry per level the run's eval phase used the feature at. This module picks those (feature, level) pairs from
the eval rows (`used_levels`), reads the file back (`read_effects_record`, `read_feature_effects`) and makes the
report's table (`effects_table`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from crl.errors import CRLError
from crl.logs.schema import NO_STEER

EFFECTS_FILE = "analysis/feature_effects.json"
SHOWN_TOKENS = 3  # tokens per promotes/demotes cell of the table
TABLE_COLUMNS = [
    "feature",
    "level",
    "coef",
    "n_uses",
    "kl_neutral",
    "kl_task",
    "top1_changed_neutral",
    "top1_changed_task",
    "promotes",
    "demotes",
]


def level_of(coef: float, run_coef: float) -> int | float:
    """The coefficient level (steering.coef_levels entry) of a logged coefficient c * l: l = c*l / c, an int
    when whole (the default levels are +1 and -1)."""
    if not run_coef:
        raise CRLError("the run's steering.coef is 0, so its levels cannot be recovered; check run.json's coef")
    level = round(float(coef) / float(run_coef), 6)
    return int(level) if level.is_integer() else level


def used_levels(
    steps: pd.DataFrame, run_coef: float, max_features: int = 30
) -> tuple[dict[int, dict[int | float, int]], int]:
    """The (feature, level) pairs some intervention rows used, with how often: ({feature: {level: n_rows}},
    features left out). Features most used first (ties: lower id), capped at `max_features`; each feature's
    levels most used first. No-steer rows are not features."""
    steered = steps[steps["feature"] != NO_STEER]
    if steered.empty:
        return {}, 0
    levels = [level_of(c, run_coef) for c in steered["coef"]]
    counts = pd.DataFrame({"feature": steered["feature"].astype(int).to_numpy(), "level": levels})
    per = counts.groupby(["feature", "level"]).size().rename("n").reset_index()
    total = per.groupby("feature")["n"].sum().reset_index()
    order = total.sort_values(["n", "feature"], ascending=[False, True])["feature"].tolist()
    out: dict[int, dict[int | float, int]] = {}
    for f in order[:max_features]:
        rows = per[per["feature"] == f].sort_values(["n", "level"], ascending=[False, False])
        out[int(f)] = {lv: int(n) for lv, n in zip(rows["level"], rows["n"], strict=True)}
    return out, max(0, len(order) - max_features)


def read_effects_record(run_dir: str | Path) -> dict[str, Any] | None:
    """The whole feature_effects.json of a run (module docstring), or None when it was not measured."""
    return read_measurement(Path(run_dir) / EFFECTS_FILE, "features", dict)


def read_measurement(path: Path, key: str, kind: type) -> dict[str, Any] | None:
    """A measurement `crl analyze` stored as JSON (feature_effects.json, causal.json), None when it is missing; a
    damaged one, or one without its `key` of type `kind`, is a one-line error that says how to measure it again."""
    if not path.exists():
        return None
    again = "delete it and re-run `crl analyze` to measure it again"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise CRLError(f"{path} is not valid JSON; {again}") from None
    if not isinstance(record, dict) or not isinstance(record.get(key), kind):
        raise CRLError(f"{path} has no '{key}' {'list' if kind is list else 'object'}; {again}")
    return record


def read_feature_effects(run_dir: str | Path) -> dict[int, list[dict[str, Any]]] | None:
    """Feature id -> its measured levels (one dict per level, fields as in the module docstring), or None when
    the run's steering effects were not measured."""
    record = read_effects_record(run_dir)
    return None if record is None else _by_feature(record)


def _by_feature(record: Mapping[Any, Any]) -> dict[int, list[dict[str, Any]]]:
    features = record.get("features", record)  # a whole record, or its features map
    return {int(f): list(levels) for f, levels in features.items()}


def tokens_text(pairs: list[list[Any]] | list[tuple[str, float]], n: int = SHOWN_TOKENS) -> str:
    """The first `n` (token, delta log-prob) pairs as a short string: `' A' +2.31, 'B' +1.90`."""
    return ", ".join(f"{tok!r} {float(d):+.2f}" for tok, d in list(pairs)[:n])


def effects_table(record: Mapping[Any, Any]) -> pd.DataFrame:
    """One row per feature x level of a record (a whole feature_effects.json, or `read_feature_effects`'s map):
    feature, level, coef, n_uses, KL and top-1 changes on neutral and task prompts, and the top
    `SHOWN_TOKENS` promoted / demoted tokens as short strings. Rows in the record's order (most used first)."""
    rows = []
    for f, levels in _by_feature(record).items():
        for e in levels:
            rows.append(
                {
                    "feature": f,
                    "level": e["level"],
                    "coef": float(e["coef"]),
                    "n_uses": e.get("n_uses"),
                    "kl_neutral": float(e["kl_neutral"]),
                    "kl_task": float(e["kl_task"]),
                    "top1_changed_neutral": float(e["top1_changed_neutral"]),
                    "top1_changed_task": float(e["top1_changed_task"]),
                    "promotes": tokens_text(e["promotes"]),
                    "demotes": tokens_text(e["demotes"]),
                }
            )
    df = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    return df if df["n_uses"].notna().any() else df.drop(columns="n_uses")
