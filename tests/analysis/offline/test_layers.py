"""Layer sweeps and coefficient tolerance (crl.analysis.offline.layers)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from crl.analysis.offline.layers import (
    SWEEP_KEY,
    add_probe,
    coef_sweep_max,
    coef_tolerance,
    layer_claim,
    layer_table,
)
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


def _ceiling_sweep(tolerated: float) -> list[dict[str, float]]:
    """The sweep of a real study (0, 0.5, 1, 2, 4) whose tolerance is `tolerated`; 4 is its ceiling."""
    return [{"coef": c, "accuracy": 0.5, "well_formed_rate": 1.0 if c <= tolerated else 0.5} for c in (0, 0.5, 1, 2, 4)]


def test_layer_table_marks_the_sweeps_ceiling_and_a_constrained_task(tmp_path):
    """A tolerance equal to the sweep's largest |coef| is flagged (a lower bound); the numeric column stays numeric;
    task.mode=constrained in a run's config.yaml sets `constrained`."""
    specs = {
        (6, 0): _ceiling_sweep(1.0),
        (6, 1): _ceiling_sweep(1.0),
        (24, 0): _ceiling_sweep(4.0),
        (24, 1): _ceiling_sweep(4.0),
        (15, 0): _ceiling_sweep(4.0),  # one seed at the ceiling, one at 2: the mean 3 is a lower bound
        (15, 1): _ceiling_sweep(2.0),
    }
    runs = []
    for (layer, seed), sweep in specs.items():
        spec = SyntheticSpec(run=f"l{layer}s{seed}", layer=layer, seed=seed, coef_sweep=sweep)
        runs.append(load_run(write_run_dir(tmp_path / spec.run, spec)))
    lt = layer_table(runs, stats_cfg=FAST).set_index("layer")
    assert coef_sweep_max(_ceiling_sweep(1.0)) == 4 and coef_tolerance(_ceiling_sweep(4.0), None) == 4
    assert lt["coef_tolerance"].tolist() == [1.0, 3.0, 4.0] and lt["coef_tolerance"].dtype == float
    assert lt["coef_sweep_max"].tolist() == [4.0, 4.0, 4.0]
    assert lt["coef_at_ceiling"].tolist() == [False, True, True]
    assert not lt["constrained"].any()
    claim = layer_claim(lt.reset_index())[1]
    assert "layer 24 tolerates at least 4, larger than layer 6's 1" in claim

    for r in runs:  # the same runs, on constrained multiple choice
        (r.path / "config.yaml").write_text("task:\n  name: arith\n  mode: constrained\n  max_new_tokens: 1\n")
    lt = layer_table([load_run(r.path) for r in runs], stats_cfg=FAST)
    assert lt["constrained"].all()
    assert "well-formed by construction" in layer_claim(lt)[1]


def _ceiling_layers(tolerance: list[float], at_ceiling: list[bool], constrained: bool = False) -> pd.DataFrame:
    """Two layers (6, 24) with a flat syntactic share, as measured on the real compare study, and a sweep up to 4."""
    return pd.DataFrame(
        {
            "layer": [6, 24],
            "syntactic_share": [0.0, 0.0],
            "coef_tolerance": tolerance,
            "coef_sweep_max": [4.0, 4.0],
            "coef_at_ceiling": at_ceiling,
            "constrained": [constrained, constrained],
        }
    )


SYN_FLAT = "the syntactic share barely changes (0.00 at layer 6, 0.00 at layer 24; a change under 0.1 counts as none)"
# The advice names the command-line keys that widen the sweep (AnalyzeConfig.coef_sweep), not a place in the code.
WIDEN = (
    "widen the sweep (`crl analyze env=true 'coef_sweep=[...]'`, multiples of steering.coef; in a study "
    "`resume=true 'analyze.coef_sweep=[...]'`) to measure tolerance"
)


def test_the_keys_the_layer_claim_names_widen_the_sweep():
    from crl.analysis.report.analyze import _replay_config
    from crl.commands.study import split_argv
    from crl.config.compose import compose_config

    assert "coef_sweep=[...]" in SWEEP_KEY and "analyze.coef_sweep=[...]" in SWEEP_KEY
    cfg = compose_config("analyze", ["run_dir=r", "env=true", "coef_sweep=[0.5,1,2,4,8,16]"])
    assert _replay_config(cfg).sweep_multipliers == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
    assert split_argv(["resume=true", "analyze.coef_sweep=[0.5,1,2,4,8,16]"]).analyze == ["coef_sweep=[0.5,1,2,4,8,16]"]


def test_layer_claim_every_layer_at_the_ceiling_is_not_measurable():
    verdict, text = layer_claim(_ceiling_layers([4.0, 4.0], [True, True]))
    assert verdict == "inconclusive" and "stays at" not in text
    assert text == (
        f"inconclusive: {SYN_FLAT}; the tolerated coefficient is not measurable: every layer keeps its outputs "
        f"well-formed up to the sweep's largest coefficient (4); {WIDEN}"
    )


