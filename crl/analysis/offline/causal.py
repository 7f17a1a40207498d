"""Is a feature the policy steers with the cause of its gain? Sufficiency and necessity on held-out prompts: the
definitions, the plan (which features and prompts, from the run directory), the estimates with their intervals, the
one-line verdicts and the stored record. No torch: `crl.analysis.replay.causal` runs the model.

For a feature f of the eval phase (the trained policy on the eval split, test by default, never trained on), on
the prompts where the policy chose f (at most `prompts` of them, a seeded sample), each prompt is run five ways:

- policy: the policy's own episode (its logged outcome);
- none: no steering (the run's logged `baseline:none` episode of that prompt, else replayed);
- alone: f at the policy's level at exactly the steps where the policy chose it, no steering elsewhere;
- replaced_none: the policy's logged actions with f's steps replaced by no steering;
- replaced_random: the same with f replaced by a random feature of f's activation-density decile (the feature
  cards' `frac_nonzero`; a fresh draw per prompt, at the policy's level), uniform over the SAE without cards.

The counterfactual episodes replay the logged actions step by step (open loop: the policy is not asked again
after a change); an episode that runs past its logged steps is not steered there. An arm whose actions are the
policy's own (or no steering at all) takes the logged outcome instead of being replayed: with one decision per
episode (constrained multiple choice) `alone` is the policy's episode and `replaced_none` is no steering, so
sufficiency and necessity vs no steering are 1 by construction and only the random replacement is measured.

With gain = acc(policy) - acc(none) on those prompts:

- sufficiency = (acc(alone) - acc(none)) / gain: the share of the gain f gives by itself;
- necessity_none = (acc(policy) - acc(replaced_none)) / gain: the share lost without f;
- necessity_random = (acc(policy) - acc(replaced_random)) / gain: the share lost when a random feature of the same
  density takes f's place (near 0: any steering there would do).

Each fraction has a 95% percentile interval from a joint bootstrap over prompts (`stats.ratio_bootstrap`,
resamples without a gain dropped); the accuracy differences (numerators and gain) have paired-bootstrap intervals
(`stats.paired_bootstrap`). A fraction is unstable when the gain is small: the verdict says so when the gain's
interval includes 0, and the differences are the numbers to read then. A group of features that do the same thing
(`agreement.group_features` over the measured features' signed decoder directions and answer effects) gets the
same five runs with every member at once. In a verdict a fraction reads yes when its whole interval is >= `CLEAR`,
no when it is below.

Stored as <run_dir>/analysis/causal.json: the plan (so a report measures again only when the eval changed) and one
row per feature or group.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crl.analysis.offline.agreement import DensityMatcher
from crl.analysis.offline.feature_effects import read_measurement
from crl.analysis.offline.stats import StatsConfig, paired_bootstrap, ratio_bootstrap
from crl.errors import CRLError
from crl.logs.reader import RunDir
from crl.logs.schema import NO_STEER, Phase

CAUSAL_FILE = "analysis/causal.json"
ARMS = ("policy", "none", "alone", "replaced_none", "replaced_random")
FRACTIONS = {  # fraction -> (the arm subtracted from, the arm subtracted); divided by the gain (policy - none)
    "sufficiency": ("alone", "none"),
    "necessity_none": ("policy", "replaced_none"),
    "necessity_random": ("policy", "replaced_random"),
}
CLEAR = 0.5  # a fraction whose whole interval is >= CLEAR (or < CLEAR) reads as yes (or no)


def plan(
    run: RunDir,
    eval_split: str | None = None,
    top: int = 5,
    prompts: int = 128,
    seed: int = 0,
    n_boot: int = 2000,
    max_seconds: float | None = None,
) -> dict[str, Any]:
    """What to measure, read off the run directory: the eval phase's `top` most used features (by decisions;
    ties to the lower id), each with the prompts where the policy chose it (at most `prompts`, a seeded sample),
    and a fingerprint of the eval and no-steering rows, so a stored record is reused only while they stay the same."""
    phase = run.eval_phase(eval_split)
    steps = first_seed(run.steps_of(phase))
    none_phase = run.baseline_phases(Phase.parse(phase).split).get("none")
    none = first_seed(run.episodes_of(none_phase)) if none_phase else pd.DataFrame(columns=["prompt_id", "correct"])
    steered = steps[steps["feature"] != NO_STEER]
    counts = steered.groupby("feature").size().reset_index(name="n")
    order = counts.sort_values(["n", "feature"], ascending=[False, True])["feature"].astype(int).tolist()
    features = {}
    for f in order[:top]:
        pids = sorted(set(steered.loc[steered["feature"] == f, "prompt_id"]))
        features[str(f)] = sample_prompts(pids, prompts, seed, f)
    return {
        "run": run.name,
        "phase": phase,
        "none_phase": none_phase,
        "sae_identity": run.sae_identity,
        "settings": {"top": top, "prompts": prompts, "seed": seed, "n_boot": n_boot, "max_seconds": max_seconds},
        "n_features_used": len(order),
        "features": features,
        "fingerprint": fingerprint(steps, run.episodes_of(phase), none),
    }


def first_seed(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of the lowest seed (an eval or baseline phase with several seeds is read at one)."""
    if df.empty or "seed" not in df.columns:
        return df
    return df[df["seed"] == df["seed"].min()].reset_index(drop=True)


