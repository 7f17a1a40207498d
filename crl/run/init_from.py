"""`crl train init_from=<run>`: start a run from another run's trained policy, a curriculum (train on `compare`, then
`crl train task=compare_family init_from=runs/<that run>`).

The new run starts from the policy `crl eval` loads from the source (`components.policy_file`: policy.pt, the
val-selected policy, else the last checkpoint's), all of its state dict: actor, critic, heads, and the persistent
buffers its weights were trained under, the observation standardization (obs_mean, obs_std) and the abstention fit.
Those are not measured again on the new run's task: other statistics would change what the weights compute, and the
point is to continue from the learned function. The optimizer, the feature masking and the random streams start
fresh, as in any new run. Update 0 of the val curve is then the source's policy, not no steering, and selection keeps
it unless training beats it on val.

Checked before anything loads, from the two config.yaml files: the settings that fix the policy's input, its action
set and its parameter shapes (`must_match`). After the model and SAE load: the same model, SAE (its decoder hash),
layer and d_sae as in the source's run.json. The task may differ; that is what a curriculum is for.

A resumed run takes its policy from its own checkpoint and never reads the source again (it may be gone by then).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crl.agent.policy import ActorCritic
from crl.config import ConfigError, TrainConfig
from crl.config.core import show
from crl.errors import CRLError
from crl.logs import schema
from crl.logs.schema import RunInfo
from crl.logs.writer import load_checkpoint
from crl.run.components import POLICY_FILE, Components, policy_file, policy_state, saved_config

# What the loaded model and SAE must share with the source's run.json (feature ids, residual width).
LOADED_KEYS = ("model", "sae_identity", "layer", "d_sae")


def must_match(cfg: TrainConfig) -> list[str]:
    """The config keys a source run must share with `cfg`: the model (not where or in which precision it runs: the
    policy reads the residual in float32 either way), the SAE, the steered layer, the action set (levels, no-op) and
    the policy's shape and input scaling."""
    keys = ["model.source", "model.name", "model.weights"]
    if cfg.model.source == "tiny":  # the random model's shape and weights
        keys += ["model.n_layers", "model.d_model", "model.seed"]
    keys += ["sae.source", "sae.release", "sae.sae_id", "sae.path", "sae.d_sae"]
    keys += ["steering.layer", "steering.coef_levels", "steering.allow_noop"]
    keys += ["policy.head", "policy.hidden", "policy.obs_norm", "policy.abstain"]
    if cfg.policy.abstain == "knn":  # the neighbours a decision's distance averages over
        keys.append("policy.abstain_k")
    return keys


def _get(cfg: TrainConfig, key: str) -> Any:
    return functools.reduce(getattr, key.split("."), cfg)


@dataclass(frozen=True)
class InitSource:
    """A checked source run and its policy, read into memory (a few MB)."""

    path: Path
    info: RunInfo
    policy_file: str  # relative to `path`: policy.pt or checkpoints/last.pt
    update: int | None  # the update that policy is from, when known
    state: dict[str, Any]

    def record(self) -> dict[str, Any]:
        """run.json's `init_from`."""
        return {
            "run_dir": str(self.path.resolve()),
            "run": self.info.run,
            "policy": self.policy_file,
            "update": self.update,
            "obs_stats": "loaded with the policy, not measured",  # and the abstention fit, when there is one
        }


def read_source(cfg: TrainConfig) -> InitSource:
    """`cfg.init_from` checked against `cfg`, and its policy read. Every problem is one line, before the model loads."""
    value = cfg.init_from
    if value is None:
        raise ValueError("read_source needs cfg.init_from")
    path = Path(value)
    if not path.is_dir():
        why = "no such directory" if not path.exists() else "not a directory"
        raise ConfigError("init_from", value, why, "a `crl train` run directory, e.g. runs/<run>")
    missing = [name for name in (schema.RUN_JSON, schema.CONFIG_YAML) if not (path / name).exists()]
    if missing:
        why = f"not a `crl train` run directory (no {' or '.join(missing)})"
        raise ConfigError("init_from", value, why, "a directory written by `crl train`")
    try:
        info = RunInfo.read(path)
        saved = saved_config(path, devices=False)  # the source may have run on a GPU this host lacks
    except CRLError as e:
        raise CRLError(f"init_from={value}: {e}") from None
    name = policy_file(path)
    if name is None:
        why = f"the run has no trained policy yet (neither {POLICY_FILE} nor {schema.CHECKPOINT})"
        raise ConfigError("init_from", value, why, "a run that finished at least one update")
    diffs = [(k, _get(saved, k), _get(cfg, k)) for k in must_match(cfg) if _get(saved, k) != _get(cfg, k)]
    if diffs:
        what = "; ".join(f"{k}: the run has {show(a)}, this run {show(b)}" for k, a, b in diffs)
        fix = " ".join(f"{k}={show(a)}" for k, a, _ in diffs)
        why = f"its policy does not fit this run ({what})"
        raise ConfigError("init_from", value, why, f"a run with this run's settings, or this run with {fix}")
    try:
        if name == schema.CHECKPOINT:
            ckpt = load_checkpoint(path)
            state, update = ckpt["policy"], int(ckpt["update"])
        else:
            state, _ = policy_state(path)
            update = _selected_update(path)
    except CRLError as e:
        raise CRLError(f"init_from={value}: {e}") from None
    return InitSource(path, info, name, update, state)


def _selected_update(path: Path) -> int | None:
    """The update policy.pt is from (summary.json's selection; None when the run stopped before writing it)."""
    try:
        return int(json.loads((path / schema.SUMMARY).read_text(encoding="utf-8"))["selection"]["selected_update"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def start_from(source: InitSource, comps: Components, net: ActorCritic) -> None:
    """Check the loaded model and SAE against the source's run.json, then load its whole policy into `net` (a fresh
    one): every parameter and persistent buffer, so nothing stays at its fresh initialisation."""
    what = comps.identity_diffs(source.info, LOADED_KEYS)
    if what:
        raise CRLError(
            f"init_from={source.path}: its policy was trained on another model or SAE ({what}); its feature ids "
            "would mean other features: start from a run of this model, SAE and layer"
        )
    try:
        result = net.load_state_dict(source.state, strict=False)  # the decoder is not saved: it is this SAE's
    except RuntimeError as e:  # a shape that differs
        first = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), str(e))
        raise CRLError(f"init_from={source.path}: its policy does not fit this run's ({first})") from None
    if result.missing_keys or result.unexpected_keys:
        raise CRLError(
            f"init_from={source.path}: its policy does not fit this run's (missing {result.missing_keys}, unexpected "
            f"{result.unexpected_keys}); start from a run made with the same policy settings"
        )
    at = f" (update {source.update})" if source.update is not None else ""
    print(
        f"[crl] init_from {source.path}: starting from its {source.policy_file}{at} with its observation statistics "
        "(not measured again); fresh optimizer"
    )
