"""`crl study`'s cells, numbers and report (crl.analysis.offline.study, crl.analysis.report.study) on synthetic cells
with known answers (no model).

The study: task arith, layers 6 and 24, seeds 0-2, one synthetic run directory per cell (tests/analysis/synthetic.py)
with a val curve and a static baseline added, each val point with its per-prompt outcomes on the 20 val prompts
v0..v19 (the first k correct). CRL's val accuracy at its last evaluation (80 rollouts: 40 train episodes and two val
evaluations of 20) is 0.8 at layer 6 and 0.5 at layer 24, plus 0, +0.05, -0.05 by seed; its first evaluation is
exactly none's outcomes; none is flat at 0.4, static's one val point (after 40 rollouts) is 0.5. So at 80 rollouts
CRL - none = 0.40 at layer 6 and 0.10 at layer 24 (two correct prompts of 20 in seed 0: the bootstrap over prompts
reaches 0); CRL - static = 0.30 and 0.00; at 20 rollouts CRL is its first evaluation and CRL - none is exactly 0.
Held out, every cell has synthetic.py's pattern (40 prompts): against none (and static, the same episodes) 8 format
fixes, 8 answer fixes and 1 format break, so format is 7/15 = 47% of the gain.
"""

from __future__ import annotations

import html
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
    fixed_budgets,
    grid,
    heldout,
    load_cells,
    mark_analyzed,
    outcomes,
    verdict,
)
from crl.analysis.report.study import SUMMARY_FILE, study_numbers, study_report, write_summary
from crl.config import StudyConfig
from crl.errors import CRLError
from crl.logs.schema import EpisodeRow
from tests.analysis.checks import FAST, assert_png
from tests.analysis.synthetic import SyntheticSpec, write_run_dir
from tests.run.helpers import crl

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
    for u, acc in ((0, 0.4), (4, CRL_VAL[cell.layer] + JITTER[cell.seed])):
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
    static_val = [{"row": 1, "prompt_id": f"v{i}", "correct": int(i < 10), "well_formed": 1} for i in range(20)]
    pd.DataFrame(static_val).to_csv(path / "analysis" / "baseline_val_outcomes.csv", index=False)
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


def test_a_cell_analyzed_with_another_coefficient_sweep_is_analyzed_again(tmp_path):
    """The study's mark records the coefficient sweep its `crl analyze` ran; a mark from before it did holds the only
    sweep there was then (0.5, 1, 2, 4)."""
    cell = Cell("arith", 6, 0)
    path = write_cell(tmp_path, cell, marked=False)
    wide = [0.5, 1, 2, 4, 8, 16]
    (path / MARK_FILE).write_text("{}")  # an older mark
    assert cell_state(path, True, [0.5, 1, 2, 4]) == ("complete", "")
    assert cell_state(path, True, [4.0, 2.0, 1.0, 0.5]) == ("complete", "")  # the same sweep, in another order
    assert cell_state(path, True, wide) == (
        "analyze",
        "its coefficient sweep was [0.5,1,2,4], analyze.coef_sweep is [0.5,1,2,4,8,16]",
    )
    assert cell_state(path, True) == ("complete", "")  # not compared (the report's view)
    assert cell_state(path, False, wide) == ("complete", "")  # no baselines: no analyze, no sweep
    mark_analyzed(path, "crl analyze ...", wide)
    assert json.loads((path / MARK_FILE).read_text())["coef_sweep"] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
    assert cell_state(path, True, wide) == ("complete", "")
    assert cell_state(path, True, [0.5, 1, 2, 4])[0] == "analyze"
    (path / MARK_FILE).write_text("[]")  # unreadable as a mark: analyzed again
    assert cell_state(path, True, wide) == (
        "analyze",
        "its coefficient sweep was unknown, analyze.coef_sweep is [0.5,1,2,4,8,16]",
    )


