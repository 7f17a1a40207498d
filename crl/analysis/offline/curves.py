"""Equal-budget learning curves of CRL and GRPO, and the headline: how much of GRPO's val gain CRL recovers at the same
number of rollouts, with no weight changed (`crl curves`; a section of `crl rl-compare`'s report too).

A curve is read from one finished run directory, `crl train` (CRL) or `crl grpo` (GRPO: run.json "method": "grpo"),
one point per greedy val evaluation (episodes.jsonl rows of phase eval:<val split>, logged at update u: CRL's PPO
updates done, GRPO's rounds done; u = 0 is before training: CRL's untrained policy, which normally does not steer,
and GRPO's base model):

- rollouts: the training episodes logged before that evaluation (rows of phase train with update < u). One CRL episode
  and one GRPO completion are one rollout each, so both methods share the axis. The val episodes of the evaluations
  are not counted (both methods spend the same on them).
- wall_seconds: training time before that evaluation, summed from the run's own per-update timings in metrics.jsonl
  (rows with update < u). CRL: charts/update_seconds, an update's rollouts (and the unsteered rollouts of
  ppo.advantage=unsteered) and its PPO update. GRPO: speed/step_seconds, TRL's optimizer steps: sampling the
  completions, scoring them, the gradient step. Not counted: the val evaluations themselves, the test evaluations,
  loading the model, CRL's observation statistics, checkpoint writes, and work lost to a kill before a resume. None
  where the rows lack the timing (older runs).
- accuracy, n: the share of correct val episodes, over the n val prompts.

Pooled over seeds (`pool`), at every budget where every run was evaluated:

- acc_M(n): the mean over method M's seeds of each seed's val accuracy. CI: a t interval over the seeds with 2 or more
  seeds; with one seed (n=1) the Wilson binomial interval over the val prompts instead.
- base: the base model's val accuracy, neither steered nor tuned: the mean over the GRPO runs of their round-0
  evaluation. CRL's update-0 evaluation is its untrained policy, which under the usual no-steer prior does not steer
  and so scores the same; a warning says when it does not (a prior that steers from the start).
- g_G(n) = acc_G(n) - base, g_C(n) = acc_C(n) - base, CRL's share = g_C / g_G.
- The gains' and the share's CIs come from one two-way bootstrap (as `stats.aggregate_seeds`): each resample draws the
  val prompts with replacement, one draw shared by every run and the base (all answer the same prompts, so the
  comparison is paired), and each method's seeds with replacement (a method with one seed keeps it). The share's CI is
  the percentile interval of g_C* / g_G* over the resamples with g_G* > 0 (fewer than alpha/2 of them have g_G* <= 0
  wherever the share is defined).
- Defined-ness: the share is defined only where GRPO's gain CI lies above 0. Elsewhere GRPO did not improve val at that
  budget and the share is None with that reason, never a ratio of noise.
- The test split, from the same episodes rows summary.json's before/after were computed from: before = no steering /
  the base model, after = each run's selected model (best val over its whole budget), pooled and compared the same way.
"""

from __future__ import annotations

import glob
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from crl.analysis.diffing.runs import GRPO_METHOD, check_comparable, check_grpo_run, run_method
from crl.analysis.offline.stats import StatsConfig, t_half_width, wilson
from crl.errors import CRLError
from crl.logs import schema
from crl.logs.reader import RunDir, load_run
from crl.logs.schema import Phase, RunInfo

CRL, GRPO = "crl", "grpo"
METHODS = (CRL, GRPO)
LABEL = {CRL: "CRL (steering, frozen weights)", GRPO: "GRPO (weights tuned)"}
SECONDS = {CRL: "charts/update_seconds", GRPO: "speed/step_seconds"}  # per-update training time in metrics.jsonl
UNDEFINED = "GRPO did not improve {split} at this budget, so the share is undefined"


