"""The frozen model backend: the offline default model, converted once and cached."""

from __future__ import annotations

import time

import torch

from crl.backends.model import load_model
from crl.config import ModelConfig


def test_cached_default_model_loads_again_fast_and_identically():
    first = load_model(ModelConfig())  # converts the GGUF once if the cache is cold
    start = time.perf_counter()
    second = load_model(ModelConfig())
    seconds = time.perf_counter() - start
    assert (first.n_layers, first.d_model) == (30, 576)
    ids = first.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a, b = first.model(ids).logits, second.model(ids).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert a[0, -1].argmax().item() == b[0, -1].argmax().item()
    assert seconds < 20, f"loading the cached default model took {seconds:.1f}s"
