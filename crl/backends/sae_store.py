"""Where CRL's own SAEs live, and what an SAE directory holds.

Two places, for a model and layer:

- shipped: ``crl/saes/<model>/layer<L>/``, inside the package (a wheel carries it): the default SAEs everyone
  shares, so a feature id means the same feature for every user. Written by `crl sae export`
  (crl/sae_training/export.py): fp16 weights, sae-lens' ``cfg.json``, CRL's build record and metrics, and
  ``crl_identity.json`` (the hash of the decoder every loader checks and reports).
- built: ``$CRL_CACHE/saes/<model>/layer<L>/``, what `crl sae build` trains: sae-lens' own files (``cfg.json``,
  ``sae_weights.safetensors``) plus CRL's build record, quality metrics and held-out rows.

`sae=default` reads the shipped SAE of a layer when there is one, else the built one (`default_sae_dir`).
Loading (`crl.backends.sae`) and training (`crl.sae_training`) both read this; it imports neither, so loading
never reaches into training.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Literal

from crl.config import DEFAULT_LAYER, DEFAULT_MODEL_NAME, ModelConfig
from crl.paths import cache_dir

SAE_CONFIG_FILE = "cfg.json"  # written by sae-lens; its presence marks a finished SAE
BUILD_FILE = "crl_build.json"  # build config, corpus composition (and what it held out), timings
METRICS_FILE = "crl_metrics.json"  # quality metrics on held-out text (see crl/sae_training/quality.py)
EVAL_TOKENS_FILE = "crl_eval_tokens.safetensors"  # the held-out rows, so `crl sae info` can recompute exactly
IDENTITY_FILE = "crl_identity.json"  # shipped SAEs: the decoder hash that names the SAE (see LoadedSAE.identity)

# The shipped SAEs, package data next to the code (pyproject.toml's package-data carries them into a wheel).
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "saes"

Kind = Literal["shipped", "built"]


def model_cache_name(model_cfg: ModelConfig) -> str:
    """The name `load_model` gives a model (mirrors it), without loading the model."""
    if model_cfg.source == "default":
        return model_cfg.name or DEFAULT_MODEL_NAME
    if model_cfg.source == "tiny":
        return f"tiny-{model_cfg.name}-{model_cfg.n_layers}x{model_cfg.d_model}-s{model_cfg.seed}"
    return model_cfg.name


def _safe(model_name: str) -> str:
    return model_name.strip("/").replace("/", "__")


def sae_dir(model_name: str, layer: int) -> Path:
    """Where the SAE built by CRL for this model and layer lives (it may not exist yet)."""
    return cache_dir() / "saes" / _safe(model_name) / f"layer{layer}"


def shipped_sae_dir(model_name: str, layer: int, root: Path | None = None) -> Path:
    """Where the shipped SAE for this model and layer lives (it may not exist)."""
    return Path(root if root is not None else SHIPPED_DIR) / _safe(model_name) / f"layer{layer}"


def find_sae(model_name: str, layer: int) -> tuple[Path, Kind | None]:
    """The SAE CRL uses for this model and layer: the shipped one when present, else the built one.
    The kind is None when neither exists (the path is then where a build would go)."""
    shipped = shipped_sae_dir(model_name, layer)
    if is_built(shipped):
        return shipped, "shipped"
    built = sae_dir(model_name, layer)
    return built, "built" if is_built(built) else None


def default_sae_dir(layer: int = DEFAULT_LAYER) -> Path:
    """Directory of the default SAE (offline default model) for `layer`: the shipped one when present, else
    the one `crl sae build` writes (which may not exist yet)."""
    return find_sae(DEFAULT_MODEL_NAME, layer)[0]


def shipped_layers(model_name: str = DEFAULT_MODEL_NAME) -> list[int]:
    """The layers with a shipped SAE for this model."""
    root = SHIPPED_DIR / _safe(model_name)
    if not root.is_dir():
        return []
    return sorted(int(p.name[5:]) for p in root.glob("layer*") if p.name[5:].isdigit() and is_built(p))


def is_built(path: Path) -> bool:
    """Whether `path` holds a finished SAE (builds and exports are renamed into place only once complete)."""
    return (Path(path) / SAE_CONFIG_FILE).exists()


def install_dir(tmp: Path, dst: Path) -> None:
    """Move a finished SAE directory `tmp` into place at `dst` (a build or an export). An existing `dst` is moved
    aside only once the new one is complete, so a reader never finds a half-written SAE."""
    if dst.exists():
        old = dst.with_name(f"{dst.name}.old-{os.getpid()}")
        dst.rename(old)
        tmp.rename(dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(dst)
