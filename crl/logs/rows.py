"""Episodes -> log rows: the one place that turns rollouts into `InterventionRow` / `EpisodeRow` dicts.

`crl train`, `crl eval` and the replay analyses all write through `episode_rows`, so a run directory has
one row format whoever wrote it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from crl.logs.schema import EpisodeRow, InterventionRow, Phase

if TYPE_CHECKING:  # the rollout module pulls in torch
    from crl.envs.rollout import Episode


def episode_rows(
    episodes: list[Episode],
    run: str,
    phase: Phase | str,
    update: int = 0,
    first_episode: int = 0,
    seed: int | None = None,
    prompt_id: Callable[[str], str] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(intervention rows, one per steered token; episode rows, one per episode), as dicts.

    Episode ids count up from `first_episode`. `seed`, when given, is recorded in each episode's meta (several
    seeds of one phase in one run). `prompt_id` maps an example id to the logged prompt id (e.g. strips a
    variant tag); by default the id is logged as is.
    """
    phase = str(phase)
    inter: list[dict[str, Any]] = []
    eps: list[dict[str, Any]] = []
    for j, ep in enumerate(episodes):
        eid = first_episode + j
        pid = prompt_id(ep.example.id) if prompt_id is not None else ep.example.id
        for s in ep.steps:
            inter.append(
                InterventionRow(
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
                    abstained=None if s.get("abstained") is None else bool(s["abstained"]),
                ).to_dict()
            )
        meta = {**ep.example.meta, **({"seed": seed} if seed is not None else {})}
        eps.append(
            EpisodeRow(
                run=run,
                phase=phase,
                update=update,
                episode=eid,
                prompt_id=pid,
                completion=ep.completion,
                answer=ep.example.answer,
                reward=ep.reward,
                correct=ep.correct,
                well_formed=ep.well_formed,
                n_steps=len(ep.steps),
                meta=meta,
            ).to_dict()
        )
    return inter, eps
