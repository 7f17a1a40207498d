"""Greedy evaluation of a policy on a split, and of a trained run (`crl eval run_dir=... split=test`).

`evaluate_run` rebuilds model, SAE and task from the run's own config.yaml, loads policy.pt (or the last
checkpoint), checks the SAE is the one the policy was trained on, and appends `eval:<split>` rows to the
run's logs.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from crl.envs.rollout import ActionPolicy, Episode, NoSteer, accuracy, run_episodes
from crl.envs.tasks.base import Example
from crl.errors import CRLError
from crl.logs import schema
from crl.logs.reader import read_jsonl
from crl.logs.schema import Phase, RunInfo
from crl.logs.writer import RunWriter
from crl.run.components import Components, build, saved_config


def evaluate(comps: Components, split: str | list[Example], agent: ActionPolicy | None, seed: int) -> list[Episode]:
    """Every example of `split` (a split name or a list) once with `agent` (None: no steering), eval masking."""
    examples = comps.splits[split] if isinstance(split, str) else split
    env = comps.env(examples, comps.masker(for_eval=True), seed)
    try:
        return run_episodes(env, examples, agent if agent is not None else NoSteer(env))
    finally:
        env.close()


def feature_usage(episodes: list[Episode], comps: Components, top: int) -> list[dict[str, Any]]:
    """The `top` most chosen features: count, share of all decisions, mean episode reward, Neuronpedia link."""
    counts: Counter[int] = Counter()
    rewards: dict[int, list[float]] = {}
    for ep in episodes:
        for f in ep.features:
            counts[f] += 1
            rewards.setdefault(f, []).append(ep.reward)
    total = max(1, sum(counts.values()))
    return [
        {
            "feature": f,
            "count": c,
            "share": c / total,
            "mean_reward": float(np.mean(rewards[f])),
            "neuronpedia_url": comps.sae.neuronpedia_url(f) if f >= 0 else None,
        }
        for f, c in counts.most_common(top)
    ]


def evaluate_run(run_dir: Path, split: str = "test", seed: int | None = None) -> dict[str, Any]:
    """Re-evaluate a trained run greedily on `split`, append its `eval:<split>` rows; returns the accuracy."""
    if not (run_dir / schema.CONFIG_YAML).exists() or not (run_dir / schema.RUN_JSON).exists():
        raise CRLError(
            f"run_dir={run_dir} is not a CRL run directory (needs {schema.CONFIG_YAML} and {schema.RUN_JSON})"
        )
    cfg = saved_config(run_dir)
    saved = RunInfo.read(run_dir)
    comps = build(cfg, splits=("train", split) if split != "train" else ("train",))
    comps.check_identity(saved, run_dir, keys=("sae_identity",))
    agent = comps.load_policy(run_dir, greedy=True)
    episodes = evaluate(comps, split, agent, cfg.seed if seed is None else seed)
    # Fresh episode ids: a re-evaluation must not repeat the (phase, update, episode) keys of earlier ones.
    first = 1 + max((r["episode"] for r in read_jsonl(run_dir / schema.EPISODES)), default=-1)
    writer = RunWriter(run_dir)
    try:
        writer.append_episodes(episodes, run_dir.name, Phase.eval(split), cfg.ppo.total_updates, first)
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
