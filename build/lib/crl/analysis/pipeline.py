"""`analyze_run` (one run directory) and `compare_runs` (several): compute every table, draw every plot,
write report.html. Tables that need the model (part B: forced-feature effects, branch points, side effects)
are read from CSVs when present, by default `<run_dir>/analysis/{effects,branch_points,side_effects}.csv`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from crl.analysis import plots
from crl.analysis.branch_points import aggregate as branch_aggregate
from crl.analysis.critic import (
    CriticConfig,
    category_counts,
    critic_summary,
    outcome_categories,
    value_trajectories,
)
from crl.analysis.features import (
    FeatureConfig,
    feature_usage,
    planted_recovery,
    step_histogram,
    task_specificity,
    token_type_table,
)
from crl.analysis.layers import LayerConfig, coef_tolerance, layer_table
from crl.analysis.report import Report, log_to_wandb, para
from crl.analysis.rundir import RunDir, load_run
from crl.analysis.stats import StatsConfig, method_table
from crl.errors import CRLError
from crl.logs.schema import NO_STEER

PRECOMPUTED = {
    "effects": "effects.csv",
    "branch_points": "branch_points.csv",
    "branch_trials": "branch_trials.csv",
    "side_effects": "side_effects.csv",
    "baseline_selection": "baseline_selection.csv",
}
_METHOD_ORDER = ["crl", "none", "random", "static", "corr"]
_FEATURE_MODES = ("auto", "require", "skip")


@dataclass
class WandbConfig:
    enabled: bool = False
    project: str = "crl"
    entity: str | None = None
    mode: str = "online"  # online | offline | disabled


@dataclass
class AnalyzeConfig:
    run_dir: str = ""
    out_dir: str | None = None  # default <run_dir>/analysis
    split: str | None = None  # eval split; default test, then val
    usage_phase: str | None = None  # phase for feature usage; default the eval phase ("train" also works)
    top_k: int = 20
    n_boot: int = 2000
    seed: int = 0
    n_bins: int = 10
    env: bool = False  # first run the model-dependent analyses (crl.analysis.env_pipeline); slow
    env_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # baseline seeds when env=true
    effects_table: str | None = None
    branch_table: str | None = None
    side_effects_table: str | None = None
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class CompareConfig:
    dirs: list[str] = field(default_factory=list)
    out_dir: str | None = None  # default runs/compare-<timestamp>
    features: str = "auto"  # auto: feature sections only when all runs share one SAE | require | skip
    split: str | None = None
    top_k: int = 10
    n_boot: int = 2000
    seed: int = 0
    min_share: float = 0.02
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class Result:
    html: Path
    report: Report
    warnings: list[str] = field(default_factory=list)


def _warn(msg: str, warnings: list[str]) -> None:
    warnings.append(msg)
    print(f"crl: warning: {msg}", file=sys.stderr)


def _ordered(methods: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    key = lambda m: (_METHOD_ORDER.index(m) if m in _METHOD_ORDER else len(_METHOD_ORDER), m)
    return {m: methods[m] for m in sorted(methods, key=key)}


def _read_table(explicit: str | None, default: Path) -> pd.DataFrame | None:
    path = Path(explicit) if explicit else default
    if explicit and not path.exists():
        raise CRLError(f"table '{explicit}' does not exist; write it with crl.analysis (part B) or drop the option")
    return pd.read_csv(path) if path.exists() else None


def _method_columns() -> list[str]:
    return [
        "method",
        "n_seeds",
        "n_prompts",
        "accuracy",
        "acc_lo",
        "acc_hi",
        "diff_vs_ref",
        "diff_lo",
        "diff_hi",
        "p_bootstrap",
        "mcnemar_p_max",
        "mcnemar_per_seed",
    ]


def _format_columns() -> list[str]:
    return [
        "method",
        "well_formed",
        "wf_lo",
        "wf_hi",
        "acc_among_well_formed",
        "format_fixes",
        "answer_fixes",
        "format_breaks",
        "answer_breaks",
        "reformatted",
        "deformatted",
    ]


_CATEGORY_NOTE = (
    "Categories compare each eval episode with the unsteered episode of the same prompt. Reading rule: "
    "low explained variance or high calibration error means a value-estimation error; a calibrated "
    "critic that separates outcomes at the first token while failures persist means a policy limit."
)
_FORMAT_NOTE = (
    "Format fixes (baseline malformed -> CRL correct) are kept apart from answer fixes (baseline "
    "well-formed but wrong -> CRL correct); fractions of (seed, prompt) pairs."
)
_STATS_NOTE = (
    "Accuracy: mean over seeds of per-seed accuracy; 95% CI by a two-way bootstrap over seeds and prompts. "
    "diff: paired bootstrap over prompts (per-prompt means over seeds), null-centred p-value. McNemar: "
    "exact test per seed pair; the largest p over seeds is shown."
)


def _wandb_run(cfg: WandbConfig, name: str) -> Any | None:
    if not cfg.enabled:
        return None
    import wandb

    return wandb.init(project=cfg.project, entity=cfg.entity, name=name, job_type="analysis", mode=cfg.mode)


def _publish(report: Report, out: Path, wb: WandbConfig, name: str) -> Path:
    path = report.write(out / "report.html")
    run = _wandb_run(wb, name)
    if run is not None:
        log_to_wandb(run, report)
        run.finish()
    return path


def _feature_section(rep: Report, s: list[str], run: RunDir, usage_phase: str, out: Path, cfg: AnalyzeConfig) -> None:
    effects = _read_table(cfg.effects_table, run.path / "analysis" / PRECOMPUTED["effects"])
    usage = feature_usage(run.steps_of(usage_phase), run.episodes_of(usage_phase), run.neuronpedia_id, effects)
    s.append(
        para(
            f"Phase {usage_phase}. share = selections / all decisions; mean_reward, accuracy over episodes "
            "that chose the feature; reward_lift = vs episodes that did not."
            + (
                ""
                if effects is not None
                else " Forced-feature effects vs no steering: not computed "
                "(run crl.analysis.env_pipeline.run_env_analyses)."
            ),
            "note",
        )
    )
    cols = [
        "rank",
        "label",
        "count",
        "share",
        "n_episodes",
        "mean_reward",
        "accuracy",
        "reward_lift",
        "mean_step",
        "syntactic_share",
        "top_token_types",
        "top_tokens",
        "top_prev_tokens",
        "top_next_tokens",
        *([c for c in effects.columns if c != "feature"] if effects is not None else []),
    ]
    rep.add_table(s, "feature_usage", usage, columns=cols, links={"label": "url"}, max_rows=cfg.top_k)
    rep.add_image(s, "feature_usage", plots.feature_usage_bars(usage, out / "feature_usage.png", cfg.top_k))
    top = [int(f) for f in usage["feature"] if f != NO_STEER][:5]
    hist = step_histogram(run.steps_of(usage_phase), top)
    rep.add_image(s, "feature_positions", plots.step_histogram_plot(hist, out / "feature_positions.png"))
    tt = token_type_table(run.steps_of(usage_phase), [int(f) for f in usage["feature"].head(cfg.top_k)])
    rep.add_table(s, "token_types", tt.reset_index())


def analyze_run(cfg: AnalyzeConfig) -> Result:
    """Every part-A analysis of one run directory; writes PNGs and report.html into the out dir."""
    if not cfg.run_dir:
        raise CRLError("no run directory given; pass run_dir=runs/<name>")
    if cfg.env:
        from crl.analysis.baselines import BaselineConfig
        from crl.analysis.env_pipeline import EnvAnalysisConfig, run_env_analyses

        load_run(cfg.run_dir)  # validate before loading the model
        split = cfg.split or "test"
        env_cfg = EnvAnalysisConfig(
            baselines=BaselineConfig(split=split, seeds=list(cfg.env_seeds)), n_boot=cfg.n_boot, seed=cfg.seed
        )
        run_env_analyses(cfg.run_dir, env_cfg)
    run = load_run(cfg.run_dir, include_train=cfg.usage_phase == "train")
    out = Path(cfg.out_dir) if cfg.out_dir else run.path / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    stats_cfg = StatsConfig(n_boot=cfg.n_boot, seed=cfg.seed)
    warnings: list[str] = []
    phase = run.eval_phase(cfg.split)
    split = phase.split(":", 1)[1]
    baselines = run.baseline_phases(split)
    methods = _ordered({"crl": run.episodes_of(phase), **{n: run.episodes_of(p) for n, p in baselines.items()}})
    mt = method_table(methods, "crl", stats_cfg)
    rep = Report(f"CRL analysis: {run.name}")

    # -- summary
    s = rep.section("Summary")
    ident = {
        k: run.info.get(k)
        for k in (
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
    }
    rep.add_table(s, "identity", pd.DataFrame([{"key": k, "value": str(v)} for k, v in ident.items()]))
    crl_row = mt.iloc[0]
    s.append(
        para(
            f"Trained policy on {phase}: accuracy {crl_row['accuracy']:.3f} "
            f"[{crl_row['acc_lo']:.3f}, {crl_row['acc_hi']:.3f}], well-formed {crl_row['well_formed']:.3f}, "
            f"{int(crl_row['n_prompts'])} prompts x {int(crl_row['n_seeds'])} seed(s)."
        )
    )
    if "none" in methods:
        nr = mt[mt["method"] == "none"].iloc[0]
        s.append(
            para(
                f"vs no steering: {nr['diff_vs_ref']:+.3f} [{nr['diff_lo']:+.3f}, {nr['diff_hi']:+.3f}], "
                f"p={nr['p_bootstrap']:.3g} (paired bootstrap), McNemar p={nr['mcnemar_p_max']:.3g}."
            )
        )
    else:
        _warn(
            f"run '{run.name}' has no baseline:none:{split} phase; run the baselines for CIs vs no steering",
            warnings,
        )
    planted = run.info.get("planted")
    if planted:
        rec = planted_recovery(run.steps_of(phase), run.episodes_of(phase), list(planted))
        s.append(
            para(
                f"Planted task: the policy picks the prompt's planted feature at step 0 in "
                f"{rec['step0_hit']:.1%} of {rec['n_episodes']} episodes; {rec['planted_share']:.1%} of all "
                f"decisions are planted features {list(planted)}."
            )
        )

    # -- baselines
    s = rep.section("Baselines with 95% CIs and p-values")
    s.append(para(_STATS_NOTE, "note"))
    rep.add_table(s, "methods", mt, columns=_method_columns())
    rep.add_image(s, "baselines", plots.baselines_ci(mt, out / "baselines.png", f"{run.task}, {phase}"))
    selection = _read_table(None, run.path / "analysis" / PRECOMPUTED["baseline_selection"])
    if selection is not None:
        s.append(
            para(
                "Static / correlation-selected feature: candidates scored on the selection split, then "
                "the coefficient on the coefficient split (crl.analysis.baselines).",
                "note",
            )
        )
        rep.add_table(s, "baseline_selection", selection)

    s = rep.section("Format-valid rates (kept apart from accuracy)")
    s.append(para(_FORMAT_NOTE, "note"))
    rep.add_table(s, "format", mt, columns=_format_columns())

    # -- features
    s = rep.section("Feature usage")
    usage_phase = cfg.usage_phase or phase
    if run.steps_of(usage_phase).empty:
        s.append(para(f"No intervention rows in phase {usage_phase}; nothing to count.", "warn"))
    else:
        _feature_section(rep, s, run, usage_phase, out, cfg)

    # -- branch points
    s = rep.section("Branch points")
    branches = _read_table(cfg.branch_table, run.path / "analysis" / PRECOMPUTED["branch_points"])
    if branches is None:
        s.append(
            para(
                "Not computed: branch points re-run the environment (run "
                "crl.analysis.env_pipeline.run_env_analyses on this run).",
                "note",
            )
        )
    else:
        trials = _read_table(None, run.path / "analysis" / PRECOMPUTED["branch_trials"])
        if trials is not None and len(trials):
            rep.add_table(s, "branch_by_step", branch_aggregate(trials, run.task))
        rep.add_table(s, "branch_points", branches, max_rows=50)
        rep.add_image(s, "branch_positions", plots.branch_positions(branches, out / "branch_positions.png"))

    # -- critic
    s = rep.section("Critic trajectories")
    s.append(para(_CATEGORY_NOTE, "note"))
    eval_eps, eval_steps = run.episodes_of(phase), run.steps_of(phase)
    ccfg = CriticConfig(n_bins=cfg.n_bins)
    if eval_steps.empty:
        s.append(para("The eval phase logged no steps; no critic values to analyze.", "warn"))
    else:
        if "none" in baselines:
            cats = outcome_categories(eval_eps, run.episodes_of(baselines["none"]))
            rep.add_table(s, "categories", category_counts(cats))
            traj = value_trajectories(eval_steps, cats, "step", ccfg)
            rep.add_image(s, "critic_steps", plots.critic_trajectories(traj, out / "critic_steps.png"))
            rel = value_trajectories(eval_steps, cats, "relative", ccfg)
            rep.add_image(
                s,
                "critic_relative",
                plots.critic_trajectories(rel, out / "critic_relative.png", "relative position in the episode"),
            )
        else:
            s.append(para("No baseline:none phase: outcome categories need the unsteered run.", "warn"))
        summary, calib = critic_summary(eval_steps, eval_eps, ccfg)
        rep.add_table(s, "critic_summary", pd.DataFrame([summary.__dict__]))
        rep.sections[0][1].append(para(f"Critic: {summary.diagnosis} ({summary.reason})."))
        rep.add_table(s, "calibration", calib)
        rep.add_image(s, "calibration", plots.calibration_curve(calib, out / "calibration.png", summary.ece_all))

    # -- layers / coefficient
    s = rep.section("Layer comparison and coefficient tolerance")
    s.append(
        para(
            f"Single run at layer {run.layer}; compare layers with `crl compare 'dirs=[...]'` over a layer sweep.",
            "note",
        )
    )
    sweep = run.summary.get("coef_sweep")
    if sweep:
        r0 = float(run.episodes_of(baselines["none"])["well_formed"].mean()) if "none" in baselines else None
        tol = coef_tolerance(sweep, r0, LayerConfig().tolerance_frac)
        sw = pd.DataFrame(sweep)
        rep.add_table(s, "coef_sweep", sw)
        s.append(
            para(
                f"coefficient tolerance = {tol:g} (largest |coef| with it and every smaller one keeping the "
                "well-formed rate >= 0.9 x unsteered)"
            )
        )
        rep.add_image(s, "coef_sweep", plots.coef_sweep_plot(sw, out / "coef_sweep.png", tol))

    # -- side effects
    s = rep.section("Side effects")
    side = _read_table(cfg.side_effects_table, run.path / "analysis" / PRECOMPUTED["side_effects"])
    if side is None:
        s.append(
            para(
                "Not computed: KL on neutral prompts needs the model (run "
                "crl.analysis.env_pipeline.run_env_analyses on this run).",
                "note",
            )
        )
    else:
        rep.add_table(s, "side_effects", side, max_rows=cfg.top_k)
    for w in warnings:
        rep.sections[0][1].append(para(w, "warn"))
    return Result(_publish(rep, out, cfg.wandb, f"analyze-{run.name}"), rep, warnings)


def _feature_mode(mode: Any) -> str:
    # features=true/false arrive as bools or, through the str-typed setting, as "True"/"False".
    text = str(mode).lower()
    text = {"true": "require", "false": "skip"}.get(text, text)
    if text not in _FEATURE_MODES:
        raise CRLError(f"features='{mode}' is unknown; use auto, require or skip")
    return text


def _group_key(r: RunDir) -> tuple:
    return (r.task, str(r.info["model"]), r.sae_identity, r.layer, float(r.info["coef"]))


def compare_runs(cfg: CompareConfig) -> Result:
    """Compare several runs: accuracy vs baselines pooled over seeds, layers, and (one SAE only) features.

    Feature ids mean different things in different SAEs, so feature-level sections are refused
    (features=require) or skipped with a warning (features=auto) when the runs' sae_identity differ;
    accuracy and layer comparisons do not compare feature ids and are always shown.
    """
    dirs = list(cfg.dirs or [])
    if len(dirs) < 2:
        raise CRLError("compare needs at least two run directories; pass 'dirs=[runs/a,runs/b]'")
    mode = _feature_mode(cfg.features)
    runs = [load_run(d, include_train=False) for d in dirs]
    warnings: list[str] = []
    saes = sorted({r.sae_identity for r in runs})
    features_ok = len(saes) == 1 and mode != "skip"
    if len(saes) > 1:
        msg = f"runs use {len(saes)} different SAEs ({', '.join(saes)}): feature ids are not comparable across SAEs"
        if mode == "require":
            raise CRLError(msg + "; compare feature usage only within one SAE (or use features=auto)")
        if mode == "auto":
            _warn(msg + ", so feature-level sections are skipped; accuracy is still compared", warnings)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(cfg.out_dir) if cfg.out_dir else Path("runs") / f"compare-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    stats_cfg = StatsConfig(n_boot=cfg.n_boot, seed=cfg.seed)
    rep = Report(f"CRL comparison of {len(runs)} runs")

    s = rep.section("Summary")
    rep.add_table(
        s,
        "runs",
        pd.DataFrame(
            [
                {
                    "run": r.name,
                    "dir": str(r.path),
                    "task": r.task,
                    "model": r.info["model"],
                    "layer": r.layer,
                    "coef": r.info["coef"],
                    "seed": r.info["seed"],
                    "sae_identity": r.sae_identity,
                }
                for r in runs
            ]
        ),
    )

    # -- accuracy per configuration, seeds pooled
    s = rep.section("Baselines with 95% CIs and p-values (seeds pooled per configuration)")
    s.append(para(_STATS_NOTE + " Runs that differ only in seed form one configuration.", "note"))
    groups: dict[tuple, list[RunDir]] = {}
    for r in runs:
        groups.setdefault(_group_key(r), []).append(r)
    all_tables = []
    for gi, (key, group) in enumerate(groups.items()):
        seeds = [int(r.info["seed"]) for r in group]
        if len(set(seeds)) < len(seeds):
            _warn(
                f"runs {[r.name for r in group]} share a seed; their episodes are averaged per prompt",
                warnings,
            )
        pooled: dict[str, list[pd.DataFrame]] = {}
        for r in group:
            phase = r.eval_phase(cfg.split)
            split = phase.split(":", 1)[1]
            pooled.setdefault("crl", []).append(r.episodes_of(phase))
            for name, p in r.baseline_phases(split).items():
                pooled.setdefault(name, []).append(r.episodes_of(p))
        methods = _ordered({m: pd.concat(v, ignore_index=True) for m, v in pooled.items()})
        mt = method_table(methods, "crl", stats_cfg)
        label = f"{key[0]} | layer {key[3]} | coef {key[4]:g} | {len(group)} run(s)"
        mt.insert(0, "config", label)
        all_tables.append(mt)
        s.append(para(label))
        rep.add_table(s, f"methods_{gi}", mt, columns=_method_columns())
        rep.add_image(s, f"baselines_{gi}", plots.baselines_ci(mt, out / f"baselines_{gi}.png", label))
    s = rep.section("Format-valid rates (kept apart from accuracy)")
    s.append(para(_FORMAT_NOTE, "note"))
    rep.add_table(s, "format", pd.concat(all_tables, ignore_index=True), columns=["config", *_format_columns()])

    # -- layers
    s = rep.section("Layer comparison")
    by_task: dict[tuple[str, str], list[RunDir]] = {}
    for r in runs:
        by_task.setdefault((r.task, str(r.info["model"])), []).append(r)
    shown = False
    for ti, ((task, model), group) in enumerate(by_task.items()):
        if len({r.layer for r in group}) < 2:
            continue
        lt = layer_table(group, LayerConfig(split=cfg.split), stats_cfg)
        s.append(para(f"{task} on {model}"))
        rep.add_table(s, f"layers_{ti}", lt)
        rep.add_image(s, f"layers_{ti}", plots.layer_comparison(lt, out / f"layers_{ti}.png"))
        shown = True
    if not shown:
        s.append(para("No task has runs at two or more layers.", "note"))

    # -- features
    s = rep.section("Feature usage across runs")
    if not features_ok:
        reason = "features=skip" if mode == "skip" else "the runs use different SAEs"
        s.append(para(f"Skipped: {reason}.", "warn" if mode != "skip" else "note"))
    else:
        fcfg = FeatureConfig(top_k=cfg.top_k, min_share=cfg.min_share, n_boot=cfg.n_boot, seed=cfg.seed)
        tops = []
        for r in runs:
            phase = r.eval_phase(cfg.split)
            u = feature_usage(r.steps_of(phase), r.episodes_of(phase), r.neuronpedia_id).head(cfg.top_k)
            tops.append(
                u.assign(run=r.name)[
                    ["run", "rank", "label", "share", "mean_reward", "reward_lift", "top_token_types", "url"]
                ]
            )
        rep.add_table(
            s,
            "top_features",
            pd.concat(tops, ignore_index=True),
            links={"label": "url"},
            columns=["run", "rank", "label", "share", "mean_reward", "reward_lift", "top_token_types"],
        )
        tasks = sorted({r.task for r in runs})
        if len(tasks) > 1:
            steps_by_task = {
                t: pd.concat([r.steps_of(r.eval_phase(cfg.split)) for r in runs if r.task == t], ignore_index=True)
                for t in tasks
            }
            spec = task_specificity(steps_by_task, cfg=fcfg)
            s.append(
                para(
                    f"A feature is used by a task when the lower 95% bound (episode bootstrap) of its "
                    f"selection share is >= {cfg.min_share}; task-specific = used by one task, shared = by "
                    "two or more.",
                    "note",
                )
            )
            rep.add_table(s, "task_specificity", spec)
    for w in warnings:
        rep.sections[0][1].append(para(w, "warn"))
    return Result(_publish(rep, out, cfg.wandb, f"compare-{stamp}"), rep, warnings)
