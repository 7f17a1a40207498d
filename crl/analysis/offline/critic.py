"""Critic-trajectory analysis: how the value estimate evolves per outcome category, and whether it is right.

Categories compare the trained policy's eval episode with the unsteered episode of the same prompt
(`baseline:none:<split>`, same seed when it has one, else the majority over its seeds):
correct->correct, incorrect->correct ("corrected"), correct->incorrect ("misguided"), incorrect->incorrect.

Value quality. The value target is taken to be the final episode reward (undiscounted terminal reward, no
per-step rewards); with gamma < 1 the values are biased low, which the calibration table shows.
- explained variance EV = 1 - Var(R - V) / Var(R), over all steps ("all", what PPO trains) and over the
  first decision of each episode ("first", one independent point per episode);
- calibration: values binned into `n_bins` equal-width bins over the observed reward range (values outside
  are put in the end bins); ECE = sum_b n_b / N * |mean V_b - mean R_b|, in reward units, and also divided
  by the reward range (`ece_rel`);
- AUROC of the first-step value for telling correct from incorrect episodes: the Mann-Whitney U statistic
  of the correct episodes' values over the incorrect ones, divided by n_correct * n_incorrect.

Reading rule (`diagnose`): if EV(all) < ev_min or ece_rel > ece_max, the critic cannot predict outcomes and
advantages are mostly noise: a *value-estimation error*, fix value learning before judging the policy.
Otherwise, if AUROC >= auroc_min, the critic already knows at the first token which prompts will fail, yet
the policy does not fix them: a *policy limit* (action set, coefficient or exploration). Else inconclusive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu

from crl.agent.value_metrics import explained_variance
from crl.errors import CRLError

CATEGORIES = ("correct->correct", "incorrect->correct", "correct->incorrect", "incorrect->incorrect")
CATEGORY_LABELS = {
    "correct->correct": "correct->correct",
    "incorrect->correct": "corrected",
    "correct->incorrect": "misguided",
    "incorrect->incorrect": "incorrect->incorrect",
}
_KEY = ["run", "phase", "update", "seed", "episode"]


@dataclass
class CriticConfig:
    n_bins: int = 10
    n_rel_bins: int = 10  # bins of relative position (step / last step) for trajectories
    ev_min: float = 0.1
    ece_max: float = 0.15  # as a fraction of the reward range
    auroc_min: float = 0.7


def outcome_categories(eval_eps: pd.DataFrame, base_eps: pd.DataFrame) -> pd.DataFrame:
    """Eval episodes with base_correct and category columns; prompts without a baseline are dropped."""
    if base_eps.empty:
        raise CRLError(
            "no unsteered baseline episodes (baseline:none:<split>); run the no-steering baseline on "
            "the eval split to get outcome categories"
        )
    b = base_eps.assign(_c=base_eps["correct"].astype(float))
    by_seed = b.groupby(["seed", "prompt_id"])["_c"].mean()
    by_prompt = b.groupby("prompt_id")["_c"].mean()
    base = []
    for s, p in zip(eval_eps["seed"], eval_eps["prompt_id"], strict=True):
        v = by_seed.get((s, p), by_prompt.get(p, np.nan))
        base.append(np.nan if pd.isna(v) else float(v > 0.5))
    out = eval_eps.assign(base_correct=base).dropna(subset=["base_correct"]).copy()
    out["base_correct"] = out["base_correct"].astype(bool)
    before = np.where(out["base_correct"], "correct", "incorrect")
    after = np.where(out["correct"].astype(bool), "correct", "incorrect")
    out["category"] = [f"{x}->{y}" for x, y in zip(before, after, strict=True)]
    return out.reset_index(drop=True)


def category_counts(cats: pd.DataFrame) -> pd.DataFrame:
    counts = cats["category"].value_counts().reindex(list(CATEGORIES), fill_value=0)
    return pd.DataFrame(
        {
            "category": list(CATEGORIES),
            "label": [CATEGORY_LABELS[c] for c in CATEGORIES],
            "count": counts.to_numpy(),
            "share": counts.to_numpy() / max(len(cats), 1),
        }
    )


def _steps_with_outcome(steps: pd.DataFrame, eps: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in ("category", "n_steps") if c in eps.columns]
    merged = steps.drop(columns=[c for c in ("reward", "correct", "category") if c in steps.columns]).merge(
        eps[[*_KEY, "reward", "correct", *cols]], on=_KEY, how="inner", suffixes=("_step", "")
    )
    return merged


def value_trajectories(
    steps: pd.DataFrame, cats: pd.DataFrame, x: str = "step", cfg: CriticConfig | None = None
) -> pd.DataFrame:
    """Mean value per category and token step (x="step") or relative position bin (x="relative").

    Columns category, x, mean, lo, hi, n; lo/hi is mean +- 1.96 standard errors over episodes.
    """
    cfg = cfg or CriticConfig()
    df = _steps_with_outcome(steps, cats)
    if df.empty:
        return pd.DataFrame(columns=["category", "x", "mean", "lo", "hi", "n"])
    if x == "step":
        df["x"] = df["step"]
    elif x == "relative":
        last = df.groupby(_KEY)["step"].transform("max").replace(0, 1)
        df["x"] = np.minimum((df["step"] / last * cfg.n_rel_bins).astype(int), cfg.n_rel_bins - 1) / cfg.n_rel_bins
    else:
        raise CRLError(f"x='{x}' is unknown; use 'step' or 'relative'")
    g = df.groupby(["category", "x"])["value"]
    out = g.agg(["mean", "std", "size"]).reset_index().rename(columns={"size": "n"})
    half = 1.96 * out["std"].fillna(0) / np.sqrt(out["n"])
    out["lo"], out["hi"] = out["mean"] - half, out["mean"] + half
    return out[["category", "x", "mean", "lo", "hi", "n"]]


def calibration(values: np.ndarray, returns: np.ndarray, n_bins: int = 10) -> tuple[pd.DataFrame, float]:
    """Equal-width bins over the reward range: table (bin_lo, bin_hi, n, mean_value, mean_reward) and ECE."""
    v, r = np.asarray(values, float), np.asarray(returns, float)
    if len(v) == 0:
        raise CRLError("no values to calibrate; the eval phase logged no steps")
    lo, hi = float(r.min()), float(r.max())
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, n_bins + 1)
    idx = np.clip(np.digitize(v, edges[1:-1]), 0, n_bins - 1)
    n = np.bincount(idx, minlength=n_bins)
    mv = np.bincount(idx, weights=v, minlength=n_bins) / np.maximum(n, 1)
    mr = np.bincount(idx, weights=r, minlength=n_bins) / np.maximum(n, 1)
    table = pd.DataFrame({"bin_lo": edges[:-1], "bin_hi": edges[1:], "n": n, "mean_value": mv, "mean_reward": mr})
    ece = float((n / n.sum() * np.abs(mv - mr)).sum())
    return table[table["n"] > 0].reset_index(drop=True), ece


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve = U / (n1 * n0) (Mann-Whitney U, ties count 1/2); NaN with only one class."""
    s, y = np.asarray(scores, float), np.asarray(labels, bool)
    if y.all() or not y.any():
        return float("nan")
    # Only U is used; "asymptotic" skips the exact p-value, which U does not depend on.
    u = mannwhitneyu(s[y], s[~y], alternative="two-sided", method="asymptotic").statistic
    return float(u / (y.sum() * (~y).sum()))


