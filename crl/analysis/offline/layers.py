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
- headroom before training (`add_probe`, from a `crl probe` record of the same task): the probe's readability
  (accuracy, or AUROC for number answers) with its CI, the unsteered model's accuracy, `probe_headroom` = probe -
  unsteered (accuracy targets only: how much more the residual reads than the model says), and the oracle's
  `oracle_headroom` = best single action per prompt - no steering on the oracle's prompts.

The paper's claim, read from one layer table (`layer_claim`): steering picks syntactic features early and semantic
ones late, and later layers tolerate larger coefficients. Between the earliest and the latest layer measured:
the syntactic share "falls" when it drops by at least `min_share_change` (0.1), "rises" when it grows by that much,
else it is flat; the coefficient tolerance "rises" or "falls" on any change (it moves in the sweep's steps), else it
is flat. confirmed = the share falls and the tolerance rises; refuted = the share rises or the tolerance falls;
otherwise inconclusive (a flat or unmeasured part, or one layer only). Layers in between are shown, not tested.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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
    min_share_change: float = 0.1  # the smallest change of the syntactic share that `layer_claim` counts


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


def coef_curve(runs: list[RunDir]) -> pd.DataFrame:
    """Accuracy and well-formed rate against the coefficient (summary.json "coef_sweep"), per layer: the mean over the
    runs (seeds) that swept it. Columns layer, coef, n_runs, accuracy, well_formed_rate; empty without sweeps."""
    rows = [
        {"layer": r.layer, "coef": float(e["coef"]), "accuracy": e.get("accuracy"), "wf": e.get("well_formed_rate")}
        for r in runs
        for e in r.summary.get("coef_sweep") or []
    ]
    cols = ["layer", "coef", "n_runs", "accuracy", "well_formed_rate"]
    if not rows:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(rows).astype({"accuracy": float, "wf": float})
    g = df.groupby(["layer", "coef"], as_index=False)
    out = g.agg(n_runs=("coef", "size"), accuracy=("accuracy", "mean"), well_formed_rate=("wf", "mean"))
    return out[cols].sort_values(["layer", "coef"]).reset_index(drop=True)


def add_probe(table: pd.DataFrame, record: Mapping[str, Any] | None) -> pd.DataFrame:
    """The layer table with a `crl probe` record's headroom per layer (module docstring); NaN at layers the record
    lacks, and the table unchanged without a record."""
    if not record:
        return table
    target = record.get("target", "answer")
    unsteered = float((record.get("unsteered") or {}).get("accuracy", float("nan")))
    by_layer = {int(e["layer"]): e for e in record.get("layers", [])}
    rows = []
    for layer in table["layer"]:
        e = by_layer.get(int(layer), {})
        probe, oracle = e.get("probe") or {}, e.get("oracle") or {}
        value = float(probe.get("value", float("nan")))
        lo, hi = (probe.get("ci") or (float("nan"), float("nan")))[:2]
        o_acc, o_none = float(oracle.get("accuracy", float("nan"))), float(oracle.get("unsteered", float("nan")))
        rows.append(
            {
                "probe_metric": "AUROC" if target == "correct" else "accuracy",
                "probe": value,
                "probe_lo": float(lo),
                "probe_hi": float(hi),
                "unsteered": unsteered,
                "probe_headroom": value - unsteered if target == "answer" else float("nan"),
                "oracle": o_acc,
                "oracle_headroom": o_acc - o_none,
                "probe_verdict": e.get("verdict", ""),
            }
        )
    return pd.concat([table.reset_index(drop=True), pd.DataFrame(rows)], axis=1)


def _trend(table: pd.DataFrame, column: str, min_change: float) -> tuple[str, tuple[float, int, float, int] | None]:
    """("falls" | "rises" | "flat" | "unmeasured", (first value, its layer, last value, its layer)) of `column`
    between the earliest and the latest layer where it is a number."""
    known = table[["layer", column]].dropna().sort_values("layer")
    if len(known) < 2:
        return "unmeasured", None
    (la, a), (lb, b) = known.iloc[0].tolist(), known.iloc[-1].tolist()
    d = b - a
    word = "falls" if d <= -min_change else "rises" if d >= min_change else "flat"
    return word, (float(a), int(la), float(b), int(lb))


def layer_claim(table: pd.DataFrame, min_share_change: float = 0.1) -> tuple[str, str]:
    """(verdict, sentence) on the claim "syntactic features early, semantic late, larger coefficients tolerated
    later", computed from a layer table (module docstring for the rule); the sentence gives the numbers.

    >>> t = pd.DataFrame({"layer": [6, 15, 24], "syntactic_share": [0.8, 0.5, 0.3], "coef_tolerance": [1.0, 2, 4]})
    >>> for part in layer_claim(t)[1].split(" and "):
    ...     print(part)
    confirmed: the syntactic share falls from 0.80 at layer 6 to 0.30 at layer 24
    the tolerated coefficient rises from 1 at layer 6 to 4 at layer 24
    """
    layers = sorted({int(x) for x in table["layer"]})
    if len(layers) < 2:
        where = f"layer {layers[0]}" if layers else "no layer"
        return "inconclusive", f"inconclusive: one layer only ({where}); the claim compares early and late layers"
    syn, s = _trend(table, "syntactic_share", min_share_change)
    tol, t = _trend(table, "coef_tolerance", 1e-12)
    if s is None:
        syn_text = "the syntactic share is unmeasured (fewer than two layers with steered decisions)"
    elif syn == "flat":
        syn_text = (
            f"the syntactic share barely changes ({s[0]:.2f} at layer {s[1]}, {s[2]:.2f} at layer {s[3]}; a change "
            f"under {min_share_change:g} counts as none)"
        )
    else:
        syn_text = f"the syntactic share {syn} from {s[0]:.2f} at layer {s[1]} to {s[2]:.2f} at layer {s[3]}"
    if t is None:
        tol_text = (
            "the tolerated coefficient is unmeasured (fewer than two layers with a coefficient sweep: summary.json "
            "coef_sweep, written by `crl analyze env=true`)"
        )
    elif tol == "flat":
        tol_text = f"the tolerated coefficient stays at {t[0]:g} from layer {t[1]} to layer {t[3]}"
    else:
        tol_text = f"the tolerated coefficient {tol} from {t[0]:g} at layer {t[1]} to {t[2]:g} at layer {t[3]}"
    if syn == "falls" and tol == "rises":
        verdict = "confirmed"
    elif syn == "rises" or tol == "falls":
        verdict = "refuted"
    else:
        verdict = "inconclusive"
    return verdict, f"{verdict}: {syn_text}{' and ' if verdict == 'confirmed' else '; '}{tol_text}"
