"""One nested root config per `crl` command (conf/<name>.yaml), and their registration with Hydra.

`register()` stores each group schema as `<group>/base_<group>` and each root as `base_<app>` in Hydra's
ConfigStore; a group file pulls its schema in with `defaults: [base_<group>, _self_]` and an app file with
`defaults: [base_<app>, ...]`, so Hydra types every key at compose time and the YAML holds only what differs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from crl.config.core import SEED_MAX, ConfigError, group, omegaconf_schema, param, seed_param
from crl.config.groups import (
    SHIPPED_SAE_LAYERS,
    TRAIN_TASK,
    BenchConfig,
    BuildConfig,
    GreedyRule,
    GRPOGroupConfig,
    MaskingConfig,
    ModelConfig,
    PolicyBenchConfig,
    PolicyConfig,
    PPOConfig,
    RunConfig,
    SAEConfig,
    Split,
    SteeringConfig,
    TaskConfig,
    WandbConfig,
    check_no_shortlist,
    check_some_action,
)


@dataclass
class TrainConfig:
    """`crl train`."""

    model: ModelConfig = group(ModelConfig)
    sae: SAEConfig = group(SAEConfig)
    task: TaskConfig = group(TaskConfig, **TRAIN_TASK)
    steering: SteeringConfig = group(SteeringConfig)
    policy: PolicyConfig = group(PolicyConfig)
    ppo: PPOConfig = group(PPOConfig)
    masking: MaskingConfig = group(MaskingConfig)
    logger: WandbConfig = group(WandbConfig)
    run: RunConfig = group(RunConfig)
    seed: int = seed_param(0)
    resume: str | None = None  # a run directory to continue from its last checkpoint
    # A curriculum: a finished or checkpointed `crl train` run directory whose trained policy (policy.pt, else its last
    # checkpoint's: what `crl eval` loads) starts this run, with the observation statistics and abstention fit it was
    # trained under (not measured again); the optimizer and masking start fresh. Its model, SAE, steering.layer,
    # coef_levels, allow_noop and policy shape must be this run's; the task may differ (crl/run/init_from.py).
    init_from: str | None = None

    def check(self) -> None:
        check_some_action(self.masking, self.steering.allow_noop)
        if self.init_from is not None and self.resume is not None:
            why = "resume= continues a run with the policy of its checkpoint"
            raise ConfigError("init_from", self.init_from, why, "null with resume=, or a new run without resume=")
        if self.sae.source == "planted" and self.task.name != "planted":
            raise ConfigError("sae.source", "planted", "the planted SAE is built for the planted task", "task=planted")
        if self.task.reward == "letter_prob" and self.steering.max_new_tokens not in (None, 1):
            why = "task.reward=letter_prob scores the one answer token of constrained multiple choice"
            raise ConfigError("steering.max_new_tokens", self.steering.max_new_tokens, why, "null or 1")
        if self.steering.steer_steps is not None and not self.steering.allow_noop:
            why = "later tokens are forced to no steering, which needs the no-op"
            raise ConfigError(
                "steering.steer_steps", self.steering.steer_steps, why, "null, or steering.allow_noop=true"
            )
        if self.policy.abstain != "off" and not self.steering.allow_noop:
            why = "abstaining is choosing no steering, which needs the no-op"
            raise ConfigError("policy.abstain", self.policy.abstain, why, "off, or steering.allow_noop=true")
        if self.run.select == "best_val" and self.run.eval_every == 0:
            why = "select=best_val needs val evaluations"
            raise ConfigError("run.eval_every", 0, why, ">= 1, or run.select=last")
        if self.run.val_split == self.run.eval_split:
            why = "the split that selects the checkpoint cannot also be the one that reports it"
            raise ConfigError("run.val_split", self.run.val_split, why, f"a split other than {self.run.eval_split}")


@dataclass
class GRPOTrainConfig:
    """`crl grpo`: GRPO (TRL) on the model's weights, on `crl train`'s task, splits, prompts and verifier. The model,
    sae, task and steering groups are `crl train`'s, so a GRPO run and a CRL run with the same task and seed see the
    same prompts; the SAE (at steering.layer) only serves CRL's evaluator, which scores the tuned model unsteered."""

    model: ModelConfig = group(ModelConfig)
    sae: SAEConfig = group(SAEConfig)
    task: TaskConfig = group(TaskConfig, **TRAIN_TASK)
    steering: SteeringConfig = group(SteeringConfig)
    grpo: GRPOGroupConfig = group(GRPOGroupConfig)
    logger: WandbConfig = group(WandbConfig)
    seed: int = seed_param(0)
    resume: str | None = None  # a `crl grpo` run directory to continue from its last checkpoint

    def check(self) -> None:
        if self.sae.source == "planted" and self.task.name != "planted":
            raise ConfigError("sae.source", "planted", "the planted SAE is built for the planted task", "task=planted")
        if self.model.weights is not None:
            why = "`crl grpo` tunes the model itself; starting from tuned weights is not supported"
            raise ConfigError("model.weights", self.model.weights, why, "null")
        if self.task.reward != "exact":
            why = "`crl grpo` trains on the verifier's 0/1 reward; task.reward applies to `crl train`"
            raise ConfigError("task.reward", self.task.reward, why, "exact")


