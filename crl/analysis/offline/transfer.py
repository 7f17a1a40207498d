"""Transfer: does a trained policy's gain, and its "do no harm", hold on variants of its task it was not trained on?

`crl transfer` (crl/commands/transfer.py) runs n fresh test-split prompts of each variant (crl/envs/tasks/family.py)
greedily with no steering and with the trained policy, twice when the policy has an abstention rule (policy.abstain:
with it, `crl_abstain`, and without it, `crl_no_abstain`, the ablation); this module turns the per-prompt outcomes into
the table. Per variant and policy:

- accuracy of no steering (`none`) and of the policy;
- diff = acc(policy) - acc(none), with the paired-bootstrap 95% CI over prompts (`stats.paired_bootstrap`) and the
  exact McNemar p-value (`stats.mcnemar_exact`);
- steered: the share of prompts where the policy steered at least one decision; abstained: the share where the
  rule forced at least one decision to "no steering";
- verdict: when the CI's lower bound is below -HARM_MARGIN (a loss of more than 2 points is not ruled out), HARM if
  diff < 0, else UNSURE (no loss measured, none ruled out either: do no harm is not shown); else GAIN when p < ALPHA
  and diff > 0, else TIE. Do no harm holds on GAIN and TIE;
- with a rule: how far the variant is from the training sample, the 10th, 50th and 90th percentile over prompts of
  d(x) / tau at the first decision (`ood_ratio`; > 1: the rule abstains). What other thresholds would have done:
  crl/analysis/offline/abstention.py, under the key `abstention_ablation` of transfer.json.

Torch-free: it reads outcomes, not models. Files: <run_dir>/analysis/transfer.csv (one row per variant),
transfer.json (the same rows and the settings) and transfer_prompts.csv (the per-prompt outcomes).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crl.analysis.offline.stats import StatsConfig, mcnemar_exact, paired_bootstrap
from crl.analysis.offline.text import text_table
from crl.errors import CRLError
from crl.logs.atomic import atomic_write_bytes, atomic_write_json

HARM_MARGIN = 0.02  # a CI reaching below -0.02 cannot rule out harm
NOT_SAFE = ("HARM", "UNSURE")  # the verdicts on which do no harm is not shown
ALPHA = 0.05
CSV, JSON, PROMPTS_CSV = "transfer.csv", "transfer.json", "transfer_prompts.csv"
ABLATION_KEY = "abstention_ablation"  # transfer.json: the threshold ablation (crl/analysis/offline/abstention.py)
RATIO_QUANTILES = (("ood_ratio_p10", 0.1), ("ood_ratio_median", 0.5), ("ood_ratio_p90", 0.9))
# Policy columns of the outcomes: one policy, or the abstention ablation (policy.abstain).
PLAIN = ("crl",)
ABLATION = ("crl_abstain", "crl_no_abstain")
COMMITTEE = ("committee",)  # a seed committee (crl/analysis/offline/transfer_committee.py)


def verdict(diff: float, lo: float, p: float, margin: float = HARM_MARGIN, alpha: float = ALPHA) -> str:
    """HARM / UNSURE / GAIN / TIE (module docstring).

    >>> verdict(0.14, -0.02 - 0.01, 0.03)  # a gain whose CI still reaches a 3-point loss
    'UNSURE'
    """
    if lo < -margin:
        return "HARM" if diff < 0 else "UNSURE"
    if p < alpha and diff > 0:
        return "GAIN"
    return "TIE"


def paired_verdict(a: np.ndarray, b: np.ndarray, cfg: StatsConfig | None = None) -> dict[str, Any]:
    """a (a policy) against b (no steering), paired per prompt (correctness, or its mean over a prompt's episodes):
    diff, lo, hi (paired bootstrap), n, p (exact McNemar; a mean > 0.5 counts as right) and the verdict.

    >>> r = paired_verdict(np.array([1.0, 1.0, 0.0]), np.array([0.0, 1.0, 0.0]))
    >>> r["diff"] == 1 / 3, r["n"], r["p"]
    (True, 3, 1.0)
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    pt = paired_bootstrap(a, b, cfg)
    p = mcnemar_exact(a > 0.5, b > 0.5).p
    return {"diff": pt.diff, "lo": pt.lo, "hi": pt.hi, "n": pt.n, "p": p, "verdict": verdict(pt.diff, pt.lo, p)}


def policies_of(outcomes: pd.DataFrame) -> tuple[str, ...]:
    """The policy columns present: ("crl",), the ablation ("crl_abstain", "crl_no_abstain") or ("committee",)."""
    if all(f"{m}_correct" in outcomes for m in ABLATION):
        return ABLATION
    if "crl_correct" in outcomes:
        return PLAIN
    if "committee_correct" in outcomes:
        return COMMITTEE
    raise CRLError("transfer outcomes hold no policy column (crl_correct); they were not written by crl transfer")


def transfer_table(
    outcomes: pd.DataFrame, variants: list[dict[str, Any]], cfg: StatsConfig | None = None
) -> pd.DataFrame:
    """One row per variant (in the order of `variants`: dicts with variant, held_out, describe) from per-prompt
    outcomes (variant, prompt_id, none_correct, <policy>_correct, <policy>_steered[, crl_abstain_abstained])."""
    cfg = cfg or StatsConfig()
    policies = policies_of(outcomes)
    rows = []
    for v in variants:
        o = outcomes[outcomes["variant"] == v["variant"]]
        if o["prompt_id"].duplicated().any():
            raise CRLError(f"variant {v['variant']} repeats a prompt; transfer pairs each prompt once")
        none = o["none_correct"].to_numpy(dtype=float)
        row: dict[str, Any] = {
            "variant": v["variant"],
            "held_out": v.get("held_out", ""),
            "describe": v.get("describe", ""),
            "n": len(o),
            "none": float(none.mean()) if len(o) else math.nan,
        }
        for m in policies:
            acc = o[f"{m}_correct"].to_numpy(dtype=float)
            row[m] = float(acc.mean()) if len(o) else math.nan
            if len(o):
                r = paired_verdict(acc, none, cfg)
                row.update({f"{m}_{k}": r[k] for k in ("diff", "lo", "hi", "p", "verdict")})
            row[f"{m}_steered"] = float(o[f"{m}_steered"].mean()) if len(o) else math.nan
            if f"{m}_abstained" in o:
                row[f"{m}_abstained"] = float(o[f"{m}_abstained"].mean()) if len(o) else math.nan
        if "ood_ratio" in o:
            r = o["ood_ratio"].astype(float).dropna()
            row.update({c: float(r.quantile(q)) if len(r) else math.nan for c, q in RATIO_QUANTILES})
        rows.append(row)
    return pd.DataFrame(rows)


def fmt_pct(x: float) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f}%"