def test_equal_budget_differences_and_the_verdict(study):
    runs, notes = load_cells(study, grid(["arith"], [6, 24], [0, 1, 2]), True)
    assert len(runs) == 6 and notes == []
    cur = curves(runs)
    budgets = default_budgets(cur)
    assert budgets == {"arith": 80.0}  # 40 train episodes + 2 x 20 val
    outs = outcomes(runs)
    at = budget_at(cur, outs, budgets, FAST).set_index(["layer", "method"])
    assert at.loc[(6, "crl"), "accuracy"] == pytest.approx(0.8) and at.loc[(6, "crl"), "n_seeds"] == 3
    assert at.loc[(24, "none"), "accuracy"] == pytest.approx(0.4) and at.loc[(6, "static"), "accuracy"] == 0.5
    assert at["n_prompts"].tolist() == [20] * 6
    none = at.loc[(24, "none")]  # the same outcomes in every cell: the interval is the prompts' alone
    assert none["lo"] < 0.3 and none["hi"] > 0.5
    eq = equal_budget(cur, outs, budgets, FAST).set_index(["layer", "baseline"])
    assert eq.loc[(6, "none"), "diff"] == pytest.approx(0.4) and eq.loc[(24, "static"), "diff"] == pytest.approx(0)
    assert 0 < eq.loc[(6, "none"), "lo"] < 0.4 < eq.loc[(6, "none"), "hi"] and eq["n_prompts"].tolist() == [20] * 4
    assert eq.loc[(24, "none"), "lo"] <= 0  # 2 prompts of 20 carry seed 0's +0.10
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
    text = verdict("arith", 80.0, equal_budget(cur, outs, budgets, FAST), heldout(runs, None, FAST))
    assert text.startswith("arith: at 80 rollouts")
    e = eq.reset_index()
    assert f"CRL beats none at layer 6 ({_diffs(e, 'none')})" in text
    assert f"beats static at layer 6 ({_diffs(e, 'static')})" in text
    assert "make up 47% over none and static (layers 6 and 24); the rest are answer fixes" in text
    # A budget below static's first val point (40 rollouts): static is not reached.
    low = equal_budget(cur, outs, {"arith": 30.0}, FAST)
    assert set(low[low["baseline"] == "static"]["outcome"]) == {"unreached"}
    assert "Not reached within the budget: static (its first val point costs 40)" in verdict(
        "arith", 30.0, low, heldout(runs, None, FAST)
    )
    # At 20 rollouts CRL is its first evaluation, which steered nothing: exactly none's outcomes, so exactly 0.
    first = equal_budget(cur, outs, {"arith": 20.0}, FAST).set_index(["layer", "baseline"]).loc[(6, "none")]
    assert (first["diff"], first["lo"], first["hi"], first["outcome"]) == (0.0, 0.0, 0.0, "unresolved")


def _diffs(eq: pd.DataFrame, base: str) -> str:
    """The verdict's per-layer clause of `base`, from the table."""
    rows = eq[eq["baseline"] == base].sort_values("layer").to_dict("records")
    return ", ".join(f"L{r['layer']} {r['diff']:+.2f} [{r['lo']:+.2f}, {r['hi']:+.2f}]" for r in rows)


