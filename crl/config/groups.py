"""One schema per config group (`conf/<group>/*.yaml`) and per nested block of an app config.

Each default is set here, once: a YAML file under conf/ states only what differs from these values. The
defaults are the group's default option (model=smollm2, sae=default, task=arith, masking=adaptive, ...), so the
composed default config of every app equals its schema's defaults (tests/test_config.py checks both).

Adding a setting is one line: `name: type = default` (`param(default, ge=...)` for a range, a `Literal[...]` type
for a mode, `group(Cls)` for a nested block); rules that tie fields together go in the class's `check()`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from crl.config.core import ConfigError, group, param, seed_param

Split = Literal["train", "val", "test"]
CoefMode = Literal["relative", "raw"]
WandbMode = Literal["offline", "online", "disabled"]
GreedyRule = Literal["argmax", "steer_if_likely"]  # policy.greedy_rule

# SmolLM2-135M's layer that the default SAE reads and the policy steers (why layer 6: crl/sae_training/config.py).
DEFAULT_LAYER = 15  # compare: 0.990/1.000/0.995 test at L15 vs 0.912/0.912/0.917 at L6 (3 seeds, GPU)
# The layers of the default model with a shipped SAE (crl/saes/; why these: crl/sae_training/config.py).
SHIPPED_SAE_LAYERS: tuple[int, ...] = (6, 15, 24)
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
    seed: int = seed_param(0)  # source=tiny only: the random weights
    # Tuned weights on top of the model above (crl/backends/model.py): a `crl grpo` run directory (its model/), a
    # LoRA adapter directory (merged into the weights on load; needs peft) or a full-weights directory. null: none.
    weights: str | None = None

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
    device: str | None = None  # null: the model's device (model.device places everything)
    d_sae: int | None = param(None, ge=1)  # planted: dictionary size of the constructed SAE

    def check(self) -> None:
        needs = {"pretrained": ("release", "sae_id"), "disk": ("path",)}.get(self.source, ())
        for name in needs:
            if not getattr(self, name):
                raise ConfigError(name, getattr(self, name), f"sae={self.source} needs sae.{name}", "a string")


@dataclass
class FamilyConfig:
    """A task family (crl/envs/tasks/family.py): the variants of a templated task (compare so far) that train, val and
    test draw from, one variant per problem (seeded), and those held out of them for `crl transfer`.
    enabled=false: the task's one template, its prompts byte-identical to those before families existed."""

    enabled: bool = False
    wordings: list[str] | None = param(None, min_len=1)  # null: every wording of the task
    directions: list[str] | None = param(None, min_len=1)  # compare: larger, smaller; null: every direction
    ranges: list[str] | None = param(None, min_len=1)  # compare: 1digit, 2digit, 3digit; null: the task's default
    # What `crl transfer` holds out (each value one variant); null: every wording / range the splits do not draw from.
    holdout_wordings: list[str] | None = None
    holdout_ranges: list[str] | None = None


