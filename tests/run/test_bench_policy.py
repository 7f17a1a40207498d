"""`crl bench policy`'s measurements on a tiny width, in-process: the result's shape and sanity, never its timings
(the command, with its process per width: tests/commands/test_bench_policy.py)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from crl.config import BenchPolicyConfig, MaskingConfig, PolicyBenchConfig, PolicyConfig, PPOConfig
from crl.errors import CRLError
from crl.run.bench_policy import ZipfActivations, bench_policy, format_table, measure_width

pytestmark = pytest.mark.usefixtures("one_thread")

BATCH_KEYS = {
    "decisions_per_s",
    "mask_ms",
    "policy_ms",
    "encode_ms",
    "valid_per_row",
    "scored_features",
    "decide_peak_mib",
    "full_policy_ms",
    "compact_policy_ms",
    "policy_speedup",
    "full_peak_mib",
}
PPO_KEYS = {"episodes", "decisions", "minibatch", "steps", "update_s", "step_s", "peak_mib"}
PPO_KEYS |= {"buffer_masks_mib", "buffer_compact_mib"}


def tiny(**bench) -> BenchPolicyConfig:
    b = {"widths": [300], "d_model": 8, "batch_sizes": [3], "steps": 2, "l0": 4, "repeats": 1, "ppo_episodes": 4}
    return BenchPolicyConfig(
        bench=PolicyBenchConfig(**{**b, **bench}),
        policy=PolicyConfig(hidden=8, compact_min_d_sae=256),
        ppo=PPOConfig(num_envs=2, group_size=2, update_epochs=1, num_minibatches=2),
    )


def _positive(x: object) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


@pytest.mark.parametrize("width", [300, 200])  # compact, and below policy.compact_min_d_sae
def test_one_width_measures_decisions_ppo_and_memory(width):
    r = json.loads(json.dumps(measure_width(tiny(), width)))
    assert r["d_sae"] == width and r["n_actions"] == 2 * width + 1 and r["compact"] == (width >= 256)
    assert r["params"] > 0 and r["decoder_mib"] == pytest.approx(width * 8 * 4 / 2**20)
    row = r["batches"]["3"]
    assert set(row) == BATCH_KEYS
    for key in ("decisions_per_s", "mask_ms", "policy_ms", "encode_ms"):
        assert _positive(row[key]), key
    assert 1 <= row["valid_per_row"] <= r["n_actions"] and 1 <= row["scored_features"] <= width
    assert row["decide_peak_mib"] >= 0
    if r["compact"]:
        assert _positive(row["full_policy_ms"]) and _positive(row["policy_speedup"])
        assert row["policy_speedup"] == pytest.approx(row["full_policy_ms"] / row["compact_policy_ms"])
    else:  # the policy is the every-action path already
        assert row["full_policy_ms"] is None and row["policy_speedup"] is None
    p = r["ppo"]
    assert set(p) == PPO_KEYS and p["episodes"] == 4 and p["decisions"] == 8 and p["steps"] == 2
    assert _positive(p["update_s"]) and p["step_s"] == pytest.approx(p["update_s"] / 2)
    assert p["buffer_masks_mib"] == pytest.approx(8 * (2 * width + 1) / 2**20)
    assert (p["buffer_compact_mib"] is not None) == r["compact"]
    assert r["cuda_peak_mib"] is None and r["peak_resets"] in (True, False)
    phases = [r["setup_peak_mib"], row["decide_peak_mib"], p["peak_mib"]]
    assert r["peak_rss_mib"] > max(phases) >= 0  # the whole life's peak, across the phases' resets


def test_zipf_activations_have_l0_features_and_shared_frequent_ones():
    import torch

    acts = ZipfActivations(1000, 10, seed=0, device=torch.device("cpu"))(200)
    assert ((acts > 0).sum(-1) == 10).all()
    counts = (acts > 0).sum(0)
    assert counts.max() > 50 > counts.float().median()  # a frequent feature fires on many tokens, most rarely


def test_masking_fixed_scores_only_its_features():
    cfg = dataclasses.replace(tiny(full_repeats=0), masking=MaskingConfig(mode="fixed", features=[299, 5]))
    row = measure_width(cfg, 300)["batches"]["3"]
    assert row["valid_per_row"] == 2 * 2 + 1 and row["scored_features"] == 2  # 2 features x 2 levels, the no-op


def test_the_table_has_a_line_per_width_and_batch():
    result = {
        "d_model": 8,
        "levels": 2,
        "head": "sae",
        "masking": "adaptive",
        "l0": 4,
        "device": "cpu",
        "threads": 1,
        "load_avg_1m": 0.5,
        "widths": {str(w): measure_width(tiny(batch_sizes=[2, 3]), w) for w in (300,)},
    }
    lines = format_table(result).splitlines()
    assert "load=0.50" in lines[0]
    assert [ln.split()[:2] for ln in lines if ln.split()[:1] == ["300"]][:2] == [["300", "2"], ["300", "3"]]


def test_bad_settings_are_one_line():
    with pytest.raises(CRLError, match="bench.widths"):
        bench_policy(tiny(widths=[0]))
    with pytest.raises(CRLError, match="device=nope"):
        bench_policy(BenchPolicyConfig(device="nope"))