def test_a_smaller_val_set_is_read_on_the_prompts_both_scored():
    """The flaw this replaces: none scored on the first 64 of CRL's 200 val prompts (33/64 = 0.516) against CRL
    before it steers (104/200 = 0.520, the same outcome on every shared prompt) read as "+0.004 [+0.004, +0.004]".
    Paired by prompt it is exactly 0 on the 64 prompts both scored, and unresolved."""
    crl_ok = np.r_[np.ones(33), np.zeros(31), np.ones(71), np.zeros(65)]  # 104 of 200; the first 64 hold 33
    cur = pd.DataFrame(
        [
            {"task": "t", "layer": 6, "method": m, "seed": s, "rollouts": r, "accuracy": a, "best": a, "source": src}
            for s in (0, 1)
            for m, r, a, src in (("crl", 200.0, 0.52, "update:0"), ("none", 0.0, 33 / 64, "row:0"))
        ]
    )
    outs = pd.DataFrame(
        [
            {"task": "t", "layer": 6, "seed": s, "source": src, "prompt_id": f"p{i}", "correct": float(crl_ok[i])}
            for s in (0, 1)
            for src, n in (("update:0", 200), ("row:0", 64))
            for i in range(n)
        ]
    )
    eq = equal_budget(cur, outs, {"t": 500.0}, FAST).iloc[0]
    assert (eq["diff"], eq["lo"], eq["hi"], eq["n_prompts"], eq["outcome"]) == (0.0, 0.0, 0.0, 64, "unresolved")
    at = budget_at(cur, outs, {"t": 500.0}, FAST).set_index("method")
    assert at.loc["none", "accuracy"] == pytest.approx(33 / 64) and at.loc["none", "n_prompts"] == 64
    assert at.loc["none", "hi"] - at.loc["none", "lo"] > 0.1  # seed-free, yet 64 prompts' worth of noise
    fixed = fixed_budgets(cur, outs, [100, 500], FAST).set_index(["budget", "method"])
    assert np.isnan(fixed.loc[(100, "crl"), "accuracy"]) and fixed.loc[(100, "none"), "outcome"] == "unreached"
    assert fixed.loc[(500, "none"), "diff"] == 0.0 and fixed.loc[(500, "none"), "outcome"] == "unresolved"
    # Without per-prompt records the baseline is unpaired: the accuracies' difference, no interval, no outcome.
    eq = equal_budget(cur, outs[outs["source"] != "row:0"], {"t": 500.0}, FAST).iloc[0]
    assert eq["outcome"] == "unpaired" and eq["diff"] == pytest.approx(0.52 - 33 / 64) and np.isnan(eq["lo"])
    assert "Not compared, for lack of per-prompt val records" in verdict(
        "t", 500.0, equal_budget(cur, outs.iloc[:400], {"t": 500.0}, FAST), pd.DataFrame()
    )


def test_one_seed_is_never_resolved(study):
    runs, _ = load_cells(study, grid(["arith"], [6], [0]), True)
    cur = curves(runs)
    eq = equal_budget(cur, outcomes(runs), default_budgets(cur), FAST)
    assert set(eq["outcome"]) == {"unresolved"} and (eq["lo"] > 0).all()  # over prompts it would be resolved
    text = verdict("arith", 80.0, eq, eq.iloc[0:0])
    assert "cannot be told apart from none (L6 +0.40 [" in text and "(one seed: prompts only)" in text


def test_the_study_report_on_synthetic_cells(study):
    cells = grid(["arith"], [6, 24], [0, 1, 2, 3])  # seed 3 was never run
    res = study_report(StudyConfig(n_boot=200), study, cells, True)
    assert res.html == study / "report.html"
    html = res.html.read_text()
    assert "cell arith-L6-s3 is left out: not started" in html
    assert "probe.json: a record from before task_option; matched by task name arith" in html  # the fixture's
    assert "arith: at 80 rollouts" in html and "CRL beats none at layer 6" in html
    claim = (
        "arith: confirmed: the syntactic share falls from 1.00 at layer 6 to 0.00 at layer 24 and the tolerated "
        "coefficient rises: layer 24 tolerates at least 8, larger than layer 6's 2 (8 is the sweep's largest "
        "coefficient, a lower bound)"
    )
    assert claim.replace("'", "&#x27;") in html  # the report escapes quotes
    layers = res.report.tables["t0_layers"].set_index("layer")
    assert layers.loc[6, ["probe_headroom", "oracle_headroom"]].tolist() == pytest.approx([0.5, 0.3])
    assert np.isnan(layers.loc[24, "oracle_headroom"]) and layers.loc[24, "probe_verdict"] == "levers missing"
    assert layers.loc[6, "syntactic_share"] == 1.0 and layers.loc[24, "coef_tolerance"] == 8.0
    assert layers["coef_at_ceiling"].tolist() == [False, True]  # 8 is the sweep's largest coefficient
    assert layers["n_seeds"].tolist() == [3, 3]
    per_cell = res.report.tables["t0_cells_at_budget"].set_index(["layer", "seed"])
    assert list(per_cell.columns) == ["crl", "none", "static"] and per_cell.loc[(6, 1), "crl"] == pytest.approx(0.85)
    coef = res.report.tables["t0_coef"]
    assert coef[(coef["layer"] == 24) & (coef["coef"] == 8.0)]["well_formed_rate"].item() == pytest.approx(0.8)
    assert "<th>format_share</th>" in html and "No cell measured side effects" in html
    assert not re.search(r"""src\s*=\s*["']?https?:""", html) and "<script" not in html
    assert_png(study / "figures" / "t0_curves.png")


