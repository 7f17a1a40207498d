"""Fixtures of the environment tests: a tiny llama, a random SAE on it, and the planted task's prompts."""

from __future__ import annotations

import pytest

from crl.backends.model import FrozenLM, tiny_model
from crl.backends.sae import LoadedSAE
from crl.config import TaskConfig
from crl.envs.tasks.base import Example
from crl.envs.tasks.planted import PlantedTask
from tests.envs.helpers import make_sae, prompt_ids


@pytest.fixture(scope="module")
def lm() -> FrozenLM:
    return tiny_model("llama", n_layers=2, d_model=64, seed=0)


@pytest.fixture(scope="module")
def sae(lm: FrozenLM) -> LoadedSAE:
    return make_sae(lm)


@pytest.fixture(scope="module")
def task() -> PlantedTask:
    cfg = TaskConfig(name="planted", n_train=4, n_val=4, n_test=8, max_new_tokens=6, chat_template=False)
    return PlantedTask(cfg, n_classes=4)


@pytest.fixture(scope="module")
def examples(lm: FrozenLM, task: PlantedTask) -> list[Example]:
    exs = task.load("test")
    lengths = {len(prompt_ids(lm, task, e)) for e in exs[:4]}
    assert len(lengths) >= 3, "the tests need prompts of different lengths (left padding)"
    return exs
