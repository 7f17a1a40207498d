"""`crl study`'s cells and its numbers, read from run directories only (no torch).

The layout: <out>/study.json (the plan: tasks, layers, seeds, the overrides every cell got, `train`, and each task's
own, `task_train`) and one ordinary run directory per (task, layer, seed) at <out>/cells/<task>-L<layer>-s<seed>.

A cell's state (`cell_state`), as `crl.logs.reader` judges a run: **complete** when it holds every file a finished run
has (summary.json is written last) and no FAILED.json, and, when the study runs baselines, the study's mark
(analysis/study.json, written once `crl analyze env=true` succeeded on it, with the coefficient sweep it ran);
**analyze** when only the mark is missing, or when the study resumes with another analyze.coef_sweep than the mark's;
**resume** when it has its identity (run.json, config.yaml) but did not finish or failed (`crl train resume=` continues
it from its last checkpoint, or starts it again in place when it never wrote one); **restart** when it holds something
but no identity (a failure before the run began: nothing to keep); **new** when it holds nothing of a run (missing, or
only Hydra's files); **running** when another process holds its lock.

The numbers, per task and layer, pooled over the seeds (one cell per seed):

- at a fixed budget B of rollouts (`crl.analysis.offline.budget`: val accuracy, best so far, at the last point within
  B): each method's mean over seeds (`budget_at`), and CRL minus each baseline of the same cell (`equal_budget`).
  Both read the per-prompt val outcomes of the point that holds each (method, seed)'s best (`budget.best_point`,
  `budget.point_outcomes`), so the intervals are two-way bootstraps over seeds and val prompts
  (`stats.aggregate_seeds`): a seed-free baseline still has prompt noise. The difference is paired by prompt: per
  seed, CRL minus the baseline on the val prompts both scored, then the same bootstrap. Outcome: better when the
  interval is above 0, worse when below, else unresolved (always so with one seed: its interval covers prompts
  only); unreached when the baseline has no val point within B in any cell (its selection costs more than B);
  unpaired when a point has no per-prompt record (cells analyzed before the baselines kept them: rerun `crl analyze
  env=true`), so only the difference of the accuracies is shown. B defaults, per task, to the fewest rollouts any of
  its CRL cells spent (the last point of its val curve), so CRL is read at its full budget and each baseline at as
  many rollouts; `fixed_budgets` reads every method at several budgets (500, 2,000, 8,000 by default).
  Best so far picks the maximum over a method's val points on the prompts it is then read on, so every val number
  is optimistic, the more so the more points a method has; the held-out numbers below are not.
- on the held-out split (`heldout`): `stats.method_table` of the pooled episodes (each baseline episode counted under
  its cell's seed, so CRL and a baseline pair by cell), with the format-versus-answer split of every difference
  (`stats.format_decomposition`): net_format = format fixes - format breaks, net_answer = answer fixes - answer breaks,
  format_share = net_format / (net_format + net_answer) where that gain is positive.
- side effects (`side_effects`): each cell's analysis/offtask.json (`crl.analysis.offline.offtask`), averaged over
  the seeds that measured it.

`verdict` turns them into one sentence per task.
"""

from __future__ import annotations

import fcntl
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crl.analysis.offline.budget import (
    CURVE_COLUMNS,
    OUTCOME_COLUMNS,
    at_budget,
    best_point,
    point_outcomes,
    run_curves,
)
from crl.analysis.offline.curves import val_split
from crl.analysis.offline.offtask import read_offtask
from crl.analysis.offline.stats import StatsConfig, aggregate_seeds, method_table
from crl.errors import CRLError
from crl.logs.atomic import atomic_write_json
from crl.logs.lifecycle import LOCK, foreign_entries
from crl.logs.reader import REQUIRED_FILES, RunDir, failure_line, load_run
from crl.logs.schema import BASELINE_SELECTION, CONFIG_YAML, FAILED, RUN_JSON, Phase

