"""Shared by the run tests (and the command tests that need a quick run): Hydra configs composed the way `crl train`
composes them (not yet validated), and `crl` called in this process."""

from __future__ import annotations

from omegaconf import DictConfig

from crl.paths import CONF_DIR

# A planted run small enough for seconds on 2 cores.
QUICK = [
    "experiment=planted",
    "logger=disabled",
    "run.analyze=false",
    "run.eval_before=false",
    "sae.d_sae=32",
    "ppo.episodes_per_update=32",
    "ppo.num_envs=32",
    "task.n_test=16",
]


def compose_train(overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir

    from crl.config import register

    register()  # conf/ pulls the schemas from Hydra's ConfigStore
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return compose("train", overrides=overrides)


def crl(*argv: str) -> int:
    """`crl <argv>` in this process; its exit code."""
    from crl.cli import main

    try:
        main(list(argv))
    except SystemExit as e:
        return int(e.code)
    return 0