@dataclass(frozen=True)
class CurvePoint:
    update: int  # CRL: PPO updates done; GRPO: rounds done; 0: before training
    rollouts: int  # training episodes (CRL) / completions (GRPO) before this evaluation
    wall_seconds: float | None  # training time before it (module docstring: what is and is not counted)
    accuracy: float  # val accuracy (greedy)
    n: int  # val episodes (one per prompt)


@dataclass
class RunCurve:
    """One run's val curve, with the per-prompt correctness behind each point and its test numbers."""

    path: Path
    name: str  # how the user named it (for messages)
    method: str  # CRL or GRPO
    info: RunInfo
    val_split: str
    points: list[CurvePoint]
    val: dict[int, pd.Series]  # update -> correctness (0/1) per prompt id
    test_split: str
    test_before: pd.Series | None  # no steering / base model, per prompt id (None: not evaluated)
    test_after: pd.Series | None  # the selected model, per prompt id
    summary_test: dict[str, float | None]  # summary.json's before/after accuracy and n
    rollouts: int  # training rollouts in all

    @property
    def seed(self) -> int:
        return int(self.info.seed)

    def at(self, rollouts: int) -> CurvePoint | None:
        """The last evaluation after exactly `rollouts` rollouts, if any."""
        found = [p for p in self.points if p.rollouts == rollouts]
        return found[-1] if found else None

    def base(self) -> CurvePoint:
        """The evaluation before training (update 0), or one CRLError line."""
        point = self.at(0)
        if point is None or point.update != 0:
            raise CRLError(
                f"{self.name} has no val evaluation before training (update 0), so the base accuracy is unknown; "
                "every run with eval_every > 0 has one"
            )
        return point


# -- reading -----------------------------------------------------------------------------------------------------------
def val_split(config_text: str) -> str:
    """The val split of a run's config.yaml (`run.val_split` of `crl train`; `crl grpo` evaluates "val").

    >>> val_split("run:\\n  val_split: train\\n"), val_split("grpo:\\n  eval_every: 4\\n"), val_split(": bad")
    ('train', 'val', 'val')
    """
    try:
        cfg = yaml.safe_load(config_text)
    except yaml.YAMLError:
        return "val"
    run = cfg.get("run") if isinstance(cfg, dict) else None
    split = run.get("val_split") if isinstance(run, dict) else None
    return str(split) if split else "val"


def _per_prompt(rows: pd.DataFrame) -> pd.Series:
    return rows.groupby("prompt_id")["correct"].mean().astype(float).sort_index()


def _wall(metrics: pd.DataFrame, key: str, update: int) -> float | None:
    """Training seconds of updates 0..update-1 from metrics.jsonl, or None where a row or its timing is missing."""
    if update == 0:
        return 0.0
    if not len(metrics) or "update" not in metrics or key not in metrics:
        return None
    rows = metrics[metrics["update"] < update]
    if set(rows["update"].astype(int)) != set(range(update)) or rows[key].isna().any():
        return None
    return float(rows[key].astype(float).sum())


