"""Report section: what each feature the eval policy steered with does to the next token, at the run's coefficient
and levels (crl.analysis.replay.steer_effects measures it; crl.analysis.offline.feature_effects reads it)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from crl.analysis.offline.feature_effects import SHOWN_TOKENS, effects_table, read_effects_record
from crl.analysis.offline.features import neuronpedia_url
from crl.analysis.report.document import Report, para
from crl.logs.reader import RunDir

if TYPE_CHECKING:
    from crl.analysis.report.cards import FeatureRefs
    from crl.run.components import Components

TITLE = "Steering effects per feature"
TIPS = {
    "level": "the coefficient level (steering.coef_levels): +1 amplifies, -1 suppresses",
    "coef": "the coefficient steered with: steering.coef x level",
    "n_uses": "tokens of the eval phase the policy steered with this feature at this level",
    "kl_neutral": "KL(P_unsteered || P_steered) of the next token on neutral sentences, mean over prompts",
    "kl_task": "KL(P_unsteered || P_steered) of the next token on the task's prompts, mean over prompts",
    "top1_changed_neutral": "share of neutral prompts whose most likely next token changes",
    "top1_changed_task": "share of task prompts whose most likely next token changes",
    "promotes": f"the {SHOWN_TOKENS} tokens whose log-prob rises most (mean change over both prompt sets)",
    "demotes": f"the {SHOWN_TOKENS} tokens whose log-prob falls most (mean change over both prompt sets)",
}


def steering_section(
    rep: Report,
    run: RunDir,
    eval_split: str | None,
    measure: bool,
    force: bool = False,
    refs: FeatureRefs | None = None,
    load: Callable[[], Components] | None = None,
) -> None:
    """The section. `measure`: measure the effects with the model unless a current record is stored (`force`:
    always); otherwise only a stored record is shown. A run whose model cannot be rebuilt gets a one-line note.
    `refs`: label the features and link them to their cards (`crl.analysis.report.cards`); else ids, linked to
    Neuronpedia for a hub SAE. `load`: the run's components, shared with the other sections that run the model."""
    s = rep.section(TITLE)
    note = None
    if measure:
        from crl.analysis.replay.steer_effects import ensure_feature_effects

        record, note = ensure_feature_effects(run.path, force=force, eval_split=eval_split, load=load)
    else:
        record = read_effects_record(run.path)
        if record is None:
            note = "not measured (feature_effects=false); `crl analyze` measures them by default"
    if record is None:
        s.append(para(f"Steering effects {note}.", "note"))
        return
    table = effects_table(record)
    if table.empty:
        s.append(para(f"The eval policy ({record.get('phase')}) never steered: no feature to describe.", "note"))
        return
    s.append(para(_describe(record), "note"))
    if refs is not None:
        shown = [*refs.columns(), *(c for c in table.columns if c != "feature")]
        kw = refs.table_kw()
        table = refs.annotate(table)
        rep.add_table(s, "steering_effects", table, columns=shown, **{**kw, "tips": {**TIPS, **kw.get("tips", {})}})
        return
    table["url"] = [neuronpedia_url(run.neuronpedia_id, f) for f in table["feature"]]
    shown = [c for c in table.columns if c != "url"]
    rep.add_table(s, "steering_effects", table, columns=shown, links={"feature": "url"}, tips=TIPS)


def stored(run_dir: str | Path, eval_split: str | None, force: bool = False) -> str | None:
    """The stored file `steering_section` (measuring, same `eval_split` and `force`) will show without measuring,
    else None."""
    from crl.analysis.replay.steer_effects import stored_feature_effects

    return None if force else stored_feature_effects(run_dir, eval_split)


def _describe(record: dict) -> str:
    left = int(record.get("n_features_left_out") or 0)
    some = "feature is" if left == 1 else "features are"
    more = f" {left} less used {some} left out (max_features={record.get('max_features')})." if left else ""
    return (
        f"What each feature the eval policy ({record.get('phase')}) steered with does to the next token, steered at "
        f"the run's coefficient ({record.get('coef')}, {record.get('coef_mode')}) times its level, only at the "
        f"decision position (the last prompt token): KL and top-1 changes on {record.get('n_neutral')} neutral "
        f"sentences and the first {record.get('n_task')} {record.get('split')} prompts as the environment renders "
        f"them; promoted / demoted tokens by the mean change in log-prob over both sets.{more}"
    )
