"""What moved from base to tuned, read through the SAE: the global shift, the SAE's fit, and three feature rankings.

Definitions (task prompts p = 1..n at their decision positions; h the residual at the SAE's hook, a its SAE code,
d_i = W_dec[i], u_i = d_i / ||d_i||; g_p = d margin_p / d h on the base model, margin = gold option's logit minus
the best other option's):

- mean residual shift delta = mean_p (h_tuned - h_base); its size ||delta|| and relative size ||delta|| / mean_p
  ||h_base||; `sign_flip_test` p-value of "the paired differences have mean 0" (random signs per prompt).
- generic drift: the same on the control text (every token but each sequence's first), delta_control, and
  cos(delta, delta_control); a shift that is as large on unrelated text is not task-specific.
- how well the SAE's features reproduce the shift: the cosine of delta with the decoded shift sum_i shift_i d_i and
  their norm ratio (a TopK SAE swaps features in and out, so the decoded shift can be longer than delta, or point
  elsewhere when much of the change lies in the SAE's error term).
- fit: the SAE's explained variance 1 - mean ||h - h_hat||^2 / V on base and on tuned residuals (task decisions and
  control tokens), V the variance of the base model's residuals on the control text (`measure.Measured`). Past
  `EV_MARGIN` lower on the tuned model, the SAE reads the tuned model worse than the one it was trained on, and
  feature-level readings of the change lose weight (a warning).

Rankings, each ordering features by |score| (rank 1 the largest; ties by id); the table keeps the signed scores:
- shift: Delta a_i = mean_p (a_tuned - a_base)[p, i], with a paired-bootstrap 95% CI and p-value over prompts
  (`stats.bootstrap_columns`) and a Benjamini-Hochberg q-value over all features;
- projection: <delta, u_i>;
- attribution: mean_p (a_tuned - a_base)[p, i] * <g_p, d_i>, the first-order share of feature i's shift in the
  margin's change (per prompt, then averaged); NaN for a task without answer options.
A ranking's direction (the sign CRL's amplify/suppress is compared with) is sign(Delta a_i) for shift and
attribution and sign(<delta, u_i>) for projection. The table also holds each feature's shift on the control text and
task_specific = shift - control_shift.

Torch-free: arrays in, tables out.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from crl.analysis.offline.stats import StatsConfig, bh_qvalues, bootstrap_columns, sign_flip_test

RANKINGS = ("shift", "projection", "attribution")
# A tuned model whose explained variance is more than this below the base model's is read worse by the SAE. The
# shipped SAEs explain 0.92-0.975 of held-out variance (README), so 0.05 is about the gap between the best and the
# worst shipped layer: a drop that large changes which SAE one would trust.
EV_MARGIN = 0.05


def unit_rows(decoder: np.ndarray) -> np.ndarray:
    """Decoder rows scaled to unit norm.

    >>> unit_rows(np.array([[3.0, 4.0]])).tolist()
    [[0.6, 0.8]]
    """
    return decoder / np.maximum(np.linalg.norm(decoder, axis=1, keepdims=True), 1e-12)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two vectors; NaN when either is 0.

    >>> cosine(np.array([1.0, 0.0]), np.array([1.0, 1.0]))
    0.7071067811865475
    """
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else float("nan")


def rank_by_magnitude(scores: np.ndarray) -> np.ndarray:
    """Rank of each entry by |score| (1 the largest; ties by index; NaN last).

    >>> rank_by_magnitude(np.array([0.1, -3.0, 2.0, 0.0])).tolist()
    [3, 1, 2, 4]
    """
    mag = np.nan_to_num(np.abs(np.asarray(scores, dtype=float)), nan=-1.0)
    order = np.lexsort((np.arange(len(mag)), -mag))
    ranks = np.empty(len(mag), dtype=int)
    ranks[order] = np.arange(1, len(mag) + 1)
    return ranks


