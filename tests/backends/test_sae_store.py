"""Where built SAEs live, and that loading an SAE never imports the SAE training code."""

from __future__ import annotations

import subprocess
import sys

from crl.backends.model import ModelConfig, tiny_model
from crl.backends.offline_default import DEFAULT_MODEL_NAME
from crl.backends.sae_store import DEFAULT_LAYER, default_sae_dir, is_built, model_cache_name, sae_dir


def _modules_after_import(module: str) -> list[str]:
    """The crl modules that importing `module` in a fresh interpreter loads."""
    code = f"import sys, {module}; print('\\n'.join(m for m in sys.modules if m.startswith('crl')))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return out.split()


def test_loading_an_sae_never_imports_training():
    for module in ("crl.backends.sae", "crl.backends"):
        loaded = _modules_after_import(module)
        assert module in loaded
        assert not [m for m in loaded if m.startswith("crl.sae_training")], module


def test_model_cache_name_mirrors_load_model():
    assert model_cache_name(ModelConfig()) == DEFAULT_MODEL_NAME
    assert model_cache_name(ModelConfig(source="hf", name="org/model")) == "org/model"
    cfg = ModelConfig(source="tiny", name="qwen", n_layers=2, d_model=32, seed=3)
    assert model_cache_name(cfg) == tiny_model("qwen", n_layers=2, d_model=32, seed=3).name


def test_sae_dir_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("CRL_CACHE", str(tmp_path))
    assert sae_dir("org/model", 3) == tmp_path / "saes" / "org__model" / "layer3"
    assert default_sae_dir() == sae_dir(DEFAULT_MODEL_NAME, DEFAULT_LAYER)
    path = default_sae_dir(4)
    assert not is_built(path)
    path.mkdir(parents=True)
    (path / "cfg.json").write_text("{}")
    assert is_built(path)
