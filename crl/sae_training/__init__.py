"""Training the default SAE: offline corpus, build config, sae-lens training, quality metrics, CLI.

Loading an SAE never imports this package: where built SAEs live is `crl.backends.sae_store`.
"""
