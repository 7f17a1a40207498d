"""`crl features`: shipped cards print at once without torch; bad ids and layers are one line before any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crl.backends.sae_store import shipped_sae_dir
from crl.cards.store import CARDS_SUBDIR, load_cards
from crl.cli import _positional
from crl.config import DEFAULT_MODEL_NAME, SAEConfig
from crl.config.apps import FeaturesShowConfig
from crl.config.compose import compose_config

ROOT = Path(__file__).resolve().parents[2]
CRL = str(ROOT / ".venv" / "bin" / "crl")


@pytest.fixture(scope="module")
def cards():
    return load_cards(shipped_sae_dir(DEFAULT_MODEL_NAME, 15) / CARDS_SUBDIR)


def _crl(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CRL_CACHE": str(cache)}
    return subprocess.run([CRL, *args], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)


def test_show_prints_the_shipped_card(cards, tmp_path):
    proc = _crl("features", "show", "652", "steering.layer=15", cache=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert cards.label(652) in proc.stdout and "(label: heuristic)" in proc.stdout
    top = cards.examples(652, "top")[0]
    assert f"{top['maxValue']:7.2f} " in proc.stdout and "«" in proc.stdout
    assert not any(tmp_path.iterdir())  # nothing built, converted or cached


def test_show_loads_neither_torch_nor_the_model(cards, tmp_path):
    code = (
        "import sys\nfrom crl import cli\n"
        "try:\n    cli.main(['features', 'show', '1398', 'steering.layer=6', 'width=80'])\n"
        "finally:\n    print('torch loaded:', 'torch' in sys.modules, file=sys.stderr)\n"
    )
    env = {**os.environ, "CRL_CACHE": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "torch loaded: False"
    layer6 = load_cards(shipped_sae_dir(DEFAULT_MODEL_NAME, 6) / CARDS_SUBDIR)
    assert proc.stdout.startswith(f"L6 feature 1398  ≈ {layer6.label(1398)}")
    assert max(len(line) for line in proc.stdout.splitlines()) <= 80


@pytest.mark.parametrize(
    "args,message",
    [
        (["show", "3072"], "crl: error: feature=3072 is out of range: this SAE has features 0..3071"),
        (["export", "99999", "steering.layer=24"], "crl: error: feature=99999 is out of range"),
        (["show", "-1"], "crl: error: feature=-1 is invalid: out of range"),
        (["show"], "crl: error: which feature? pass its id: `crl features show 1398`"),
        (["show", "5", "steering.layer=7"], "crl: error: no SAE for steering.layer=7: smollm2-135m-instruct ships"),
        (["index", "sae=planted"], "crl: error: sae.source=planted is invalid: the planted SAE is constructed"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    proc = _crl("features", *args, cache=tmp_path)
    assert proc.returncode == 2, proc.stdout
    assert proc.stderr.startswith(message), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stdout == ""
    assert not any(tmp_path.iterdir())


def test_export_is_the_neuronpedia_card(cards, tmp_path):
    proc = _crl("features", "export", "1398", cache=tmp_path)
    assert proc.returncode == 0, proc.stderr
    card = json.loads(proc.stdout)
    assert card["index"] == "1398" and card["explanations"][0]["description"] == cards.label(1398)
    assert card["activations"][0]["maxValue"] == pytest.approx(float(cards.top_val[1398][0]))


def test_index_and_build_on_shipped_cards(cards, tmp_path):
    out = tmp_path / "pages" / "index.html"
    proc = _crl("features", "index", f"out={out}", cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout and out.exists()
    assert f'id="feature-{cards.d_sae - 1}"' in out.read_text()
    proc = _crl("features", "build", cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    assert f"{cards.identity} at {cards.path} (shipped, nothing to build" in proc.stdout
    assert not list((tmp_path / "cache").rglob("*"))  # nothing built or cached


def test_a_bare_id_is_the_feature_only_where_a_command_takes_one():
    assert _positional(("features", "show"), ["1398", "steering.layer=6"]) == ["feature=1398", "steering.layer=6"]
    assert _positional(("features", "export"), ["-2"]) == ["feature=-2"]
    assert _positional(("features", "index"), ["7"]) == ["7"]
    assert compose_config("features_show", ["feature=12"]) == FeaturesShowConfig(feature=12)


@pytest.mark.parametrize("kind", ["shipped", "disk"])
def test_the_sae_is_identified_from_its_files_as_loading_it_would(kind, tmp_path):
    """The fast path finds cards by the identity read from the SAE's files; it must equal the loaded SAE's."""
    import torch

    from crl.backends.hooks import HookPoint
    from crl.backends.sae import load_sae, sae_from_decoder
    from crl.commands.features import sae_files

    if kind == "shipped":
        cfg = FeaturesShowConfig()
        sae_cfg = SAEConfig(source="default", layer=cfg.steering.layer)
    else:
        dec = torch.randn(48, 32, generator=torch.Generator().manual_seed(0))
        sae_from_decoder(dec, HookPoint(1, "post"), "test").sae.save_model(str(tmp_path))
        cfg = compose_config("features_show", ["model=tiny", "sae=disk", f"sae.path={tmp_path}", "steering.layer=1"])
        sae_cfg = cfg.sae
    ref = sae_files(cfg)
    loaded = load_sae(sae_cfg)
    assert ref.identity == loaded.identity and ref.d_sae == loaded.d_sae


def test_show_with_a_run_adds_what_steering_with_the_feature_did(cards, tmp_path):
    from crl.analysis.offline.feature_effects import EFFECTS_FILE
    from crl.logs.schema import RunInfo

    run = tmp_path / "run"
    run.mkdir()
    RunInfo(
        run="compare-L15-s0", model=DEFAULT_MODEL_NAME, sae_identity=cards.identity, task="compare", layer=15,
        hook_name=cards.meta["hook_name"], d_sae=cards.d_sae, seed=0, coef=1.0,
    ).write(run)  # fmt: skip
    record = {"level": 1, "coef": 1.0, "kl_neutral": 0.0123, "kl_task": 0.456, "top1_changed_neutral": 0.05,
              "top1_changed_task": 0.42, "n_neutral": 64, "n_task": 200, "promotes": [[" Bzzt", 1.2]],
              "demotes": [[" Azzt", -2.1]]}  # fmt: skip
    (run / EFFECTS_FILE).parent.mkdir()
    (run / EFFECTS_FILE).write_text(json.dumps({"run": "compare-L15-s0", "features": {"1398": [record]}}))
    proc = _crl("features", "show", "1398", f"run_dir={run}", cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    assert cards.label(1398) in proc.stdout
    assert "amplify: KL neutral 0.0123, task 0.456; top-1 changed neutral 5%, task 42%" in proc.stdout
    proc = _crl("features", "show", "652", f"run_dir={run}", cache=tmp_path / "cache")
    assert proc.returncode == 0 and "steering effects" not in proc.stdout  # the run never measured 652
