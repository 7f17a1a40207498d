"""Synthetic run directories with known answers, for the analysis tests (no model needed).

Design (all deterministic): prompts p0..p{n-1}. The no-steering baseline is correct on the first
`round(base_acc * n)` prompts; the trained policy on the first `round(crl_acc * n)` except prompt p0
(one "misguided" prompt when the baseline had it right). Correct policy episodes choose `main_feature` at
steps 0..main_steps-1, then `other_feature`, then no steering; incorrect ones choose `other_feature` at step
0 and no steering after. Tokens per step come from `tokens`. Values track the reward (value_mode="track":
0.1 + 0.8 * reward, plus a small step-dependent term; "corrected" episodes, wrong unsteered but right
steered, instead rise 0.7, 0.75, ... by 0.05 per step) or are constant 0.5 (value_mode="constant").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crl.logs.schema import FORMAT_VERSION, NO_STEER, EpisodeRow, InterventionRow


@dataclass
class SyntheticSpec:
    run: str = "synth"
    task: str = "arith"
    model: str = "tiny-llama"
    layer: int = 6
    seed: int = 0
    sae_identity: str | None = None  # default: "default|blocks.<layer>.hook_resid_post|d_sae=64"
    neuronpedia_id: str | None = "gemma-2-2b/6-gemmascope-res-16k"
    n_prompts: int = 40
    split: str = "test"
    crl_acc: float = 0.8
    base_acc: float = 0.4
    main_feature: int = 7
    main_steps: int = 4
    other_feature: int = 3
    tokens: tuple[str, ...] = ("The", " 4", "2", ".", "\n")
    value_mode: str = "track"
    random_seeds: tuple[int, ...] = (0, 1, 2)
    random_acc: float = 0.3
    coef_sweep: list[dict[str, float]] | None = None
    extra_summary: dict[str, Any] = field(default_factory=dict)


def _correct_sets(spec: SyntheticSpec) -> tuple[set[int], set[int]]:
    n = spec.n_prompts
    base = set(range(round(spec.base_acc * n)))
    crl = set(range(round(spec.crl_acc * n))) - {0}
    return base, crl


def _well_formed(i: int, correct: bool) -> bool:
    return correct or i % 2 == 1  # half the wrong answers are malformed


def write_run_dir(path: str | Path, spec: SyntheticSpec | None = None) -> Path:
    """Write a complete format-version-1 run directory for `spec` and return its path."""
    spec = spec or SyntheticSpec()
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    sae = spec.sae_identity or f"default|blocks.{spec.layer}.hook_resid_post|d_sae=64"
    info = {
        "format_version": FORMAT_VERSION,
        "run": spec.run,
        "model": spec.model,
        "sae_identity": sae,
        "hook_name": f"blocks.{spec.layer}.hook_resid_post",
        "layer": spec.layer,
        "d_sae": 64,
        "neuronpedia_id": spec.neuronpedia_id,
        "task": spec.task,
        "seed": spec.seed,
        "coef": 4.0,
    }
    (p / "run.json").write_text(json.dumps(info))
    (p / "config.yaml").write_text(f"task:\n  name: {spec.task}\nseed: {spec.seed}\n")
    base_set, crl_set = _correct_sets(spec)
    n_steps = len(spec.tokens)
    episodes: list[dict] = []
    steps: list[dict] = []

    def add(phase: str, ep: int, i: int, correct: bool, features: list[int], seed: int | None, value_fn) -> None:
        reward = 1.0 if correct else 0.0
        wf = _well_formed(i, correct)
        meta = {} if seed is None else {"seed": seed}
        episodes.append(
            EpisodeRow(
                spec.run,
                phase,
                10,
                ep,
                f"p{i}",
                "".join(spec.tokens),
                "42",
                reward,
                correct,
                wf,
                n_steps,
                meta,
            ).to_dict()
        )
        for t, f in enumerate(features):
            steps.append(
                InterventionRow(
                    spec.run,
                    phase,
                    10,
                    ep,
                    f"p{i}",
                    t,
                    20 + t,
                    100 + t,
                    spec.tokens[t],
                    f,
                    0.0 if f == NO_STEER else 4.0,
                    -0.5,
                    value_fn(reward, t),
                    1.0,
                    50.0,
                    [11, 12],
                    reward,
                    correct,
                    wf,
                ).to_dict()
            )

    def crl_features(correct: bool) -> list[int]:
        if correct:
            rest = [spec.other_feature] + [NO_STEER] * n_steps
            return ([spec.main_feature] * spec.main_steps + rest)[:n_steps]
        return ([spec.other_feature] + [NO_STEER] * n_steps)[:n_steps]

    track = lambda r, t: 0.1 + 0.8 * r + 0.01 * (t - 2) * (1 if r else -1)
    rising = lambda r, t: 0.7 + 0.05 * t
    ep = 0
    for i in range(spec.n_prompts):
        c = i in crl_set
        value_fn = track if c and i in base_set or not c else rising
        if spec.value_mode == "constant":
            value_fn = lambda r, t: 0.5
        add(f"eval:{spec.split}", ep, i, c, crl_features(c), None, value_fn)
        ep += 1
    for i in range(spec.n_prompts):
        add(f"baseline:none:{spec.split}", ep, i, i in base_set, [NO_STEER] * n_steps, 0, lambda r, t: 0.0)
        ep += 1
    rng = np.random.default_rng(123)
    for s in spec.random_seeds:
        for i in range(spec.n_prompts):
            c = bool(rng.random() < spec.random_acc)
            feats = [int(x) for x in rng.integers(0, 64, n_steps)]
            add(f"baseline:random:{spec.split}", ep, i, c, feats, s, lambda r, t: 0.0)
            ep += 1
    with (p / "episodes.jsonl").open("w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in episodes)
    with (p / "interventions.jsonl").open("w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in steps)
    with (p / "metrics.jsonl").open("w") as fh:
        fh.writelines(
            json.dumps({"update": u, "global_step": 64 * u, "value_loss": 1 / (u + 1)}) + "\n" for u in range(3)
        )
    summary: dict[str, Any] = {"accuracy": len(crl_set) / spec.n_prompts, **spec.extra_summary}
    if spec.coef_sweep is not None:
        summary["coef_sweep"] = spec.coef_sweep
    (p / "summary.json").write_text(json.dumps(summary))
    return p
