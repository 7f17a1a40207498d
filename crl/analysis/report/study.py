"""`crl study`'s report: one self-contained <out>/report.html over tasks x methods x layers x seeds
(the numbers: `crl.analysis.offline.study`; the layer comparison: `crl.analysis.offline.layers`).

Per task: accuracy at equal budget (val, best so far, t-intervals over seeds) and CRL minus each baseline, the curves
(mean over seeds of the best so far, with its interval), the held-out table with the format-versus-answer split of
every difference, the layer table (accuracy, probe headroom, feature diversity, syntactic share, coefficient
tolerance, no-steer share) with the sentence on the paper's layer claim, and accuracy against the coefficient. Then
the side effects, where the cells measured them. The summary opens with one verdict sentence per task, then the
`crl train` overrides the cells got (study.json: every cell's, `train`, and each task's own, `task_train`), which each
task's first section repeats for its cells.

The numbers are computed once (`study_numbers`: the dataframes of every table) and shown twice: in the HTML
(`study_report`) and as plain text (`summary_text`, `write_summary`: <out>/summary.txt, which `crl study` also
prints): per task the verdict sentence, the equal-budget and CRL-minus-baseline tables, the held-out and per-layer
tables and the layer claim, then the side effects; numbers at 3 decimals, "-" where there is none (one seed's
interval).
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crl.analysis.offline.layers import LayerConfig, add_probe, coef_curve, layer_claim, layer_table
from crl.analysis.offline.stats import StatsConfig
from crl.analysis.offline.study import (
    REPORT_FILE,
    SIDE_COLUMNS,
    Cell,
    budget_at,
    cell_state,
    cells_at,
    curves,
    default_budgets,
    equal_budget,
    fixed_budgets,
    heldout,
    load_cells,
    outcomes,
    read_plan,
    side_effects,
    verdict,
)
from crl.analysis.offline.text import text_table
from crl.analysis.report import plots
from crl.analysis.report.common import FORMAT_NOTE, Result, publish, warn
from crl.analysis.report.document import Report, para
from crl.analysis.report.plots import _empty, _figure, _save
from crl.config import StudyConfig, WandbConfig
from crl.errors import CRLError
from crl.logs.atomic import atomic_write_bytes
from crl.logs.reader import RunDir

SUMMARY_FILE = "summary.txt"  # <out>/summary.txt: `summary_text`
HELD_COLUMNS = [
    "layer",
    "method",
    "n_seeds",
    "accuracy",
    "acc_lo",
    "acc_hi",
    "diff_vs_ref",
    "diff_lo",
    "diff_hi",
    "p_bootstrap",
    "well_formed",
    "net_format",
    "net_answer",
    "format_share",
]
LAYER_COLUMNS = [
    "layer",
    "n_seeds",
    "accuracy",
    "acc_lo",
    "acc_hi",
    "probe_metric",
    "probe",
    "probe_lo",
    "probe_hi",
    "probe_headroom",
    "oracle_headroom",
    "distinct_features",
    "entropy_bits",
    "effective_features",
    "syntactic_share",
    "coef_tolerance",
    "coef_at_ceiling",
    "no_steer_share",
    "well_formed",
]
LAYER_TIPS = {
    "probe_headroom": "`crl probe`: probe accuracy - the unsteered model's accuracy (accuracy targets only)",
    "oracle_headroom": "`crl probe`: best single action per prompt - no steering, on the oracle's prompts",
    "syntactic_share": "share of steered decisions at punctuation, whitespace, newline, digit or special tokens",
    "coef_tolerance": "largest |coef| with it and every smaller one keeping the well-formed rate >= 0.9 x unsteered",
    "coef_at_ceiling": "the tolerance is the sweep's largest |coef| (in some seed): a lower bound, not a value",
    "no_steer_share": "share of the eval's decisions that chose no steering",
}
BUDGET_NOTE = (
    "Val accuracy, best so far, at the last point within the budget (crl: its val evaluations after the train "
    "episodes before them plus every val evaluation so far; a baseline: its selection rows; none: no rollouts). One "
    "cell per seed; the intervals are 95% two-way bootstraps over seeds and val prompts, read from the per-prompt "
    "outcomes of the point that holds each best. diff: CRL minus the baseline of the same cell on the val prompts "
    "both scored (n_prompts); with one seed the interval covers prompts only and the outcome stays unresolved; "
    "unpaired: a point without per-prompt records (rerun `crl analyze env=true`). Best so far is a maximum over a "
    "method's val points, so these numbers are optimistic; the held-out section is not."
)
HELD_NOTE = (
    "Held-out split, the cells' episodes pooled (a baseline's under its cell's seed). Accuracy: mean over seeds, 95% "
    "CI by a two-way bootstrap over seeds and prompts; diff_vs_ref: CRL minus the method, paired bootstrap over "
    "prompts. net_format = format fixes - format breaks, net_answer = answer fixes - answer breaks (fractions of "
    "(seed, prompt) pairs); format_share = net_format / (net_format + net_answer) where that gain is positive. "
)
CLAIM = (
    "The paper's claim: steering picks syntactic features at early layers and semantic ones at late layers, and late "
    "layers tolerate larger coefficients. Read between the earliest and the latest layer: the syntactic share must "
    "fall by at least {m:g} and the tolerated coefficient rise (crl.analysis.offline.layers.layer_claim)."
)


ProbeRecords = dict[str, tuple[Path, dict[str, Any]]]  # task option (else task name) -> (probe.json, its record)
FAMILY_AXES = ("wordings", "directions", "ranges")  # probe.json's `family` (Task.family_record), compared as sets


def find_probes(out: Path, given: list[str]) -> tuple[ProbeRecords, list[str]]:
    """`crl probe` records by the conf/task option they probed (`task_option`; a record from before it, by its task
    name): the given files (or folders holding probe.json), else every probe.json under `out` outside its cells. Two
    records for one task: the newer file is used. Returns the records with their paths and one note per problem."""
    notes: list[str] = []
    paths = []
    for g in given:
        p = Path(g).expanduser()
        p = p / "probe.json" if p.is_dir() else p
        if not p.exists():
            raise CRLError(f"probe={g}: no probe.json there; pass a file `crl probe` wrote, or its out_dir")
        paths.append(p)
    if not given:
        paths = sorted(p for p in out.rglob("probe*.json") if "cells" not in p.relative_to(out).parts)
    records: ProbeRecords = {}
    for p in paths:
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
            key = str(rec.get("task_option") or rec["task"])
            rec["layers"]  # noqa: B018 - a record has its layers
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            notes.append(f"{p} is not a `crl probe` record (probe.json); left out")
            continue
        if key in records:
            old = records[key][0]
            if p.stat().st_mtime < old.stat().st_mtime:
                notes.append(f"two probe records of task {key}; {old} is used (newer than {p})")
                continue
            notes.append(f"two probe records of task {key}; {p} is used (newer than {old})")
        records[key] = (p, rec)
    return records, notes


def _cells_family(run: RunDir) -> dict[str, list[str]] | None:
    """The variants a cell's task draws from (`Task.family_record`), from its config.yaml; None without any. Imports
    the task registry (and with it torch) only when called: for a probe record that names a family."""
    import yaml

    from crl.envs.tasks.registry import make_task

    task = (yaml.safe_load(run.config_text or "") or {}).get("task")
    if not isinstance(task, dict):
        raise CRLError(f"{run.path}/config.yaml has no task section")
    return make_task(task).family_record()


def _family_text(family: dict[str, list[str]] | None, axes: list[str]) -> str:
    """`directions [larger]` (the axes named), or `no family`.

    >>> _family_text({"wordings": ["plain"], "directions": ["larger", "smaller"]}, ["directions"])
    'directions [larger, smaller]'
    """
    if family is None:
        return "no family"
    return ", ".join(f"{a} [{', '.join(family.get(a) or [])}]" for a in axes)


def task_probe(task: str, runs: list[RunDir], probes: ProbeRecords) -> tuple[dict[str, Any] | None, list[str]]:
    """The `crl probe` record for the study's task `task` (a conf/task option) over its cells `runs`, and the notes
    on it: a record from before task_option is matched by its task name; a record whose family (the variants it
    probed) is not the cells' is left out."""
    if task not in probes:
        return None, []
    path, rec = probes[task]
    notes = []
    if not rec.get("task_option"):
        what = "a record from before task_option" if "task_option" not in rec else "a record without task_option"
        notes.append(f"{path}: {what}; matched by task name {rec['task']}")
    family = rec.get("family")
    if family is not None and runs:
        try:
            cells = _cells_family(runs[0])
        except CRLError as e:
            notes.append(f"{path}: the family of the {task} cells could not be read ({e}); its family is not checked")
            return rec, notes
        axes = [a for a in FAMILY_AXES if cells is None or set(family.get(a) or []) != set(cells.get(a) or [])]
        if axes:
            notes.append(
                f"{path} probes {task} with {_family_text(family, axes)}, the cells train "
                f"{_family_text(cells, axes)}; left out"
            )
            return None, notes
    return rec, notes