@dataclass
class TaskConfig:
    name: str = "arith"  # a registered task (crl/envs/tasks/registry.py)
    data_path: str | None = None  # local jsonl/csv/parquet file or dataset folder, instead of the hub
    n_train: int = param(512, ge=-1)  # caps per split; -1 keeps the whole split
    n_val: int = param(64, ge=-1)
    n_test: int = param(128, ge=-1)
    seed: int = seed_param(0)
    mode: Literal["free", "constrained"] = "free"  # constrained: multiple choice scores one option-letter token
    # The reward PPO trains on (`crl train` only). exact: the verifier's 0/1 verdict. letter_prob: the probability the
    # steered model puts on the gold letter, softmax over the option letters' logits at the answer token (a float in
    # [0, 1] that moves with every action, even where the argmax letter does not); only for constrained multiple choice
    # (task.mode=constrained). It changes the TRAINING reward only: the logs' `correct`, val/test accuracy, model
    # selection, every evaluation and every reported accuracy stay the 0/1 verdict (ppo.advantage=unsteered's reference
    # rollouts, part of the training reward, use letter_prob too).
    reward: Literal["exact", "letter_prob"] = "exact"
    max_new_tokens: int = param(16, ge=1)  # arith: the model restates "a + b = c" (~12 tokens); "\n" stops it
    chat_template: bool = True  # apply the tokenizer's chat template (instruct models)
    subset: str | None = None  # e.g. bbq condition "ambiguous"/"disambiguated"; each task lists its own
    refusal_classifier: str | None = None  # refusal tasks: HF classifier id, loaded only when set
    family: FamilyConfig = group(FamilyConfig)  # variants of a templated task (compare); off by default

    def check(self) -> None:
        for split in ("train", "val", "test"):
            if getattr(self, f"n_{split}") == 0:
                raise ConfigError(f"n_{split}", 0, "an empty split", "-1 (the whole split) or an integer >= 1")
        if self.family.enabled and self.subset is not None:
            why = "task.family picks the variants (compare: family.directions), not task.subset"
            raise ConfigError("subset", self.subset, why, "null with task.family.enabled=true")
        if self.reward == "letter_prob" and self.mode != "constrained":
            why = "the gold letter's probability is read over a multiple-choice task's option letters (constrained)"
            raise ConfigError("reward", self.reward, why, "exact, or letter_prob with task.mode=constrained")


# The task of `crl train` (conf/task/compare.yaml says the same; tests/test_config.py checks that they agree). Why
# compare: SmolLM2 answers "A" to every question (0.460 test) though its residual holds the answer, and CRL takes it to
# 0.99 (3 seeds, layer 15); see crl/envs/tasks/compare.py. Other commands keep TaskConfig's own defaults.
TRAIN_TASK = {"name": "compare", "n_train": 2000, "n_val": 200, "n_test": 400, "mode": "constrained"}


@dataclass
class SteeringConfig:
    layer: int = param(DEFAULT_LAYER, ge=0)  # the SAE must read this layer
    coef: float = 1.0  # relative: the added vector's norm is coef * ||x|| (times the chosen level)
    coef_mode: CoefMode = "relative"  # relative: x + coef*||x||*unit(W_dec[a]);  raw: x + coef*W_dec[a]
    # The magnitude is part of the action: the policy picks a feature and one of these multipliers of coef
    # (e.g. [1, -1]: amplify or suppress). Action id = level * d_sae + feature; the no-op is the last id.
    coef_levels: list[float] = param(factory=lambda: [1.0, -1.0], min_len=1)
    allow_noop: bool = True
    obs_topk: int = param(0, ge=0)  # also report the top-k SAE activations in info["topk_features"/"topk_acts"]
    greedy: bool = True  # the LM decodes greedily; exploration comes from the policy's sampling
    temperature: float = param(1.0, gt=0)
    max_new_tokens: int | None = param(None, ge=1)  # null: the task's own
    use_cache: bool = True  # false only for the naive benchmark reference (re-runs the prefix)
    fixed_length: bool = False  # ignore EOS and stop strings: every episode runs max_new_tokens (benchmarks)
    # Only the first N decisions of an episode may steer (null: every token). Step 0 is the last prompt token,
    # which decides the first answer token; later tokens are forced to "no steering" and are not decisions.
    steer_steps: int | None = param(None, ge=1)


