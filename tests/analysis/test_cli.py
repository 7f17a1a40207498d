"""`crl analyze` / `crl compare` through Hydra, and the programmatic `analyze_run(path)`."""

from __future__ import annotations

from pathlib import Path

import pytest

from crl.errors import CRLError
from tests.analysis.synthetic import SyntheticSpec, write_run_dir


def test_cli_analyze_and_compare_through_hydra(tmp_path, capsys, monkeypatch):
    from crl.cli import main

    run_path = write_run_dir(tmp_path / "small", SyntheticSpec(n_prompts=8, random_seeds=(0,)))

    monkeypatch.chdir(tmp_path)
    main(["analyze", f"run_dir={run_path}", f"out_dir={tmp_path / 'out'}", "n_boot=100"])
    assert capsys.readouterr().out.strip() == str(tmp_path / "out" / "report.html")
    main(["compare", f"dirs=[{run_path},{run_path}]", "n_boot=100"])
    printed = Path(capsys.readouterr().out.strip())
    assert printed.parent.parent == Path("runs") and printed.parent.name.startswith("compare-")
    assert printed.exists()
    assert not list(tmp_path.glob("*.log")) and not (tmp_path / ".hydra").exists()
    with pytest.raises(SystemExit) as e:
        main(["analyze", f"run_dir={tmp_path / 'missing'}"])
    assert e.value.code == 2 and "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["analyze", f"run_dir={run_path}", "+bogus=1"])
    err = capsys.readouterr().err  # one line naming the key (checked by crl.config before the command runs)
    assert err.startswith("crl: error: ") and "bogus" in err and err.count("\n") == 1


def test_programmatic_analyze_run_takes_a_path(tmp_path):
    from crl.analysis.cli import analyze_run as analyze_path

    d = write_run_dir(tmp_path / "r", SyntheticSpec(n_prompts=6, random_seeds=()))
    out = analyze_path(d, n_boot=50, out_dir=str(tmp_path / "o"))
    assert out == tmp_path / "o" / "report.html" and out.exists()
    with pytest.raises(CRLError, match="bad AnalyzeConfig setting"):
        analyze_path(d, no_such_option=1)