def _curves_plot(t: TaskNumbers, path: Path, stats: StatsConfig) -> Path:
    """Per layer: each method's mean best-so-far val accuracy over seeds against rollouts, with its 95% bootstrap
    interval over seeds and val prompts (`budget_at`; clipped to [0, 1]); the dotted line is the budget the methods are
    compared at."""
    cur, layers, budget = t.curves, t.layers, t.budget
    fig, axes = _figure(max(4.0, 3.6 * len(layers)) + 1.6, 3.4, ncols=len(layers))
    methods = list(dict.fromkeys(cur["method"]))
    for ax, layer in zip(axes, layers, strict=True):
        g = cur[cur["layer"] == layer]
        if g.empty:
            _empty(ax, "no val points")
            continue
        top = max(float(g["rollouts"].max()), budget if not np.isnan(budget) else 0.0, 1.0) * 1.1  # last level shows
        grid = np.unique(np.concatenate([[0.0, top], g["rollouts"].to_numpy(float)]))  # a step only moves at a point
        o = t.outcomes[t.outcomes["layer"] == layer]
        tb = pd.concat([budget_at(g, o, {t.task: b}, stats) for b in grid], ignore_index=True)
        for i, m in enumerate(methods):
            tm = tb[(tb["method"] == m) & (tb["n_seeds"] > 0)]
            if tm.empty:
                continue
            ax.step(tm["budget"], tm["accuracy"], where="post", color=f"C{i}", label=m)
            lo, hi = np.clip(tm["lo"].to_numpy(float), 0, 1), np.clip(tm["hi"].to_numpy(float), 0, 1)
            ax.fill_between(tm["budget"], lo, hi, step="post", color=f"C{i}", alpha=0.15)
        if not np.isnan(budget):
            ax.axvline(budget, color="k", ls=":", lw=1)
        if top > 1000:
            ax.set_xscale("symlog", linthresh=100)
        ax.set_xlim(0, top)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("rollouts consumed")
        ax.set_title(f"layer {layer}", fontsize=9)
    axes[0].set_ylabel("val accuracy, best so far")
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(t.task, fontsize=10)
    return _save(fig, path)