PLAN_FILE = "study.json"
CELLS_DIR = "cells"
MARK_FILE = "analysis/study.json"  # in a cell: its baselines are done (and which coefficient sweep ran)
# The coefficient sweep of a mark that does not record one (written before marks did): the only sweep there was then.
UNRECORDED_SWEEP = (0.5, 1.0, 2.0, 4.0)
REPORT_FILE = "report.html"
STATES = ("complete", "analyze", "resume", "restart", "new", "running")
_CELL = re.compile(r"^(?P<task>[\w-]+)-L(?P<layer>\d+)-s(?P<seed>\d+)$")
# Baseline phases that are CRL itself: "last", the last checkpoint when `run.select` picked another one.
NOT_BASELINES = frozenset({"last"})
_METHOD_ORDER = ["crl", "none", "random", "static", "corr", "prompting", "letter_prior"]


@dataclass(frozen=True, order=True)
class Cell:
    """One (task, layer, seed) of a study; its directory name is the same three, so a resume finds it."""

    task: str
    layer: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.task}-L{self.layer}-s{self.seed}"

    def path(self, out: str | Path) -> Path:
        return Path(out) / CELLS_DIR / self.name

    @classmethod
    def parse(cls, name: str) -> Cell:
        """The cell a directory name stands for.

        >>> Cell.parse("compare_family-L15-s2")
        Cell(task='compare_family', layer=15, seed=2)
        """
        m = _CELL.match(name)
        if m is None:
            raise CRLError(f"'{name}' is not a study cell's name (<task>-L<layer>-s<seed>)")
        return cls(m["task"], int(m["layer"]), int(m["seed"]))


def grid(tasks: Iterable[str], layers: Iterable[int], seeds: Iterable[int]) -> list[Cell]:
    """Every (task, layer, seed), tasks outermost.

    >>> [c.name for c in grid(["a"], [6, 15], [0])]
    ['a-L6-s0', 'a-L15-s0']
    """
    return [Cell(t, int(layer), int(s)) for t in tasks for layer in layers for s in seeds]


def _locked(path: Path) -> bool:
    """Whether another process holds the run directory's lock (`crl.logs.lifecycle.claim`)."""
    lock = path / LOCK
    if not lock.exists():
        return False
    with lock.open("ab") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def _sweep_text(multipliers: Sequence[float]) -> str:
    return "[" + ",".join(f"{float(m):g}" for m in multipliers) + "]"


def analyzed_sweep(path: str | Path) -> list[float] | None:
    """The coefficient sweep (multiples of steering.coef) the study's `crl analyze` ran on a marked cell; a mark
    written before marks recorded it holds the only sweep there was then; None without a readable mark."""
    try:
        mark = json.loads((Path(path) / MARK_FILE).read_text(encoding="utf-8"))
        return [float(m) for m in mark.get("coef_sweep", UNRECORDED_SWEEP)]
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def cell_state(path: str | Path, baselines: bool, coef_sweep: Sequence[float] | None = None) -> tuple[str, str]:
    """(state, why) of a cell's directory (module docstring); why is "" for a complete cell. `coef_sweep`: the
    coefficient sweep the study's `crl analyze` runs (analyze.coef_sweep); a cell marked with another one is in state
    analyze, so its sweep runs again (None: not compared)."""
    path = Path(path)
    if not path.is_dir() or not foreign_entries(path):
        return "new", "not started"
    if _locked(path):
        return "running", "in use by another crl process"
    failed = (path / FAILED).exists()
    if not failed and all((path / f).exists() for f in REQUIRED_FILES):
        if baselines and not (path / MARK_FILE).exists():
            return "analyze", "trained; its baselines (`crl analyze env=true`) are missing"
        if baselines and coef_sweep is not None:
            swept = analyzed_sweep(path)
            if swept is None or sorted(set(swept)) != sorted({float(m) for m in coef_sweep}):
                was = "unknown" if swept is None else _sweep_text(swept)
                return "analyze", f"its coefficient sweep was {was}, analyze.coef_sweep is {_sweep_text(coef_sweep)}"
        return "complete", ""
    why = f"failed ({failure_line(path / FAILED)})" if failed else "stopped before summary.json"
    if (path / RUN_JSON).exists() and (path / CONFIG_YAML).exists():
        return "resume", why
    return "restart", f"{why}; no run.json, so nothing to resume"


