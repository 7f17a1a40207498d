"""Typed configs: one schema (a dataclass) per config group and one nested root config per `crl` command.

    from crl.config import PPOConfig, load
    ppo = load(PPOConfig, cfg.ppo, "ppo.")   # a validated PPOConfig; a bad value is one ConfigError

crl/config/core.py     field ranges (`param`), `validate`, `load`, the OmegaConf view Hydra types with
crl/config/groups.py   the group schemas: model, sae, task, steering, policy, ppo, masking, logger, ...
crl/config/apps.py     the root config of each command, and their registration with Hydra's ConfigStore
crl/config/compose.py  `check_command`: compose + validate before any model loads (called by crl.cli)
"""

from crl.config.apps import (
    APPS,
    COMMAND_GROUPS,
    GROUPS,
    AnalyzeConfig,
    BenchRolloutConfig,
    CompareConfig,
    EvalConfig,
    GRPOTrainConfig,
    ProbeConfig,
    RLCompareConfig,
    SAEBuildConfig,
    SAEExportConfig,
    SAEInfoConfig,
    SoakConfig,
    TrainConfig,
    TransferConfig,
    register,
)
from crl.config.core import ConfigError, load, param, validate
from crl.config.groups import (
    DEFAULT_LAYER,
    DEFAULT_MODEL_NAME,
    DEFAULT_PROSE_PACKAGES,
    SHIPPED_SAE_LAYERS,
    BenchConfig,
    BuildConfig,
    CoefMode,
    FamilyConfig,
    GRPOGroupConfig,
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
    WandbMode,
    check_some_action,
)

__all__ = [
    "APPS",
    "COMMAND_GROUPS",
    "DEFAULT_LAYER",
    "DEFAULT_MODEL_NAME",
    "DEFAULT_PROSE_PACKAGES",
    "SHIPPED_SAE_LAYERS",
    "GROUPS",
    "AnalyzeConfig",
    "BenchConfig",
    "BenchRolloutConfig",
    "BuildConfig",
    "CoefMode",
    "CompareConfig",
    "ConfigError",
    "EvalConfig",
    "FamilyConfig",
    "GRPOGroupConfig",
    "GRPOTrainConfig",
    "MaskingConfig",
    "ModelConfig",
    "PPOConfig",
    "ProbeConfig",
    "PolicyConfig",
    "RLCompareConfig",
    "RunConfig",
    "SAEBuildConfig",
    "SAEConfig",
    "SAEExportConfig",
    "SAEInfoConfig",
    "SoakConfig",
    "Split",
    "SteeringConfig",
    "TaskConfig",
    "TrainConfig",
    "TransferConfig",
    "WandbConfig",
    "WandbMode",
    "check_some_action",
    "load",
    "param",
    "register",
    "validate",
]