@dataclass
class PolicyConfig:
    hidden: int = param(256, ge=1)
    head: Literal["sae", "dense"] = "sae"  # sae: score features through the SAE decoder geometry (scales to 131k)
    init_scale: float = param(1.0, gt=0)  # initial logit scale s of the sae head
    # Initial "no steering" logit. The other logits start near 0, so with K valid features the no-op starts with
    # probability e^b / (e^b + K): b = ln(64) ~ 4.2 gives one half with masking.top_k=64; 0 is a uniform start.
    noop_init_bias: float = 4.2
    # How the residual is scaled before the MLPs. standardize: per dimension, by the mean and std of the residual at
    # every decision of unsteered rollouts of train prompts (measured once before training, saved with the policy).
    # In SmolLM2 two residual dimensions (247, 507; mean |x| 47 each) hold ~70% of ||x||^2 at layer 6, so layer norm
    # leaves the rest near 0: on compare a supervised MLP on layer-normed L6 residuals stays at chance after
    # 300 Adam steps (lr 3e-4) and reaches 0.96 test on standardized ones. layer: the old layer norm.
    obs_norm: Literal["standardize", "layer"] = "standardize"
    obs_stats_prompts: int = param(256, ge=2)  # train prompts that measure the standardization
    # Abstention (crl/agent/policy.py has the rule and the measurements): no steering at a decision whose residual is
    # unlike the training sample (the residuals that measured the standardization). knn: its mean distance to the
    # abstain_k nearest training residuals (the one to use); zscore: the mean squared z-score (enough for one
    # template, not for a family). The threshold is the abstain_quantile quantile of the distances of unsteered val
    # residuals, fitted before training and saved with the policy. Off by default: with it a run's logs, results and
    # the shipped numbers change (slightly: 0.853 -> 0.845 on compare's own test prompts), and it forgoes every gain
    # off the training distribution along with every harm (compare: a paraphrase's +0.22 with the inverse question's
    # -0.34); `crl transfer fit_abstain=knn` measures both on any run without retraining.
    abstain: Literal["off", "zscore", "knn"] = "off"
    abstain_quantile: float = param(0.99, gt=0, le=1)
    abstain_k: int = param(5, ge=1)
    # From this dictionary width up (Gemma Scope's 16k, 65k, 131k), a decision scores only its valid actions and the
    # softmax runs over those (crl/agent/policy.py): the same distribution up to float rounding, at a cost that
    # follows the masking's candidates instead of d_sae (`crl bench policy` measures both). Narrower dictionaries
    # (the shipped 4608) score every action, bit for bit as the shipped numbers were made.
    compact_min_d_sae: int = param(16384, ge=1)
    # How a greedy policy (val selection, test eval, `crl eval`, `crl transfer`, the analysis replays) picks an action.
    # argmax: the most likely action; with thousands of feature actions the steering mass is spread over them, so
    # the no-op wins unless one feature alone outweighs it (compare family: sampling steered 27-38% of decisions,
    # argmax 0%). steer_if_likely: steer iff P(no-op) < 1/2, then the most likely valid steering action (argmax
    # when there is no no-op, steering.allow_noop=false). `crl eval` / `crl transfer` greedy_rule= override it.
    greedy_rule: GreedyRule = "argmax"

    def check(self) -> None:
        if self.abstain != "off" and self.obs_norm != "standardize":
            why = "abstention measures distances in the standardized residual"
            raise ConfigError("abstain", self.abstain, why, "off, or policy.obs_norm=standardize")


@dataclass
class PPOConfig:
    # Sized for the main job on 2 CPU cores (compare: ~6 min): 12 x 128 one-token episodes.
    total_updates: int = param(12, ge=1)
    episodes_per_update: int = param(128, ge=1)
    num_envs: int = param(64, ge=1)  # lockstep batch size
    learning_rate: float = param(3e-4, ge=0)  # 0: a frozen policy (a control run)
    anneal_lr: bool = False
    gamma: float = param(1.0, ge=0, le=1)
    gae_lambda: float = param(0.95, ge=0, le=1)
    # gae: the critic; group / loo: r minus the mean of the prompt's (other) samples; unsteered: r minus the reward
    # of the prompt's unsteered rollout (crl/agent/ppo.py has the formulas)
    advantage: Literal["gae", "group", "loo", "unsteered"] = "unsteered"
    group_size: int = param(4, ge=1)  # samples per prompt in one update (all modes)
    update_epochs: int = param(4, ge=1)
    num_minibatches: int = param(4, ge=1)
    norm_adv: Literal["standardize", "scale", "none"] = "scale"  # per minibatch; scale: A / std(A)
    clip_coef: float = param(0.2, ge=0)
    clip_vloss: bool = False
    ent_coef: float = param(0.0, ge=0)  # an entropy bonus spreads mass over the features: it erodes "no steering"
    vf_coef: float = param(0.5, ge=0)
    max_grad_norm: float = param(0.5, ge=0)
    target_kl: float | None = param(None, ge=0)
    # The pull towards "no steering" (crl/agent/ppo.py): steer_cost: each steered decision pays reg_coef;
    # kl: reg_coef * KL(pi || no-steer reference smoothed by ref_eps); none.
    regularizer: Literal["none", "steer_cost", "kl"] = "kl"
    reg_coef: float = param(0.02, ge=0)
    ref_eps: float = param(0.05, gt=0, lt=1)

    def check(self) -> None:
        if self.advantage in ("group", "loo") and self.group_size < 2:
            why = f"advantage={self.advantage} compares >= 2 samples per prompt"
            raise ConfigError("group_size", self.group_size, why, ">= 2")


