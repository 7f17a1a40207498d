"""Hook points on the residual stream, named as in sae-lens / TransformerLens.

``blocks.{L}.hook_resid_post`` is the output of decoder layer L (what the next layer reads);
``blocks.{L}.hook_resid_pre`` is the input of decoder layer L. We hook the HF layer module itself,
so the tensor read and written is exactly the one the SAE was trained on. For the last layer,
resid_post is taken *before* the final norm, as in TransformerLens (HF's last `hidden_states` entry
has the norm applied, so we never use `output_hidden_states` for this).

HF module names (``model.layers.6``), as the SAEs that CRL trains through `HookedProxyLM` record, are
accepted and mean resid_post of that layer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from crl.errors import CRLError

_TL_NAME = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")
_HF_NAME = re.compile(r"^(?:model\.layers|transformer\.h|model\.language_model\.layers)\.(\d+)$")

ResidualFn = Callable[[torch.Tensor], "torch.Tensor | None"]


@dataclass(frozen=True)
class HookPoint:
    layer: int
    kind: str  # "pre" | "post"

    @property
    def name(self) -> str:
        return f"blocks.{self.layer}.hook_resid_{self.kind}"

    @property
    def hf_module_name(self) -> str:
        return f"model.layers.{self.layer}"


def parse_hook_name(hook_name: str) -> HookPoint:
    """Parse a residual hook name. Raises `CRLError` naming the accepted forms.

    >>> parse_hook_name("blocks.6.hook_resid_post")
    HookPoint(layer=6, kind='post')
    >>> parse_hook_name("model.layers.3")
    HookPoint(layer=3, kind='post')
    """
    m = _TL_NAME.match(hook_name)
    if m:
        return HookPoint(int(m.group(1)), m.group(2))
    m = _HF_NAME.match(hook_name)
    if m:
        return HookPoint(int(m.group(1)), "post")
    raise CRLError(
        f"hook '{hook_name}' is not a residual-stream hook; use 'blocks.L.hook_resid_post' or "
        "'blocks.L.hook_resid_pre' (or the HF module name 'model.layers.L')"
    )


def resolve_hook(layers: nn.ModuleList, hook_name: str) -> tuple[HookPoint, nn.Module]:
    """The hook point and the decoder-layer module it lives on; checks the layer is in range."""
    point = parse_hook_name(hook_name)
    if not 0 <= point.layer < len(layers):
        raise CRLError(
            f"layer {point.layer} (from hook '{hook_name}') is out of range: the model has "
            f"{len(layers)} layers, so use 0..{len(layers) - 1}"
        )
    return point, layers[point.layer]


@contextmanager
def residual_hook(layers: nn.ModuleList, hook_name: str, fn: ResidualFn) -> Iterator[HookPoint]:
    """Call ``fn(resid)`` on the residual at `hook_name` in every forward; a returned tensor replaces it.

    The hook is always removed on exit, errors included. Layer outputs may be a bare tensor or a tuple.
    """
    point, module = resolve_hook(layers, hook_name)
    if point.kind == "post":

        def post_hook(_mod, _args, output):
            if isinstance(output, torch.Tensor):
                new = fn(output)
                return output if new is None else new
            new = fn(output[0])
            return output if new is None else (new, *output[1:])

        handle = module.register_forward_hook(post_hook)
    else:

        def pre_hook(_mod, args, kwargs):
            if args:
                new = fn(args[0])
                return None if new is None else ((new, *args[1:]), kwargs)
            new = fn(kwargs["hidden_states"])
            return None if new is None else (args, {**kwargs, "hidden_states": new})

        handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        yield point
    finally:
        handle.remove()
