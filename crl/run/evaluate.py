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

from crl.cards.store import find_cards
from crl.envs.rollout import ActionPolicy, Episode, NoSteer, accuracy
from crl.envs.tasks.base import Example
from crl.errors import CRLError
from crl.logs import schema
from crl.logs.reader import read_jsonl
from crl.logs.schema import Phase, RunInfo
from crl.logs.writer import RunWriter
from crl.run.components import Components, build, rollouts, saved_config, with_greedy_rule


def evaluate(
    comps: Components,
    split: str | list[Example],
    agent: ActionPolicy | None,
    seed: int,
    progress: str | None = None,
    reward: str = "exact",
) -> list[Episode]:
    """Every example of `split` (a split name or a list) once with `agent` (None: no steering), eval masking.
    `progress`: the phase's name in progress lines on stderr (none when None). `reward`: the episodes' reward
    (task.reward; evaluations keep the default, the verifier's 0/1)."""
    examples = comps.splits[split] if isinstance(split, str) else split
    env = comps.env(examples, comps.masker(for_eval=True), seed, reward=reward)
    try:
        return rollouts(env, examples, agent if agent is not None else NoSteer(env), progress)
    finally:
        env.close()


# Where a run's report puts a feature's card, from the run directory (crl.analysis.report.cards writes it).
CARD_HREF = "analysis/cards.html#feature-{feature}"


def feature_usage(episodes: list[Episode], comps: Components, top: int) -> list[dict[str, Any]]:
    """The `top` most chosen features: count, share of all decisions, mean episode reward, the heuristic label
    and card link when the SAE has feature cards (shipped or cached; None otherwise: nothing is built here,
    a build takes minutes), and the Neuronpedia link."""
    counts: Counter[int] = Counter()
    rewards: dict[int, list[float]] = {}
    for ep in episodes:
        for f in ep.features:
            counts[f] += 1
            rewards.setdefault(f, []).append(ep.reward)
    total = max(1, sum(counts.values()))
    cards = find_cards(comps.sae.identity, comps.lm.name)
    has_card = lambda f: cards is not None and 0 <= f < cards.d_sae
    return [
        {
            "feature": f,
            "label": "no steer" if f < 0 else cards.label(f) if has_card(f) else None,
            "card": CARD_HREF.format(feature=f) if has_card(f) else None,
            "count": c,
            "share": c / total,
            "mean_reward": float(np.mean(rewards[f])),
            "neuronpedia_url": comps.sae.neuronpedia_url(f) if f >= 0 else None,
        }
        for f, c in counts.most_common(top)
    ]


def evaluate_run(
    run_dir: Path, split: str = "test", seed: int | None = None, greedy_rule: str | None = None
) -> dict[str, Any]:
    """Re-evaluate a trained run greedily on `split`, append its `eval:<split>` rows; returns the accuracy.
    `greedy_rule`: how the greedy policy picks (policy.greedy_rule); None: the run's own."""
    if not (run_dir / schema.CONFIG_YAML).exists() or not (run_dir / schema.RUN_JSON).exists():
        raise CRLError(
            f"run_dir={run_dir} is not a CRL run directory (needs {schema.CONFIG_YAML} and {schema.RUN_JSON})"
        )
    cfg = with_greedy_rule(saved_config(run_dir), greedy_rule)
    saved = RunInfo.read(run_dir)
    comps = build(cfg, splits=("train", split) if split != "train" else ("train",))
    comps.check_identity(saved, run_dir, keys=("sae_identity",))
    agent = comps.load_policy(run_dir, greedy=True)
    episodes = evaluate(comps, split, agent, cfg.seed if seed is None else seed, progress=f"eval {split}")
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
        "greedy_rule": comps.policy.greedy_rule,
        **accuracy(episodes),
        "n": len(episodes),
        "top_features": feature_usage(episodes, comps, 10),
    }
