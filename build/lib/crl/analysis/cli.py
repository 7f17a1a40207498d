"""`crl analyze run_dir=...` and `crl compare 'dirs=[a,b]'` (Hydra apps; configs in conf/analyze.yaml and
conf/compare.yaml). The work is in `crl.analysis.pipeline`; this validates the config and prints paths.

`analyze_run(run_dir)` is the programmatic entry point (`crl train` calls it after training).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from crl.analysis import pipeline
from crl.analysis.pipeline import AnalyzeConfig, CompareConfig
from crl.errors import CRLError, exit_on_error
from crl.paths import CONF_DIR

T = TypeVar("T")


def to_settings(cfg: DictConfig | dict[str, Any], cls: type[T]) -> T:
    """Merge a config onto the settings dataclass; unknown keys or wrong types become one-line CRLErrors."""
    raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    raw = {k: v for k, v in raw.items() if k != "hydra"}
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), raw)
    except OmegaConfBaseException as e:
        first = str(e).splitlines()[0]
        name = "analyze" if cls is AnalyzeConfig else "compare"
        raise CRLError(f"bad {cls.__name__} setting: {first}; see conf/{name}.yaml") from None
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def analyze_run(run_dir: str | Path, **settings: Any) -> Path:
    """Analyze one run directory with default settings (overridable by keyword); returns report.html."""
    return pipeline.analyze_run(to_settings({"run_dir": str(run_dir), **settings}, AnalyzeConfig)).html


def compare_runs(dirs: list[str | Path], **settings: Any) -> Path:
    """Compare run directories; returns the comparison report.html."""
    return pipeline.compare_runs(to_settings({"dirs": [str(d) for d in dirs], **settings}, CompareConfig)).html


@hydra.main(config_path=CONF_DIR, config_name="analyze", version_base=None)
@exit_on_error
def analyze_main(cfg: DictConfig) -> None:
    print(pipeline.analyze_run(to_settings(cfg, AnalyzeConfig)).html)


@hydra.main(config_path=CONF_DIR, config_name="compare", version_base=None)
@exit_on_error
def compare_main(cfg: DictConfig) -> None:
    print(pipeline.compare_runs(to_settings(cfg, CompareConfig)).html)
