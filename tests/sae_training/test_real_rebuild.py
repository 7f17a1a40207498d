"""A reduced rebuild of a default SAE on the real model reaches the shipped SAEs' quality bar (opt-in: minutes).

    CRL_SLOW=1 python -m pytest -q tests/sae_training/test_real_rebuild.py                       # layer 6, CPU
    CRL_SLOW=1 CRL_TEST_DEVICE=cuda CRL_SLOW_LAYERS=6,15,24 python -m pytest -q tests/sae_training/test_real_rebuild.py

The rebuild trains on a third of the default samples (400k = 200k distinct tokens x 2 epochs) and must still meet
`quality.QUALITY_BAR`, the bar every shipped SAE meets at full size. Layer 6 is the reduced case that does: deeper
layers need the full budget (layer 15 reduced, 2 CPU cores, 6.4 min: EV 0.974 but CE +0.319 > 0.15; the full
build: CE +0.126). The tiny-model counterpart that always runs is
test_train.py::test_reduced_rebuild_reaches_the_documented_tiny_quality.
"""

from __future__ import annotations

import os

import pytest

from crl.config import BuildConfig, ModelConfig
from crl.sae_training.quality import below_bar

REDUCED = {"training_tokens": 400_000, "epochs": 2}
LAYERS = [int(x) for x in os.environ.get("CRL_SLOW_LAYERS", "6").split(",")]  # 6: see the module docstring

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("CRL_SLOW") != "1", reason="needs the real model for minutes: CRL_SLOW=1"),
]


@pytest.fixture(scope="module")
def real_model():
    from crl.backends.model import load_model

    return load_model(ModelConfig(device=os.environ.get("CRL_TEST_DEVICE", "cpu")))


@pytest.mark.parametrize("layer", LAYERS)
def test_reduced_real_rebuild_meets_the_bar(real_model, layer, tmp_path):
    from crl.sae_training.train import build_sae

    result = build_sae(real_model, BuildConfig(layer=layer, **REDUCED), out_dir=tmp_path / f"layer{layer}")
    print({k: result.metrics[k] for k in ("explained_variance", "l0", "dead_fraction", "ce_loss_increase")})
    assert below_bar(result.metrics) == [], result.metrics
    assert result.metrics["training_tokens"] == REDUCED["training_tokens"]