@dataclass
class MaskingConfig:
    """Adaptive Feature Masking; the definition and formula are in crl/agent/masking.py."""

    mode: Literal["none", "active", "adaptive", "fixed", "shortlist"] = "adaptive"
    threshold: float = 0.0  # tau: running-mean activation above which a feature counts as active
    top_k: int = param(16, ge=0)  # K: the current token's top-K features are always candidates (0: off)
    max_share: float = param(0.25, gt=0, le=1)  # rho_0: initial cap on a feature's recent share of selections
    share_decay: float = param(0.8, ge=0, le=1)  # EMA decay of selection shares, per update
    relax_updates: int = param(10, ge=0)  # U: updates over which the cap relaxes to 1
    # mode=fixed only: the SAE feature ids that are the candidates at every decision (threshold, top_k and the share
    # cap do not apply); checked against the SAE's width when the masking is built (crl/agent/masking.py).
    features: list[int] | None = param(None, ge=0)
    # mode=shortlist only (`crl train`; conf/masking/shortlist.yaml): before training, the features are picked from
    # the train prompts (crl/analysis/replay/shortlist.py) among the candidates mode=active offers there (threshold,
    # top_k), and the run is then mode=fixed on them.
    shortlist_k: int = param(4, ge=1)  # at most this many features (fewer when none covers a new prompt)
    # The first train prompts the oracle tries every candidate action on (free-form tasks: the first that fit in the
    # probe's oracle_max_episodes rollouts).
    shortlist_prompts: int = param(64, ge=1)

    def settings(self) -> tuple[str, ...]:
        """The fields this mode reads besides `mode` (the others are ignored, so a resume may differ in them).

        >>> MaskingConfig(mode="fixed", features=[3]).settings()
        ('features',)
        """
        return {
            "none": (),
            "fixed": ("features",),
            "active": ("threshold", "top_k"),
            "adaptive": ("threshold", "top_k", "max_share", "share_decay", "relax_updates"),
            "shortlist": ("threshold", "top_k", "shortlist_k", "shortlist_prompts"),  # the candidates, the cover
        }[self.mode]

    def for_eval(self) -> MaskingConfig:
        """The masking evaluation uses: adaptive's diversity cap is a training device only, so it evaluates as active.

        >>> MaskingConfig(mode="adaptive").for_eval().mode
        'active'
        """
        return dataclasses.replace(self, mode="active") if self.mode == "adaptive" else self

    def check(self) -> None:
        if self.mode in ("active", "adaptive") and self.top_k == 0 and self.threshold < 0:
            raise ConfigError("top_k", 0, "with a negative threshold every feature is active", "top_k >= 1")
        if self.mode == "shortlist" and self.features is not None:
            why = "masking=shortlist picks the features itself, from the train prompts"
            raise ConfigError("features", self.features, why, "null, or masking=fixed to list them yourself")
        if self.mode == "fixed" and not self.features:
            why = "masking=fixed steers only the listed features"
            raise ConfigError("features", self.features, why, "a list of feature ids, e.g. '[1591,652]'")
        if self.mode != "fixed" and self.features is not None:
            why = "masking.features is only used with masking=fixed"
            raise ConfigError("features", self.features, why, "null, or masking=fixed")
        if self.features:
            seen: set[int] = set()
            for f in self.features:
                if f in seen:
                    raise ConfigError("features", self.features, f"feature {f} is listed twice", "distinct ids")
                seen.add(f)


