"""The HTML document and its wandb copy (crl.analysis.report.document)."""

from __future__ import annotations

import html as html_lib
import json
import re
import shutil
import subprocess

import pandas as pd
import pytest

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


def _wide_report(path):
    rep = Report("wide")
    df = pd.DataFrame({f"column_{i}_with_a_long_name": [i * 1.5, i] for i in range(30)})
    df.insert(0, "completion", ["a long completion " * 12, "https://example.org/" + "x" * 200])
    rep.add_table(rep.section("wide"), "wide", df)
    return rep.write(path)


def test_wide_tables_scroll_inside_their_box_not_the_page(tmp_path):
    html = _wide_report(tmp_path / "r.html").read_text()
    assert '<div class="tw"><table>' in html and "</table></div>" in html
    assert ".tw{max-width:100%;overflow-x:auto" in html


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs headless chromium to lay the page out")
def test_wide_table_does_not_widen_the_page_in_a_browser(tmp_path):
    page = _wide_report(tmp_path / "r.html")
    probe = (
        "<script>window.onload=()=>{const d=document.documentElement,b=document.querySelector('.tw');"
        "document.body.dataset.m=JSON.stringify([d.scrollWidth,d.clientWidth,b.scrollWidth,b.clientWidth])}</script>"
    )
    page.write_text(page.read_text() + probe)
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1000,800"]
    dom = subprocess.run(
        [*cmd, "--virtual-time-budget=3000", "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    page_w, view_w, box_w, box_view = json.loads(html_lib.unescape(re.search(r'data-m="([^"]*)"', dom).group(1)))
    assert page_w <= view_w  # the page itself does not scroll sideways
    assert box_w > box_view  # the table scrolls inside its box


def test_integer_columns_stay_integers_next_to_float_columns():
    # A row-wise read turns every cell of an all-numeric row into a float: feature 1398 showed as 1.4e+03.
    df = pd.DataFrame({"feature": [1398, 1590], "digit": [0.5, 0.25]})
    df["nullable"] = pd.array([7, None], dtype="Int64")
    out = table_html(df)
    assert "<td>1398</td><td>0.5</td><td>7</td>" in out and "<td>1590</td>" in out and "e+03" not in out


def test_table_links_reach_the_report_pages_and_the_web_only():
    df = pd.DataFrame(
        {"feature": [1, 2, 3, 4], "card": ["cards.html#feature-1", "feature_index.html", "../x.html", "file:///x"]}
    )
    out = table_html(
        df, columns=["feature"], links={"feature": "card"}, headers={"feature": "id"}, tips={"feature": "t"}
    )
    assert re.findall(r'href="([^"]*)"', out) == ["cards.html#feature-1", "feature_index.html"]
    assert '<th title="t">id</th>' in out