@dataclass
class EvalConfig:
    """`crl eval`: greedy re-evaluation of a trained run."""

    run_dir: str | None = None  # a run directory (required)
    split: Split = "test"
    seed: int | None = seed_param(None)  # null: the run's own seed
    greedy_rule: GreedyRule | None = None  # how the greedy policy picks (policy.greedy_rule); null: the run's own


@dataclass
class TransferConfig:
    """`crl transfer`: a trained policy against no steering on variants of its task held out of its training
    (crl/envs/tasks/family.py; the table's definitions: crl/analysis/offline/transfer.py)."""

    run_dir: str | None = None  # a run directory (this, run_dirs or committee)
    # Seeds of one recipe, pooled (crl/analysis/offline/transfer_pool.py): each run whose stored transfer was not made
    # with these settings is transferred first, then <out>/transfer_pooled.{csv,json,png} are written.
    run_dirs: list[str] | None = None
    # A seed committee (crl/agent/committee.py): these runs' greedy policies, scored as one policy that steers only
    # where `quorum` of them pick the same action (all, or a strict majority), else not at all. Writes
    # <out>/transfer_committee.{csv,json} and transfer_committee_prompts.csv.
    committee: list[str] | None = None
    quorum: Literal["all", "majority"] = "all"
    # What the quorum must share: the action at each decision (feature and level), or the parsed answer of each
    # member's own episode (one episode per member and prompt; crl/run/transfer_committee.py). committee= only.
    agree: Literal["action", "answer"] = "action"
    # run_dirs or committee only; null: the runs' common parent folder (committee: its subfolder committee-<quorum>)
    out: str | None = None
    # Variant specs: trained | <axis>:<value>[+<axis>:<value>] (axes wording, direction, range), e.g.
    # [wording:pick,range:3digit]. null: each held-out wording, each held-out range and the inverse question.
    variants: list[str] | None = param(None, min_len=1)
    n: int = param(400, ge=1)  # fresh test-split prompts per variant (fewer where a variant holds fewer)
    seed: int | None = seed_param(None)  # null: the run's own seed (the env's)
    n_boot: int = param(2000, ge=1)  # paired-bootstrap resamples
    boot_seed: int = seed_param(0)
    # A policy trained without policy.abstain: fit the rule now on the run's train and val prompts (policy.abstain
    # names the distance), to report the ablation; off: only the policy as it was trained.
    fit_abstain: Literal["off", "zscore", "knn"] = "off"
    greedy_rule: GreedyRule | None = None  # how the greedy policy picks (policy.greedy_rule); null: the run's own

    def check(self) -> None:
        if self.run_dir and self.run_dirs:
            why = "run_dir= already names the one run to transfer"
            raise ConfigError("run_dirs", self.run_dirs, why, "null with run_dir=, or run_dirs= alone")
        if self.run_dirs is not None and len(self.run_dirs) < 2:
            raise ConfigError("run_dirs", self.run_dirs, "pooling needs two runs or more", "2+ runs; one run: run_dir=")
        if self.committee is not None:
            self._check_committee()
        if self.out is not None and not (self.run_dirs or self.committee):
            why = "out= is where run_dirs= writes the pooled files (and committee= its own); run_dir= writes in the run"
            raise ConfigError("out", self.out, why, "null, or run_dirs= or committee= as well")

    def _check_committee(self) -> None:
        if self.run_dir or self.run_dirs:
            key, value = ("run_dir", self.run_dir) if self.run_dir else ("run_dirs", self.run_dirs)
            why = "committee= names the runs whose policies act together"
            raise ConfigError(key, value, why, f"null with committee=, or {key}= without committee=")
        if len(self.committee or []) < 2:
            why = "a committee needs two runs or more"
            raise ConfigError("committee", self.committee, why, "2+ runs; one run: run_dir=")
        if self.fit_abstain != "off":
            why = "a committee's members act without their own abstention: the committee abstains where they disagree"
            raise ConfigError("fit_abstain", self.fit_abstain, why, "off with committee=")