def check_no_shortlist(masking: MaskingConfig, command: str) -> None:
    """masking=shortlist is resolved by `crl train` only; any other command that takes the masking group refuses it."""
    if masking.mode == "shortlist":
        why = f"the feature shortlist is computed by `crl train`, not by `{command}`"
        raise ConfigError("masking.mode", "shortlist", why, "none, active, adaptive or fixed")


def check_some_action(masking: MaskingConfig, allow_noop: bool) -> None:
    """A masking whose candidate set can be empty (no top-K, a threshold nothing reaches) needs the no-op."""
    active = masking.mode in ("active", "adaptive")  # none: every feature; fixed, shortlist: a non-empty list
    if active and masking.top_k == 0 and masking.threshold >= 1e6 and not allow_noop:
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
    # Learning you can see: every eval_every updates (and at update 0, the untrained policy) the greedy policy is
    # evaluated on val_split; select=best_val keeps the best one (ties: the earlier update) for the final eval,
    # select=last the last. patience: stop after this many evals without a better val accuracy (0: never).
    eval_every: int = param(4, ge=0)  # 0: no val evals (select must be last)
    val_split: Split = "val"
    select: Literal["best_val", "last"] = "best_val"
    patience: int = param(0, ge=0)
    min_val_prompts: int = param(20, ge=1)  # fewer val prompts than this cannot select a checkpoint
    analyze: bool = True  # write the analysis report after training
    top_features: int = param(10, ge=0)


# `crl train`'s default budget in episodes (ppo.total_updates x ppo.episodes_per_update = 12 x 128). One GRPO completion
# is one episode, so `crl grpo` gets the same number of rollouts by default.
CRL_EPISODES = PPOConfig.total_updates * PPOConfig.episodes_per_update


def _installed(module: str) -> bool:
    """Whether `module` can be imported here (found without importing it, so validation stays light)."""
    import importlib.util

    return importlib.util.find_spec(module) is not None


