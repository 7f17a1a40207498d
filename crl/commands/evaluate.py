"""`crl eval run_dir=runs/<run> split=test`: greedy re-evaluation of a trained policy (crl.run.evaluate)."""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig

from crl.config import EvalConfig, load
from crl.errors import CRLError, exit_on_error
from crl.paths import CONF_DIR


@hydra.main(config_path=CONF_DIR, config_name="eval", version_base=None)
@exit_on_error
def main(raw: DictConfig) -> None:
    from crl.run.evaluate import evaluate_run

    cfg = load(EvalConfig, raw)
    if not cfg.run_dir:
        raise CRLError("crl eval needs run_dir=<a run directory>")
    print(json.dumps(evaluate_run(Path(cfg.run_dir), cfg.split, cfg.seed, cfg.greedy_rule), indent=2))


if __name__ == "__main__":
    main()