@dataclass
class SAEBuildConfig:
    """`crl sae build`: the SAE for `sae.layer` of `model` (conf/sae_build.yaml ties build.layer to sae.layer)."""

    model: ModelConfig = group(ModelConfig)
    sae: SAEConfig = group(SAEConfig)
    force: bool = False  # rebuild even when a finished SAE is cached
    build: BuildConfig = group(BuildConfig)

    def check(self) -> None:
        _built_sae_only(self.sae, "build")


@dataclass
class SAEInfoConfig:
    """`crl sae info`: the cached SAE's quality metrics."""

    model: ModelConfig = group(ModelConfig)
    sae: SAEConfig = group(SAEConfig)

    def check(self) -> None:
        _built_sae_only(self.sae, "info")


@dataclass
class SAEExportConfig:
    """`crl sae export`: the built SAE of `sae.layer` -> the shipped folder, fp16, metrics re-measured."""

    model: ModelConfig = group(ModelConfig)
    sae: SAEConfig = group(SAEConfig)
    root: str | None = None  # where <model>/layer<L>/ goes; null: crl/saes in the package (the shipped SAEs)
    allow_below_bar: bool = False  # export even when a re-measured metric misses the quality bar

    def check(self) -> None:
        _built_sae_only(self.sae, "export")


def _built_sae_only(sae: SAEConfig, command: str) -> None:
    if sae.source != "default":
        why = f"`crl sae {command}` works on the SAE that CRL builds"
        raise ConfigError("sae.source", sae.source, why, "default (sae=default)")


@dataclass
class FeaturesConfig:
    """The SAE of the `crl features` commands: the one `crl train` uses with the same `model`, `sae` and
    `steering.layer` (sae=default: the shipped or built SAE of steering.layer)."""

    model: ModelConfig = group(ModelConfig)
    sae: SAEConfig = group(SAEConfig)
    steering: SteeringConfig = group(SteeringConfig)

    def check(self) -> None:
        if self.sae.source == "planted":
            why = "the planted SAE is constructed per planted task; it has no feature cards"
            raise ConfigError("sae.source", "planted", why, "default, pretrained or disk")


@dataclass
class FeaturesShowConfig(FeaturesConfig):
    """`crl features show 1398`: one feature card in the terminal (crl.cli turns the bare id into feature=1398)."""

    feature: int | None = param(None, ge=0)  # the feature id (required)
    run_dir: str | None = None  # also what steering with it did in this run (its analysis/feature_effects.json)
    width: int = param(100, ge=40)  # characters per line


@dataclass
class FeaturesBuildConfig(FeaturesConfig):
    """`crl features build`: compute and cache the cards of the SAE when none are shipped or cached."""

    force: bool = False  # rebuild even when cards exist (into the cache; shipped cards stay in the package)


@dataclass
class FeaturesIndexConfig(FeaturesConfig):
    """`crl features index`: every feature of the SAE in one self-contained HTML page."""

    out: str | None = None  # null: index.html next to the cached cards ($CRL_CACHE/cards/<hash of the SAE>/)


@dataclass
class FeaturesExportConfig(FeaturesConfig):
    """`crl features export 1398`: one card as Neuronpedia JSON on stdout."""

    feature: int | None = param(None, ge=0)  # the feature id (required)


@dataclass
class BenchRolloutConfig:
    """`crl bench rollout`: steered-env decoding speed against plain batched generation."""

    model: ModelConfig = group(ModelConfig)
    task: TaskConfig = group(TaskConfig)
    bench: BenchConfig = group(BenchConfig)


@dataclass
class BenchPolicyConfig:
    """`crl bench policy`: the policy head and the masking at large dictionary widths (decisions/s, PPO step, peak
    memory), on a random SAE of each width; no model is loaded. The policy, masking, ppo and steering groups (levels,
    no-op) are those of `crl train`."""

    bench: PolicyBenchConfig = group(PolicyBenchConfig)
    policy: PolicyConfig = group(PolicyConfig)
    masking: MaskingConfig = group(MaskingConfig)
    ppo: PPOConfig = group(PPOConfig)
    steering: SteeringConfig = group(SteeringConfig)
    device: str = "cpu"  # where the SAE, the policy and the masking run (cuda: peak memory is torch's allocator's)
    out: str | None = None  # the JSON file; default runs/bench/policy-<timestamp>.json

    def check(self) -> None:
        check_no_shortlist(self.masking, "crl bench policy")
        check_some_action(self.masking, self.steering.allow_noop)
        narrowest = min(self.bench.widths)
        for f in self.masking.features or []:
            if f >= narrowest:  # else each width's process would fail after its setup
                why = f"feature {f} is not in the {narrowest}-feature SAE of bench.widths"
                raise ConfigError("masking.features", self.masking.features, why, f"ids in 0..{narrowest - 1}")


