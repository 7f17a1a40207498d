"""Branch points: decisions where another action would have flipped the episode's final correctness.

For each eval prompt the trained policy's greedy episode is replayed: at step t the policy's own actions are
kept for steps < t (greedy decoding makes that the same state), one alternative is taken at t, and the
policy decides again from t+1 on. Alternatives at t: no steering, the policy's next-best actions at t
(`top_alternatives`, as logged), and optionally the best static feature (at the run's level nearest the coefficient
it was selected with). A *branch point* is a (prompt, t) where some alternative flips final correctness:
"to_incorrect" when the policy was right and the alternative wrong (the policy's choice mattered), "to_correct" when
the policy was wrong and the alternative right (a missed fix). `prefix_match` checks that the replay reproduced the
original tokens before t.

Actions are the environment's ids in the run's own layout (`runner.action_id`, `runner.action_parts`): level index *
d_sae + feature, the no-op last, so a feature is replayed at the level the policy chose. The tables show an action
as `runner.action_label` writes it ("+12", "−12", "no steer"); `feature` is the policy's feature id (NO_STEER for
no steering), for the report's labels and card links.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from crl.analysis.offline.features import SYNTACTIC_TYPES, token_type
from crl.analysis.replay import announce
from crl.analysis.replay.runner import action_id, action_label, base_id, noop_action, rollout, tagged
from crl.errors import CRLError

if TYPE_CHECKING:
    from crl.envs.rollout import Episode
    from crl.envs.tasks.base import Example
    from crl.run.components import Components


# Columns of the trial table (`find_branch_points`) and of the branch-point table (`branch_points`).
_STEP_COLUMNS = ["prompt_id", "step", "position", "token", "token_type", "feature", "action"]
TRIAL_COLUMNS = [
    *_STEP_COLUMNS,
    "alternative",
    "alt_kind",
    "policy_correct",
    "alt_correct",
    "flipped",
    "flip",
    "prefix_match",
]
BRANCH_COLUMNS = [*_STEP_COLUMNS, "flip", "alternatives"]


@dataclass
class BranchConfig:
    split: str = "test"
    n_alternatives: int = 2  # policy's next-best actions tried per step
    include_noop: bool = True
    static_feature: int | None = None
    static_coef: float | None = None  # the coefficient it was selected with: replayed at the nearest level (None: 0)
    max_steps: int = 16  # steps per episode that are branched
    max_prompts: int = 64
    num_envs: int | None = None


def _own(comps: Components, rec: dict[str, Any]) -> int:
    """The action id the policy took at a step, from its record's feature and coefficient."""
    return action_id(comps, rec["feature"], rec["coef"])


def _static_action(comps: Components, cfg: BranchConfig) -> int:
    """The static feature's action id: at the run's level whose coefficient is nearest `static_coef` (level 0
    without one)."""
    level = 0
    if cfg.static_coef is not None:
        coefs = [float(comps.steering.coef) * float(lv) for lv in comps.steering.coef_levels]
        level = min(range(len(coefs)), key=lambda i: abs(coefs[i] - float(cfg.static_coef)))
    return level * comps.sae.d_sae + int(cfg.static_feature)


def _alternatives(comps: Components, rec: dict[str, Any], cfg: BranchConfig) -> list[tuple[int, str]]:
    own = _own(comps, rec)
    alts: list[tuple[int, str]] = []
    if cfg.include_noop and comps.steering.allow_noop:
        alts.append((noop_action(comps), "no_steer"))
    alts += [(int(a), "next_best") for a in list(rec.get("top_alternatives") or [])[: cfg.n_alternatives]]
    if cfg.static_feature is not None:
        alts.append((_static_action(comps, cfg), "static"))
    seen, out = {own}, []
    for a, kind in alts:
        if a not in seen:
            seen.add(a)
            out.append((a, kind))
    return out


def find_branch_points(
    comps: Components, policy: Any, cfg: BranchConfig | None = None, examples: list[Example] | None = None
) -> pd.DataFrame:
    """Every (prompt, step, alternative) trial; see the module docstring. Filter `flipped` for branch points.

    Columns: prompt_id, step, position, token, token_type, feature, action, alternative, alt_kind, policy_correct,
    alt_correct, flipped, flip, prefix_match; actions and alternatives as `runner.action_label` writes them.
    """
    cfg = cfg or BranchConfig()
    if not comps.steering.greedy:
        raise CRLError(
            "branch points need greedy decoding (steering.greedy=true) so a replayed prefix reaches the same state"
        )
    examples = (examples if examples is not None else comps.splits[cfg.split])[: cfg.max_prompts]
    with announce.phase(
        "branch points",
        f"the policy's episodes on {len(examples)} {cfg.split} prompts, then one replay per alternative at each of "
        f"their first {cfg.max_steps} steps",
        len(examples),
    ) as ph:
        return _trials(comps, policy, cfg, examples, ph)


