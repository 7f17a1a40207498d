"""The frozen language model: eval mode, gradients off, never trained.

Three sources:
- ``default``: SmolLM2-135M-Instruct from the embedded GGUF (offline), see `offline_default.py`;
- ``hf``: a Hugging Face model id or a local directory (needs a network, or a warm HF cache);
- ``tiny``: a small random model of one family (llama, qwen2, gemma2, gpt2), for tests.

``model.weights`` puts tuned weights on top of any of them (`find_weights`, `apply_weights`): a `crl grpo` run
directory, whose tuned weights are in ``<run>/model/``, or such a directory itself. It holds either a LoRA adapter
(peft's ``adapter_config.json`` + ``adapter_model.safetensors``; merged into the weights on load, so the tuned model
runs as fast as the base) or full weights (``model.safetensors``), and ``crl_weights.json`` names the base model they
were tuned from. The base and a tuned model side by side:

    base = load_model(cfg.model)
    tuned = load_model(dataclasses.replace(cfg.model, weights="runs/<grpo run>"))
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from crl.config import DEFAULT_MODEL_NAME, ModelConfig, validate
from crl.config.device import check_device
from crl.errors import CRLError

# model_type -> family; the family decides where the decoder layers live.
FAMILIES = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "qwen",
    "qwen3": "qwen",
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3_text": "gemma",
    "gpt2": "gpt2",
}


@dataclass
class FrozenLM:
    """A frozen causal LM with the facts the rest of CRL needs about it."""

    model: nn.Module
    tokenizer: object
    name: str
    family: str
    n_layers: int
    d_model: int
    weights: str | None = None  # the tuned weights' directory on top of the base model `name` (model.weights)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def layers(self) -> nn.ModuleList:
        return decoder_layers(self.model)

    @property
    def max_context(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 2048))


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks (`blocks.L` in sae-lens hook names)."""
    for path in ("model.layers", "transformer.h", "model.language_model.layers", "gpt_neox.layers"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if isinstance(obj, nn.ModuleList):
            return obj
    raise CRLError(f"cannot find the decoder layers of {type(model).__name__}; supported: {sorted(FAMILIES)}")


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _wrap(model: nn.Module, tokenizer, name: str) -> FrozenLM:
    cfg = model.config
    model_type = getattr(cfg, "model_type", "?")
    family = FAMILIES.get(model_type)
    if family is None:
        raise CRLError(f"model type '{model_type}' is not supported; supported types: {sorted(FAMILIES)}")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    n_layers = len(decoder_layers(model))
    d_model = int(getattr(cfg, "hidden_size", None) or cfg.n_embd)
    return FrozenLM(_freeze(model), tokenizer, name, family, n_layers, d_model)


def load_model(cfg: ModelConfig) -> FrozenLM:
    """Load a frozen model (with `cfg.weights` on top). Bad settings and ids fail fast with a one-line `CRLError`."""
    validate(cfg, "model.")
    check_device("model.device", cfg.device)  # one line, not torch's error from deep inside .to(device)
    tuned = find_weights(cfg.weights) if cfg.weights else None  # before the base model loads
    lm = _load_base(cfg)
    return apply_weights(lm, tuned) if tuned is not None else lm


def _load_base(cfg: ModelConfig) -> FrozenLM:
    dtype = getattr(torch, cfg.dtype)
    if cfg.source == "tiny":
        lm = tiny_model(cfg.name, n_layers=cfg.n_layers, d_model=cfg.d_model, seed=cfg.seed)
        lm.model.to(device=cfg.device, dtype=dtype)  # initialised in float32, then cast: the same weights, rounded
        return lm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if cfg.source == "default":
        from crl.backends.offline_default import default_model_dir

        path, name = str(default_model_dir()), cfg.name or DEFAULT_MODEL_NAME
    else:  # hf
        path, name = _resolve_hf(cfg.name), cfg.name
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(cfg.device)
    return _wrap(model, tok, name)


# -- tuned weights (model.weights) --------------------------------------------------------------------------------
TUNED_DIR = "model"  # where `crl grpo` saves the tuned weights in its run directory
WEIGHTS_INFO = "crl_weights.json"  # {"kind": "lora" | "full", "base_model": FrozenLM.name, ...}
ADAPTER_CONFIG = "adapter_config.json"  # a LoRA adapter (peft)
FULL_WEIGHTS = "model.safetensors"  # full weights (safetensors.torch.save_model: tied tensors stored once)
PEFT_HINT = "pip install peft"


@dataclass(frozen=True)
class TunedWeights:
    """A directory of tuned weights: what it holds and the base model it was tuned from (None: not recorded)."""

    dir: Path
    kind: str  # "lora" | "full"
    base_model: str | None = None


def find_weights(path: str | Path) -> TunedWeights:
    """What `model.weights` points to: a `crl grpo` run directory (its model/) or a weights directory. Read from
    the directory only (nothing loads); every problem is one line naming the fix."""
    p = Path(path).expanduser()
    if not p.is_dir():
        why = "does not exist" if not p.exists() else "is not a directory"
        raise CRLError(f"model.weights={path} {why}; pass a `crl grpo` run directory or a weights directory")
    if (p / TUNED_DIR).is_dir():
        p = p / TUNED_DIR
    elif (p / "run.json").exists() and not (p / ADAPTER_CONFIG).exists() and not (p / FULL_WEIGHTS).exists():
        raise CRLError(
            f"model.weights={path} is a run directory without {TUNED_DIR}/: the run has not finished "
            f"(`crl grpo resume={path}` finishes it)"
        )
    if (p / ADAPTER_CONFIG).exists():
        kind = "lora"
    elif (p / FULL_WEIGHTS).exists():
        kind = "full"
    else:
        raise CRLError(
            f"model.weights={path} holds neither a LoRA adapter ({ADAPTER_CONFIG}) nor full weights ({FULL_WEIGHTS}); "
            f"pass a `crl grpo` run directory or its {TUNED_DIR}/"
        )
    if kind == "lora" and not has_peft():
        raise CRLError(f"model.weights={path} is a LoRA adapter, which needs peft (not installed): {PEFT_HINT}")
    base = None
    if (p / WEIGHTS_INFO).exists():
        try:
            base = json.loads((p / WEIGHTS_INFO).read_text(encoding="utf-8")).get("base_model")
        except (json.JSONDecodeError, AttributeError):
            raise CRLError(f"{p / WEIGHTS_INFO} is not a JSON object; the weights directory is damaged") from None
    return TunedWeights(p, kind, base)


def has_peft() -> bool:
    """Whether peft can be imported (found without importing it)."""
    return importlib.util.find_spec("peft") is not None


def apply_weights(lm: FrozenLM, tuned: TunedWeights) -> FrozenLM:
    """`lm` with `tuned` on top, frozen: a LoRA adapter merged into the weights (peft's `merge_and_unload`), or full
    weights loaded in place. The name stays the base model's (the SAE and feature cards are the base model's);
    `FrozenLM.weights` says which weights it runs."""
    if tuned.base_model is not None and tuned.base_model != lm.name:
        raise CRLError(
            f"model.weights={tuned.dir} were tuned from {tuned.base_model}, not {lm.name}; load them on their base "
            "model (the run's own model settings)"
        )
    model = lm.model
    if tuned.kind == "lora":
        try:
            from peft import PeftModel
        except ImportError:
            raise CRLError(f"model.weights={tuned.dir} is a LoRA adapter, which needs peft: {PEFT_HINT}") from None
        try:
            with warnings.catch_warnings():  # transformers' deprecation notes as peft calls it
                warnings.simplefilter("ignore", FutureWarning)
                model = PeftModel.from_pretrained(model, str(tuned.dir)).merge_and_unload()
        except (ValueError, RuntimeError, KeyError) as e:
            raise CRLError(f"the LoRA adapter in {tuned.dir} does not fit {lm.name} ({_first_line(e)})") from None
    else:
        from safetensors.torch import load_model as load_safetensors

        try:
            missing, unexpected = load_safetensors(model, str(tuned.dir / FULL_WEIGHTS), strict=False)
        except RuntimeError as e:  # a shape mismatch
            raise CRLError(f"the weights in {tuned.dir} do not fit {lm.name} ({_first_line(e)})") from None
        if missing or unexpected:
            some = sorted(missing)[:2] or sorted(unexpected)[:2]
            raise CRLError(f"the weights in {tuned.dir} do not fit {lm.name} (missing or unexpected: {some})")
    return dataclasses.replace(lm, model=_freeze(model), weights=str(tuned.dir))


def _first_line(e: BaseException) -> str:
    return next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)


