"""Transfer pooled over seeds (crl/analysis/offline/transfer_pool.py) on hand-written run directories (transfer.json and
transfer_prompts.csv only) with planted answers: the pooled diff is the mean of the seeds' diffs, a harm planted in one
seed reaches the pooled CI and the acceptance line names it, a gain planted in every seed is significant and named,
runs of other settings are refused in one line."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crl.analysis.offline import transfer_pool as tp
from crl.analysis.offline.stats import StatsConfig, paired_bootstrap, seeds_fixed_bootstrap, t_half_width
from crl.analysis.offline.transfer import transfer_table
from crl.errors import CRLError

N = 200
VARIANTS = [
    {"variant": "direction:larger", "held_out": "", "describe": "the trained distribution"},
    {"variant": "wording:option", "held_out": "wording", "describe": "a new wording"},
    {"variant": "wording:than", "held_out": "wording", "describe": "another new wording"},
    {"variant": "range:3digit", "held_out": "range", "describe": "three-digit numbers"},
]
SETTINGS = {
    "task": "compare",
    "trained": "wording plain | direction larger | range 2digit",
    "n": N,
    "abstain": "knn",
    "abstain_fitted_now": True,
    "greedy_rule": "steer_if_likely",
    "harm_margin": 0.02,
    "alpha": 0.05,
}
CFG = StatsConfig(n_boot=500, seed=0)


def _none(variant: str) -> np.ndarray:
    """No steering's outcomes on a variant, half right: the same in every seed (greedy decoding, the same prompts)."""
    return np.random.default_rng(len(variant)).permutation(np.arange(N) % 2 == 0)


def _moved(none: np.ndarray, diff: float) -> np.ndarray:
    """`none` with round(|diff| * N) prompts moved: wrong ones made right (diff > 0) or right ones made wrong."""
    out = none.copy()
    k = round(abs(diff) * N)
    idx = np.flatnonzero(~none if diff > 0 else none)[:k]
    out[idx] = diff > 0
    return out


def write_result(
    run: Path,
    seed: int,
    diffs: dict[tuple[str, str], float] | None = None,
    settings: dict | None = None,
    variants: list[dict] | None = None,
    plain: bool = False,
    ids: str = "p",
) -> Path:
    """A run directory holding only a `crl transfer` result: transfer.json and transfer_prompts.csv, each arm's
    accuracy none's plus the planted diff of (variant, arm) (0 where not given). Arms: crl_abstain and crl_no_abstain,
    or crl alone (`plain`). `ids`: the prompt ids' prefix (other prefixes: other prompts)."""
    diffs = diffs or {}
    variants = variants or VARIANTS
    arms = ("crl",) if plain else ("crl_abstain", "crl_no_abstain")
    frames = []
    for v in variants:
        name = v["variant"]
        none = _none(name)
        frame = {"variant": name, "prompt_id": [f"{ids}-{name}-{i}" for i in range(N)], "none_correct": none}
        for m in arms:
            correct = _moved(none, diffs.get((name, m), 0.0))
            frame[f"{m}_correct"] = correct
            frame[f"{m}_steered"] = correct != none
            if m == "crl_abstain":
                frame[f"{m}_abstained"] = correct == none
        frames.append(pd.DataFrame(frame))
    out = run / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    pd.concat(frames, ignore_index=True).to_csv(out / "transfer_prompts.csv", index=False)
    data = {**SETTINGS, "run": run.name, "seed": seed, **(settings or {}), "variants": variants}
    (out / "transfer.json").write_text(json.dumps(data))
    return run


def _runs(tmp_path: Path, per_seed: list[dict[tuple[str, str], float]], **kw) -> list[tp.RunTransfer]:
    return [tp.read_run_transfer(write_result(tmp_path / f"s{s}", s, d, **kw)) for s, d in enumerate(per_seed)]


