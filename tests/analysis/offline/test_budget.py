"""Accuracy against rollouts: the curve points and the fixed-budget table, on hand-made rows with known answers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from crl.analysis.offline.budget import (
    at_budget,
    best_point,
    budget_table,
    crl_curve,
    flat_curve,
    method_budgets,
    none_val_point,
    point_outcomes,
    run_curves,
    selection_curves,
)
from crl.errors import CRLError
from crl.logs.reader import load_run
from crl.logs.schema import EpisodeRow
from tests.analysis.synthetic import SyntheticSpec, write_run_dir


def _prompting_rows(val: list[float]) -> list[dict]:
    rows = []
    for i, v in enumerate(val):
        for stage, acc in (("prompt@train", 0.9), ("prompt@val", v)):
            rows.append({"method": "prompting", "stage": stage, "candidate": f"c{i}", "accuracy": acc, "rollouts": 64})
    return rows


SELECTION = pd.DataFrame(
    [
        {"method": "static", "stage": "activations@train", "accuracy": 0.5, "rollouts": 64},
        {"method": "static", "stage": "feature@train", "feature": 5, "accuracy": 0.6, "rollouts": 64},
        {"method": "static", "stage": "feature@train", "feature": 9, "accuracy": 0.5, "rollouts": 64},
        {"method": "static", "stage": "coef@val", "feature": 5, "accuracy": 0.5, "rollouts": 32},
        {"method": "static", "stage": "coef@val", "feature": 5, "accuracy": 0.7, "rollouts": 32},
        {"method": "static", "stage": "coef@val", "feature": 5, "accuracy": 0.6, "rollouts": 32},
        *_prompting_rows([0.5, 0.6, 0.55, 0.7]),
        {"method": "letter_prior", "stage": "fit@train", "accuracy": 0.8, "rollouts": 512},
        {"method": "letter_prior", "stage": "score@val", "accuracy": 0.75, "rollouts": 64},
    ]
)


def test_selection_curves_give_best_so_far_val_accuracy_at_cumulative_rollouts():
    c = selection_curves(SELECTION, seed=3)
    static = c[c["method"] == "static"]
    assert static["rollouts"].tolist() == [224, 256, 288]  # 3 train rows (192) before the first val row
    assert static["accuracy"].tolist() == [0.5, 0.7, 0.6] and static["best"].tolist() == [0.5, 0.7, 0.7]
    prompting = c[c["method"] == "prompting"]
    assert prompting["rollouts"].tolist() == [128, 256, 384, 512]  # each candidate: 64 train + 64 val
    assert prompting["best"].tolist() == [0.5, 0.6, 0.6, 0.7]
    prior = c[c["method"] == "letter_prior"]
    assert prior["rollouts"].tolist() == [576] and prior["best"].tolist() == [0.75]
    assert set(c["seed"]) == {3}
    assert method_budgets(SELECTION) == {"static": 288, "prompting": 512, "letter_prior": 576}
    with pytest.raises(CRLError, match="rerun|run the baselines again"):
        selection_curves(SELECTION.drop(columns="rollouts"))


def test_each_point_names_where_its_per_prompt_outcomes_are(tmp_path):
    """Selection points are `row:<i>` (their row in the table); `point_outcomes` reads CRL's evals by update and
    baseline_val_outcomes.csv by row; `best_point` is the first point holding the best within the budget."""
    c = selection_curves(SELECTION)
    assert c[c["method"] == "static"]["source"].tolist() == ["row:3", "row:4", "row:5"]
    assert c[c["method"] == "letter_prior"]["source"].tolist() == [f"row:{len(SELECTION) - 1}"]
    static = c[c["method"] == "static"]
    assert best_point(static, 100) is None and best_point(static, 230)["source"] == "row:3"
    assert best_point(static, 8000)["source"] == "row:4"  # 0.7 at 256; 0.6 later does not replace it
    tie = static.assign(accuracy=0.5)
    assert best_point(tie, 8000)["source"] == "row:3"  # ties: the first reached
    d = write_run_dir(tmp_path / "r", SyntheticSpec(n_prompts=4, seed=0))
    _append(d, [("eval:val", 3, ok) for ok in (True, False)])
    (d / "analysis").mkdir(exist_ok=True)
    rows = [
        {"row": 4, "prompt_id": "q0", "correct": 1, "well_formed": 1},
        {"row": 4, "prompt_id": "q1#2", "correct": 0},
    ]
    pd.DataFrame(rows).to_csv(d / "analysis" / "baseline_val_outcomes.csv", index=False)
    o = point_outcomes(load_run(d))
    assert o[o["source"] == "update:3"][["prompt_id", "correct"]].values.tolist() == [["q0", 1.0], ["q1", 0.0]]
    assert o[o["source"] == "row:4"]["prompt_id"].tolist() == ["q0", "q1"]  # the repeat suffix dropped
    pd.DataFrame([{"row": 1}]).to_csv(d / "analysis" / "baseline_val_outcomes.csv", index=False)
    with pytest.raises(CRLError, match="lacks the columns"):
        point_outcomes(load_run(d))


def test_budget_table_takes_the_last_point_within_each_budget_and_a_t_interval_over_seeds():
    a = selection_curves(SELECTION, seed=0)
    b = a.assign(seed=1, best=a["best"] + 0.1)  # a second seed, 0.1 better everywhere
    curves = pd.concat([a, b, flat_curve("none", 0.46, 0), flat_curve("none", 0.46, 1)], ignore_index=True)
    t = budget_table(curves, budgets=(100, 300, 8000)).set_index(["method", "budget"])
    assert np.isnan(t.loc[("static", 100), "accuracy"]) and t.loc[("static", 100), "n_seeds"] == 0  # nothing yet
    assert t.loc[("static", 300), "accuracy"] == pytest.approx(0.75)  # seeds: 0.7 and 0.8
    half = 12.706204736 * np.std([0.7, 0.8], ddof=1) / np.sqrt(2)  # t(0.975, 1 df) x sd / sqrt(n)
    assert t.loc[("static", 300), "hi"] - 0.75 == pytest.approx(half, rel=1e-6)
    assert t.loc[("prompting", 300), "accuracy"] == pytest.approx(0.65)  # 256 rollouts: best 0.6 / 0.7
    assert t.loc[("none", 100), "accuracy"] == pytest.approx(0.46) and t.loc[("none", 8000), "n_seeds"] == 2
    assert t.loc[("none", 100), "lo"] == pytest.approx(0.46)  # no spread between seeds
    one = budget_table(a, budgets=(8000,)).set_index("method")
    assert one.loc["letter_prior", "n_seeds"] == 1 and np.isnan(one.loc["letter_prior", "lo"])  # one seed: no CI
    assert at_budget(flat_curve("none", 0.3), 10) == 0.3


def _append(run_dir, rows: list[tuple[str, int, bool]]) -> None:
    with (run_dir / "episodes.jsonl").open("a") as fh:
        for i, (phase, update, correct) in enumerate(rows):
            row = EpisodeRow("synth", phase, update, 10_000 + i, f"q{i}", "x", "A", float(correct), correct, True, 1)
            fh.write(json.dumps(row.to_dict()) + "\n")


def test_crl_curve_counts_train_episodes_before_each_val_eval_and_the_val_evals(tmp_path):
    d = write_run_dir(tmp_path / "r", SyntheticSpec(n_prompts=4, seed=2))
    train = [("train", u, False) for u in range(6) for _ in range(10)]  # 10 episodes per update
    accs = {0: [1, 0, 0, 0], 2: [1, 1, 1, 0], 4: [1, 1, 0, 0]}
    val = [("eval:val", u, bool(c)) for u, cs in accs.items() for c in cs]
    _append(d, train + val)
    run = load_run(d)
    c = crl_curve(run)
    assert c["rollouts"].tolist() == [4, 28, 52]  # 0 + 4; 20 + 8; 40 + 12
    assert c["accuracy"].tolist() == [0.25, 0.75, 0.5] and c["best"].tolist() == [0.25, 0.75, 0.75]
    assert crl_curve(run, count_val=False)["rollouts"].tolist() == [0, 20, 40]
    assert set(c["seed"]) == {2} and set(c["method"]) == {"crl"}
    # none: the logged val phase wins over prompting's as_is row; without it, the as_is row
    assert c["source"].tolist() == ["update:0", "update:2", "update:4"]
    assert none_val_point(run, SELECTION) is None  # no baseline:none:val and no as_is candidate
    as_is = pd.DataFrame([{"method": "prompting", "stage": "prompt@val", "candidate": "as_is", "accuracy": 0.4}])
    assert none_val_point(run, pd.concat([SELECTION, as_is], ignore_index=True)) == (0.4, f"row:{len(SELECTION)}")
    _append(d, [("baseline:none:val", 0, c) for c in (True, False, False, False, False)])
    run = load_run(d)
    assert none_val_point(run, as_is) == (0.2, "phase:baseline:none:val")
    all_curves = run_curves(run, SELECTION)
    assert set(all_curves["method"]) == {"crl", "none", "static", "prompting", "letter_prior"}
    assert budget_table(all_curves, (30,)).set_index("method").loc["crl", "accuracy"] == 0.75
