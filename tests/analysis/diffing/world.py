"""The diffing tests' world: a tiny random model, the planted task's prompts, hand-built SAEs, and "tuned" copies of
the model whose weight change is known: a bias added to one layer's MLP output (every position gets the same
vector), so the change at the SAE's layer is known by construction."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import torch

from crl.analysis.diffing.diff import DiffConfig, control_sequences
from crl.analysis.diffing.forward import PrefixBatch, encode, task_inputs
from crl.analysis.diffing.measure import _margin_tensor
from crl.backends.hooks import HookPoint
from crl.backends.model import FrozenLM, tiny_model
from crl.backends.sae import LoadedSAE, sae_from_decoder
from crl.config import TaskConfig
from crl.envs.tasks.planted import PlantedTask
from crl.logs.schema import NO_STEER

LAYER = 1  # the SAE reads blocks.1.hook_resid_post of a 2-layer model
HOOK = HookPoint(LAYER, "post")
FAST = DiffConfig(ks=[1, 2, 5], n_null=200, n_causal_null=4, n_boot=500, n_perm=500)


def base_model() -> FrozenLM:
    return tiny_model("llama", n_layers=2, d_model=64, seed=0)


def planted_task(n_test: int = 48) -> PlantedTask:
    cfg = TaskConfig(name="planted", n_train=8, n_val=8, n_test=n_test, max_new_tokens=2, chat_template=False)
    return PlantedTask(cfg, n_classes=2)


def with_bias(base: FrozenLM, layer: int, vec: torch.Tensor, name: str = "tuned") -> FrozenLM:
    """A copy of `base` whose layer `layer` adds `vec` to its MLP output at every position."""
    model = copy.deepcopy(base.model)
    model.model.layers[layer].mlp.down_proj.bias = torch.nn.Parameter(vec.detach().clone(), requires_grad=False)
    return FrozenLM(model, base.tokenizer, f"{base.name}-{name}", base.family, base.n_layers, base.d_model)


def untouched(base: FrozenLM) -> FrozenLM:
    """A copy of `base` with the same weights (a fine-tune that changed nothing)."""
    return FrozenLM(copy.deepcopy(base.model), base.tokenizer, base.name, base.family, base.n_layers, base.d_model)


def random_sae(d_sae: int = 32, seed: int = 1) -> LoadedSAE:
    """Random unit decoder rows in the tiny model's 64 dimensions (a ReLU SAE, encoder = decoder transposed)."""
    w = torch.randn(d_sae, 64, generator=torch.Generator().manual_seed(seed))
    return sae_from_decoder(w, HOOK, "test:diffing-random")


def residual_norm(base: FrozenLM, task: PlantedTask, examples: list) -> float:
    """Mean norm of the residual at the SAE's layer at the decision position."""
    texts, special, _ = task_inputs(task, base, examples)
    return float(PrefixBatch(base, HOOK.name, *encode(base, texts, special)).last().resid.norm(dim=-1).mean())


def linear_sae(base: FrozenLM, task: PlantedTask, examples: list, j: int = 5, k: int = 9) -> tuple[LoadedSAE, float]:
    """An SAE of 16 orthonormal decoder rows in which features j and k raise the answer margin equally (to first
    order: they are (g + r)/sqrt 2 and (g - r)/sqrt 2, g the unit mean margin gradient at the decision, r a unit vector
    orthogonal to it) and are always active (large encoder bias), so clamping either one undoes exactly its share.
    Returns the SAE and the mean residual norm at the decision."""
    texts, special, options = task_inputs(task, base, examples)
    out = PrefixBatch(base, HOOK.name, *encode(base, texts, special)).last(grad=True)
    (grad,) = torch.autograd.grad(_margin_tensor(out.logits, options).sum(), out.leaf)
    g = grad.mean(0)
    g = g / g.norm()
    gen = torch.Generator().manual_seed(3)
    r = torch.randn(64, generator=gen)
    r = r - (r @ g) * g
    r = r / r.norm()
    basis = torch.randn(64, 16, generator=gen)
    basis[:, 0], basis[:, 1] = g, r
    q, _ = torch.linalg.qr(basis)  # orthonormal columns; the first two span g and r
    rest = iter(q.T[2:])
    rows = torch.stack([next(rest) if i not in (j, k) else torch.zeros(64) for i in range(16)])
    rows[j], rows[k] = (g + r) / 2**0.5, (g - r) / 2**0.5
    sae = sae_from_decoder(rows, HOOK, "test:diffing-linear")
    norm = float(out.resid.norm(dim=-1).mean())
    with torch.no_grad():
        sae.sae.b_enc[j] = sae.sae.b_enc[k] = 10 * norm
    return sae, norm


def crl_steps(picks: dict[int, int], decisions: int, level: float = 1.0) -> pd.DataFrame:
    """Eval intervention rows of a CRL run that picked feature f picks[f] times (amplified), no steering otherwise."""
    feats = [f for f, n in picks.items() for _ in range(n)]
    feats += [NO_STEER] * (decisions - len(feats))
    coef = [0.0 if f == NO_STEER else level for f in feats]
    return pd.DataFrame({"feature": feats, "coef": coef, "resid_norm": np.ones(len(feats))})


def control(base: FrozenLM) -> list[list[int]]:
    return control_sequences(base.tokenizer)
