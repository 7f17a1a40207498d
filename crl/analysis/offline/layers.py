"""Layer-wise comparison of runs of one sweep that differ in the steered layer.

Per layer (runs at the same layer, e.g. seeds, are pooled; their run seeds are the seeds):
- accuracy of the trained policy on the eval split, with the seeds x prompts bootstrap CI of `stats`;
- diversity over steered decisions (no-steering excluded): distinct features, entropy H of the selection
  shares in bits, effective number of features 2^H; plus the share of no-steering decisions;
- what chosen features act on: token-type distribution of the generated tokens at steered decisions, and
  `syntactic_share` = share of those tokens that are punctuation, whitespace/newline, digits or special;
- coefficient tolerance from summary.json "coef_sweep" ([{coef, accuracy, well_formed_rate}, ...]):
  r0 = the well-formed rate at coef 0 when the sweep has it, else the run's no-steering baseline rate on the
  split; tolerance = the largest |coef| such that it and every smaller |coef| in the sweep keep
  well_formed_rate >= frac * r0 (frac = 0.9). Requiring every smaller coefficient to pass keeps a lucky
  blip at a large coefficient from counting. 0 when even the smallest fails, NaN without a sweep.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from crl.analysis.offline.features import SYNTACTIC_TYPES, TOKEN_TYPES, token_types
from crl.analysis.offline.stats import StatsConfig, aggregate_seeds
from crl.errors import CRLError
from crl.logs.reader import RunDir
from crl.logs.schema import NO_STEER, Phase


@dataclass
class LayerConfig:
    tolerance_frac: float = 0.9
    split: str | None = None  # eval split; default test, then val


def coef_tolerance(sweep: list[dict], unsteered_rate: float | None, frac: float = 0.9) -> float:
    """Largest |coef| such that it and every smaller |coef| keep well_formed_rate >= frac * r0."""
    if not sweep:
        return float("nan")
    try:
        pts = sorted((abs(float(e["coef"])), float(e["well_formed_rate"])) for e in sweep)
    except (KeyError, TypeError, ValueError):
        raise CRLError(
            "summary.json coef_sweep entries need numeric 'coef' and 'well_formed_rate'; fix the writer of the sweep"
        ) from None
    zero = [rate for c, rate in pts if c == 0]
    r0 = zero[0] if zero else unsteered_rate
    if r0 is None or np.isnan(r0):
        return float("nan")
    tol = 0.0
    for c, rate in pts:
        if c == 0:
            continue
        if rate < frac * r0:
            break
        tol = c
    return tol


def _diversity(steps: pd.DataFrame) -> dict[str, float]:
    steered = steps[steps["feature"] != NO_STEER]
    out: dict[str, float] = {"no_steer_share": float((steps["feature"] == NO_STEER).mean()) if len(steps) else 0.0}
    if steered.empty:
        out.update(distinct_features=0, entropy_bits=0.0, effective_features=0.0, syntactic_share=float("nan"))
        out.update({f"type_{t}": 0.0 for t in TOKEN_TYPES})
        return out
    p = steered["feature"].value_counts(normalize=True).to_numpy()
    h = float(-(p * np.log2(p)).sum())
    types = token_types(steered["token"])
    dist = types.value_counts(normalize=True)
    out.update(
        distinct_features=int(len(p)),
        entropy_bits=h,
        effective_features=float(2**h),
        syntactic_share=float(types.isin(SYNTACTIC_TYPES).mean()),
    )
    out.update({f"type_{t}": float(dist.get(t, 0.0)) for t in TOKEN_TYPES})
    return out


def layer_table(
    runs: list[RunDir], cfg: LayerConfig | None = None, stats_cfg: StatsConfig | None = None
) -> pd.DataFrame:
    """One row per layer, sorted by layer (see the module docstring for every column)."""
    cfg = cfg or LayerConfig()
    if not runs:
        raise CRLError("no runs to compare; pass dirs=[...] with runs of one sweep")
    for key, what in (("task", "task"), ("model", "model")):
        vals = sorted({str(getattr(r.info, key)) for r in runs})
        if len(vals) > 1:
            raise CRLError(f"a layer comparison needs runs of one {what}, got {vals}; compare each {what} separately")
    by_layer: dict[int, list[RunDir]] = {}
    for r in runs:
        by_layer.setdefault(r.layer, []).append(r)
    rows = []
    for layer in sorted(by_layer):
        group = by_layer[layer]
        eps, steps, tols = [], [], []
        for r in group:
            phase = r.eval_phase(cfg.split)
            split = Phase.parse(phase).split
            e = r.episodes_of(phase)
            eps.append(e.assign(prompt_id=e["prompt_id"].astype(str)))
            steps.append(r.steps_of(phase))
            base = r.baseline_phases(split).get("none")
            r0 = float(r.episodes_of(base)["well_formed"].mean()) if base else None
            tols.append(coef_tolerance(r.summary.get("coef_sweep") or [], r0, cfg.tolerance_frac))
        acc = aggregate_seeds(pd.concat(eps, ignore_index=True), "correct", stats_cfg)
        wf = aggregate_seeds(pd.concat(eps, ignore_index=True), "well_formed", stats_cfg)
        row = {
            "layer": layer,
            "runs": ", ".join(r.name for r in group),
            "n_seeds": acc.n_seeds,
            "accuracy": acc.mean,
            "acc_lo": acc.lo,
            "acc_hi": acc.hi,
            "well_formed": wf.mean,
            "coef_tolerance": float(np.nanmean(tols)) if not all(np.isnan(tols)) else float("nan"),
        }
        row.update(_diversity(pd.concat(steps, ignore_index=True)))
        rows.append(row)
    return pd.DataFrame(rows)
