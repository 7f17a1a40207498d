"""Report section: is each feature the policy steers with the cause of its gain? Sufficiency and necessity on
held-out prompts, with intervals (`crl.analysis.offline.causal` defines them; `crl.analysis.replay.causal`
measures them, by default in every `crl analyze`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crl.analysis.offline.causal import CLEAR, TABLE_COLUMNS, causal_table, members_text, read_causal
from crl.analysis.report.cards import FeatureRefs
from crl.analysis.report.document import Report, para
from crl.config import AnalyzeConfig
from crl.logs.reader import RunDir

if TYPE_CHECKING:
    from crl.run.components import Components

TITLE = "Causal check: does each feature carry the gain?"
TIPS = {
    "levels": "the levels the policy steered this feature at on these prompts (+1 amplify, -1 suppress)",
    "n_prompts": "held-out prompts where the policy chose the feature (a seeded sample, at most causal_prompts)",
    "policy_acc": "accuracy of the policy's own episodes on these prompts (logged)",
    "none_acc": "accuracy without steering on these prompts",
    "gain": "policy - no steering on these prompts, 95% paired-bootstrap CI",
    "sufficiency": "the feature alone at the policy's level and steps: (acc(alone) - acc(none)) / gain [95% CI]; "
    "Δacc = acc(alone) - acc(none)",
    "necessity_none": "the policy with the feature's steps unsteered: (acc(policy) - acc(replaced)) / gain [95% CI]; "
    "Δacc = acc(policy) - acc(replaced)",
    "necessity_random": "the policy with the feature replaced by a random feature of its density decile: "
    "(acc(policy) - acc(replaced)) / gain [95% CI]; Δacc = acc(policy) - acc(replaced)",
    "verdict": f"a fraction reads yes when its whole CI is >= {CLEAR}, no when it is below {CLEAR}",
}


def causal_section(
    rep: Report,
    run: RunDir,
    cfg: AnalyzeConfig,
    refs: FeatureRefs | None = None,
    load: Callable[[], Components] | None = None,
) -> None:
    """The section. With `cfg.causal` the checks are measured with the model unless a current record is stored
    (`cfg.env`: always); otherwise only a stored record is shown. A run whose model cannot be rebuilt gets a
    one-line note. `load`: the run's components, shared with the other sections that run the model."""
    refs = refs or FeatureRefs()
    s = rep.section(TITLE)
    note = None
    if cfg.causal:
        from crl.analysis.replay.causal import ensure_causal

        record, note = ensure_causal(run.path, force=cfg.env, **settings(cfg), load=load)
    else:
        record = read_causal(run.path)
        if record is None:
            note = "not measured (causal=false); `crl analyze` measures it by default"
    if record is None:
        s.append(para(f"Causal check {note}.", "note"))
        return
    if not record.get("rows"):
        why = "the eval policy never steered" if not record.get("features") else "no feature fit the time budget"
        s.append(para(f"No causal check ({record.get('phase')}): {why}.", "note"))
        return
    s.append(para(describe(record), "note"))
    features = causal_table(record, "feature")
    if len(features):
        kw = refs.table_kw()
        shown = [*refs.columns(), *TABLE_COLUMNS]
        tips = {**TIPS, **kw.get("tips", {})}
        rep.add_table(s, "causal", refs.annotate(features), columns=shown, **{**kw, "tips": tips})
    groups = causal_table(record, "group", refs.describe)
    if len(groups):
        s.append(
            para(
                "Groups: measured features that do the same thing (signed decoder cosine or answer effects, as in "
                "`crl compare`'s seed agreement), every member changed at once.",
                "note",
            )
        )
        rep.add_table(s, "causal_groups", groups, tips=TIPS)


def settings(cfg: AnalyzeConfig) -> dict[str, Any]:
    """The causal check's settings in `crl analyze` (`replay.causal.ensure_causal`'s keywords)."""
    return {
        "eval_split": cfg.split,
        "top": cfg.causal_top,
        "prompts": cfg.causal_prompts,
        "seed": cfg.seed,
        "n_boot": cfg.n_boot,
        "max_seconds": cfg.causal_seconds,
    }


def stored(run_dir: str | Path, cfg: AnalyzeConfig) -> str | None:
    """The stored file `causal_section` will show without measuring (a current record, `cfg.env` off), else None."""
    from crl.analysis.replay.causal import stored_causal

    return None if cfg.env else stored_causal(run_dir, **settings(cfg))


def describe(record: dict[str, Any]) -> str:
    """The section's note: what was run, on what, within which budget."""
    st = record.get("settings", {})
    rep_ = record.get("reproduced") or {}
    density = (
        "a random feature of the same activation-density decile (from the feature cards)"
        if record.get("density_matched")
        else "a uniformly random feature (no feature cards for this SAE, so not density-matched)"
    )
    parts = [
        f"On the held-out prompts of {record.get('phase')} where the policy chose each of its {st.get('top')} most "
        f"used features (at most {st.get('prompts')} prompts each, of {record.get('n_features_used')} features used): "
        "sufficiency = the share of the policy's gain over no steering that the feature gives alone (at the "
        "policy's level and steps, nothing else); necessity = the share lost when the policy's choice is replaced "
        f"by no steering, or by {density}. 95% CIs from a bootstrap over prompts; Δacc is the same comparison as an "
        "accuracy difference, the number to read when the gain is small (a fraction of a gain near 0 is unstable).",
    ]
    if record.get("one_step"):
        parts.append(
            "Every episode is one decision here, so the feature alone is the policy's own episode and removing it is "
            "no steering: sufficiency and necessity vs no steering are 1 by construction; the random replacement is "
            "the informative column."
        )
    if rep_.get("n") and rep_.get("agree") is not None:
        parts.append(
            f"The replay reproduces the logged policy outcome on {rep_.get('agree')}/{rep_.get('n')} checked prompts."
        )
    left = record.get("left_out") or []
    budget = f"{record.get('n_replayed', 0)} episodes replayed in {record.get('seconds', 0)} s"
    if left:
        budget += (
            f"; {len(left)} more stopped by the time budget (causal_seconds={st.get('max_seconds')}): "
            + ", ".join(members_text(r["members"]) for r in left)
        )
    parts.append(f"Budget: {budget}.")
    return " ".join(parts)
