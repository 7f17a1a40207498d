"""Quality metrics of a CRL-built SAE, on held-out corpus rows that were never trained on.

Definitions. Tokens are the held-out rows' positions 1..127 (position 0, the BOS attention sink, is
excluded, as in training; see config.py); ``x`` is the residual at the SAE's hook, ``x_hat`` its SAE
reconstruction, and ``f`` the latent activations.

- ``explained_variance`` = 1 - SSE/SST with SSE = sum_t ||x_t - x_hat_t||^2 and SST = sum_t ||x_t - mu||^2,
  where mu is the per-dimension mean of x over the evaluated tokens.
  ``explained_variance_incl_first_position`` is the same over all positions (position 0 included).
- ``l0``: mean number of non-zero latents per token.
- ``dead_fraction``: fraction of the d_sae latents that are zero on every one of the ``eval_tokens``
  evaluated tokens (``dead_latents`` is their count).
- ``ce_loss_increase`` = ``ce_loss_with_sae`` - ``ce_loss_clean``: mean next-token cross-entropy (nats) of
  the full LM when the residual at the hook is replaced by its SAE reconstruction (via
  `crl.backends.hooks.residual_hook`, positions >= 1; position 0 stays clean), minus the clean loss. Both are
  averaged over the predictions made at positions 1..126 of the first ``ce_eval_tokens`` held-out tokens.

The quality bar of a shipped SAE (`QUALITY_BAR`, `below_bar`): explained_variance >= 0.85, 10 <= l0 <= 100,
dead_fraction <= 0.05, ce_loss_increase <= 0.15 nats.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from crl.backends.hooks import residual_hook
from crl.backends.model import FrozenLM, load_model
from crl.backends.sae import LoadedSAE, check_compatible, load_sae
from crl.backends.sae_store import BUILD_FILE, EVAL_TOKENS_FILE, METRICS_FILE, find_sae, model_cache_name
from crl.config import BuildConfig, ModelConfig, SAEConfig
from crl.errors import CRLError
from crl.sae_training.config import corpus_config
from crl.sae_training.corpus import build_corpus
from crl.sae_training.progress import Progress

# metric -> (lowest, highest) allowed for a shipped SAE (None: unbounded)
QUALITY_BAR: dict[str, tuple[float | None, float | None]] = {
    "explained_variance": (0.85, None),
    "l0": (10, 100),
    "dead_fraction": (None, 0.05),
    "ce_loss_increase": (None, 0.15),
}


def below_bar(metrics: dict) -> list[str]:
    """The metrics that miss `QUALITY_BAR`, as readable lines (empty: the SAE meets the bar)."""
    out = []
    for key, (lo, hi) in QUALITY_BAR.items():
        value = metrics.get(key)
        if value is None or (lo is not None and value < lo) or (hi is not None and value > hi):
            want = " and ".join(([f">= {lo}"] if lo is not None else []) + ([f"<= {hi}"] if hi is not None else []))
            out.append(f"{key}={value if value is None else round(value, 4)} (needs {want})")
    return out


class _Stop(Exception):
    """Raised from a hook to skip the layers after it (their output is not needed)."""


@torch.no_grad()
def collect_residuals(
    model: FrozenLM, rows: torch.Tensor, hook_name: str, batch_size: int = 16, progress: bool = False
) -> torch.Tensor:
    """Residuals (n_rows, seq, d_model) at `hook_name`; only the layers up to the hook run."""
    out: list[torch.Tensor] = []

    def grab(resid: torch.Tensor) -> None:
        out.append(resid.detach().float().cpu())
        raise _Stop

    device = model.device
    with (
        Progress("eval: residuals", rows.numel(), "tok", enabled=progress) as bar,
        residual_hook(model.layers, hook_name, grab),
    ):
        for i in range(0, len(rows), batch_size):
            with contextlib.suppress(_Stop):
                model.model(rows[i : i + batch_size].to(device), use_cache=False)
            bar.update(rows[i : i + batch_size].numel())
    return torch.cat(out)


@torch.no_grad()
def reconstruction_metrics(
    sae: LoadedSAE, acts: torch.Tensor, skip_first: bool = True, batch_tokens: int = 4096
) -> dict:
    """Explained variance, L0 and dead latents of `sae` on residuals (n_rows, seq, d)."""
    d = acts.shape[-1]
    flat = (acts[:, 1:] if skip_first else acts).reshape(-1, d)
    ev_main, l0, fired = _stats(sae, flat, batch_tokens)
    ev_all = _stats(sae, acts.reshape(-1, d), batch_tokens)[0] if skip_first else ev_main
    dead = int((~fired).sum())
    return {
        "explained_variance": ev_main,
        "explained_variance_incl_first_position": ev_all,
        "l0": l0,
        "dead_fraction": dead / sae.d_sae,
        "dead_latents": dead,
        "eval_tokens": int(flat.shape[0]),
    }


def _stats(sae: LoadedSAE, x: torch.Tensor, batch: int) -> tuple[float, float, torch.Tensor]:
    mu = x.double().mean(0)
    sse = sst = 0.0
    nonzero = 0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    param = sae.sae.W_dec
    for i in range(0, x.shape[0], batch):
        xb = x[i : i + batch].to(param.device, param.dtype)
        f = sae.sae.encode(xb)
        rec = sae.sae.decode(f)
        sse += float((xb - rec).double().pow(2).sum())
        sst += float((xb.double() - mu.to(xb.device)).pow(2).sum())
        active = f != 0
        nonzero += int(active.sum())
        fired |= active.any(0).cpu()
    return 1.0 - sse / sst, nonzero / x.shape[0], fired


@torch.no_grad()
def ce_losses(
    model: FrozenLM,
    sae: LoadedSAE,
    rows: torch.Tensor,
    skip_first: bool = True,
    batch_size: int = 8,
    progress: bool = False,
) -> tuple[float, float]:
    """(clean CE, CE with the SAE reconstruction spliced in at its hook), see module docstring."""
    start = 1 if skip_first else 0

    def splice(resid: torch.Tensor) -> torch.Tensor:
        rec = sae.sae(resid.to(sae.sae.W_dec.dtype)).to(resid.dtype)
        return torch.cat([resid[:, :start], rec[:, start:]], dim=1)

    totals = [0.0, 0.0]
    count = 0
    device = model.device
    bar = Progress("eval: CE loss (2 full passes)", rows.numel(), "tok", enabled=progress)
    for i in range(0, len(rows), batch_size):
        batch = rows[i : i + batch_size].to(device)
        targets = batch[:, start + 1 :]
        for j, spliced in enumerate((False, True)):
            if spliced:
                with residual_hook(model.layers, sae.hook_name, splice):
                    logits = model.model(batch, use_cache=False).logits
            else:
                logits = model.model(batch, use_cache=False).logits
            pred = logits[:, start:-1].float()
            totals[j] += float(F.cross_entropy(pred.reshape(-1, pred.shape[-1]), targets.reshape(-1), reduction="sum"))
        count += targets.numel()
        bar.update(batch.numel())
    bar.close()
    return totals[0] / count, totals[1] / count


def evaluate(
    model: FrozenLM, sae: LoadedSAE, rows: torch.Tensor, ce_rows: int, skip_first: bool = True, progress: bool = False
) -> dict:
    """All metrics of `sae` on `rows` (held-out token rows); CE on the first `ce_rows` of them."""
    check_compatible(sae, model.d_model, model.n_layers, model.name)
    acts = collect_residuals(model, rows, sae.hook_name, progress=progress)
    metrics = reconstruction_metrics(sae, acts, skip_first)
    clean, spliced = ce_losses(model, sae, rows[: max(1, ce_rows)], skip_first, progress=progress)
    metrics.update(
        ce_loss_clean=clean,
        ce_loss_with_sae=spliced,
        ce_loss_increase=spliced - clean,
        ce_eval_tokens=int(rows[: max(1, ce_rows)].numel()),
    )
    return metrics


def built_sae_metrics(model_cfg: ModelConfig, layer: int, progress: bool = False) -> tuple[dict, Path]:
    """(quality metrics, directory) of CRL's SAE for `layer` of the model: the shipped one when present, else the
    one `crl sae build` made. ``metrics["source"]`` says which ("shipped" or "built"). Metrics missing from a
    built SAE are computed (on its stored held-out rows) and written next to it."""
    name = model_cache_name(model_cfg)
    path, kind = find_sae(name, layer)
    if kind is None:
        raise CRLError(
            f"the SAE for layer {layer} of {name} is not shipped and not built (nothing at {path}); "
            f"run `crl sae build sae.layer={layer}` first"
        )
    try:
        metrics = json.loads((path / METRICS_FILE).read_text())
    except (OSError, ValueError):
        if kind == "shipped":
            raise CRLError(f"the shipped SAE at {path} has no readable {METRICS_FILE}; reinstall crl") from None
        metrics = evaluate_dir(load_model(model_cfg), path, progress=progress, write=True)
    return {"source": kind, **metrics}, path


def evaluate_dir(
    model: FrozenLM,
    path: Path,
    cfg: BuildConfig | None = None,
    progress: bool = False,
    write: bool = True,
    rows: torch.Tensor | None = None,
) -> dict:
    """Metrics of the SAE that `build_sae` wrote to `path`, with its build facts; written next to it. The held-out
    `rows` default to the ones stored with the SAE, else the (deterministic) corpus's held-out split."""
    from safetensors.torch import load_file

    path = Path(path)
    record = json.loads((path / BUILD_FILE).read_text()) if (path / BUILD_FILE).exists() else {}
    if cfg is None:
        known = set(BuildConfig.__dataclass_fields__)
        cfg = BuildConfig(**{k: v for k, v in record.get("config", {}).items() if k in known})
    if rows is None and (path / EVAL_TOKENS_FILE).exists():
        rows = load_file(str(path / EVAL_TOKENS_FILE))["tokens"]
    elif rows is None:  # the corpus is deterministic: rebuild the same held-out split
        rows = build_corpus(model.tokenizer, corpus_config(cfg), progress=progress).eval
    sae = load_sae(SAEConfig(source="disk", path=str(path), device=str(model.device)))
    ce_rows = max(1, math.ceil(cfg.ce_eval_tokens / rows.shape[1]))
    metrics = evaluate(model, sae, rows, ce_rows, cfg.exclude_first_position, progress=progress)
    metrics.update(
        layer=sae.hook.layer,
        hook_name=sae.hook_name,
        d_in=sae.d_in,
        d_sae=sae.d_sae,
        architecture=str(sae.sae.cfg.architecture()),
        k=getattr(sae.sae.cfg, "k", None),
        model=record.get("model", model.name),
        training_tokens=record.get("training_tokens", cfg.training_tokens),
        build_seconds=record.get("build_seconds"),
    )
    if write:
        (path / METRICS_FILE).write_text(json.dumps(metrics, indent=1))
    return metrics


__all__ = [
    "QUALITY_BAR",
    "below_bar",
    "built_sae_metrics",
    "ce_losses",
    "collect_residuals",
    "evaluate",
    "evaluate_dir",
    "reconstruction_metrics",
]
