"""Which SAE features a policy picks, where, next to which tokens, and whether features are task-specific.

Definitions:

- share: selections of a feature / all decisions of the phase (no-steering decisions included in the
  denominator; the no-steering action is its own row, feature = NO_STEER).
- mean_reward / accuracy: over the *episodes* that chose the feature at least once (so long episodes do not
  count more); reward_lift = mean_reward(episodes using it) - mean_reward(episodes not using it).
- token: the token generated at the step where the feature was chosen (the token the steering acts on);
  prev_token is the token before it (the one whose residual was steered; "<prompt>" at step 0), next_token
  the one after it ("<end>" after the last step).
- significant use: a feature is *used* by a task when the lower end of the 95% bootstrap CI of its share,
  resampling episodes (decisions within an episode are not independent), is >= `min_share`. Only features
  whose point share is >= `min_share` are tested. Across tasks, a feature used by exactly one task is
  *task-specific*, by two or more *shared*.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from crl.cards.tokens import SYNTACTIC_TYPES, TOKEN_TYPES, token_type
from crl.errors import CRLError
from crl.logs.schema import NO_STEER

# Same format as crl.backends.sae.NEURONPEDIA_URL (a test checks); importing that module would pull in torch.
NEURONPEDIA_URL = "https://www.neuronpedia.org/{np_id}/{feature}"
_EPISODE_KEY = ["run", "phase", "update", "seed", "episode"]


@dataclass
class FeatureConfig:
    top_k: int = 20  # rows shown in reports (tables hold all features)
    min_share: float = 0.02  # significance threshold for "used by a task"
    n_boot: int = 1000
    seed: int = 0


def neuronpedia_url(neuronpedia_id: str | None, feature: int) -> str | None:
    if not neuronpedia_id or feature == NO_STEER:
        return None
    return NEURONPEDIA_URL.format(np_id=neuronpedia_id, feature=int(feature))


def token_types(tokens: pd.Series) -> pd.Series:
    """`token_type` of each token (classified once per distinct token)."""
    tokens = tokens.fillna("").astype(str)
    table = {t: token_type(t) for t in tokens.unique()}
    return tokens.map(table)


def with_context(steps: pd.DataFrame) -> pd.DataFrame:
    """Steps sorted by episode and step, with prev_token, next_token and token_type columns."""
    if steps.empty:
        return steps.assign(prev_token=[], next_token=[], token_type=[])
    df = steps.sort_values([*_EPISODE_KEY, "step"]).reset_index(drop=True)
    grp = df.groupby(_EPISODE_KEY, sort=False)["token"]
    df["prev_token"] = grp.shift(1).fillna("<prompt>")
    df["next_token"] = grp.shift(-1).fillna("<end>")
    df["token_type"] = token_types(df["token"])
    return df


def _top(values: pd.Series, k: int = 3) -> str:
    counts = Counter(values)
    n = sum(counts.values())
    return ", ".join(f"{tok!r} {c / n:.0%}" for tok, c in counts.most_common(k))


def feature_usage(
    steps: pd.DataFrame,
    episodes: pd.DataFrame,
    neuronpedia_id: str | None = None,
    effects: pd.DataFrame | None = None,
    labels: Callable[[int], str] | Mapping[int, str] | None = None,
) -> pd.DataFrame:
    """One row per chosen feature (NO_STEER included), sorted by count. See the module docstring.

    `effects` is an optional precomputed table with a `feature` column (e.g. the paired forced-feature
    effect from `crl.analysis.replay.effects`); its other columns are joined on. `labels` gives each feature's
    label (e.g. the heuristic label of its card, `crl.cards.store.FeatureCards.label`); a feature it does not
    cover, or every feature when it is None, is labelled by its bare id.
    """
    if steps.empty:
        raise CRLError("no intervention rows for this phase; the policy was not evaluated or logging was off")
    df = with_context(steps)
    total = len(df)
    g = df.groupby("feature")
    out = pd.DataFrame(
        {
            "count": g.size(),
            "mean_step": g["step"].mean(),
            "mode_step": g["step"].agg(lambda s: int(s.mode().iloc[0])),
            "top_token_types": g["token_type"].agg(_top),
            "top_tokens": g["token"].agg(_top),
            "top_prev_tokens": g["prev_token"].agg(_top),
            "top_next_tokens": g["next_token"].agg(_top),
        }
    )
    out["share"] = out["count"] / total
    out["syntactic_share"] = g["token_type"].agg(lambda s: float(s.isin(SYNTACTIC_TYPES).mean()))

    ep_key = [c for c in _EPISODE_KEY if c in episodes.columns]
    eps = episodes[[*ep_key, "reward", "correct"]].assign(correct=lambda e: e["correct"].astype(float))
    used = df.drop_duplicates([*ep_key, "feature"])[[*ep_key, "feature"]].merge(eps, on=ep_key, how="inner")
    ug = used.groupby("feature")
    out["n_episodes"] = ug.size()
    out["n_episodes"] = out["n_episodes"].fillna(0).astype(int)
    out["episode_share"] = out["n_episodes"] / max(len(eps), 1)
    out["mean_reward"] = ug["reward"].mean()
    out["accuracy"] = ug["correct"].mean()
    rest = len(eps) - out["n_episodes"]
    rest_reward = (eps["reward"].sum() - ug["reward"].sum()).reindex(out.index)
    out["reward_lift"] = out["mean_reward"] - (rest_reward / rest.where(rest > 0))

    out = out.reset_index().sort_values(["count", "feature"], ascending=[False, True]).reset_index(drop=True)
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    out["label"] = [feature_label(f, labels) for f in out["feature"]]
    out["url"] = [neuronpedia_url(neuronpedia_id, f) for f in out["feature"]]
    if effects is not None:
        if "feature" not in effects.columns:
            raise CRLError("the effects table needs a 'feature' column; write it with crl.analysis.replay.effects")
        out = out.merge(effects, on="feature", how="left")
    return out


def feature_label(feature: int, labels: Callable[[int], str] | Mapping[int, str] | None = None) -> str:
    """The label of `feature`: "no steer" for NO_STEER, else what `labels` gives, else the bare id."""
    f = int(feature)
    if f == NO_STEER:
        return "no steer"
    if isinstance(labels, Mapping):
        got = labels.get(f)
    else:
        got = labels(f) if labels is not None else None
    return str(got) if got else str(f)


def step_histogram(steps: pd.DataFrame, features: list[int]) -> pd.DataFrame:
    """Counts of each feature's selections per token step: columns feature, step, count."""
    df = steps[steps["feature"].isin(features)]
    return df.groupby(["feature", "step"]).size().rename("count").reset_index()


