"""Branch points: on the planted task only step 0 decides the outcome."""

from __future__ import annotations

import dataclasses

import numpy as np

from crl.analysis.replay.branch_points import BranchConfig, aggregate, branch_points, find_branch_points
from crl.config import SteeringConfig
from tests.analysis.replay.planted import D_SAE, PLANTED, CuePolicy


def test_branch_points_are_at_step_zero(comps):
    wrong = {comps.splits["test"][0].id}
    trials = find_branch_points(comps, CuePolicy(comps, wrong), BranchConfig(n_alternatives=1))
    assert trials["prefix_match"].all()
    bp = branch_points(trials)
    assert set(bp["step"]) == {0} and len(bp) == 8  # every prompt branches at its first token only
    assert bp.set_index("prompt_id").loc[next(iter(wrong)), "flip"] == "to_correct"
    assert (bp["flip"] == "to_incorrect").sum() == 7
    agg = aggregate(trials, "planted").set_index("step")
    assert agg.loc[0, "n_branch_points"] == 8 and agg.loc[1, "n_branch_points"] == 0
    assert agg.loc[1, "flip_rate"] == 0.0


class _LevelPolicy:
    """Two levels (amplify, suppress): amplifies the prompt's planted feature at step 0 (suppresses it on `wrong`
    prompts), then no steering (the last action, 2 * d_sae); logs the planted feature at the other level as the
    next-best alternative at step 0, the other planted feature suppressed at step 1."""

    def __init__(self, comps, wrong: set[str]):
        self.cls = {e.id: e.meta["cls"] for split in comps.splits.values() for e in split}
        self.wrong = wrong

    def act(self, obs, info):
        n = len(obs)
        actions, alts = np.full(n, 2 * D_SAE), [[]] * n
        for r in np.flatnonzero(info["active"]):
            pid = info["prompt_id"][r].split("#")[0]
            alts[r] = [D_SAE + PLANTED[1 - self.cls[pid]]]
            if info["step"][r] == 0:
                plus, minus = PLANTED[self.cls[pid]], D_SAE + PLANTED[self.cls[pid]]
                actions[r], alts[r] = (minus, [plus]) if pid in self.wrong else (plus, [minus])
        zeros = np.zeros(n, np.float32)
        return actions, {"value": zeros, "logprob": zeros, "top_alternatives": alts}


def test_branch_points_read_actions_in_the_runs_layout(comps, monkeypatch):
    """Two levels: an action id is level * d_sae + feature and the no-op is 2 * d_sae. "No steer" replays no
    steering, the policy's prefix is replayed at the level it chose, its own action is told apart from the same
    feature at the other level, the static feature is replayed at the level nearest its coefficient, and actions are
    labelled with their sign."""
    import crl.analysis.replay.branch_points as bp_mod

    two = dataclasses.replace(comps, steering=SteeringConfig(coef=4.0, coef_levels=[1.0, -1.0]))
    test = two.splits["test"]
    wrong = {test[0].id}
    scripts: dict[str, list[int]] = {}
    real = bp_mod.rollout

    def spy(*args, **kw):
        scripts.update(kw.get("scripts") or {})
        return real(*args, **kw)

    monkeypatch.setattr(bp_mod, "rollout", spy)
    cfg = BranchConfig(n_alternatives=1, static_feature=3, static_coef=-6.0)  # nearest level: -1 (coefficient -4)
    trials = find_branch_points(two, _LevelPolicy(two, wrong), cfg)
    first = trials[trials["step"] == 0].set_index("prompt_id")
    for ex in test:
        f = PLANTED[ex.meta["cls"]]
        replayed = {tuple(s) for pid, s in scripts.items() if pid.split("#")[0] == ex.id and len(s) == 1}
        if ex.id in wrong:  # the policy suppressed f (action d_sae + f): amplifying it (action f) is an alternative
            assert replayed == {(2 * D_SAE,), (f,), (D_SAE + 3,)}  # "no steer" is the last action, 2 * d_sae
            own, other = f"−{f}", f"+{f}"
        else:
            assert replayed == {(2 * D_SAE,), (D_SAE + f,), (D_SAE + 3,)}
            own, other = f"+{f}", f"−{f}"
        rows = first.loc[[ex.id]]
        assert (rows["action"] == own).all() and (rows["feature"] == f).all()
        assert list(rows["alternative"]) == ["no steer", other, "−3"]
    assert trials["prefix_match"].all()  # step 1 replays step 0 at the level the policy chose
    bp = branch_points(trials[trials["alt_kind"] != "static"]).set_index("prompt_id")  # −3 also flips at step 1
    assert set(bp["step"]) == {0} and len(bp) == len(test)
    f = PLANTED[test[0].meta["cls"]]  # suppressing it was wrong: amplifying it is the missed fix
    assert tuple(bp.loc[test[0].id, ["flip", "action", "alternatives"]]) == ("to_correct", f"−{f}", f"+{f}")
    assert (bp.drop(test[0].id)["flip"] == "to_incorrect").all()
