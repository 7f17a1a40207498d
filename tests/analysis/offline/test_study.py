"""`crl study`'s cells, numbers and report (crl.analysis.offline.study, crl.analysis.report.study) on synthetic cells
with known answers (no model).

The study: task arith, layers 6 and 24, seeds 0-2, one synthetic run directory per cell (tests/analysis/synthetic.py)
with a val curve and a static baseline added. CRL's val accuracy at its last evaluation (80 rollouts: 40 train
episodes and two val evaluations of 20) is 0.8 at layer 6 and 0.5 at layer 24, plus 0, +0.05, -0.05 by seed; none is
flat at 0.4, static's one val point (after 40 rollouts) is 0.5. So at 80 rollouts CRL - none = 0.40 (sd 0.05, 95%
t-interval +-0.124) at layer 6 and 0.10 at layer 24 (the interval holds 0); CRL - static = 0.30 and 0.00.
Held out, every cell has synthetic.py's pattern (40 prompts): against none (and static, the same episodes) 8 format
fixes, 8 answer fixes and 1 format break, so format is 7/15 = 47% of the gain.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crl.analysis.offline.study import (
    MARK_FILE,
    Cell,
    budget_at,
    cell_state,
    curves,
    default_budgets,
    equal_budget,
    grid,
    heldout,
    load_cells,
    verdict,
)
from crl.analysis.report.study import study_report
from crl.config import StudyConfig
from crl.errors import CRLError
from crl.logs.schema import EpisodeRow
from tests.analysis.checks import FAST, assert_png
from tests.analysis.synthetic import SyntheticSpec, write_run_dir

SYNTACTIC = (".", ",", "\n", " 4", "<|im_end|>")
SEMANTIC = ("Paris", " is", " big", " city", " here")
CRL_VAL = {6: 0.8, 24: 0.5}
JITTER = {0: 0.0, 1: 0.05, 2: -0.05}


def _sweep(tolerated: float) -> list[dict[str, float]]:
    """A coefficient sweep whose tolerance (well-formed >= 0.9 x the rate at 0) is `tolerated`."""
    return [
        {"coef": c, "accuracy": 0.5, "well_formed_rate": 0.8 if c <= tolerated else 0.2} for c in (0.0, 2.0, 4.0, 8.0)
    ]


def _append(path: Path, rows: list[dict]) -> None:
    with (path / "episodes.jsonl").open("a") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)


def write_cell(out: Path, cell: Cell, marked: bool = True) -> Path:
    """A finished cell: synthetic.py's run plus train episodes, two val evaluations, none on val, static on test and
    its selection rows (module docstring for the numbers)."""
    spec = SyntheticSpec(
        run=cell.name,
        task=cell.task,
        layer=cell.layer,
        seed=cell.seed,
        random_seeds=(),
        tokens=SYNTACTIC if cell.layer == 6 else SEMANTIC,
        coef_sweep=_sweep(2.0 if cell.layer == 6 else 8.0),
    )
    path = write_run_dir(cell.path(out), spec)
    row = lambda phase, u, ep, pid, ok: EpisodeRow(cell.name, phase, u, ep, pid, "x", "y", float(ok), ok, True, 1)  # noqa: E731
    rows, ep = [], 1000
    for u in range(4):  # 4 updates of 10 train episodes
        for i in range(10):
            rows.append(row("train", u, ep, f"t{i}", False).to_dict())
            ep += 1
    for u, acc in ((0, 0.3), (4, CRL_VAL[cell.layer] + JITTER[cell.seed])):
        for i in range(20):
            rows.append(row("eval:val", u, ep, f"v{i}", i < round(acc * 20)).to_dict())
            ep += 1
    for i in range(20):
        rows.append(row("baseline:none:val", 10, ep, f"v{i}", i < 8).to_dict())
        ep += 1
    eps = [json.loads(x) for x in (path / "episodes.jsonl").read_text().splitlines()]
    for r in eps:  # static on test: the same episodes as none
        if r["phase"] == "baseline:none:test":
            rows.append({**r, "phase": "baseline:static:test", "episode": ep})
            ep += 1
    _append(path, rows)
    (path / "analysis").mkdir(exist_ok=True)
    pd.DataFrame(
        [
            {"method": "static", "stage": "feature@train", "feature": 3, "accuracy": 0.6, "rollouts": 20},
            {"method": "static", "stage": "coef@val", "feature": 3, "accuracy": 0.5, "rollouts": 20},
        ]
    ).to_csv(path / "analysis" / "baseline_selection.csv", index=False)
    if marked:
        (path / MARK_FILE).write_text("{}")
    return path


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("study")
    for c in grid(["arith"], [6, 24], [0, 1, 2]):
        write_cell(out, c)
    probe = {
        "task": "arith",
        "target": "answer",
        "unsteered": {"accuracy": 0.4},
        "layers": [
            {"layer": 6, "probe": {"value": 0.9, "ci": [0.85, 0.95]}, "oracle": {"accuracy": 0.7, "unsteered": 0.4}},
            {"layer": 24, "probe": {"value": 0.6, "ci": [0.5, 0.7]}, "verdict": "levers missing"},
        ],
    }
    (out / "probe-arith").mkdir()
    (out / "probe-arith" / "probe.json").write_text(json.dumps(probe))
    return out


def test_cell_names_are_the_grid_and_parse_back():
    cells = grid(["compare", "bbq_offline"], [6, 24], [0, 1])
    assert [c.name for c in cells[:3]] == ["compare-L6-s0", "compare-L6-s1", "compare-L24-s0"]
    assert all(Cell.parse(c.name) == c for c in cells)
    with pytest.raises(CRLError, match="not a study cell"):
        Cell.parse("compare-6-0")


def test_cell_state_follows_the_run_directory(tmp_path):
    cell = Cell("arith", 6, 0)
    path = cell.path(tmp_path)
    assert cell_state(path, True) == ("new", "not started")
    (path / ".hydra").mkdir(parents=True)
    assert cell_state(path, True)[0] == "new"  # Hydra's files only: a fresh run may use it
    write_cell(tmp_path, cell, marked=False)
    assert cell_state(path, False) == ("complete", "")
    assert cell_state(path, True)[0] == "analyze"  # trained, baselines not run
    (path / MARK_FILE).write_text("{}")
    assert cell_state(path, True) == ("complete", "")
    (path / "summary.json").unlink()  # killed before its end
    assert cell_state(path, True) == ("resume", "stopped before summary.json")
    (path / "FAILED.json").write_text(json.dumps({"error": "boom"}))
    assert cell_state(path, True) == ("resume", "failed (boom)")
    (path / "run.json").unlink()
    assert cell_state(path, True)[0] == "restart"


def test_equal_budget_differences_and_the_verdict(study):
    runs, notes = load_cells(study, grid(["arith"], [6, 24], [0, 1, 2]), True)
    assert len(runs) == 6 and notes == []
    cur = curves(runs)
    budgets = default_budgets(cur)
    assert budgets == {"arith": 80.0}  # 40 train episodes + 2 x 20 val
    at = budget_at(cur, budgets).set_index(["layer", "method"])
    assert at.loc[(6, "crl"), "accuracy"] == pytest.approx(0.8) and at.loc[(6, "crl"), "n_seeds"] == 3
    assert at.loc[(24, "none"), "accuracy"] == pytest.approx(0.4) and at.loc[(6, "static"), "accuracy"] == 0.5
    eq = equal_budget(cur, budgets).set_index(["layer", "baseline"])
    half = 4.302653 * 0.05 / np.sqrt(3)
    assert eq.loc[(6, "none"), "diff"] == pytest.approx(0.4)
    assert eq.loc[(6, "none"), "lo"] == pytest.approx(0.4 - half, abs=1e-4)
    assert eq["outcome"].to_dict() == {
        (6, "none"): "better",
        (6, "static"): "better",
        (24, "none"): "unresolved",
        (24, "static"): "unresolved",
    }
    held = heldout(runs, None, FAST).set_index(["layer", "method"])
    assert held.loc[(6, "none"), "net_format"] == pytest.approx(7 / 40)
    assert held.loc[(6, "none"), "net_answer"] == pytest.approx(8 / 40)
    assert held.loc[(24, "static"), "format_share"] == pytest.approx(7 / 15)
    text = verdict("arith", 80.0, equal_budget(cur, budgets), heldout(runs, None, FAST))
    assert text.startswith("arith: at 80 rollouts")
    assert "CRL beats none at layer 6 (L6 +0.40 [+0.28, +0.52], L24 +0.10 [-0.02, +0.22])" in text
    assert "beats static at layer 6 (L6 +0.30 [+0.18, +0.42], L24 +0.00 [-0.12, +0.12])" in text
    assert "make up 47% over none (layers 6 and 24), 47% over static (layers 6 and 24)" in text
    # A budget below static's first val point (40 rollouts): static is not reached.
    low = equal_budget(cur, {"arith": 30.0})
    assert set(low[low["baseline"] == "static"]["outcome"]) == {"unreached"}
    assert "Not reached within the budget: static (its first val point costs 40)" in verdict(
        "arith", 30.0, low, heldout(runs, None, FAST)
    )


def test_one_seed_is_never_resolved(study):
    runs, _ = load_cells(study, grid(["arith"], [6], [0]), True)
    cur = curves(runs)
    eq = equal_budget(cur, default_budgets(cur))
    assert set(eq["outcome"]) == {"unresolved"} and eq["lo"].isna().all()
    assert "cannot be told apart from none (L6 +0.40 no interval: one seed)" in verdict("arith", 80.0, eq, eq.iloc[0:0])


def test_the_study_report_on_synthetic_cells(study):
    cells = grid(["arith"], [6, 24], [0, 1, 2, 3])  # seed 3 was never run
    res = study_report(StudyConfig(n_boot=200), study, cells, True)
    assert res.html == study / "report.html"
    html = res.html.read_text()
    assert "cell arith-L6-s3 is left out: not started" in html
    assert "arith: at 80 rollouts" in html and "CRL beats none at layer 6" in html
    claim = (
        "arith: confirmed: the syntactic share falls from 1.00 at layer 6 to 0.00 at layer 24 and the tolerated "
        "coefficient rises from 2 at layer 6 to 8 at layer 24"
    )
    assert claim in html
    layers = res.report.tables["t0_layers"].set_index("layer")
    assert layers.loc[6, ["probe_headroom", "oracle_headroom"]].tolist() == pytest.approx([0.5, 0.3])
    assert np.isnan(layers.loc[24, "oracle_headroom"]) and layers.loc[24, "probe_verdict"] == "levers missing"
    assert layers.loc[6, "syntactic_share"] == 1.0 and layers.loc[24, "coef_tolerance"] == 8.0
    assert layers["n_seeds"].tolist() == [3, 3]
    per_cell = res.report.tables["t0_cells_at_budget"].set_index(["layer", "seed"])
    assert list(per_cell.columns) == ["crl", "none", "static"] and per_cell.loc[(6, 1), "crl"] == pytest.approx(0.85)
    coef = res.report.tables["t0_coef"]
    assert coef[(coef["layer"] == 24) & (coef["coef"] == 8.0)]["well_formed_rate"].item() == pytest.approx(0.8)
    assert "<th>format_share</th>" in html and "No cell measured side effects" in html
    assert not re.search(r"""src\s*=\s*["']?https?:""", html) and "<script" not in html
    assert_png(study / "figures" / "t0_curves.png")


def test_a_study_with_no_complete_cell_has_no_report(tmp_path):
    with pytest.raises(CRLError, match="no cell of the study"):
        study_report(StudyConfig(), tmp_path, grid(["arith"], [6], [0]), True)


def test_doctests():
    import doctest

    import crl.analysis.offline.layers
    import crl.analysis.offline.study
    import crl.commands.study

    for module in (crl.analysis.offline.study, crl.analysis.offline.layers, crl.commands.study):
        assert doctest.testmod(module).failed == 0, module.__name__