def mark_analyzed(path: str | Path, command: str, coef_sweep: Sequence[float] | None = None) -> None:
    """Mark a cell's baselines done (after `crl analyze env=true` succeeded on it), with the coefficient sweep run."""
    mark: dict[str, Any] = {"baselines": True, "command": command}
    if coef_sweep is not None:
        mark["coef_sweep"] = [float(m) for m in coef_sweep]
    (Path(path) / MARK_FILE).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(path) / MARK_FILE, mark)


def unmark(path: str | Path) -> None:
    """Drop the mark (the cell is about to train again, so its baselines must be run again)."""
    (Path(path) / MARK_FILE).unlink(missing_ok=True)


# -- the plan ------------------------------------------------------------------------------------------------------
def read_plan(out: str | Path) -> dict[str, Any] | None:
    """<out>/study.json, or None when there is none."""
    path = Path(out) / PLAN_FILE
    if not path.exists():
        return None
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise CRLError(f"{path} is not valid JSON; repair it or start the study in another out=") from None
    if not isinstance(plan, dict) or not {"tasks", "layers", "seeds", "train"} <= set(plan):
        raise CRLError(f"{path} is not a study plan (it lacks tasks, layers, seeds or train); is out= a study?")
    return plan


def plan_cells(plan: Mapping[str, Any]) -> list[Cell]:
    return grid(plan["tasks"], plan["layers"], plan["seeds"])


# -- loading -------------------------------------------------------------------------------------------------------
def load_cells(out: str | Path, cells: list[Cell], baselines: bool) -> tuple[dict[Cell, RunDir], list[str]]:
    """The complete cells, loaded (no train-phase step rows); one line for each other cell of the grid."""
    runs: dict[Cell, RunDir] = {}
    notes: list[str] = []
    for c in cells:
        state, why = cell_state(c.path(out), baselines)
        if state not in ("complete", "analyze"):
            notes.append(f"cell {c.name} is left out: {why}")
            continue
        if state == "analyze":
            notes.append(f"cell {c.name} has no baselines yet: {why}")
        try:
            runs[c] = load_run(c.path(out), include_train=False)
        except CRLError as e:
            notes.append(f"cell {c.name} is left out: {e}")
    return runs, notes


def _selection(run: RunDir) -> pd.DataFrame | None:
    path = run.path / BASELINE_SELECTION
    if not path.exists():
        return None
    sel = pd.read_csv(path)
    return sel if "rollouts" in sel.columns else None


# -- at equal budget -----------------------------------------------------------------------------------------------
def curves(runs: Mapping[Cell, RunDir]) -> pd.DataFrame:
    """Every cell's accuracy-vs-rollouts curves (`budget.run_curves`) with task and layer columns; `seed` is the
    cell's."""
    parts = []
    for c, run in runs.items():
        cur = run_curves(run, _selection(run), val_split(run.config_text))
        if len(cur):
            parts.append(cur.assign(task=c.task, layer=c.layer, seed=c.seed))
    cols = ["task", "layer", *CURVE_COLUMNS]
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


def default_budgets(cur: pd.DataFrame, budget: float | None = None) -> dict[str, float]:
    """Per task: `budget` when given, else the fewest rollouts any CRL cell of the task spent (NaN without CRL
    points)."""
    out: dict[str, float] = {}
    for task, g in cur.groupby("task", sort=False):
        if budget is not None:
            out[str(task)] = float(budget)
            continue
        crl = g[g["method"] == "crl"]
        out[str(task)] = float(crl.groupby(["layer", "seed"])["rollouts"].max().min()) if len(crl) else float("nan")
    return out


def _order(methods: Iterable[str]) -> list[str]:
    key = lambda m: (_METHOD_ORDER.index(m) if m in _METHOD_ORDER else len(_METHOD_ORDER), m)  # noqa: E731
    return sorted(set(methods), key=key)


def outcomes(runs: Mapping[Cell, RunDir]) -> pd.DataFrame:
    """Every cell's per-prompt val outcomes (`budget.point_outcomes`) with task, layer and seed columns."""
    cols = ["task", "layer", "seed", *OUTCOME_COLUMNS]
    parts = [
        point_outcomes(run, val_split(run.config_text)).assign(task=c.task, layer=c.layer, seed=c.seed)
        for c, run in runs.items()
    ]
    parts = [p[cols] for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)