def test_the_pooled_diff_is_the_mean_of_the_seeds_diffs(tmp_path):
    key = ("range:3digit", "crl_no_abstain")
    runs = _runs(tmp_path, [{key: 0.10}, {key: 0.20}, {key: 0.06}])
    pooled = tp.pool_transfer(runs, CFG)
    row = pooled.table.set_index(["variant", "arm"]).loc[key]
    assert row["per_seed"] == pytest.approx([0.10, 0.20, 0.06]) and row["diff"] == pytest.approx(0.12)
    assert (row["seed_min"], row["seed_max"]) == pytest.approx((0.06, 0.20))
    half = t_half_width(np.array([0.10, 0.20, 0.06]))
    assert (row["seed_t_lo"], row["seed_t_hi"]) == pytest.approx((0.12 - half, 0.12 + half))
    assert row["lo"] < 0.12 < row["hi"] and row["shared_prompts"] and row["n"] == N and row["n_seeds"] == 3
    # each seed's diff is its own single-run table's
    for r, d in zip(runs, row["per_seed"], strict=True):
        single = transfer_table(r.outcomes, r.variants, CFG).set_index("variant")
        assert single.loc["range:3digit", "crl_no_abstain_diff"] == pytest.approx(d)
    # every seed the same prompts: the bootstrap of the per-prompt means over seeds, exactly
    frames = [r.outcomes[r.outcomes.variant == "range:3digit"] for r in runs]
    a = np.mean([f["crl_no_abstain_correct"].to_numpy(dtype=float) for f in frames], axis=0)
    b = np.mean([f["none_correct"].to_numpy(dtype=float) for f in frames], axis=0)
    ref = paired_bootstrap(a, b, CFG)
    assert (row["lo"], row["hi"], row["p"]) == pytest.approx((ref.lo, ref.hi, ref.p))
    # two seeds: no t-interval; prompts that differ between seeds: drawn per seed, the diff still the mean
    two = tp.pool_transfer(
        [runs[0], tp.read_run_transfer(write_result(tmp_path / "other", 9, {key: 0.30}, ids="q"))], CFG
    )
    row2 = two.table.set_index(["variant", "arm"]).loc[key]
    assert row2["diff"] == pytest.approx(0.20) and not row2["shared_prompts"] and np.isnan(row2["seed_t_lo"])
    assert "3 seeds or more; 2 pooled here" in tp.acceptance_lines(two)[-1]


def test_a_harm_planted_in_one_seed_fails_the_pooled_lower_bound_and_is_named(tmp_path):
    than, larger = ("wording:than", "crl_no_abstain"), ("direction:larger", "crl_no_abstain")
    runs = _runs(tmp_path, [{}, {}, {than: -0.20, larger: -0.30}])  # the trained variant's harm is not held out
    pooled = tp.pool_transfer(runs, CFG)
    row = pooled.table.set_index(["variant", "arm"]).loc[than]
    assert row["diff"] == pytest.approx(-0.2 / 3) and row["lo"] < -0.02 and row["verdict"] == "HARM"
    free, rule = pooled.acceptance["crl_no_abstain"], pooled.acceptance["crl_abstain"]
    assert free["harm_fails"] == ["wording:than"] and not free["no_harm"] and not free["met"]
    assert rule["no_harm"] and rule["harm_fails"] == [] and not rule["wording_gain"]  # abstaining ties everywhere
    with_rule, without = tp.acceptance_lines(pooled)
    assert f"every held-out variant lo >= -0.02: no (wording:than lo {row['lo']:+.3f})" in without
    assert without.endswith("-> not met") and "a held-out wording with a gain p < 0.05: no ->" in without
    assert with_rule.startswith("acceptance, crl_abstain (with abstention): every held-out variant lo >= -0.02: yes;")


def test_a_gain_planted_in_every_seed_is_significant_and_names_the_wording(tmp_path):
    option, digits = ("wording:option", "crl_no_abstain"), ("range:3digit", "crl_no_abstain")
    runs = _runs(tmp_path, [{option: 0.10, digits: 0.2}] * 3)
    pooled = tp.pool_transfer(runs, CFG)
    row = pooled.table.set_index(["variant", "arm"]).loc[option]
    assert row["diff"] == pytest.approx(0.10) and row["p"] < 0.05 and row["verdict"] == "GAIN"
    assert row["seed_t_lo"] == row["seed_t_hi"] == pytest.approx(0.10)  # every seed alike: no spread
    acc = pooled.acceptance["crl_no_abstain"]
    assert acc["wording_gains"] == ["wording:option"] and acc["no_harm"] and acc["met"]
    line = tp.acceptance_lines(pooled)[1]
    assert f"a held-out wording with a gain p < 0.05: yes (wording:option +0.100, p {tp.fmt_p(row['p'])})" in line
    assert line.endswith("-> met")
    # a gain on a held-out range alone is no wording gain
    only_range = tp.pool_transfer(_runs(tmp_path / "r", [{digits: 0.2}] * 3), CFG)
    assert only_range.acceptance["crl_no_abstain"]["wording_gains"] == []
    text = tp.format_pooled(pooled)
    assert "+0.100|+0.100|+0.100" in text and "seeds fixed" in text and "seed t 95% CI" in text


@pytest.mark.parametrize(
    "key,value",
    [("n", 100), ("abstain_fitted_now", False), ("greedy_rule", "argmax"), ("trained", "wording plain,pick")],
)
def test_runs_of_other_settings_are_refused_in_one_line(tmp_path, key, value):
    runs = [
        tp.read_run_transfer(write_result(tmp_path / "s0", 0)),
        tp.read_run_transfer(write_result(tmp_path / "s1", 1, settings={key: value})),
    ]
    with pytest.raises(CRLError, match=f"cannot pool s1 with s0: {key}=") as e:
        tp.pool_transfer(runs, CFG)
    assert "\n" not in str(e.value)


