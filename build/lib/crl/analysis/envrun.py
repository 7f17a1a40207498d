"""Shared plumbing for the environment-dependent analyses (part B): rebuild a run's components and policy,
run episodes, and turn them into the run-directory rows that part A reads.

Everything here works on `crl.components.Components` and `envs.rollout.run_episodes`; nothing is trained.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from crl.errors import CRLError
from crl.logs import schema

if TYPE_CHECKING:  # importing these at run time pulls in torch and transformers
    from crl.components import Components
    from crl.envs.rollout import ActionPolicy, Episode
    from crl.envs.tasks.base import Example


def load_components(run_dir: str | Path) -> Components:
    """Rebuild model, SAE, task and splits from a run's resolved config.yaml."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from crl.components import build

    path = Path(run_dir) / schema.CONFIG_YAML
    if not path.exists():
        raise CRLError(f"'{run_dir}' has no {schema.CONFIG_YAML}; pass a run directory written by `crl train`")
    try:
        comps = build(OmegaConf.load(path))
    except OmegaConfBaseException as e:
        raise CRLError(
            f"{path} cannot be rebuilt ({str(e).splitlines()[0]}); it is not a full `crl train` config"
        ) from None
    saved = json.loads((Path(run_dir) / schema.RUN_JSON).read_text(encoding="utf-8")).get("sae_identity")
    if saved is not None and comps.sae.identity != saved:
        raise CRLError(
            f"the SAE loaded now ({comps.sae.identity}) is not the one run '{run_dir}' trained on "
            f"({saved}); feature ids would not match, rebuild that SAE first"
        )
    return comps


def load_policy(comps: Components, run_dir: str | Path, greedy: bool = True, n_alternatives: int = 3) -> Any:
    """The trained policy of a run (policy.pt, else the last checkpoint) as a greedy `PolicyAgent`."""
    import torch

    from crl.policy import ActorCritic
    from crl.ppo import PolicyAgent

    net = ActorCritic(comps.lm.d_model, comps.sae.directions(), comps.steering.allow_noop, comps.policy)
    p = Path(run_dir)
    if (p / "policy.pt").exists():
        state = torch.load(p / "policy.pt", map_location="cpu", weights_only=True)
    elif (p / schema.CHECKPOINT).exists():
        state = torch.load(p / schema.CHECKPOINT, map_location="cpu", weights_only=False)["policy"]
    else:
        raise CRLError(f"run '{run_dir}' has neither policy.pt nor {schema.CHECKPOINT}; train it first")
    net.load_state_dict(state, strict=False)
    net.eval()
    return PolicyAgent(net, greedy=greedy, n_alternatives=n_alternatives)


def rollout(
    comps: Components,
    examples: list[Example],
    policy: ActionPolicy | None,
    seed: int = 0,
    masker: Any = None,
    num_envs: int | None = None,
    **steering: Any,
) -> list[Episode]:
    """Run every example once; `policy=None` means no steering. Steering overrides (e.g. coef) apply."""
    from crl.envs.rollout import NoSteer, run_episodes
    from crl.envs.steering_env import SteeringVecEnv

    cfg = dataclasses.replace(comps.steering, **steering)
    n = max(1, min(num_envs or comps.ppo.num_envs, len(examples)))
    env = SteeringVecEnv(comps.lm, comps.sae, comps.task, examples, cfg, n, seed=seed, masker=masker)
    try:
        return run_episodes(env, examples, policy if policy is not None else NoSteer(env))
    finally:
        env.close()


def tagged(examples: list[Example], tag: str) -> list[Example]:
    """Copies with ids `<id>#<tag>`, so several variants of one prompt can share a batch (`Scripted` is
    keyed by prompt id). `base_id` recovers the original."""
    return [dataclasses.replace(e, id=f"{e.id}#{tag}") for e in examples]


def base_id(prompt_id: str) -> str:
    return prompt_id.split("#", 1)[0]


def episode_frames(
    episodes: list[Episode], phase: str, seed: int = 0, run: str = "analysis"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(episodes, steps) DataFrames in the columns `crl.analysis.rundir` produces (for `stats`)."""
    eps, steps = [], []
    for i, ep in enumerate(episodes):
        pid = base_id(ep.example.id)
        key = {"run": run, "phase": phase, "update": 0, "seed": seed, "episode": i, "prompt_id": pid}
        eps.append(
            {
                **key,
                "reward": float(ep.reward),
                "correct": bool(ep.correct),
                "well_formed": bool(ep.well_formed),
                "n_steps": len(ep.steps),
                "meta": dict(ep.example.meta),
            }
        )
        for s in ep.steps:
            steps.append(
                {
                    **key,
                    **{k: s.get(k) for k in ("step", "position", "token", "feature", "coef")},
                    "value": float(s.get("value", 0.0)),
                }
            )
    return pd.DataFrame(eps), pd.DataFrame(steps)


def episode_rows(
    episodes: list[Episode], run: str, phase: str, seed: int | None, first_episode: int = 0, update: int = 0
) -> tuple[list[dict], list[dict]]:
    """InterventionRow and EpisodeRow dicts (crl.logs.schema) for appending to a run directory."""
    inter, eps = [], []
    for j, ep in enumerate(episodes):
        eid = first_episode + j
        pid = base_id(ep.example.id)
        for s in ep.steps:
            inter.append(
                schema.InterventionRow(
                    run=run,
                    phase=phase,
                    update=update,
                    episode=eid,
                    prompt_id=pid,
                    step=s["step"],
                    position=s["position"],
                    token_id=s["token_id"],
                    token=s["token"],
                    feature=s["feature"],
                    coef=s["coef"],
                    logprob=float(s.get("logprob", 0.0)),
                    value=float(s.get("value", 0.0)),
                    feature_act=s["feature_act"],
                    resid_norm=s["resid_norm"],
                    top_alternatives=[int(a) for a in s.get("top_alternatives", [])],
                    reward=ep.reward,
                    correct=ep.correct,
                    well_formed=ep.well_formed,
                ).to_dict()
            )
        meta = {**ep.example.meta, **({"seed": seed} if seed is not None else {})}
        eps.append(
            schema.EpisodeRow(
                run,
                phase,
                update,
                eid,
                pid,
                ep.completion,
                ep.example.answer,
                ep.reward,
                ep.correct,
                ep.well_formed,
                len(ep.steps),
                meta,
            ).to_dict()
        )
    return inter, eps


def append_rows(run_dir: str | Path, inter: list[dict], eps: list[dict]) -> None:
    """Append rows to a run's interventions.jsonl / episodes.jsonl (the logs are append-only)."""
    from crl.logs.run_dir import RunWriter

    writer = RunWriter(Path(run_dir))
    try:
        writer.append(schema.INTERVENTIONS, inter)
        writer.append(schema.EPISODES, eps)
        writer.flush()
    finally:
        writer.close()


def accuracy(episodes: list[Episode]) -> float:
    return float(np.mean([e.correct for e in episodes])) if episodes else float("nan")
