"""Helpers shared by the analysis tests: fast bootstrap settings, episode tables, PNG and HTML checks."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
from PIL import Image

from crl.analysis.offline.stats import StatsConfig

FAST = StatsConfig(n_boot=400, seed=0)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def episodes(correct_by_seed: dict[int, list[bool]], well_formed: bool | list[bool] = True) -> pd.DataFrame:
    rows = []
    for s, cs in correct_by_seed.items():
        for i, c in enumerate(cs):
            wf = well_formed[i] if isinstance(well_formed, list) else well_formed
            rows.append({"seed": s, "prompt_id": f"p{i}", "correct": c, "well_formed": wf, "reward": float(c)})
    return pd.DataFrame(rows)


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as im:
        im.verify()


def assert_self_contained(html: str) -> None:
    assert "<script" not in html.lower() and "<link" not in html.lower()
    assert not re.search(r"""src\s*=\s*["']?(https?:)?//""", html, re.I)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", html, re.I)  # no CSS imports
    srcs = re.findall(r"""<img[^>]*\ssrc="([^"]*)\"""", html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    for href in re.findall(r'href="([^"]*)"', html):  # in-page, Neuronpedia, or the feature pages beside it
        assert re.match(r"#|https://www\.neuronpedia\.org/|(cards|feature_index)\.html(#feature-\d+)?$", href), href
