"""`crl train`: learn which SAE feature to amplify at each token (crl.run.train), then write the report.

crl train                                    # offline default: SmolLM2-135M + CRL's SAE, arith task
crl train experiment=planted                 # planted diagnostic task on a tiny model (seconds)
crl train -m seed=0,1 steering.layer=3,6     # a sweep: one run directory per job
crl train resume=runs/<run>                  # continue from the last checkpoint
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from crl.config import TrainConfig, load
from crl.errors import CRLError, exit_on_error
from crl.paths import CONF_DIR


def print_summary(summary: dict[str, Any], run_dir: Path) -> None:
    b, a = summary["before"], summary["after"]
    print(f"\n[crl] run dir: {run_dir}   ({summary['wall_seconds']:.0f}s)")
    print(f"[crl] {summary['split']} accuracy   before {b['accuracy']:.3f}  after {a['accuracy']:.3f}   (n={a['n']})")
    print(f"[crl] well-formed rate  before {b['well_formed']:.3f}  after {a['well_formed']:.3f}")
    print(
        "[crl] top features (eval, greedy):  "
        + ", ".join(
            f"{'no-steer' if r['feature'] < 0 else r['feature']} {r['share']:.0%}" for r in summary["top_features"][:8]
        )
    )


@hydra.main(config_path=CONF_DIR, config_name="train", version_base=None)
@exit_on_error
def _main(raw: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from crl.run.train import train

    hc = HydraConfig.get()
    cfg = load(TrainConfig, raw)
    summary = train(cfg, Path(hc.runtime.output_dir), list(hc.overrides.task))
    run_dir = Path(cfg.resume or hc.runtime.output_dir)
    print_summary(summary, run_dir)
    if cfg.run.analyze:
        from crl.analysis.api import analyze_run

        try:
            print(f"[crl] report: {analyze_run(run_dir)}")
        except CRLError as e:  # training succeeded; a report problem must not turn that into a failure
            print(f"[crl] warning: the analysis report failed: {e}", file=sys.stderr)


def main() -> None:
    # `resume=<dir>` writes into that run directory instead of a new one.
    for arg in sys.argv[1:]:
        if arg.startswith("resume=") and arg.split("=", 1)[1] not in ("", "null"):
            sys.argv.append(f"hydra.run.dir={arg.split('=', 1)[1]}")
    _main()


if __name__ == "__main__":
    main()
