"""`crl bench rollout` on a tiny model: the JSON's shape and sanity, never its timings."""

from __future__ import annotations

import json
import math

import pytest

from crl.cli import main as crl_main
from crl.envs.tasks.base import TaskConfig
from crl.envs.tasks.registry import make_task
from crl.errors import CRLError
from crl.run.bench import BenchConfig, bench_rollout, random_sae

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


def test_cli_prints_one_json_line(capsys):
    crl_main(
        [
            "bench",
            "rollout",
            "model=tiny",
            "bench.layer=1",
            "bench.d_sae=8",
            "bench.new_tokens=2",
            "bench.repeats=1",
            "bench.batch_sizes=[2]",
            "bench.naive_batch_sizes=[2]",
            "task.n_test=2",
        ]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert out["sae"].startswith("random:") and _positive(out["results"]["2"]["overhead_ratio"])
    with pytest.raises(SystemExit) as e:
        crl_main(["bench", "rollout", "model=tiny", "bench.layer=1", "bench.batch_sizes=[0]"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("crl: error: bench.batch_sizes")
