"""Fixtures of the task tests."""

import pytest


@pytest.fixture(scope="module")
def tokenizer():
    """The real default model's tokenizer (chat template, single-token option letters)."""
    from transformers import AutoTokenizer

    from crl.backends.offline_default import default_tokenizer_dir

    return AutoTokenizer.from_pretrained(str(default_tokenizer_dir()))
