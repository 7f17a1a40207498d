"""Build everything a run needs from its config: frozen model, SAE, task, splits, masker, env, policy.

`Components` is the one place that constructs a `SteeringVecEnv`, a policy network (fresh or a run's trained
one) and checks that a run directory's model/SAE/task are the ones loaded now.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crl.agent.masking import FeatureMasker
from crl.agent.policy import ActorCritic
from crl.agent.ppo import PolicyAgent
from crl.backends.model import FrozenLM, load_model
from crl.backends.sae import LoadedSAE, check_compatible, check_registry, load_sae
from crl.config import (
    BuildConfig,
    ConfigError,
    MaskingConfig,
    ModelConfig,
    PolicyConfig,
    PPOConfig,
    SteeringConfig,
    TrainConfig,
    load,
)
from crl.config.device import check_devices
from crl.envs.rollout import ActionPolicy, Episode, NoSteer, run_episodes
from crl.envs.steering_env import SteeringVecEnv
from crl.envs.tasks.base import Example, Task
from crl.errors import CRLError
from crl.logs import schema
from crl.logs.schema import RunInfo
from crl.progress import Progress

if TYPE_CHECKING:
    import torch

POLICY_FILE = "policy.pt"  # the final policy's state dict, written at the end of `crl train`


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
        examples: str | list[Example],
        masker: FeatureMasker | None = None,
        seed: int = 0,
        num_envs: int | None = None,
        reward: str = "exact",
        **steering_overrides: Any,
    ) -> SteeringVecEnv:
        """An env over a split (by name) or a list of examples; steering fields (e.g. coef) may be overridden.
        `reward`: the episodes' reward (task.reward; only `crl train`'s training rollouts pass it, evaluations keep
        the verifier's 0/1)."""
        steering = dataclasses.replace(self.steering, **steering_overrides)
        return SteeringVecEnv(
            self.lm,
            self.sae,
            self.task,
            self.splits[examples] if isinstance(examples, str) else examples,
            steering,
            num_envs or self.ppo.num_envs,
            seed=seed,
            masker=masker,
            reward=reward,
        )

    def masker(self, for_eval: bool = False) -> FeatureMasker:
        cfg = self.masking.for_eval() if for_eval else self.masking
        return FeatureMasker(cfg, self.sae.d_sae, self.steering.allow_noop)

    def new_policy(self) -> ActorCritic:
        """A freshly initialised actor-critic over this SAE's features."""
        levels = len(self.steering.coef_levels)
        net = ActorCritic(self.lm.d_model, self.sae.directions(), self.steering.allow_noop, self.policy, levels)
        return net.to(self.lm.device)  # model.device places everything, the policy included

    def observation_sample(self, split: str = "train", n: int = 256, progress: str | None = None) -> torch.Tensor:
        """The residuals the policy sees at every decision of unsteered greedy rollouts of the first `n` prompts of
        `split` (the split's order is fixed by its seed, so this is reproducible). `progress`: the phase's name in
        progress lines on stderr (none when None)."""
        import torch

        env = self.env(self.splits[split][:n])
        try:
            episodes = rollouts(env, env.examples, NoSteer(env), progress, keep_tensors=True)
        finally:
            env.close()
        return torch.cat([ep.obs for ep in episodes if ep.obs is not None and len(ep.obs)])

    def load_policy(self, run_dir: str | Path, greedy: bool = True, n_alternatives: int = 3) -> PolicyAgent:
        """A run's trained policy (policy.pt, else the last checkpoint's) as a `PolicyAgent`, loaded on CPU."""
        state, _ = policy_state(run_dir)
        net = self.new_policy()
        net.load_state_dict(state, strict=False)  # the decoder buffer is not saved; it comes from the SAE
        net.eval()
        return PolicyAgent(net, greedy=greedy, n_alternatives=n_alternatives)

    def identity(self) -> dict[str, Any]:
        """What must match for feature ids and prompts to mean the same thing (`RunInfo.IDENTITY_KEYS`)."""
        return {
            "model": self.lm.name,
            "sae_identity": self.sae.identity,
            "task": self.task.name,
            "task_seed": int(self.task.cfg.seed),
            "layer": self.sae.hook.layer,
        }

    def run_info(self, run: str, seed: int) -> RunInfo:
        """run.json of a run trained on these components."""
        return RunInfo(
            run=run,
            **self.identity(),
            hook_name=self.sae.hook_name,
            d_sae=self.sae.d_sae,
            neuronpedia_id=self.sae.neuronpedia_id,
            seed=seed,
            coef=self.steering.coef,
            coef_mode=self.steering.coef_mode,
            planted=self.planted,
            allow_noop=self.steering.allow_noop,
            ran_on=machine(self.lm.device),
        )

    def check_identity(
        self, saved: RunInfo, run_dir: str | Path, keys: tuple[str, ...] = RunInfo.IDENTITY_KEYS
    ) -> None:
        """One-line error if the run in `run_dir` was made with another model/SAE/task/layer than loaded now.
        Keys the run did not record (None in an older or hand-written run.json) are not compared."""
        diff = self.identity_diffs(saved, keys)
        if diff:
            raise CRLError(
                f"run dir {run_dir} is incompatible with what is loaded now: {diff}; feature ids would not match: "
                "load the run's own model, SAE and task, or start a new run"
            )

    def identity_diffs(self, saved: RunInfo, keys: tuple[str, ...]) -> str:
        """The `keys` (of `identity()`, or d_sae) on which `saved` differs from what is loaded now, as "k: run has
        a, now b; ..." ("" when none). Keys the run did not record (None) are not compared."""
        now = {**self.identity(), "d_sae": self.sae.d_sae}
        diff = [k for k in keys if getattr(saved, k) is not None and getattr(saved, k) != now[k]]
        return "; ".join(f"{k}: run has {getattr(saved, k)!r}, now {now[k]!r}" for k in diff)


