"""The report section on transfer: the policy against no steering on task variants held out of its training, read
from <run_dir>/analysis/transfer.csv (written by `crl transfer`; definitions in crl/analysis/offline/transfer.py).
No file, no section: the report of a run nobody ran `crl transfer` on is unchanged. With an abstention rule, also
the offline ablation of its threshold (crl/analysis/offline/abstention.py), drawn. `forest_plot` draws
`crl transfer run_dirs=`'s pooled table (crl/analysis/offline/transfer_pool.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from crl.analysis.offline.abstention import m_label, read_ablation
from crl.analysis.offline.transfer import (
    ABLATION,
    ALPHA,
    HARM_MARGIN,
    NOT_SAFE,
    PLAIN,
    RATIO_QUANTILES,
    read_transfer,
    read_transfer_settings,
)
from crl.analysis.offline.transfer_pool import ARMS, Pooled
from crl.analysis.report.document import Report, para
from crl.analysis.report.plots import _figure, _save
from crl.logs.reader import RunDir

PLOT = "transfer_abstention.png"


def threshold_plot(ablation: pd.DataFrame, path: str | Path) -> Path:
    """diff vs none against the threshold multiplier m, one line per variant with its 95% CI band; m on an even
    grid (inf last), a vertical line at m = 1 (the fitted rule)."""
    grid = sorted(set(ablation["m"]))
    x = {m: i for i, m in enumerate(grid)}
    fig, (ax,) = _figure(8.4, 3.8)
    for name, g in ablation.groupby("variant", sort=False):
        xs = [x[m] for m in g["m"]]
        (line,) = ax.plot(xs, g["diff"], marker="o", ms=3, label=str(name))
        ax.fill_between(xs, g["lo"], g["hi"], color=line.get_color(), alpha=0.15)
    finite = [m for m in grid if np.isfinite(m)]
    if finite and finite[0] <= 1 <= finite[-1]:
        ax.axvline(
            float(np.interp(1.0, finite, range(len(finite)))), color="gray", ls="--", lw=1, label="m = 1: fitted tau"
        )
    ax.axhline(0, color="#444444", lw=0.8)
    ax.axhline(-HARM_MARGIN, color="#c44e52", ls=":", lw=0.8, label=f"-{HARM_MARGIN} (harm margin)")
    ax.set_xticks(range(len(grid)), ["∞ (no rule)" if not np.isfinite(m) else m_label(m) for m in grid])
    ax.set_xlabel("threshold multiplier m: abstain where d(x) > m·tau")
    ax.set_ylabel("accuracy diff vs no steering (95% CI)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))  # outside, off the lines
    ax.set_title("What other abstention thresholds would have done (offline)", fontsize=10)
    return _save(fig, path)


def transfer_section(rep: Report, run: RunDir, out: str | Path | None = None) -> None:
    """Append the transfer table when `crl transfer` has written one for this run; plots go to `out` (default
    <run>/analysis)."""
    table = read_transfer(run.path)
    if table is None or table.empty:
        return
    s = rep.section("Transfer to held-out task variants")
    s.append(
        para(
            "Each variant: the same fresh test-split prompts with no steering and with the trained policy (greedy). "
            "held_out names the axes on which the variant leaves the training distribution (empty: the training "
            "distribution itself). diff = policy - none with a paired-bootstrap 95% CI; p = exact McNemar; steered = "
            f"share of prompts with a steered decision. Verdict: when the CI's lower bound < -{HARM_MARGIN}, HARM if "
            f"diff < 0, else UNSURE (harm not ruled out); GAIN when p < {ALPHA} and diff > 0; else TIE.",
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
    harmed = [
        f"{r['variant']} ({m})" for _, r in table.iterrows() for m in policies if r.get(f"{m}_verdict") in NOT_SAFE
    ]
    if harmed:
        s.append(para("Harm not ruled out on: " + ", ".join(harmed) + ".", "warn"))
    cols = ["variant", "held_out", "n", "none"]
    for m in policies:
        cols += [m, f"{m}_diff", f"{m}_lo", f"{m}_hi", f"{m}_p", f"{m}_steered", f"{m}_abstained", f"{m}_verdict"]
    cols += [c for c, _ in RATIO_QUANTILES]
    shown = pd.DataFrame({c: table[c] for c in cols if c in table})
    tips = {"describe": "the variants each problem was drawn from"}
    tips.update({c: f"{q:.0%} quantile over prompts of d(x)/tau (> 1: abstains)" for c, q in RATIO_QUANTILES})
    rep.add_table(s, "transfer", shown, tips=tips)
    ablation, note = read_ablation(run.path)
    if note:
        s.append(para(note + ".", "note"))
    if ablation.empty:
        return
    s.append(
        para(
            "Abstention threshold ablation, computed from the outcomes above without new rollouts (exact: every "
            "episode is one decision): at threshold m·tau the rule abstains on a prompt iff d(x)/tau > m, and the "
            "prompt's outcome is then no steering's, else crl_no_abstain's. m = 1: crl_abstain; m = ∞: crl_no_abstain. "
            "Cells: diff vs none, verdict, share abstained.",
            "note",
        )
    )
    rep.add_image(s, "transfer_abstention", threshold_plot(ablation, Path(out or run.path / "analysis") / PLOT))
    cell = lambda r: f"{r['diff']:+.3f} {r['verdict']}, {r['abstained']:.0%}"  # noqa: E731
    pivot = ablation.assign(cell=ablation.apply(cell, axis=1), m=[f"m={m_label(m)}" for m in ablation["m"]])
    wide = pivot.pivot(index="variant", columns="m", values="cell")
    wide = wide.loc[list(dict.fromkeys(ablation["variant"])), list(dict.fromkeys(pivot["m"]))].reset_index()
    rep.add_table(s, "transfer_abstention", wide)


def forest_plot(pooled: Pooled, path: str | Path) -> Path:
    """The pooled transfer over seeds, one panel per arm, one row per variant (top to bottom in the table's order):
    each seed's diff vs no steering (a point per run), the pooled diff with its prompt-bootstrap 95% CI (black), the
    seed t 95% CI below it (grey, 3+ seeds), a line at 0 and one at -margin."""
    arms, table = pooled.arms, pooled.table
    variants = list(dict.fromkeys(table["variant"]))
    fig, axes = _figure(4.6 * len(arms) + 1.8, 0.55 * len(variants) + 1.6, ncols=len(arms))
    names = [r.name for r in pooled.runs]
    colors = [f"C{i % 10}" for i in range(len(names))]
    offsets = np.linspace(-0.18, 0.18, len(names)) if len(names) > 1 else np.zeros(1)
    for ax, arm in zip(axes, arms, strict=True):
        rows = table[table["arm"] == arm].set_index("variant")
        for y, v in enumerate(variants):
            r = rows.loc[v]
            for k, d in enumerate(r["per_seed"]):
                ax.plot(d, y + offsets[k], "o", ms=4, color=colors[k], alpha=0.8, label=names[k] if y == 0 else None)
            if r["seed_t_lo"] == r["seed_t_lo"]:
                ax.plot(
                    [r["seed_t_lo"], r["seed_t_hi"]],
                    [y + 0.32] * 2,
                    color="#999999",
                    lw=2.5,
                    alpha=0.6,
                    label="seed t 95% CI" if y == 0 else None,
                )
            ax.errorbar(
                r["diff"],
                y,
                xerr=[[r["diff"] - r["lo"]], [r["hi"] - r["diff"]]],
                fmt="D",
                color="black",
                ms=5,
                capsize=3,
                label="pooled, 95% CI (prompts, seeds fixed)" if y == 0 else None,
            )
        ax.axvline(0, color="#444444", lw=0.8)
        ax.axvline(-pooled.margin, color="#c44e52", ls=":", lw=0.9, label=f"-{pooled.margin:g} (harm margin)")
        ax.set_yticks(range(len(variants)))
        held = rows["held_out"]
        ax.set_yticklabels([f"{v} (held out)" if held[v] else v for v in variants], fontsize=8)
        ax.set_ylim(len(variants) - 0.5, -0.6)
        ax.set_xlabel("accuracy diff vs no steering")
        ax.set_title(f"{arm} ({ARMS.get(arm, arm)})", fontsize=10)
    lims = [ax.get_xlim() for ax in axes]  # one x scale, so the arms compare by eye
    for ax in axes:
        ax.set_xlim(min(lo for lo, _ in lims), max(hi for _, hi in lims))
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _save(fig, path)
