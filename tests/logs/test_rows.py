"""`episode_rows`: the one builder of intervention and episode rows."""

from __future__ import annotations

import json

from crl.envs.rollout import Episode
from crl.envs.tasks.base import Example
from crl.logs import schema
from crl.logs.rows import episode_rows
from crl.logs.schema import EpisodeRow, InterventionRow, Phase


def _step(t: int, feature: int) -> dict:
    return {
        "step": t,
        "position": 10 + t,
        "token_id": 100 + t,
        "token": f"t{t}",
        "feature": feature,
        "coef": 0.5,
        "feature_act": 0.25,
        "resid_norm": 2.0,
    }


def _episodes() -> list[Episode]:
    a = Episode(Example("p1#v", "q1", "7", {"cls": 1}), "7", 1.0, True, True, "eos", [_step(0, 3), _step(1, -1)])
    a.steps[0].update(logprob=-0.5, value=0.75, top_alternatives=[4, 5])
    b = Episode(Example("p2", "q2", "8"), "x", 0.0, False, False, "max_new_tokens", [_step(0, 2)])
    return [a, b]


def test_rows_follow_the_schema():
    inter, eps = episode_rows(_episodes(), "run1", Phase.eval("test"), update=5, first_episode=10)
    # `abstained` only where the policy has an abstention rule (policy.abstain), so rows without it are as before
    assert [set(r) for r in inter] == [{f for f in InterventionRow.__dataclass_fields__} - {"abstained"}] * 3
    assert [set(r) for r in eps] == [{f for f in EpisodeRow.__dataclass_fields__}] * 2
    assert {r["phase"] for r in inter + eps} == {"eval:test"} and {r["update"] for r in inter + eps} == {5}
    assert [r["episode"] for r in inter] == [10, 10, 11] and [r["episode"] for r in eps] == [10, 11]
    first = inter[0]
    assert (first["logprob"], first["value"], first["top_alternatives"]) == (-0.5, 0.75, [4, 5])
    assert (inter[1]["logprob"], inter[1]["value"], inter[1]["top_alternatives"]) == (0.0, 0.0, [])
    assert first["reward"] == 1.0 and first["correct"] and not inter[2]["well_formed"]
    assert eps[0]["n_steps"] == 2 and eps[0]["answer"] == "7" and eps[0]["meta"] == {"cls": 1}
    json.dumps(inter + eps)  # plain JSON types only


def test_rows_say_where_an_abstention_rule_forced_no_steering():
    episodes = _episodes()
    for ep in episodes:
        for s in ep.steps:
            s["abstained"] = s["feature"] < 0
    inter, _ = episode_rows(episodes, "run1", Phase.eval("test"))
    assert [r["abstained"] for r in inter] == [False, True, False]


def test_phase_strings_seed_and_prompt_ids():
    inter, eps = episode_rows(_episodes(), "r", "baseline:none:test", seed=3, prompt_id=lambda s: s.split("#")[0])
    assert eps[0]["phase"] == str(Phase.baseline("none", "test"))
    assert [e["meta"]["seed"] for e in eps] == [3, 3] and eps[0]["meta"]["cls"] == 1
    assert [r["prompt_id"] for r in inter] == ["p1", "p1", "p2"] and eps[0]["prompt_id"] == "p1"
    inter, eps = episode_rows(_episodes(), "r", Phase.train())
    assert "seed" not in eps[0]["meta"] and inter[0]["prompt_id"] == "p1#v"
    assert inter[1]["feature"] == schema.NO_STEER
