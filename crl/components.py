"""Build everything a run needs from its config: frozen model, SAE, task, splits, masker, env."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from crl.backends.model import FrozenLM, ModelConfig, load_model
from crl.backends.sae import LoadedSAE, SAEConfig, check_compatible, load_sae
from crl.envs.steering_env import SteeringConfig, SteeringVecEnv
from crl.envs.tasks.base import Example, Task, TaskConfig
from crl.errors import CRLError
from crl.masking import FeatureMasker, MaskingConfig
from crl.policy import PolicyConfig
from crl.ppo import PPOConfig


def to_dataclass(cls: type, node: Any, group: str):
    """A config group as its dataclass; unknown keys are a one-line error naming the group."""
    data = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise CRLError(f"unknown key(s) {unknown} in config group '{group}'; valid keys: {sorted(names)}")
    return cls(**data)


@dataclass
class Components:
    lm: FrozenLM
    sae: LoadedSAE
    task: Task
    splits: dict[str, list[Example]]
    steering: SteeringConfig
    masking: MaskingConfig
    policy: PolicyConfig
    ppo: PPOConfig
    planted: list[int] | None = None  # ground-truth features of the planted task

    def env(
        self,
        split: str,
        masker: FeatureMasker | None,
        seed: int,
        num_envs: int | None = None,
        **steering_overrides: Any,
    ) -> SteeringVecEnv:
        steering = dataclasses.replace(self.steering, **steering_overrides)
        return SteeringVecEnv(
            self.lm,
            self.sae,
            self.task,
            self.splits[split],
            steering,
            num_envs or self.ppo.num_envs,
            seed=seed,
            masker=masker,
        )

    def masker(self, for_eval: bool = False) -> FeatureMasker:
        cfg = self.masking
        if for_eval and cfg.mode == "adaptive":  # the diversity cap is a training device only
            cfg = dataclasses.replace(cfg, mode="active")
        return FeatureMasker(cfg, self.sae.d_sae, self.steering.allow_noop)


def build_task(cfg: DictConfig) -> Task:
    from crl.envs.tasks.registry import make_task

    return make_task(to_dataclass(TaskConfig, cfg.task, "task"))


def build(cfg: DictConfig, splits: tuple[str, ...] = ("train", "val", "test")) -> Components:
    """Validate cheap things first (configs, task data), then load the model and the SAE."""
    steering = to_dataclass(SteeringConfig, {k: v for k, v in cfg.steering.items() if k != "layer"}, "steering")
    masking = to_dataclass(MaskingConfig, cfg.masking, "masking")
    policy = to_dataclass(PolicyConfig, cfg.policy, "policy")
    ppo = to_dataclass(PPOConfig, cfg.ppo, "ppo")
    if masking.mode not in ("none", "active", "adaptive"):
        raise CRLError(f"masking.mode='{masking.mode}' is unknown; use none, active or adaptive")
    if masking.mode != "none" and masking.top_k <= 0 and masking.threshold > 1e6 and not steering.allow_noop:
        raise CRLError("this masking makes every action invalid: raise masking.top_k or set steering.allow_noop=true")
    task = build_task(cfg)
    data = {s: task.load(s) for s in splits}
    model_cfg = to_dataclass(ModelConfig, cfg.model, "model")
    sae_cfg = to_dataclass(SAEConfig, cfg.sae, "sae")
    layer = int(cfg.steering.layer)
    planted = None
    lm = load_model(model_cfg)
    if not 0 <= layer < lm.n_layers:
        raise CRLError(
            f"steering.layer={layer} is out of range: {lm.name} has {lm.n_layers} layers (0..{lm.n_layers - 1})"
        )
    if sae_cfg.source == "planted":
        from crl.envs.tasks.planted import PlantedTask, build_planted_sae

        if not isinstance(task, PlantedTask):
            raise CRLError("sae=planted only works with task=planted")
        sae, info = build_planted_sae(
            lm, task, layer, d_sae=sae_cfg.d_sae or 64, coef=steering.coef, seed=model_cfg.seed
        )
        planted = info.planted
    else:
        if sae_cfg.source == "default":
            sae_cfg.layer = layer
            _ensure_default_sae(model_cfg, layer)
        sae = load_sae(sae_cfg)
        if sae.hook.layer != layer:
            raise CRLError(
                f"steering.layer={layer} but the SAE reads '{sae.hook_name}'; set steering.layer={sae.hook.layer}"
            )
    check_compatible(sae, lm.d_model, lm.n_layers, lm.name)
    return Components(lm, sae, task, data, steering, masking, policy, ppo, planted)


def _ensure_default_sae(model_cfg: ModelConfig, layer: int) -> None:
    """The default SAE is built on first use (minutes on 2 cores, then cached)."""
    from crl.sae_build.build import default_sae_dir

    if (default_sae_dir(layer) / "cfg.json").exists():
        return
    if model_cfg.source != "default":
        raise CRLError(
            "sae=default is the SAE for the offline default model; with another model use sae=pretrained or sae=disk"
        )
    from crl.sae_build.build import BuildConfig, build_sae

    print(f"[crl] the default SAE for layer {layer} is not built yet; building it now (cached afterwards)")
    build_sae(load_model(model_cfg), BuildConfig(layer=layer))
