"""The soak runs only when asked for (`pytest -m soak`): pyproject's addopts deselect it, and this also skips it
under any other -m expression (e.g. -m "not slow", which replaces the addopts one)."""

import pytest


def pytest_collection_modifyitems(config, items):
    expr = config.option.markexpr or ""
    if "soak" in expr and "not soak" not in expr:
        return
    skip = pytest.mark.skip(reason="the reliability soak runs only with -m soak (minutes)")
    for item in items:
        if item.get_closest_marker("soak") is not None:
            item.add_marker(skip)
