"""`crl curves crl_runs=[...] grpo_runs=[...]`: equal-budget learning curves of CRL (steering a frozen model) and GRPO
(tuning its weights) on one task, and how much of GRPO's val gain CRL recovers at the same number of rollouts.

Reads and checks the runs (crl.analysis.offline.curves: one line on bad input), writes curves.csv, budgets.csv,
test.csv, curves.json, curves.png and report.html into the out dir (crl.analysis.report.curves), and prints the table
and the headline on stdout.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from crl.config import CurvesConfig, load
from crl.errors import exit_on_error
from crl.paths import CONF_DIR


@hydra.main(config_path=CONF_DIR, config_name="curves", version_base=None)
@exit_on_error
def main(raw: DictConfig) -> None:
    from crl.analysis.report.curves import make_curves, table_text

    made = make_curves(load(CurvesConfig, raw))
    print(table_text(made.result))
    for w in made.result.warnings:
        print(f"warning: {w}")
    print(made.result.headline)
    print(f"written: {made.out} (report: {made.html})")


if __name__ == "__main__":
    main()
