"""Report sections on what the replay analyses measured (crl.analysis.replay): branch points and side
effects, read from their precomputed tables; a note says how to compute them when they are absent."""

from __future__ import annotations

import re
from pathlib import Path

from crl.analysis.replay.branch_points import aggregate as branch_aggregate
from crl.analysis.report import plots
from crl.analysis.report.cards import FeatureRefs
from crl.analysis.report.common import read_precomputed, replay_hint
from crl.analysis.report.document import Report, para
from crl.logs.reader import RunDir

_SIGNED = re.compile(r"([+−])(\d+)(×\S+)?")  # `runner.action_label`: "+12", "−12", "+12×2"


def _alternative(text: str, refs: FeatureRefs) -> str:
    """One alternative with its feature's label: "−12" -> "−12 ≈'x' → 'y'"; "no steer" as it is; a bare id (tables
    written before actions carried their sign; -1 is no steering) as `refs.describe` writes it."""
    text = text.strip()
    m = _SIGNED.fullmatch(text)
    if m is not None:
        f = int(m[2])
        return m[1] + str(f) + (m[3] or "") + refs.describe(f)[len(str(f)) :]
    try:
        return refs.describe(int(float(text)))
    except ValueError:
        return text


def _alternatives(text: object, refs: FeatureRefs) -> str:
    """Each alternative with its label: "+12, no steer" -> "+12 ≈'x' → 'y' · no steer"."""
    if not isinstance(text, str) or not text.strip():
        return "" if not isinstance(text, (int, float)) else refs.describe(text)
    return " · ".join(_alternative(a, refs) for a in text.split(","))


def branch_section(
    rep: Report, run: RunDir, out: Path, branch_table: str | None, refs: FeatureRefs | None = None
) -> None:
    refs = refs or FeatureRefs()
    s = rep.section("Branch points")
    branches = read_precomputed(run.path, "branch_points", branch_table)
    if branches is None:
        hint = replay_hint(run.path)
        s.append(para(f"Not computed: branch points re-run the environment; {hint} computes them.", "note"))
        return
    trials = read_precomputed(run.path, "branch_trials")
    if trials is not None and len(trials):
        rep.add_table(s, "branch_by_step", branch_aggregate(trials, run.task))
    if "feature" in branches.columns:
        branches = refs.annotate(branches, link_rows=50)
        if "alternatives" in branches.columns:
            branches["alternatives"] = [
                _alternatives(a, refs) if i < 50 else a for i, a in enumerate(branches["alternatives"])
            ]
    shown = [c for c in branches.columns if c not in ("card", "url")]
    rep.add_table(s, "branch_points", branches, columns=shown, max_rows=50, **refs.table_kw())
    rep.add_image(s, "branch_positions", plots.branch_positions(branches, out / "branch_positions.png"))


def side_effects_section(
    rep: Report, run: RunDir, top_k: int, side_effects_table: str | None, refs: FeatureRefs | None = None
) -> None:
    refs = refs or FeatureRefs()
    s = rep.section("Side effects")
    side = read_precomputed(run.path, "side_effects", side_effects_table)
    if side is None:
        hint = replay_hint(run.path)
        s.append(para(f"Not computed: KL on neutral prompts needs the model; {hint} computes it.", "note"))
    else:
        if "feature" in side.columns:
            side = refs.annotate(side, link_rows=top_k)
        shown = [c for c in side.columns if c not in ("card", "url")]
        rep.add_table(s, "side_effects", side, columns=shown, max_rows=top_k, **refs.table_kw())
