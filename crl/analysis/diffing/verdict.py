"""The plain-language verdict of `crl rl-compare`, computed from its numbers (one sentence per finding).

Thresholds, each stated where it is used: `ALPHA` for every test; a shift smaller than `MIN_REL_SHIFT` of the
residual's norm counts as no change whatever its p-value; generic drift when the control text moved at least
`DRIFT_RATIO` as far as the task prompts; a letter prior that recovers `PRIOR_SHARE` of the margin gain explains it.
Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from crl.analysis.offline.transfer import fmt_pct

ALPHA = 0.05
MIN_REL_SHIFT = 1e-3  # ||delta|| / mean ||h||: below this a shift is numerical noise, not a change
DRIFT_RATIO = 0.5  # control shift / task shift at or above this: much of the change is generic drift
PRIOR_SHARE = 0.8  # a letter prior recovering this share of the margin gain: the gain is a first-token prior
PATCH_TOLERANCE = 0.05  # a patch removing at least 1 - this of the gain removes all of it


def headline_k(ks: list[int]) -> int:
    """The k the verdict quotes: 10 when computed, else the smallest.

    >>> headline_k([5, 10, 20]), headline_k([3, 7])
    (10, 3)
    """
    return 10 if 10 in ks else min(ks)


def _pct(x: float) -> str:
    return fmt_pct(x) or "n/a"  # transfer's format; a missing share reads n/a here (fmt_pct gives "")


def _p(p: float) -> str:
    return "n/a" if p is None or np.isnan(p) else (f"p = {p:.3f}" if p >= 1e-3 else "p < 0.001")


def _row(table: pd.DataFrame | None, **match: Any) -> pd.Series | None:
    if table is None or table.empty:
        return None
    sel = table
    for k, v in match.items():
        sel = sel[sel[k] == v]
    return None if sel.empty else sel.iloc[0]


def verdict(
    summary: dict[str, Any],
    features: pd.DataFrame,
    overlap: pd.DataFrame | None = None,
    causal: pd.DataFrame | None = None,
    describe: Callable[[int], str] = str,
) -> list[str]:
    """Sentences that say what the numbers say (module docstring); `describe` names a feature (id and label)."""
    s, fit, gain = summary["shift"], summary["fit"], summary.get("gain")
    layer, k = summary["settings"]["layer"], headline_k(summary["settings"]["ks"])
    out = []
    moved = s["delta_p"] < ALPHA and s["delta_rel"] >= MIN_REL_SHIFT
    if not moved:
        out.append(
            f"GRPO did not measurably change the residual at layer {layer} on the task prompts (mean shift "
            f"{_pct(s['delta_rel'])} of the residual's norm, {_p(s['delta_p'])})."
        )
    else:
        drift = s["control_delta_rel"] / s["delta_rel"] if s["delta_rel"] else float("nan")
        kind = (
            "much of it is generic drift (unrelated text moved about as much"
            if drift >= DRIFT_RATIO
            else "it is mostly task-specific (unrelated text moved less"
        )
        out.append(
            f"GRPO moved the residual at layer {layer} on the task prompts by {_pct(s['delta_rel'])} of its norm "
            f"({_p(s['delta_p'])}); {kind}: {_pct(s['control_delta_rel'])}, cosine {s['cos_task_control']:.2f} "
            "with the task shift)."
        )
        n_sig = int((features["shift_q"] < ALPHA).sum())
        shown = features.sort_values("rank_shift").head(3)
        names = ", ".join(f"{describe(int(r.feature))} ({r.shift:+.3g})" for r in shown.itertuples())
        out.append(
            f"{n_sig} SAE features shifted significantly (FDR q < {ALPHA}); the most moved: {names}. Decoded, the "
            f"features' shifts point along the mean residual shift with cosine {s['sae_cos_of_shift']:.2f}."
        )
    if not fit["ok"]:
        out.append("Caution: " + fit["warning"] + ".")
    if gain is None:
        out.append("The task has no answer options, so GRPO's gain and the causal checks are not measured.")
    else:
        out.append(
            f"GRPO's gain on these prompts: accuracy (the answer option with the highest logit) "
            f"{gain['acc_base']:.3f} -> {gain['acc_tuned']:.3f} "
            f"({gain['acc_diff']:+.3f} [{gain['acc_lo']:+.3f}, {gain['acc_hi']:+.3f}], McNemar "
            f"{_p(gain['mcnemar_p'])}); answer margin {gain['margin_base']:+.2f} -> {gain['margin_tuned']:+.2f}."
        )
    ov = _row(overlap, ranking="shift", k=k)
    if not moved and overlap is not None:
        out.append("Nothing moved measurably, so there is nothing for CRL's features to agree with.")
    elif ov is not None:
        better = ov["null_p"] < ALPHA and ov["overlap"] > ov["null_mean"]
        out.append(
            f"CRL's {int(ov['n_crl'])} most picked features: {_pct(ov['overlap'])} are among GRPO's top {k} moved "
            f"features, against {_pct(ov['null_mean'])} for density-matched random features ({_p(ov['null_p'])}): "
            + (
                "CRL picked features that GRPO moved."
                if better
                else "no more than chance, so CRL and GRPO do not visibly rely on the same features."
            )
        )
    cos = summary.get("steering_cosine")
    if moved and cos and cos["cos"] is not None and not np.isnan(cos["cos"]):
        aligned = cos["null_p"] < ALPHA
        out.append(
            f"CRL's average steering vector has cosine {cos['cos']:+.2f} with GRPO's mean shift (density-matched "
            f"random features: {cos['null_mean']:+.2f}, {_p(cos['null_p'])})"
            + (": they push the residual the same way." if aligned and cos["cos"] > 0 else ".")
        )
    if causal is not None and gain is not None:
        out += _causal_sentences(causal, gain, layer, k)
    side = summary["side_effects"]
    out.append(
        f"Side effects: next-token KL(base || tuned) on unrelated text {side['kl_control_mean']:.3g} nats per token "
        f"(the most likely token changes at {_pct(side['top1_changed_control'])} of tokens), against "
        f"{side['kl_task_mean']:.3g} at the task's decisions."
    )
    return out


def _causal_sentences(causal: pd.DataFrame, gain: dict[str, Any], layer: int, k: int) -> list[str]:
    if not (gain["margin_diff"] > 0 and gain["margin_p"] < ALPHA):
        return [
            "GRPO did not significantly raise the answer margin, so the recovered and lost shares of its gain are not "
            "interpreted."
        ]
    out = []
    steer, clamp = _row(causal, intervention="steer_moved", k=k), _row(causal, intervention="clamp_crl", k=k)
    if steer is None:
        steer = _row(causal, intervention="steer_moved")
    if clamp is None and "clamp_crl" in set(causal["intervention"]):
        clamp = causal[causal["intervention"] == "clamp_crl"].iloc[-1]
    if steer is not None:
        out.append(
            f"Adding GRPO's top {int(steer['k'])} moved features to the base model (each at its mean shift) recovers "
            f"{_pct(steer['share_margin'])} of the margin gain [{_pct(steer['share_margin_lo'])}, "
            f"{_pct(steer['share_margin_hi'])}] (random features of the same norm: {_pct(steer['null_mean'])}, "
            f"{_p(steer['null_p'])})."
        )
    if clamp is not None:
        out.append(
            f"Clamping CRL's top {len(str(clamp['features']).split(','))} features to their base values inside the "
            f"tuned model loses {_pct(clamp['share_margin'])} of the margin gain [{_pct(clamp['share_margin_lo'])}, "
            f"{_pct(clamp['share_margin_hi'])}] (random features: {_pct(clamp['null_mean'])}, {_p(clamp['null_p'])})."
        )
    prior = _row(causal, intervention="letter_prior")
    if prior is not None:
        explained = prior["share_margin"] >= PRIOR_SHARE
        out.append(
            f"A constant shift of the option letters' logits recovers {_pct(prior['share_margin'])} of the margin "
            f"gain and {_pct(prior['share_accuracy'])} of the accuracy gain"
            + (": the gain is largely a first-token letter prior." if explained else ": more than a letter prior.")
        )
    patch = _row(causal, intervention="patch_all")
    last = _row(causal, intervention="patch_last")
    if patch is not None:
        share = float(patch["share_margin"])
        where = (
            f"the other {_pct(1 - share)} is made downstream of the layer"
            if share < 1 - PATCH_TOLERANCE
            else "the residual at this layer carries the whole change"
        )
        out.append(
            f"Patching the base model's residual into the tuned model at layer {layer} removes {_pct(share)} of the "
            f"margin gain at every position and {_pct(last['share_margin']) if last is not None else 'n/a'} at the "
            f"decision position alone: {where}."
        )
    return out
