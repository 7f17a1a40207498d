"""`crl sae info` and `crl sae build`: one JSON object on stdout, one-line errors."""

from __future__ import annotations

import json

import pytest

from crl.backends.sae_store import METRICS_FILE
from crl.sae_training.train import build_sae


def test_cli_info_prints_one_json_object(model, cache, capsys, tiny_build_config):
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
    assert list(info)[:5] == ["source", "explained_variance", "l0", "dead_fraction", "ce_loss_increase"]
    assert info["source"] == "built"

    (path / METRICS_FILE).unlink()  # info recomputes missing metrics (same held-out rows) and stores them
    main(args)
    again = json.loads(capsys.readouterr().out)
    assert again["explained_variance"] == pytest.approx(info["explained_variance"], abs=1e-6)
    assert (path / METRICS_FILE).exists()


def test_cli_build_errors_are_one_line(cache, capsys):
    from crl.cli import main

    tiny = ["model=tiny", "model.n_layers=2", "model.d_model=32"]
    for args, expected in (
        (["sae=disk"], "works on the SAE that CRL builds"),  # before any model loads
        (["sae.layer=5"], r"sae.layer=5 is out of range"),  # checked before the corpus is built
    ):
        with pytest.raises(SystemExit) as exc:
            main(["sae", "build", *tiny, *args])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("crl: error:") and expected in err[0], err
    assert not (cache / "saes").exists()


TINY_BUILD = [
    "model=tiny",
    "model.n_layers=2",
    "model.d_model=32",
    "build.d_sae=64",
    "build.k=4",
    "build.training_tokens=4096",
    "build.epochs=1",
    "build.context_size=32",
    "build.train_batch_size_tokens=256",
    "build.store_batch_size_prompts=8",
    "build.lr_warm_up_steps=2",
    "build.dead_feature_window=5",
    "build.eval_tokens=1024",
    "build.ce_eval_tokens=256",
    "build.prose_packages=[tqdm,omegaconf,jinja2]",
]


def test_cli_builds_several_layers_in_one_command(cache, capsys, tmp_path, monkeypatch):
    """`crl sae build -m sae.layer=0,1`: a Hydra sweep, one build (and one JSON line) per layer, nothing written to
    the working directory."""
    from crl.cli import main

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    main(["sae", "build", "-m", "sae.layer=0,1", *TINY_BUILD])
    captured = capsys.readouterr()
    results = [json.loads(line) for line in captured.out.splitlines()]
    assert [(r["layer"], r["source"]) for r in results] == [(0, "built"), (1, "built")]
    assert all(r["path"].startswith(str(cache)) for r in results)
    assert "crl sae: SAE training  4,096/4,096 samples" in captured.err
    assert not list(work.iterdir())  # no multirun/, outputs/ or .hydra/ in the working directory
    assert [p.name for p in (tmp_path / "tmp" / "crl-sweeps").iterdir()][0].startswith("sae-build-")
