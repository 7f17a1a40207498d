"""`crl bench rollout`: one JSON line on stdout, one-line errors."""

from __future__ import annotations

import json

import pytest

from crl.cli import main as crl_main
from tests.run.test_bench import _positive

pytestmark = pytest.mark.usefixtures("one_thread")


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
    assert _positive(out["results"]["2"]["train_decisions_s"]) and out["model_dtype"] == "float32"
    with pytest.raises(SystemExit) as e:
        crl_main(["bench", "rollout", "model=tiny", "bench.layer=1", "bench.batch_sizes=[0]"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("crl: error: bench.batch_sizes")


def test_cli_benches_a_bfloat16_model(capsys):
    args = ["model=tiny", "model.dtype=bfloat16", "bench.layer=1", "bench.d_sae=8", "bench.new_tokens=2"]
    crl_main(["bench", "rollout", *args, "bench.repeats=1", "bench.batch_sizes=[2]", "bench.naive_batch_sizes=[]"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["model_dtype"] == "bfloat16"
    row = out["results"]["2"]
    assert _positive(row["steered_tok_s"]) and _positive(row["train_decisions_s"]) and row["gpu_util_steered"] is None