def _block(text: str, start: str, end: str) -> list[str]:
    """The lines of `text` after the line starting with `start`, up to the next starting with `end`."""
    lines = text.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(start))
    j = next(k for k in range(i + 1, len(lines)) if lines[k].startswith(end))
    return lines[i + 1 : j]


def _interval(text: str) -> tuple[float, float]:
    lo, hi = text.strip("[]").split(", ")
    return float(lo), float(hi)


def test_the_text_summary_holds_the_reports_numbers(study):
    """summary.txt (and what `crl study` prints) reads the report's own tables: the verdict sentence, a row per
    (layer, method) at equal budget and per (layer, baseline) of CRL minus it, the held-out and the layer tables."""
    cells = grid(["arith"], [6, 24], [0, 1, 2])
    numbers = study_numbers(StudyConfig(n_boot=200), study, cells, True)
    res = study_report(StudyConfig(n_boot=200), study, cells, True, numbers)
    path, text = write_summary(numbers)
    assert path == study / SUMMARY_FILE and path.read_text() == text
    assert max(len(line) for line in text.splitlines()) <= 120
    t = numbers.tasks[0]
    assert t.verdict.startswith("arith: at 80 rollouts") and t.verdict in " ".join(text.split())
    assert html.escape(t.verdict, quote=False) in res.html.read_text()

    at = res.report.tables["t0_budget"]  # the HTML's table
    rows = _block(text, "Accuracy at equal budget, 80 rollouts", "CRL minus baseline")
    assert len(rows) == 1 + len(at) == 7  # header, then 2 layers x crl, none, static
    for line, r in zip(rows[1:], at.to_dict("records"), strict=True):
        layer, method, n_seeds, acc, ci = line.split(maxsplit=4)
        assert (int(layer), method, int(n_seeds)) == (r["layer"], r["method"], r["n_seeds"])
        assert float(acc) == pytest.approx(r["accuracy"], abs=5e-4)
        assert _interval(ci) == pytest.approx((r["lo"], r["hi"]), abs=5e-4)
    assert rows[1].split()[:4] == ["6", "crl", "3", "0.800"]

    eq = res.report.tables["t0_equal_budget"]
    rows = _block(text, "CRL minus baseline", "At fixed budgets")
    assert len(rows) == 1 + len(eq) == 5
    for line, r in zip(rows[1:], eq.to_dict("records"), strict=True):
        layer, base, n_seeds, diff, rest = line.split(maxsplit=4)
        ci, outcome = rest.rsplit("  ", 1)
        assert (int(layer), base, outcome.strip()) == (r["layer"], r["baseline"], r["outcome"])
        assert float(diff) == pytest.approx(r["diff"], abs=5e-4)
        assert _interval(ci.strip()) == pytest.approx((r["lo"], r["hi"]), abs=5e-4)
    assert rows[1].split()[:4] == ["6", "none", "3", "+0.400"] and rows[1].endswith("better")

    fixed = res.report.tables["t0_fixed_budgets"]  # 500, 2000, 8000: every point of these cells is within 500
    rows = _block(text, "At fixed budgets", "Held out")
    assert len(rows) == 1 + len(fixed) == 1 + 3 * 6
    none6 = [line.split() for line in rows if line.split()[:3] == ["6", "2000", "none"]]
    assert none6[0][-1] == "better" and float(none6[0][7]) == pytest.approx(0.4)  # after [lo, hi]
    assert fixed[fixed["method"] == "crl"]["outcome"].isna().all()

    held = res.report.tables["t0_heldout"].set_index(["layer", "method"])
    rows = _block(text, "Held out", "Per layer")
    assert rows[0].split() == ["layer", "method", "accuracy", "[lo,", "hi]", "diff", "[lo,", "hi]", "format_share"]
    none6 = next(line.split() for line in rows if line.split()[:2] == ["6", "none"])
    assert float(none6[2]) == pytest.approx(held.loc[(6, "none"), "accuracy"], abs=5e-4)
    assert float(none6[5]) == pytest.approx(held.loc[(6, "none"), "diff_vs_ref"], abs=5e-4)
    assert float(none6[-1]) == pytest.approx(7 / 15, abs=5e-4)

    layers = res.report.tables["t0_layers"].set_index("layer")
    rows = _block(text, "Per layer", "Layer claim")
    assert [line.split()[0] for line in rows[1:]] == ["6", "24"]
    l24 = rows[2].split()
    assert int(l24[1]) == 3 and float(l24[2]) == pytest.approx(layers.loc[24, "accuracy"], abs=5e-4)
    assert float(l24[-3]) == layers.loc[24, "syntactic_share"] == 0.0
    assert l24[-2] == ">=8.000" and layers.loc[24, "coef_tolerance"] == 8.0  # the sweep's ceiling: a lower bound
    assert rows[1].split()[-2] == "2.000"
    assert f"Layer claim: {t.claim}." in " ".join(text.split()) and t.claim.startswith("confirmed: ")
    assert "none measured (analysis/offtask.json)" in text  # the side effects