def _resolve_hf(name: str) -> str:
    """A local directory, or a hub id that is cached or reachable. Checked before any weights load."""
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    try:
        return snapshot_download(
            name, local_files_only=offline, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]
        )
    except Exception as e:  # noqa: BLE001 - hub errors come in many types; all mean "not loadable"
        raise CRLError(
            f"model '{name}' is neither a local directory nor loadable from the Hugging Face hub "
            f"({type(e).__name__}); offline, use the embedded default (model=smollm2) or a local path"
        ) from None


def tiny_model(family: str = "llama", n_layers: int = 2, d_model: int = 64, seed: int = 0) -> FrozenLM:
    """A small random model with the default tokenizer, for tests. Deterministic for a seed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from crl.backends.offline_default import default_tokenizer_dir

    tok = AutoTokenizer.from_pretrained(str(default_tokenizer_dir()))
    vocab = len(tok)
    common = dict(vocab_size=vocab, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    heads = max(1, d_model // 16)
    if family in ("llama", "qwen", "gemma"):
        from transformers import Gemma2Config, LlamaConfig, Qwen2Config

        cls = {"llama": LlamaConfig, "qwen": Qwen2Config, "gemma": Gemma2Config}[family]
        config = cls(
            hidden_size=d_model,
            intermediate_size=2 * d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            head_dim=d_model // heads,
            max_position_embeddings=512,
            tie_word_embeddings=True,
            **common,
        )
    elif family == "gpt2":
        from transformers import GPT2Config

        config = GPT2Config(n_embd=d_model, n_layer=n_layers, n_head=heads, n_positions=512, **common)
    else:
        raise CRLError(f"tiny model family '{family}' is unknown; use llama, qwen, gemma or gpt2")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return _wrap(model, tok, f"tiny-{family}-{n_layers}x{d_model}-s{seed}")
