"""The report section on accuracy per task variant: a task family's held-out accuracy by wording, direction and range,
no steering against the selected policy (definitions in crl/analysis/offline/variants.py). A task that is not a
family gets no section."""

from __future__ import annotations

from crl.analysis.offline.stats import StatsConfig
from crl.analysis.offline.transfer import ALPHA, HARM_MARGIN, NOT_SAFE
from crl.analysis.offline.variants import variant_table
from crl.analysis.report.document import Report, para
from crl.logs.reader import RunDir
from crl.logs.schema import Phase


def variants_section(rep: Report, run: RunDir, phase: str, cfg: StatsConfig | None = None) -> None:
    """Append the per-variant table of `phase`'s split when the run's task is a family."""
    split = Phase.parse(phase).split
    table = variant_table(run.episodes, split, cfg)
    if table.empty:
        return
    s = rep.section("Accuracy by task variant")
    s.append(
        para(
            f"The {split} split by the axes of the task family that vary on it. none: no steering; selected: the "
            "selected policy; last: the last update's policy (when selection picked another); each with its Wilson "
            "95% interval over episodes (n). diff = selected - none on the same prompts, with a paired-bootstrap "
            f"95% CI; p = exact McNemar. Verdict: when the CI's lower bound < -{HARM_MARGIN}, HARM if diff < 0, "
            f"else UNSURE (harm not ruled out); GAIN when p < {ALPHA} and diff > 0; else TIE.",
            "note",
        )
    )
    if "verdict" in table:
        harmed = [f"{r['axis']} {r['value']}" for _, r in table.iterrows() if r["verdict"] in NOT_SAFE]
        if harmed:
            s.append(para("Harm not ruled out on: " + ", ".join(harmed) + ".", "warn"))
    rep.add_table(s, "variants", table)
