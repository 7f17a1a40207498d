"""Train CRL's default SAE with sae-lens's own trainer and cache it under ``$CRL_CACHE/saes``.

`build_sae` runs corpus -> training -> evaluation -> atomic write; `train_sae` trains on CRL's frozen model in
two phases, each printing plain progress lines (`progress.py`):

1. activations: the LM runs once over the training rows, only its layers 0..L (a hook at layer L stops the
   forward), and the residuals at layer L are kept in memory (on the model's device);
2. SAE: sae-lens' `SAETrainer` makes `epochs` passes over that cache, reshuffled every pass.

Elsewhere: the hyper-parameters and why their defaults are what they are (`config.py`), where a built SAE lives
and which files it holds (`crl.backends.sae_store`), the quality metrics (`quality.py`).

Atomicity: the SAE is written to a sibling ``.partial-<pid>`` directory and renamed into place, so a
killed build never leaves a half SAE; an existing SAE is reused unless ``force`` is set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from crl.backends.hooks import HookPoint, residual_hook
from crl.backends.model import FrozenLM
from crl.backends.sae_store import (
    BUILD_FILE,
    EVAL_TOKENS_FILE,
    METRICS_FILE,
    SAE_CONFIG_FILE,
    install_dir,
    is_built,
    sae_dir,
)
from crl.config import BuildConfig
from crl.errors import CRLError
from crl.sae_training.config import check_build, corpus_config
from crl.sae_training.corpus import Corpus, build_corpus, corpus_fingerprint
from crl.sae_training.progress import Progress
from crl.sae_training.quality import evaluate_dir

SAE_WEIGHTS_FILE = "sae_weights.safetensors"  # written by sae-lens' save_inference_model


@dataclass
class BuildResult:
    path: Path
    metrics: dict
    reused: bool


def hf_hook_name(model: FrozenLM, layer: int) -> str:
    """The HF module name of decoder layer `layer` (its output is ``blocks.{layer}.hook_resid_post``)."""
    target = model.layers[layer]
    for name, module in model.model.named_modules():
        if module is target:
            return name
    raise CRLError(f"cannot find the module name of layer {layer} in {model.name}")


def _config_dict(cfg: BuildConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


@contextlib.contextmanager
def _quiet_sae_lens():
    """sae-lens logs an info/warning line per setting and draws its own bar (updated every 100 steps, so in a log it
    looks stuck); keep stderr to our progress lines."""
    import functools

    from sae_lens.training import sae_trainer
    from tqdm.auto import tqdm

    log = logging.getLogger("sae_lens")
    level = log.level
    log.setLevel(logging.ERROR)
    bar = sae_trainer.tqdm
    sae_trainer.tqdm = functools.partial(tqdm, disable=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*To copy construct from a tensor.*")
        try:
            yield
        finally:
            log.setLevel(level)
            sae_trainer.tqdm = bar


class _Stop(Exception):
    """Raised from the hook at layer L: the layers after it never run."""


@torch.no_grad()
def cache_activations(
    model: FrozenLM, rows: torch.Tensor, cfg: BuildConfig, n_tokens: int, progress: bool = True
) -> torch.Tensor:
    """The first `n_tokens` residuals (n_tokens, d_model) at layer `cfg.layer` of the rows, row by row (position
    0 left out when `cfg.exclude_first_position`), float32 on the model's device. Only layers 0..L run."""
    device = model.device
    start = int(cfg.exclude_first_position)
    per_row = rows.shape[1] - start
    if len(rows) * per_row < n_tokens:
        raise CRLError(f"the corpus has {len(rows) * per_row} training tokens, fewer than the {n_tokens} needed")
    out = torch.empty(n_tokens, model.d_model, dtype=torch.float32, device=device)
    filled = 0

    def grab(resid: torch.Tensor) -> None:
        nonlocal filled
        flat = resid[:, start:].reshape(-1, resid.shape[-1])[: n_tokens - filled]
        out[filled : filled + len(flat)] = flat.float()
        filled += len(flat)
        raise _Stop

    batch = cfg.store_batch_size_prompts
    with (
        Progress("activations", n_tokens, "tok", enabled=progress) as bar,
        residual_hook(model.layers, HookPoint(cfg.layer, "post").name, grab),
    ):
        for i in range(0, len(rows), batch):
            if filled >= n_tokens:
                break
            before = filled
            with contextlib.suppress(_Stop):
                model.model(rows[i : i + batch].to(device), use_cache=False)
            bar.update(filled - before)
    return out


