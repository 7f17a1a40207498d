"""`compare_runs`: seeds pooled per configuration, SAE mismatch handling, the features setting."""

from __future__ import annotations

import pytest

from crl.analysis.report.compare import compare_runs
from crl.config import CompareConfig
from crl.errors import CRLError
from tests.analysis.checks import assert_self_contained
from tests.analysis.synthetic import SyntheticSpec, write_run_dir


def test_compare_pools_seeds_and_handles_saes(tmp_path, capsys):
    dirs = [write_run_dir(tmp_path / f"s{s}", SyntheticSpec(run=f"s{s}", seed=s, n_prompts=20)) for s in (0, 1)]
    dirs.append(write_run_dir(tmp_path / "mm", SyntheticSpec(run="mm", task="mmlu", other_feature=11, n_prompts=20)))
    res = compare_runs(CompareConfig(dirs=[str(d) for d in dirs], out_dir=str(tmp_path / "cmp"), n_boot=200))
    assert res.warnings == []
    methods = res.report.tables["methods_0"].set_index("method")
    assert methods.loc["crl", "n_seeds"] == 2
    spec = res.report.tables["task_specificity"].set_index("feature")
    assert spec.loc[7, "kind"] == "shared" and spec.loc[11, "kind"] == "task-specific"
    assert_self_contained(res.html.read_text())

    other = write_run_dir(tmp_path / "l9", SyntheticSpec(run="l9", layer=9, n_prompts=20))
    with pytest.raises(CRLError, match="different SAEs.*not comparable"):
        compare_runs(CompareConfig(dirs=[str(dirs[0]), str(other)], features="require", out_dir=str(tmp_path / "x")))
    res = compare_runs(CompareConfig(dirs=[str(dirs[0]), str(other)], out_dir=str(tmp_path / "y"), n_boot=200))
    assert len(res.warnings) == 1 and "accuracy is still compared" in res.warnings[0]
    assert "different SAEs" in capsys.readouterr().err
    assert "top_features" not in res.report.tables and "layers_0" in res.report.tables
    with pytest.raises(CRLError, match="at least two"):
        compare_runs(CompareConfig(dirs=[str(dirs[0])]))


def test_compare_feature_mode_accepts_booleans(tmp_path):
    from crl.analysis.report.compare import _feature_mode

    assert [_feature_mode(m) for m in (True, "True", False, "false", "auto")] == [
        "require",
        "require",
        "skip",
        "skip",
        "auto",
    ]
    with pytest.raises(CRLError, match="auto, require or skip"):
        _feature_mode("sometimes")


def test_compare_of_seeds_reports_feature_groups(tmp_path):
    dirs = [write_run_dir(tmp_path / f"s{s}", SyntheticSpec(run=f"s{s}", seed=s, n_prompts=20)) for s in (0, 1, 2)]
    res = compare_runs(CompareConfig(dirs=[str(d) for d in dirs], out_dir=str(tmp_path / "cmp"), n_boot=200))
    groups = res.report.tables["seed_groups"]
    assert len(res.report.tables["seed_pairs"]) == 3  # every pair of the 3 seeds
    assert groups["n_runs"].max() <= 3 and set(groups.columns) >= {"members", "recurrence", "lo", "hi"}
    assert "Across seeds" in res.html.read_text()
