"""Backends: the frozen language model, the hook point on its residual stream, the SAE, and where built SAEs live.

The names below load lazily, so a light submodule (`sae_store`: where SAEs and their cards live) never pays
for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "HookPoint": "crl.backends.hooks",
    "residual_hook": "crl.backends.hooks",
    "resolve_hook": "crl.backends.hooks",
    "FrozenLM": "crl.backends.model",
    "load_model": "crl.backends.model",
    "LoadedSAE": "crl.backends.sae",
    "load_sae": "crl.backends.sae",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'crl.backends' has no attribute {name!r}")
