"""Train CRL's default SAE with sae-lens's own trainer and cache it under ``$CRL_CACHE/saes``.

`build_sae` runs corpus -> training -> evaluation -> atomic write; `train_sae` runs the sae-lens trainer on
CRL's frozen model. Elsewhere: the hyper-parameters and why their defaults are what they are (`config.py`),
where a built SAE lives and which files it holds (`crl.backends.sae_store`), the quality metrics (`quality.py`).

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
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from crl.backends.hooks import HookPoint
from crl.backends.model import FrozenLM
from crl.backends.sae_store import BUILD_FILE, EVAL_TOKENS_FILE, METRICS_FILE, SAE_CONFIG_FILE, is_built, sae_dir
from crl.config import BuildConfig
from crl.errors import CRLError
from crl.sae_training.config import check_build, corpus_config
from crl.sae_training.corpus import Corpus, build_corpus, corpus_fingerprint
from crl.sae_training.quality import collect_residuals, evaluate_dir


@dataclass
class BuildResult:
    path: Path
    metrics: dict
    reused: bool


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

    check_build(cfg, model)
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
    path = out_dir / SAE_CONFIG_FILE
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
    corpus: Corpus = build_corpus(model.tokenizer, corpus_config(cfg), progress=progress)
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
