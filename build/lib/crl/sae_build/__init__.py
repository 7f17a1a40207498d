"""The default SAE that CRL trains itself: offline corpus, sae-lens training, metrics, CLI."""
