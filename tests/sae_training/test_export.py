"""Shipped SAEs: `crl sae export` writes them (fp16, metrics re-measured, identity hash), `sae=default` and
`crl sae info` prefer them, and every load gives the same identity."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from crl.backends import sae_store
from crl.backends.sae import decoder_sha1, load_sae
from crl.backends.sae_store import (
    BUILD_FILE,
    IDENTITY_FILE,
    METRICS_FILE,
    find_sae,
    shipped_layers,
    shipped_sae_dir,
)
from crl.config import DEFAULT_MODEL_NAME, ModelConfig, SAEConfig
from crl.errors import CRLError
from crl.sae_training.export import export_sae
from crl.sae_training.quality import QUALITY_BAR, below_bar, built_sae_metrics
from crl.sae_training.train import build_sae

TINY = ModelConfig(source="tiny", name="llama", n_layers=2, d_model=32, seed=0)


@pytest.fixture
def shipped_root(tmp_path, monkeypatch):
    root = tmp_path / "shipped"  # the cache (CRL_CACHE) is tmp_path
    monkeypatch.setattr(sae_store, "SHIPPED_DIR", root)
    return root


@pytest.fixture
def built(model, cache, tiny_build_config):
    return build_sae(model, tiny_build_config(), progress=False)


def test_export_writes_the_shipped_form(model, built, shipped_root):
    dst = shipped_sae_dir(model.name, 0)
    with pytest.raises(CRLError, match=r"misses the quality bar: explained_variance=.*needs >= 0.85.*allow_below_bar"):
        export_sae(model, built.path, dst, progress=False)
    assert not dst.exists() and not list(dst.parent.glob("*partial*"))

    record = json.loads((built.path / BUILD_FILE).read_text())
    stale = built.path.with_name("stale")
    shutil.copytree(built.path, stale)
    del record["corpus"]["excluded"]  # a build from before the held-out records were left out
    (stale / BUILD_FILE).write_text(json.dumps(record))
    with pytest.raises(CRLError, match="built before the offline tasks' val/test records were held out"):
        export_sae(model, stale, dst, allow_below_bar=True, progress=False)

    metrics, path = export_sae(model, built.path, dst, allow_below_bar=True, progress=False)
    assert path == dst and sorted(p.name for p in dst.iterdir()) == sorted(
        ["cfg.json", "sae_weights.safetensors", BUILD_FILE, METRICS_FILE, IDENTITY_FILE]
    )
    weights = load_file(str(dst / "sae_weights.safetensors"))
    assert {k: v.dtype for k, v in weights.items()} == {
        "W_enc": torch.float16,
        "W_dec": torch.float16,
        "b_enc": torch.float32,
        "b_dec": torch.float32,
    }
    assert json.loads((dst / "cfg.json").read_text())["dtype"] == "float32"
    record = json.loads((dst / BUILD_FILE).read_text())
    assert record["export"]["weights"]["W_dec"] == "float16" and record["corpus"]["excluded"]["total"] > 0
    # re-measured on the fp16 weights, on the build's own held-out rows: close to the fp32 numbers
    assert metrics["weights"] == "float16 matrices, float32 biases" and metrics["meets_quality_bar"] is False
    for key in QUALITY_BAR:
        assert metrics[key] == pytest.approx(built.metrics[key], abs=0.01), key
        assert metrics["built_metrics"][key] == built.metrics[key]
    assert json.loads((dst / METRICS_FILE).read_text()) == metrics
    identity = json.loads((dst / IDENTITY_FILE).read_text())
    assert identity["W_dec_sha1"] == decoder_sha1(weights["W_dec"].float())
    assert identity["sae_identity"] == metrics["sae_identity"]
    assert identity["sae_identity"].startswith("shipped:layer0|blocks.0.hook_resid_post|d_sae=64|W_dec=")

    # the shipped SAE is the one `crl sae info` reports, the built one stays where it was
    assert find_sae(model.name, 0) == (dst, "shipped")
    info, where = built_sae_metrics(TINY, 0)
    assert where == dst and info["source"] == "shipped" and info["sae_identity"] == identity["sae_identity"]


def test_sae_default_loads_the_shipped_sae_with_a_stable_identity(model, built, shipped_root):
    with pytest.raises(CRLError, match=r"not shipped \(shipped layers: none\) and not built yet.*sae.layer=0"):
        load_sae(SAEConfig(source="default", layer=0))
    dst = shipped_sae_dir(DEFAULT_MODEL_NAME, 0)  # as if the tiny build were the default model's
    metrics, _ = export_sae(model, built.path, dst, allow_below_bar=True, progress=False)
    assert shipped_layers() == [0]

    a = load_sae(SAEConfig(source="default", layer=0))
    b = load_sae(SAEConfig(source="default", layer=0))
    assert a.source == "shipped:layer0" and a.sae.W_dec.dtype == torch.float32
    assert a.identity == b.identity == metrics["sae_identity"]  # every user, every load: the same identity
    fp32 = load_file(str(built.path / "sae_weights.safetensors"))["W_dec"]
    torch.testing.assert_close(a.sae.W_dec, fp32.half().float(), rtol=0, atol=0)
    assert a.identity != load_sae(SAEConfig(source="disk", path=str(built.path))).identity  # fp32 differs

    identity = json.loads((dst / IDENTITY_FILE).read_text())
    (dst / IDENTITY_FILE).write_text(json.dumps({**identity, "W_dec_sha1": "0" * 40}))
    with pytest.raises(CRLError, match="does not match its crl_identity.json.*reinstall crl"):
        load_sae(SAEConfig(source="default", layer=0))


def test_cli_export_and_info_say_where_the_sae_comes_from(model, built, shipped_root, capsys):
    from crl.cli import main

    tiny = ["model=tiny", "model.n_layers=2", "model.d_model=32", "sae.layer=0"]
    main(["sae", "info", *tiny])
    info = json.loads(capsys.readouterr().out)
    assert info["source"] == "built" and info["path"] == str(built.path)

    with pytest.raises(SystemExit) as exc:
        main(["sae", "export", *tiny])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()  # progress lines of the re-measurement, then the error
    assert err[-1].startswith("crl: error: ") and "misses the quality bar" in err[-1]
    assert all(line.startswith("crl sae: ") for line in err[:-1])

    main(["sae", "export", *tiny, "allow_below_bar=true"])
    out = json.loads(capsys.readouterr().out)
    assert out["source"] == "shipped" and out["path"] == str(shipped_sae_dir(model.name, 0))
    main(["sae", "info", *tiny])
    info = json.loads(capsys.readouterr().out)
    assert list(info)[:5] == ["source", "explained_variance", "l0", "dead_fraction", "ce_loss_increase"]
    assert info["source"] == "shipped" and info["sae_identity"] == out["sae_identity"]


def test_below_bar_names_each_missing_metric():
    good = {"explained_variance": 0.9, "l0": 32, "dead_fraction": 0.01, "ce_loss_increase": 0.07}
    assert below_bar(good) == []
    bad = {**good, "l0": 120, "ce_loss_increase": 0.2}
    assert below_bar(bad) == ["l0=120 (needs >= 10 and <= 100)", "ce_loss_increase=0.2 (needs <= 0.15)"]
    assert below_bar({k: v for k, v in good.items() if k != "dead_fraction"}) == ["dead_fraction=None (needs <= 0.05)"]
