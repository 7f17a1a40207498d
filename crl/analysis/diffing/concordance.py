"""Did CRL pick the features GRPO moved? CRL's usage from its eval intervention rows against the three rankings of
`crl.analysis.diffing.rankings`, each against a null of random features matched on activation density.

Definitions (one SAE; CRL's eval decisions):
- usage: per feature, picks (decisions that steered with it), amplify / suppress picks (sign of the logged
  coefficient c*l), net = amplify - suppress, share = picks / all decisions (no-steering ones included). C_k: CRL's
  min(k, number used) most picked features.
- overlap@k = |C_k & G_k| / |C_k|, G_k a ranking's top k: the share of CRL's top features among GRPO's top k.
  Null: C_k replaced by random features of the same density deciles (`agreement.DensityMatcher`, distinct); p =
  (1 + #{null >= observed}) / (1 + n_null).
- rank agreement: Kendall's tau-b between CRL's net usage (0 where unused) and the ranking's signed score
  (direction * |score|) over the union of CRL's used features and the ranking's top max(k), with its p-value.
- sign agreement: over CRL's used features with net != 0 that are in the ranking's top max(k), the share whose CRL
  sign (+ amplify, - suppress) equals the ranking's direction (raised, lowered); binomial test against 1/2
  (one-sided: more agreement than chance).
- steering cosine: cos(delta, v_CRL), delta the mean residual shift, v_CRL = sum over CRL's picks of its steering
  vector / decisions (raw: c*l*W_dec[a]; relative: c*l*||x||*W_dec[a]/||W_dec[a]||, ||x|| the logged residual norm).
  Null: each feature of v_CRL replaced by a density-matched random one, weights kept; p as above.

Torch-free: tables and arrays in, tables out.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from crl.analysis.diffing.rankings import RANKINGS, cosine, direction, top, unit_rows
from crl.analysis.offline.agreement import DensityMatcher
from crl.errors import CRLError
from crl.logs.schema import NO_STEER

USAGE_COLUMNS = ["feature", "picks", "amplify", "suppress", "net", "share"]


def crl_usage(steps: pd.DataFrame) -> pd.DataFrame:
    """CRL's picks per feature (module docstring), most picked first.

    >>> steps = pd.DataFrame({"feature": [3, 3, 5, -1], "coef": [1.0, -1.0, 2.0, 0.0]})
    >>> crl_usage(steps)[["feature", "picks", "net"]].values.tolist()
    [[3, 2, 0], [5, 1, 1]]
    """
    if steps.empty:
        raise CRLError("the CRL run has no eval intervention rows; run `crl eval` on it first")
    steered = steps[steps["feature"] != NO_STEER]
    sign = np.sign(steered["coef"].astype(float))
    df = pd.DataFrame({"feature": steered["feature"].astype(int), "amp": sign > 0, "sup": sign < 0})
    g = df.groupby("feature")
    out = pd.DataFrame({"picks": g.size(), "amplify": g["amp"].sum(), "suppress": g["sup"].sum()}).reset_index()
    out["net"] = out["amplify"] - out["suppress"]
    out["share"] = out["picks"] / len(steps)
    out = out.astype({"picks": int, "amplify": int, "suppress": int, "net": int})
    return out.sort_values(["picks", "feature"], ascending=[False, True], ignore_index=True)[USAGE_COLUMNS]


def steering_vector(steps: pd.DataFrame, decoder: np.ndarray, coef_mode: str) -> np.ndarray:
    """CRL's expected steering vector per decision (module docstring).

    >>> steps = pd.DataFrame({"feature": [0, -1], "coef": [2.0, 0.0], "resid_norm": [3.0, 3.0]})
    >>> steering_vector(steps, np.array([[0.0, 2.0]]), "raw").tolist()
    [0.0, 2.0]
    >>> steering_vector(steps, np.array([[0.0, 2.0]]), "relative").tolist()
    [0.0, 3.0]
    """
    weights = _weights(steps, coef_mode)
    rows = unit_rows(decoder) if coef_mode == "relative" else decoder
    vec = np.zeros(decoder.shape[1])
    for f, w in weights.items():
        vec += w * rows[f]
    return vec / max(len(steps), 1)


def _weights(steps: pd.DataFrame, coef_mode: str) -> dict[int, float]:
    steered = steps[steps["feature"] != NO_STEER]
    w = steered["coef"].astype(float)
    if coef_mode == "relative":
        w = w * steered["resid_norm"].astype(float)
    return {int(f): float(v) for f, v in w.groupby(steered["feature"].astype(int)).sum().items()}


def overlap_table(
    usage: pd.DataFrame,
    table: pd.DataFrame,
    matcher: DensityMatcher,
    ks: list[int],
    n_null: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """overlap@k per ranking and k, with the density-matched null (module docstring)."""
    rows = []
    used = [int(f) for f in usage["feature"]]
    for name in RANKINGS:
        for k in ks:
            grpo = set(top(table, name, k))
            crl = used[:k]
            if not grpo or not crl:
                continue
            obs = len(grpo.intersection(crl)) / len(crl)
            rng = np.random.default_rng([seed, k])
            null = np.array([len(grpo.intersection(matcher.sample(rng, crl))) / len(crl) for _ in range(n_null)])
            rows.append(
                {
                    "ranking": name,
                    "k": k,
                    "n_crl": len(crl),
                    "overlap": obs,
                    "shared": ", ".join(str(f) for f in crl if f in grpo),
                    "null_mean": float(null.mean()),
                    "null_p": float((1 + (null >= obs - 1e-12).sum()) / (1 + n_null)),
                }
            )
    return pd.DataFrame(rows, columns=["ranking", "k", "n_crl", "overlap", "shared", "null_mean", "null_p"])


def agreement_table(usage: pd.DataFrame, table: pd.DataFrame, k_max: int) -> pd.DataFrame:
    """Kendall's tau-b and sign agreement per ranking (module docstring)."""
    from scipy.stats import binomtest, kendalltau

    net = dict(zip(usage["feature"].astype(int), usage["net"].astype(int), strict=True))
    rows = []
    for name in RANKINGS:
        grpo = top(table, name, k_max)
        if not grpo:
            continue
        signed = direction(table, name) * np.abs(table[name].to_numpy())
        union = sorted(set(net) | set(grpo))
        x = np.array([net.get(f, 0) for f in union], float)
        y = signed[union]
        tau, tau_p = (float("nan"), float("nan"))
        if len(union) >= 2 and np.ptp(x) > 0 and np.ptp(y) > 0:
            res = kendalltau(x, y)
            tau, tau_p = float(res.statistic), float(res.pvalue)
        dirs = direction(table, name)
        both = [f for f in grpo if net.get(f, 0) != 0 and dirs[f] != 0]
        agree = sum(int(np.sign(net[f]) == dirs[f]) for f in both)
        sign_p = float(binomtest(agree, len(both), 0.5, alternative="greater").pvalue) if both else float("nan")
        rows.append(
            {
                "ranking": name,
                "tau_b": tau,
                "tau_p": tau_p,
                "n_union": len(union),
                "sign_agree": agree / len(both) if both else float("nan"),
                "n_signed": len(both),
                "sign_p": sign_p,
            }
        )
    return pd.DataFrame(rows, columns=["ranking", "tau_b", "tau_p", "n_union", "sign_agree", "n_signed", "sign_p"])


def steering_cosine(
    steps: pd.DataFrame,
    decoder: np.ndarray,
    coef_mode: str,
    delta: np.ndarray,
    matcher: DensityMatcher,
    n_null: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """cos(delta, v_CRL) with its density-matched null (module docstring)."""
    weights = _weights(steps, coef_mode)
    rows = unit_rows(decoder) if coef_mode == "relative" else decoder
    feats = sorted(weights)
    w = np.array([weights[f] for f in feats])
    obs = cosine(delta, w @ rows[feats]) if feats else float("nan")
    if not feats or np.isnan(obs):
        return {"cos": obs, "null_mean": float("nan"), "null_p": float("nan"), "n_features": len(feats)}
    rng = np.random.default_rng(seed)
    null = np.array([cosine(delta, w @ rows[matcher.sample(rng, feats)]) for _ in range(n_null)])
    null = null[~np.isnan(null)]
    return {
        "cos": obs,
        "null_mean": float(null.mean()) if len(null) else float("nan"),
        "null_p": float((1 + (null >= obs - 1e-12).sum()) / (1 + len(null))),
        "n_features": len(feats),
    }
