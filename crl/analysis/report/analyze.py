"""`analyze_run`: every offline analysis of one run directory, drawn into PNGs and one report.html.

Tables that need the model (forced-feature effects, branch points, side effects) are read from CSVs when
present, by default `<run_dir>/analysis/{effects,branch_points,side_effects}.csv`; `env=true` first
computes them (crl.analysis.replay.precompute). Three cheaper measurements with the model run by default, each
stored and measured again only when the eval changed: the steering effects per feature (`feature_effects`), the
causal check (`causal`) and the side effects off the task (`offtask`); the sections share one model load.
Settings: `crl.config.AnalyzeConfig` (conf/analyze.yaml).

What it prints while it runs the model (on stderr, as `crl train` prints its progress: `crl.analysis.replay.announce`):
first one line naming the phases that will run and the measurements reused from their stored files, then for each
phase a start line with its size, progress lines for its rollouts, and a closing line with its wall time.
"""

from __future__ import annotations

from pathlib import Path

from crl.analysis.offline.feature_effects import read_feature_effects
from crl.analysis.offline.stats import StatsConfig, method_table
from crl.analysis.replay import announce
from crl.analysis.replay.runner import SharedComponents
from crl.analysis.report import causal, offtask, steering
from crl.analysis.report.accuracy import baselines_section, summary_section
from crl.analysis.report.budget import budget_section
from crl.analysis.report.cards import FeatureRefs
from crl.analysis.report.causal import causal_section
from crl.analysis.report.common import Result, ordered, publish, read_precomputed
from crl.analysis.report.document import Report
from crl.analysis.report.learning import learning_section
from crl.analysis.report.offtask import offtask_section
from crl.analysis.report.replayed import branch_section, side_effects_section
from crl.analysis.report.steering import steering_section
from crl.analysis.report.sweeps import coef_section
from crl.analysis.report.transfer import transfer_section
from crl.analysis.report.usage import usage_section
from crl.analysis.report.value import critic_section
from crl.analysis.report.variants import variants_section
from crl.config import AnalyzeConfig
from crl.errors import CRLError
from crl.logs.reader import load_run
from crl.logs.schema import Phase


def _replay_config(cfg: AnalyzeConfig):  # -> ReplayConfig (imported late: it pulls in the replay modules)
    from crl.analysis.replay.baselines import BaselineConfig
    from crl.analysis.replay.precompute import ReplayConfig

    baselines = BaselineConfig(split=cfg.split or "test", seeds=list(cfg.env_seeds))
    return ReplayConfig(
        baselines=baselines,
        run_branch_points=cfg.branch_points,
        run_effects=cfg.forced_effects,
        sweep_multipliers=[float(m) for m in cfg.coef_sweep],
        shared=cfg.shared_baselines,
        n_boot=cfg.n_boot,
        seed=cfg.seed,
    )


def _precompute(cfg: AnalyzeConfig, load: SharedComponents) -> None:
    from crl.analysis.replay.precompute import run_replay_analyses

    load_run(cfg.run_dir)  # validate before loading the model
    run_replay_analyses(cfg.run_dir, _replay_config(cfg), comps=load())


def _announce_phases(cfg: AnalyzeConfig) -> None:
    """The first line: the phases that will run the model, in order, and the measurements taken from their stored
    files (`runner.current_record`) instead. Nothing when the run directory cannot be read (the analysis says why)."""
    run, reused = [], []

    def check(name: str, file: str | None) -> None:
        if file:
            reused.append(f"{name}: reused (stored {file})")
        else:
            run.append(name)

    try:
        if cfg.env:
            from crl.analysis.replay.precompute import phases

            run += phases(cfg.run_dir, _replay_config(cfg))
        if cfg.feature_effects:
            from crl.analysis.replay.steer_effects import PHASE

            check(PHASE, steering.stored(cfg.run_dir, cfg.split, force=cfg.env))
        if cfg.causal:
            from crl.analysis.replay.causal import PHASE

            check(PHASE, causal.stored(cfg.run_dir, cfg))
        if cfg.offtask:
            from crl.analysis.replay.offtask import PHASE

            check(PHASE, offtask.stored(cfg.run_dir, cfg))
    except CRLError:
        return
    announce.say("; ".join([f"phases that run the model: {', '.join(run) or 'none'}", *reused]))


def analyze_run(cfg: AnalyzeConfig) -> Result:
    """Every offline analysis of one run directory; writes PNGs and report.html into the out dir. What it prints
    while it runs the model: module docstring."""
    if not cfg.run_dir:
        raise CRLError("no run directory given; pass run_dir=runs/<name>")
    with announce.session("crl analyze"):
        _announce_phases(cfg)
        return _analyze(cfg)


def _analyze(cfg: AnalyzeConfig) -> Result:
    load = SharedComponents(cfg.run_dir)  # one model load for every section that runs the model
    if cfg.env:
        _precompute(cfg, load)
    run = load_run(cfg.run_dir, include_train=cfg.usage_phase == "train")
    out = Path(cfg.out_dir) if cfg.out_dir else run.path / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    warnings: list[str] = []
    phase = run.eval_phase(cfg.split)
    baselines = run.baseline_phases(Phase.parse(phase).split)
    methods = ordered({"crl": run.episodes_of(phase), **{n: run.episodes_of(p) for n, p in baselines.items()}})
    stats_cfg = StatsConfig(n_boot=cfg.n_boot, seed=cfg.seed)
    mt = method_table(methods, "crl", stats_cfg)

    rep = Report(f"CRL analysis: {run.name}")
    refs = FeatureRefs.of(run)  # labels and card links for every feature id in the report
    summary_section(rep, run, phase, mt, warnings, refs)
    rep.sections[0][1].append(refs.note_html())
    variants_section(rep, run, phase, stats_cfg)  # only for a task family
    learning_section(rep, run, out)
    baselines_section(rep, run, phase, mt, out, refs)
    budget_section(rep, run, out, read_precomputed(run.path, "baseline_selection"))
    usage_section(rep, run, cfg.usage_phase or phase, out, cfg.top_k, cfg.effects_table, refs)
    branch_section(rep, run, out, cfg.branch_table, refs)
    critic_section(rep, run, phase, baselines, out, cfg.n_bins)
    coef_section(rep, run, baselines, out)
    side_effects_section(rep, run, cfg.top_k, cfg.side_effects_table, refs)
    transfer_section(rep, run, out)  # only when `crl transfer` wrote analysis/transfer.csv
    steering_section(rep, run, cfg.split, cfg.feature_effects, force=cfg.env, refs=refs, load=load)  # runs the model
    causal_section(rep, run, cfg, refs, load)  # runs the model (after the steering effects: it groups by them)
    offtask_section(rep, run, cfg, load)  # runs the model: side effects off the task
    refs.write_pages(out, f"Features of {run.name}", read_feature_effects(run.path), run.name)
    return publish(rep, out, cfg.wandb, f"analyze-{run.name}", warnings)