def policy_file(run_dir: str | Path) -> str | None:
    """Which file holds a run's trained policy, relative to the run: policy.pt (the selected policy, written when
    `crl train` ends), else the last checkpoint's; None when it has neither (no update finished yet)."""
    p = Path(run_dir)
    return next((name for name in (POLICY_FILE, schema.CHECKPOINT) if (p / name).exists()), None)


def policy_state(run_dir: str | Path) -> tuple[dict[str, Any], str]:
    """A run's trained policy as a state dict on the CPU, and the file it came from (`policy_file`'s choice)."""
    import torch

    from crl.logs.writer import load_checkpoint

    name = policy_file(run_dir)
    if name is None:
        raise CRLError(f"run '{run_dir}' has neither {POLICY_FILE} nor {schema.CHECKPOINT}; train it first")
    if name == POLICY_FILE:
        return torch.load(Path(run_dir) / POLICY_FILE, map_location="cpu", weights_only=True), name
    return load_checkpoint(Path(run_dir))["policy"], name


def rollouts(
    env: SteeringVecEnv,
    examples: list[Example],
    policy: ActionPolicy,
    progress: str | None = None,
    keep_tensors: bool = False,
) -> list[Episode]:
    """`run_episodes`, with plain progress lines on stderr for the phase named `progress` (crl.progress: a first
    line, one at most every 15 s, a last one with the duration). Nothing is printed when `progress` is None, and
    the episodes are the same either way."""
    bar = Progress(f"[crl] {progress}", len(examples), "prompts", enabled=progress is not None)
    episodes = run_episodes(env, examples, policy, keep_tensors=keep_tensors, on_done=bar.update)
    bar.close()
    return episodes


def machine(device: Any) -> dict[str, Any]:
    """Where a run ran, for run.json: host, device (with the GPU's name), torch version and CPU threads."""
    import platform

    import torch

    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    return {
        "host": platform.node(),
        "device": str(dev),
        "device_name": name,
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
    }


def saved_config(run_dir: str | Path, devices: bool = True) -> TrainConfig:
    """A run's config.yaml as a validated `TrainConfig`. Settings added to CRL after the run was made take their
    defaults; a file without every config group (not written by `crl train`), or (with `devices`) one whose device
    this host cannot use, is refused in one line."""
    from omegaconf import OmegaConf

    path = Path(run_dir) / schema.CONFIG_YAML
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    missing = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in raw and _is_group(f)]
    if missing:
        raise CRLError(f"{path} cannot be rebuilt (no {', '.join(missing)}); it is not a full `crl train` config")
    try:
        cfg = load(TrainConfig, raw)
        if devices:
            check_devices(cfg)  # a run made on a GPU, rebuilt on a host without one
    except ConfigError as e:
        raise CRLError(f"{path}: {e}") from None
    return cfg


