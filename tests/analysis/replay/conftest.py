"""The tiny planted world, built once for all replay tests (nothing mutates it)."""

import pytest


@pytest.fixture(scope="package")
def comps():
    from tests.analysis.replay.planted import planted_components

    return planted_components()
