"""Backends: the frozen language model, the hook point on its residual stream, the SAE, and where built SAEs live."""

from crl.backends.hooks import HookPoint, residual_hook, resolve_hook
from crl.backends.model import FrozenLM, load_model
from crl.backends.sae import LoadedSAE, load_sae

__all__ = [
    "FrozenLM",
    "HookPoint",
    "LoadedSAE",
    "load_model",
    "load_sae",
    "resolve_hook",
    "residual_hook",
]
