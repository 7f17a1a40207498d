"""Adaptive Feature Masking as `crl.agent.masking` defines it: none, active (running mean > tau or top-K), adaptive,
fixed (the listed features)."""

from __future__ import annotations

import pytest
import torch

from crl.agent.masking import FeatureMasker
from crl.agent.policy import Candidates
from crl.config import MaskingConfig
from crl.errors import CRLError

ROWS, STEPS = torch.tensor([0, 1]), torch.tensor([0, 0])


def test_none_allows_everything_plus_noop():
    m = FeatureMasker(MaskingConfig(mode="none"), d_sae=4, allow_noop=True)
    assert m(torch.zeros(2, 4), ROWS, STEPS).tolist() == [[True] * 5] * 2


def test_active_is_running_mean_above_tau_or_current_top_k():
    m = FeatureMasker(MaskingConfig(mode="active", threshold=0.5, top_k=1), d_sae=4, allow_noop=False)
    m.begin(2)
    first = m(torch.tensor([[1.0, 0.0, 0.2, 0.0], [0.0, 0.0, 0.0, 0.3]]), ROWS, STEPS)
    assert first.tolist() == [[True, False, False, False], [False, False, False, True]]
    # Row 0's running mean of feature 0 is now (1 + 0) / 2 = 0.5, not above tau; feature 2 is the top-1.
    second = m(torch.tensor([[0.0, 0.0, 0.4, 0.0], [0.0, 2.0, 0.0, 0.0]]), ROWS, STEPS + 1)
    assert second.tolist() == [[False, False, True, False], [False, True, False, False]]


def test_adaptive_masks_over_used_features_until_the_cap_relaxes():
    cfg = MaskingConfig(mode="adaptive", threshold=-1.0, top_k=1, max_share=0.25, share_decay=0.0, relax_updates=2)
    m = FeatureMasker(cfg, d_sae=4, allow_noop=True)
    assert m.cap() == 0.25
    m.observe_update(torch.tensor([1, 1, 1, -1]))  # feature 1 took 3/4 of the decisions (the no-op is not counted)
    assert m.share.tolist() == [0.0, 0.75, 0.0, 0.0] and m.cap() == pytest.approx(0.625)
    mask = m(torch.zeros(1, 4), ROWS[:1], STEPS[:1])
    assert mask.tolist() == [[True, False, True, True, True]]
    state = m.state_dict()
    m.observe_update(torch.tensor([1]))
    assert m.cap() == 1.0  # relaxed: no pressure left
    assert m(torch.zeros(1, 4), ROWS[:1], STEPS[:1]).all()
    m.load_state_dict(state)
    assert m.update == 1 and m.share[1] == 0.75


def test_bad_modes_are_errors():
    with pytest.raises(CRLError, match="masking.mode=sometimes is invalid: unknown choice"):
        FeatureMasker(MaskingConfig(mode="sometimes"), d_sae=4, allow_noop=True)
    with pytest.raises(CRLError, match="masking.top_k=0 is invalid: .*no valid action"):
        FeatureMasker(MaskingConfig(mode="active", top_k=0, threshold=1e9), d_sae=4, allow_noop=False)


def test_fixed_is_exactly_the_listed_features_at_every_level_plus_noop():
    m = FeatureMasker(MaskingConfig(mode="fixed", features=[4, 1]), d_sae=6, allow_noop=True)
    m.begin(2)
    acts = torch.tensor([[9.0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 7.0]])  # what is active does not matter
    mask = m(acts, ROWS, STEPS)
    assert mask.tolist() == [[False, True, False, False, True, False, True]] * 2
    m.observe_update(torch.tensor([4, 4, 4, 4]))  # no share cap: a feature that took every decision stays
    assert torch.equal(m(acts, ROWS, STEPS + 1), mask)
    # The environment repeats the feature columns over the levels (action id = level * d_sae + feature), so with two
    # levels the valid actions are features 1 and 4 at level 0 (1, 4) and level 1 (7, 10), and the no-op (12).
    levels, d = 2, 6
    full = torch.cat([mask[:, :d]] * levels + [mask[:, d:]], dim=1)
    assert Candidates.from_mask(full, d * levels, noop=True).ids.tolist() == [[1, 4, 7, 10, 12]] * 2
    no_noop = FeatureMasker(MaskingConfig(mode="fixed", features=[0]), d_sae=3, allow_noop=False)
    assert no_noop(torch.zeros(1, 3), ROWS[:1], STEPS[:1]).tolist() == [[True, False, False]]


@pytest.mark.parametrize(
    "cfg,message",
    [
        (MaskingConfig(mode="fixed"), "masking.features=null is invalid: masking=fixed steers only the listed"),
        (MaskingConfig(mode="fixed", features=[]), "masking.features=[] is invalid: masking=fixed steers only"),
        (
            MaskingConfig(features=[1]),
            "masking.features=[1] is invalid: masking.features is only used with masking=fixed",
        ),
        (
            MaskingConfig(mode="fixed", features=[-3]),
            "masking.features=[-3] is invalid: out of range; valid: a list, each",
        ),
        (
            MaskingConfig(mode="fixed", features=[2, 0, 2]),
            "masking.features=[2,0,2] is invalid: feature 2 is listed twice",
        ),
        (
            MaskingConfig(mode="fixed", features=[1, 4]),
            "masking.features=[1,4] is invalid: feature 4 is not in the SAE, which has 4 features; valid: ids in 0..3",
        ),
    ],
)
def test_bad_fixed_features_are_one_line_errors(cfg, message):
    with pytest.raises(CRLError) as err:
        FeatureMasker(cfg, d_sae=4, allow_noop=True)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
