"""The SAE-training fixtures (a tiny model, a private cache, a small build config) serve `crl sae` here too."""

from tests.sae_training.conftest import cache, model, tiny_build_config  # noqa: F401
