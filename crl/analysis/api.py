"""The programmatic entry points of the analyses: a report from a run directory (or several) in one call.

    from crl.analysis.api import analyze_run, compare_runs
    analyze_run("runs/<run>", n_boot=500)            # -> runs/<run>/analysis/report.html

Settings are those of `crl analyze` / `crl compare` (`crl.config.AnalyzeConfig` / `CompareConfig`), as keywords;
the work is in `crl.analysis.report.analyze` and `crl.analysis.report.compare`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from crl.analysis.report import analyze, compare
from crl.config import AnalyzeConfig, CompareConfig, ConfigError, load
from crl.errors import CRLError

T = TypeVar("T")


def _settings(cls: type[T], name: str, settings: dict[str, Any]) -> T:
    """Keyword settings as a validated `cls`; a bad one is a one-line CRLError."""
    try:
        return load(cls, settings)
    except ConfigError as e:
        raise CRLError(f"bad {cls.__name__} setting: {e}; see conf/{name}.yaml") from None


def analyze_run(run_dir: str | Path, **settings: Any) -> Path:
    """Analyze one run directory with default settings (overridable by keyword); returns report.html."""
    return analyze.analyze_run(_settings(AnalyzeConfig, "analyze", {"run_dir": str(run_dir), **settings})).html


def compare_runs(dirs: list[str | Path], **settings: Any) -> Path:
    """Compare run directories; returns the comparison report.html."""
    return compare.compare_runs(_settings(CompareConfig, "compare", {"dirs": [str(d) for d in dirs], **settings})).html