class _EpochBatches:
    """sae-lens' data provider: batches of the activation cache, a fresh seeded shuffle each epoch (the epoch's
    last partial batch is skipped); reports the samples it hands out."""

    def __init__(self, acts: torch.Tensor, batch: int, seed: int, bar: Progress):
        self.acts, self.batch, self.bar = acts, batch, bar
        self.gen = torch.Generator().manual_seed(seed)
        self.order = torch.empty(0, dtype=torch.long)
        self.pos = 0

    def __iter__(self) -> _EpochBatches:
        return self

    def __next__(self) -> torch.Tensor:
        if self.pos + self.batch > len(self.order):
            self.order = torch.randperm(len(self.acts), generator=self.gen).to(self.acts.device)
            self.pos = 0
        idx = self.order[self.pos : self.pos + self.batch]
        self.pos += self.batch
        self.bar.update(self.batch)
        return self.acts[idx]


def _gather_topk_sae_class():
    """sae-lens' `TopKTrainingSAE`, decoding by gathering the k active decoder rows instead of a dense product.

    sae-lens multiplies the dense (batch, d_sae) activations, all but k per row zero, by W_dec, and does the same
    for the auxiliary loss of the dead latents: 3 of the 5 large matrix products of a training step, on zeros.
    Gathering the active rows (`F.embedding_bag`) computes the same sums, and the same gradients (only active
    latents receive any; tests/sae_training/test_train.py compares both), for a fraction of the work.
    Saved SAEs are sae-lens' own `topk` architecture: nothing of this class is stored.
    """
    from sae_lens import TopKTrainingSAE

    class GatherTopKTrainingSAE(TopKTrainingSAE):
        _active: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

        def _rows(self, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
            if self.cfg.rescale_acts_by_decoder_norm:
                values = values / self.W_dec.norm(dim=-1)[indices]
            return F.embedding_bag(indices, self.W_dec, per_sample_weights=values, mode="sum")

        def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            sae_in = self.process_sae_in(x)
            hidden_pre = self.hook_sae_acts_pre(sae_in @ self.W_enc + self.b_enc)
            if self.cfg.rescale_acts_by_decoder_norm:
                hidden_pre = hidden_pre * self.W_dec.norm(dim=-1)
            if hidden_pre.ndim != 2:
                feature_acts = self.hook_sae_acts_post(self.activation_fn(hidden_pre))
                return feature_acts, hidden_pre
            values, indices = hidden_pre.topk(self.cfg.k, dim=-1, sorted=False)
            values = values.relu()
            feature_acts = self.hook_sae_acts_post(torch.zeros_like(hidden_pre).scatter(-1, indices, values))
            self._active = (feature_acts, indices, values)
            return feature_acts, hidden_pre

        def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
            active, self._active = self._active, None
            if active is None or active[0] is not feature_acts:  # hooks replaced them, or another caller
                return super().decode(feature_acts)
            out = self.hook_sae_recons(self._rows(active[1], active[2]) + self.b_dec)
            out = self.run_time_activation_norm_fn_out(out)
            return self.reshape_fn_out(out, self.d_head)

        def calculate_topk_aux_loss(self, sae_in, sae_out, hidden_pre, dead_neuron_mask):
            if hidden_pre.ndim != 2 or self.cfg.normalize_activations != "none":
                return super().calculate_topk_aux_loss(sae_in, sae_out, hidden_pre, dead_neuron_mask)
            if dead_neuron_mask is None or (num_dead := int(dead_neuron_mask.sum())) == 0:
                return sae_out.new_tensor(0.0)
            # as sae-lens: the top d_in/2 dead latents reconstruct the live latents' residual error
            residual = (sae_in - sae_out).detach()
            k_aux = sae_in.shape[-1] // 2
            scale = min(num_dead / k_aux, 1.0)
            k_aux = min(k_aux, num_dead)
            dead_pre = torch.where(dead_neuron_mask[None], hidden_pre, -torch.inf)
            values, indices = dead_pre.topk(k_aux, dim=-1, sorted=False)
            recons = self._rows(indices, values)
            return self.cfg.aux_loss_coefficient * scale * (recons - residual).pow(2).sum(dim=-1).mean()

    return GatherTopKTrainingSAE


def train_sae(
    model: FrozenLM,
    train_rows: torch.Tensor,
    cfg: BuildConfig,
    out_dir: Path,
    dataset_name: str = "crl-offline-corpus",
    progress: bool = True,
) -> dict:
    """Cache the layer-L activations of `train_rows`, train a TopK SAE on them with sae-lens' `SAETrainer`, and
    save it in sae-lens format to `out_dir`. Returns the phases' seconds and sizes (for the build record).

    The saved ``cfg.json`` names the hook ``blocks.{L}.hook_resid_post``: the output of decoder layer L.
    """
    from sae_lens import LoggingConfig, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    check_build(cfg, model)
    device = str(model.device)
    t0 = time.perf_counter()
    acts = cache_activations(model, train_rows, cfg, cfg.distinct_tokens, progress=progress)
    t_acts = time.perf_counter() - t0

    torch.manual_seed(cfg.seed)  # the SAE's initial weights
    sae_cfg = TopKTrainingSAEConfig(
        d_in=model.d_model,
        d_sae=cfg.d_sae,
        k=cfg.k,
        aux_loss_coefficient=cfg.aux_loss_coefficient,
        dtype="float32",
        device=device,
    )
    sae = _gather_topk_sae_class()(sae_cfg)
    if cfg.init_b_dec_to_mean:
        with torch.no_grad():
            sae.b_dec.copy_(acts.mean(0))
    steps = cfg.training_tokens // cfg.train_batch_size_tokens
    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * cfg.train_batch_size_tokens,
        train_batch_size_samples=cfg.train_batch_size_tokens,
        lr=cfg.lr,
        lr_end=cfg.lr,  # the constant schedule decays from lr
        lr_warm_up_steps=min(cfg.lr_warm_up_steps, steps // 2),
        lr_decay_steps=int(steps * cfg.lr_decay_fraction),
        device=device,
        dead_feature_window=cfg.dead_feature_window,
        feature_sampling_window=10**9,  # no sparsity log (it is only for wandb)
        logger=LoggingConfig(log_to_wandb=False),
    )
    t1 = time.perf_counter()
    with Progress("SAE training", trainer_cfg.total_training_samples, "samples", enabled=progress) as bar:
        data = _EpochBatches(acts, cfg.train_batch_size_tokens, cfg.seed, bar)
        with _quiet_sae_lens():
            trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=data)
            trainer.fit()
    t_sae = time.perf_counter() - t1
    del acts, data
    meta = sae.cfg.metadata
    meta.hook_name = HookPoint(cfg.layer, "post").name
    meta.hf_hook_name = hf_hook_name(model, cfg.layer)  # the HF module whose output that is, for the record
    meta.model_name = model.name
    meta.dataset_path = dataset_name
    meta.context_size = train_rows.shape[1]
    meta.prepend_bos = True  # every row starts with BOS (see corpus.pack)
    meta.seqpos_slice = [1, None] if cfg.exclude_first_position else [None]
    sae.save_inference_model(out_dir)
    if not (out_dir / SAE_CONFIG_FILE).exists():
        raise CRLError(f"sae-lens wrote no {SAE_CONFIG_FILE} to {out_dir}")
    return {
        "activations_seconds": round(t_acts, 1),
        "sae_seconds": round(t_sae, 1),
        "distinct_tokens": cfg.distinct_tokens,
        "training_samples": trainer_cfg.total_training_samples,
        "steps": steps,
        "device": device,
        "torch_threads": torch.get_num_threads(),
    }


