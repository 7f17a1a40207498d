"""`crl study`'s report: one self-contained <out>/report.html over tasks x methods x layers x seeds
(the numbers: `crl.analysis.offline.study`; the layer comparison: `crl.analysis.offline.layers`).

Per task: accuracy at equal budget (val, best so far, t-intervals over seeds) and CRL minus each baseline, the curves
(mean over seeds of the best so far, with its interval), the held-out table with the format-versus-answer split of
every difference, the layer table (accuracy, probe headroom, feature diversity, syntactic share, coefficient
tolerance, no-steer share) with the sentence on the paper's layer claim, and accuracy against the coefficient. Then
the side effects, where the cells measured them. The summary opens with one verdict sentence per task, then the
`crl train` overrides the cells got (study.json: every cell's, `train`, and each task's own, `task_train`), which each
task's first section repeats for its cells.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crl.analysis.offline.budget import budget_table
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
    heldout,
    load_cells,
    read_plan,
    side_effects,
    verdict,
)
from crl.analysis.report import plots
from crl.analysis.report.common import FORMAT_NOTE, Result, publish, warn
from crl.analysis.report.document import Report, para
from crl.analysis.report.plots import _empty, _figure, _save
from crl.config import StudyConfig, WandbConfig
from crl.errors import CRLError
from crl.logs.reader import RunDir

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
    "no_steer_share",
    "well_formed",
]
LAYER_TIPS = {
    "probe_headroom": "`crl probe`: probe accuracy - the unsteered model's accuracy (accuracy targets only)",
    "oracle_headroom": "`crl probe`: best single action per prompt - no steering, on the oracle's prompts",
    "syntactic_share": "share of steered decisions at punctuation, whitespace, newline, digit or special tokens",
    "coef_tolerance": "largest |coef| with it and every smaller one keeping the well-formed rate >= 0.9 x unsteered",
    "no_steer_share": "share of the eval's decisions that chose no steering",
}
BUDGET_NOTE = (
    "Val accuracy, best so far, at the last point within the budget (crl: its val evaluations after the train "
    "episodes before them plus every val evaluation so far; a baseline: its selection rows; none: no rollouts). One "
    "cell per seed; the intervals are 95% t-intervals over seeds (none with one seed). diff: CRL minus the baseline "
    "of the same cell, paired by seed."
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


def find_probes(out: Path, given: list[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """`crl probe` records by task name: the given files (or folders holding probe.json), else every probe.json
    under `out` outside its cells. Returns the records and one note per problem."""
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
    records: dict[str, dict[str, Any]] = {}
    for p in paths:
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
            task = str(rec["task"])
            rec["layers"]  # noqa: B018 - a record has its layers
        except (OSError, ValueError, KeyError, TypeError):
            notes.append(f"{p} is not a `crl probe` record (probe.json); left out")
            continue
        if task in records:
            notes.append(f"two probe records of task {task}; {p} is used")
        records[task] = rec
    return records, notes


def _curves_plot(cur: pd.DataFrame, layers: list[int], path: Path, title: str, budget: float) -> Path:
    """Per layer: each method's mean best-so-far val accuracy over seeds against rollouts, with its t-interval (clipped
    to [0, 1]); the dotted line is the budget the methods are compared at."""
    fig, axes = _figure(max(4.0, 3.6 * len(layers)) + 1.6, 3.4, ncols=len(layers))
    methods = list(dict.fromkeys(cur["method"]))
    for ax, layer in zip(axes, layers, strict=True):
        g = cur[cur["layer"] == layer]
        if g.empty:
            _empty(ax, "no val points")
            continue
        top = max(float(g["rollouts"].max()), budget if not np.isnan(budget) else 0.0, 1.0) * 1.1  # last level shows
        grid = np.unique(np.concatenate([[0.0], g["rollouts"].to_numpy(float), np.geomspace(1, top, 40)]))
        t = budget_table(g, grid)
        for i, m in enumerate(methods):
            tm = t[(t["method"] == m) & (t["n_seeds"] > 0)]
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
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _cells_table(out: Path, cells: list[Cell], baselines: bool) -> pd.DataFrame:
    rows = []
    for c in cells:
        state, why = cell_state(c.path(out), baselines)
        rows.append({"cell": c.name, "task": c.task, "layer": c.layer, "seed": c.seed, "state": state, "why": why})
    return pd.DataFrame(rows)


def _layer_section(
    rep: Report,
    task: str,
    runs: list[RunDir],
    cfg: StudyConfig,
    stats: StatsConfig,
    probes: dict[str, dict[str, Any]],
    figures: Path,
    key: str,
) -> str:
    """The layer table, the claim sentence and accuracy against the coefficient; returns the sentence."""
    s = rep.section(f"{task}: layers")
    lcfg = LayerConfig(split=cfg.split)
    s.append(para(CLAIM.format(m=lcfg.min_share_change), "note"))
    lt = layer_table(runs, lcfg, stats)
    record = probes.get(runs[0].task)
    lt = add_probe(lt, record)
    if record is None:
        s.append(
            para("No `crl probe` record of this task (probe=<probe.json>, or one under out): no headroom.", "note")
        )
    _, sentence = layer_claim(lt, lcfg.min_share_change)
    s.append(para(f"Layer claim: {sentence}."))
    rep.add_table(s, f"{key}_layers", lt, columns=LAYER_COLUMNS, tips=LAYER_TIPS)
    rep.add_image(s, f"{key}_layers", plots.layer_comparison(lt, figures / f"{key}_layers.png"))
    cc = coef_curve(runs)
    if cc.empty:
        s.append(para("No cell has a coefficient sweep (summary.json coef_sweep; `crl analyze env=true`).", "note"))
    else:
        s.append(para("Accuracy and well-formed rate against the coefficient (mean over the seeds that swept it):"))
        rep.add_table(s, f"{key}_coef", cc)
    return sentence


def _overrides_text(plan: dict[str, Any], task: str | None = None) -> str:
    """The `crl train` overrides of the study's cells (task None) or of one task's cells, as one sentence."""
    shared = " ".join(plan.get("train", [])) or "none"
    per_task = {t: o for t, o in plan.get("task_train", {}).items() if o and t in plan.get("tasks", [])}
    if task is None:
        own = "; ".join(f"{t}: {' '.join(o)}" for t, o in per_task.items()) or "none"
        return f"crl train overrides: every cell: {shared}; per task (task_train): {own}."
    own = " ".join(per_task.get(task, [])) or "none"
    return f"Its cells' crl train overrides: the study's: {shared}; this task's own (task_train.{task}): {own}."


def study_report(cfg: StudyConfig, out: Path, cells: list[Cell], baselines: bool) -> Result:
    """<out>/report.html over the study's complete cells (module docstring); a CRLError when none is complete."""
    runs, notes = load_cells(out, cells, baselines)
    if not runs:
        raise CRLError(f"no cell of the study in {out} is complete, so there is nothing to report; `crl study "
                       f"out={out} resume=true` runs them")  # fmt: skip
    warnings: list[str] = []
    for n in notes:
        warn(n, warnings)
    stats = StatsConfig(n_boot=cfg.n_boot, seed=cfg.boot_seed)
    figures = out / "figures"
    tasks = list(dict.fromkeys(c.task for c in cells if c in runs))
    probes, probe_notes = find_probes(out, list(cfg.probe))
    for n in probe_notes:
        warn(n, warnings)

    cur = curves(runs)
    budgets = default_budgets(cur, cfg.budget)
    at, eq = budget_at(cur, budgets), equal_budget(cur, budgets)
    held = heldout(runs, cfg.split, stats)

    plan = read_plan(out) or {}
    rep = Report(f"CRL study: {out.name} ({len(runs)} of {len(cells)} cells)")
    summary = rep.section("Summary")
    verdicts, claims = [], []
    for ti, task in enumerate(tasks):
        key = f"t{ti}"
        task_runs = {c: r for c, r in runs.items() if c.task == task}
        layers = sorted({c.layer for c in task_runs})
        budget = budgets.get(task, float("nan"))
        verdicts.append(verdict(task, budget, eq, held))

        s = rep.section(f"{task}: accuracy at equal budget")
        if plan:
            s.append(para(_overrides_text(plan, task)))
        s.append(para(BUDGET_NOTE, "note"))
        if np.isnan(budget):
            s.append(para("No CRL val curve in these cells (run.eval_every=0?): no budget to compare at.", "warn"))
        else:
            how = "given (budget=)" if cfg.budget is not None else "the fewest any CRL cell of the task spent"
            s.append(para(f"Budget: {budget:g} rollouts ({how})."))
            rep.add_table(s, f"{key}_budget", at[at["task"] == task].drop(columns="task"))
            per_cell = cells_at(cur[cur["task"] == task], budgets)
            s.append(para("Each cell (one per layer and seed) at the budget:"))
            rep.add_table(s, f"{key}_cells_at_budget", per_cell.drop(columns="task"))
            if len(eq[eq["task"] == task]):
                rep.add_table(s, f"{key}_equal_budget", eq[eq["task"] == task].drop(columns="task"))
        tc = cur[cur["task"] == task]
        rep.add_image(s, f"{key}_curves", _curves_plot(tc, layers, figures / f"{key}_curves.png", task, budget))

        s = rep.section(f"{task}: held-out accuracy, format versus answer")
        s.append(para(HELD_NOTE + FORMAT_NOTE, "note"))
        rep.add_table(s, f"{key}_heldout", held[held["task"] == task], columns=HELD_COLUMNS)

        try:
            claims.append(f"{task}: " + _layer_section(rep, task, list(task_runs.values()), cfg, stats, probes,
                                                       figures, key))  # fmt: skip
        except CRLError as e:
            warn(f"{task}: no layer comparison: {e}", warnings)

    s = rep.section("Side effects (off the task)")
    se = side_effects(runs)
    if se.empty:
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
        rep.add_table(s, "side_effects", se, columns=SIDE_COLUMNS)

    summary.append(para("Verdict, per task:"))
    summary.extend(para(v) for v in verdicts)
    summary.append(para("Layers, per task:"))
    summary.extend(para(c) for c in claims)
    if plan:
        summary.append(para(_overrides_text(plan)))
    rep.add_table(summary, "cells", _cells_table(out, cells, baselines))
    return publish(rep, out, WandbConfig(mode="disabled"), f"study-{out.name}", warnings)


__all__ = ["REPORT_FILE", "find_probes", "study_report"]