def _cells_table(out: Path, cells: list[Cell], baselines: bool) -> pd.DataFrame:
    rows = []
    for c in cells:
        state, why = cell_state(c.path(out), baselines)
        rows.append({"cell": c.name, "task": c.task, "layer": c.layer, "seed": c.seed, "state": state, "why": why})
    return pd.DataFrame(rows)


def _layer_numbers(
    runs: list[RunDir], cfg: StudyConfig, stats: StatsConfig, record: dict[str, Any] | None
) -> tuple[pd.DataFrame, str]:
    """One task's layer table (with the headroom of its `crl probe` record, `task_probe`'s) and the sentence on the
    layer claim. A CRLError when the cells cannot be compared (e.g. two models)."""
    lcfg = LayerConfig(split=cfg.split)
    lt = add_probe(layer_table(runs, lcfg, stats), record)
    _, sentence = layer_claim(lt, lcfg.min_share_change)
    return lt, sentence


def _layer_section(rep: Report, t: TaskNumbers, figures: Path) -> None:
    """The layer table, the claim sentence and accuracy against the coefficient."""
    s = rep.section(f"{t.task}: layers")
    s.append(para(CLAIM.format(m=LayerConfig().min_share_change), "note"))
    if t.layer_table is None:
        return
    if not t.has_probe:
        s.append(
            para("No `crl probe` record of this task (probe=<probe.json>, or one under out): no headroom.", "note")
        )
    s.append(para(f"Layer claim: {t.claim}."))
    rep.add_table(s, f"{t.key}_layers", t.layer_table, columns=LAYER_COLUMNS, tips=LAYER_TIPS)
    rep.add_image(s, f"{t.key}_layers", plots.layer_comparison(t.layer_table, figures / f"{t.key}_layers.png"))
    if t.coef.empty:
        s.append(para("No cell has a coefficient sweep (summary.json coef_sweep; `crl analyze env=true`).", "note"))
    else:
        s.append(para("Accuracy and well-formed rate against the coefficient (mean over the seeds that swept it):"))
        rep.add_table(s, f"{t.key}_coef", t.coef)


