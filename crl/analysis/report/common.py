"""What the report sections of `crl analyze` and `crl compare` share: settings, notes, warnings, the
precomputed replay tables, and publishing (report.html, optionally wandb)."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from crl.analysis.report.document import Report, log_to_wandb, para
from crl.config import WandbConfig
from crl.errors import CRLError
from crl.logs.wandb import init_run

# Tables written by the replay analyses (crl.analysis.replay.precompute), read from <run_dir>/analysis/.
PRECOMPUTED = {
    "effects": "effects.csv",
    "branch_points": "branch_points.csv",
    "branch_trials": "branch_trials.csv",
    "side_effects": "side_effects.csv",
    "baseline_selection": "baseline_selection.csv",
}
METHOD_ORDER = ["crl", "none", "random", "static", "corr", "prompting", "letter_prior"]
METHOD_COLUMNS = [
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
FORMAT_COLUMNS = [
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
CATEGORY_NOTE = (
    "Categories compare each eval episode with the unsteered episode of the same prompt. Reading rule: "
    "low explained variance or high calibration error means a value-estimation error; a calibrated "
    "critic that separates outcomes at the first token while failures persist means a policy limit."
)
FORMAT_NOTE = (
    "Format fixes (baseline malformed -> CRL correct) are kept apart from answer fixes (baseline "
    "well-formed but wrong -> CRL correct); fractions of (seed, prompt) pairs."
)
STATS_NOTE = (
    "Accuracy: mean over seeds of per-seed accuracy; 95% CI by a two-way bootstrap over seeds and prompts. "
    "diff: paired bootstrap over prompts (per-prompt means over seeds), null-centred p-value. McNemar: "
    "exact test per seed pair; the largest p over seeds is shown."
)


def replay_hint(run_dir: str | Path) -> str:
    """The command that computes a run's replay tables (baselines, branch points, forced-feature and side effects,
    coefficient sweep: `crl.analysis.replay.precompute`) and writes the report again with them."""
    return f"`crl analyze run_dir={shlex.quote(str(run_dir))} env=true`"


@dataclass
class Result:
    html: Path
    report: Report
    warnings: list[str] = field(default_factory=list)


def warn(msg: str, warnings: list[str]) -> None:
    warnings.append(msg)
    print(f"crl: warning: {msg}", file=sys.stderr)


def ordered(methods: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """crl first, then the baselines in METHOD_ORDER, then any others by name."""
    key = lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), m)
    return {m: methods[m] for m in sorted(methods, key=key)}


def read_precomputed(run_dir: Path, key: str, explicit: str | None = None) -> pd.DataFrame | None:
    """A replay table: at `explicit` (which must exist), else at its default place in the run dir (or None)."""
    path = Path(explicit) if explicit else run_dir / "analysis" / PRECOMPUTED[key]
    if explicit and not path.exists():
        raise CRLError(
            f"table '{explicit}' does not exist; write it with the replay analyses (`crl analyze env=true`) "
            "or drop the option"
        )
    return pd.read_csv(path) if path.exists() else None


def publish(report: Report, out: Path, wb: WandbConfig, name: str, warnings: list[str]) -> Result:
    """Warnings go to the end of the summary section; then report.html and, unless wb.mode=disabled, wandb."""
    for w in warnings:
        report.sections[0][1].append(para(w, "warn"))
    path = report.write(out / "report.html")
    run = init_run(wb, name, job_type="analysis")
    if run is not None:
        log_to_wandb(run, report)
        run.finish()
    return Result(path, report, warnings)
