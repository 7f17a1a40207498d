"""Do seeds agree on which features a task relies on? Feature sets, rank agreement, and groups of features that
do the same thing, against a null of random features matched on activation density.

Definitions (one SAE, one task, runs = seeds):
- a run *uses* a signed feature (f, s) (s = sign of the steering level: +1 amplify, -1 suppress) when its share of
  the eval decisions is >= `min_share`; `top_k` keeps the most used.
- feature agreement of two runs: Jaccard of their used feature ids (signs ignored); rank agreement: Kendall's
  tau-b of the shares over the union of both runs' features (0 where unused).
- groups: signed features are linked when their signed unit decoder directions have cosine >= `min_cosine`
  (the same direction), or when their measured effects on the answer (`effect` vectors: mean change of the
  log-probability of each answer option when steered, from the run's feature_effects.json) have cosine >=
  `min_effect_cosine` and both move the answer by at least `min_effect` nats (the same effect, possibly another
  direction). Groups are the connected components, pooled over runs.
- group agreement: mean pairwise Jaccard of the runs' sets of groups. Null: each run's features are replaced by
  random features of the same density decile (signs kept), regrouped with the same rule; `n_null` draws give the
  null mean and p = share of draws at least as high as observed (+1 smoothing).
- recurrence of a group: the share of runs that use it, with a Clopper-Pearson 95% interval; the headline answer
  is the groups used by most runs (recurrence > 1/2).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from crl.logs.schema import NO_STEER

SignedFeature = tuple[int, int]  # (feature id, +1 amplify / -1 suppress)


@dataclass
class AgreementConfig:
    min_share: float = 0.02  # of a run's eval decisions
    top_k: int = 10
    min_cosine: float = 0.5  # signed decoder cosine that means "the same direction"
    min_effect_cosine: float = 0.9  # effect vectors that point the same way
    min_effect: float = 0.1  # nats: an effect smaller than this is no evidence of sameness
    n_null: int = 200
    seed: int = 0


def used_features(steps: pd.DataFrame, cfg: AgreementConfig | None = None) -> pd.DataFrame:
    """The signed features a run uses (module docstring): columns feature, sign, share, sorted by share."""
    cfg = cfg or AgreementConfig()
    if steps.empty:
        return pd.DataFrame(columns=["feature", "sign", "share"])
    df = steps.assign(sign=np.sign(steps["coef"]).astype(int))
    shares = df[df["feature"] != NO_STEER].groupby(["feature", "sign"]).size() / len(df)
    out = shares.rename("share").reset_index().sort_values(["share", "feature"], ascending=[False, True])
    return out[out["share"] >= cfg.min_share].head(cfg.top_k).reset_index(drop=True)


class DensityMatcher:
    """Random features of the same activation-density decile as given ones: the null of `seed_agreement` and of
    `crl rl-compare`'s concordance (crl/analysis/diffing/concordance.py). A feature's decile always holds itself."""

    def __init__(self, density: np.ndarray, n_bins: int = 10) -> None:
        density = np.asarray(density, dtype=float)
        edges = np.quantile(density, np.linspace(0, 1, n_bins + 1))
        self.bin_of = np.clip(np.searchsorted(edges, density, side="right") - 1, 0, n_bins - 1)
        self.pools = {b: np.flatnonzero(self.bin_of == b) for b in range(n_bins)}

    def draw(self, rng: np.random.Generator, feature: int) -> int:
        """One random feature of `feature`'s decile."""
        return int(rng.choice(self.pools[self.bin_of[feature]]))

    def sample(self, rng: np.random.Generator, features: list[int]) -> list[int]:
        """One random feature of each feature's decile, all distinct where the deciles hold enough features.

        >>> m = DensityMatcher(np.arange(20.0), n_bins=2)
        >>> got = m.sample(np.random.default_rng(0), [0, 1, 15])
        >>> len(set(got)), all(g < 10 for g in got[:2]), got[2] >= 10
        (3, True, True)
        """
        out: list[int] = []
        for f in features:
            pool = self.pools[self.bin_of[f]]
            free = np.setdiff1d(pool, out, assume_unique=False)
            out.append(int(rng.choice(free if len(free) else pool)))
        return out


