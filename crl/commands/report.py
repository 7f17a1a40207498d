"""The report commands (crl.analysis.report does the work):

crl analyze run_dir=runs/<run>         # plots and one self-contained report.html for a run
crl compare 'dirs=[runs/a,runs/b]'     # one report over several runs
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from crl.config import AnalyzeConfig, CompareConfig, load
from crl.errors import exit_on_error
from crl.paths import CONF_DIR


@hydra.main(config_path=CONF_DIR, config_name="analyze", version_base=None)
@exit_on_error
def analyze(raw: DictConfig) -> None:
    from crl.analysis.report.analyze import analyze_run

    print(analyze_run(load(AnalyzeConfig, raw)).html)


@hydra.main(config_path=CONF_DIR, config_name="compare", version_base=None)
@exit_on_error
def compare(raw: DictConfig) -> None:
    from crl.analysis.report.compare import compare_runs

    print(compare_runs(load(CompareConfig, raw)).html)
