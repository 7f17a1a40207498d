"""Causal checks of the feature-level reading, scored from the answer options' logits at the decision position.

GRPO's gain is read on two scales, per prompt: the answer margin m (gold option's logit minus the best other
option's) and correctness (the gold option has the highest logit: what constrained greedy decoding answers). With
m_b, m_t the base and tuned model's margins and m_x an intervention's (means over prompts):

- recovered (an intervention on the base model) = (m_x - m_b) / (m_t - m_b);
- lost (an intervention on the tuned model) = (m_t - m_x) / (m_t - m_b);
the same on accuracy, each with a percentile-bootstrap 95% CI over prompts (`stats.ratio_bootstrap`). Every
intervention acts on the residual at the SAE's hook at the decision position only (where CRL steers), except
`patch_all`.

Interventions (d_i = W_dec[i]; a the SAE code; S a feature set):
- steer_moved (base): h + sum_{i in S} shift_i d_i, S the top k of the shift ranking: do GRPO's most moved
  features, added at their mean shift, reproduce its gain?
- clamp_crl (tuned): h + sum_{i in S} (a_base - a_tuned)[p, i] d_i, S CRL's k most picked features: each set back
  to the value it has in the base model on the same prompt. How much of the gain do CRL's features carry?
- clamp_moved (tuned): the same for GRPO's top k moved features (how much of the gain the moved features carry).
- null draws (`null_steer_moved`, `null_clamp_crl`): the same coefficients on random features of the same density
  deciles, rescaled per prompt to the real delta's norm (random feature sets of matched norm); each real row reports
  the null draws' mean and p = (1 + #{null >= observed}) / (1 + draws).
- letter_prior (base, no forward): a constant per option letter added to the base model's option logits, the tuned
  model's mean logit change of that letter; if it recovers the gain, the gain is a first-token prior shift.
- patch_last / patch_all (tuned): the base model's residual at the hook patched into the tuned model at the decision
  position / at every position. patch_all is the ceiling of any intervention at this layer: everything downstream
  then reads the base model's residual, so its lost share is the part of the change that happens at or upstream of
  the layer (with LoRA on every layer, the rest is made downstream). patch_last is the ceiling of an intervention at
  the decision position alone (what clamping and steering there can at most do).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from crl.analysis.diffing.forward import Options, correct, margins
from crl.analysis.diffing.rankings import top
from crl.analysis.offline.agreement import DensityMatcher
from crl.analysis.offline.stats import StatsConfig, ratio_bootstrap

if TYPE_CHECKING:
    from crl.analysis.diffing.measure import Measured

CAUSAL_COLUMNS = [
    "intervention",
    "model",
    "k",
    "features",
    "margin",
    "accuracy",
    "share_margin",
    "share_margin_lo",
    "share_margin_hi",
    "share_accuracy",
    "share_accuracy_lo",
    "share_accuracy_hi",
    "null_mean",
    "null_p",
    "n_null",
]
NULL_STREAMS = {"steer_moved": 0, "clamp_crl": 1}  # separate random streams of the two nulls


@dataclass
class Intervention:
    name: str
    model: str  # "base" | "tuned"
    k: int
    features: list[int]
    delta: Callable[[slice], torch.Tensor]  # prompt rows -> (rows, d_model) added at the decision position
    draw: int | None = None  # null draw index


def _rescaled(delta: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """Rows of `delta` rescaled to `norms` (rows of 0 stay 0).

    >>> _rescaled(np.array([[3.0, 4.0], [0.0, 0.0]]), np.array([10.0, 5.0])).tolist()
    [[6.0, 8.0], [0.0, 0.0]]
    """
    n = np.linalg.norm(delta, axis=1, keepdims=True)
    return np.where(n > 0, delta * (norms[:, None] / np.maximum(n, 1e-30)), 0.0)


def interventions(
    m: Measured,
    table: pd.DataFrame,
    decoder: np.ndarray,
    crl_features: list[int] | None,
    matcher: DensityMatcher,
    ks: list[int],
    n_null: int,
    seed: int = 0,
) -> list[Intervention]:
    """Every intervention of the module docstring, distinct feature sets once (a k past CRL's used features is
    the same set as the largest one)."""
    shift = table["shift"].to_numpy()
    diff = m.a_base - m.a_tuned  # (n, d_sae): what a clamp adds back, per prompt
    out: list[Intervention] = []

    def const(vec: np.ndarray) -> Callable[[slice], torch.Tensor]:
        t = torch.as_tensor(vec, dtype=torch.float32)
        return lambda rows: t.expand(rows.stop - rows.start, -1)

    def per_prompt(arr: np.ndarray) -> Callable[[slice], torch.Tensor]:
        t = torch.as_tensor(arr, dtype=torch.float32)
        return lambda rows: t[rows]

    seen: set[tuple[str, tuple[int, ...]]] = set()
    for k in ks:
        sets = {"steer_moved": top(table, "shift", k), "clamp_moved": top(table, "shift", k)}
        if crl_features:
            sets["clamp_crl"] = crl_features[:k]
        for name, feats in sets.items():
            key = (name, tuple(feats))
            if not feats or key in seen:
                continue
            seen.add(key)
            model = "base" if name == "steer_moved" else "tuned"
            if name == "steer_moved":
                real = shift[feats] @ decoder[feats]
                out.append(Intervention(name, model, k, feats, const(real)))
            else:
                real_rows = diff[:, feats] @ decoder[feats]
                out.append(Intervention(name, model, k, feats, per_prompt(real_rows)))
            if name == "clamp_moved":
                continue  # a reference, not a claim: no null
            rng = np.random.default_rng([seed, k, NULL_STREAMS[name]])
            for j in range(n_null):
                fake = matcher.sample(rng, feats)
                if name == "steer_moved":
                    vec = shift[feats] @ decoder[fake]
                    vec = vec * (np.linalg.norm(real) / max(np.linalg.norm(vec), 1e-30))
                    out.append(Intervention(f"null_{name}", model, k, fake, const(vec), j))
                else:
                    rows = _rescaled(diff[:, feats] @ decoder[fake], np.linalg.norm(real_rows, axis=1))
                    out.append(Intervention(f"null_{name}", model, k, fake, per_prompt(rows), j))
    return out


def run_interventions(m: Measured, ivs: list[Intervention], progress: bool = False) -> list[np.ndarray]:
    """Option logits (n, options) of each intervention, over every prompt chunk of the first pass; `progress`: plain
    progress lines on stderr."""
    from crl.progress import Progress

    assert m.options is not None
    out: list[list[np.ndarray]] = [[] for _ in ivs]
    with Progress("[crl] rl-compare: causal checks", len(ivs) * m.n, "prompt passes", enabled=progress) as bar:
        for chunk in m.chunks:
            opts = m.options.take(chunk.rows)
            for i, iv in enumerate(ivs):
                batch = chunk.base if iv.model == "base" else chunk.tuned
                res = batch.last(delta=iv.delta(chunk.rows).to(batch.lm.device))
                out[i].append(opts.logits(res.logits))
                bar.update(len(batch))
    return [np.concatenate(x) for x in out]


def letter_prior(base: np.ndarray, tuned: np.ndarray, options: Options) -> np.ndarray:
    """The base model's option logits plus, per option letter, the tuned model's mean change of that letter's logit.

    >>> opts = Options(np.array([[1, 2], [1, 2]]), np.array([0, 1]), [["A", "B"], ["A", "B"]])
    >>> letter_prior(np.zeros((2, 2)), np.array([[1.0, 0.0], [3.0, 0.0]]), opts).tolist()
    [[2.0, 0.0], [2.0, 0.0]]
    """
    change = tuned - base
    sums: dict[str, list[float]] = {}
    for i, letters in enumerate(options.letters):
        for j, letter in enumerate(letters):
            sums.setdefault(letter, []).append(change[i, j])
    mean = {letter: float(np.mean(v)) for letter, v in sums.items()}
    out = base.copy()
    for i, letters in enumerate(options.letters):
        for j, letter in enumerate(letters):
            out[i, j] += mean[letter]
    return out


def causal_table(
    m: Measured, ivs: list[Intervention], logits: list[np.ndarray], cfg: StatsConfig | None = None
) -> pd.DataFrame:
    """One row per real intervention (plus base, tuned, letter_prior, patch_last, patch_all), shares with CIs and
    the null summary (module docstring)."""
    cfg = cfg or StatsConfig()
    assert m.options is not None
    gold = m.options.gold
    ob, ot = m.option_logits["base"], m.option_logits["tuned"]
    mb, mt = margins(ob, gold), margins(ot, gold)
    cb, ct = correct(ob, gold).astype(float), correct(ot, gold).astype(float)

    def row(name: str, model: str, k: int | None, feats: list[int] | None, ol: np.ndarray) -> dict:
        mx, cx = margins(ol, gold), correct(ol, gold).astype(float)
        if name in ("base", "tuned"):
            sm = sa = None
        elif model == "base":
            sm, sa = ratio_bootstrap(mx - mb, mt - mb, cfg), ratio_bootstrap(cx - cb, ct - cb, cfg)
        else:
            sm, sa = ratio_bootstrap(mt - mx, mt - mb, cfg), ratio_bootstrap(ct - cx, ct - cb, cfg)
        nan = float("nan")
        return {
            "intervention": name,
            "model": model,
            "k": k,
            "features": ", ".join(map(str, feats)) if feats else "",
            "margin": float(mx.mean()),
            "accuracy": float(cx.mean()),
            "share_margin": sm.mean if sm else nan,
            "share_margin_lo": sm.lo if sm else nan,
            "share_margin_hi": sm.hi if sm else nan,
            "share_accuracy": sa.mean if sa else nan,
            "share_accuracy_lo": sa.lo if sa else nan,
            "share_accuracy_hi": sa.hi if sa else nan,
        }

    rows = [row("base", "base", None, None, ob), row("tuned", "tuned", None, None, ot)]
    rows.append(row("letter_prior", "base", None, None, letter_prior(ob, ot, m.options)))
    rows.append(row("patch_last", "tuned", None, None, m.option_logits["patch_last"]))
    rows.append(row("patch_all", "tuned", None, None, m.option_logits["patch_all"]))
    nulls: dict[tuple[str, int], list[float]] = {}
    for iv, ol in zip(ivs, logits, strict=True):
        if iv.draw is not None:
            mx = margins(ol, gold)
            gain = float((mt - mb).mean())
            share = float((mx - mb).mean() / gain if iv.model == "base" else (mt - mx).mean() / gain) if gain else 0.0
            nulls.setdefault((iv.name[len("null_") :], iv.k), []).append(share)
        else:
            rows.append(row(iv.name, iv.model, iv.k, iv.features, ol))
    table = pd.DataFrame(rows)
    for c in ("null_mean", "null_p", "n_null"):
        table[c] = np.nan
    for i, r in table.iterrows():
        null = nulls.get((r["intervention"], r["k"]))
        if null and not np.isnan(r["share_margin"]):
            arr = np.array(null)
            table.loc[i, "null_mean"] = float(arr.mean())
            table.loc[i, "null_p"] = float((1 + (arr >= r["share_margin"] - 1e-12).sum()) / (1 + len(arr)))
            table.loc[i, "n_null"] = len(arr)
    table["k"] = table["k"].astype("Int64")
    table["n_null"] = table["n_null"].astype("Int64")
    return table[CAUSAL_COLUMNS]
