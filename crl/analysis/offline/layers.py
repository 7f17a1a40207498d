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
  blip at a large coefficient from counting. 0 when even the smallest fails, NaN without a sweep. A tolerance equal
  to the sweep's largest |coef| (`coef_sweep_max`) is a ceiling, not a value: the outputs stay well-formed as far as
  the sweep goes, so the tolerance is at least that (`coef_at_ceiling`: some seed's is, so the layer's mean is a lower
  bound; `format_tolerance` prints it ">= 4 (sweep max)"). `constrained`: the runs' task.mode is constrained (one
  option letter, so every output is well-formed by construction and the tolerance says nothing).
- headroom before training (`add_probe`, from a `crl probe` record of the same task): the probe's readability
  (accuracy, or AUROC for number answers) with its CI, the unsteered model's accuracy, `probe_headroom` = probe -
  unsteered (accuracy targets only: how much more the residual reads than the model says), and the oracle's
  `oracle_headroom` = best single action per prompt - no steering on the oracle's prompts.

The paper's claim, read from one layer table (`layer_claim`): steering picks syntactic features early and semantic
ones late, and later layers tolerate larger coefficients. Between the earliest and the latest layer measured:
the syntactic share "falls" when it drops by at least `min_share_change` (0.1), "rises" when it grows by that much,
else it is flat; the coefficient tolerance "rises" or "falls" on any change (it moves in the sweep's steps), else it
is flat. A tolerance at the sweep's ceiling is a lower bound: it is compared only where the bound decides (at least 4
late against 1 early rises; at least 4 early against 1 late falls), and with both ends at the ceiling it is not
measurable (widen the sweep: `SWEEP_KEY`). On a constrained task it does not apply. confirmed = the share falls and
the tolerance rises; refuted = the share rises or the tolerance falls; otherwise inconclusive (a flat, unmeasured or
inapplicable part, or one layer only). Layers in between are shown, not tested.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import yaml

from crl.analysis.offline.features import SYNTACTIC_TYPES, TOKEN_TYPES, token_types
from crl.analysis.offline.stats import StatsConfig, aggregate_seeds
from crl.errors import CRLError
from crl.logs.reader import RunDir
from crl.logs.schema import NO_STEER, Phase

# How to set the coefficient sweep's coefficients from the command line (named by `layer_claim` when the sweep is too
# narrow to measure): AnalyzeConfig.coef_sweep, multiples of steering.coef; a study's resume sweeps its cells again.
SWEEP_KEY = (
    "`crl analyze env=true 'coef_sweep=[...]'`, multiples of steering.coef; "
    "in a study `resume=true 'analyze.coef_sweep=[...]'`"
)


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


def coef_sweep_max(sweep: list[dict]) -> float:
    """The sweep's largest |coef| (NaN without a sweep): a tolerance equal to it is a ceiling, not a value."""
    try:
        return max((abs(float(e["coef"])) for e in sweep), default=float("nan"))
    except (KeyError, TypeError, ValueError):
        raise CRLError("summary.json coef_sweep entries need a numeric 'coef'; fix the writer of the sweep") from None


def format_tolerance(tol: float, at_ceiling: bool) -> str:
    """A tolerance as printed: at the sweep's ceiling it is a lower bound.

    >>> format_tolerance(4.0, True), format_tolerance(1.0, False), format_tolerance(float("nan"), False)
    ('>= 4 (sweep max)', '1', '-')
    """
    if np.isnan(tol):
        return "-"
    return f">= {tol:g} (sweep max)" if at_ceiling else f"{tol:g}"


def constrained(config_text: str) -> bool:
    """Whether a run's config.yaml has task.mode=constrained (one option letter: well-formed by construction).

    >>> constrained("task:\\n  mode: constrained\\n"), constrained("task:\\n  name: arith\\n"), constrained(": bad")
    (True, False, False)
    """
    try:
        cfg = yaml.safe_load(config_text)
    except yaml.YAMLError:
        return False
    task = cfg.get("task") if isinstance(cfg, dict) else None
    return isinstance(task, dict) and task.get("mode") == "constrained"


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
        eps, steps, tols, maxes = [], [], [], []
        for r in group:
            phase = r.eval_phase(cfg.split)
            split = Phase.parse(phase).split
            e = r.episodes_of(phase)
            eps.append(e.assign(prompt_id=e["prompt_id"].astype(str)))
            steps.append(r.steps_of(phase))
            base = r.baseline_phases(split).get("none")
            r0 = float(r.episodes_of(base)["well_formed"].mean()) if base else None
            sweep = r.summary.get("coef_sweep") or []
            tols.append(coef_tolerance(sweep, r0, cfg.tolerance_frac))
            maxes.append(coef_sweep_max(sweep))
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
            "coef_sweep_max": float(np.nanmax(maxes)) if not all(np.isnan(maxes)) else float("nan"),
            "coef_at_ceiling": any(t == m for t, m in zip(tols, maxes, strict=True) if not np.isnan(t) and t > 0),
            "constrained": all(constrained(r.config_text) for r in group),
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


