"""SAE quality metrics (`quality.py`), checked on an SAE whose reconstruction is exact by construction."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from crl.backends.hooks import HookPoint
from crl.backends.sae import sae_from_decoder
from crl.sae_training.quality import collect_residuals, evaluate


@pytest.fixture(scope="module")
def rows(model):
    g = torch.Generator().manual_seed(0)
    out = torch.randint(5, 4000, (6, 16), generator=g)
    out[:, 0] = model.tokenizer.bos_token_id
    return out


def _exact_sae(d: int):
    """Decoder rows +e_i and -e_i with the transposed encoder: ReLU keeps each sign once, so x_hat == x."""
    eye = torch.eye(d)
    return sae_from_decoder(torch.cat([eye, -eye]), HookPoint(0, "post"), "test:exact")


def test_residuals_are_the_hidden_states_at_the_hook(model, rows):
    acts = collect_residuals(model, rows, "blocks.0.hook_resid_post", batch_size=4)
    with torch.no_grad():
        hidden = model.model(rows, output_hidden_states=True).hidden_states[1]
    torch.testing.assert_close(acts, hidden, rtol=0, atol=0)


def test_exact_reconstruction_scores_perfectly(model, rows):
    sae = _exact_sae(model.d_model)
    m = evaluate(model, sae, rows, ce_rows=2)
    assert m["explained_variance"] == pytest.approx(1.0, abs=1e-6)
    assert m["explained_variance_incl_first_position"] == pytest.approx(1.0, abs=1e-6)
    assert m["eval_tokens"] == 6 * 15  # position 0 excluded
    assert m["l0"] == pytest.approx(model.d_model, abs=0.5)  # one sign per dimension fires
    assert 0 <= m["dead_fraction"] < 0.5 and m["dead_latents"] == round(m["dead_fraction"] * sae.d_sae)
    assert m["ce_eval_tokens"] == 2 * 16
    assert m["ce_loss_increase"] == pytest.approx(0.0, abs=1e-5)
    assert m["ce_loss_with_sae"] == pytest.approx(m["ce_loss_clean"], abs=1e-5)


def test_quality_never_imports_training():
    code = "import sys, crl.sae_training.quality; print('crl.sae_training.train' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "False"
