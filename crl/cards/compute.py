"""Computing feature cards: one pass of the frozen model over held-out text, then per-feature statistics.

Definitions (position 0 of each row, the BOS attention sink, is left out, as in SAE training):
- density (``frac_nonzero``): share of held-out tokens where the feature is nonzero;
- top examples: the `top_k` largest activations; quantile examples: the nonzero activations split into
  `bins` equal-width intervals of (0, max], `per_bin` drawn from each at random (seeded), so a card shows
  what weak activations look like too, not only the maximum (as SAEDashboard does);
- histogram: counts of the nonzero activations in `hist_bins` equal-width bins of (0, max];
- logit lens: ``W_U (g * W_dec[i])`` where g is the final norm's weight (``1 + w`` for Gemma's RMSNorm); for a
  LayerNorm the direction is centred first. This is the weight TransformerLens folds into ``W_U``; the norm's
  positive 1/rms scale does not change the ranking and no bias belongs to a direction;
- fire together: phi coefficient (Pearson correlation of the 0/1 firing indicators) over held-out tokens;
- decoder neighbours: cosine of decoder rows.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import numpy as np
import torch

from crl.backends.hooks import residual_hook
from crl.backends.model import FrozenLM
from crl.backends.sae import LoadedSAE, check_compatible
from crl.cards.label import label_all
from crl.cards.store import FeatureCards
from crl.sae_training.progress import Progress


class _Stop(Exception):
    """Raised from the hook: the layers after the SAE's are not needed."""


def final_norm_and_unembed(lm: FrozenLM) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(g, W_U, centre): the final norm's effective weight g (d_model), the unembedding (vocab, d_model), and
    whether the norm centres its input (LayerNorm). See the module docstring."""
    model = lm.model
    norm = None
    for path in ("model.norm", "transformer.ln_f", "model.language_model.norm", "gpt_neox.final_layer_norm"):
        obj = model
        with contextlib.suppress(AttributeError):
            for part in path.split("."):
                obj = getattr(obj, part)
            norm = obj
            break
    w_u = model.get_output_embeddings().weight.detach().float()
    if norm is None or getattr(norm, "weight", None) is None:
        return torch.ones(w_u.shape[1]), w_u, False
    g = norm.weight.detach().float()
    if "gemma" in type(norm).__name__.lower():  # Gemma's RMSNorm scales by (1 + weight)
        g = 1.0 + g
    return g, w_u, isinstance(norm, torch.nn.LayerNorm)


@torch.no_grad()
def logit_lens(lm: FrozenLM, directions: torch.Tensor, k: int = 10, chunk: int = 256) -> dict[str, torch.Tensor]:
    """The `k` most promoted and most suppressed tokens of each direction (rows of `directions`)."""
    g, w_u, centre = final_norm_and_unembed(lm)
    w_u = w_u.to(directions.device)
    out: dict[str, list[torch.Tensor]] = {"pos_ids": [], "pos_val": [], "neg_ids": [], "neg_val": []}
    for i in range(0, directions.shape[0], chunk):
        d = directions[i : i + chunk].float()
        if centre:
            d = d - d.mean(-1, keepdim=True)
        logits = (d * g.to(d.device)) @ w_u.T
        top, bot = logits.topk(k, dim=-1), logits.topk(k, dim=-1, largest=False)
        out["pos_ids"].append(top.indices.cpu())
        out["pos_val"].append(top.values.cpu())
        out["neg_ids"].append(bot.indices.cpu())
        out["neg_val"].append(bot.values.cpu())
    return {key: torch.cat(v) for key, v in out.items()}


@torch.no_grad()
def sparse_activations(
    lm: FrozenLM, sae: LoadedSAE, rows: torch.Tensor, batch_rows: int = 16, progress: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flat position, feature, activation) of every nonzero SAE activation on `rows`, position 0 excluded.
    Only the layers up to the SAE's hook run."""
    pos_l, feat_l, val_l = [], [], []
    grabbed: list[torch.Tensor] = []

    def grab(resid: torch.Tensor) -> None:
        grabbed.append(resid.detach())
        raise _Stop

    seq = rows.shape[1]
    with (
        Progress("cards: activations", rows.numel(), "tok", enabled=progress, prefix="crl features") as bar,
        residual_hook(lm.layers, sae.hook_name, grab),
    ):
        for i in range(0, len(rows), batch_rows):
            batch = rows[i : i + batch_rows].to(lm.device)
            grabbed.clear()
            with contextlib.suppress(_Stop):
                lm.model(batch, use_cache=False)
            acts = sae.encode(grabbed[0].reshape(-1, grabbed[0].shape[-1])).float()
            acts = acts.reshape(batch.shape[0], seq, -1)
            acts[:, 0] = 0.0  # BOS sink, not trained on
            r, c, f = acts.nonzero(as_tuple=True)
            pos_l.append(((r + i) * seq + c).cpu().numpy())
            feat_l.append(f.cpu().numpy())
            val_l.append(acts[r, c, f].cpu().numpy())
            bar.update(batch.numel())
    return np.concatenate(pos_l), np.concatenate(feat_l), np.concatenate(val_l).astype(np.float32)


