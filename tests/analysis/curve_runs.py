"""Synthetic finished `crl train` and `crl grpo` run directories with known val curves, for the curves tests (no model).

Val prompts v0..v{n_val-1}: an evaluation with k correct has v0..v{k-1} right (so every curve is nested in the base's
and per-prompt pairing is known). Each update (CRL) or round (GRPO) logs `per_update` training episodes and, in
metrics.jsonl, its seconds (GRPO: `steps_per_round` optimizer steps of seconds / steps_per_round each).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crl.logs.schema import FORMAT_VERSION, EpisodeRow

CRL_CURVE = {0: 10, 4: 12, 8: 14, 12: 14}  # of 20 val prompts: 0.5, 0.6, 0.7, 0.7
GRPO_CURVE = {0: 10, 4: 14, 8: 18, 12: 18}  # 0.5, 0.7, 0.9, 0.9


@dataclass
class CurveRun:
    method: str = "crl"  # "crl" or "grpo"
    seed: int = 0
    val: dict[int, int] = field(default_factory=lambda: dict(CRL_CURVE))  # update -> correct val prompts
    n_val: int = 20
    updates: int = 12
    per_update: int = 128
    seconds: float = 10.0  # per update / round
    steps_per_round: int = 2  # GRPO's optimizer steps per round
    n_test: int = 20
    test_before: int | None = 8  # None: no baseline:none:test (eval_before=false)
    test_after: int = 12
    task: str = "arith"
    model: str = "tiny-llama"
    timings: bool = True  # False: metrics rows without the seconds key
    finished: bool = True


def _row(run: str, phase: str, update: int, episode: int, prompt: str, correct: bool) -> dict[str, Any]:
    r = float(correct)
    return EpisodeRow(run, phase, update, episode, prompt, "x", "y", r, correct, True, 1, {}).to_dict()


def write_curve_run(path: str | Path, spec: CurveRun | None = None) -> Path:
    s = spec or CurveRun()
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    name = p.name
    info: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "run": name,
        "model": s.model,
        "sae_identity": "default|blocks.6.hook_resid_post|d_sae=64",
        "task": s.task,
        "layer": 6,
        "hook_name": "blocks.6.hook_resid_post",
        "d_sae": 64,
        "seed": s.seed,
        "coef": 4.0,
    }
    if s.method == "grpo":
        info["method"] = "grpo"
    (p / "run.json").write_text(json.dumps(info))
    config = "grpo:\n  eval_every: 4\n" if s.method == "grpo" else "run:\n  val_split: val\n  eval_every: 4\n"
    (p / "config.yaml").write_text(config + f"seed: {s.seed}\n")
    rows, ep = [], 0
    for u in range(s.updates):
        for _ in range(s.per_update):
            rows.append(_row(name, "train", u, ep, f"t{ep % 50}", ep % 3 == 0))
            ep += 1
    for u, k in sorted(s.val.items()):
        rows += [_row(name, "eval:val", u, i, f"v{i}", i < k) for i in range(s.n_val)]
    if s.test_before is not None:
        rows += [_row(name, "baseline:none:test", 0, i, f"q{i}", i < s.test_before) for i in range(s.n_test)]
    chosen = max(s.val, key=lambda u: (s.val[u], -u))
    rows += [_row(name, "eval:test", chosen, i, f"q{i}", i < s.test_after) for i in range(s.n_test)]
    (p / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (p / "interventions.jsonl").write_text("")
    metrics = []
    if s.method == "grpo":
        for rnd in range(1, s.updates + 1):
            for k in range(s.steps_per_round):
                step = (rnd - 1) * s.steps_per_round + k + 1
                row: dict[str, Any] = {"step": step, "round": rnd, "update": rnd - 1, "rollouts": rnd * s.per_update}
                if s.timings:
                    row["speed/step_seconds"] = s.seconds / s.steps_per_round
                metrics.append(row)
    else:
        for u in range(s.updates):
            row = {"update": u, "global_step": (u + 1) * s.per_update}
            if s.timings:
                row["charts/update_seconds"] = s.seconds
            metrics.append(row)
    (p / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    if s.finished:
        n_before = s.n_test if s.test_before is not None else 0
        summary = {
            "format_version": FORMAT_VERSION,
            "run": name,
            "split": "test",
            "before": {"accuracy": (s.test_before or 0) / s.n_test, "n": n_before},
            "after": {"accuracy": s.test_after / s.n_test, "n": s.n_test},
            "selection": {"val_curve": [{"update": u, "accuracy": k / s.n_val} for u, k in sorted(s.val.items())]},
        }
        if s.method == "grpo":
            summary["method"] = "grpo"
        (p / "summary.json").write_text(json.dumps(summary))
    return p


def grpo(**kw: Any) -> CurveRun:
    """A GRPO run: GRPO_CURVE, 6 s a round, test 8 -> 16 of 20."""
    return CurveRun(**{"method": "grpo", "val": dict(GRPO_CURVE), "seconds": 6.0, "test_after": 16, **kw})
