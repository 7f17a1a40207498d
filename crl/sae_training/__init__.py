"""Training the default SAE: offline corpus, sae-lens training, quality metrics (`crl sae`: crl/commands/sae.py).

Loading an SAE never imports this package: where built SAEs live is `crl.backends.sae_store`.
"""