@dataclass
class GRPOGroupConfig:
    """`crl grpo` (crl/run/grpo.py): TRL's GRPOTrainer on the model's own weights, on `crl train`'s task and prompts.

    A round samples `batch_size` completions (batch_size / num_generations prompts of the train split, each
    num_generations times) and makes minibatches x num_iterations optimizer steps on them; rollouts / batch_size rounds
    in all. One
    completion is one CRL episode, so the defaults give `crl train`'s budget in its shape: 12 rounds of 128 (12 updates
    of 128 episodes), a greedy val evaluation every 4 rounds. TRL's own defaults assume a GPU (bf16, gradient
    checkpointing, lr 1e-6); these are for a CPU and LoRA."""

    rollouts: int = param(CRL_EPISODES, ge=1)  # completions in all (CRL episodes); a multiple of batch_size
    num_generations: int = param(8, ge=2)  # completions per prompt: the group that GRPO's advantages compare within
    batch_size: int = param(PPOConfig.episodes_per_update, ge=2)  # completions per round; a multiple of num_generations
    micro_batch_size: int | None = param(32, ge=1)  # completions per forward/backward (memory); null: a minibatch
    learning_rate: float = param(1e-4, gt=0)  # for LoRA; full fine-tuning (lora=false) wants about 1e-5
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"
    max_grad_norm: float = param(1.0, gt=0)
    temperature: float = param(1.0, gt=0)  # sampling of training completions (evaluations decode greedily)
    top_p: float = param(1.0, gt=0, le=1)
    # Completion tokens while training: SmolLM2 writes a compare answer as "A) 47" (sampled: 7.3 tokens on average at
    # 8). The time goes to the ~60-token prompt: on 2 shared CPU cores 64 completions took 35 s to generate and 59 s
    # for forward and backward (one thread, load ~7), about 0.7 completions/s.
    max_completion_length: int = param(8, ge=1)
    # Sample only the task's option letters, one token, as CRL's env decodes a constrained task (compare): the same
    # action space as CRL's, with no format to learn. Free text (false) lets format dominate GRPO's signal on compare:
    # well-formed "A) .." answers are what gets rewarded first, so the "A" prior grows until every group ties.
    constrained: bool = False
    beta: float = param(0.0, ge=0)  # KL penalty to the base model; 0 (TRL's default) loads no reference model
    epsilon: float = param(0.2, gt=0)  # PPO-style clipping of the probability ratio
    # Optimizer steps per round = minibatches x num_iterations, as PPO's num_minibatches x update_epochs (crl train:
    # 4 x 4 = 16 a round, 192 in all). TRL's steps_per_generation splits a round's completions into minibatches.
    minibatches: int = param(1, ge=1)
    num_iterations: int = param(1, ge=1)  # passes over a round's completions (TRL's mu)
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = "dapo"  # TRL's token-loss aggregation
    scale_rewards: Literal["group", "batch", "none"] = "group"  # advantage = (r - group mean) / this std
    lora: bool = True  # false: full fine-tuning
    lora_r: int = param(16, ge=1)
    lora_alpha: int = param(32, ge=1)
    lora_dropout: float = param(0.0, ge=0, lt=1)
    lora_target_modules: list[str] | None = param(None, min_len=1)  # null: every linear layer but the output head
    gradient_checkpointing: bool = False  # saves memory at ~20% more time (TRL's default is on)
    # Like `crl train`'s run block: every eval_every rounds (and at round 0, the base model) the greedy model is
    # evaluated on val; select=best_val keeps the best (ties: the earlier round, so the base model wins unless tuning
    # beat it on val), saved as <run>/model/ and tested on eval_split.
    eval_every: int = param(RunConfig.eval_every, ge=0)  # rounds; 0: no val evaluations (select must be last)
    select: Literal["best_val", "last"] = "best_val"
    eval_split: Split = "test"
    # A constrained task (compare) is scored on one option-letter token, GRPO's completions on free text: also evaluate
    # free generation (max_completion_length tokens) before and after, with its well-formed rate.
    free_eval: bool = True
    checkpoint_every: int = param(1, ge=1)  # rounds

    @property
    def rounds(self) -> int:
        return self.rollouts // self.batch_size

    def check(self) -> None:
        g, b = self.num_generations, self.batch_size
        if b % g:
            why = f"not a multiple of grpo.num_generations={g}: each round samples whole groups"
            raise ConfigError("batch_size", b, why, f"a multiple of {g}, e.g. {max(g, b - b % g)} or {b - b % g + g}")
        if b % self.minibatches:
            why = f"does not divide grpo.batch_size={b}"
            raise ConfigError("minibatches", self.minibatches, why, "a divisor of it")
        m = b // self.minibatches  # completions per optimizer step
        if self.micro_batch_size is not None and m % self.micro_batch_size:
            why = f"does not divide the {m} completions of an optimizer step (grpo.batch_size / grpo.minibatches)"
            raise ConfigError("micro_batch_size", self.micro_batch_size, why, f"a divisor of {m}, or null")
        if self.rollouts % b:
            low, high = self.rollouts - self.rollouts % b, self.rollouts - self.rollouts % b + b
            valid = f"a multiple of {b}, e.g. {low or high}" + (f" or {high}" if low else "")
            valid += ", or another batch_size"
            raise ConfigError("rollouts", self.rollouts, f"not a multiple of grpo.batch_size={b}", valid)
        if self.select == "best_val" and self.eval_every == 0:
            raise ConfigError("eval_every", 0, "select=best_val needs val evaluations", ">= 1, or grpo.select=last")
        if self.select == "best_val" and self.eval_split == "val":
            why = "the split that selects the model cannot also be the one that reports it"
            raise ConfigError("eval_split", "val", why, "test or train")
        if self.lora and not _installed("peft"):
            raise ConfigError("lora", True, "LoRA needs peft, which is not installed", "false, or `pip install peft`")