@dataclass
class AnalyzeConfig:
    """`crl analyze`: plots and an HTML report for one run directory."""

    run_dir: str = ""  # a finished run directory (required)
    out_dir: str | None = None  # default <run_dir>/analysis
    split: Split | None = None  # eval split; default test, then val
    usage_phase: str | None = None  # phase for feature usage; default the eval phase (train also works)
    top_k: int = param(20, ge=0)  # rows in the feature table
    n_boot: int = param(2000, ge=1)  # bootstrap resamples for every CI and p-value
    seed: int = seed_param(0)  # bootstrap seed (reports are reproducible)
    n_bins: int = param(10, ge=1)  # calibration bins
    env: bool = False  # first run the model-dependent analyses (baselines, branch points, effects, coef sweep)
    env_seeds: list[int] = param(factory=lambda: [0, 1, 2], ge=0, le=SEED_MAX, min_len=1)  # baseline seeds (env=true)
    # env=true: the coefficient sweep's coefficients as multiples of steering.coef (no steering, coef 0, is always
    # added), stored as summary.json coef_sweep. The layer table's coefficient tolerance is the largest |coef| that
    # keeps outputs well-formed; at the sweep's largest it is only a lower bound, so widen it, e.g. [0.5,1,2,4,8,16].
    coef_sweep: list[float] = param(factory=lambda: [0.5, 1.0, 2.0, 4.0], gt=0, min_len=1)
    # env=true: a directory where the baselines that depend on neither the run's seed nor its policy (random, corr,
    # prompting, letter_prior whole; the unsteered pass that ranks static's and corr's candidates; the scores of
    # static's candidates by activation) are taken from when a run with the same key stored them, else computed and
    # stored for the next; the key hashes the run's config without seed, run, logger, policy, masking and ppo (but
    # ppo.num_envs), its model/SAE/task/layer identity, the baseline settings (env_seeds, split, ...) and CRL's version
    # and commit (crl/analysis/replay/shared.py). `crl study` passes <out>/shared; null: every baseline computed here.
    shared_baselines: str | None = None
    # env=true: branch points (analysis/branch_points.csv) and forced-feature effects with the side effects
    # (analysis/effects.csv, side_effects.csv), which only this run's report.html shows. On by default; false skips
    # them (`crl study`'s default for its cells); the report's sections then say so and name `crl analyze
    # run_dir=<run> env=true`, which adds them (the baselines it has already are not run again).
    branch_points: bool = True
    forced_effects: bool = True
    effects_table: str | None = None  # precomputed CSVs; default <run_dir>/analysis/{effects,branch_points,...}.csv
    branch_table: str | None = None
    side_effects_table: str | None = None
    # What each feature the eval policy steered with does to the next token (analysis/feature_effects.json), on by
    # default because it is cheap: it reloads the model and runs one token per prompt (8 neutral + 16 val) per
    # (feature, level) used. Measured on 2 CPU cores, default run: ~4 s inside `crl train` (7 features: 4 s to
    # measure), ~10 s more in a fresh `crl analyze` (importing and loading the model). Measured again only when the
    # eval changed (env=true: always). false: show a stored measurement only.
    feature_effects: bool = True
    # Causal check of the eval policy's most used features (analysis/causal.json, crl.analysis.offline.causal): on
    # the held-out prompts where the policy chose a feature, is it sufficient alone and necessary (replaced by no
    # steering, or by a density-matched random feature)? On by default; measured again only when the eval changed
    # (env=true: always); false: show a stored measurement only. Cost: one replayed episode per prompt and arm that
    # is neither the logged policy episode nor no steering (one-decision tasks: the random replacement only), plus 16
    # reproduction checks. Budget: at most causal_top x causal_prompts prompts, and no replay batch starts after
    # causal_seconds. Measured on 2 CPU cores, default run (compare, 400 test prompts; top 5 features chosen on
    # 92+36+32+12+6 prompts, plus one group of them on 128): 322 replayed episodes, 48.5 s of CPU time, so about
    # 25-50 s on 2 idle cores (not measured idle: the host was shared, load 7.5, 112 s wall; there the 60 s cap
    # leaves the group out). The features alone: 194 episodes, 29.5 s of CPU time.
    causal: bool = True
    causal_top: int = param(5, ge=0)  # features checked, most used first (groups among them come on top)
    causal_prompts: int = param(128, ge=1)  # prompts per feature at most (a seeded sample)
    causal_seconds: float | None = param(60.0, gt=0)  # no replay batch starts after this; null: no limit
    # Side effects off the task (analysis/offtask.json, crl.analysis.offline.offtask): the share of changed held-out
    # outcomes that got worse (from the logs), and with the model: next-token KL on neutral text, refusals of safe
    # prompts, perplexity of free completions; the greedy policy vs no steering. On by default; measured again only
    # when the eval, the policy file or these settings changed (env=true: always); false: show a stored measurement
    # only. Budget: six batches of at most offtask_tokens decoding steps over 8 neutral sentences, the 8 first eval
    # prompts and offtask_prompts safe prompts (crl.analysis.replay.offtask). Measured on 2 CPU cores shared with a
    # training run (load 3.3-4.4), default run: 16/16 took 34 s wall, 26 s of CPU time (plus ~9 s for a model load of
    # its own); 32 prompts x 24 tokens took 63 s wall, 43 s of CPU time.
    offtask: bool = True
    offtask_prompts: int = param(16, ge=1)  # safe prompts at most (refusal_offline's test split holds 33)
    offtask_tokens: int = param(16, ge=1)  # tokens generated (or fed back) per prompt; a refusal shows in ~10
    wandb: WandbConfig = group(WandbConfig, mode="disabled")  # publish the report to W&B

    def check(self) -> None:
        if not self.env and sorted(set(self.coef_sweep)) != sorted(set(AnalyzeConfig().coef_sweep)):
            why = "the coefficient sweep runs with env=true only (without it the stored sweep is shown)"
            raise ConfigError("coef_sweep", self.coef_sweep, why, "env=true as well")