def _overrides_text(plan: dict[str, Any], task: str | None = None) -> str:
    """The `crl train` overrides of the study's cells (task None) or of one task's cells, as one sentence."""
    shared = " ".join(plan.get("train", [])) or "none"
    per_task = {t: o for t, o in plan.get("task_train", {}).items() if o and t in plan.get("tasks", [])}
    if task is None:
        own = "; ".join(f"{t}: {' '.join(o)}" for t, o in per_task.items()) or "none"
        return f"crl train overrides: every cell: {shared}; per task (task_train): {own}."
    own = " ".join(per_task.get(task, [])) or "none"
    return f"Its cells' crl train overrides: the study's: {shared}; this task's own (task_train.{task}): {own}."


@dataclass
class TaskNumbers:
    """One task's numbers: what its sections of report.html and its part of summary.txt show."""

    task: str
    key: str  # t0, t1, ...: the names of its tables and figures in the report
    layers: list[int]
    budget: float  # NaN: no CRL val curve
    verdict: str  # crl.analysis.offline.study.verdict
    curves: pd.DataFrame  # its rows of `curves`
    outcomes: pd.DataFrame  # its rows of `outcomes`: the per-prompt val outcomes of its curves' points
    at: pd.DataFrame  # accuracy at the budget per (layer, method): budget_at, without the task column
    fixed: pd.DataFrame  # every method at the fixed budgets (fixed_budgets, without task; empty: budgets=[])
    per_cell: pd.DataFrame  # each cell at the budget (cells_at, without task; empty without a budget)
    eq: pd.DataFrame  # CRL minus each baseline per layer: equal_budget, without task
    held: pd.DataFrame  # its rows of `heldout`
    layer_table: pd.DataFrame | None  # layer_table + add_probe; None when the cells cannot be compared (a warning)
    claim: str | None  # the sentence on the layer claim (layer_claim)
    has_probe: bool  # a `crl probe` record of the task was found
    coef: pd.DataFrame  # accuracy against the coefficient (coef_curve)


@dataclass
class StudyNumbers:
    """Everything the study's report and its text summary show, computed once (`study_numbers`)."""

    out: Path
    cells: list[Cell]  # the grid
    n_complete: int  # the cells read
    plan: dict[str, Any]  # study.json ({} without one)
    budget_given: bool  # budget= was set (else each task's fewest CRL rollouts)
    tasks: list[TaskNumbers]
    side: pd.DataFrame  # side_effects
    warnings: list[str]  # cells left out, probe records, tasks without a layer comparison


