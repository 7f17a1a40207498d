"""Fixtures of the diffing tests: the tiny world (tests/analysis/diffing/world.py), a planted weight change and an
untouched copy, each diffed once per test module."""

from __future__ import annotations

import pytest

from crl.analysis.diffing.diff import CRLUsage, DiffResult, diff_models
from tests.analysis.diffing.world import (
    FAST,
    base_model,
    control,
    crl_steps,
    planted_task,
    random_sae,
    residual_norm,
    untouched,
    with_bias,
)

J = 7  # the planted feature of the random SAE


@pytest.fixture(scope="module")
def world(one_thread):
    base = base_model()
    task = planted_task()
    return base, task, task.load("test"), random_sae()


@pytest.fixture(scope="module")
def planted(world) -> DiffResult:
    """Layer 0 (the layer before the SAE's) adds twice the residual's norm along d_J at every position."""
    base, task, examples, sae = world
    c = 2 * residual_norm(base, task, examples)
    tuned = with_bias(base, 0, c * sae.directions(unit=True)[J])
    steps = crl_steps({J: 12, 3: 4}, 48)  # a CRL run that amplified J most
    return diff_models(base, tuned, sae, task, examples, control(base), CRLUsage(steps, "raw"), cfg=FAST)


@pytest.fixture(scope="module")
def unchanged(world) -> DiffResult:
    base, task, examples, sae = world
    steps = crl_steps({J: 10, 3: 4}, 48)
    return diff_models(base, untouched(base), sae, task, examples, control(base), CRLUsage(steps, "raw"), cfg=FAST)
