"""`crl eval run_dir=... split=test`: re-evaluate a trained policy greedily on any split.

Rebuilds model, SAE and task from the run's own config.yaml, loads policy.pt (or the last checkpoint),
checks the SAE is the one the policy was trained on, and appends `eval:<split>` rows to the run's logs.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from crl.components import build
from crl.errors import CRLError, exit_on_error
from crl.logs import schema
from crl.logs.run_dir import RunWriter, load_checkpoint
from crl.paths import CONF_DIR
from crl.policy import ActorCritic
from crl.ppo import PolicyAgent


def evaluate_run(run_dir: Path, split: str = "test", seed: int | None = None) -> dict:
    from crl.train import accuracy, episode_rows, evaluate, feature_usage, run_identity

    if not (run_dir / schema.CONFIG_YAML).exists() or not (run_dir / schema.RUN_JSON).exists():
        raise CRLError(
            f"run_dir={run_dir} is not a CRL run directory (needs {schema.CONFIG_YAML} and {schema.RUN_JSON})"
        )
    cfg = OmegaConf.load(run_dir / schema.CONFIG_YAML)
    saved = json.loads((run_dir / schema.RUN_JSON).read_text())
    comps = build(cfg, splits=("train", split) if split != "train" else ("train",))
    ident = run_identity(cfg, comps)
    if ident["sae_identity"] != saved.get("sae_identity"):
        raise CRLError(
            f"the SAE now loaded ({ident['sae_identity']}) is not the one this run trained on "
            f"({saved.get('sae_identity')}); feature ids would not match"
        )
    net = ActorCritic(comps.lm.d_model, comps.sae.directions(), comps.steering.allow_noop, comps.policy)
    policy_file = run_dir / "policy.pt"
    state = torch.load(policy_file) if policy_file.exists() else load_checkpoint(run_dir)["policy"]
    net.load_state_dict(state, strict=False)
    episodes = evaluate(comps, split, PolicyAgent(net, greedy=True), int(cfg.seed if seed is None else seed))
    from crl.logs.run_dir import read_jsonl

    # Fresh episode ids: a re-evaluation must not repeat the (phase, update, episode) keys of earlier ones.
    first = 1 + max((r["episode"] for r in read_jsonl(run_dir / schema.EPISODES)), default=-1)
    writer = RunWriter(run_dir)
    try:
        inter, eps = episode_rows(episodes, run_dir.name, f"eval:{split}", int(cfg.ppo.total_updates), first)
        writer.append(schema.INTERVENTIONS, inter)
        writer.append(schema.EPISODES, eps)
        writer.flush()
    finally:
        writer.close()
    return {
        "run_dir": str(run_dir),
        "split": split,
        **accuracy(episodes),
        "n": len(episodes),
        "top_features": feature_usage(episodes, comps, 10),
    }


@hydra.main(config_path=CONF_DIR, config_name="eval", version_base=None)
@exit_on_error
def main(cfg: DictConfig) -> None:
    if not cfg.run_dir:
        raise CRLError("crl eval needs run_dir=<a run directory>")
    print(json.dumps(evaluate_run(Path(cfg.run_dir), cfg.split, cfg.seed), indent=2))
