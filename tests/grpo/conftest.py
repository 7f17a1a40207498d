"""Tiny `crl grpo` runs: a random 2-layer model on the planted task (seconds on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.run.helpers import crl

# A tiny run: 3 rounds of 16 completions (4 prompts x 4), val every round, on 16 test prompts.
TINY = [
    "model=tiny",
    "sae=planted",
    "task=planted",
    "steering.layer=1",
    "sae.d_sae=32",
    "task.n_test=16",
    "logger=disabled",
    "grpo.rollouts=48",
    "grpo.batch_size=16",
    "grpo.num_generations=4",
    "grpo.micro_batch_size=null",
    "grpo.max_completion_length=4",
    "grpo.learning_rate=0.01",
    "grpo.eval_every=1",
]


def coin_reward(self, prompts, completions, answer=None, **_):
    """A reward a random model's samples split on (the parity of the completion's length), so GRPO has a signal."""
    return [float(len(c) % 2 == 0) for c in completions]


@pytest.fixture
def coin(monkeypatch):
    """The planted task rewarding `coin_reward` (a random model never answers the planted task: no signal)."""
    from crl.envs.tasks.planted import PlantedTask

    monkeypatch.setattr(PlantedTask, "reward", coin_reward)


def grpo_run(run_dir: Path, *extra: str) -> int:
    return crl("grpo", *TINY, *extra, f"hydra.run.dir={run_dir}")
