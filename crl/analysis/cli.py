"""`crl analyze run_dir=...` and `crl compare 'dirs=[a,b]'` (Hydra apps; configs in conf/analyze.yaml and
conf/compare.yaml). The work is in `crl.analysis.report.analyze` and `crl.analysis.report.compare`; this
validates the config and prints paths.

`analyze_run(run_dir)` is the programmatic entry point (`crl train` calls it after training).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import hydra
from omegaconf import DictConfig, OmegaConf

from crl.analysis.report import analyze, compare
from crl.config import AnalyzeConfig, CompareConfig, ConfigError, load
from crl.errors import CRLError, exit_on_error
from crl.paths import CONF_DIR

T = TypeVar("T")


def to_settings(cfg: DictConfig | dict[str, Any], cls: type[T]) -> T:
    """A config as its settings dataclass (`crl.config`); unknown keys, wrong types or out-of-range values
    become one-line CRLErrors."""
    raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    raw = {k: v for k, v in raw.items() if k != "hydra"}
    try:
        return load(cls, raw)
    except ConfigError as e:
        name = "analyze" if cls is AnalyzeConfig else "compare"
        raise CRLError(f"bad {cls.__name__} setting: {e}; see conf/{name}.yaml") from None


def analyze_run(run_dir: str | Path, **settings: Any) -> Path:
    """Analyze one run directory with default settings (overridable by keyword); returns report.html."""
    return analyze.analyze_run(to_settings({"run_dir": str(run_dir), **settings}, AnalyzeConfig)).html


def compare_runs(dirs: list[str | Path], **settings: Any) -> Path:
    """Compare run directories; returns the comparison report.html."""
    return compare.compare_runs(to_settings({"dirs": [str(d) for d in dirs], **settings}, CompareConfig)).html


@hydra.main(config_path=CONF_DIR, config_name="analyze", version_base=None)
@exit_on_error
def analyze_main(cfg: DictConfig) -> None:
    print(analyze.analyze_run(to_settings(cfg, AnalyzeConfig)).html)


@hydra.main(config_path=CONF_DIR, config_name="compare", version_base=None)
@exit_on_error
def compare_main(cfg: DictConfig) -> None:
    print(compare.compare_runs(to_settings(cfg, CompareConfig)).html)
