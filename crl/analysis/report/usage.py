"""Report sections on which features the policy picks: usage, positions and token types of one run, and
top features and task specificity across runs (only when every run uses the same SAE)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from crl.analysis.offline.features import (
    TOKEN_TYPES,
    FeatureConfig,
    feature_usage,
    step_histogram,
    task_specificity,
    token_type_table,
)
from crl.analysis.report import plots
from crl.analysis.report.cards import FeatureRefs
from crl.analysis.report.common import read_precomputed, replay_hint
from crl.analysis.report.document import Report, para
from crl.logs.reader import RunDir
from crl.logs.schema import NO_STEER

_USAGE_COLUMNS = [
    "rank",
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
_TOP_COLUMNS = ["rank", "share", "mean_reward", "reward_lift", "top_token_types"]


def usage_section(
    rep: Report,
    run: RunDir,
    usage_phase: str,
    out: Path,
    top_k: int,
    effects_table: str | None,
    refs: FeatureRefs | None = None,
) -> None:
    refs = refs or FeatureRefs()
    s = rep.section("Feature usage")
    if run.steps_of(usage_phase).empty:
        s.append(para(f"No intervention rows in phase {usage_phase}; nothing to count.", "warn"))
        return
    effects = read_precomputed(run.path, "effects", effects_table)
    steps, eps = run.steps_of(usage_phase), run.episodes_of(usage_phase)
    # Every row is labelled; the rows shown (top_k) link to their cards, so cards.html holds only those.
    usage = feature_usage(steps, eps, run.neuronpedia_id, effects, labels=refs.labels())
    usage = refs.annotate(usage, link_rows=top_k)
    s.append(
        para(
            f"Phase {usage_phase}. share = selections / all decisions; mean_reward, accuracy over episodes "
            "that chose the feature; reward_lift = vs episodes that did not."
            + (
                ""
                if effects is not None
                else f" Forced-feature effects vs no steering: not computed; {replay_hint(run.path)} computes them."
            ),
            "note",
        )
    )
    effect_cols = [c for c in effects.columns if c != "feature"] if effects is not None else []
    cols = [_USAGE_COLUMNS[0], *refs.columns(), *_USAGE_COLUMNS[1:], *effect_cols]
    rep.add_table(s, "feature_usage", usage, columns=cols, max_rows=top_k, **refs.table_kw())
    rep.add_image(s, "feature_usage", plots.feature_usage_bars(usage, out / "feature_usage.png", top_k))
    top = [int(f) for f in usage["feature"] if f != NO_STEER][:5]
    names = {f: refs.label(f) for f in top}
    positions = out / "feature_positions.png"
    if steps["step"].nunique() == 1:  # one-token answers: a position plot would be one dot per feature
        step = int(steps["step"].iloc[0])
        at = steps[steps["feature"].isin([*top, NO_STEER])]
        counts = at.groupby(["feature", "correct"]).size().unstack(fill_value=0)
        s.append(
            para(
                f"Every decision is at token step {step} (a one-token answer), so instead of positions the plot "
                "shows what the policy chose there (top features and no steering) and whether the answer was right.",
                "note",
            )
        )
        rep.add_image(s, "feature_positions", plots.one_step_bars(counts, positions, step, names))
    else:
        hist = step_histogram(steps, top)
        rep.add_image(s, "feature_positions", plots.step_histogram_plot(hist, positions, labels=names))
    tt = refs.annotate(token_type_table(steps, [int(f) for f in usage["feature"].head(top_k)]).reset_index())
    rep.add_table(s, "token_types", tt, columns=[*refs.columns(), *TOKEN_TYPES], **refs.table_kw())


def across_runs_section(
    rep: Report,
    runs: list[RunDir],
    split: str | None,
    cfg: FeatureConfig,
    skip: tuple[str, str] | None,
    refs: FeatureRefs | None = None,
) -> None:
    """Top features per run and, with several tasks, which features are task-specific. `skip` = (reason,
    css class) leaves the section out, e.g. when the runs use different SAEs."""
    refs = refs or FeatureRefs()
    s = rep.section("Feature usage across runs")
    if skip is not None:
        reason, cls = skip
        s.append(para(f"Skipped: {reason}.", cls))
        return
    tops = []
    for r in runs:
        phase = r.eval_phase(split)
        u = feature_usage(r.steps_of(phase), r.episodes_of(phase), r.neuronpedia_id).head(cfg.top_k)
        tops.append(u.assign(run=r.name)[["run", "feature", *_TOP_COLUMNS]])
    top = refs.annotate(pd.concat(tops, ignore_index=True))
    cols = ["run", _TOP_COLUMNS[0], *refs.columns(), *_TOP_COLUMNS[1:]]
    rep.add_table(s, "top_features", top, columns=cols, **refs.table_kw())
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
        spec = refs.annotate(spec)
        shown = [c for c in spec.columns if c not in ("card", "url")]
        rep.add_table(s, "task_specificity", spec, columns=shown, **refs.table_kw())