Point = tuple[float, "pd.Series | None"]  # best so far at a budget; its per-prompt outcomes (None: not recorded)


def _points(cur: pd.DataFrame, outs: pd.DataFrame, budget: float) -> dict[tuple[str, int], Point]:
    """One (task, layer)'s (method, seed) -> `Point` at `budget`, for those with a point within it. The outcomes are
    prompt_id -> correct (a mean where a prompt repeats)."""
    by_source = dict(tuple(outs.groupby(["seed", "source"]))) if len(outs) else {}
    got: dict[tuple[str, int], Point] = {}
    for (m, seed), c in cur.groupby(["method", "seed"]):
        point = best_point(c, budget)
        if point is None:
            continue
        rows = by_source.get((seed, point["source"]))
        per = rows.groupby("prompt_id")["correct"].mean() if rows is not None else None
        got[(str(m), int(seed))] = (float(point["accuracy"]), per)
    return got


def _interval(per_seed: Mapping[int, pd.Series], stats: StatsConfig) -> tuple[float, float, float, int]:
    """(mean, lo, hi, prompts): `stats.aggregate_seeds` of per-seed prompt_id -> value series."""
    long = pd.concat([v.rename("v").rename_axis("prompt_id").reset_index().assign(seed=s) for s, v in per_seed.items()])
    agg = aggregate_seeds(long, "v", stats)
    return agg.mean, agg.lo, agg.hi, agg.n_prompts


def _groups(
    cur: pd.DataFrame, outs: pd.DataFrame, budgets: Mapping[str, float]
) -> Iterator[tuple[str, int, float, dict[tuple[str, int], Point]]]:
    """(task, layer, budget, its (method, seed) -> Point) per (task, layer) with a budget."""
    for (task, layer), g in cur.groupby(["task", "layer"], sort=True):
        b = budgets.get(str(task), float("nan"))
        if not np.isnan(b):
            o = outs[(outs["task"] == task) & (outs["layer"] == layer)]
            yield task, layer, b, _points(g, o, b)


def budget_at(
    cur: pd.DataFrame, outs: pd.DataFrame, budgets: Mapping[str, float], stats: StatsConfig | None = None
) -> pd.DataFrame:
    """Per task, layer and method: val accuracy (best so far) at the task's budget, the mean over seeds with a
    two-way bootstrap over seeds and val prompts (NaN interval when a point has no per-prompt record)."""
    stats = stats or StatsConfig()
    cols = ["task", "layer", "method", "budget", "n_seeds", "n_prompts", "accuracy", "lo", "hi"]
    rows = []
    for task, layer, b, got in _groups(cur, outs, budgets):
        for m in _order(cur[(cur["task"] == task) & (cur["layer"] == layer)]["method"]):
            mine = {s: p for (mm, s), p in got.items() if mm == m}
            row = {"task": task, "layer": layer, "method": m, "budget": b, "n_seeds": len(mine)}
            if mine and all(per is not None for _, per in mine.values()):
                mean, lo, hi, n_p = _interval({s: per for s, (_, per) in mine.items()}, stats)
                row |= {"n_prompts": n_p, "accuracy": mean, "lo": lo, "hi": hi}
            else:
                mean = float(np.mean([v for v, _ in mine.values()])) if mine else float("nan")
                row |= {"n_prompts": float("nan"), "accuracy": mean, "lo": float("nan"), "hi": float("nan")}
            rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def cells_at(cur: pd.DataFrame, budgets: Mapping[str, float]) -> pd.DataFrame:
    """Every cell's value at its task's budget: one row per (task, layer, seed), one column per method (NaN: no
    point within the budget)."""
    rows = []
    for (task, layer, seed), g in cur.groupby(["task", "layer", "seed"], sort=True):
        b = budgets.get(str(task), float("nan"))
        if not np.isnan(b):
            row = {"task": task, "layer": layer, "seed": seed}
            rows.append(row | {str(m): at_budget(c, b) for m, c in g.groupby("method")})
    df = pd.DataFrame(rows)
    methods = _order(c for c in df.columns if c not in ("task", "layer", "seed"))
    return df[["task", "layer", "seed", *methods]] if rows else df


