"""Shared by the SAE-training tests: a tiny model, a private cache, and a build config small enough for CPU."""

from __future__ import annotations

import pytest

from crl.backends.model import tiny_model
from crl.config import BuildConfig

SMALL_PACKAGES = ["tqdm", "omegaconf", "jinja2"]  # a few prose packages keep the corpus quick to build


def _tiny_build_config(**overrides) -> BuildConfig:
    cfg = dict(
        layer=0,
        d_sae=64,
        k=4,
        training_tokens=4096,
        epochs=1,
        context_size=32,
        train_batch_size_tokens=256,
        store_batch_size_prompts=8,
        lr_warm_up_steps=2,
        dead_feature_window=5,
        eval_tokens=1024,
        ce_eval_tokens=256,
        prose_packages=SMALL_PACKAGES,
    )
    cfg.update(overrides)
    return BuildConfig(**cfg)


@pytest.fixture
def tiny_build_config():
    """`tiny_build_config(**overrides)`: a `BuildConfig` that trains in seconds on the tiny model."""
    return _tiny_build_config


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", n_layers=2, d_model=32, seed=0)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CRL_CACHE", str(tmp_path))
    return tmp_path