def curve_of(run: RunDir, method: str, name: str | None = None) -> RunCurve:
    """The curve of a loaded run directory (module docstring); a run without val evaluations is one CRLError line."""
    name = name or str(run.path)
    eps = run.episodes
    split = val_split(run.config_text)
    phase = str(Phase.eval(split))
    val = eps[eps["phase"] == phase]
    if val.empty:
        knob = "grpo.eval_every" if method == GRPO else "run.eval_every"
        raise CRLError(
            f"{name} has no val evaluations ({phase} rows in {schema.EPISODES}); train with {knob} > 0 to get a curve"
        )
    train_updates = eps.loc[eps["phase"] == str(Phase.train()), "update"].astype(int).to_numpy()
    points, per_prompt = [], {}
    for u, rows in sorted(val.groupby("update"), key=lambda kv: int(kv[0])):
        u = int(u)
        wall = _wall(run.metrics, SECONDS[method], u)
        acc = float(rows["correct"].astype(float).mean())
        points.append(CurvePoint(u, int((train_updates < u).sum()), wall, acc, len(rows)))
        per_prompt[u] = _per_prompt(rows)
    test_split = str(run.summary.get("split", "test"))
    before = eps[eps["phase"] == str(Phase.baseline("none", test_split))]
    after = run.episodes_of(Phase.eval(test_split))
    summary_test: dict[str, float | None] = {}
    for when in ("before", "after"):
        block = run.summary.get(when) or {}
        n = block.get("n")
        summary_test[f"{when}_accuracy"] = block.get("accuracy") if n else None  # n=0: not evaluated
        summary_test[f"{when}_n"] = n
    return RunCurve(
        path=run.path,
        name=name,
        method=method,
        info=run.info,
        val_split=split,
        points=points,
        val=per_prompt,
        test_split=test_split,
        test_before=_per_prompt(before) if len(before) else None,
        test_after=_per_prompt(after) if len(after) else None,
        summary_test=summary_test,
        rollouts=len(train_updates),
    )


def read_curve(path: str | Path, expect: str | None = None, name: str | None = None) -> RunCurve:
    """The curve of a finished run directory; bad input is one CRLError line: not a run, the wrong method (`expect`),
    failed, not finished, no val evaluations."""
    p = Path(path).expanduser()
    name = name or str(path)
    method = GRPO if run_method(p) == GRPO_METHOD else CRL
    if expect == CRL and method == GRPO:
        raise CRLError(f"{name} is a `crl grpo` run; pass it in grpo_runs, and `crl train` runs in crl_runs")
    if expect == GRPO or method == GRPO:
        check_grpo_run(p, name)  # not a run directory, not GRPO, failed, not finished: one line each
    return curve_of(load_run(p, include_train=False), method, name)


def expand(entries: Iterable[str], method: str, key: str) -> list[Path]:
    """Run directories from `entries`: a run directory as given (its method is checked when read); a glob pattern or a
    folder without run.json: the run directories of `method` it matches or holds (a sweep's folder may hold both).
    `key` names the argument in the one-line errors."""
    out: list[Path] = []
    for entry in entries:
        s = str(entry)
        p = Path(s).expanduser()
        if any(c in s for c in "*?["):
            found = [Path(m) for m in sorted(glob.glob(str(p)))]
            if not found:
                raise CRLError(f"{key}: '{s}' matches nothing")
            candidates = [m for m in found if (m / schema.RUN_JSON).exists()]
        elif (p / schema.RUN_JSON).exists() or not p.is_dir():
            out.append(p)  # a run directory, or a path read_curve reports in one line
            continue
        else:
            candidates = sorted(m for m in p.iterdir() if (m / schema.RUN_JSON).exists())
        mine = [m for m in candidates if (GRPO if run_method(m) == GRPO_METHOD else CRL) == method]
        if not mine:
            kind = "`crl grpo`" if method == GRPO else "`crl train`"
            raise CRLError(f"{key}: '{s}' holds no {kind} run directory")
        out.extend(mine)
    unique: dict[Path, Path] = {}
    for p in out:
        unique.setdefault(p.resolve(), p)
    return list(unique.values())


def read_curves(crl_runs: Iterable[str], grpo_runs: Iterable[str]) -> tuple[list[RunCurve], list[RunCurve]]:
    """Every run's curve, checked against each other: at least one run of each method, one model, SAE and task
    (`crl.analysis.diffing.runs.check_comparable`); each problem is one CRLError line before any pooling."""
    crl_dirs, grpo_dirs = expand(crl_runs, CRL, "crl_runs"), expand(grpo_runs, GRPO, "grpo_runs")
    if not crl_dirs or not grpo_dirs:
        raise CRLError(
            "crl curves needs crl_runs=[<`crl train` run directories>] and grpo_runs=[<`crl grpo` run directories>] "
            "(directories, glob patterns, or folders holding them)"
        )
    crl = [read_curve(p, CRL) for p in crl_dirs]
    grpo = [read_curve(p, GRPO) for p in grpo_dirs]
    check_comparable({c.name: c.info for c in [*crl, *grpo]})
    splits = {c.val_split for c in [*crl, *grpo]}
    if len(splits) > 1:
        raise CRLError(f"the runs evaluated different val splits ({sorted(splits)}); compare runs of one val split")
    return crl, grpo


