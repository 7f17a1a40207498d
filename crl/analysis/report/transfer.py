"""The report section on transfer: the policy against no steering on task variants held out of its training, read
from <run_dir>/analysis/transfer.csv (written by `crl transfer`; definitions in crl/analysis/offline/transfer.py).
No file, no section: the report of a run nobody ran `crl transfer` on is unchanged."""

from __future__ import annotations

import pandas as pd

from crl.analysis.offline.transfer import ABLATION, ALPHA, HARM_MARGIN, PLAIN, read_transfer, read_transfer_settings
from crl.analysis.report.document import Report, para
from crl.logs.reader import RunDir


def transfer_section(rep: Report, run: RunDir) -> None:
    """Append the transfer table when `crl transfer` has written one for this run."""
    table = read_transfer(run.path)
    if table is None or table.empty:
        return
    s = rep.section("Transfer to held-out task variants")
    s.append(
        para(
            "Each variant: the same fresh test-split prompts with no steering and with the trained policy (greedy). "
            "held_out names the axes on which the variant leaves the training distribution (empty: the training "
            "distribution itself). diff = policy - none with a paired-bootstrap 95% CI; p = exact McNemar; steered = "
            f"share of prompts with a steered decision. Verdict: HARM when the CI's lower bound < -{HARM_MARGIN}, "
            f"GAIN when p < {ALPHA} and diff > 0, else TIE.",
            "note",
        )
    )
    settings = read_transfer_settings(run.path)
    if settings.get("trained"):
        s.append(para(f"Trained on: {settings['trained']}; {settings.get('n')} prompts asked per variant.", "note"))
    if settings.get("greedy_rule", "argmax") != "argmax":  # crl/agent/policy.py, greedy_columns
        s.append(para(f"The greedy policy picks by policy.greedy_rule={settings['greedy_rule']}.", "note"))
    policies = [m for m in (*PLAIN, *ABLATION) if m in table]
    if policies == list(ABLATION):
        fitted = (
            f" The run was trained without the rule; crl transfer fitted it (policy.abstain={settings.get('abstain')})."
            if settings.get("abstain_fitted_now")
            else ""
        )
        s.append(
            para(
                "crl_abstain: the policy with its abstention rule (policy.abstain: no steering where the residual is "
                "unlike the training sample); crl_no_abstain: the same policy without the rule (the ablation)."
                + fitted,
                "note",
            )
        )
    harmed = [f"{r['variant']} ({m})" for _, r in table.iterrows() for m in policies if r.get(f"{m}_verdict") == "HARM"]
    if harmed:
        s.append(para("Harm not ruled out on: " + ", ".join(harmed) + ".", "warn"))
    cols = ["variant", "held_out", "n", "none"]
    for m in policies:
        cols += [m, f"{m}_diff", f"{m}_lo", f"{m}_hi", f"{m}_p", f"{m}_steered", f"{m}_abstained", f"{m}_verdict"]
    shown = pd.DataFrame({c: table[c] for c in cols if c in table})
    tips = {"describe": "the variants each problem was drawn from"}
    rep.add_table(s, "transfer", shown, tips=tips)
