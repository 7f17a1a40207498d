"""Report section on the critic: value trajectories per outcome category vs no steering, calibration and
the diagnosis (value-estimation error or policy limit)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from crl.analysis.offline.critic import (
    CriticConfig,
    category_counts,
    critic_summary,
    outcome_categories,
    value_trajectories,
)
from crl.analysis.report import plots
from crl.analysis.report.common import CATEGORY_NOTE
from crl.analysis.report.document import Report, para
from crl.logs.reader import RunDir


def run_advantage(run: RunDir) -> str:
    """The run's ppo.advantage (gae for runs from before the option existed)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.create(run.config_text or "{}")) or {}
    return str((cfg.get("ppo") or {}).get("advantage", "gae"))


def critic_section(rep: Report, run: RunDir, phase: str, baselines: dict[str, str], out: Path, n_bins: int) -> None:
    """Value trajectories per outcome vs no steering, calibration, and the diagnosis (also in the summary)."""
    s = rep.section("Critic trajectories")
    s.append(para(CATEGORY_NOTE, "note"))
    eval_eps, eval_steps = run.episodes_of(phase), run.steps_of(phase)
    ccfg = CriticConfig(n_bins=n_bins)
    if eval_steps.empty:
        s.append(para("The eval phase logged no steps; no critic values to analyze.", "warn"))
        return
    if "none" in baselines:
        cats = outcome_categories(eval_eps, run.episodes_of(baselines["none"]))
        rep.add_table(s, "categories", category_counts(cats))
        traj = value_trajectories(eval_steps, cats, "step", ccfg)
        rep.add_image(s, "critic_steps", plots.critic_trajectories(traj, out / "critic_steps.png"))
        rel = value_trajectories(eval_steps, cats, "relative", ccfg)
        rel_png = plots.critic_trajectories(rel, out / "critic_relative.png", "relative position in the episode")
        rep.add_image(s, "critic_relative", rel_png)
    else:
        s.append(para("No baseline:none phase: outcome categories need the unsteered run.", "warn"))
    summary, calib = critic_summary(eval_steps, eval_eps, ccfg, run_advantage(run))
    rep.add_table(s, "critic_summary", pd.DataFrame([summary.__dict__]))
    rep.sections[0][1].append(para(f"Critic: {summary.diagnosis} ({summary.reason})."))
    rep.add_table(s, "calibration", calib)
    rep.add_image(s, "calibration", plots.calibration_curve(calib, out / "calibration.png", summary.ece_all))