def token_type_table(steps: pd.DataFrame, features: list[int] | None = None) -> pd.DataFrame:
    """Share of each token type among the tokens where each feature was chosen: feature x TOKEN_TYPES."""
    df = steps if features is None else steps[steps["feature"].isin(features)]
    types = token_types(df["token"])
    tab = pd.crosstab(df["feature"], types, normalize="index")
    return tab.reindex(columns=list(TOKEN_TYPES), fill_value=0.0)


def share_ci(steps: pd.DataFrame, cfg: FeatureConfig | None = None) -> pd.DataFrame:
    """Selection share of every feature with point share >= min_share, with an episode-bootstrap 95% CI.

    Columns feature, share, lo, hi, used (lo >= min_share). NO_STEER is not a feature and is left out.
    """
    cfg = cfg or FeatureConfig()
    if steps.empty:
        return pd.DataFrame(columns=["feature", "share", "lo", "hi", "used"])
    shares = steps["feature"].value_counts() / len(steps)
    cand = [int(f) for f, s in shares.items() if s >= cfg.min_share and f != NO_STEER]
    if not cand:
        return pd.DataFrame(columns=["feature", "share", "lo", "hi", "used"])
    ep = steps.groupby(_EPISODE_KEY).ngroup().to_numpy()
    n_ep = int(ep.max()) + 1
    counts = np.zeros((n_ep, len(cand)))
    col = {f: i for i, f in enumerate(cand)}
    feats = steps["feature"].to_numpy()
    sel = np.isin(feats, cand)
    np.add.at(counts, (ep[sel], [col[int(f)] for f in feats[sel]]), 1.0)
    totals = np.bincount(ep, minlength=n_ep).astype(float)
    rng = np.random.default_rng(cfg.seed)
    w = rng.multinomial(n_ep, np.full(n_ep, 1 / n_ep), size=cfg.n_boot).astype(float)
    boot = (w @ counts) / (w @ totals)[:, None]
    lo, hi = np.quantile(boot, [0.025, 0.975], axis=0)
    return pd.DataFrame(
        {
            "feature": cand,
            "share": [float(shares[f]) for f in cand],
            "lo": lo,
            "hi": hi,
            "used": lo >= cfg.min_share,
        }
    )