def sample_prompts(pids: list[str], n: int, seed: int, salt: int = 0) -> list[str]:
    """At most `n` of `pids` (sorted), a seeded sample when there are more."""
    if len(pids) <= n:
        return sorted(pids)
    rng = np.random.default_rng([seed, int(salt)])
    return sorted(rng.choice(sorted(pids), size=n, replace=False).tolist())


def fingerprint(steps: pd.DataFrame, episodes: pd.DataFrame, none: pd.DataFrame) -> str:
    """A hash of what the estimates read: the eval's actions and outcomes and the no-steering outcomes."""
    h = hashlib.sha256()
    for df, cols in ((steps, ["prompt_id", "step", "feature", "coef"]), (episodes, ["prompt_id", "correct"])):
        part = df[cols].sort_values(cols[:2]) if len(df) else df
        h.update(part.to_csv(index=False).encode())
    if len(none):
        h.update(none[["prompt_id", "correct"]].sort_values("prompt_id").to_csv(index=False).encode())
    return h.hexdigest()[:16]


def matched_pool(feature: int, density: np.ndarray | None, d_sae: int) -> np.ndarray:
    """The features a density-matched random replacement of `feature` is drawn from: the others of its density
    decile (`agreement.DensityMatcher`; the nearest in density when the decile holds no other), or every other
    feature without densities."""
    others = np.delete(np.arange(d_sae), feature)
    if density is None:
        return others
    m = DensityMatcher(density)
    pool = m.pools[m.bin_of[feature]]
    pool = pool[pool != feature]
    if len(pool):
        return pool
    gap = np.abs(np.asarray(density, dtype=float)[others] - float(density[feature]))
    return others[gap == gap.min()]


def estimates(arms: dict[str, np.ndarray], stats: StatsConfig | None = None, one_step: bool = False) -> dict[str, Any]:
    """The numbers of one row (module docstring) from the per-prompt outcomes (1 correct, 0 not) of the five arms:
    each arm's accuracy, the gain, each fraction and its accuracy difference (`<name>_delta`), with intervals
    (`_lo`, `_hi`), whether the gain's interval includes 0, and the verdict (`one_step`: see `verdict`)."""
    stats = stats or StatsConfig()
    a = {k: np.asarray(arms[k], dtype=float) for k in ARMS}
    n = len(a["policy"])
    if any(len(v) != n for v in a.values()):
        raise CRLError(f"every arm needs one outcome per prompt (got {[len(v) for v in a.values()]})")
    gain = paired_bootstrap(a["policy"], a["none"], stats)
    out: dict[str, Any] = {"n_prompts": n, **{f"{k}_acc": float(v.mean()) for k, v in a.items()}}
    out.update(gain=gain.diff, gain_lo=gain.lo, gain_hi=gain.hi, gain_unclear=bool(gain.lo <= 0 <= gain.hi))
    den = a["policy"] - a["none"]
    for name, (hi_arm, lo_arm) in FRACTIONS.items():
        d = paired_bootstrap(a[hi_arm], a[lo_arm], stats)
        r = ratio_bootstrap(a[hi_arm] - a[lo_arm], den, stats)
        out.update({name: r.mean, f"{name}_lo": r.lo, f"{name}_hi": r.hi})
        out.update({f"{name}_delta": d.diff, f"{name}_delta_lo": d.lo, f"{name}_delta_hi": d.hi})
    out["verdict"] = verdict(out, one_step)
    return out