def test_other_variants_or_arms_and_a_single_run_are_refused(tmp_path):
    s0 = tp.read_run_transfer(write_result(tmp_path / "s0", 0))
    fewer = tp.read_run_transfer(write_result(tmp_path / "s1", 1, variants=VARIANTS[:2]))
    with pytest.raises(CRLError, match=r"cannot pool s1 with s0: variants=\[direction:larger,wording:option\] in s1"):
        tp.pool_transfer([s0, fewer], CFG)
    plain = tp.read_run_transfer(write_result(tmp_path / "s2", 2, plain=True))
    with pytest.raises(CRLError, match="cannot pool s2 with s0: its arms are crl, s0's crl_abstain, crl_no_abstain"):
        tp.pool_transfer([s0, plain], CFG)
    with pytest.raises(CRLError, match="pooling needs two runs or more"):
        tp.pool_transfer([s0], CFG)
    with pytest.raises(CRLError, match="has no `crl transfer` result"):
        tp.read_run_transfer(tmp_path / "nothing")


def test_a_plain_policy_pools_as_one_arm(tmp_path):
    pooled = tp.pool_transfer(_runs(tmp_path, [{("wording:than", "crl"): 0.1}] * 3, plain=True), CFG)
    assert pooled.arms == ["crl"] and "abstained" not in pooled.table
    assert tp.acceptance_lines(pooled)[0].startswith("acceptance, crl (the policy): every held-out variant lo")


def test_stale_reason_says_what_differs_from_the_settings_asked(tmp_path):
    run = write_result(tmp_path / "s0", 0)
    wanted = {**SETTINGS, "seed": 0}
    specs = [v["variant"] for v in VARIANTS]
    assert tp.stale_reason(run, wanted, specs) is None
    assert tp.stale_reason(run, {**wanted, "n": 400}, specs) == f"its transfer has n={N}, asked 400"
    assert tp.stale_reason(run, {**wanted, "abstain_fitted_now": False}, specs) == (
        "its transfer has abstain_fitted_now=true, asked false"
    )
    assert tp.stale_reason(run, wanted, specs[:1]) == (
        f"its transfer has variants=[{','.join(specs)}], asked [direction:larger]"
    )
    (run / "analysis" / "transfer_prompts.csv").unlink()
    assert tp.stale_reason(run, wanted, specs) == "no transfer result"


def test_files_the_forest_plot_and_the_default_folder(tmp_path):
    from crl.analysis.report.transfer import forest_plot

    runs = _runs(tmp_path / "runs", [{("wording:than", "crl_no_abstain"): -0.1}, {}, {}])
    pooled = tp.pool_transfer(runs, CFG)
    out = tp.default_out([r.path for r in runs])
    assert out == (tmp_path / "runs").resolve()
    paths = tp.write_pooled(out, pooled)
    png = forest_plot(pooled, out / tp.PNG)
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    csv = pd.read_csv(paths["csv"], keep_default_na=False)
    assert len(csv) == len(VARIANTS) * 2 and csv.loc[5, "per_seed"] == "-0.1000|0.0000|0.0000"
    saved = json.loads(paths["json"].read_text())
    assert [r["run"] for r in saved["runs"]] == ["s0", "s1", "s2"] and saved["settings"]["n"] == N
    assert saved["rows"][5]["per_seed"] == pytest.approx({"s0": -0.1, "s1": 0.0, "s2": 0.0})
    assert saved["acceptance"]["crl_abstain"]["no_harm"] and "seeds fixed" in saved["intervals"]["lo_hi"]
    assert saved["acceptance_lines"] == tp.acceptance_lines(pooled)
    tp.check_out(out, [r.path for r in runs])  # the same runs: replaced
    with pytest.raises(CRLError, match=r"transfer_pooled.json pools other runs \(s0, s1, s2\); pass out="):
        tp.check_out(out, [r.path for r in runs[:2]])


@pytest.mark.parametrize("module", [tp])
def test_doctests(module):
    assert doctest.testmod(module).failed == 0


def test_seeds_fixed_bootstrap_keeps_a_prompts_correlation_across_seeds_when_shared():
    d = np.r_[np.ones(50), np.zeros(50)]  # two seeds alike prompt by prompt: shared, their mean is d itself
    own, shared = seeds_fixed_bootstrap([d, d], False, CFG), seeds_fixed_bootstrap([d, d], True, CFG)
    assert own.diff == shared.diff == 0.5 and own.n == shared.n == 200
    ref = paired_bootstrap(d, np.zeros(100), CFG)
    assert (shared.lo, shared.hi, shared.p) == (ref.lo, ref.hi, ref.p)
    assert own.hi - own.lo < 0.8 * (shared.hi - shared.lo)  # drawn apart, the seeds' noise averages out (~1/sqrt 2)
    with pytest.raises(CRLError, match="one length per seed"):
        seeds_fixed_bootstrap([d, d[:10]], True, CFG)