def task_specificity(
    steps_by_task: dict[str, pd.DataFrame],
    sae_identities: dict[str, str] | None = None,
    cfg: FeatureConfig | None = None,
) -> pd.DataFrame:
    """Features significantly used per task (see module docstring): one row per feature used anywhere.

    Columns: feature, n_tasks, kind ("task-specific" | "shared"), tasks, and share_<task> for every task.
    Refuses runs with different SAEs, since feature ids are only comparable within one SAE.
    """
    cfg = cfg or FeatureConfig()
    if sae_identities and len(set(sae_identities.values())) > 1:
        raise CRLError(
            f"runs use different SAEs {sorted(set(sae_identities.values()))}: feature ids are not "
            "comparable across SAEs; compare runs of one SAE only"
        )
    rows: dict[int, dict[str, object]] = {}
    for task, steps in steps_by_task.items():
        for r in share_ci(steps, cfg).itertuples():
            if r.used:
                rows.setdefault(int(r.feature), {})[task] = float(r.share)
    out = []
    for f, per in sorted(rows.items()):
        row = {
            "feature": f,
            "n_tasks": len(per),
            "kind": "shared" if len(per) > 1 else "task-specific",
            "tasks": ", ".join(sorted(per)),
        }
        for task, steps in steps_by_task.items():
            row[f"share_{task}"] = float((steps["feature"] == f).mean()) if len(steps) else 0.0
        out.append(row)
    cols = ["feature", "n_tasks", "kind", "tasks", *[f"share_{t}" for t in steps_by_task]]
    return pd.DataFrame(out, columns=cols).sort_values(
        ["n_tasks", "feature"], ascending=[False, True], ignore_index=True
    )


def planted_recovery(steps: pd.DataFrame, episodes: pd.DataFrame, planted: list[int]) -> dict[str, float]:
    """For the planted task (ground truth known): how often the policy picks the prompt's planted feature.

    step0_hit = share of episodes whose step-0 feature is planted[cls] (the only decision that matters
    there); planted_share = share of all decisions on any planted feature.
    """
    if steps.empty or not planted:
        return {"step0_hit": float("nan"), "planted_share": float("nan"), "n_episodes": 0}
    key = [c for c in _EPISODE_KEY if c in episodes.columns]
    cls = episodes.assign(cls=[m.get("cls") if isinstance(m, dict) else None for m in episodes["meta"]])
    first = steps[steps["step"] == 0].merge(cls[[*key, "cls"]], on=key, how="inner").dropna(subset=["cls"])
    want = [planted[int(c)] if 0 <= int(c) < len(planted) else None for c in first["cls"]]
    hits = [f == w for f, w in zip(first["feature"], want, strict=True)]
    return {
        "step0_hit": float(np.mean(hits)) if hits else float("nan"),
        "planted_share": float(steps["feature"].isin(planted).mean()),
        "n_episodes": len(first),
    }
