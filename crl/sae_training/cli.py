"""`crl sae build` and `crl sae info` (Hydra apps; configs conf/sae_build.yaml and conf/sae_info.yaml).

    crl sae build                      # train (or reuse) the default SAE, print its metrics as JSON
    crl sae build force=true build.k=64
    crl sae info                       # one JSON object on stdout: quality metrics and build facts

Progress bars and logs go to stderr; stdout carries only the JSON object.
"""

from __future__ import annotations

import contextlib
import json
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from crl.backends.model import ModelConfig, load_model
from crl.errors import CRLError, exit_on_error
from crl.paths import CONF_DIR  # absolute: a relative config_path is resolved as a Python package

# Keys shown first in the JSON (the acceptance metrics), then the rest in their stored order.
_FIRST = (
    "explained_variance",
    "l0",
    "dead_fraction",
    "ce_loss_increase",
    "layer",
    "hook_name",
    "d_in",
    "d_sae",
    "training_tokens",
    "build_seconds",
    "path",
)


def _model_config(cfg: DictConfig) -> ModelConfig:
    return ModelConfig(**OmegaConf.to_container(cfg.model, resolve=True))


def _check_source(cfg: DictConfig, command: str) -> int:
    if cfg.sae.source != "default":
        raise CRLError(
            f"`crl sae {command}` works on the SAE that CRL builds; use sae=default (got sae.source={cfg.sae.source})"
        )
    return int(cfg.sae.layer)


def _emit(metrics: dict, path) -> None:
    out = {k: metrics.get(k) for k in _FIRST}
    out["path"] = str(path)
    out.update({k: v for k, v in metrics.items() if k not in out})
    print(json.dumps(out))


@hydra.main(config_path=CONF_DIR, config_name="sae_build", version_base=None)
@exit_on_error
def build_main(cfg: DictConfig) -> None:
    from crl.sae_training.config import BuildConfig
    from crl.sae_training.train import build_sae

    layer = _check_source(cfg, "build")
    options = OmegaConf.to_container(cfg.build, resolve=True)
    try:
        build = BuildConfig(layer=layer, **options)
    except TypeError as e:
        raise CRLError(f"unknown build option ({e}); see conf/sae_build.yaml for the accepted keys") from None
    # Libraries print progress to stdout now and then; keep stdout for the final JSON only.
    with contextlib.redirect_stdout(sys.stderr):
        model = load_model(_model_config(cfg))
        build.check(model)
        result = build_sae(model, build, force=bool(cfg.force), progress=True)
        if result.reused:
            print(f"crl: reusing the SAE at {result.path} (force=true rebuilds it)", file=sys.stderr)
    _emit(result.metrics, result.path)


@hydra.main(config_path=CONF_DIR, config_name="sae_info", version_base=None)
@exit_on_error
def info_main(cfg: DictConfig) -> None:
    from crl.backends.sae_store import METRICS_FILE, is_built, model_cache_name, sae_dir
    from crl.sae_training.quality import evaluate_dir

    layer = _check_source(cfg, "info")
    model_cfg = _model_config(cfg)
    path = sae_dir(model_cache_name(model_cfg), layer)
    if not is_built(path):
        raise CRLError(
            f"the SAE for layer {layer} of {model_cache_name(model_cfg)} is not built (nothing at {path}); "
            f"run `crl sae build sae.layer={layer}` first"
        )
    try:
        metrics = json.loads((path / METRICS_FILE).read_text())
    except (OSError, ValueError):
        with contextlib.redirect_stdout(sys.stderr):
            metrics = evaluate_dir(load_model(model_cfg), path, progress=True, write=True)
    _emit(metrics, path)