@dataclass
class CompareConfig:
    """`crl compare`: one report over several run directories."""

    dirs: list[str] = param(factory=list)  # two or more run directories (required)
    out_dir: str | None = None  # default runs/compare-<timestamp>
    # Feature ids are only comparable within one SAE. auto: feature sections only when every run has the same
    # sae_identity (else a warning, accuracy still compared); require: refuse mixed SAEs; skip: never.
    features: Literal["auto", "require", "skip"] = "auto"
    split: Split | None = None
    top_k: int = param(10, ge=0)
    n_boot: int = param(2000, ge=1)
    seed: int = seed_param(0)
    min_share: float = param(0.02, ge=0, le=1)
    wandb: WandbConfig = group(WandbConfig, mode="disabled")  # publish the report to W&B


@dataclass
class SoakConfig:
    """`crl soak`: kill, damage and starve tiny planted training runs; prints what survived (crl/commands/soak)."""

    kills: int = param(10, ge=0)  # SIGKILLs of one run at random points, each followed by resume=
    seed: int = seed_param(0)  # where the kills land, the full disk's size
    dir: str | None = None  # working directory, kept afterwards; null: a temporary one, removed when all passed
    disk: Literal["auto", "tmpfs", "simulate", "skip"] = "auto"  # auto: a small tmpfs if mountable, else ENOSPC