def test_layer_claim_compares_a_ceiling_only_where_the_bound_decides():
    verdict, text = layer_claim(_ceiling_layers([1.0, 4.0], [False, True]))  # 4 late is at least 4 > 1: rises
    assert verdict == "inconclusive"  # the syntactic half is flat
    assert text == (
        f"inconclusive: {SYN_FLAT}; the tolerated coefficient rises: layer 24 tolerates at least 4, larger than "
        "layer 6's 1 (4 is the sweep's largest coefficient, a lower bound)"
    )
    confirmed = _ceiling_layers([1.0, 4.0], [False, True]).assign(syntactic_share=[0.8, 0.3])
    assert layer_claim(confirmed)[0] == "confirmed"
    verdict, text = layer_claim(_ceiling_layers([4.0, 1.0], [True, False]))  # at least 4 early, 1 late: falls
    assert verdict == "refuted" and text.endswith(
        "the tolerated coefficient falls: layer 24 tolerates 1, less than layer 6's at least 4 (4 is the sweep's "
        "largest coefficient, a lower bound)"
    )
    verdict, text = layer_claim(_ceiling_layers([3.0, 4.0], [True, True]))  # a seed at 4, a seed at 2 at layer 6
    both = (
        "the tolerated coefficient is not measurable: layer 6 tolerates at least 3 and layer 24 at least 4, both at "
        f"the sweep's ceiling; {WIDEN}"
    )
    assert verdict == "inconclusive" and "stays at" not in text and text.endswith(both)
    below = _ceiling_layers([4.0, 4.0], [False, True]).assign(coef_sweep_max=[8.0, 4.0])  # 4 of 8 vs at least 4
    assert layer_claim(below)[1].endswith(
        "the tolerated coefficient cannot be compared: layer 24 tolerates at least 4, layer 6 4 (4 is the sweep's "
        f"largest coefficient, a lower bound); {WIDEN}"
    )


def test_layer_claim_on_a_constrained_task():
    """The real 3-layer compare study: every output one option letter, every tolerance the sweep's ceiling."""
    verdict, text = layer_claim(_ceiling_layers([4.0, 4.0], [True, True], constrained=True))
    assert verdict == "inconclusive" and "stays at" not in text
    assert text == (
        f"inconclusive: {SYN_FLAT}; on a constrained task outputs are well-formed by construction, so tolerance by "
        "well-formed rate does not apply"
    )


def _layers(share: list[float], tolerance: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"layer": [6, 15, 24], "syntactic_share": share, "coef_tolerance": tolerance})


@pytest.mark.parametrize(
    "share,tolerance,verdict,sentence",
    [
        (
            [0.8, 0.5, 0.3],
            [1.0, 2.0, 4.0],
            "confirmed",
            "confirmed: the syntactic share falls from 0.80 at layer 6 to 0.30 at layer 24 and the tolerated "
            "coefficient rises from 1 at layer 6 to 4 at layer 24",
        ),
        (
            [0.3, 0.5, 0.8],
            [1.0, 2.0, 4.0],
            "refuted",
            "refuted: the syntactic share rises from 0.30 at layer 6 to 0.80 at layer 24; the tolerated coefficient "
            "rises from 1 at layer 6 to 4 at layer 24",
        ),
        (
            [0.8, 0.5, 0.3],
            [4.0, 2.0, 2.0],
            "refuted",
            "refuted: the syntactic share falls from 0.80 at layer 6 to 0.30 at layer 24; the tolerated coefficient "
            "falls from 4 at layer 6 to 2 at layer 24",
        ),
        (
            [0.50, 0.9, 0.45],  # the middle layer is shown, not tested; 0.05 is under the 0.1 that counts
            [1.0, 2.0, 4.0],
            "inconclusive",
            "inconclusive: the syntactic share barely changes (0.50 at layer 6, 0.45 at layer 24; a change under 0.1 "
            "counts as none); the tolerated coefficient rises from 1 at layer 6 to 4 at layer 24",
        ),
        (
            [0.8, 0.5, 0.3],
            [np.nan, 2.0, np.nan],
            "inconclusive",
            "inconclusive: the syntactic share falls from 0.80 at layer 6 to 0.30 at layer 24; the tolerated "
            "coefficient is unmeasured (fewer than two layers with a coefficient sweep",
        ),
        (
            [0.8, np.nan, 0.3],
            [2.0, np.nan, 2.0],
            "inconclusive",
            "inconclusive: the syntactic share falls from 0.80 at layer 6 to 0.30 at layer 24; the tolerated "
            "coefficient stays at 2 from layer 6 to layer 24",
        ),
    ],
)
def test_layer_claim_on_constructed_layers(share, tolerance, verdict, sentence):
    got, text = layer_claim(_layers(share, tolerance))
    assert got == verdict and text.startswith(sentence)


def test_layer_claim_needs_two_layers():
    one = pd.DataFrame({"layer": [15], "syntactic_share": [0.5], "coef_tolerance": [2.0]})
    assert layer_claim(one) == (
        "inconclusive",
        "inconclusive: one layer only (layer 15); the claim compares early and late layers",
    )
    small_fall = _layers([0.8, 0.7, 0.72], [1.0, 2.0, 4.0])  # falls by 0.08: counted only under a smaller threshold
    assert layer_claim(small_fall)[0] == "inconclusive"
    assert layer_claim(small_fall, min_share_change=0.05)[0] == "confirmed"


def test_add_probe_reads_headroom_per_layer():
    table = pd.DataFrame({"layer": [6, 24], "accuracy": [0.5, 0.6]})
    record = {
        "task": "arith",
        "target": "correct",  # AUROC: no probe headroom in accuracy units
        "unsteered": {"accuracy": 0.3},
        "layers": [
            {"layer": 24, "probe": {"value": 0.8, "ci": [0.7, 0.9]}, "oracle": {"accuracy": 0.5, "unsteered": 0.3}}
        ],
    }
    out = add_probe(table, record)
    assert out["probe_metric"].tolist() == ["AUROC", "AUROC"] and np.isnan(out.loc[0, "probe"])
    assert out.loc[1, ["probe", "probe_lo", "oracle_headroom"]].tolist() == pytest.approx([0.8, 0.7, 0.2])
    assert out["probe_headroom"].isna().all()
    assert add_probe(table, None) is table
