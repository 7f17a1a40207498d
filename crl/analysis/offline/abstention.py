"""What other abstention thresholds would have done on `crl transfer`'s variants, computed offline.

The rule abstains where d(x) > tau (crl/agent/policy.py); `crl transfer` records r = d(x) / tau at the first decision
of each prompt's unsteered episode (`ood_ratio` in transfer_prompts.csv). When every episode is one decision (one-token
answers: compare), the policy with the rule at threshold m * tau is, on each prompt, exactly the unsteered episode if
r > m and the rule-free policy's (`crl_no_abstain`) otherwise: the decision's residual precedes any steering, and
greedy decoding is deterministic. So a grid of m needs no rollout. m = 1 is the fitted rule (`crl_abstain`), m = inf
no rule. Per variant and m: accuracy, diff vs none with the paired-bootstrap CI and exact McNemar p, the shares
abstained and steered, and the verdict, all as in crl/analysis/offline/transfer.py. With several decisions, later
residuals depend on earlier steering and the rule's earlier choices, so the ablation would not be exact: skipped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crl.analysis.offline.stats import StatsConfig
from crl.analysis.offline.text import text_table
from crl.analysis.offline.transfer import ABLATION, ABLATION_KEY, JSON, paired_verdict, policies_of

M_GRID = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, math.inf)
COLUMNS = ["variant", "m", "n", "none", "acc", "diff", "lo", "hi", "p", "abstained", "steered", "verdict"]


def m_label(m: float) -> str:
    return "inf" if math.isinf(m) else f"{m:g}"


def threshold_ablation(
    outcomes: pd.DataFrame,
    variants: list[dict[str, Any]],
    grid: tuple[float, ...] = M_GRID,
    cfg: StatsConfig | None = None,
) -> tuple[pd.DataFrame, str]:
    """(one row per (variant, m), in the order of `variants` then `grid`; a note). When the ablation does not apply
    the frame is empty and the note says why ("" for a policy without a rule: nothing to ablate)."""
    cfg = cfg or StatsConfig()
    empty = pd.DataFrame(columns=COLUMNS)
    if policies_of(outcomes) != ABLATION:
        return empty, ""
    if "ood_ratio" not in outcomes or "decisions" not in outcomes:
        return empty, (
            "abstention threshold ablation: not computed, the outcomes have no ood_ratio "
            "(written before crl transfer recorded it; rerun crl transfer)"
        )
    multi = outcomes[outcomes["decisions"] > 1]
    if len(multi):
        names = ", ".join(dict.fromkeys(multi["variant"].astype(str)))
        return empty, (
            f"abstention threshold ablation: skipped, not exact: episodes have up to {int(multi['decisions'].max())} "
            f"decisions ({names}); offline it is exact only when every episode is one decision"
        )
    rows = []
    for v in variants:
        o = outcomes[outcomes["variant"] == v["variant"]]
        if not len(o):
            continue
        none = o["none_correct"].to_numpy(dtype=bool)
        free = o["crl_no_abstain_correct"].to_numpy(dtype=bool)
        free_steered = o["crl_no_abstain_steered"].to_numpy(dtype=bool)
        ratio = o["ood_ratio"].to_numpy(dtype=float)
        for m in grid:
            off = np.nan_to_num(ratio, nan=-np.inf) > m  # nan (no decision): unsteered anyway
            acc = np.where(off, none, free)
            r = paired_verdict(acc, none, cfg)
            rows.append(
                {
                    "variant": v["variant"],
                    "m": float(m),
                    "n": len(o),
                    "none": float(none.mean()),
                    "acc": float(acc.mean()),
                    **{k: r[k] for k in ("diff", "lo", "hi", "p")},
                    "abstained": float(off.mean()),
                    "steered": float((free_steered & ~off).mean()),
                    "verdict": r["verdict"],
                }
            )
    return (pd.DataFrame(rows, columns=COLUMNS) if rows else empty), ""


def format_ablation(ablation: pd.DataFrame) -> str:
    """Two lines per variant: diff vs none with its verdict's initial (G/H/T) per m, then the share abstained."""
    grid = list(dict.fromkeys(ablation["m"]))
    head = ["variant", "", *(f"m={m_label(m)}" for m in grid)]
    lines = []
    for name, g in ablation.groupby("variant", sort=False):
        g = g.set_index("m")
        lines.append([str(name), "diff", *(f"{g.loc[m, 'diff']:+.3f} {g.loc[m, 'verdict'][0]}" for m in grid)])
        lines.append(["", "abstained", *(f"{100 * g.loc[m, 'abstained']:.0f}%" for m in grid)])
    title = (
        "abstention threshold ablation (offline): the rule abstains where d(x)/tau > m; m=1 is the fitted rule, "
        "m=inf no rule. diff vs none, verdict G(ain)/H(arm)/T(ie)"
    )
    return "\n".join([title, *text_table([head, *lines])])


def ablation_json(ablation: pd.DataFrame, note: str) -> dict[str, Any]:
    """The JSON form (transfer.json's ABLATION_KEY): m = inf is written "inf", NaN null."""
    records = json.loads(ablation.assign(m=[m_label(m) for m in ablation["m"]]).to_json(orient="records"))
    for r in records:  # numbers stay numbers
        r["m"] = r["m"] if r["m"] == "inf" else float(r["m"])
    return {"grid": sorted({m_label(m) for m in ablation["m"]}, key=float), "note": note, "rows": records}


def read_ablation(run_dir: str | Path) -> tuple[pd.DataFrame, str]:
    """(the ablation rows, the note) from <run_dir>/analysis/transfer.json; empty when absent."""
    try:
        data = json.loads((Path(run_dir) / "analysis" / JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return pd.DataFrame(columns=COLUMNS), ""
    block = data.get(ABLATION_KEY) if isinstance(data, dict) else None
    if not isinstance(block, dict):
        return pd.DataFrame(columns=COLUMNS), ""
    frame = pd.DataFrame(block.get("rows") or [], columns=COLUMNS)
    frame["m"] = frame["m"].astype(float)  # "inf" -> inf
    return frame, str(block.get("note") or "")