def fmt_p(p: float) -> str:
    return "<1e-4" if p < 1e-4 else f"{p:.4f}" if p < 0.01 else f"{p:.3f}"


def format_table(table: pd.DataFrame) -> str:
    """The table as plain text, one line per (variant, policy), for stdout."""
    policies = [m for m in (*PLAIN, *ABLATION, *COMMITTEE) if m in table]
    head = [
        "variant",
        "held out",
        "n",
        "none",
        "policy",
        "acc",
        "diff [95% CI]",
        "p",
        "steered",
        "abstained",
        "verdict",
    ]
    ratios = "ood_ratio_median" in table
    if ratios:
        head.append("d/tau p10|med|p90")
    lines = []
    for _, r in table.iterrows():
        for i, m in enumerate(policies):
            ci = (
                f"{r[f'{m}_diff']:+.3f} [{r[f'{m}_lo']:+.3f}, {r[f'{m}_hi']:+.3f}]"
                if f"{m}_diff" in r and r["n"]
                else ""
            )
            lines.append(
                [
                    str(r["variant"]),
                    str(r["held_out"] or "-"),
                    str(int(r["n"])),
                    f"{r['none']:.3f}",
                    m,
                    f"{r[m]:.3f}",
                    ci,
                    fmt_p(r[f"{m}_p"]) if ci else "",
                    fmt_pct(r[f"{m}_steered"]),
                    fmt_pct(r.get(f"{m}_abstained")) if f"{m}_abstained" in r else "",
                    str(r.get(f"{m}_verdict", "")),
                ]
            )
            if ratios:  # per variant: on its first line
                qs = [r[c] for c, _ in RATIO_QUANTILES]
                lines[-1].append("|".join(f"{q:.2f}" for q in qs) if i == 0 and not any(q != q for q in qs) else "")
    return "\n".join(text_table([head, *lines]))


def write_transfer(
    out_dir: str | Path,
    table: pd.DataFrame,
    outcomes: pd.DataFrame,
    settings: dict[str, Any],
    ablation: dict[str, Any] | None = None,
    stem: str = "transfer",
    extra: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """transfer.csv, transfer.json and transfer_prompts.csv in `out_dir` (written atomically); returns their paths.
    `ablation`: the threshold ablation's JSON form (abstention.ablation_json), under ABLATION_KEY. `stem` names the
    files (<stem>.csv, .json, <stem>_prompts.csv); `extra`: more keys for the JSON."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / f"{stem}.csv", "json": out / f"{stem}.json", "prompts": out / f"{stem}_prompts.csv"}
    atomic_write_bytes(paths["csv"], table.to_csv(index=False).encode())
    atomic_write_bytes(paths["prompts"], outcomes.to_csv(index=False).encode())
    records = json.loads(table.to_json(orient="records"))  # NaN -> null
    data = {**settings, "harm_margin": HARM_MARGIN, "alpha": ALPHA, "variants": records}
    if ablation is not None:
        data[ABLATION_KEY] = ablation
    data.update(extra or {})
    atomic_write_json(paths["json"], data)
    return paths


def read_transfer(run_dir: str | Path) -> pd.DataFrame | None:
    """<run_dir>/analysis/transfer.csv, or None when `crl transfer` has not been run on this run."""
    path = Path(run_dir) / "analysis" / CSV
    if not path.exists():
        return None
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def read_transfer_settings(run_dir: str | Path) -> dict[str, Any]:
    """The settings `crl transfer` recorded in transfer.json ({} when absent or unreadable)."""
    path = Path(run_dir) / "analysis" / JSON
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if k not in ("variants", ABLATION_KEY)} if isinstance(data, dict) else {}
