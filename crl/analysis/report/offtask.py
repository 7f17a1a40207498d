"""Report section: side effects of the trained policy off its task (`crl.analysis.offline.offtask` defines them;
`crl.analysis.replay.offtask` measures them, by default in every `crl analyze`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crl.analysis.offline.offtask import offtask_table, plan, read_offtask, reading
from crl.analysis.report.document import Report, para
from crl.config import AnalyzeConfig
from crl.logs.reader import RunDir

if TYPE_CHECKING:
    from crl.run.components import Components

TITLE = "Side effects (off the task)"
TIPS = {
    "measure": "what is compared between no steering and the trained policy (greedy, eval masking)",
    "on": "the prompts or text it is measured on",
    "n": "prompts, positions or changed outcomes counted",
    "change [95% CI]": "outcomes: share of changed prompts that got worse (Wilson CI); KL: bootstrap over texts; "
    "refusal: policy - no steering (paired bootstrap), newly / no longer refused, exact McNemar p; perplexity: "
    "ratio policy / no steering (paired bootstrap over prompts)",
}


def offtask_section(rep: Report, run: RunDir, cfg: AnalyzeConfig, load: Callable[[], Components] | None = None) -> None:
    """The section. With `cfg.offtask` the model-run measurements are made unless a current record is stored
    (`cfg.env`: always); otherwise only a stored record is shown. The side-effect ratio comes from the logs, so it
    is shown even when the model cannot be rebuilt (with a one-line note why the rest is missing). `load`: the run's
    components, shared with the other sections that run the model."""
    s = rep.section(TITLE)
    note = None
    if cfg.offtask:
        from crl.analysis.replay.offtask import ensure_offtask

        record, note = ensure_offtask(run.path, force=cfg.env, **settings(cfg), load=load)
    else:
        record = read_offtask(run.path)
        if record is None:
            note = "not measured (offtask=false); `crl analyze` measures them by default"
    if record is None:
        s.append(para(f"Off-task side effects with the model {note}.", "note"))
        record = plan(run, cfg.split, cfg.offtask_prompts, cfg.offtask_tokens, cfg.seed, cfg.n_boot)
    table = offtask_table(record)
    if table.empty:
        s.append(para("Nothing to show: no logged no-steering episodes on the eval split, and no measurement.", "note"))
        return
    s.append(para(reading(record)))
    rep.add_table(s, "offtask", table, tips=TIPS)
    s.append(para(describe(record), "note"))


def settings(cfg: AnalyzeConfig) -> dict[str, Any]:
    """The off-task measurement's settings in `crl analyze` (`replay.offtask.ensure_offtask`'s keywords)."""
    return {
        "eval_split": cfg.split,
        "prompts": cfg.offtask_prompts,
        "tokens": cfg.offtask_tokens,
        "seed": cfg.seed,
        "n_boot": cfg.n_boot,
    }


def stored(run_dir: str | Path, cfg: AnalyzeConfig) -> str | None:
    """The stored file `offtask_section` will show without measuring (a current record, `cfg.env` off), else None."""
    from crl.analysis.replay.offtask import stored_offtask

    return None if cfg.env else stored_offtask(run_dir, **settings(cfg))


def describe(record: dict[str, Any]) -> str:
    """The section's note: what was run, on what, within which budget."""
    st = record.get("settings", {})
    parts = [
        "The policy acts greedily with the eval masking, as in its eval; no steering is the same model unsteered. "
        "Outcome changes are read from the logged episodes (the lowest seed of each phase)."
    ]
    if record.get("neutral_kl"):
        parts.append(
            f"Neutral text: each of {record['neutral_kl'].get('prompts')} fixed neutral sentences continued "
            f"{st.get('tokens')} tokens by the unsteered model, fed back token by token with and without the policy "
            "steering every position."
        )
    if record.get("refusal") is not None:
        parts.append(
            f"Safe prompts: {record['refusal']['source']} (at most {st.get('prompts')}), {st.get('tokens')} tokens "
            "each, read by the refusal task's string-matching verifier."
        )
    if record.get("perplexity"):
        parts.append(
            f"Perplexity: free greedy completions of {st.get('tokens')} tokens (fewer at EOS) of the neutral sentences "
            f"and the first {record.get('n_task_prompts', 0)} eval prompts (no answer constraint), scored by the "
            "unsteered model; its own greedy text is the reference, so a ratio near 1 is the best possible."
        )
    if record.get("seconds") is not None:
        parts.append(f"Budget: {record['seconds']} s with the model ({record.get('model')}).")
    return " ".join(parts)
