"""Transfer pooled over seeds: `crl transfer 'run_dirs=[a,b,c]'` (crl/commands/transfer.py) reads each run's `crl
transfer` result (<run>/analysis/transfer.json, transfer.csv, transfer_prompts.csv: crl/analysis/offline/transfer.py)
and pools them, per variant and per arm (the policy; with an abstention rule both `crl_abstain`, with the rule, and
`crl_no_abstain`, without it):

- per seed: diff_s = acc(arm) - acc(none) over that run's prompts of the variant;
- pooled diff = the mean of diff_s over the seeds (every seed weighs the same);
- its 95% CI and two-sided p-value (`stats.seeds_fixed_bootstrap`): a bootstrap that resamples prompts within each seed
  and holds the seeds fixed, so it speaks of these trained policies on new prompts. Where every seed ran the same
  prompts of the variant (the default: a variant's test prompts do not depend on the run's seed) one draw of prompt ids
  serves every seed, keeping a prompt's correlation across seeds; otherwise each seed is drawn on its own (stratified);
- the seed-level spread: the min and max of diff_s, and with 3 seeds or more the t-interval of the mean over seeds
  (`stats.t_half_width`), which speaks of another seed of the same recipe;
- the verdict of the single-run table (`transfer.verdict`) on the pooled diff, the prompt-bootstrap CI and its p, with
  the runs' own harm margin and alpha (transfer.json: harm_margin, alpha);
- issue #19's acceptance, per arm: every held-out variant has lo >= -margin, and some held-out wording has a gain
  (diff > 0, p < alpha); each part names the variants that fail or pass it.

Runs are pooled only when their transfers are of one task, trained distribution, variant list, n, abstention rule
(policy.abstain, and whether it was fitted by `crl transfer fit_abstain=`), greedy rule, harm margin and alpha
(`POOL_KEYS`); else one CRLError line names the run and the key. Torch-free. Files: <out>/transfer_pooled.csv (one row
per variant and arm), transfer_pooled.json (the rows, the runs, the settings and the acceptance), and the forest plot
transfer_pooled.png (crl/analysis/report/transfer.py).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crl.analysis.offline.stats import StatsConfig, seeds_fixed_bootstrap, t_half_width
from crl.analysis.offline.text import text_table
from crl.analysis.offline.transfer import ABLATION_KEY, PROMPTS_CSV, fmt_p, fmt_pct, policies_of, verdict
from crl.analysis.offline.transfer import JSON as TRANSFER_JSON
from crl.config.core import show
from crl.errors import CRLError
from crl.logs.atomic import atomic_write_bytes, atomic_write_json

JSON, CSV, PNG = "transfer_pooled.json", "transfer_pooled.csv", "transfer_pooled.png"
# transfer.json keys that must agree for the runs to pool (the variant list and the arms are checked too).
POOL_KEYS = ("task", "trained", "n", "abstain", "abstain_fitted_now", "greedy_rule", "harm_margin", "alpha")
# The settings of `crl transfer` a stored result must have to be reused as asked (crl.run.transfer.plan_transfer);
# all but the seed must also be one across the runs before any transfer runs (PLAN_KEYS).
RERUN_KEYS = ("task", "trained", "n", "seed", "abstain", "abstain_fitted_now", "greedy_rule")
PLAN_KEYS = tuple(k for k in RERUN_KEYS if k != "seed")
ARMS = {"crl": "the policy", "crl_abstain": "with abstention", "crl_no_abstain": "without abstention"}
MIN_SEEDS_T = 3  # the seed t-interval from this many seeds (with 2 it spans +-12.7 standard errors)
CI_NOTES = {
    "lo_hi": "95% CI of the pooled diff: bootstrap over prompts within each seed, seeds fixed (one draw of prompt ids "
    "shared by the seeds where they ran the same prompts); p: its two-sided bootstrap p-value",
    "seed_t_lo_hi": "seed t 95% CI: t-interval of the mean over the seeds' diffs (seed-to-seed spread; 3+ seeds)",
    "seed_min_max": "the smallest and largest per-seed diff",
    "verdict": "the single-run rule on the pooled diff with the prompt-bootstrap CI and p",
}


@dataclass
class RunTransfer:
    """One run's stored `crl transfer` result."""

    name: str
    path: Path
    settings: dict[str, Any]  # transfer.json without its rows
    variants: list[dict[str, Any]]  # variant, held_out ("" = trained), describe, in the table's order
    outcomes: pd.DataFrame  # transfer_prompts.csv

    @property
    def specs(self) -> list[str]:
        return [v["variant"] for v in self.variants]


