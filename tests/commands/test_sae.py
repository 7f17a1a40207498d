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
    assert list(info)[:4] == ["explained_variance", "l0", "dead_fraction", "ce_loss_increase"]

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
