"""A seed committee's transfer: `crl transfer 'committee=[a,b,c]'` (crl/commands/transfer.py; the committee:
crl/agent/committee.py, its rollouts: crl/run/transfer_committee.py) scored as one policy, the arm `committee`.

The per-variant table is the single run's (`transfer.transfer_table`: none vs committee, diff with its paired-bootstrap
95% CI, McNemar p, the verdict at the harm margin, the share of prompts steered, and `committee_abstained`, the share of
prompts where the committee withheld steering for disagreement at some decision), with per variant:

- agreed_<k>: the share of prompts whose first decision had k members behind one action (no steering counts as an
  action: members that all decline agree), k from the number of members down to 1; with agree=answer, k members
  behind one parsed answer of their own episodes;
- committee_disagreed_decisions: the share of all the variant's decisions withheld for disagreement;

and issue #19's acceptance on the committee (`transfer_pool.acceptance_of`): every held-out variant's lo >= -margin,
and some held-out wording with a gain. Torch-free. Files: <out>/transfer_committee.csv (one row per variant),
transfer_committee.json (the rows, the settings and the members, the acceptance) and transfer_committee_prompts.csv (per
prompt: the outcomes, committee_agreed, committee_votes, committee_disagreed, committee_decisions).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from crl.analysis.offline.stats import StatsConfig
from crl.analysis.offline.transfer import ALPHA, HARM_MARGIN, fmt_pct, transfer_table, write_transfer
from crl.analysis.offline.transfer_pool import acceptance_line, acceptance_of

ARM = "committee"
STEM = "transfer_committee"
JSON = f"{STEM}.json"


def committee_table(
    outcomes: pd.DataFrame, variants: list[dict[str, Any]], n_members: int, cfg: StatsConfig | None = None
) -> pd.DataFrame:
    """`transfer_table` with the agreement columns (module docstring)."""
    table = transfer_table(outcomes, variants, cfg)
    for k in range(n_members, 0, -1):
        table[f"agreed_{k}"] = [
            float((outcomes.loc[outcomes["variant"] == v, f"{ARM}_agreed"] == k).mean()) for v in table["variant"]
        ]
    shares = []
    for v in table["variant"]:
        o = outcomes[outcomes["variant"] == v]
        decisions = int(o[f"{ARM}_decisions"].sum())
        shares.append(float(o[f"{ARM}_disagreed"].sum()) / decisions if decisions else float("nan"))
    table[f"{ARM}_disagreed_decisions"] = shares
    return table


def committee_acceptance(
    table: pd.DataFrame, margin: float = HARM_MARGIN, alpha: float = ALPHA
) -> tuple[dict[str, Any], str]:
    """Issue #19's acceptance on the committee's rows, and its line."""
    rows = table.rename(columns={f"{ARM}_{k}": k for k in ("diff", "lo", "p")}).fillna({"held_out": ""})
    acc = acceptance_of(rows, margin, alpha)
    label = f"{ARM} (steers only where the members agree)"
    return acc, acceptance_line(label, acc, rows.set_index("variant"), margin, alpha)


def format_agreement(table: pd.DataFrame, n_members: int, quorum: int, agree: str = "action") -> str:
    """Per variant, how many members agreed (on the first decision's action, or on the answer) and the decisions
    withheld for disagreement."""
    ks = range(n_members, 0, -1)
    on = "at the first decision" if agree == "action" else "on the answer"
    head = f"members agreeing {on} ({'|'.join(map(str, ks))} of {n_members}; quorum {quorum})"
    lines = [f"{head}, decisions withheld for disagreement:"]
    width = max(len(str(v)) for v in table["variant"])
    for _, r in table.iterrows():
        shares = "|".join(fmt_pct(r[f"agreed_{k}"]) for k in ks)
        withheld = fmt_pct(r[f"{ARM}_disagreed_decisions"])
        lines.append(f"  {str(r['variant']).ljust(width)}  {shares}  withheld {withheld}")
    return "\n".join(lines)


def write_committee(
    out: str | Path,
    table: pd.DataFrame,
    outcomes: pd.DataFrame,
    settings: dict[str, Any],
    acceptance: tuple[dict[str, Any], str],
) -> dict[str, Path]:
    """transfer_committee.csv, .json and _prompts.csv in `out` (atomically); returns their paths."""
    acc, line = acceptance
    return write_transfer(out, table, outcomes, settings, stem=STEM, extra={"acceptance": acc, "acceptance_line": line})