@dataclass
class CriticSummary:
    n_episodes: int
    n_steps: int
    ev_all: float
    ev_first: float
    ece_all: float
    ece_first: float
    ece_rel: float
    auroc_first: float
    reward_range: float
    diagnosis: str
    reason: str


def diagnose(
    ev_all: float, ece_rel: float, auroc_first: float, cfg: CriticConfig | None = None, advantage: str = "gae"
) -> tuple[str, str]:
    """The reading rule of the module docstring: (diagnosis, one-line reason). With critic-free advantages
    (`advantage` other than gae) a poor critic does not touch learning, so it is reported, not flagged."""
    cfg = cfg or CriticConfig()
    poor = np.isnan(ev_all) or ev_all < cfg.ev_min or ece_rel > cfg.ece_max
    if poor and advantage != "gae":
        return (
            "critic not used for learning",
            f"ppo.advantage={advantage} is critic-free; the critic (EV={ev_all:.2f}) only draws the trajectories below",
        )
    if poor:
        return (
            "value-estimation error",
            f"EV={ev_all:.2f} (min {cfg.ev_min}) / relative ECE={ece_rel:.2f} (max {cfg.ece_max}): critic "
            "does not predict outcomes, so advantages are noisy; fix value learning first",
        )
    if not np.isnan(auroc_first) and auroc_first >= cfg.auroc_min:
        return (
            "policy limit",
            f"the critic separates outcomes at the first token (AUROC={auroc_first:.2f}) and is calibrated, "
            "yet the policy does not fix the failing prompts: the action set or coefficient limits it",
        )
    return (
        "inconclusive",
        f"the critic is calibrated (EV={ev_all:.2f}) but separates outcomes only weakly at the "
        f"first token (AUROC={auroc_first:.2f})",
    )


def critic_summary(
    steps: pd.DataFrame, episodes: pd.DataFrame, cfg: CriticConfig | None = None, advantage: str = "gae"
) -> tuple[CriticSummary, pd.DataFrame]:
    """Value quality over an eval phase: the summary and the all-steps calibration table."""
    cfg = cfg or CriticConfig()
    df = _steps_with_outcome(steps, episodes)
    if df.empty:
        raise CRLError("no eval steps with a matching episode; the eval phase logged no interventions")
    v, r = df["value"].to_numpy(float), df["reward"].to_numpy(float)
    first = df.sort_values("step").drop_duplicates(_KEY)
    vf, rf = first["value"].to_numpy(float), first["reward"].to_numpy(float)
    table, ece_all = calibration(v, r, cfg.n_bins)
    _, ece_first = calibration(vf, rf, cfg.n_bins)
    span = float(r.max() - r.min()) or 1.0
    ev_all = explained_variance(v, r)
    au = auroc(vf, first["correct"].astype(bool).to_numpy())
    if r.max() == r.min():  # nothing to predict: EV and AUROC are undefined, not bad
        diagnosis, reason = "no outcome variation", f"every eval episode has reward {r[0]:g}; nothing to predict"
    else:
        diagnosis, reason = diagnose(ev_all, ece_all / span, au, cfg, advantage)
    summary = CriticSummary(
        len(first),
        len(df),
        ev_all,
        explained_variance(vf, rf),
        ece_all,
        ece_first,
        ece_all / span,
        au,
        span,
        diagnosis,
        reason,
    )
    return summary, table
