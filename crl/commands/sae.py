"""`crl sae build`, `crl sae info` and `crl sae export` (crl.sae_training trains, measures and exports the SAE).

    crl sae info                       # the shipped SAE of sae.layer (else the built one): metrics, "source"
    crl sae build sae.layer=6          # train (or reuse) the SAE in $CRL_CACHE, print its metrics as JSON
    crl sae build force=true build.k=64
    crl sae build -m sae.layer=6,15,24 # several layers, one after the other
    crl sae export sae.layer=6         # the built SAE -> crl/saes/ (fp16, metrics re-measured, identity hash)

Progress lines and logs go to stderr (`crl sae build 2> build.log`); stdout carries only the JSON object.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from crl.config import SAEBuildConfig, SAEExportConfig, SAEInfoConfig, load
from crl.errors import exit_on_error
from crl.paths import CONF_DIR  # absolute: a relative config_path is resolved as a Python package

# Keys shown first in the JSON (the acceptance metrics), then the rest in their stored order.
_FIRST = (
    "source",
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


def _emit(metrics: dict, path: Path) -> None:
    out = {k: metrics.get(k) for k in _FIRST}
    out["path"] = str(path)
    out.update({k: v for k, v in metrics.items() if k not in out})
    print(json.dumps(out), flush=True)


@hydra.main(config_path=CONF_DIR, config_name="sae_build", version_base=None)
@exit_on_error
def build(raw: DictConfig) -> None:
    from crl.backends.model import load_model
    from crl.sae_training.train import build_sae

    cfg = load(SAEBuildConfig, raw)
    # Libraries print progress to stdout now and then; keep stdout for the final JSON only.
    with contextlib.redirect_stdout(sys.stderr):
        result = build_sae(load_model(cfg.model), cfg.build, force=cfg.force, progress=True)
        if result.reused:
            print(f"crl: reusing the SAE at {result.path} (force=true rebuilds it)", file=sys.stderr)
    _emit({"source": "built", **result.metrics}, result.path)


@hydra.main(config_path=CONF_DIR, config_name="sae_info", version_base=None)
@exit_on_error
def info(raw: DictConfig) -> None:
    from crl.sae_training.quality import built_sae_metrics

    cfg = load(SAEInfoConfig, raw)
    with contextlib.redirect_stdout(sys.stderr):
        metrics, path = built_sae_metrics(cfg.model, cfg.sae.layer, progress=True)
    _emit(metrics, path)


@hydra.main(config_path=CONF_DIR, config_name="sae_export", version_base=None)
@exit_on_error
def export(raw: DictConfig) -> None:
    from crl.sae_training.export import export_built_sae

    cfg = load(SAEExportConfig, raw)
    with contextlib.redirect_stdout(sys.stderr):
        metrics, path = export_built_sae(
            cfg.model, cfg.sae.layer, cfg.root, allow_below_bar=cfg.allow_below_bar, progress=True
        )
    _emit({"source": "shipped", **metrics}, path)
