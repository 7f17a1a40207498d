"""`crl analyze` / `crl compare` through Hydra: the report path on stdout, nothing written elsewhere, one-line
errors."""

from __future__ import annotations

from pathlib import Path

import pytest

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
