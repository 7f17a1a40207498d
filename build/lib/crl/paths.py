"""Where CRL caches converted models, built SAEs and data: `$CRL_CACHE`, default `~/.cache/crl`."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    root = Path(os.environ.get("CRL_CACHE", Path.home() / ".cache" / "crl")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def cache_subdir(*parts: str) -> Path:
    path = cache_dir().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


# Hydra's config directory (top-level conf/), absolute so it resolves from any working directory.
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
