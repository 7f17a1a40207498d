"""Every report plot is a valid PNG (crl.analysis.report.plots)."""

from __future__ import annotations

import pandas as pd

from crl.analysis.offline.critic import critic_summary, outcome_categories, value_trajectories
from crl.analysis.offline.features import feature_usage, step_histogram
from crl.analysis.offline.stats import method_table
from crl.analysis.report import plots
from tests.analysis.checks import FAST, assert_png


def test_every_plot_is_a_valid_png(run, tmp_path):
    usage = feature_usage(run.steps_of("eval:test"), run.episodes_of("eval:test"))
    cats = outcome_categories(run.episodes_of("eval:test"), run.episodes_of("baseline:none:test"))
    _, calib = critic_summary(run.steps_of("eval:test"), run.episodes_of("eval:test"))
    mt = method_table({"crl": run.episodes_of("eval:test"), "none": run.episodes_of("baseline:none:test")}, "crl", FAST)
    layers = pd.DataFrame(
        {
            "layer": [3, 6],
            "accuracy": [0.5, 0.7],
            "acc_lo": [0.4, 0.6],
            "acc_hi": [0.6, 0.8],
            "effective_features": [3.0, 5.0],
            "syntactic_share": [0.8, 0.3],
            "coef_tolerance": [4.0, float("nan")],
        }
    )
    branches = pd.DataFrame({"step": [0, 2, 2, 5], "flip": ["to_correct", "to_incorrect", "to_correct", "to_correct"]})
    sweep = pd.DataFrame({"coef": [0, 4, 8], "accuracy": [0.4, 0.5, 0.2], "well_formed_rate": [0.7, 0.7, 0.3]})
    paths = [
        plots.feature_usage_bars(usage, tmp_path / "a.png"),
        plots.step_histogram_plot(step_histogram(run.steps_of("eval:test"), [7, 3]), tmp_path / "b.png"),
        plots.baselines_ci(mt, tmp_path / "c.png"),
        plots.critic_trajectories(value_trajectories(run.steps_of("eval:test"), cats), tmp_path / "d.png"),
        plots.calibration_curve(calib, tmp_path / "e.png", 0.1),
        plots.layer_comparison(layers, tmp_path / "f.png"),
        plots.branch_positions(branches, tmp_path / "g.png"),
        plots.branch_positions(branches.iloc[:0], tmp_path / "h.png"),
        plots.coef_sweep_plot(sweep, tmp_path / "i.png", 4.0),
    ]
    for p in paths:
        assert_png(p)
