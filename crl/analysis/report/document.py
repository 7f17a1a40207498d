"""A self-contained HTML report (inline CSS, PNGs as base64 data URIs, no scripts, no external assets) and
the same tables/plots sent to wandb."""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:72em;
color:#222;line-height:1.4}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
.tw{max-width:100%;overflow-x:auto;margin:.6em 0}
table{border-collapse:collapse;font-size:.85em}th,td{border:1px solid #ddd;padding:.25em .5em;
text-align:right}th{background:#f3f3f3}td.t{text-align:left;min-width:12em;max-width:36em;overflow-wrap:anywhere}
img{max-width:100%;margin:.4em 0}
.note{color:#555;font-size:.9em}.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:.4em .8em}
"""


def _fmt(v: Any) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


# Link targets a table cell may carry: web pages, and the pages the report writes next to report.html
# (cards.html#feature-12, feature_index.html); nothing else (no javascript:, no file paths).
_LOCAL_PAGE = re.compile(r"^[\w.-]+\.html(#[\w-]+)?$")


def _linkable(url: Any) -> bool:
    return isinstance(url, str) and (url.startswith(("https://", "http://")) or bool(_LOCAL_PAGE.match(url)))


def table_html(
    df: pd.DataFrame,
    columns: list[str] | None = None,
    links: dict[str, str] | None = None,
    max_rows: int | None = None,
    headers: dict[str, str] | None = None,
    tips: dict[str, str] | None = None,
) -> str:
    """An HTML table. `links` maps a shown column to a column holding its URL (rendered as <a href>);
    `headers` renames shown columns, `tips` gives a column header a tooltip.

    It sits in a `.tw` box that scrolls sideways, so a wide table never runs off the page; long text cells wrap.
    Cells are read column by column, so an integer column stays integer (a row-wise read would turn a
    feature id 1398 into the float 1.4e+03 next to float columns)."""
    links, headers, tips = links or {}, headers or {}, tips or {}
    cols = [c for c in (columns or list(df.columns)) if c in df.columns]
    body = df if max_rows is None else df.head(max_rows)

    def th(c: str) -> str:
        tip = f' title="{html.escape(tips[c], quote=True)}"' if c in tips else ""
        return f"<th{tip}>{html.escape(str(headers.get(c, c)))}</th>"

    data = {c: body[c].tolist() for c in {*cols, *(u for c, u in links.items() if c in cols and u in body)}}
    rows = []
    for i in range(len(body)):
        cells = []
        for c in cols:
            v = data[c][i]
            text = html.escape(_fmt(v))
            url = data[links[c]][i] if c in links and links[c] in data else None
            if text and _linkable(url):
                text = f'<a href="{html.escape(url, quote=True)}">{text}</a>'
            cls = "" if _numeric(v) else ' class="t"'
            cells.append(f"<td{cls}>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(th(c) for c in cols)
    return f'<div class="tw"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def image_html(path: str | Path, alt: str = "") -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt, quote=True)}" src="data:image/png;base64,{data}">'


def para(text: str, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<p{attr}>{html.escape(text)}</p>"


@dataclass
class Report:
    """Sections of raw HTML fragments, plus the tables and images that went into them (for wandb)."""

    title: str
    sections: list[tuple[str, list[str]]] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    images: dict[str, Path] = field(default_factory=dict)

    def section(self, title: str) -> list[str]:
        parts: list[str] = []
        self.sections.append((title, parts))
        return parts

    def add_table(self, parts: list[str], key: str, df: pd.DataFrame, **kw: Any) -> None:
        self.tables[key] = df
        parts.append(table_html(df, **kw))

    def add_image(self, parts: list[str], key: str, path: Path) -> None:
        self.images[key] = path
        parts.append(image_html(path, key))

    def html(self) -> str:
        toc = "".join(f'<li><a href="#s{i}">{html.escape(t)}</a></li>' for i, (t, _) in enumerate(self.sections))
        body = "".join(
            f'<h2 id="s{i}">{html.escape(t)}</h2>' + "".join(parts) for i, (t, parts) in enumerate(self.sections)
        )
        return (
            f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(self.title)}</title>'
            f"<style>{_CSS}</style></head><body><h1>{html.escape(self.title)}</h1><ul>{toc}</ul>{body}"
            "</body></html>"
        )

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.html(), encoding="utf-8")
        return path


def _wandb_frame(df: pd.DataFrame) -> pd.DataFrame:
    # wandb.Table needs one type per column: objects (lists, None, mixed) become strings.
    out = df.copy()
    for c in out.columns:
        if isinstance(out[c].dtype, pd.Int64Dtype):  # nullable ids (a feature column with gaps): ints and None
            out[c] = pd.Series([None if pd.isna(v) else int(v) for v in out[c]], index=out.index, dtype=object)
        elif out[c].dtype == object:
            out[c] = out[c].map(lambda v: "" if v is None else str(v))
    return out


def log_to_wandb(run: Any | None, report: Report, prefix: str = "analysis") -> None:
    """Send the report's tables (wandb.Table) and plots (wandb.Image) to a wandb run; no-op for None."""
    if run is None:
        return
    import wandb

    payload: dict[str, Any] = {}
    for key, df in report.tables.items():
        payload[f"{prefix}/{key}"] = wandb.Table(dataframe=_wandb_frame(df))
    for key, path in report.images.items():
        payload[f"{prefix}/{key}"] = wandb.Image(str(path))
    run.log(payload)
