"""Report sections on which features the policy picks: usage, positions and token types of one run, and
top features and task specificity across runs (only when every run uses the same SAE)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from crl.analysis.offline.features import (
    FeatureConfig,
    feature_usage,
    step_histogram,
    task_specificity,
    token_type_table,
)
from crl.analysis.report import plots
from crl.analysis.report.common import REPLAY_HINT, read_precomputed
from crl.analysis.report.document import Report, para
from crl.logs.reader import RunDir
from crl.logs.schema import NO_STEER

_USAGE_COLUMNS = [
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
]
_TOP_COLUMNS = ["run", "rank", "label", "share", "mean_reward", "reward_lift", "top_token_types"]


def usage_section(rep: Report, run: RunDir, usage_phase: str, out: Path, top_k: int, effects_table: str | None) -> None:
    s = rep.section("Feature usage")
    if run.steps_of(usage_phase).empty:
        s.append(para(f"No intervention rows in phase {usage_phase}; nothing to count.", "warn"))
        return
    effects = read_precomputed(run.path, "effects", effects_table)
    usage = feature_usage(run.steps_of(usage_phase), run.episodes_of(usage_phase), run.neuronpedia_id, effects)
    s.append(
        para(
            f"Phase {usage_phase}. share = selections / all decisions; mean_reward, accuracy over episodes "
            "that chose the feature; reward_lift = vs episodes that did not."
            + (
                ""
                if effects is not None
                else f" Forced-feature effects vs no steering: not computed (run {REPLAY_HINT})."
            ),
            "note",
        )
    )
    cols = [*_USAGE_COLUMNS, *([c for c in effects.columns if c != "feature"] if effects is not None else [])]
    rep.add_table(s, "feature_usage", usage, columns=cols, links={"label": "url"}, max_rows=top_k)
    rep.add_image(s, "feature_usage", plots.feature_usage_bars(usage, out / "feature_usage.png", top_k))
    top = [int(f) for f in usage["feature"] if f != NO_STEER][:5]
    hist = step_histogram(run.steps_of(usage_phase), top)
    rep.add_image(s, "feature_positions", plots.step_histogram_plot(hist, out / "feature_positions.png"))
    tt = token_type_table(run.steps_of(usage_phase), [int(f) for f in usage["feature"].head(top_k)])
    rep.add_table(s, "token_types", tt.reset_index())


def across_runs_section(
    rep: Report, runs: list[RunDir], split: str | None, cfg: FeatureConfig, skip: tuple[str, str] | None
) -> None:
    """Top features per run and, with several tasks, which features are task-specific. `skip` = (reason,
    css class) leaves the section out, e.g. when the runs use different SAEs."""
    s = rep.section("Feature usage across runs")
    if skip is not None:
        reason, cls = skip
        s.append(para(f"Skipped: {reason}.", cls))
        return
    tops = []
    for r in runs:
        phase = r.eval_phase(split)
        u = feature_usage(r.steps_of(phase), r.episodes_of(phase), r.neuronpedia_id).head(cfg.top_k)
        tops.append(u.assign(run=r.name)[[*_TOP_COLUMNS, "url"]])
    rep.add_table(s, "top_features", pd.concat(tops, ignore_index=True), links={"label": "url"}, columns=_TOP_COLUMNS)
    tasks = sorted({r.task for r in runs})
    if len(tasks) > 1:
        steps_by_task = {
            t: pd.concat([r.steps_of(r.eval_phase(split)) for r in runs if r.task == t], ignore_index=True)
            for t in tasks
        }
        spec = task_specificity(steps_by_task, cfg=cfg)
        s.append(
            para(
                f"A feature is used by a task when the lower 95% bound (episode bootstrap) of its "
                f"selection share is >= {cfg.min_share}; task-specific = used by one task, shared = by "
                "two or more.",
                "note",
            )
        )
        rep.add_table(s, "task_specificity", spec)
