"""`bench_rollout` on a tiny model: the result's shape and sanity, never its timings (the command: tests/commands)."""

from __future__ import annotations

import json
import math

import pytest

from crl.config import BenchConfig, TaskConfig
from crl.envs.tasks.registry import make_task
from crl.errors import CRLError
from crl.run.bench import bench_rollout, random_sae

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm():
    from crl.backends.model import tiny_model

    return tiny_model("llama", n_layers=2, d_model=64)


def _positive(x: object) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_bench_rollout_structure(lm):
    task = make_task(TaskConfig(name="arith", n_train=2, n_val=2, n_test=3))
    cfg = BenchConfig(batch_sizes=[1, 4], naive_batch_sizes=[4, 2], new_tokens=3, repeats=2, layer=1, d_sae=16)
    out = json.loads(json.dumps(bench_rollout(lm, random_sae(64, 16, 1), task, task.load("test"), cfg)))
    assert out["new_tokens"] == 3 and out["d_sae"] == 16 and out["layer"] == 1
    assert list(out["results"]) == ["1", "2", "4"]  # batch 4 cycles the 3 prompts
    for b in ("1", "4"):
        row = out["results"][b]
        for key in ("plain_s", "steered_s", "plain_tok_s", "steered_tok_s", "overhead_ratio"):
            assert _positive(row[key]), (b, key, row[key])
        assert row["overhead_ratio"] == pytest.approx(row["plain_s"] / row["steered_s"])
        assert row["steered_tok_s"] == pytest.approx(int(b) * 3 / row["steered_s"])
    assert "naive_speedup" not in out["results"]["1"]
    for b in ("2", "4"):  # batch 2 is naive-only: it gets its own cached steered time to compare with
        row = out["results"][b]
        assert _positive(row["naive_speedup"]) and _positive(row["naive_tok_s"]) and _positive(row["steered_s"])
        assert row["naive_speedup"] == pytest.approx(row["naive_s"] / row["steered_s"])


def test_bench_rejects_bad_sizes(lm):
    task = make_task(TaskConfig(name="arith", n_train=2, n_val=2, n_test=2))
    for cfg in (
        BenchConfig(batch_sizes=[0]),
        BenchConfig(batch_sizes=[]),
        BenchConfig(new_tokens=0),
        BenchConfig(batch_sizes=[1], layer=5),
    ):
        with pytest.raises(CRLError):
            bench_rollout(lm, random_sae(64, 8, 1), task, task.load("test"), cfg)
