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
    with pytest.raises(SystemExit) as e:
        crl_main(["bench", "rollout", "model=tiny", "bench.layer=1", "bench.batch_sizes=[0]"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("crl: error: bench.batch_sizes")