def _stored(run_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """(settings, variant rows) of a run's transfer.json when transfer_prompts.csv is there too, else None."""
    p = Path(run_dir) / "analysis"
    try:
        data = json.loads((p / TRANSFER_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("variants"), list) or not (p / PROMPTS_CSV).exists():
        return None
    return {k: v for k, v in data.items() if k not in ("variants", ABLATION_KEY)}, data["variants"]


def stale_reason(run_dir: str | Path, wanted: dict[str, Any], specs: list[str]) -> str | None:
    """Why `run_dir`'s stored transfer is not the one asked for (`wanted`: the settings `crl transfer` would record,
    `specs`: its variants), or None when it is and can be pooled as it stands.

    >>> stale_reason("/nonexistent", {}, [])
    'no transfer result'
    """
    stored = _stored(run_dir)
    if stored is None:
        return "no transfer result"
    settings, rows = stored
    for k in RERUN_KEYS:
        if settings.get(k) != wanted.get(k):
            return f"its transfer has {k}={show(settings.get(k))}, asked {show(wanted.get(k))}"
    have = [r.get("variant") for r in rows]
    if have != list(specs):
        return f"its transfer has variants={show(have)}, asked {show(list(specs))}"
    return None


def read_run_transfer(run_dir: str | Path) -> RunTransfer:
    """A run's stored transfer result (transfer.json and transfer_prompts.csv), or one CRLError line."""
    p = Path(run_dir)
    stored = _stored(p)
    if stored is None:
        raise CRLError(f"{p} has no `crl transfer` result (analysis/{TRANSFER_JSON} and {PROMPTS_CSV})")
    settings, rows = stored
    variants = [
        {"variant": str(r["variant"]), "held_out": r.get("held_out") or "", "describe": r.get("describe") or ""}
        for r in rows
    ]
    outcomes = pd.read_csv(p / "analysis" / PROMPTS_CSV)
    return RunTransfer(p.name, p, settings, variants, outcomes)


def check_same(items: list[tuple[str, dict[str, Any], list[str]]], keys: tuple[str, ...], hint: str) -> None:
    """(name, settings, variant specs) of each run: one CRLError line naming the first run whose setting of `keys`, or
    whose variant list, differs from the first run's; `hint` ends the line."""
    a, first, specs = items[0]
    for b, other, other_specs in items[1:]:
        diff = [(k, other.get(k), first.get(k)) for k in keys if other.get(k) != first.get(k)]
        if other_specs != specs:
            diff.append(("variants", other_specs, specs))
        if diff:
            k, vb, va = diff[0]
            raise CRLError(f"cannot pool {b} with {a}: {k}={show(vb)} in {b}, {show(va)} in {a}; {hint}")


def check_poolable(runs: list[RunTransfer]) -> tuple[str, ...]:
    """The arms the runs share, or one CRLError line naming the first run (and key) that differs from the first run."""
    if len(runs) < 2:
        raise CRLError("pooling needs two runs or more; for one run use run_dir=")
    names = [r.name for r in runs]
    if len(set(names)) < len(names):
        raise CRLError(
            f"two runs are named {next(n for n in names if names.count(n) > 1)}; pool runs of distinct names"
        )
    check_same([(r.name, r.settings, r.specs) for r in runs], POOL_KEYS, "run `crl transfer` on them with one setting")
    arms = policies_of(runs[0].outcomes)
    for r in runs[1:]:
        if policies_of(r.outcomes) != arms:
            raise CRLError(
                f"cannot pool {r.name} with {runs[0].name}: its arms are {', '.join(policies_of(r.outcomes))}, "
                f"{runs[0].name}'s {', '.join(arms)}"
            )
    return arms


@dataclass
class Pooled:
    runs: list[RunTransfer]
    table: pd.DataFrame  # one row per (variant, arm); per_seed: the diffs in the order of `runs`
    acceptance: dict[str, dict[str, Any]]  # per arm
    margin: float
    alpha: float
    cfg: StatsConfig
    shared: dict[str, bool] = field(default_factory=dict)  # per variant: every seed ran the same prompts

    @property
    def arms(self) -> list[str]:
        return list(dict.fromkeys(self.table["arm"]))


def _seed_frames(runs: list[RunTransfer], variant: str) -> tuple[list[pd.DataFrame], bool]:
    """Each run's prompts of `variant` and whether they are one prompt set (then aligned on the first run's order)."""
    frames = []
    for r in runs:
        o = r.outcomes[r.outcomes["variant"] == variant]
        if o.empty:
            raise CRLError(f"{r.name}'s {PROMPTS_CSV} has no prompt of variant {variant}")
        if o["prompt_id"].duplicated().any():
            raise CRLError(f"{r.name}'s {PROMPTS_CSV} repeats a prompt of variant {variant}")
        frames.append(o)
    ids = list(frames[0]["prompt_id"])
    shared = all(set(f["prompt_id"]) == set(ids) for f in frames[1:])
    if shared:
        frames = [f.set_index("prompt_id").loc[ids].reset_index() for f in frames]
    return frames, shared


def pool_transfer(runs: list[RunTransfer], cfg: StatsConfig | None = None) -> Pooled:
    """The pooled table and acceptance of `runs` (module docstring); `cfg`: resamples and seed (its alpha is
    replaced by the runs' own)."""
    arms = check_poolable(runs)
    margin, alpha = float(runs[0].settings["harm_margin"]), float(runs[0].settings["alpha"])
    base = cfg or StatsConfig()
    cfg = StatsConfig(n_boot=base.n_boot, alpha=alpha, seed=base.seed)
    rows, shared_of = [], {}
    for v in runs[0].variants:
        frames, shared = _seed_frames(runs, v["variant"])
        shared_of[v["variant"]] = shared
        none = [f["none_correct"].to_numpy(dtype=float) for f in frames]
        for m in arms:
            acc = [f[f"{m}_correct"].to_numpy(dtype=float) for f in frames]
            per_seed = [float(a.mean() - b.mean()) for a, b in zip(acc, none, strict=True)]
            test = seeds_fixed_bootstrap([a - b for a, b in zip(acc, none, strict=True)], shared, cfg)
            half = t_half_width(np.array(per_seed), alpha) if len(runs) >= MIN_SEEDS_T else math.nan
            row = {
                "variant": v["variant"],
                "held_out": v["held_out"],
                "describe": v["describe"],
                "arm": m,
                "n_seeds": len(runs),
                "n": int(np.mean([len(f) for f in frames])),
                "shared_prompts": shared,
                "none": float(np.mean([b.mean() for b in none])),
                "acc": float(np.mean([a.mean() for a in acc])),
                "diff": test.diff,
                "lo": test.lo,
                "hi": test.hi,
                "p": test.p,
                "verdict": verdict(test.diff, test.lo, test.p, margin, alpha),
                "seed_min": min(per_seed),
                "seed_max": max(per_seed),
                "seed_t_lo": test.diff - half,
                "seed_t_hi": test.diff + half,
                "steered": float(np.mean([f[f"{m}_steered"].astype(float).mean() for f in frames])),
                "per_seed": per_seed,
            }
            if f"{m}_abstained" in frames[0]:
                row["abstained"] = float(np.mean([f[f"{m}_abstained"].astype(float).mean() for f in frames]))
            rows.append(row)
    table = pd.DataFrame(rows)
    acceptance = {m: acceptance_of(table[table["arm"] == m], margin, alpha) for m in arms}
    return Pooled(runs, table, acceptance, margin, alpha, cfg, shared_of)


def acceptance_of(rows: pd.DataFrame, margin: float, alpha: float) -> dict[str, Any]:
    """Issue #19's acceptance on one arm's pooled rows: every held-out variant has lo >= -margin (`no_harm`, and
    `harm_fails`: those that do not), some held-out wording has diff > 0 with p < alpha (`wording_gain`, and
    `wording_gains`: those that do); `met`: both. With no held-out variant (or wording) that part is not met."""
    held = rows[rows["held_out"].astype(str) != ""]
    fails = [r["variant"] for _, r in held.iterrows() if r["lo"] < -margin]
    # map, not str.split().apply: on no held-out row that gives a frame, not a mask
    wordings = held[held["held_out"].astype(str).map(lambda h: "wording" in h.split("+")).astype(bool)]
    gains = [r["variant"] for _, r in wordings.iterrows() if r["diff"] > 0 and r["p"] < alpha]
    no_harm, gain = bool(len(held)) and not fails, bool(gains)
    return {
        "no_harm": no_harm,
        "harm_fails": fails,
        "held_out": list(held["variant"]),
        "wording_gain": gain,
        "wording_gains": gains,
        "wordings": list(wordings["variant"]),
        "met": no_harm and gain,
    }


def acceptance_lines(pooled: Pooled) -> list[str]:
    """One line per arm: each part of the acceptance, yes/no, with the variants that decide it."""
    t = pooled.table.set_index(["arm", "variant"])
    lines = [
        acceptance_line(f"{arm} ({ARMS.get(arm, arm)})", acc, t.loc[arm], pooled.margin, pooled.alpha)
        for arm, acc in pooled.acceptance.items()
    ]
    n = len(pooled.runs)
    if n < MIN_SEEDS_T:
        lines.append(f"(issue #19 states its acceptance over {MIN_SEEDS_T} seeds or more; {n} pooled here)")
    return lines


def acceptance_line(label: str, acc: dict[str, Any], rows: pd.DataFrame, margin: float, alpha: float) -> str:
    """`acceptance_of`'s answer `acc` as one line; `rows`: the arm's rows by variant (lo, diff, p)."""
    if not acc["held_out"]:
        harm = "no (no held-out variant among the variants)"
    elif acc["harm_fails"]:
        harm = "no (" + ", ".join(f"{v} lo {rows.loc[v, 'lo']:+.3f}" for v in acc["harm_fails"]) + ")"
    else:
        harm = "yes"
    if not acc["wordings"]:
        gain = "no (no held-out wording among the variants)"
    elif acc["wording_gains"]:
        shown = [f"{v} {rows.loc[v, 'diff']:+.3f}, p {fmt_p(rows.loc[v, 'p'])}" for v in acc["wording_gains"]]
        gain = "yes (" + "; ".join(shown) + ")"
    else:
        gain = "no"
    return (
        f"acceptance, {label}: every held-out variant lo >= -{margin:g}: {harm}; "
        f"a held-out wording with a gain p < {alpha:g}: {gain} -> {'met' if acc['met'] else 'not met'}"
    )


def _signed(x: float) -> str:
    return "" if x != x else f"{x:+.3f}"


def format_pooled(pooled: Pooled) -> str:
    """The pooled table as plain text (one line per variant and arm), the runs in per-seed order, and what each
    interval is."""
    head = ["variant", "held out", "n", "arm", "none", "acc", "diff [95% CI]", "p", "per seed", "seed min..max"]
    head += ["seed t 95% CI", "steered", "verdict"]
    lines = []
    for _, r in pooled.table.iterrows():
        t_ci = f"[{r['seed_t_lo']:+.3f}, {r['seed_t_hi']:+.3f}]" if r["seed_t_lo"] == r["seed_t_lo"] else "-"
        lines.append(
            [
                str(r["variant"]),
                r["held_out"] or "-",
                str(int(r["n"])),
                str(r["arm"]),
                f"{r['none']:.3f}",
                f"{r['acc']:.3f}",
                f"{r['diff']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}]",
                fmt_p(r["p"]),
                "|".join(_signed(d) for d in r["per_seed"]),
                f"{r['seed_min']:+.3f}..{r['seed_max']:+.3f}",
                t_ci,
                fmt_pct(r["steered"]),
                str(r["verdict"]),
            ]
        )
    runs = ", ".join(f"{r.name} (seed {r.settings.get('seed')})" for r in pooled.runs)
    notes = [
        f"pooled over {len(pooled.runs)} runs, per seed in this order: {runs}",
        "diff = mean over seeds of (acc - none); "
        + CI_NOTES["lo_hi"].replace("95% CI of the pooled diff: ", "[95% CI]: "),
        CI_NOTES["seed_t_lo_hi"] + f"; verdict: {CI_NOTES['verdict']} (harm margin {pooled.margin:g}, alpha "
        f"{pooled.alpha:g})",
    ]
    return "\n".join([*text_table([head, *lines]), *notes])


def default_out(run_dirs: list[Path]) -> Path:
    """Where the pooled files go without out=: the runs' common parent folder (one CRLError line when that is the
    filesystem's root)."""
    common = Path(os.path.commonpath([str(p.resolve().parent) for p in run_dirs]))
    if common == Path(common.anchor):
        raise CRLError(f"the runs share no parent folder but {common}; pass out=<a folder> for the pooled files")
    return common


def check_out(out: Path, run_dirs: list[Path], name: str = JSON, what: str = "pools") -> None:
    """Refuse (one line) to replace a default folder's `name` (a JSON with the runs it is of, under "runs") that
    `what` another set of runs."""
    try:
        old = json.loads((out / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    before = sorted(str(Path(r["run_dir"]).resolve()) for r in old.get("runs", []) if "run_dir" in r)
    if before != sorted(str(p.resolve()) for p in run_dirs):
        names = ", ".join(Path(b).name for b in before)
        raise CRLError(f"{out / name} {what} other runs ({names}); pass out=<another folder> to keep both")


def write_pooled(out: str | Path, pooled: Pooled) -> dict[str, Path]:
    """transfer_pooled.csv and .json in `out` (atomically); returns their paths (the plot is the report's)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / CSV, "json": out / JSON}
    names = [r.name for r in pooled.runs]
    flat = pooled.table.assign(per_seed=["|".join(f"{d:.4f}" for d in ds) for ds in pooled.table["per_seed"]])
    atomic_write_bytes(paths["csv"], flat.to_csv(index=False).encode())
    records = json.loads(pooled.table.drop(columns="per_seed").to_json(orient="records"))  # NaN -> null
    for rec, ds in zip(records, pooled.table["per_seed"], strict=True):
        rec["per_seed"] = dict(zip(names, ds, strict=True))
    first = pooled.runs[0].settings
    data = {
        "runs": [{"run": r.name, "run_dir": str(r.path), "seed": r.settings.get("seed")} for r in pooled.runs],
        "settings": {k: first.get(k) for k in POOL_KEYS},
        "n_boot": pooled.cfg.n_boot,
        "boot_seed": pooled.cfg.seed,
        "intervals": CI_NOTES,
        "rows": records,
        "acceptance": pooled.acceptance,
        "acceptance_lines": acceptance_lines(pooled),
    }
    atomic_write_json(paths["json"], data)
    return paths