# -- pooling -----------------------------------------------------------------------------------------------------------
def accuracy_ci(per_seed: np.ndarray, n_prompts: int, alpha: float = 0.05) -> tuple[float, float, float, str]:
    """(mean, lo, hi, kind): a t interval over the seeds' accuracies, or with one seed the Wilson interval over the
    prompts.

    >>> [round(x, 3) for x in accuracy_ci(np.array([0.5, 0.7]), 10)[:3]]
    [0.6, 0.0, 1.0]
    >>> m, lo, hi, kind = accuracy_ci(np.array([0.5]), 100)
    >>> (m, round(lo, 3), round(hi, 3), kind)
    (0.5, 0.404, 0.596, 'Wilson, n=1 seed, 100 prompts')
    """
    x = np.asarray(per_seed, dtype=float)
    mean = float(x.mean())
    if len(x) >= 2:
        half = t_half_width(x, alpha)
        return mean, max(0.0, mean - half), min(1.0, mean + half), f"t, {len(x)} seeds"
    lo, hi = wilson(int(round(mean * n_prompts)), n_prompts, alpha)
    return mean, lo, hi, f"Wilson, n=1 seed, {n_prompts} prompts"


def _boot_accuracy(m: np.ndarray, w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap accuracies of a (seeds x prompts) matrix: prompts drawn by the shared weights `w` (resamples x
    prompts), seeds drawn with replacement where there are several."""
    per_seed = m @ w.T / w.shape[1]  # (seeds, resamples)
    s = len(m)
    if s == 1:
        return per_seed[0]
    draws = rng.multinomial(s, np.full(s, 1 / s), size=w.shape[0])  # (resamples, seeds)
    return (draws * per_seed.T).sum(axis=1) / s


def compare(
    crl: np.ndarray, grpo: np.ndarray, base: np.ndarray, cfg: StatsConfig | None = None, split: str = "val"
) -> dict[str, Any]:
    """Gains over the base and CRL's share of GRPO's gain from (seeds x prompts) correctness matrices on one prompt
    order (module docstring).

    >>> z, o = np.zeros(10), np.ones(10)
    >>> r = compare(np.array([np.r_[o[:7], z[:3]]]), np.array([np.r_[o[:9], z[:1]]]), np.array([np.r_[o[:5], z[:5]]]))
    >>> round(r["grpo_gain"], 3), round(r["crl_gain"], 3), round(r["share"], 3)
    (0.4, 0.2, 0.5)
    >>> compare(np.array([o]), np.array([z]), np.array([z]))["share"] is None
    True
    """
    cfg = cfg or StatsConfig()
    crl, grpo, base = (np.atleast_2d(np.asarray(a, dtype=float)) for a in (crl, grpo, base))
    n = base.shape[1]
    if crl.shape[1] != n or grpo.shape[1] != n:
        raise CRLError(f"compare needs matrices over one prompt set (got {crl.shape}, {grpo.shape}, {base.shape})")
    rng = np.random.default_rng(cfg.seed)
    w = rng.multinomial(n, np.full(n, 1 / n), size=cfg.n_boot).astype(float)
    b = _boot_accuracy(base, w, rng)
    g_crl, g_grpo = _boot_accuracy(crl, w, rng) - b, _boot_accuracy(grpo, w, rng) - b
    q = [cfg.alpha / 2, 1 - cfg.alpha / 2]
    base_acc = float(base.mean())
    out: dict[str, Any] = {"base": base_acc}
    for name, m, boots in (("grpo", grpo, g_grpo), ("crl", crl, g_crl)):
        lo, hi = np.quantile(boots, q).round(12)  # no -1e-16 where every resample is 0
        out.update(
            {f"{name}_gain": float(m.mean()) - base_acc, f"{name}_gain_lo": float(lo), f"{name}_gain_hi": float(hi)}
        )
    out.update(share=None, share_lo=None, share_hi=None, note=None)
    if out["grpo_gain_lo"] <= 0:
        out["note"] = UNDEFINED.format(split=split)
        return out
    ok = g_grpo > 0
    lo, hi = np.quantile(g_crl[ok] / g_grpo[ok], q).round(12)
    out.update(share=out["crl_gain"] / out["grpo_gain"], share_lo=float(lo), share_hi=float(hi))
    return out


def _matrix(series: list[pd.Series], order: pd.Index, what: str, names: list[str]) -> np.ndarray:
    rows = []
    for s, name in zip(series, names, strict=True):
        if len(s) != len(order) or not s.index.equals(order):
            raise CRLError(
                f"{name} evaluated other {what} prompts than the first run ({len(s)} vs {len(order)}); compare runs "
                "of one task, task seed and split sizes"
            )
        rows.append(s.to_numpy(dtype=float))
    return np.vstack(rows)


@dataclass
class Curves:
    """The pooled comparison (module docstring): per-budget rows, the test row, the headline and warnings."""

    crl: list[RunCurve]
    grpo: list[RunCurve]
    budgets: pd.DataFrame  # one row per budget every run was evaluated at
    test: pd.DataFrame  # one row (or none: no run has test episodes)
    headline: str
    warnings: list[str] = field(default_factory=list)

    @property
    def runs(self) -> list[RunCurve]:
        return [*self.crl, *self.grpo]

    def points(self) -> pd.DataFrame:
        """Every run's curve: method, run, path, seed, then the CurvePoint fields."""
        rows = [
            {"method": c.method, "run": c.info.run, "path": str(c.path), "seed": c.seed, **asdict(p)}
            for c in self.runs
            for p in c.points
        ]
        return pd.DataFrame(rows)

    def runs_table(self) -> pd.DataFrame:
        """One row per run: its test numbers from summary.json and its budget."""
        return pd.DataFrame(
            [
                {"method": c.method, "run": c.info.run, "seed": c.seed, "rollouts": c.rollouts, **c.summary_test}
                for c in self.runs
            ]
        )

    def to_json(self) -> dict[str, Any]:
        def records(df: pd.DataFrame) -> list[dict[str, Any]]:
            return [{k: (None if is_missing(v) else v) for k, v in r.items()} for r in df.to_dict("records")]

        first = self.runs[0].info
        return {
            "headline": self.headline,
            "warnings": self.warnings,
            "identity": first.identity(),
            "val_split": self.runs[0].val_split,
            "budgets": records(self.budgets),
            "test": records(self.test),
            "runs": records(self.runs_table()),
            "points": records(self.points()),
        }


def is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _method_rows(curves: list[RunCurve], mats: np.ndarray, walls: list[float | None], alpha: float) -> dict[str, Any]:
    method = curves[0].method
    mean, lo, hi, kind = accuracy_ci(mats.mean(axis=1), mats.shape[1], alpha)
    known = [w for w in walls if w is not None]
    return {
        f"{method}_acc": mean,
        f"{method}_lo": lo,
        f"{method}_hi": hi,
        f"{method}_ci": kind,
        f"{method}_seeds": len(curves),
        f"{method}_wall_s": float(np.mean(known)) if len(known) == len(walls) else None,
    }


def _budget_rows(crl: list[RunCurve], grpo: list[RunCurve], cfg: StatsConfig) -> list[dict[str, Any]]:
    runs = [*crl, *grpo]
    budgets = sorted(set.intersection(*({p.rollouts for p in c.points} for c in runs)))
    zero = {c.name: c.val[c.base().update] for c in runs}  # every run has its update-0 evaluation
    order = zero[grpo[0].name].index
    _matrix(list(zero.values()), order, "val", list(zero))  # ... on one prompt set
    base = _matrix([zero[c.name] for c in grpo], order, "val", [c.name for c in grpo])  # the base model: GRPO round 0
    rows = []
    for b in budgets:
        row: dict[str, Any] = {"rollouts": b, "n_prompts": len(order)}
        mats = {}
        for group in (crl, grpo):
            pts = [c.at(b) for c in group]
            mats[group[0].method] = _matrix(
                [c.val[p.update] for c, p in zip(group, pts, strict=True)], order, "val", [c.name for c in group]
            )
            row.update(_method_rows(group, mats[group[0].method], [p.wall_seconds for p in pts], cfg.alpha))
        row.update(compare(mats[CRL], mats[GRPO], base, cfg, "val"))
        if b == 0:
            row["note"] = "0 rollouts: nothing trained yet, there is no gain to share"
        rows.append(row)
    return rows


def _test_row(crl: list[RunCurve], grpo: list[RunCurve], cfg: StatsConfig) -> list[dict[str, Any]]:
    runs = [*crl, *grpo]
    before = {c.name: c.test_before for c in runs if c.test_before is not None}
    after = {c.name: c.test_after for c in runs if c.test_after is not None}
    if not before or len(after) < len(runs):
        return []  # no run evaluated the base model on the test split, or a run has no test evaluation
    order = next(iter(before.values())).index
    split = runs[0].test_split
    base = _matrix(list(before.values()), order, split, list(before))
    row: dict[str, Any] = {"split": split, "n_prompts": len(order)}
    mats = {}
    for group in (crl, grpo):
        method = group[0].method
        mats[method] = _matrix([after[c.name] for c in group], order, split, [c.name for c in group])
        row.update(_method_rows(group, mats[method], [None] * len(group), cfg.alpha))
        mean = float(np.mean([c.rollouts for c in group]))
        row[f"{method}_rollouts"] = int(mean) if mean.is_integer() else mean
        del row[f"{method}_wall_s"]
    row.update(compare(mats[CRL], mats[GRPO], base, cfg, split))
    return [row]


def _ci(lo: float, hi: float, pct: bool = False) -> str:
    return f"[{lo:.0%}, {hi:.0%}]" if pct else f"[{lo:+.3f}, {hi:+.3f}]"


def _seeds(n: int) -> str:
    return f"{int(n)} seed" + ("" if int(n) == 1 else "s")


def headline(budgets: pd.DataFrame, crl: list[RunCurve], grpo: list[RunCurve]) -> str:
    """The sentence: CRL's share of GRPO's val gain at the largest budget both were evaluated at."""
    later = budgets[budgets["rollouts"] > 0]
    if later.empty:
        at = {m: sorted({p.rollouts for c in g for p in c.points}) for m, g in ((CRL, crl), (GRPO, grpo))}
        return (
            f"The runs share no val evaluation after 0 rollouts (CRL evaluates after {at[CRL]}, GRPO after "
            f"{at[GRPO]}), so nothing compares at an equal budget; make run.eval_every x ppo.episodes_per_update equal "
            "grpo.eval_every x grpo.batch_size"
        )
    r = later.iloc[-1]
    who = f"{r['n_prompts']} val prompts; CRL n={_seeds(r['crl_seeds'])}, GRPO n={_seeds(r['grpo_seeds'])}"
    grpo_text = f"{r['grpo_acc']:.3f} ({r['grpo_gain']:+.3f}, 95% CI {_ci(r['grpo_gain_lo'], r['grpo_gain_hi'])})"
    crl_text = f"{r['crl_acc']:.3f} ({r['crl_gain']:+.3f}, 95% CI {_ci(r['crl_gain_lo'], r['crl_gain_hi'])})"
    if r["share"] is None or is_missing(r["share"]):
        return (
            f"At {int(r['rollouts'])} rollouts ({who}), {r['note']}: GRPO reached {grpo_text} against the base model's "
            f"{r['base']:.3f}; CRL reached {crl_text} with no weight changed."
        )
    return (
        f"At {int(r['rollouts'])} rollouts ({who}), GRPO raised val accuracy from {r['base']:.3f} to {grpo_text} by "
        f"tuning the weights; CRL reached {crl_text} with no weight changed: CRL recovers {r['share']:.0%} of GRPO's "
        f"gain (95% CI {_ci(r['share_lo'], r['share_hi'], pct=True)})."
    )


def _warnings(crl: list[RunCurve], grpo: list[RunCurve]) -> list[str]:
    out = []
    base = {m: float(np.mean([c.base().accuracy for c in g])) for m, g in ((CRL, crl), (GRPO, grpo))}
    if abs(base[CRL] - base[GRPO]) > 1e-9:
        out.append(
            f"At 0 rollouts CRL's untrained policy scored {base[CRL]:.3f} on val and the base model (GRPO's round 0) "
            f"{base[GRPO]:.3f}: the untrained policy steered (its prior does not favour no steering). Gains are from "
            "the base model."
        )
    totals = {m: sorted({c.rollouts for c in g}) for m, g in ((CRL, crl), (GRPO, grpo))}
    if totals[CRL] != totals[GRPO]:
        out.append(
            f"The runs trained on different budgets (CRL {totals[CRL]}, GRPO {totals[GRPO]} rollouts), so the test "
            "row (each run's selected model) is not an equal-budget comparison; the val rows are."
        )
    if any(p.wall_seconds is None for c in [*crl, *grpo] for p in c.points):
        out.append("Some runs' metrics.jsonl lack per-update timings: their wall time is left out.")
    return out


def pool(crl: list[RunCurve], grpo: list[RunCurve], cfg: StatsConfig | None = None) -> Curves:
    """The comparison of CRL's and GRPO's runs (module docstring); runs are checked by `read_curves`."""
    cfg = cfg or StatsConfig()
    if not crl or not grpo:
        raise CRLError("pooling curves needs at least one CRL run and one GRPO run")
    budgets, test = pd.DataFrame(_budget_rows(crl, grpo, cfg)), pd.DataFrame(_test_row(crl, grpo, cfg))
    for df in (budgets, test):
        for col in ("share", "share_lo", "share_hi"):
            if col in df:
                df[col] = df[col].astype(float)  # undefined: NaN (None in curves.json)
    return Curves(crl, grpo, budgets, test, headline(budgets, crl, grpo), _warnings(crl, grpo))


def curves(crl_runs: Iterable[str], grpo_runs: Iterable[str], cfg: StatsConfig | None = None) -> Curves:
    """Read, check and pool in one call."""
    crl, grpo = read_curves(crl_runs, grpo_runs)
    return pool(crl, grpo, cfg)


def write(result: Curves, out: Path) -> dict[str, Path]:
    """curves.csv (every run's points), budgets.csv, test.csv and curves.json (all of it, with the headline)."""
    import json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "curves": out / "curves.csv",
        "budgets": out / "budgets.csv",
        "test": out / "test.csv",
        "json": out / "curves.json",
    }
    result.points().to_csv(files["curves"], index=False)
    result.budgets.to_csv(files["budgets"], index=False)
    result.test.to_csv(files["test"], index=False)
    files["json"].write_text(json.dumps(result.to_json(), indent=1, default=_jsonable), encoding="utf-8")
    return files


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, Mapping):
        return dict(v)
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")