@dataclass
class BuildConfig:
    """Hyper-parameters of CRL's default SAE (`crl sae build`); the reasons are in crl/sae_training/config.py."""

    layer: int = param(DEFAULT_LAYER, ge=0)
    architecture: Literal["topk"] = "topk"  # sae-lens TopKTrainingSAE (fixed L0, auxiliary dead-latent loss)
    d_sae: int = param(3072, ge=1)  # 5.3x d_model of SmolLM2-135M
    k: int = param(32, ge=1)
    # SAE training samples (position 0 excluded). The LM runs once, on training_tokens / epochs distinct tokens,
    # whose activations are cached; the SAE then makes `epochs` shuffled passes over that cache.
    training_tokens: int = param(1_200_000, ge=1)
    epochs: int = param(2, ge=1)
    context_size: int = param(128, ge=8)
    train_batch_size_tokens: int = param(2048, ge=1)
    store_batch_size_prompts: int = param(16, ge=1)  # LM batch (rows) while caching activations
    lr: float = param(1e-3, gt=0)
    lr_warm_up_steps: int = param(20, ge=0)
    lr_decay_fraction: float = param(0.2, ge=0, lt=1)  # linear decay to 0 over this last share of the steps
    aux_loss_coefficient: float = param(1.0, ge=0)  # TopK auxiliary loss: dead latents learn the residual error
    dead_feature_window: int = param(25, ge=1)  # steps without firing before a latent counts as dead
    init_b_dec_to_mean: bool = True  # start b_dec at the activation mean (the residual has a large offset)
    exclude_first_position: bool = True  # the attention sink (see crl/sae_training/config.py)
    eval_tokens: int = param(65_536, ge=1)  # held-out tokens for the metrics
    ce_eval_tokens: int = param(8192, ge=1)  # held-out tokens for the CE evaluation (two full-model passes each)
    seed: int = seed_param(0)
    rho_eval_fraction: float = param(0.2, ge=0, le=1)
    arithmetic_fraction: float = param(0.1, ge=0, le=1)
    prose_packages: list[str] = param(factory=lambda: list(DEFAULT_PROSE_PACKAGES))

    @property
    def distinct_tokens(self) -> int:
        """Tokens the LM runs on (their activations are cached); each is trained on `epochs` times."""
        return -(-self.training_tokens // self.epochs)

    def check(self) -> None:
        """The checks that need no model (the layer and context size against the model: at build time)."""
        if self.k >= self.d_sae:
            raise ConfigError("k", self.k, f"at least d_sae={self.d_sae}", f"1..{self.d_sae - 1}")
        if self.training_tokens < self.train_batch_size_tokens:
            batch = self.train_batch_size_tokens
            raise ConfigError("training_tokens", self.training_tokens, "less than one batch", f">= {batch}")
        if self.distinct_tokens < self.train_batch_size_tokens:
            why = f"training_tokens / epochs is less than one batch ({self.train_batch_size_tokens})"
            raise ConfigError("epochs", self.epochs, why, f"1..{self.training_tokens // self.train_batch_size_tokens}")
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
    seed: int = seed_param(0)


@dataclass
class PolicyBenchConfig:
    """`crl bench policy` (crl/run/bench_policy.py): the policy head and the masking at large dictionary widths."""

    widths: list[int] = param(factory=lambda: [16384, 65536, 131072], ge=1, min_len=1)  # Gemma Scope's 16k/65k/131k
    d_model: int = param(2304, ge=1)  # Gemma-2-2B's residual width
    batch_sizes: list[int] = param(factory=lambda: [16, 64], ge=1, min_len=1)  # decisions per policy call
    steps: int = param(8, ge=1)  # decisions per episode: the masking's running means (its candidates) grow over them
    l0: int = param(64, ge=1)  # active SAE features per token of the synthetic activations (Gemma Scope: ~20-150)
    repeats: int = param(2, ge=1)  # timed episodes per batch size, after one warm-up (the median is reported)
    full_repeats: int = param(2, ge=0)  # timed calls of the every-action path on the same input (0: skip it)
    ppo_episodes: int = param(64, ge=1)  # episodes (of `steps` decisions) in the synthetic buffer of the PPO update
    seed: int = seed_param(0)