def _grade(row: dict[str, Any], name: str, yes: str, no: str) -> str:
    lo, hi = row.get(f"{name}_lo"), row.get(f"{name}_hi")
    if lo is None or hi is None or np.isnan(lo) or np.isnan(hi):
        return f"{name.replace('_', ' ')} undefined"
    if lo >= CLEAR:
        return yes
    if hi < CLEAR:
        return no
    return f"{name.replace('_', ' ')} unclear"


def verdict(row: dict[str, Any], one_step: bool = False) -> str:
    """One line: what the row says about the feature (a fraction reads as yes when its whole interval is >= 1/2,
    no when it is below; with a gain whose interval includes 0 no fraction is read). `one_step`: every episode is
    one decision, so sufficiency and necessity vs no steering hold by construction and only the random
    replacement is read."""
    g, lo, hi = row["gain"], row["gain_lo"], row["gain_hi"]
    if g == 0:
        return "no gain over no steering on these prompts: nothing to attribute"
    if lo <= 0 <= hi:
        return (
            f"gain {g:+.2f} not distinguishable from 0 (CI {lo:+.2f} to {hi:+.2f}): the fractions are unstable, "
            "read the accuracy differences"
        )
    head = "" if g > 0 else "the policy does worse than no steering here; "
    parts = [
        *(
            ["sufficient and necessary by construction (one decision per episode)"]
            if one_step
            else [
                _grade(row, "sufficiency", "sufficient alone", "not sufficient alone"),
                _grade(row, "necessity_none", "necessary", "not necessary"),
            ]
        ),
        _grade(
            row,
            "necessity_random",
            "specific (a random feature of its density does not replace it)",
            "replaceable (a random feature of its density does about as well)",
        ),
    ]
    return head + ", ".join(parts)


def read_causal(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's causal.json (module docstring), or None when it was not measured."""
    return read_measurement(Path(run_dir) / CAUSAL_FILE, "rows", list)


def is_current(record: dict[str, Any] | None, want: dict[str, Any]) -> bool:
    """Whether a stored record measured exactly what `plan` asks for now."""
    keys = ("phase", "none_phase", "sae_identity", "settings", "features", "fingerprint")
    return record is not None and all(record.get(k) == want[k] for k in keys)


def _ci(x: float, lo: float, hi: float, signed: bool = False) -> str:
    f = "{:+.2f}" if signed else "{:.2f}"
    if x is None or np.isnan(x):
        return "undefined (no gain)"
    if lo is None or np.isnan(lo) or np.isnan(hi):
        return f"{f.format(x)} [no CI]"
    return f"{f.format(x)} [{f.format(lo)}, {f.format(hi)}]"


def _cell(row: dict[str, Any], name: str) -> str:
    frac = _ci(row[name], row[f"{name}_lo"], row[f"{name}_hi"])
    delta = _ci(row[f"{name}_delta"], row[f"{name}_delta_lo"], row[f"{name}_delta_hi"], signed=True)
    return f"{frac}; Δacc {delta}"


TABLE_COLUMNS = [
    "levels",
    "n_prompts",
    "policy_acc",
    "none_acc",
    "gain",
    "sufficiency",
    "necessity_none",
    "necessity_random",
    "verdict",
]


def members_text(members: list[list[int]], name: Callable[[int], str] = str) -> str:
    """A group's signed members, e.g. `+5 · −9` (`name` writes a feature, e.g. with its label)."""
    return " · ".join(f"{'+' if sign > 0 else '−'}{name(int(f))}" for f, sign in members)


def causal_table(record: dict[str, Any], kind: str = "feature", name: Callable[[int], str] = str) -> pd.DataFrame:
    """The report's rows of one kind (feature: a `feature` id column; group: a `members` text column, each
    feature written by `name`), each fraction and the gain as `x [lo, hi]` text, each fraction with its accuracy
    difference."""
    out = []
    for r in record.get("rows", []):
        if r.get("kind", "feature") != kind:
            continue
        head = {"feature": int(r["feature"])} if kind == "feature" else {"members": members_text(r["members"], name)}
        out.append(
            {
                **head,
                "levels": ", ".join(f"{lv:+g}" for lv in r.get("levels", [])),
                "n_prompts": int(r["n_prompts"]),
                "policy_acc": float(r["policy_acc"]),
                "none_acc": float(r["none_acc"]),
                "gain": _ci(r["gain"], r["gain_lo"], r["gain_hi"], signed=True),
                **{name: _cell(r, name) for name in FRACTIONS},
                "verdict": r["verdict"],
            }
        )
    first = ["feature"] if kind == "feature" else ["members"]
    return pd.DataFrame(out, columns=[*first, *TABLE_COLUMNS])
