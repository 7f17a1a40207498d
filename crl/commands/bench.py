"""`crl bench rollout`: steered-env decoding speed against plain batched generation, as ONE JSON line on stdout
(crl.run.bench says what is measured and how)."""

from __future__ import annotations

import contextlib
import json
import sys

import hydra
from omegaconf import DictConfig

from crl.config import BenchRolloutConfig, load
from crl.errors import exit_on_error
from crl.paths import CONF_DIR
from crl.run.bench import run_bench  # first: it sets OMP_WAIT_POLICY before anything imports torch


@hydra.main(config_path=CONF_DIR, config_name="bench_rollout", version_base=None)
@exit_on_error
def rollout(raw: DictConfig) -> None:
    cfg = load(BenchRolloutConfig, raw)
    with contextlib.redirect_stdout(sys.stderr):  # libraries print now and then; stdout carries only the JSON
        result = run_bench(cfg)
    print(json.dumps(result))
