"""Confidence intervals and paired tests (crl.analysis.offline.stats)."""

from __future__ import annotations

import numpy as np
import pytest

from crl.analysis.offline.stats import (
    StatsConfig,
    aggregate_seeds,
    bootstrap_ci,
    format_decomposition,
    mcnemar_exact,
    method_table,
    paired_bootstrap,
)
from crl.errors import CRLError
from tests.analysis.checks import FAST, episodes


def test_bootstrap_ci_contains_true_mean_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    widths = []
    for n in (50, 400, 3200):
        ci = bootstrap_ci(rng.random(n) < 0.3, FAST)
        assert ci.lo <= 0.3 <= ci.hi
        widths.append(ci.hi - ci.lo)
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] / widths[2] == pytest.approx(8, rel=0.35)  # width ~ 1/sqrt(n)


def test_bootstrap_ci_coverage_is_near_95_percent():
    rng = np.random.default_rng(2)
    covered = 0
    for k in range(200):
        ci = bootstrap_ci(rng.normal(1.0, 1.0, 60), StatsConfig(n_boot=300, seed=k))
        covered += ci.lo <= 1.0 <= ci.hi
    assert 0.88 <= covered / 200 <= 0.99


def test_mcnemar_exact_on_a_known_table():
    # 10 pairs where only A is right, 2 where only B is right, 5 concordant.
    a = np.array([1] * 10 + [0] * 2 + [1] * 3 + [0] * 2, bool)
    b = np.array([0] * 10 + [1] * 2 + [1] * 3 + [0] * 2, bool)
    res = mcnemar_exact(a, b)
    assert (res.n10, res.n01) == (10, 2)
    assert res.p == pytest.approx(2 * (1 + 12 + 66) / 4096)  # 2 * P(X <= 2), X ~ Bin(12, 1/2)
    assert mcnemar_exact(a, a).p == 1.0
    assert mcnemar_exact([1] * 6, [0] * 6).p == pytest.approx(2 / 64)


@pytest.mark.parametrize(
    "n10,n01,p",
    [  # p-values of the former integer implementation, 2 * sum_k<=min C(n, k) / 2^n, before scipy replaced it
        (10, 2, 0.03857421875),
        (0, 0, 1.0),
        (6, 0, 0.03125),
        (3, 3, 1.0),
        (1, 4, 0.375),
        (25, 30, 0.5900533317766357),
        (0, 1, 1.0),
        (40, 3, 3.0213413992896676e-09),
    ],
)
def test_mcnemar_on_scipy_gives_the_former_p_values(n10, n01, p):
    a = np.array([1] * n10 + [0] * n01 + [1, 0, 1], bool)  # plus concordant pairs, which do not count
    b = np.array([0] * n10 + [1] * n01 + [1, 0, 1], bool)
    res = mcnemar_exact(a, b)
    assert (res.n10, res.n01) == (n10, n01)
    assert res.p == pytest.approx(p, rel=1e-12, abs=0)


def test_paired_bootstrap_detects_a_shift_and_not_a_tie():
    rng = np.random.default_rng(3)
    b = (rng.random(200) < 0.4).astype(float)
    a = np.where(rng.random(200) < 0.3, 1.0, b)  # a flips ~30% of b's wrong answers to right
    t = paired_bootstrap(a, b, FAST)
    assert t.diff == pytest.approx(a.mean() - b.mean()) and t.lo <= t.diff <= t.hi
    assert t.lo > 0 and t.p < 0.01
    assert paired_bootstrap(b, b, FAST).p == 1.0
    with pytest.raises(CRLError, match="same length"):
        paired_bootstrap(a, b[:10], FAST)


def test_aggregate_seeds_is_mean_of_per_seed_accuracy():
    eps = episodes({0: [True] * 8 + [False] * 2, 1: [True] * 6 + [False] * 4, 2: [True] * 7 + [False] * 3})
    agg = aggregate_seeds(eps, "correct", FAST)
    assert agg.per_seed == {0: 0.8, 1: 0.6, 2: 0.7}
    assert agg.mean == pytest.approx(0.7) and agg.lo <= 0.7 <= agg.hi
    assert (agg.n_seeds, agg.n_prompts) == (3, 10)
    # More seeds that agree narrow the interval.
    many = episodes({s: [True] * 7 + [False] * 3 for s in range(3)})
    assert aggregate_seeds(many, "correct", FAST).hi - aggregate_seeds(many, "correct", FAST).lo < agg.hi - agg.lo


def test_format_decomposition_separates_format_from_answer_fixes():
    # Baseline: p0 malformed, p1 wrong but well-formed, p2 and p3 correct. CRL: all correct but p3 malformed.
    base = episodes({0: [False, False, True, True]}, [False, True, True, True])
    crl = episodes({0: [True, True, True, False]}, [True, True, True, False])
    d = format_decomposition(crl, base)
    assert d == {
        "format_fixes": 0.25,
        "answer_fixes": 0.25,
        "format_breaks": 0.25,
        "answer_breaks": 0.0,
        "reformatted": 0.0,
        "deformatted": 0.0,
    }


def test_method_table_on_synthetic_run(run):
    methods = {
        "crl": run.episodes_of("eval:test"),
        "none": run.episodes_of("baseline:none:test"),
        "random": run.episodes_of("baseline:random:test"),
    }
    mt = method_table(methods, "crl", FAST).set_index("method")
    # crl correct on p1..p31 (31/40), none on p0..p15 (16/40): 16 fixes, 1 break.
    assert mt.loc["crl", "accuracy"] == pytest.approx(31 / 40)
    assert mt.loc["none", "diff_vs_ref"] == pytest.approx(15 / 40)
    assert mt.loc["none", "p_bootstrap"] < 0.01
    assert mt.loc["none", "mcnemar_p_max"] == pytest.approx(mcnemar_exact([1] * 16 + [0], [0] * 16 + [1]).p)
    assert mt.loc["random", "n_seeds"] == 3
    assert mt.loc["random", "mcnemar_per_seed"].count("p=") == 3  # the one policy seed vs each random seed
    # Baseline-malformed wrong answers are the odd prompts 17..31 among the fixes: format vs answer fixes.
    fixed = range(16, 31 + 1)
    assert mt.loc["none", "format_fixes"] == pytest.approx(sum(i % 2 == 0 for i in fixed) / 40)
    assert mt.loc["none", "answer_fixes"] == pytest.approx(sum(i % 2 == 1 for i in fixed) / 40)
