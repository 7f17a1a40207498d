"""Where the SAEs that CRL builds live, and what a built SAE directory holds.

``$CRL_CACHE/saes/<model>/layer<L>/``: sae-lens' own files (``cfg.json``, ``sae_weights.safetensors``) plus
CRL's build record, quality metrics and held-out rows. Loading (`crl.backends.sae`) and training
(`crl.sae_training`) both read this; it imports neither, so loading never reaches into training.
"""

from __future__ import annotations

from pathlib import Path

from crl.config import DEFAULT_LAYER, DEFAULT_MODEL_NAME, ModelConfig
from crl.paths import cache_dir

SAE_CONFIG_FILE = "cfg.json"  # written by sae-lens; its presence marks a finished SAE
BUILD_FILE = "crl_build.json"  # build config, corpus composition, timings
METRICS_FILE = "crl_metrics.json"  # quality metrics on held-out text (see crl/sae_training/quality.py)
EVAL_TOKENS_FILE = "crl_eval_tokens.safetensors"  # the held-out rows, so `crl sae info` can recompute exactly


def model_cache_name(model_cfg: ModelConfig) -> str:
    """The name `load_model` gives a model (mirrors it), without loading the model."""
    if model_cfg.source == "default":
        return model_cfg.name or DEFAULT_MODEL_NAME
    if model_cfg.source == "tiny":
        return f"tiny-{model_cfg.name}-{model_cfg.n_layers}x{model_cfg.d_model}-s{model_cfg.seed}"
    return model_cfg.name


def sae_dir(model_name: str, layer: int) -> Path:
    """Where the SAE trained by CRL for this model and layer lives (it may not exist yet)."""
    safe = model_name.strip("/").replace("/", "__")
    return cache_dir() / "saes" / safe / f"layer{layer}"


def default_sae_dir(layer: int = DEFAULT_LAYER) -> Path:
    """Directory of the default SAE (offline default model) for `layer`; built by `crl sae build`."""
    return sae_dir(DEFAULT_MODEL_NAME, layer)


def is_built(path: Path) -> bool:
    """Whether `path` holds a finished SAE (builds are renamed into place only once complete)."""
    return (Path(path) / SAE_CONFIG_FILE).exists()