def global_shift(
    h_base: np.ndarray,
    h_tuned: np.ndarray,
    hc_base: np.ndarray,
    hc_tuned: np.ndarray,
    decoder: np.ndarray,
    shift: np.ndarray,
    n_perm: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """The mean residual shift on the task and on the control text (module docstring)."""
    d = h_tuned - h_base
    delta = d.mean(axis=0)
    dc = hc_tuned - hc_base
    delta_c = dc.mean(axis=0)
    norm, norm_c = float(np.linalg.norm(delta)), float(np.linalg.norm(delta_c))
    seen = decoder.T @ shift
    return {
        "delta": delta,
        "delta_norm": norm,
        "delta_rel": norm / max(float(np.linalg.norm(h_base, axis=1).mean()), 1e-12),
        "mean_shift_norm": float(np.linalg.norm(d, axis=1).mean()),  # every change, not only the common part
        "delta_p": sign_flip_test(d, n_perm, seed),
        "control_delta_norm": norm_c,
        "control_delta_rel": norm_c / max(float(np.linalg.norm(hc_base, axis=1).mean()), 1e-12),
        "control_delta_p": sign_flip_test(dc, n_perm, seed),
        "cos_task_control": cosine(delta, delta_c),
        "sae_cos_of_shift": cosine(delta, seen),
        "sae_norm_ratio": float(np.linalg.norm(seen)) / norm if norm > 0 else float("nan"),
    }


def fit_check(ev: dict[str, float], margin: float = EV_MARGIN) -> dict[str, Any]:
    """Explained variance on base vs tuned residuals; `warning` is set when the tuned one is `margin` lower.

    >>> fit_check({"task_base": 0.95, "task_tuned": 0.85, "control_base": 0.9, "control_tuned": 0.9})["ok"]
    False
    """
    out: dict[str, Any] = dict(ev)
    problems = []
    for where in ("task", "control"):
        b, t = ev.get(f"{where}_base", float("nan")), ev.get(f"{where}_tuned", float("nan"))
        out[f"{where}_drop"] = b - t
        if b - t > margin:
            problems.append(f"{where} {b:.3f} -> {t:.3f}")
    out["margin"] = margin
    out["ok"] = not problems
    out["warning"] = (
        "the SAE explains the tuned model's residual worse than the base model's ("
        + "; ".join(problems)
        + f", explained variance, more than {margin} lower): feature-level readings of the change are less reliable"
        if problems
        else None
    )
    return out


def feature_table(
    a_base: np.ndarray,
    a_tuned: np.ndarray,
    decoder: np.ndarray,
    delta: np.ndarray,
    grad: np.ndarray | None = None,
    ac_base: np.ndarray | None = None,
    ac_tuned: np.ndarray | None = None,
    cfg: StatsConfig | None = None,
) -> pd.DataFrame:
    """One row per feature: the three rankings' scores and ranks, the shift's CI, p and q (module docstring)."""
    cfg = cfg or StatsConfig()
    da = a_tuned - a_base
    shift = da.mean(axis=0)
    lo, hi, p = bootstrap_columns(da, cfg)
    projection = unit_rows(decoder) @ delta
    if grad is not None:
        along = grad @ decoder.T  # (n, d_sae): <g_p, d_i>
        attribution = (da * along).mean(axis=0)
        grad_along = along.mean(axis=0)
    else:
        attribution = grad_along = np.full(len(shift), np.nan)
    control = (ac_tuned - ac_base).mean(axis=0) if ac_base is not None and len(ac_base) else np.full(len(shift), np.nan)
    table = pd.DataFrame(
        {
            "feature": np.arange(len(shift)),
            "shift": shift,
            "shift_lo": lo,
            "shift_hi": hi,
            "shift_p": p,
            "shift_q": bh_qvalues(p),
            "projection": projection,
            "attribution": attribution,
            "grad_along": grad_along,
            "control_shift": control,
            "task_specific": shift - control,
            "base_mean": a_base.mean(axis=0),
            "tuned_mean": a_tuned.mean(axis=0),
            "base_active": (a_base > 0).mean(axis=0),
        }
    )
    for name in RANKINGS:
        table[f"rank_{name}"] = rank_by_magnitude(table[name].to_numpy())
    return table


def direction(table: pd.DataFrame, ranking: str) -> np.ndarray:
    """The sign a ranking gives each feature (module docstring): +1 raised, -1 lowered, 0 unmoved."""
    col = "projection" if ranking == "projection" else "shift"
    return np.sign(table[col].to_numpy())


def top(table: pd.DataFrame, ranking: str, k: int) -> list[int]:
    """The ids of a ranking's `k` top features among those it scores nonzero (fewer when fewer moved; none when the
    ranking is undefined, e.g. attribution without answer options)."""
    moved = table[table[ranking].fillna(0) != 0]
    return [int(f) for f in moved.sort_values(f"rank_{ranking}")["feature"].head(k)]
