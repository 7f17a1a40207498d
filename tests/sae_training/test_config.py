"""`check_build`: settings that cannot train fail before any work, with the key in the message."""

from __future__ import annotations

import pytest

from crl.errors import CRLError
from crl.sae_training.train import build_sae


def test_bad_build_settings_fail_before_work(model, cache, tiny_build_config):
    with pytest.raises(CRLError, match=r"sae.layer=2 is out of range.*0\.\.1"):
        build_sae(model, tiny_build_config(layer=2), progress=False)
    with pytest.raises(CRLError, match="build.k=64"):
        build_sae(model, tiny_build_config(k=64), progress=False)
    with pytest.raises(CRLError, match="build.lr=0.0 is invalid: out of range; valid: a number > 0"):
        build_sae(model, tiny_build_config(lr=0.0), progress=False)
    with pytest.raises(CRLError, match=r"build.epochs=32 is invalid: training_tokens / epochs is less than one batch"):
        build_sae(model, tiny_build_config(epochs=32), progress=False)
    assert not (cache / "saes").exists()