def jaccard(a: set, b: set) -> float:
    """The overlap of two sets (1.0 for two empty sets).

    >>> jaccard({1, 2}, {2, 3})
    0.3333333333333333
    """
    return len(a & b) / len(a | b) if a | b else 1.0


def rank_agreement(a: pd.DataFrame, b: pd.DataFrame) -> float:
    """Kendall's tau-b of the feature shares over the union of both runs' features (0 where unused)."""
    from scipy.stats import kendalltau

    sa, sb = a.groupby("feature")["share"].sum(), b.groupby("feature")["share"].sum()
    union = sorted(set(sa.index) | set(sb.index))
    if len(union) < 2:
        return float("nan")
    tau = kendalltau(sa.reindex(union, fill_value=0.0), sb.reindex(union, fill_value=0.0)).statistic
    return float(tau)


def group_features(
    nodes: list[SignedFeature],
    decoder: np.ndarray | None,
    effects: dict[SignedFeature, np.ndarray] | None = None,
    cfg: AgreementConfig | None = None,
) -> dict[SignedFeature, int]:
    """Group id of each signed feature (connected components of the links in the module docstring)."""
    cfg = cfg or AgreementConfig()
    nodes = sorted(set(nodes))
    parent = list(range(len(nodes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    unit = None
    if decoder is not None and nodes:
        rows = decoder[[f for f, _ in nodes]].astype(np.float64)
        unit = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        unit *= np.array([s for _, s in nodes], dtype=np.float64)[:, None]
    eff = {}
    for i, n in enumerate(nodes):
        e = (effects or {}).get(n)
        if e is not None and np.linalg.norm(e) >= cfg.min_effect:
            eff[i] = np.asarray(e, np.float64) / np.linalg.norm(e)
    for i, j in itertools.combinations(range(len(nodes)), 2):
        same_dir = unit is not None and float(unit[i] @ unit[j]) >= cfg.min_cosine
        same_eff = i in eff and j in eff and float(eff[i] @ eff[j]) >= cfg.min_effect_cosine
        if same_dir or same_eff:
            parent[find(i)] = find(j)
    roots: dict[int, int] = {}
    return {n: roots.setdefault(find(i), len(roots)) for i, n in enumerate(nodes)}


def _group_jaccard(per_run: dict[str, list[SignedFeature]], groups: dict[SignedFeature, int]) -> float:
    sets = [{groups[n] for n in feats} for feats in per_run.values()]
    pairs = [jaccard(a, b) for a, b in itertools.combinations(sets, 2)]
    return float(np.mean(pairs)) if pairs else float("nan")


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    from scipy.stats import beta

    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


@dataclass
class Agreement:
    runs: pd.DataFrame  # run, rank, feature, sign, share, group
    pairs: pd.DataFrame  # run_a, run_b, feature_jaccard, rank_tau, group_jaccard
    groups: pd.DataFrame  # group, members, n_runs, recurrence, lo, hi, mean_share, headline
    group_jaccard: float
    null_mean: float
    null_p: float
    headline: str


def seed_agreement(
    steps_by_run: dict[str, pd.DataFrame],
    decoder: np.ndarray | None,
    density: np.ndarray | None = None,
    effects: dict[SignedFeature, np.ndarray] | None = None,
    labels: dict[int, str] | None = None,
    cfg: AgreementConfig | None = None,
) -> Agreement:
    """Everything in the module docstring for runs of one SAE and task (`steps_by_run`: eval intervention rows)."""
    cfg = cfg or AgreementConfig()
    used = {run: used_features(steps, cfg) for run, steps in steps_by_run.items()}
    per_run = {run: list(zip(u["feature"].astype(int), u["sign"].astype(int), strict=True)) for run, u in used.items()}
    groups = group_features([n for feats in per_run.values() for n in feats], decoder, effects, cfg)

    rows = []
    for run, u in used.items():
        for rank, r in enumerate(u.itertuples(), start=1):
            rows.append(
                {
                    "run": run,
                    "rank": rank,
                    "feature": int(r.feature),
                    "sign": int(r.sign),
                    "share": float(r.share),
                    "group": groups[(int(r.feature), int(r.sign))],
                }
            )
    runs_df = pd.DataFrame(rows, columns=["run", "rank", "feature", "sign", "share", "group"])
    pairs = []
    for a, b in itertools.combinations(used, 2):
        pairs.append(
            {
                "run_a": a,
                "run_b": b,
                "feature_jaccard": jaccard(set(used[a]["feature"]), set(used[b]["feature"])),
                "rank_tau": rank_agreement(used[a], used[b]),
                "group_jaccard": jaccard({groups[n] for n in per_run[a]}, {groups[n] for n in per_run[b]}),
            }
        )
    pairs_df = pd.DataFrame(pairs, columns=["run_a", "run_b", "feature_jaccard", "rank_tau", "group_jaccard"])
    observed = _group_jaccard(per_run, groups)

    null = []
    if density is not None and decoder is not None and len(per_run) > 1:
        rng = np.random.default_rng(cfg.seed)
        matcher = DensityMatcher(density)
        for _ in range(cfg.n_null):
            fake = {run: [(matcher.draw(rng, f), s) for f, s in feats] for run, feats in per_run.items()}
            g = group_features([n for feats in fake.values() for n in feats], decoder, None, cfg)
            null.append(_group_jaccard(fake, g))
    null_mean = float(np.mean(null)) if null else float("nan")
    null_p = float((1 + sum(x >= observed for x in null)) / (1 + len(null))) if null else float("nan")

    n = len(per_run)
    grows = []
    for gid in sorted(set(groups.values())):
        members = sorted(m for m, g in groups.items() if g == gid)
        using = [run for run, feats in per_run.items() if any(groups[m] == gid for m in feats)]
        lo, hi = clopper_pearson(len(using), n)
        share = runs_df[runs_df["group"] == gid].groupby("run")["share"].sum()
        name = ", ".join(
            f"{'+' if s > 0 else '−'}{f}" + (f" {labels[f]}" if labels and f in labels else "") for f, s in members
        )
        grows.append(
            {
                "group": gid,
                "members": name,
                "n_runs": len(using),
                "recurrence": len(using) / n,
                "lo": lo,
                "hi": hi,
                "mean_share": float(share.sum() / n),
                "headline": len(using) / n > 0.5,
            }
        )
    groups_df = pd.DataFrame(
        grows, columns=["group", "members", "n_runs", "recurrence", "lo", "hi", "mean_share", "headline"]
    )
    groups_df = groups_df.sort_values(["n_runs", "mean_share"], ascending=False, ignore_index=True)
    top = groups_df[groups_df["headline"]]
    if top.empty:
        headline = f"no feature group is used by more than half of the {n} runs"
    else:
        parts = [f"[{r.members}] in {r.n_runs}/{n} runs (95% CI {r.lo:.2f}–{r.hi:.2f})" for r in top.itertuples()]
        headline = "groups used by most runs: " + "; ".join(parts)
    if null:
        headline += (
            f". Group agreement {observed:.2f} (mean pairwise Jaccard) vs {null_mean:.2f} for "
            f"density-matched random features (p = {null_p:.3f}, {len(null)} draws)"
        )
    return Agreement(runs_df, pairs_df, groups_df, observed, null_mean, null_p, headline)


def load_decoder(sae_dir: str) -> np.ndarray:
    """W_dec (d_sae, d_in) of an SAE directory (sae-lens's safetensors), read without torch."""
    from pathlib import Path

    from safetensors.numpy import load_file

    return load_file(str(Path(sae_dir) / "sae_weights.safetensors"))["W_dec"].astype(np.float32)