@dataclass
class ProbeConfig:
    """`crl probe`: before training, can steering help? At each layer in `layers`: a linear probe reads the gold
    answer (or, for number answers, whether the model will be right) from the residual at the decision position, beside
    the model's own accuracy, the majority class, a shuffled-label control, and an oracle that tries every single
    action of the policy's action set per held-out prompt (crl/analysis/replay/probe.py, oracle.py)."""

    model: ModelConfig = group(ModelConfig)
    sae: SAEConfig = group(SAEConfig)
    task: TaskConfig = group(TaskConfig, **TRAIN_TASK)
    steering: SteeringConfig = group(SteeringConfig)  # coef, coef_mode, levels: the actions the oracle tries
    # The eval masking at step 0 is the action set (none: every feature; fixed: the listed ones, masking.features).
    masking: MaskingConfig = group(MaskingConfig)
    # The SAE layers probed (each needs an SAE: shipped, built, or planted). A `steering.layer=L` override without
    # `layers=` probes L alone; null: steering.layer.
    layers: list[int] | None = param(factory=lambda: list(SHIPPED_SAE_LAYERS), ge=0, min_len=1)
    # answer: the gold class (option letter, refuse/comply, planted target); correct: whether the unsteered model
    # answers right (AUROC); auto: answer unless the gold answer is a number (arith, gsm8k).
    target: Literal["auto", "answer", "correct"] = "auto"
    # First train prompts the probe is fitted on (fewer if the split holds fewer). On compare at layer 15, 256 already
    # read the answer at 0.99 test accuracy; each prompt costs one unsteered forward (2 shared CPU cores, load 5-8:
    # ~0.3 s a compare prompt, ~0.8 s a bbq_offline one).
    probe_train: int = param(512, ge=2)
    n_oracle: int = param(64, ge=0)  # first test prompts the oracle tries every action on (0: no oracle)
    oracle_rows: int = param(512, ge=1)  # one-token MC: (prompt, action) rows per forward
    # One-token MC: the best static action is chosen among every level of the features in the most prompts' action
    # sets, each scored on every oracle prompt (the oracle itself scores each prompt's own actions only).
    oracle_static: int = param(64, ge=0)
    # Up to this many features for `crl train masking=fixed 'masking.features=[...]'`, by greedy set cover of the oracle
    # prompts the unsteered model gets wrong (a feature covers a prompt if any of its levels makes it right; fewer when
    # no feature covers a new prompt). On the compare family PPO over thousands of actions did not learn the XOR and 4
    # features did (experiment=compare_xor). 0: no shortlist. (Read on test prompts; `crl train masking=shortlist`
    # computes its own on train prompts.)
    shortlist_k: int = param(4, ge=0)
    # Free-form: rollouts at most (the first prompts that fit); each runs up to max_new_tokens (refusal: 48 tokens,
    # ~0.3 s a token for a batch of 64 on 2 CPU cores, so 1024 rollouts take ~4 min).
    oracle_max_episodes: int = param(1024, ge=1)
    l2: list[float] = param(factory=lambda: [1e-3, 1e-2, 1e-1, 1.0, 10.0], gt=0, min_len=1)  # picked by CV on train
    folds: int = param(5, ge=2)  # cross-validation folds that pick l2
    # A second reader shaped like the policy's own (2 tanh layers of `mlp_hidden`, crl/agent/policy.py), fitted with
    # AdamW for `mlp_steps` full-batch steps. On the compare family (both directions) the linear probe reads the gold
    # letter at 0.57-0.61 and this MLP at 1.00: the answer is an XOR of the question's direction and the comparison,
    # which a linear readout cannot express and the policy can. 0 steps: linear only.
    mlp_hidden: int = param(256, ge=1)
    mlp_steps: int = param(500, ge=0)
    mlp_weight_decay: float = param(1e-2, ge=0)
    n_boot: int = param(2000, ge=1)  # bootstrap resamples (AUROC CI)
    seed: int = seed_param(0)  # folds, the shuffled labels, the bootstrap
    out_dir: str | None = None  # default runs/probe-<task option>-<timestamp>

    def check(self) -> None:
        check_no_shortlist(self.masking, "crl probe")  # the probe suggests its own (shortlist_k)
        if self.sae.source == "planted" and self.task.name != "planted":
            raise ConfigError("sae.source", "planted", "the planted SAE is built for the planted task", "task=planted")
        layers = self.layers or [self.steering.layer]
        if len(set(layers)) != len(layers):
            raise ConfigError("layers", layers, "a layer is listed twice", "distinct layers")
        if self.sae.source in ("disk", "pretrained") and len(layers) > 1:
            why = f"sae={self.sae.source} is one SAE, which reads one layer"
            raise ConfigError("layers", layers, why, "one layer (the SAE's), or null for steering.layer")
        if self.model.source == "tiny" and max(layers) >= self.model.n_layers:
            why = f"the tiny model has {self.model.n_layers} layers"
            raise ConfigError("layers", layers, why, f"layers in 0..{self.model.n_layers - 1}")


