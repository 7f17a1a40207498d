"""Where built SAEs live (that loading an SAE never imports the training code: tests/test_architecture.py)."""

from __future__ import annotations

from crl.backends.model import tiny_model
from crl.backends.sae_store import default_sae_dir, is_built, model_cache_name, sae_dir
from crl.config import DEFAULT_MODEL_NAME, ModelConfig


def test_model_cache_name_mirrors_load_model():
    assert model_cache_name(ModelConfig()) == DEFAULT_MODEL_NAME
    assert model_cache_name(ModelConfig(source="hf", name="org/model")) == "org/model"
    cfg = ModelConfig(source="tiny", name="qwen", n_layers=2, d_model=32, seed=3)
    assert model_cache_name(cfg) == tiny_model("qwen", n_layers=2, d_model=32, seed=3).name


def test_sae_dir_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("CRL_CACHE", str(tmp_path))
    assert sae_dir("org/model", 3) == tmp_path / "saes" / "org__model" / "layer3"
    assert default_sae_dir(7) == sae_dir(DEFAULT_MODEL_NAME, 7)  # no SAE is shipped for layer 7
    path = default_sae_dir(4)
    assert not is_built(path)
    path.mkdir(parents=True)
    (path / "cfg.json").write_text("{}")
    assert is_built(path)


def test_the_shipped_sae_comes_first(tmp_path, monkeypatch):
    from crl.backends import sae_store

    monkeypatch.setenv("CRL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sae_store, "SHIPPED_DIR", tmp_path / "shipped")
    built, shipped = sae_dir(DEFAULT_MODEL_NAME, 6), sae_store.shipped_sae_dir(DEFAULT_MODEL_NAME, 6)
    assert shipped == tmp_path / "shipped" / DEFAULT_MODEL_NAME / "layer6"
    assert sae_store.find_sae(DEFAULT_MODEL_NAME, 6) == (built, None) and default_sae_dir(6) == built
    for path in (built, shipped):
        path.mkdir(parents=True)
        (path / "cfg.json").write_text("{}")
        kind = "built" if path == built else "shipped"
        assert sae_store.find_sae(DEFAULT_MODEL_NAME, 6) == (path, kind) and default_sae_dir(6) == path
    assert sae_store.shipped_layers() == [6]
