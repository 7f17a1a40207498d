"""Layer sweeps and coefficient tolerance (crl.analysis.offline.layers)."""

from __future__ import annotations

import numpy as np
import pytest

from crl.analysis.offline.layers import coef_tolerance, layer_table
from crl.errors import CRLError
from crl.logs.reader import load_run
from tests.analysis.checks import FAST
from tests.analysis.synthetic import SyntheticSpec, write_run_dir


def test_coef_tolerance_definition():
    sweep = [
        {"coef": 0, "well_formed_rate": 0.9},
        {"coef": 2, "well_formed_rate": 0.85},
        {"coef": 4, "well_formed_rate": 0.82},
        {"coef": 8, "well_formed_rate": 0.5},
        {"coef": 16, "well_formed_rate": 0.85},
    ]
    assert coef_tolerance(sweep, None) == 4  # 16 passes again but 8 failed before it
    assert coef_tolerance(sweep[1:], 1.0) == 0.0  # r0 from the baseline; even coef 2 fails 0.9
    assert np.isnan(coef_tolerance([], 0.9))
    with pytest.raises(CRLError, match="coef_sweep"):
        coef_tolerance([{"c": 1}], 0.9)


def test_layer_table_orders_layers_and_reads_token_types(tmp_path):
    specs = [
        SyntheticSpec(run="l9", layer=9, crl_acc=0.5, tokens=("Paris", " is", " big", " city", " here")),
        SyntheticSpec(
            run="l3",
            layer=3,
            crl_acc=0.9,
            tokens=(".", ",", "\n", " 4", "<|im_end|>"),
            coef_sweep=[
                {"coef": 0, "accuracy": 0.4, "well_formed_rate": 0.7},
                {"coef": 4, "accuracy": 0.5, "well_formed_rate": 0.7},
                {"coef": 8, "accuracy": 0.2, "well_formed_rate": 0.3},
            ],
        ),
        SyntheticSpec(run="l6", layer=6, crl_acc=0.7, main_steps=2),
    ]
    runs = [load_run(write_run_dir(tmp_path / s.run, s)) for s in specs]
    lt = layer_table(runs, stats_cfg=FAST)
    assert lt["layer"].tolist() == [3, 6, 9]
    assert lt["accuracy"].tolist() == pytest.approx([35 / 40, 27 / 40, 19 / 40])
    assert lt.loc[0, "syntactic_share"] == 1.0 and lt.loc[2, "syntactic_share"] == 0.0
    assert lt.loc[0, "coef_tolerance"] == 4 and np.isnan(lt.loc[1, "coef_tolerance"])
    assert (lt["distinct_features"] == 2).all()
    assert all(lt["acc_lo"] <= lt["accuracy"]) and all(lt["accuracy"] <= lt["acc_hi"])
    other = load_run(write_run_dir(tmp_path / "t", SyntheticSpec(run="t", task="mmlu")))
    with pytest.raises(CRLError, match="one task"):
        layer_table([*runs, other])