def with_greedy_rule(cfg: TrainConfig, rule: str | None) -> TrainConfig:
    """`cfg` with its policy's greedy rule (policy.greedy_rule) replaced by `rule`; None keeps the run's own.
    `crl eval` and `crl transfer` re-evaluate a trained run under another rule this way, without retraining."""
    if rule is None:
        return cfg
    return dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, greedy_rule=rule))


def _is_group(f: dataclasses.Field) -> bool:
    return f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory())


def build(
    cfg: TrainConfig | Mapping[str, Any],
    splits: tuple[str, ...] = ("train", "val", "test"),
    for_training: bool = False,
) -> Components:
    """Validate the config and read the task data (cheap, so first), then load the model and the SAE."""
    from crl.envs.tasks.registry import make_task

    cfg = load(TrainConfig, cfg)
    check_devices(cfg)
    task = make_task(cfg.task)
    data = {s: task.load(s) for s in splits}
    if for_training:
        check_val_split(cfg, data)
    layer = cfg.steering.layer
    planted = None
    if cfg.sae.source == "pretrained":  # a mistyped id (or a layer its release lacks) before the model downloads
        check_registry(cfg.sae.release, cfg.sae.sae_id)
    lm = load_model(cfg.model)
    if not 0 <= layer < lm.n_layers:
        raise CRLError(
            f"steering.layer={layer} is out of range: {lm.name} has {lm.n_layers} layers (0..{lm.n_layers - 1})"
        )
    if cfg.sae.source == "planted":  # TrainConfig.check: only with task=planted
        from crl.envs.tasks.planted import build_planted_sae

        sae, info = build_planted_sae(
            lm, task, layer, d_sae=cfg.sae.d_sae or 64, coef=cfg.steering.coef, seed=cfg.model.seed
        )
        planted = info.planted
    else:
        sae_cfg = cfg.sae if cfg.sae.device else dataclasses.replace(cfg.sae, device=cfg.model.device)
        if sae_cfg.source == "default":  # the default SAE is the one built for the steered layer
            sae_cfg = dataclasses.replace(sae_cfg, layer=layer)
            _ensure_default_sae(cfg.model, layer)
        sae = load_sae(sae_cfg)
        if sae.hook.layer != layer:
            raise CRLError(
                f"steering.layer={layer} but the SAE reads '{sae.hook_name}'; set steering.layer={sae.hook.layer}"
            )
    check_compatible(sae, lm.d_model, lm.n_layers, lm.name)
    return Components(lm, sae, task, data, cfg.steering, cfg.masking, cfg.policy, cfg.ppo, planted)


def check_val_split(cfg: TrainConfig, data: dict[str, list[Example]]) -> None:
    """A val split too small to tell checkpoints apart is a one-line error before the model loads."""
    exp = cfg.run
    if exp.select != "best_val":
        return
    n = len(data.get(exp.val_split, []))
    if n < exp.min_val_prompts:
        raise CRLError(
            f"run.val_split={exp.val_split} has {n} prompts, fewer than run.min_val_prompts={exp.min_val_prompts}: "
            f"too few to select a checkpoint on; enlarge it (task.n_{exp.val_split}) or set run.select=last"
        )


def _ensure_default_sae(model_cfg: ModelConfig, layer: int) -> None:
    """The default SAE is built on first use (minutes on 2 cores, then cached)."""
    from crl.backends.sae_store import default_sae_dir

    if (default_sae_dir(layer) / "cfg.json").exists():
        return
    if model_cfg.source != "default":
        raise CRLError(
            "sae=default is the SAE for the offline default model; with another model use sae=pretrained or sae=disk"
        )
    from crl.sae_training.train import build_sae

    print(f"[crl] the default SAE for layer {layer} is not built yet; building it now (cached afterwards)")
    build_sae(load_model(model_cfg), BuildConfig(layer=layer))
