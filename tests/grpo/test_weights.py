"""`model.weights`: tuned weights on top of a model (crl/backends/model.py), made here by hand (no training)."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest
import torch

from crl.backends.model import TUNED_DIR, WEIGHTS_INFO, TunedWeights, apply_weights, find_weights, load_model
from crl.config import ModelConfig
from crl.errors import CRLError

TINY = ModelConfig(source="tiny", name="llama")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, one_thread):
    """A LoRA adapter over the tiny model with nonzero B (as if trained), in a run-like directory; and the logits of
    the (unmerged) adapted model on one prompt."""
    from peft import LoraConfig, get_peft_model

    lm = load_model(TINY)
    peft_model = get_peft_model(lm.model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    run = tmp_path_factory.mktemp("weights") / "run"
    (run / TUNED_DIR).mkdir(parents=True)
    (run / "run.json").write_text("{}")
    peft_model.save_pretrained(str(run / TUNED_DIR))
    (run / TUNED_DIR / WEIGHTS_INFO).write_text(json.dumps({"kind": "lora", "base_model": lm.name}))
    ids = lm.tokenizer("Some words and then apple", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = peft_model(input_ids=ids).logits
    return run, ids, logits


def _logits(lm, ids):
    with torch.no_grad():
        return lm.model(input_ids=ids).logits


def test_a_lora_adapter_is_merged_into_the_weights(adapter):
    run, ids, adapted = adapter
    base = load_model(TINY)
    for where in (run, run / TUNED_DIR):  # the run directory or its model/
        tuned = load_model(dataclasses.replace(TINY, weights=str(where)))
        assert type(tuned.model) is type(base.model)  # merged: a plain model again, as fast as the base
        assert tuned.name == base.name and tuned.weights == str(run / TUNED_DIR)
        assert not any(p.requires_grad for p in tuned.model.parameters()) and not tuned.model.training
        torch.testing.assert_close(_logits(tuned, ids), adapted, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(_logits(tuned, ids), _logits(base, ids), atol=1e-3)


def test_full_weights_load_in_place(tmp_path, one_thread):
    from safetensors.torch import save_model

    lm = load_model(TINY)
    with torch.no_grad():
        for p in lm.model.parameters():
            p.add_(0.01)
    save_model(lm.model, str(tmp_path / "model.safetensors"))
    tuned = load_model(dataclasses.replace(TINY, weights=str(tmp_path)))
    for (name, a), b in zip(lm.model.state_dict().items(), tuned.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    small = dataclasses.replace(TINY, d_model=32, weights=str(tmp_path))
    with pytest.raises(CRLError, match=f"the weights in {tmp_path} do not fit tiny-llama-2x32-s0"):
        load_model(small)


def test_where_weights_point_is_checked_before_anything_loads(tmp_path, adapter, monkeypatch):
    with pytest.raises(CRLError, match="model.weights=.*nope does not exist; pass a `crl grpo` run directory"):
        find_weights(tmp_path / "nope")
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(CRLError, match="is a run directory without model/: the run has not finished .*resume="):
        find_weights(tmp_path)
    (tmp_path / "run.json").unlink()
    with pytest.raises(CRLError, match="holds neither a LoRA adapter \\(adapter_config.json\\) nor full weights"):
        find_weights(tmp_path)
    run = adapter[0]
    assert find_weights(run) == TunedWeights(run / TUNED_DIR, "lora", "tiny-llama-2x64-s0")

    import crl.backends.model as model

    monkeypatch.setattr(model, "has_peft", lambda: False)
    monkeypatch.setattr(model, "_load_base", lambda cfg: pytest.fail("the base model loaded before the check"))
    with pytest.raises(CRLError) as err:
        load_model(dataclasses.replace(TINY, weights=str(run)))
    assert (
        str(err.value) == f"model.weights={run} is a LoRA adapter, which needs peft (not installed): pip install peft"
    )


def test_peft_missing_at_load_time_and_a_foreign_base_are_one_line(adapter, monkeypatch):
    run = adapter[0]
    lm = load_model(TINY)
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` raises ImportError
    with pytest.raises(CRLError, match="is a LoRA adapter, which needs peft: pip install peft$"):
        apply_weights(lm, TunedWeights(run / TUNED_DIR, "lora", lm.name))
    with pytest.raises(CRLError, match="were tuned from other-model, not tiny-llama-2x64-s0; load them on their base"):
        apply_weights(lm, TunedWeights(run / TUNED_DIR, "lora", "other-model"))