def study_numbers(cfg: StudyConfig, out: Path, cells: list[Cell], baselines: bool) -> StudyNumbers:
    """The study's numbers over its complete cells (module docstring); a CRLError when none is complete. Each
    warning is printed to stderr as it is found."""
    runs, notes = load_cells(out, cells, baselines)
    if not runs:
        raise CRLError(f"no cell of the study in {out} is complete, so there is nothing to report; `crl study "
                       f"out={out} resume=true` runs them")  # fmt: skip
    warnings: list[str] = []
    for n in notes:
        warn(n, warnings)
    stats = StatsConfig(n_boot=cfg.n_boot, seed=cfg.boot_seed)
    tasks = list(dict.fromkeys(c.task for c in cells if c in runs))
    probes, probe_notes = find_probes(out, list(cfg.probe))
    for n in probe_notes:
        warn(n, warnings)

    cur, outs = curves(runs), outcomes(runs)
    budgets = default_budgets(cur, cfg.budget)
    at, eq = budget_at(cur, outs, budgets, stats), equal_budget(cur, outs, budgets, stats)
    fixed = fixed_budgets(cur, outs, list(cfg.budgets), stats)
    held = heldout(runs, cfg.split, stats)
    numbers = []
    for ti, task in enumerate(tasks):
        task_runs = [r for c, r in runs.items() if c.task == task]
        budget = budgets.get(task, float("nan"))
        tc = cur[cur["task"] == task]
        record, notes = task_probe(task, task_runs, probes)  # by the study's task (option), not the runs' name
        for n in notes:
            warn(n, warnings)
        lt, claim, has_probe, coef = None, None, False, pd.DataFrame()
        try:
            lt, claim = _layer_numbers(task_runs, cfg, stats, record)
            has_probe = record is not None
            coef = coef_curve(task_runs)
        except CRLError as e:
            warn(f"{task}: no layer comparison: {e}", warnings)
        numbers.append(
            TaskNumbers(
                task=task,
                key=f"t{ti}",
                layers=sorted({c.layer for c in runs if c.task == task}),
                budget=budget,
                verdict=verdict(task, budget, eq, held),
                curves=tc,
                outcomes=outs[outs["task"] == task],
                at=at[at["task"] == task].drop(columns="task"),
                fixed=fixed[fixed["task"] == task].drop(columns="task"),
                per_cell=cells_at(tc, budgets).drop(columns="task", errors="ignore"),
                eq=eq[eq["task"] == task].drop(columns="task"),
                held=held[held["task"] == task],
                layer_table=lt,
                claim=claim,
                has_probe=has_probe,
                coef=coef,
            )
        )
    plan = read_plan(out) or {}
    return StudyNumbers(out, cells, len(runs), plan, cfg.budget is not None, numbers, side_effects(runs), warnings)


def study_report(
    cfg: StudyConfig, out: Path, cells: list[Cell], baselines: bool, numbers: StudyNumbers | None = None
) -> Result:
    """<out>/report.html over the study's complete cells (module docstring); a CRLError when none is complete.
    `numbers`: `study_numbers`' (computed here when not given)."""
    n = numbers or study_numbers(cfg, out, cells, baselines)
    figures = out / "figures"
    rep = Report(f"CRL study: {out.name} ({n.n_complete} of {len(cells)} cells)")
    summary = rep.section("Summary")
    for t in n.tasks:
        s = rep.section(f"{t.task}: accuracy at equal budget")
        if n.plan:
            s.append(para(_overrides_text(n.plan, t.task)))
        s.append(para(BUDGET_NOTE, "note"))
        if np.isnan(t.budget):
            s.append(para("No CRL val curve in these cells (run.eval_every=0?): no budget to compare at.", "warn"))
        else:
            how = "given (budget=)" if n.budget_given else "the fewest any CRL cell of the task spent"
            s.append(para(f"Budget: {t.budget:g} rollouts ({how})."))
            rep.add_table(s, f"{t.key}_budget", t.at)
            s.append(para("Each cell (one per layer and seed) at the budget:"))
            rep.add_table(s, f"{t.key}_cells_at_budget", t.per_cell)
            if len(t.eq):
                rep.add_table(s, f"{t.key}_equal_budget", t.eq)
        if len(t.fixed):
            s.append(para("Every method at fixed budgets (diff: CRL minus it at that budget, as above):"))
            rep.add_table(s, f"{t.key}_fixed_budgets", t.fixed)
        path = figures / f"{t.key}_curves.png"
        rep.add_image(s, f"{t.key}_curves", _curves_plot(t, path, StatsConfig(n_boot=cfg.n_boot, seed=cfg.boot_seed)))

        s = rep.section(f"{t.task}: held-out accuracy, format versus answer")
        s.append(para(HELD_NOTE + FORMAT_NOTE, "note"))
        rep.add_table(s, f"{t.key}_heldout", t.held, columns=HELD_COLUMNS)
        _layer_section(rep, t, figures)

    s = rep.section("Side effects (off the task)")
    if n.side.empty:
        s.append(
            para(
                "No cell measured side effects (analysis/offtask.json: `crl analyze` writes it unless offtask=false).",
                "note",
            )
        )
    else:
        s.append(
            para(
                "Mean over the seeds that measured it: worse_share, of the held-out prompts whose outcome the policy "
                "changed, the share that got worse; neutral_kl, next-token KL(no steering || policy) on neutral text, "
                "nats per token; refusal_delta, policy - no steering refusal rate on safe prompts; ppl_ratio, "
                "perplexity of the policy's completions of task prompts / no steering's "
                "(crl.analysis.offline.offtask).",
                "note",
            )
        )
        rep.add_table(s, "side_effects", n.side, columns=SIDE_COLUMNS)

    summary.append(para("Verdict, per task:"))
    summary.extend(para(t.verdict) for t in n.tasks)
    summary.append(para("Layers, per task:"))
    summary.extend(para(f"{t.task}: {t.claim}") for t in n.tasks if t.claim is not None)
    if n.plan:
        summary.append(para(_overrides_text(n.plan)))
    rep.add_table(summary, "cells", _cells_table(out, cells, baselines))
    return publish(rep, out, WandbConfig(mode="disabled"), f"study-{out.name}", list(n.warnings))