def outcome(lo: float, hi: float) -> str:
    """better / worse / unresolved from the interval of CRL minus a baseline.

    >>> outcome(0.01, 0.2), outcome(-0.3, -0.1), outcome(-0.1, 0.1), outcome(float("nan"), float("nan"))
    ('better', 'worse', 'unresolved', 'unresolved')
    """
    if lo > 0:
        return "better"
    if hi < 0:
        return "worse"
    return "unresolved"


def equal_budget(
    cur: pd.DataFrame, outs: pd.DataFrame, budgets: Mapping[str, float], stats: StatsConfig | None = None
) -> pd.DataFrame:
    """Per task, layer and baseline: CRL minus the baseline at the task's budget, paired by seed (the same cell) and
    by val prompt (module docstring). A baseline with no val point within the budget in any cell is a row with
    outcome "unreached" and, in `first_point`, the fewest rollouts its first val point cost."""
    stats = stats or StatsConfig()
    cols = ["task", "layer", "baseline", "budget", "n_seeds", "n_prompts", "diff", "lo", "hi", "outcome"]
    rows = []
    for task, layer, b, got in _groups(cur, outs, budgets):
        g = cur[(cur["task"] == task) & (cur["layer"] == layer)]
        crl = {s: p for (m, s), p in got.items() if m == "crl"}
        for base in _order(m for m in g["method"] if m != "crl"):
            pairs = {s: (crl[s], p) for (m, s), p in got.items() if m == base and s in crl}
            row = {"task": task, "layer": layer, "baseline": base, "budget": b, "n_seeds": len(pairs)}
            row["first_point"] = float(g[g["method"] == base]["rollouts"].min())
            diffs = {s: _paired(a, z) for s, (a, z) in pairs.items()}
            if not pairs:
                row |= {"n_prompts": float("nan"), "diff": float("nan"), "outcome": "unreached"}
            elif all(d is not None for d in diffs.values()):
                mean, lo, hi, n_p = _interval(diffs, stats)
                resolved = outcome(lo, hi) if len(pairs) > 1 else "unresolved"
                row |= {"n_prompts": n_p, "diff": mean, "lo": lo, "hi": hi, "outcome": resolved}
            else:
                mean = float(np.mean([a[0] - z[0] for a, z in pairs.values()]))
                row |= {"n_prompts": float("nan"), "diff": mean, "outcome": "unpaired"}
            rows.append(row)
    return pd.DataFrame(rows, columns=[*cols, "first_point"])


def _paired(a: Point, b: Point) -> pd.Series | None:
    """Per val prompt both scored, a's outcome minus b's; None without both records or a shared prompt."""
    if a[1] is None or b[1] is None:
        return None
    common = a[1].index.intersection(b[1].index)
    return (a[1][common] - b[1][common]) if len(common) else None


def fixed_budgets(
    cur: pd.DataFrame, outs: pd.DataFrame, budgets: Sequence[float], stats: StatsConfig | None = None
) -> pd.DataFrame:
    """Every method at each of several budgets (the same for every task): `budget_at`'s accuracy and interval beside
    `equal_budget`'s CRL minus it (diff, diff_lo, diff_hi, outcome; empty for CRL)."""
    parts = []
    for b in budgets:
        per_task = {str(t): float(b) for t in cur["task"].unique()}
        at = budget_at(cur, outs, per_task, stats)
        eq = equal_budget(cur, outs, per_task, stats).rename(
            columns={"baseline": "method", "lo": "diff_lo", "hi": "diff_hi", "n_seeds": "n_pairs"}
        )
        keep = ["task", "layer", "method", "budget", "diff", "diff_lo", "diff_hi", "outcome"]
        parts.append(at.merge(eq[keep], on=["task", "layer", "method", "budget"], how="left"))
    cols = ["task", "layer", "budget", "method", "n_seeds", "accuracy", "lo", "hi", "diff", "diff_lo", "diff_hi"]
    if not parts:
        return pd.DataFrame(columns=[*cols, "outcome"])
    out = pd.concat(parts, ignore_index=True)
    rank = {m: i for i, m in enumerate(_order(out["method"]))}
    out = out.assign(_r=out["method"].map(rank)).sort_values(["task", "layer", "_r", "budget"], kind="stable")
    return out[[*cols, "outcome"]].reset_index(drop=True)