def _flag(value: Any) -> bool:
    """A boolean column's value; missing (a table without it, or a NaN) is False."""
    return value is not None and not pd.isna(value) and bool(value)


def _lower_bound(value: float, row: pd.Series) -> str:
    """Why a tolerance at the sweep's ceiling is a lower bound."""
    if value == row.get("coef_sweep_max"):
        return f"{value:g} is the sweep's largest coefficient, a lower bound"
    return f"{value:g} is a lower bound: some seed reaches the sweep's largest coefficient"


def _tolerance_text(table: pd.DataFrame) -> tuple[str, str]:
    """("rises" | "falls" | "flat" | "unmeasured" | "inapplicable", the sentence's coefficient half) between the
    earliest and the latest layer with a tolerance; a tolerance at the sweep's ceiling is a lower bound (module
    docstring)."""
    if len(table) and "constrained" in table and all(_flag(v) for v in table["constrained"]):
        return "inapplicable", (
            "on a constrained task outputs are well-formed by construction, so tolerance by well-formed rate does not "
            "apply"
        )
    known = table.dropna(subset=["coef_tolerance"]).sort_values("layer")
    if len(known) < 2:
        return "unmeasured", (
            "the tolerated coefficient is unmeasured (fewer than two layers with a coefficient sweep: summary.json "
            "coef_sweep, written by `crl analyze env=true`)"
        )
    first, last = known.iloc[0], known.iloc[-1]
    a, la = float(first["coef_tolerance"]), int(first["layer"])
    b, lb = float(last["coef_tolerance"]), int(last["layer"])
    ca, cb = _flag(first.get("coef_at_ceiling")), _flag(last.get("coef_at_ceiling"))
    widen = f"widen the sweep ({SWEEP_KEY}) to measure tolerance"
    if not ca and not cb:
        if b == a:
            return "flat", f"the tolerated coefficient stays at {a:g} from layer {la} to layer {lb}"
        word = "rises" if b > a else "falls"
        return word, f"the tolerated coefficient {word} from {a:g} at layer {la} to {b:g} at layer {lb}"
    if ca and cb:
        maxes = set(known["coef_sweep_max"]) if "coef_sweep_max" in known else set()
        full = all(_flag(v) for v in known["coef_at_ceiling"]) and len(maxes) == 1
        full = full and (known["coef_tolerance"] == known["coef_sweep_max"]).all()
        if full:
            return "unmeasured", (
                "the tolerated coefficient is not measurable: every layer keeps its outputs well-formed up to the "
                f"sweep's largest coefficient ({maxes.pop():g}); {widen}"
            )
        return "unmeasured", (
            f"the tolerated coefficient is not measurable: layer {la} tolerates at least {a:g} and layer {lb} at least "
            f"{b:g}, both at the sweep's ceiling; {widen}"
        )
    if cb:  # the late layer is a lower bound: it decides only when it is already above the early one
        if b > a:
            return "rises", (
                f"the tolerated coefficient rises: layer {lb} tolerates at least {b:g}, larger than layer {la}'s {a:g} "
                f"({_lower_bound(b, last)})"
            )
        return "unmeasured", (
            f"the tolerated coefficient cannot be compared: layer {lb} tolerates at least {b:g}, layer {la} {a:g} "
            f"({_lower_bound(b, last)}); {widen}"
        )
    if b < a:  # the early layer is a lower bound: it decides only when it is already above the late one
        return "falls", (
            f"the tolerated coefficient falls: layer {lb} tolerates {b:g}, less than layer {la}'s at least {a:g} "
            f"({_lower_bound(a, first)})"
        )
    return "unmeasured", (
        f"the tolerated coefficient cannot be compared: layer {la} tolerates at least {a:g}, layer {lb} {b:g} "
        f"({_lower_bound(a, first)}); {widen}"
    )


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
    tol, tol_text = _tolerance_text(table)
    if s is None:
        syn_text = "the syntactic share is unmeasured (fewer than two layers with steered decisions)"
    elif syn == "flat":
        syn_text = (
            f"the syntactic share barely changes ({s[0]:.2f} at layer {s[1]}, {s[2]:.2f} at layer {s[3]}; a change "
            f"under {min_share_change:g} counts as none)"
        )
    else:
        syn_text = f"the syntactic share {syn} from {s[0]:.2f} at layer {s[1]} to {s[2]:.2f} at layer {s[3]}"
    if syn == "falls" and tol == "rises":
        verdict = "confirmed"
    elif syn == "rises" or tol == "falls":
        verdict = "refuted"
    else:
        verdict = "inconclusive"
    return verdict, f"{verdict}: {syn_text}{' and ' if verdict == 'confirmed' else '; '}{tol_text}"
