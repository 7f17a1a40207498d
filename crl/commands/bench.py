"""`crl bench rollout`: steered-env decoding speed against plain batched generation and the training path's decisions
per second (on CUDA with GPU utilisation and peak memory), as ONE JSON line on stdout (crl.run.bench says what is
measured and how). `crl bench policy`: the policy head and the masking at large dictionary
widths, as a table on stdout and a JSON file (crl.run.bench_policy)."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from crl.config import BenchPolicyConfig, BenchRolloutConfig, load
from crl.errors import exit_on_error
from crl.logs.atomic import atomic_write_json
from crl.paths import CONF_DIR
from crl.run.bench import run_bench  # first: it sets OMP_WAIT_POLICY before anything imports torch
from crl.run.bench_policy import bench_policy, default_out, format_table


@hydra.main(config_path=CONF_DIR, config_name="bench_rollout", version_base=None)
@exit_on_error
def rollout(raw: DictConfig) -> None:
    cfg = load(BenchRolloutConfig, raw)
    with contextlib.redirect_stdout(sys.stderr):  # libraries print now and then; stdout carries only the JSON
        result = run_bench(cfg)
    print(json.dumps(result))


@hydra.main(config_path=CONF_DIR, config_name="bench_policy", version_base=None)
@exit_on_error
def policy(raw: DictConfig) -> None:
    cfg = load(BenchPolicyConfig, raw)
    with contextlib.redirect_stdout(sys.stderr):  # libraries print now and then; stdout carries only the table
        result = bench_policy(cfg, log=lambda line: print(line, file=sys.stderr, flush=True))
    out = Path(cfg.out) if cfg.out else default_out()
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    print(format_table(result))
    print(f"written: {out}")