# -- the text summary: the same numbers, for a terminal and <out>/summary.txt -------------------------------------
WIDTH = 120


def _missing(x: Any) -> bool:
    return x is None or x is pd.NA or (isinstance(x, (float, np.floating)) and np.isnan(x))


def _num(x: Any, signed: bool = False) -> str:
    """A number at 3 decimals ("-" when missing).

    >>> _num(0.12345), _num(-0.5, signed=True), _num(float("nan"))
    ('0.123', '-0.500', '-')
    """
    return "-" if _missing(x) else f"{float(x):+.3f}" if signed else f"{float(x):.3f}"


def _ci(lo: Any, hi: Any, signed: bool = False) -> str:
    """An interval "[lo, hi]", "-" when either end is missing (one seed)."""
    return "-" if _missing(lo) or _missing(hi) else f"[{_num(lo, signed)}, {_num(hi, signed)}]"


def _tolerance(row: dict[str, Any]) -> str:
    """A layer's coefficient tolerance at 3 decimals, ">=" before it at the sweep's ceiling (a lower bound).

    >>> _tolerance({"coef_tolerance": 4.0, "coef_at_ceiling": True}), _tolerance({"coef_tolerance": 1.0})
    ('>=4.000', '1.000')
    """
    at_ceiling = row.get("coef_at_ceiling")
    ceiling = not _missing(at_ceiling) and bool(at_ceiling) and not _missing(row["coef_tolerance"])
    return (">=" if ceiling else "") + _num(row["coef_tolerance"])


def _int(x: Any) -> str:
    return "-" if _missing(x) else str(int(x))


