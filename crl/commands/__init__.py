"""The `crl` commands, one module per command (`crl.cli.COMMANDS` maps the words to them).

Each is a Hydra app (`@hydra.main` over conf/<command>.yaml) that loads its config as the typed root config of
`crl.config` and calls plain functions of the layers below (`crl.run`, `crl.sae_training`, `crl.analysis`).
Only this layer strings several of them together, e.g. `crl train` trains, then writes the analysis report.
"""

from omegaconf import OmegaConf

from crl.config import register
from crl.logs.lifecycle import run_tag

# Every conf/ file pulls its schema in from Hydra's ConfigStore (`defaults: [base_<group>, _self_]`), so the
# schemas are registered before any command composes its config.
register()
# `${crl_tag:}` in conf/train.yaml's run and sweep directories: runs started in the same second stay apart.
OmegaConf.register_new_resolver("crl_tag", run_tag, use_cache=True, replace=True)
