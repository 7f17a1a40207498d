"""Whether a device string names a device this host's torch can use, as one `ConfigError` before anything loads.

A schema cannot say this (it depends on the host and on the torch build), so the check runs apart from
`validate`: `crl.cli` (through `compose.check_command`) calls it on the composed config, and the places that load a
model from a config (`crl.backends.model.load_model`, `crl.run.components.build`, a run's saved config) call it
too. `cpu`, the default, is accepted without importing torch, so validating a default config stays light.

    model.device=cuda is invalid: this torch (2.13.0+cpu) is built without CUDA; valid: cpu; for a GPU, ...
"""

from __future__ import annotations

import dataclasses
from typing import Any

from crl.config.core import ConfigError

# The fix for a CPU-only torch, named in the error: the Makefile's TORCH_SPEC picks the torch that `make` installs
# (a CPU wheel by default); `make` installs it once, when it creates .venv.
CUDA_TORCH_HINT = "for a GPU, install a CUDA torch on a GPU host: remove .venv, then make train TORCH_SPEC=torch"


def usable_devices() -> list[str]:
    """The device strings this host's torch can run a model on."""
    import torch

    out = ["cpu"]
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        out += ["cuda", *(f"cuda:{i}" for i in range(n))] if n else []
    if torch.backends.mps.is_available():
        out.append("mps")
    return out


def _no_cuda_build() -> bool:
    import torch

    return torch.version.cuda is None and getattr(torch.version, "hip", None) is None


def check_device(key: str, device: str | None) -> None:
    """Raise a one-line `ConfigError` naming `key` unless `device` (None: decided elsewhere) is usable here."""
    if device is None or device == "cpu":
        return
    import torch

    def bad(why: str, hint: bool = False) -> ConfigError:
        valid = ", ".join(usable_devices())
        return ConfigError(key, device, why, f"{valid}; {CUDA_TORCH_HINT}" if hint else valid)

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        hint = not torch.cuda.is_available() and _no_cuda_build()
        raise bad("not a torch device (such as cpu, cuda, cuda:1, mps)", hint=hint) from None
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            if _no_cuda_build():
                raise bad(f"this torch ({torch.__version__}) is built without CUDA", hint=True)
            raise bad("torch sees no CUDA GPU on this host (see nvidia-smi and CUDA_VISIBLE_DEVICES)")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise bad(f"this host has {n} CUDA GPU{'' if n == 1 else 's'}")
        return
    if dev.type == "mps":
        available = torch.backends.mps.is_available()
    else:
        is_available = getattr(getattr(torch, dev.type, None), "is_available", None)
        available = callable(is_available) and bool(is_available())
    if not available:
        raise bad(f"torch has no usable {dev.type} device on this host")


def check_devices(cfg: Any, prefix: str = "") -> None:
    """`check_device` on every `device` field of a config (nested groups too: model.device, sae.device)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check_devices(value, f"{prefix}{f.name}.")
        elif f.name == "device" and (value is None or isinstance(value, str)):
            check_device(prefix + f.name, value)
