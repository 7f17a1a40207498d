"""Report sections on accuracy: the run summary, CRL vs baselines with CIs and p-values, and the
format-valid rates kept apart from accuracy (one run, or several runs pooled per configuration)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from crl.analysis.offline.features import planted_recovery
from crl.analysis.offline.stats import StatsConfig, method_table
from crl.analysis.report import plots
from crl.analysis.report.budget import run_budgets
from crl.analysis.report.cards import FeatureRefs
from crl.analysis.report.common import (
    FORMAT_COLUMNS,
    FORMAT_NOTE,
    METHOD_COLUMNS,
    STATS_NOTE,
    ordered,
    read_precomputed,
    warn,
)
from crl.analysis.report.document import Report, para
from crl.logs.reader import RunDir
from crl.logs.schema import Phase

ROLLOUTS_NOTE = (
    "rollouts: what a method spent before the held-out split (crl: train episodes and val evaluations; a "
    "baseline: its selection or fit, one per episode or one-token forward; blank: not recorded)."
)
IDENTITY_KEYS = (
    "run",
    "model",
    "task",
    "sae_identity",
    "hook_name",
    "layer",
    "d_sae",
    "neuronpedia_id",
    "coef",
    "seed",
)


def summary_section(
    rep: Report, run: RunDir, phase: str, mt: pd.DataFrame, warnings: list[str], refs: FeatureRefs | None = None
) -> None:
    """Identity, the trained policy's accuracy vs no steering, and (planted task) feature recovery."""
    refs = refs or FeatureRefs()
    s = rep.section("Summary")
    ident = {k: getattr(run.info, k) for k in IDENTITY_KEYS}
    rep.add_table(s, "identity", pd.DataFrame([{"key": k, "value": str(v)} for k, v in ident.items()]))
    crl_row = mt.iloc[0]
    s.append(
        para(
            f"Trained policy on {phase}: accuracy {crl_row['accuracy']:.3f} "
            f"[{crl_row['acc_lo']:.3f}, {crl_row['acc_hi']:.3f}], well-formed {crl_row['well_formed']:.3f}, "
            f"{int(crl_row['n_prompts'])} prompts x {int(crl_row['n_seeds'])} seed(s)."
        )
    )
    if "none" in set(mt["method"]):
        nr = mt[mt["method"] == "none"].iloc[0]
        s.append(
            para(
                f"vs no steering: {nr['diff_vs_ref']:+.3f} [{nr['diff_lo']:+.3f}, {nr['diff_hi']:+.3f}], "
                f"p={nr['p_bootstrap']:.3g} (paired bootstrap), McNemar p={nr['mcnemar_p_max']:.3g}."
            )
        )
    else:
        none = Phase.baseline("none", Phase.parse(phase).split)
        warn(f"run '{run.name}' has no {none} phase; run the baselines for CIs vs no steering", warnings)
    planted = run.info.planted
    if planted:
        rec = planted_recovery(run.steps_of(phase), run.episodes_of(phase), list(planted))
        s.append(
            para(
                f"Planted task: the policy picks the prompt's planted feature at step 0 in "
                f"{rec['step0_hit']:.1%} of {rec['n_episodes']} episodes; {rec['planted_share']:.1%} of all "
                f"decisions are planted features {', '.join(refs.describe(f) for f in planted)}."
            )
        )


def baselines_section(
    rep: Report, run: RunDir, phase: str, mt: pd.DataFrame, out: Path, refs: FeatureRefs | None = None
) -> None:
    refs = refs or FeatureRefs()
    s = rep.section("Baselines with 95% CIs and p-values")
    s.append(para(STATS_NOTE + " " + ROLLOUTS_NOTE, "note"))
    selection = read_precomputed(run.path, "baseline_selection")
    spent = run_budgets(run, selection)
    mt = mt.assign(rollouts=[spent.get(m) for m in mt["method"]])
    rep.add_table(s, "methods", mt, columns=[*METHOD_COLUMNS, "rollouts"])
    rep.add_image(s, "baselines", plots.baselines_ci(mt, out / "baselines.png", f"{run.task}, {phase}"))
    if selection is not None:
        s.append(
            para(
                "Static / correlation-selected feature: candidates scored on the selection split, then "
                "the coefficient on the coefficient split. Prompting: each prompt candidate scored on both, "
                "picked on the coefficient split. Letter prior: fit on the selection split, scored on the "
                "coefficient split (crl.analysis.replay.baselines).",
                "note",
            )
        )
        if "feature" in selection.columns:
            selection = refs.annotate(selection)
        shown = [c for c in selection.columns if c not in ("card", "url")]
        rep.add_table(s, "baseline_selection", selection, columns=shown, **refs.table_kw())
    s = rep.section("Format-valid rates (kept apart from accuracy)")
    s.append(para(FORMAT_NOTE, "note"))
    rep.add_table(s, "format", mt, columns=FORMAT_COLUMNS)


def _config_key(r: RunDir) -> tuple:
    return (r.task, str(r.info.model), r.sae_identity, r.layer, float(r.info.coef))


def pooled_sections(
    rep: Report, runs: list[RunDir], split: str | None, stats_cfg: StatsConfig, out: Path, warnings: list[str]
) -> None:
    """Accuracy vs baselines per configuration (runs that differ only in seed are pooled), then format."""
    s = rep.section("Baselines with 95% CIs and p-values (seeds pooled per configuration)")
    s.append(para(STATS_NOTE + " Runs that differ only in seed form one configuration.", "note"))
    groups: dict[tuple, list[RunDir]] = {}
    for r in runs:
        groups.setdefault(_config_key(r), []).append(r)
    all_tables = []
    for gi, (key, group) in enumerate(groups.items()):
        seeds = [int(r.info.seed) for r in group]
        if len(set(seeds)) < len(seeds):
            warn(f"runs {[r.name for r in group]} share a seed; their episodes are averaged per prompt", warnings)
        pooled: dict[str, list[pd.DataFrame]] = {}
        for r in group:
            phase = r.eval_phase(split)
            pooled.setdefault("crl", []).append(r.episodes_of(phase))
            for name, p in r.baseline_phases(Phase.parse(phase).split).items():
                pooled.setdefault(name, []).append(r.episodes_of(p))
        methods = ordered({m: pd.concat(v, ignore_index=True) for m, v in pooled.items()})
        mt = method_table(methods, "crl", stats_cfg)
        label = f"{key[0]} | layer {key[3]} | coef {key[4]:g} | {len(group)} run(s)"
        mt.insert(0, "config", label)
        all_tables.append(mt)
        s.append(para(label))
        rep.add_table(s, f"methods_{gi}", mt, columns=METHOD_COLUMNS)
        rep.add_image(s, f"baselines_{gi}", plots.baselines_ci(mt, out / f"baselines_{gi}.png", label))
    s = rep.section("Format-valid rates (kept apart from accuracy)")
    s.append(para(FORMAT_NOTE, "note"))
    rep.add_table(s, "format", pd.concat(all_tables, ignore_index=True), columns=["config", *FORMAT_COLUMNS])