def _trials(
    comps: Components, policy: Any, cfg: BranchConfig, examples: list[Example], ph: announce.Phase
) -> pd.DataFrame:
    """`find_branch_points` inside its phase (`ph` counts the replays)."""
    originals = rollout(
        comps, examples, policy, masker=comps.masker(for_eval=True), num_envs=cfg.num_envs, progress="policy episodes"
    )
    variants: list[Example] = []
    scripts: dict[str, list[int]] = {}
    trials: dict[str, dict[str, Any]] = {}
    for ex, ep in zip(examples, originals, strict=True):
        prefix = [_own(comps, s) for s in ep.steps]
        for t, rec in enumerate(ep.steps[: cfg.max_steps]):
            for alt, kind in _alternatives(comps, rec, cfg):
                (v,) = tagged([ex], f"t{t}a{alt}")
                variants.append(v)
                scripts[v.id] = [*prefix[:t], alt]
                trials[v.id] = {
                    "prompt_id": ex.id,
                    "step": t,
                    "position": rec["position"],
                    "token": rec["token"],
                    "feature": rec["feature"],
                    "action": action_label(comps, prefix[t]),
                    "alternative": action_label(comps, alt),
                    "alt_kind": kind,
                    "policy_correct": bool(ep.correct),
                    "_orig": ep,
                }
    if not variants:
        return pd.DataFrame(columns=TRIAL_COLUMNS)
    ph.add(len(variants))
    replays = rollout(
        comps, variants, policy, masker=comps.masker(for_eval=True), num_envs=cfg.num_envs, scripts=scripts,
        progress=f"{len(variants)} alternatives replayed",
    )  # fmt: skip
    rows = []
    for v, rep in zip(variants, replays, strict=True):
        tr = trials[v.id]
        orig: Episode = tr.pop("_orig")
        t = tr["step"]
        match = [s["token_id"] for s in rep.steps[:t]] == [s["token_id"] for s in orig.steps[:t]]
        flipped = bool(rep.correct) != tr["policy_correct"]
        flip = ("to_incorrect" if tr["policy_correct"] else "to_correct") if flipped else ""
        rows.append(
            {
                **tr,
                "prompt_id": base_id(tr["prompt_id"]),
                "token_type": token_type(str(tr["token"])),
                "alt_correct": bool(rep.correct),
                "flipped": flipped,
                "flip": flip,
                "prefix_match": match,
            }
        )
    return pd.DataFrame(rows)


def branch_points(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per (prompt, step) with at least one flipping alternative; which alternatives flipped."""
    flips = trials[trials["flipped"]]
    if flips.empty:
        return pd.DataFrame(columns=BRANCH_COLUMNS)
    g = flips.groupby(["prompt_id", "step"], sort=True)
    out = g.agg(
        position=("position", "first"),
        token=("token", "first"),
        token_type=("token_type", "first"),
        feature=("feature", "first"),
        action=("action", "first"),
        flip=("flip", "first"),
        alternatives=("alternative", lambda s: ", ".join(str(a) for a in s)),
    )
    return out.reset_index()


def aggregate(trials: pd.DataFrame, task: str = "") -> pd.DataFrame:
    """Per task and step: trials, prompts with a branch point, and the flip rate; plus the syntactic share of
    the tokens at branch points."""
    if trials.empty:
        return pd.DataFrame(columns=["task", "step", "n_trials", "n_branch_points", "flip_rate", "syntactic_share"])
    bp = branch_points(trials)
    per = trials.groupby("step").agg(n_trials=("flipped", "size"), flip_rate=("flipped", "mean"))
    per["n_branch_points"] = bp.groupby("step").size().reindex(per.index, fill_value=0)
    syn = bp.assign(s=bp["token_type"].isin(SYNTACTIC_TYPES)).groupby("step")["s"].mean()
    per["syntactic_share"] = syn.reindex(per.index)
    return per.reset_index().assign(task=task)[
        ["task", "step", "n_trials", "n_branch_points", "flip_rate", "syntactic_share"]
    ]
