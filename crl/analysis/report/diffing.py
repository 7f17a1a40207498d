"""The `crl rl-compare` report: which SAE features a GRPO fine-tune moved and whether CRL picked them, from a
`crl.analysis.diffing.diff.DiffResult` (the definitions are in crl/analysis/diffing/). Every feature id carries its
label and card link (`FeatureRefs`); cards.html and feature_index.html are written next to report.html."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from crl.analysis.diffing.diff import DiffResult
from crl.analysis.diffing.rankings import RANKINGS
from crl.analysis.report import plots
from crl.analysis.report.cards import FeatureRefs
from crl.analysis.report.curves import pair_section
from crl.analysis.report.document import Report, para

TOP = 20  # rows of each ranking shown
_RANKING_COLUMNS = [
    "shift",
    "shift_lo",
    "shift_hi",
    "shift_q",
    "projection",
    "attribution",
    "control_shift",
    "task_specific",
    "base_mean",
    "base_active",
    "rank_shift",
    "rank_projection",
    "rank_attribution",
]
_WHY = {
    "shift": "mean change of the feature's activation at the decision position (tuned - base), paired-bootstrap 95% "
    "CI over prompts, Benjamini-Hochberg q over all features",
    "projection": "the mean residual shift projected on the feature's unit decoder direction",
    "attribution": "the feature's shift times the base model's gradient of the answer margin along its decoder "
    "direction (per prompt, then averaged): its first-order share of the margin's change",
}


def _features_text(refs: FeatureRefs, ids: str) -> str:
    """A comma-separated list of ids in running text, each with its label."""
    if ids is None or (not isinstance(ids, str) and pd.isna(ids)) or not str(ids).strip():
        return ""
    return "; ".join(refs.describe(int(f)) for f in str(ids).split(","))


def diffing_report(result: DiffResult, refs: FeatureRefs, out: Path, title: str | None = None) -> Path:
    """report.html (and the card pages) in `out`; returns report.html's path."""
    s = result.summary
    settings = s["settings"]
    rep = Report(title or f"rl-compare: {settings['tuned']} vs {settings['base']} on {settings['task']}")
    head = rep.section("Verdict")
    head.append("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in result.verdict) + "</ul>")
    for w in s.get("warnings", []):
        head.append(para(w, "warn"))
    head.append(refs.note_html())
    shown = {k: settings[k] for k in ("base", "tuned", "task", "hook", "d_sae", "n_prompts", "n_control_tokens")}
    if s.get("crl"):
        shown.update({"crl_run": s["crl"]["name"], "crl_decisions": s["crl"]["decisions"]})
    rep.add_table(head, "settings", pd.DataFrame([shown]))

    moved = rep.section("What GRPO moved")
    sh, fit = s["shift"], s["fit"]
    glob = pd.DataFrame(
        [
            {
                "text": "task prompts (decision)",
                "norm": sh["delta_norm"],
                "relative": sh["delta_rel"],
                "p": sh["delta_p"],
            },
            {
                "text": "unrelated text (every token)",
                "norm": sh["control_delta_norm"],
                "relative": sh["control_delta_rel"],
                "p": sh["control_delta_p"],
            },
        ]
    )
    moved.append(
        para(
            "Mean residual shift (tuned - base) at the SAE's layer: its norm, relative to the base residual's mean "
            f"norm, and a sign-flip permutation p-value. Cosine of the two shifts: {sh['cos_task_control']:.3f}; the "
            f"features' decoded shift has cosine {sh['sae_cos_of_shift']:.3f} with the task shift (norm ratio "
            f"{sh['sae_norm_ratio']:.2f}).",
            "note",
        )
    )
    rep.add_table(moved, "shift", glob)
    fit_rows = pd.DataFrame(
        [
            {
                "residuals": where,
                "base": fit[f"{where}_base"],
                "tuned": fit[f"{where}_tuned"],
                "drop": fit[f"{where}_drop"],
            }
            for where in ("task", "control")
        ]
    )
    moved.append(
        para(
            "SAE fit: explained variance on base and tuned residuals, relative to the base model's variance on "
            f"unrelated text; a drop over {fit['margin']} is flagged.",
            "note",
        )
    )
    rep.add_table(moved, "fit", fit_rows)
    picked = set() if result.crl_usage is None else {int(f) for f in result.crl_usage["feature"]}
    top_ids = [int(f) for f in result.features.sort_values("rank_shift")["feature"].head(TOP)]
    bars = plots.moved_features_bars(
        result.features, Path(out) / "moved_features.png", picked, {f: refs.label(f) for f in top_ids}
    )
    rep.add_image(moved, "moved_features", bars)
    for name in RANKINGS:
        table = result.features
        if table[name].isna().all():
            moved.append(para(f"Ranking by {name}: not available (the task has no answer options).", "note"))
            continue
        top = refs.annotate(table.sort_values(f"rank_{name}").head(TOP))
        moved.append(para(f"Top {TOP} by |{name}|: {_WHY[name]}.", "note"))
        rep.add_table(moved, f"top_{name}", top, columns=[*refs.columns(), *_RANKING_COLUMNS], **refs.table_kw())

    if result.crl_usage is not None:
        crl = rep.section("Did CRL pick them?")
        crl.append(
            para(
                "CRL's picks at its eval decisions: amplify and suppress counts, net = amplify - suppress. overlap@k: "
                "the share of CRL's k most picked features among GRPO's top k of each ranking; null: random features "
                "of the same density deciles. tau_b: Kendall's tau-b of CRL's net picks and the ranking's signed score "
                "over both sets; sign_agree: over CRL's features in the ranking's top, the share where CRL's sign "
                "matches the direction GRPO moved them (binomial test against 1/2).",
                "note",
            )
        )
        usage = refs.annotate(result.crl_usage.head(TOP))
        rep.add_table(
            crl,
            "crl_usage",
            usage,
            columns=[*refs.columns(), "picks", "amplify", "suppress", "net", "share"],
            **refs.table_kw(),
        )
        if result.overlap is not None:
            ov = result.overlap.assign(shared=[_features_text(refs, x) for x in result.overlap["shared"]])
            rep.add_table(crl, "overlap", ov)
        if result.agreement is not None:
            rep.add_table(crl, "agreement", result.agreement)
        cos = s.get("steering_cosine")
        if cos:
            crl.append(
                para(
                    f"Cosine of CRL's average steering vector with GRPO's mean shift: {cos['cos']:.3f} "
                    f"(density-matched random features: {cos['null_mean']:.3f}, p = {cos['null_p']:.3g}; "
                    f"{cos['n_features']} features).",
                )
            )

    if result.causal is not None:
        c = rep.section("Causal checks")
        c.append(
            para(
                "Scored from the option letters' logits at the decision position. share = recovered (an intervention "
                "on the base model) or lost (on the tuned model) share of GRPO's gain, in margin and in accuracy, with "
                "bootstrap 95% CIs; null: the same coefficients on random density-matched features, rescaled to the "
                "same norm per prompt. letter_prior: a constant shift per option letter. patch_all / patch_last: the "
                "base residual patched into the tuned model at every position / at the decision position.",
                "note",
            )
        )
        table = result.causal.assign(features=[_features_text(refs, x) for x in result.causal["features"]])
        rep.add_table(c, "causal", table)

    side = rep.section("Side effects")
    se = s["side_effects"]
    side.append(
        para(
            f"Next-token KL(base || tuned): {se['kl_control_mean']:.4g} nats per token on unrelated text (max "
            f"{se['kl_control_max']:.3g}; the most likely token changes at {100 * se['top1_changed_control']:.1f}% "
            f"of tokens), {se['kl_task_mean']:.4g} at the task's decisions (max {se['kl_task_max']:.3g})."
        )
    )
    out = Path(out)
    if settings.get("crl_run") and settings.get("grpo_run"):  # the pair's val curves at equal budget (curves.py)
        pair_section(rep, settings["crl_run"], settings["grpo_run"], out)
    refs.write_pages(out, f"Features of {rep.title}")
    return rep.write(out / "report.html")