# -- held out ------------------------------------------------------------------------------------------------------
def heldout(runs: Mapping[Cell, RunDir], split: str | None, stats: StatsConfig) -> pd.DataFrame:
    """Per task and layer: `stats.method_table` of the cells' pooled held-out episodes (module docstring), with
    task, layer, net_format, net_answer and format_share columns."""
    groups: dict[tuple[str, int], dict[str, list[pd.DataFrame]]] = {}
    for c, run in sorted(runs.items()):
        phase = run.eval_phase(split)
        methods = groups.setdefault((c.task, c.layer), {})
        methods.setdefault("crl", []).append(run.episodes_of(phase).assign(seed=c.seed))
        for name, p in run.baseline_phases(Phase.parse(phase).split).items():
            if name not in NOT_BASELINES:
                methods.setdefault(name, []).append(run.episodes_of(p).assign(seed=c.seed))
    tables = []
    for (task, layer), methods in groups.items():
        pooled = {m: pd.concat(methods[m], ignore_index=True) for m in _order(methods)}
        mt = method_table(pooled, "crl", stats)
        mt.insert(0, "layer", layer)
        mt.insert(0, "task", task)
        tables.append(mt)
    if not tables:
        return pd.DataFrame(columns=["task", "layer", "method"])
    out = pd.concat(tables, ignore_index=True)
    if "format_fixes" in out.columns:
        out["net_format"] = out["format_fixes"] - out["format_breaks"]
        out["net_answer"] = out["answer_fixes"] - out["answer_breaks"]
        gain = out["net_format"] + out["net_answer"]
        out["format_share"] = np.where(gain > 0, out["net_format"] / gain.where(gain > 0), np.nan)
    return out


# -- side effects --------------------------------------------------------------------------------------------------
SIDE_COLUMNS = ["task", "layer", "n_seeds", "worse_share", "neutral_kl", "refusal_delta", "ppl_ratio"]


def side_effects(runs: Mapping[Cell, RunDir]) -> pd.DataFrame:
    """Per task and layer, the mean over the cells that measured it: the share of changed held-out outcomes that got
    worse, the next-token KL on neutral text (nats), the change in refusals of safe prompts, the perplexity ratio of
    the task prompts' completions (policy / no steering). Empty when no cell has analysis/offtask.json."""
    rows = []
    for c, run in runs.items():
        try:
            rec = read_offtask(run.path)
        except CRLError:  # a damaged record: the cell's own report says so
            continue
        if not rec:
            continue
        ppl = (rec.get("perplexity") or {}).get("task") or {}
        rows.append(
            {
                "task": c.task,
                "layer": c.layer,
                "worse_share": (rec.get("changes") or {}).get("share"),
                "neutral_kl": (rec.get("neutral_kl") or {}).get("mean"),
                "refusal_delta": (rec.get("refusal") or {}).get("delta"),
                "ppl_ratio": ppl.get("ratio"),
            }
        )
    if not rows:
        return pd.DataFrame(columns=SIDE_COLUMNS)
    df = pd.DataFrame(rows)
    num = ["worse_share", "neutral_kl", "refusal_delta", "ppl_ratio"]
    df[num] = df[num].astype(float)
    g = df.groupby(["task", "layer"], as_index=False)
    out = g[num].mean().merge(g.size().rename(columns={"size": "n_seeds"}), on=["task", "layer"])
    return out[SIDE_COLUMNS]


