"""One nested root config per `crl` command (conf/<name>.yaml), and their registration with Hydra.

`register()` stores each group schema as `<group>/base_<group>` and each root as `base_<app>` in Hydra's
ConfigStore; a group file pulls its schema in with `defaults: [base_<group>, _self_]` and an app file with
`defaults: [base_<app>, ...]`, so Hydra types every key at compose time and the YAML holds only what differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from crl.config.core import SEED_MAX, ConfigError, group, omegaconf_schema, param, seed_param
from crl.config.groups import (
    TRAIN_TASK,
    BenchConfig,
    BuildConfig,
    MaskingConfig,
    ModelConfig,
    PolicyConfig,
    PPOConfig,
    RunConfig,
    SAEConfig,
    Split,
    SteeringConfig,
    TaskConfig,
    WandbConfig,
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

    def check(self) -> None:
        check_some_action(self.masking, self.steering.allow_noop)
        if self.sae.source == "planted" and self.task.name != "planted":
            raise ConfigError("sae.source", "planted", "the planted SAE is built for the planted task", "task=planted")
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
class EvalConfig:
    """`crl eval`: greedy re-evaluation of a trained run."""

    run_dir: str | None = None  # a run directory (required)
    split: Split = "test"
    seed: int | None = seed_param(None)  # null: the run's own seed


@dataclass
class TransferConfig:
    """`crl transfer`: a trained policy against no steering on variants of its task held out of its training
    (crl/envs/tasks/family.py; the table's definitions: crl/analysis/offline/transfer.py)."""

    run_dir: str | None = None  # a run directory (required)
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
    effects_table: str | None = None  # precomputed CSVs; default <run_dir>/analysis/{effects,branch_points,...}.csv
    branch_table: str | None = None
    side_effects_table: str | None = None
    # What each feature the eval policy steered with does to the next token (analysis/feature_effects.json), on by
    # default because it is cheap: it reloads the model and runs one token per prompt (8 neutral + 16 val) per
    # (feature, level) used. Measured on 2 CPU cores, default run: ~4 s inside `crl train` (7 features: 4 s to
    # measure), ~10 s more in a fresh `crl analyze` (importing and loading the model). Measured again only when the
    # eval changed (env=true: always). false: show a stored measurement only.
    feature_effects: bool = True
    wandb: WandbConfig = group(WandbConfig, mode="disabled")  # publish the report to W&B


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


# Hydra config name (conf/<name>.yaml) -> its root schema.
APPS: dict[str, type] = {
    "train": TrainConfig,
    "eval": EvalConfig,
    "transfer": TransferConfig,
    "sae_build": SAEBuildConfig,
    "sae_info": SAEInfoConfig,
    "sae_export": SAEExportConfig,
    "bench_rollout": BenchRolloutConfig,
    "analyze": AnalyzeConfig,
    "compare": CompareConfig,
    "soak": SoakConfig,
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


def register() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent: a second store replaces the first)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for name, cls in GROUPS.items():
        cs.store(group=name, name=f"base_{name}", node=omegaconf_schema(cls))
    for name, cls in APPS.items():
        cs.store(name=f"base_{name}", node=omegaconf_schema(cls))
