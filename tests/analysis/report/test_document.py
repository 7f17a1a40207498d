"""The HTML document and its wandb copy (crl.analysis.report.document)."""

from __future__ import annotations

import pandas as pd

from crl.analysis.offline.features import feature_usage
from crl.analysis.report import plots
from crl.analysis.report.document import Report, log_to_wandb, table_html


def test_table_html_escapes_cells_and_only_links_urls():
    df = pd.DataFrame({"label": ["<b>x</b>", "y"], "url": ["javascript:alert(1)", "https://www.neuronpedia.org/a/1"]})
    out = table_html(df, columns=["label"], links={"label": "url"})
    assert "&lt;b&gt;" in out and "javascript" not in out and 'href="https://www.neuronpedia.org/a/1"' in out


def test_wandb_logging_runs_with_a_disabled_run(run, tmp_path):
    import wandb

    rep = Report("t")
    part = rep.section("s")
    rep.add_table(part, "usage", feature_usage(run.steps_of("eval:test"), run.episodes_of("eval:test"), "np/x"))
    rep.add_image(part, "png", plots.calibration_curve(pd.DataFrame(), tmp_path / "x.png"))
    log_to_wandb(None, rep)  # no logger: nothing happens
    wb = wandb.init(mode="disabled")
    try:
        log_to_wandb(wb, rep)
    finally:
        wb.finish()