def _remove_stale_partials(out: Path) -> None:
    """Delete what builds killed outright (SIGKILL) left behind; a running build's directory is kept."""
    if not out.parent.is_dir():
        return
    for stale in out.parent.glob(f"{out.name}.partial-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        try:
            os.kill(int(pid), 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(stale, ignore_errors=True)
        except PermissionError:  # alive, owned by someone else
            pass


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def build_sae(
    model: FrozenLM, cfg: BuildConfig, force: bool = False, out_dir: Path | None = None, progress: bool = True
) -> BuildResult:
    """Corpus -> training -> evaluation -> atomic write. Reuses a finished build unless `force`."""
    from safetensors.torch import save_file

    check_build(cfg, model)
    out = Path(out_dir) if out_dir is not None else sae_dir(model.name, cfg.layer)
    requested = _config_dict(cfg)
    if is_built(out) and not force:
        built = (_read_json(out / BUILD_FILE) or {}).get("config", {})
        diff = sorted(k for k in requested if k in built and built[k] != requested[k])
        if diff:
            shown = ", ".join(f"{k}={built[k]!r} (requested {requested[k]!r})" for k in diff[:4])
            raise CRLError(f"the cached SAE at {out} was built with {shown}; pass force=true to rebuild it")
        metrics = _read_json(out / METRICS_FILE) or evaluate_dir(model, out, progress=progress)
        return BuildResult(out, metrics, reused=True)

    start = time.perf_counter()
    if progress:
        print(
            f"crl sae build: {model.name} layer {cfg.layer} on {model.device}: d_sae={cfg.d_sae} k={cfg.k}, "
            f"{cfg.distinct_tokens:,} distinct tokens x {cfg.epochs} epochs",
            file=sys.stderr,
            flush=True,
        )
    corpus: Corpus = build_corpus(model.tokenizer, corpus_config(cfg), progress=progress)
    t_corpus = time.perf_counter() - start
    _remove_stale_partials(out)
    tmp = out.with_name(f"{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        fingerprint = corpus_fingerprint(corpus)
        facts = train_sae(
            model, corpus.train, cfg, tmp, dataset_name=f"crl-offline-corpus:{fingerprint}", progress=progress
        )
        t_train = time.perf_counter() - start - t_corpus
        save_file({"tokens": corpus.eval.contiguous()}, str(tmp / EVAL_TOKENS_FILE))
        record = {
            "config": requested,
            "model": model.name,
            "layer": cfg.layer,
            "hook_name": HookPoint(cfg.layer, "post").name,
            "training_tokens": cfg.training_tokens,
            "training": facts,
            "corpus": {
                "fingerprint": fingerprint,
                "train_tokens": corpus.n_train_tokens,
                "eval_tokens": corpus.n_eval_tokens,
                "sources": corpus.counts,
                "excluded": corpus.excluded,
            },
            "seconds": {"corpus": round(t_corpus, 1), "training": round(t_train, 1)},
        }
        (tmp / BUILD_FILE).write_text(json.dumps(record, indent=1))
        metrics = evaluate_dir(model, tmp, cfg=cfg, progress=progress, write=False)
        record["seconds"]["evaluation"] = round(time.perf_counter() - start - t_corpus - t_train, 1)
        record["build_seconds"] = round(time.perf_counter() - start, 1)
        metrics["build_seconds"] = record["build_seconds"]
        (tmp / BUILD_FILE).write_text(json.dumps(record, indent=1))
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=1))
        install_dir(tmp, out)  # force: the old build is moved aside only once the new one is complete
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    metrics["path"] = str(out)
    return BuildResult(out, metrics, reused=False)
