"""The offline SAE corpus: deterministic, a held-out split of whole groups, chat renderings, clean prose."""

from __future__ import annotations

import pytest
import torch

from crl.sae_training.corpus import CorpusConfig, build_corpus, clean_prose, corpus_fingerprint

SMALL_PACKAGES = ("tqdm", "omegaconf", "jinja2")


def _tiny_corpus(tokenizer, seed=0):
    return build_corpus(
        tokenizer,
        CorpusConfig(train_tokens=3200, eval_tokens=640, context_size=32, seed=seed, prose_packages=SMALL_PACKAGES),
        progress=False,
    )


@pytest.fixture(scope="module")
def corpus0(model):
    return _tiny_corpus(model.tokenizer)


def test_corpus_is_deterministic_with_a_disjoint_held_out_split(model, corpus0):
    a, b = corpus0, _tiny_corpus(model.tokenizer)
    assert torch.equal(a.train, b.train) and torch.equal(a.eval, b.eval) and a.counts == b.counts
    assert corpus_fingerprint(a) != corpus_fingerprint(_tiny_corpus(model.tokenizer, seed=1))
    assert a.train.shape == (100, 32) and a.eval.shape == (20, 32)
    bos = model.tokenizer.bos_token_id
    assert (a.train[:, 0] == bos).all() and (a.eval[:, 0] == bos).all()
    assert a.train_groups and a.eval_groups and not a.train_groups & a.eval_groups
    # token counts per source add up to the packed rows
    assert sum(c["train_tokens"] for c in a.counts.values()) == a.train.numel()
    assert sum(c["eval_tokens"] for c in a.counts.values()) == a.eval.numel()
    held_out = {"".join(map(str, r.tolist())) for r in a.eval[:, 1:]}
    assert not any("".join(map(str, r.tolist())) in held_out for r in a.train[:, 1:])


def test_corpus_renders_chat_and_problems(model, corpus0):
    text = model.tokenizer.decode(corpus0.train.flatten())
    assert "<|im_start|>assistant" in text  # chat-template renderings
    assert "#### " in text  # worked answers of arithmetic problems / GSM8K


def test_clean_prose_drops_code_and_keeps_sentences():
    doc = """Compute the running mean of a stream of numbers for later use.

    Example::

        x = running_mean([1, 2, 3])

    >>> running_mean([1, 2])
    1.5

    ```python
    import numpy as np
    ```

    Returns
    -------
    float

    The mean is updated in place, so memory use stays constant over time.
    """
    out = clean_prose(doc)
    assert out == [
        "Compute the running mean of a stream of numbers for later use.",
        "The mean is updated in place, so memory use stays constant over time.",
    ]