def test_report_only_prints_the_summary_and_runs_no_cell(tmp_path, capsys, monkeypatch):
    """`crl study out=<study> report_only=true`: report.html and summary.txt again from the cells on disk, the
    summary printed, no cell run or touched; a cell's override given with it is refused."""
    import crl.commands.study as command

    out = tmp_path / "s"
    for c in grid(["arith"], [6, 24], [0, 1]):
        write_cell(out, c)
    plan = {"tasks": ["arith"], "layers": [6, 24], "seeds": [0, 1], "train": [], "baselines": True, "analyze": []}
    (out / "study.json").write_text(json.dumps({**plan, "out": str(out)}))
    before = {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*")}

    def no_cell(argv: list[str]) -> tuple[int, str | None]:
        raise AssertionError(f"a cell ran: {argv}")

    monkeypatch.setattr(command, "in_process", no_cell)
    monkeypatch.setattr(command, "child_process", no_cell)
    assert crl("study", f"out={out}", "report_only=true", "n_boot=100") == 0
    printed = capsys.readouterr().out
    text = (out / SUMMARY_FILE).read_text()
    assert printed.splitlines()[0] == f"[crl study] report: {out / 'report.html'}"
    assert text in printed and printed.rstrip().endswith(f"[crl study] summary: {out / SUMMARY_FILE}")
    assert "arith: at 80 rollouts" in text and "cannot be told apart from none" not in text  # 2 seeds: intervals
    rows = _block(text, "Accuracy at equal budget", "CRL minus baseline")
    crl6 = next(line.split() for line in rows if line.split()[:2] == ["6", "crl"])
    assert crl6[2] == "2" and float(crl6[3]) == pytest.approx((0.8 + 0.85) / 2, abs=5e-4)
    assert (out / "report.html").exists()
    assert {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*")} == before  # no new or changed file

    assert crl("study", f"out={out}", "report_only=true", "seeds=[0]", "n_boot=100") == 0  # a part of the grid
    rows = _block(capsys.readouterr().out, "Accuracy at equal budget", "CRL minus baseline")
    assert next(line.split() for line in rows if line.split()[:2] == ["6", "crl"])[2:4] == ["1", "0.800"]
    assert crl("study", f"out={out}", "report_only=true", "ppo.total_updates=2") == 2
    assert "report_only=true runs no cell, so ppo.total_updates=2 has nothing to do" in capsys.readouterr().err
    assert crl("study", f"out={tmp_path / 'none'}", "report_only=true") == 2
    assert "holds no study (no study.json)" in capsys.readouterr().err


# -- which `crl probe` record is a task's ---------------------------------------------------------------------------
FAMILY_TASK = (
    "task:\n  name: compare\n  family:\n    enabled: true\n    wordings: [plain, bigger, pick, value]\n"
    "    directions: [larger, smaller]\n    ranges: [2digit]\n    holdout_wordings: [option, than]\n"
    "    holdout_ranges: [3digit]\n"
)  # conf/task/compare_family.yaml, as a cell's config.yaml holds it
PLAIN = {"wordings": ["plain"], "directions": ["larger"], "ranges": ["2digit"]}  # compare's one template
BOTH = {"wordings": ["plain", "bigger", "pick", "value"], "directions": ["larger", "smaller"], "ranges": ["2digit"]}


def _probe_record(path: Path, probe: float, **keys) -> Path:
    """A probe.json at `path` whose layer-6 probe reads `probe` (unsteered 0.4), with `keys` (task, task_option,
    family) on top."""
    path.mkdir(parents=True, exist_ok=True)
    layers = [{"layer": 6, "probe": {"value": probe, "ci": [probe - 0.05, probe + 0.05]}}]
    rec = {"task": "compare", "target": "answer", "unsteered": {"accuracy": 0.4}, "layers": layers, **keys}
    (path / "probe.json").write_text(json.dumps(rec))
    return path / "probe.json"


def _compare_cells(out: Path) -> list[Cell]:
    """compare and compare_family cells as `crl train` writes them: both name the registry task compare in run.json,
    and config.yaml holds each one's composed task (compare's with the family off)."""
    cells = grid(["compare", "compare_family"], [6, 24], [0])
    for c in cells:
        path = write_cell(out, c)
        info = json.loads((path / "run.json").read_text())
        (path / "run.json").write_text(json.dumps({**info, "task": "compare"}))
        task = FAMILY_TASK if c.task == "compare_family" else "task:\n  name: compare\n"
        (path / "config.yaml").write_text(f"{task}seed: {c.seed}\n")
    return cells


def test_each_study_task_gets_the_probe_of_its_own_task_option(tmp_path):
    """The bug: both probes say task compare, so the compare family's probe replaced compare's. By task_option, each
    task gets its own, and the family each probed is the one its cells train."""
    out = tmp_path / "s"
    cells = _compare_cells(out)
    _probe_record(out / "probe-compare", 0.9, task_option="compare", family=PLAIN)
    _probe_record(out / "probe-compare_family", 0.6, task_option="compare_family", family=BOTH)
    n = study_numbers(StudyConfig(n_boot=100), out, cells, True)
    by_task = {t.task: t for t in n.tasks}
    assert by_task["compare"].has_probe and by_task["compare_family"].has_probe
    assert by_task["compare"].layer_table.set_index("layer").loc[6, "probe"] == pytest.approx(0.9)
    assert by_task["compare_family"].layer_table.set_index("layer").loc[6, "probe"] == pytest.approx(0.6)
    assert by_task["compare_family"].layer_table.set_index("layer").loc[6, "probe_headroom"] == pytest.approx(0.2)
    assert not [w for w in n.warnings if "probe" in w], n.warnings


def _runs(out: Path, cells: list[Cell], task: str) -> list:
    from crl.logs.reader import load_run

    return [load_run(c.path(out), include_train=False) for c in cells if c.task == task]


def test_a_probe_of_another_family_than_the_cells_is_left_out_with_a_note(tmp_path):
    from crl.analysis.report.study import find_probes, task_probe

    out = tmp_path / "s"
    cells = _compare_cells(out)
    one = _probe_record(
        out / "probe-larger", 0.9, task_option="compare_family", family={**BOTH, "directions": ["larger"]}
    )
    probes, notes = find_probes(out, [])
    assert notes == [] and probes["compare_family"][0] == one
    record, notes = task_probe("compare_family", _runs(out, cells, "compare_family"), probes)
    assert record is None
    assert notes == [
        f"{one} probes compare_family with directions [larger], the cells train directions [larger, smaller]; left out"
    ]
    assert task_probe("compare", _runs(out, cells, "compare"), probes) == (None, [])  # not compare's either


def test_a_record_from_before_task_option_matches_only_the_task_of_its_name(tmp_path):
    from crl.analysis.report.study import find_probes, task_probe

    out = tmp_path / "s"
    cells = _compare_cells(out)
    old = _probe_record(out / "probe-old", 0.9)  # no task_option, no family: `crl probe` before them
    probes, _ = find_probes(out, [])
    record, notes = task_probe("compare", _runs(out, cells, "compare"), probes)
    assert record is not None and record["layers"][0]["probe"]["value"] == 0.9
    assert notes == [f"{old}: a record from before task_option; matched by task name compare"]
    assert task_probe("compare_family", _runs(out, cells, "compare_family"), probes) == (None, [])


def test_two_records_of_one_task_option_use_the_newer_file(tmp_path):
    import os

    from crl.analysis.report.study import find_probes

    a = _probe_record(tmp_path / "probe-a", 0.9, task_option="compare_family", family=BOTH)
    b = _probe_record(tmp_path / "probe-b", 0.6, task_option="compare_family", family=BOTH)
    os.utime(b, (1_000_000, 1_000_000))  # a (read first) is the newer
    probes, notes = find_probes(tmp_path, [])
    assert probes["compare_family"][0] == a
    assert notes == [f"two probe records of task compare_family; {a} is used (newer than {b})"]
    os.utime(a, (500_000, 500_000))
    probes, notes = find_probes(tmp_path, [])
    assert probes["compare_family"][0] == b
    assert notes == [f"two probe records of task compare_family; {b} is used (newer than {a})"]


def test_a_study_with_no_complete_cell_has_no_report(tmp_path):
    with pytest.raises(CRLError, match="no cell of the study"):
        study_report(StudyConfig(), tmp_path, grid(["arith"], [6], [0]), True)


def test_doctests():
    import doctest

    import crl.analysis.offline.layers
    import crl.analysis.offline.study
    import crl.analysis.report.study
    import crl.commands.study

    modules = (crl.analysis.offline.study, crl.analysis.offline.layers, crl.analysis.report.study, crl.commands.study)
    for module in modules:
        assert doctest.testmod(module).failed == 0, module.__name__


def test_baselines_with_the_same_numbers_share_one_clause():
    """none and static read the same at both layers: one clause names both (and says "them"); corr differs."""

    def row(base: str, layer: int, diff: float, outcome: str) -> dict:
        lo, hi = diff - 0.05, diff + 0.05
        return dict(task="t", layer=layer, baseline=base, n_seeds=3, diff=diff, lo=lo, hi=hi, outcome=outcome)

    eq = pd.DataFrame(
        [row(b, 6, -0.2, "worse") for b in ("none", "static")]
        + [row(b, 24, 0.3, "better") for b in ("none", "static")]
        + [row("corr", 6, 0.0, "unresolved"), row("corr", 24, 0.01, "unresolved")]
    ).assign(first_point=0.0)
    text = verdict("t", 100.0, eq, pd.DataFrame())
    both = "beats none and static at layer 24 and loses to them at layer 6 (L6 -0.20 [-0.25, -0.15], L24 +0.30"
    assert both in text and text.count("none") == 1
    assert "cannot be told apart from corr (L6 +0.00 [-0.05, +0.05], L24 +0.01 [-0.04, +0.06])" in text
    one = verdict("t", 100.0, eq[eq["baseline"] != "static"], pd.DataFrame())
    assert "beats none at layer 24 and loses to it at layer 6" in one