def _cofire(pos: np.ndarray, feat: np.ndarray, n_tok: int, d_sae: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-`k` phi coefficients of the firing indicators, self excluded (-1 / 0 where fewer fire)."""
    from scipy import sparse

    b = sparse.csr_matrix((np.ones(len(pos), np.float32), (pos, feat)), shape=(int(pos.max()) + 1, d_sae))
    both = (b.T @ b).toarray().astype(np.float64)
    n_i = np.diag(both).copy()
    var = n_i * (n_tok - n_i)
    with np.errstate(divide="ignore", invalid="ignore"):
        phi = (n_tok * both - np.outer(n_i, n_i)) / np.sqrt(np.outer(var, var))
    phi[~np.isfinite(phi)] = -np.inf
    np.fill_diagonal(phi, -np.inf)
    ids = np.argsort(-phi, axis=1)[:, :k]
    vals = np.take_along_axis(phi, ids, axis=1)
    ids[~np.isfinite(vals)] = -1
    vals[~np.isfinite(vals)] = 0.0
    return ids, vals


def compute_cards(
    lm: FrozenLM,
    sae: LoadedSAE,
    rows: torch.Tensor,
    text: dict[str, Any],
    top_k: int = 20,
    bins: int = 5,
    per_bin: int = 4,
    hist_bins: int = 20,
    neighbours: int = 5,
    seed: int = 0,
    progress: bool = True,
) -> FeatureCards:
    """Cards for every feature of `sae` from held-out token `rows` (module docstring); `text` says what the
    rows are (recorded on every card)."""
    check_compatible(sae, lm.d_model, lm.n_layers, lm.name)
    t0 = time.perf_counter()
    d_sae, seq = sae.d_sae, rows.shape[1]
    n_tok = int(rows.shape[0] * (seq - 1))
    pos, feat, val = sparse_activations(lm, sae, rows, progress=progress)
    order = np.lexsort((-val, feat))  # by feature, then largest activation first
    pos, feat, val = pos[order], feat[order], val[order]
    starts = np.searchsorted(feat, np.arange(d_sae + 1))
    rng = np.random.default_rng(seed)
    arr = {
        "top_pos": np.full((d_sae, top_k), -1, np.int64),
        "top_val": np.zeros((d_sae, top_k), np.float32),
        "q_pos": np.full((d_sae, bins * per_bin), -1, np.int64),
        "q_val": np.zeros((d_sae, bins * per_bin), np.float32),
        "q_bin": np.full((d_sae, bins * per_bin), -1, np.int64),
        "hist": np.zeros((d_sae, hist_bins), np.int64),
        "density": np.zeros(d_sae, np.float32),
        "max_act": np.zeros(d_sae, np.float32),
        "mean_act": np.zeros(d_sae, np.float32),
    }
    for f in range(d_sae):
        lo, hi = starts[f], starts[f + 1]
        if hi == lo:
            continue
        p, v = pos[lo:hi], val[lo:hi]
        n = min(top_k, hi - lo)
        arr["top_pos"][f, :n], arr["top_val"][f, :n] = p[:n], v[:n]
        top = float(v[0])
        arr["density"][f], arr["max_act"][f], arr["mean_act"][f] = (hi - lo) / n_tok, top, float(v.mean())
        which = np.minimum((v / top * bins).astype(np.int64), bins - 1)
        arr["hist"][f] = np.bincount(
            np.minimum((v / top * hist_bins).astype(np.int64), hist_bins - 1), minlength=hist_bins
        )
        slot = 0
        for b in range(bins):
            idx = np.flatnonzero(which == b)
            for j in np.sort(rng.choice(idx, size=min(per_bin, len(idx)), replace=False)) if len(idx) else []:
                arr["q_pos"][f, slot], arr["q_val"][f, slot], arr["q_bin"][f, slot] = p[j], v[j], b
                slot += 1
    arr["cofire_ids"], arr["cofire_val"] = _cofire(pos, feat, n_tok, d_sae, neighbours)
    dirs = sae.directions(unit=True).float()
    cos = dirs @ dirs.T
    cos.fill_diagonal_(-2.0)
    top_cos = cos.topk(neighbours, dim=-1)
    arr["cos_ids"], arr["cos_val"] = top_cos.indices.cpu().numpy(), top_cos.values.cpu().numpy()
    lens = logit_lens(lm, sae.directions().float())
    for key, value in lens.items():
        arr[f"logit_{key}"] = value.numpy()

    used = set(np.unique(rows.numpy()).tolist()) | set(np.unique(arr["logit_pos_ids"]).tolist())
    used |= set(np.unique(arr["logit_neg_ids"]).tolist())
    vocab = {int(t): lm.tokenizer.decode([int(t)]) for t in sorted(used)}
    meta = {
        "sae_identity": sae.identity,
        "model": lm.name,
        "hook_name": sae.hook_name,
        "layer": sae.hook.layer,
        "d_sae": d_sae,
        "neuronpedia_id": sae.neuronpedia_id,
        "text": {
            **text,
            "n_rows": int(rows.shape[0]),
            "seq": int(seq),
            "n_tokens": n_tok,
            "first_position": "excluded (BOS attention sink)",
        },
        "top_k": top_k,
        "quantile_bins": bins,
        "per_bin": per_bin,
        "hist_bins": hist_bins,
        "label_kind": "heuristic",
        "build_seconds": round(time.perf_counter() - t0, 1),
        "torch_threads": torch.get_num_threads(),
    }
    arr["tokens"] = rows.numpy().astype(np.int64)
    cards = FeatureCards(meta, arr, vocab, [])
    cards.labels = label_all(cards)
    return cards
