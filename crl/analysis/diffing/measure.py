"""The first pass: base and tuned teacher-forced on the same task prompts and on unrelated control text.

At every task prompt's decision position it reads, for both models, the residual at the SAE's hook, its SAE code, the
next-token logits, and on the base model the gradient of the answer margin (gold option's logit minus the best other
option's) with respect to that residual. It also scores the patch ceilings (`crl.analysis.diffing.causal`): the tuned
model with the base model's residual at the hook, at the decision position only (`patch_last`) and at every position
(`patch_all`). The prompt batches (their prefix caches) are kept for the interventions of the second pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from crl.analysis.diffing.forward import (
    ControlPass,
    Options,
    PrefixBatch,
    control_pass,
    encode,
    next_token_kl,
)

if TYPE_CHECKING:
    from crl.backends.model import FrozenLM
    from crl.backends.sae import LoadedSAE


@dataclass
class Chunk:
    """One batch of task prompts in both models (prefix caches), for the second pass."""

    rows: slice
    base: PrefixBatch
    tuned: PrefixBatch


@dataclass
class Measured:
    """Everything the first pass reads (module docstring). Arrays are indexed by prompt."""

    h_base: np.ndarray  # (n, d_model) residual at the decision position
    h_tuned: np.ndarray
    a_base: np.ndarray  # (n, d_sae) SAE code of h_base
    a_tuned: np.ndarray
    recon_mse: dict[str, float]  # mean ||h - h_hat||^2 per token: task_base, task_tuned, control_base, control_tuned
    ref_var: float  # mean ||h - mean h||^2 over the base model's control tokens (the variance EV is relative to)
    kl_task: np.ndarray  # (n,) next-token KL(base || tuned) at the decision position
    control: ControlPass
    a_control_base: np.ndarray  # (tokens, d_sae)
    a_control_tuned: np.ndarray
    options: Options | None = None
    option_logits: dict[str, np.ndarray] = field(default_factory=dict)  # base, tuned, patch_last, patch_all
    grad: np.ndarray | None = None  # (n, d_model) d margin / d residual at the decision, base model
    chunks: list[Chunk] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.h_base)

    def explained_variance(self, key: str) -> float:
        """1 - mean ||h - h_hat||^2 / `ref_var` for one set of residuals (task_base, control_tuned, ...). One reference
        variance for all four, that of unrelated text in the base model: the decision positions of a task are all the
        same token (a chat template's last), so their own variance says nothing about how well the SAE reads them."""
        return float(1.0 - self.recon_mse[key] / self.ref_var) if self.ref_var > 0 else float("nan")


def _encode(sae: LoadedSAE, h: torch.Tensor) -> tuple[np.ndarray, float, float]:
    """(SAE code, mean squared reconstruction error per row, mean squared deviation from the mean) of residuals h."""
    x = h.to(sae.sae.W_dec.device, sae.sae.W_dec.dtype)
    with torch.no_grad():
        code = sae.encode(x)
        recon = sae.sae.decode(code)
    err = float(((x - recon) ** 2).sum(-1).mean())
    var = float(((x - x.mean(0, keepdim=True)) ** 2).sum(-1).mean())
    return code.float().cpu().numpy(), err, var


def measure(
    base: FrozenLM,
    tuned: FrozenLM,
    sae: LoadedSAE,
    texts: list[str],
    special: bool,
    options: Options | None,
    control: list[list[int]],
    chunk_size: int = 64,
    progress: bool = False,
) -> Measured:
    """The first pass over `texts` (the env's step-0 prompts) and the `control` token sequences; `progress`: plain
    progress lines on stderr."""
    from crl.progress import Progress

    hook = sae.hook_name
    bar = Progress("[crl] rl-compare: base and tuned on the task prompts", len(texts), enabled=progress)
    hb, ht, kl, chunks = [], [], [], []
    logits: dict[str, list[np.ndarray]] = {"base": [], "tuned": [], "patch_last": [], "patch_all": []}
    grads = []
    for start in range(0, len(texts), chunk_size):
        rows = slice(start, min(start + chunk_size, len(texts)))
        ids, mask, pos = encode(base, texts[rows], special)
        b = PrefixBatch(base, hook, ids, mask, pos, keep_prefix=True)
        t = PrefixBatch(tuned, hook, ids.to(tuned.device), mask.to(tuned.device), pos.to(tuned.device))
        opts = options.take(rows) if options is not None else None
        rb = b.last(grad=opts is not None)
        rt = t.last()
        hb.append(rb.resid.float().cpu())
        ht.append(rt.resid.float().cpu())
        kl.append(next_token_kl(rb.logits, rt.logits.to(rb.logits.device)))
        if opts is not None:
            ob = opts.logits(rb.logits)
            m = _margin_tensor(rb.logits, opts)
            (g,) = torch.autograd.grad(m.sum(), rb.leaf)
            grads.append(g.float().cpu().numpy())
            logits["base"].append(ob)
            logits["tuned"].append(opts.logits(rt.logits))
            logits["patch_last"].append(opts.logits(t.last(replace=rb.resid).logits))
            patched = PrefixBatch(
                tuned,
                hook,
                ids.to(tuned.device),
                mask.to(tuned.device),
                pos.to(tuned.device),
                patch=b.prefix_resid,
            )
            logits["patch_all"].append(opts.logits(patched.last(replace=rb.resid).logits))
            del patched
        b.prefix_resid = None  # only the patch needed it
        chunks.append(Chunk(rows, b, t))
        bar.update(rows.stop - rows.start)
    bar.close()
    h_base, h_tuned = torch.cat(hb), torch.cat(ht)
    err = {}
    a_base, err["task_base"], _ = _encode(sae, h_base)
    a_tuned, err["task_tuned"], _ = _encode(sae, h_tuned)
    ctrl = control_pass(base, tuned, hook, control)
    ac_base, err["control_base"], ref_var = _encode(sae, ctrl.h_base)
    ac_tuned, err["control_tuned"], _ = _encode(sae, ctrl.h_tuned)
    out = Measured(
        h_base.numpy().astype(np.float64),
        h_tuned.numpy().astype(np.float64),
        a_base.astype(np.float64),
        a_tuned.astype(np.float64),
        err,
        ref_var,
        np.concatenate(kl),
        ctrl,
        ac_base.astype(np.float64),
        ac_tuned.astype(np.float64),
        options,
        chunks=chunks,
    )
    if options is not None:
        out.option_logits = {k: np.concatenate(v) for k, v in logits.items()}
        out.grad = np.concatenate(grads).astype(np.float64)
    return out


def _margin_tensor(logits: torch.Tensor, options: Options) -> torch.Tensor:
    """The answer margin per prompt as a differentiable tensor (`forward.margins` on torch)."""
    ids = torch.as_tensor(options.ids, device=logits.device)
    got = logits.gather(1, ids.clamp_min(0)).masked_fill(ids < 0, float("-inf"))
    gold = torch.as_tensor(options.gold, device=logits.device)
    gold_logit = got.gather(1, gold[:, None])[:, 0]
    others = got.scatter(1, gold[:, None], float("-inf"))
    return gold_logit - others.max(dim=1).values