@dataclass
class RLCompareConfig:
    """`crl rl-compare crl_run=<CRL run> grpo_run=<GRPO run>`: which SAE features the GRPO fine-tune moved at the CRL
    run's SAE layer, and whether CRL picked them (definitions: crl/analysis/diffing/). Both runs must be of one model,
    SAE and task; the prompts are the CRL run's `split`, rendered as its env renders them."""

    crl_run: str | None = None  # a finished `crl train` run directory (required)
    grpo_run: str | None = None  # a finished `crl grpo` run directory (required): its model/ holds the tuned weights
    out_dir: str | None = None  # default <grpo_run>/rl_compare/<crl run directory's name>
    split: Split = "test"  # the prompts compared on (CRL's usage: its eval phase on this split, else its default one)
    n: int = param(200, ge=1)  # the split's first n prompts (fewer where it holds fewer)
    control_rows: int = param(8, ge=0)  # rows of the feature cards' held-out text added to the neutral prompts
    ks: list[int] = param(factory=lambda: [5, 10, 20, 50], ge=1, min_len=1)  # overlap@k and causal set sizes
    n_null: int = param(1000, ge=1)  # density-matched draws of the concordance nulls (no model: cheap)
    # Random feature sets per causal check; each is one last-token pass over the n prompts per set size k (on 2 CPU
    # cores with the default model that pass takes seconds; the nulls dominate the command's time).
    n_causal_null: int = param(5, ge=0)
    n_boot: int = param(2000, ge=1)  # bootstrap resamples of every CI
    chunk_size: int = param(64, ge=1)  # prompts per forward (the KV caches of all of them stay in memory)
    seed: int = seed_param(0)  # bootstrap, permutations and null draws


@dataclass
class CurvesConfig:
    """`crl curves crl_runs=[...] grpo_runs=[...]`: CRL's and GRPO's val accuracy against rollouts and wall time, pooled
    over seeds, and CRL's share of GRPO's gain at each budget both reached (crl/analysis/offline/curves.py). Each entry
    is a run directory, a glob pattern, or a folder holding run directories (a sweep's); all of one model, SAE, task."""

    crl_runs: list[str] = param(factory=list)  # finished `crl train` runs (required)
    grpo_runs: list[str] = param(factory=list)  # finished `crl grpo` runs (required)
    out_dir: str | None = None  # default runs/curves-<timestamp>
    n_boot: int = param(2000, ge=1)  # bootstrap resamples of the gains' and the share's CIs
    seed: int = seed_param(0)  # bootstrap seed