# -- the sentence --------------------------------------------------------------------------------------------------
def _join(items: Sequence[Any]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = [str(x) for x in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" and {items[-1]}"


def _layers(layers: list[int]) -> str:
    """'layer 6', 'layers 6 and 15', 'layers 6, 15 and 24'."""
    return ("layer " if len(layers) == 1 else "layers ") + _join(layers)


def _where(layers: list[int], n: int) -> str:
    """'' (the only layer), ' at every layer', or ' at layers 6 and 15'."""
    return "" if n == 1 else " at every layer" if len(layers) == n else f" at {_layers(layers)}"


def _diff(row: Mapping[str, Any]) -> str:
    ci = "no interval" if np.isnan(row["lo"]) else f"[{row['lo']:+.2f}, {row['hi']:+.2f}]"
    return f"L{row['layer']} {row['diff']:+.2f} {ci}" + (" (one seed: prompts only)" if row["n_seeds"] == 1 else "")


def verdict(task: str, budget: float, eq: pd.DataFrame, held: pd.DataFrame) -> str:
    """One sentence for a task: whether CRL beats each baseline at the budget (the interval over seeds of the
    difference, per layer), and how much of its held-out gain over each is format (malformed -> correct, net)."""
    eq = eq[eq["task"] == task]
    if np.isnan(budget):
        return f"{task}: no CRL val curve (run.eval_every=0?), so nothing is compared at equal budget."
    if eq.empty:
        return (
            f"{task}: no baselines in its cells (baselines=false, or `crl analyze env=true` not run on them), so "
            "nothing is compared at equal budget."
        )
    clauses: dict[str, list[str]] = {}  # a clause (NAME: its baselines, IT: it or them) -> its baselines
    unreached, unpaired = [], []
    for base in _order(eq["baseline"]):
        b = eq[eq["baseline"] == base].sort_values("layer")
        reached = b[b["outcome"] != "unreached"]
        if reached.empty:
            unreached.append(f"{base} (its first val point costs {b['first_point'].min():g})")
            continue
        lost = reached[reached["outcome"] == "unpaired"]["layer"].tolist()
        if lost:
            unpaired.append(f"{base} ({_layers(lost)})")
        b = reached[reached["outcome"] != "unpaired"]
        if b.empty:
            continue
        better = b[b["outcome"] == "better"]["layer"].tolist()
        worse = b[b["outcome"] == "worse"]["layer"].tolist()
        if better:
            head = f"beats NAME{_where(better, len(b))}"
            head += f" and loses to IT at {_layers(worse)}" if worse else ""
        elif worse:
            head = f"loses to NAME{_where(worse, len(b))}"
        else:
            head = "cannot be told apart from NAME"
        clauses.setdefault(f"{head} ({', '.join(_diff(r) for r in b.to_dict('records'))})", []).append(base)
    text = (
        f"{task}: at {budget:g} rollouts (val accuracy, best so far; CRL minus baseline on the same val prompts, 95% "
        "interval over seeds and prompts), "
    )
    # baselines with the same numbers are named in one clause
    said = [
        c.replace("NAME", _join(bases)).replace("IT", "them" if len(bases) > 1 else "it")
        for c, bases in clauses.items()
    ]
    text += ("CRL " + "; ".join(said) + ".") if said else "no baseline has a val point to compare with."
    if unreached:
        text += f" Not reached within the budget: {', '.join(unreached)}."
    if unpaired:
        text += (
            f" Not compared, for lack of per-prompt val records (rerun `crl analyze env=true` on the cells): "
            f"{', '.join(unpaired)}."
        )
    held = held[(held["task"] == task) & (held["method"] != "crl")] if "method" in held.columns else held.iloc[0:0]
    shares: dict[str, list[str]] = {}  # "<share> (<layers>)" -> the baselines it holds for
    if "net_format" in held.columns:
        for base in _order(held["method"]):
            h = held[held["method"] == base]
            gain = h["net_format"] + h["net_answer"]
            pos = h[gain > 0]
            if len(pos):
                share = float(pos["net_format"].sum() / (pos["net_format"] + pos["net_answer"]).sum())
                shares.setdefault(f"{share:.0%} over NAME ({_layers(pos['layer'].astype(int).tolist())})", []).append(
                    base
                )
    if shares:
        said = ", ".join(c.replace("NAME", _join(bases)) for c, bases in shares.items())
        text += f" Of its held-out gains, format fixes (malformed -> correct, net of breaks) make up {said}; the rest "
        text += "are answer fixes."
    elif len(held):
        text += " It has no held-out gain over any baseline to split into format and answer."
    return text
