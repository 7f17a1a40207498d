"""Every replay analysis of one finished run (they re-run the model), written where `crl analyze` reads it:

- baseline phases appended to the run's logs (`baselines.write_baselines`) + analysis/baseline_selection.csv and
  analysis/baseline_val_outcomes.csv; with `shared` (a directory), the baselines that do not depend on the run's seed
  or policy are taken from there when another run stored them, else computed and stored there
  (`crl.analysis.replay.shared`);
- analysis/branch_points.csv (branch points) and analysis/branch_trials.csv (every replayed alternative);
- analysis/effects.csv (forced-feature effect vs no steering, joined into the feature table);
- analysis/side_effects.csv (KL on neutral prompts for the most used features);
- summary.json "coef_sweep" (coefficient tolerance).

Branch points and the forced-feature and side effects only feed the run's own report (`run_branch_points`,
`run_effects`: `crl analyze branch_points=false forced_effects=false`, `crl study`'s default for its cells); its
sections then say they were not computed and name the command that computes them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crl.analysis.offline.stats import StatsConfig
from crl.analysis.replay.baselines import BaselineConfig, run_baselines, usage_from_run, write_rows
from crl.analysis.replay.branch_points import BranchConfig, branch_points, find_branch_points
from crl.analysis.replay.effects import (
    EffectConfig,
    coef_sweep,
    forced_feature_effects,
    side_effects,
    write_coef_sweep,
    write_tables,
)
from crl.analysis.replay.runner import load_components
from crl.errors import CRLError
from crl.logs.reader import RunDir, load_run
from crl.logs.schema import NO_STEER, Phase


@dataclass
class ReplayConfig:
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    branch: BranchConfig = field(default_factory=BranchConfig)
    effects: EffectConfig = field(default_factory=EffectConfig)
    sweep_multipliers: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0])  # x coef (analyze coef_sweep=)
    sweep_split: str = "val"
    run_baselines: bool = True
    run_branch_points: bool = True
    run_effects: bool = True
    run_sweep: bool = True
    shared: str | None = None  # a directory of shared baselines (crl.analysis.replay.shared); None: all computed here
    n_boot: int = 2000
    seed: int = 0


def _new_baselines(run: RunDir, cfg: ReplayConfig) -> list[str]:
    """The baselines to run: those whose phase the run does not have yet (training logs baseline:none)."""
    return [m for m in cfg.baselines.methods if str(Phase.baseline(m, cfg.baselines.split)) not in run.phases]


def _stored(run_dir: str | Path, cfg: ReplayConfig, methods: list[str]) -> list[str]:
    """The shared methods among `methods` that `cfg.shared` holds for this run already (none when it has no config)."""
    if cfg.shared is None:
        return []
    from crl.analysis.replay.shared import SHARED_METHODS, SharedBaselines

    try:
        store = SharedBaselines.for_run(cfg.shared, run_dir, cfg.baselines)
    except (CRLError, OSError, ValueError):
        return []
    return [m for m in methods if m in SHARED_METHODS and store.has(m)]


def phases(run_dir: str | Path, cfg: ReplayConfig | None = None) -> list[str]:
    """What `run_replay_analyses` will run on this run, in order (the first line `crl analyze env=true` prints)."""
    cfg = cfg or ReplayConfig()
    run = load_run(run_dir, include_train=False)  # the baseline and eval phases are all it reads
    out = []
    if cfg.run_baselines:
        methods = _new_baselines(run, cfg)
        logged = [m for m in cfg.baselines.methods if m not in methods]
        stored = _stored(run_dir, cfg, methods)
        out.append(
            f"baselines ({', '.join(methods) or 'none to run'}"
            + (f"; {', '.join(logged)} logged already" if logged else "")
            + (f"; {', '.join(stored)} stored in {cfg.shared}" if stored else "")
            + ")"
        )
    if cfg.run_branch_points:
        out.append("branch points")
    steps = run.steps_of(run.eval_phase(cfg.baselines.split))
    if cfg.run_effects and len(steps):
        out.append("forced-feature effects")
        if cfg.effects.top_k and (steps["feature"] != NO_STEER).any():
            out.append("side effects")
    if cfg.run_sweep:
        out.append("coefficient sweep")
    return out


def run_replay_analyses(
    run_dir: str | Path, cfg: ReplayConfig | None = None, comps: Any = None, policy: Any = None
) -> dict[str, Any]:
    """Run the enabled replay analyses; `comps`/`policy` default to the run's own (config.yaml, policy.pt)."""
    cfg = cfg or ReplayConfig()
    run = load_run(run_dir)
    comps = comps if comps is not None else load_components(run_dir)
    policy = policy if policy is not None else comps.load_policy(run_dir)
    phase = run.eval_phase(cfg.baselines.split)
    steps = run.steps_of(phase)
    stats_cfg = StatsConfig(n_boot=cfg.n_boot, seed=cfg.seed)
    out: dict[str, Any] = {}
    static = static_coef = None
    if cfg.run_baselines:
        # Phases the run already has (training logs baseline:none) are not re-run.
        bcfg = dataclasses.replace(cfg.baselines, methods=_new_baselines(run, cfg))
        usage = usage_from_run(run_dir, cfg.baselines.n_usage)
        if cfg.shared is None:
            rows = run_baselines(comps, bcfg, usage, policy).rows()
        else:
            from crl.analysis.replay.shared import SharedBaselines, run_shared

            rows = run_shared(comps, bcfg, SharedBaselines.for_run(cfg.shared, run_dir, cfg.baselines), usage, policy)
        out["baseline_phases"] = write_rows(run_dir, rows)
        out["baseline_notes"] = rows.notes
        out["baseline_chosen"] = rows.chosen
        static, static_coef = rows.chosen.get("static_feature"), rows.chosen.get("static_coef")
    if cfg.run_branch_points:
        branch = cfg.branch
        if branch.static_feature is None and static is not None:  # also try the selected static feature
            coef = float(static_coef) if static_coef is not None else None
            branch = dataclasses.replace(branch, static_feature=int(static), static_coef=coef)
        trials = find_branch_points(comps, policy, branch)
        out["tables"] = write_tables(run_dir, branch_points=branch_points(trials), branch_trials=trials)
    if cfg.run_effects and len(steps):
        eff = forced_feature_effects(comps, steps, cfg.effects, stats_cfg)
        top = [int(f) for f in steps[steps["feature"] != NO_STEER]["feature"].value_counts().index[: cfg.effects.top_k]]
        side = side_effects(comps, top, positions=cfg.effects.positions) if top else None
        tables = {"effects": eff, **({"side_effects": side} if side is not None else {})}
        out["tables"] = [*out.get("tables", []), *write_tables(run_dir, **tables)]
    if cfg.run_sweep:
        sweep = coef_sweep(comps, policy, [m * comps.steering.coef for m in cfg.sweep_multipliers], cfg.sweep_split)
        write_coef_sweep(run_dir, sweep)
        out["coef_sweep"] = sweep
    return out