@dataclass
class StudyConfig:
    """`crl study`: the whole study in one command (crl/commands/study.py). Every (task, layer, seed) is one cell, an
    ordinary `crl train task=T steering.layer=L seed=S` run directory at <out>/cells/<T>-L<L>-s<S>, then (baselines)
    `crl analyze env=true` on it; then one report, <out>/report.html (crl/analysis/report/study.py). The bare overrides
    on the command line that are none of these keys (experiment=planted, ppo.total_updates=4, ...) go to every cell's
    `crl train`, `task_train` adds one task's own, and `hydra.launcher.*` ones go to the launcher."""

    tasks: list[str] = param(factory=lambda: ["compare"], min_len=1)  # options of conf/task/ (train's default task)
    layers: list[int] = param(factory=lambda: list(SHIPPED_SAE_LAYERS), ge=0, min_len=1)
    seeds: list[int] = param(factory=lambda: [0, 1, 2], ge=0, le=SEED_MAX, min_len=1)  # run seeds of the cells
    out: str | None = None  # the study's directory; default runs/study-<timestamp>
    # Run only the cells that are missing, failed or unfinished (a killed cell with a checkpoint continues from it);
    # the keys not given on the command line come from <out>/study.json.
    resume: bool = False
    baselines: bool = True  # `crl analyze env=true` on each cell: none, random, static, corr, prompting, letter_prior
    # Where the cells run: null, one after another in this process; otherwise a Hydra launcher, each cell a job running
    # `crl train` and `crl analyze` as child processes (joblib and submitit_local on this machine, submitit_slurm on a
    # cluster; `hydra.launcher.n_jobs=2` and the like pass through).
    launcher: Literal["basic", "joblib", "submitit_local", "submitit_slurm"] | None = None
    train: list[str] = param(factory=list)  # overrides for every cell's `crl train` (bare overrides are added here)
    # Overrides for one task's cells only: a task of `tasks` -> its cells' extra `crl train` overrides, after `train`
    # and before the cell's place (task=, steering.layer=, seed=), so tasks that need different recipes share one
    # study: 'tasks=[compare,compare_family]' 'task_train={compare_family:[experiment=compare_family]}', or
    # task_train.compare_family=[experiment=compare_family] (the study escapes the inner `=` and adds the `++` Hydra
    # needs for a new key; quote an override holding brackets or commas: 'task_train.T=["task.family.ranges=[1digit]"]'.
    # Refused: a task not in `tasks`, a grid key, an experiment= that sets another task (its `override /task`).
    task_train: dict[str, list[str]] = param(factory=dict)
    # Overrides for every cell's `crl analyze env=true` (analyze.n_boot=500 on the command line adds n_boot=500, after
    # these, so analyze.branch_points=true wins). By default the cells skip the branch points and the forced-feature
    # and side effects, which only a cell's own report.html shows (the study's report reads none of them; the cell's
    # report names `crl analyze run_dir=<cell> env=true`, which adds them). Every cell's analyze also gets
    # shared_baselines=<out>/shared: random, corr, prompting and letter_prior (and the unsteered pass and the scores of
    # static's candidates by activation) are computed once per key (the run's config without seed, policy, run and
    # logger, its task/layer/SAE identity, the baseline settings, CRL's commit: AnalyzeConfig.shared_baselines), so
    # the seeds of one (task, layer) share them; analyze.shared_baselines=null computes them in every cell.
    analyze: list[str] = param(factory=lambda: ["branch_points=false", "forced_effects=false"])
    # Report. budget: the rollouts at which the methods are compared (val accuracy, best so far); null: per task, the
    # fewest rollouts any of its CRL cells spent, so CRL is read at its full budget and every baseline gets as many.
    budget: int | None = param(None, ge=1)
    # The budgets of the table that reads every method at each (the same for every task; [] for none).
    budgets: list[int] = param(factory=lambda: [500, 2000, 8000], ge=1)
    # `crl probe` records (probe.json, or a folder); []: any under <out>. Each is a task's by the conf/task option it
    # probed (task_option), and only if it probed the family the task's cells train (crl/analysis/report/study.py).
    probe: list[str] = param(factory=list)
    split: Split | None = None  # held-out split; default test, then val
    n_boot: int = param(2000, ge=1)  # bootstrap resamples of the held-out CIs
    boot_seed: int = seed_param(0)  # bootstrap seed (seed= goes to the cells, and is refused: seeds= sets it)
    # Write report.html and summary.txt again from the cells on disk (out= a study) and print the summary, running no
    # cell; tasks=, layers=, seeds= given with it report that part of the grid, budget=/n_boot=/split= apply.
    report_only: bool = False
    cell: str | None = None  # set by the launcher's jobs (one cell each); leave it out

    def check(self) -> None:
        for key, values in (("tasks", self.tasks), ("layers", self.layers), ("seeds", self.seeds)):
            if len(set(values)) != len(values):
                raise ConfigError(key, values, "a value is listed twice", f"distinct {key}")
        bad = [t for t in self.tasks if not re.fullmatch(r"[\w-]+", t)]  # it names the cells' directories
        if bad:
            raise ConfigError("tasks", self.tasks, f"'{bad[0]}' is not a task option name", "names of conf/task/")


# Hydra config name (conf/<name>.yaml) -> its root schema.
APPS: dict[str, type] = {
    "train": TrainConfig,
    "grpo": GRPOTrainConfig,
    "eval": EvalConfig,
    "transfer": TransferConfig,
    "sae_build": SAEBuildConfig,
    "sae_info": SAEInfoConfig,
    "sae_export": SAEExportConfig,
    "bench_rollout": BenchRolloutConfig,
    "bench_policy": BenchPolicyConfig,
    "analyze": AnalyzeConfig,
    "compare": CompareConfig,
    "soak": SoakConfig,
    "probe": ProbeConfig,
    "rl-compare": RLCompareConfig,
    "curves": CurvesConfig,
    "study": StudyConfig,
    "features_show": FeaturesShowConfig,
    "features_build": FeaturesBuildConfig,
    "features_index": FeaturesIndexConfig,
    "features_export": FeaturesExportConfig,
}
# Config group (conf/<group>/) -> its schema.
GROUPS: dict[str, type] = {
    "model": ModelConfig,
    "sae": SAEConfig,
    "task": TaskConfig,
    "steering": SteeringConfig,
    "policy": PolicyConfig,
    "ppo": PPOConfig,
    "masking": MaskingConfig,
    "logger": WandbConfig,
}
# Config groups that only one command composes (conf/<group>/; its app is the key of APPS of the same name).
COMMAND_GROUPS: dict[str, type] = {"grpo": GRPOGroupConfig}


def register() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent: a second store replaces the first)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for name, cls in {**GROUPS, **COMMAND_GROUPS}.items():
        cs.store(group=name, name=f"base_{name}", node=omegaconf_schema(cls))
    for name, cls in APPS.items():
        cs.store(name=f"base_{name}", node=omegaconf_schema(cls))