def _table(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    return text_table([header, *rows], indent)


def _wrap(text: str, indent: str = "  ") -> list[str]:
    return textwrap.wrap(text, WIDTH, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False)


def _task_text(t: TaskNumbers) -> list[str]:
    lines = [f"== {t.task} ==", *_wrap(t.verdict)]
    if np.isnan(t.budget):
        lines.append("No CRL val curve: no budget to compare at.")
    else:
        lines.append(
            f"Accuracy at equal budget, {t.budget:g} rollouts (val, best so far; 95% bootstrap over seeds and prompts):"
        )
        rows = [
            [_int(r["layer"]), str(r["method"]), _int(r["n_seeds"]), _num(r["accuracy"]), _ci(r["lo"], r["hi"])]
            for r in t.at.to_dict("records")
        ]
        lines += _table(["layer", "method", "n_seeds", "accuracy", "95% interval"], rows)
        if len(t.eq):
            lines.append("CRL minus baseline, paired by seed and val prompt:")
            rows = [
                [
                    _int(r["layer"]),
                    str(r["baseline"]),
                    _int(r["n_seeds"]),
                    _num(r["diff"], signed=True),
                    _ci(r["lo"], r["hi"], signed=True),
                    str(r["outcome"]) + (f" (first point {r['first_point']:g})" if r["outcome"] == "unreached" else ""),
                ]
                for r in t.eq.to_dict("records")
            ]
            lines += _table(["layer", "baseline", "n_seeds", "diff", "95% interval", "outcome"], rows)
    if len(t.fixed):
        lines.append("At fixed budgets (val accuracy, best so far; diff: CRL minus the method; 95% intervals):")
        rows = [
            [
                _int(r["layer"]),
                f"{r['budget']:g}",
                str(r["method"]),
                _int(r["n_seeds"]),
                _num(r["accuracy"]),
                _ci(r["lo"], r["hi"]),
                _num(r["diff"], signed=True),
                _ci(r["diff_lo"], r["diff_hi"], signed=True),
                str(r["outcome"]) if isinstance(r["outcome"], str) else "-",
            ]
            for r in t.fixed.to_dict("records")
        ]
        lines += _table(
            ["layer", "budget", "method", "n_seeds", "accuracy", "[lo, hi]", "diff", "[lo, hi]", "outcome"], rows
        )
    lines.append("Held out (accuracy: mean over seeds, bootstrap 95% CI; diff: CRL minus the method):")
    if "accuracy" in t.held.columns and len(t.held):
        get = lambda r, k: r.get(k, float("nan"))  # noqa: E731 - format_share: only with well-formed columns
        rows = [
            [
                _int(r["layer"]),
                str(r["method"]),
                _num(r["accuracy"]),
                _ci(r["acc_lo"], r["acc_hi"]),
                _num(get(r, "diff_vs_ref"), signed=True),
                _ci(get(r, "diff_lo"), get(r, "diff_hi"), signed=True),
                _num(get(r, "format_share")),
            ]
            for r in t.held.to_dict("records")
        ]
        lines += _table(["layer", "method", "accuracy", "[lo, hi]", "diff", "[lo, hi]", "format_share"], rows)
    else:
        lines.append("  none")
    if t.layer_table is None:
        lines.append("Layers: no comparison (see the notes).")
    else:
        lines.append("Per layer (held out):")
        rows = [
            [
                _int(r["layer"]),
                _int(r["n_seeds"]),
                _num(r["accuracy"]),
                _ci(r["acc_lo"], r["acc_hi"]),
                _int(r["distinct_features"]),
                _num(r["syntactic_share"]),
                _tolerance(r),
                _num(r["no_steer_share"]),
            ]
            for r in t.layer_table.to_dict("records")
        ]
        header = ["layer", "n_seeds", "accuracy", "[lo, hi]", "distinct", "syntactic", "coef_tol", "no_steer"]
        lines += _table(header, rows)
        lines += _wrap(f"Layer claim: {t.claim}.")
    return lines


def summary_text(n: StudyNumbers) -> str:
    """The study's headline numbers as plain text (what `crl study` prints and writes to <out>/summary.txt): per
    task its verdict sentence, the accuracy at equal budget and CRL minus each baseline, the held-out table, the
    per-layer table and the layer claim; then the side effects and the notes. Numbers at 3 decimals, "-" for none."""
    lines = [f"CRL study: {n.out.name} ({n.n_complete} of {len(n.cells)} cells complete)"]
    for t in n.tasks:
        lines += ["", *_task_text(t)]
    lines += ["", "== side effects (off the task; mean over the seeds that measured it) =="]
    if n.side.empty:
        lines.append("  none measured (analysis/offtask.json)")
    else:
        rows = [
            [str(r["task"]), _int(r["layer"]), _int(r["n_seeds"])] + [_num(r[c]) for c in SIDE_COLUMNS[3:]]
            for r in n.side.to_dict("records")
        ]
        lines += _table(SIDE_COLUMNS, rows)
    if n.warnings:
        lines += ["", "Notes:", *(w for note in n.warnings for w in _wrap(f"- {note}"))]
    return "\n".join(lines) + "\n"


def write_summary(n: StudyNumbers) -> tuple[Path, str]:
    """<out>/summary.txt (`summary_text`), written atomically; returns its path and text."""
    text = summary_text(n)
    path = n.out / SUMMARY_FILE
    atomic_write_bytes(path, text.encode())
    return path, text


__all__ = [
    "REPORT_FILE",
    "SUMMARY_FILE",
    "StudyNumbers",
    "find_probes",
    "task_probe",
    "study_numbers",
    "study_report",
    "summary_text",
    "write_summary",
]
