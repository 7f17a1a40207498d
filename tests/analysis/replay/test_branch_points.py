"""Branch points: on the planted task only step 0 decides the outcome."""

from __future__ import annotations

from crl.analysis.replay.branch_points import BranchConfig, aggregate, branch_points, find_branch_points
from tests.analysis.replay.planted import CuePolicy


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
