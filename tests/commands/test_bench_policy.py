"""`crl bench policy`: a table on stdout and the JSON file, each width in its own process; one-line errors."""

from __future__ import annotations

import json

import pytest

from crl.cli import main as crl_main

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [
    "bench.widths=[300]",
    "bench.d_model=8",
    "bench.batch_sizes=[2]",
    "bench.steps=2",
    "bench.l0=4",
    "bench.repeats=1",
    "bench.ppo_episodes=2",
    "policy.hidden=8",
    "policy.compact_min_d_sae=256",
    "ppo.num_envs=2",
    "ppo.update_epochs=1",
]


def test_cli_prints_a_table_and_writes_the_json(capsys, tmp_path):
    out = tmp_path / "bench" / "policy.json"
    crl_main(["bench", "policy", *TINY, f"out={out}"])
    stdout = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["bench"] == "policy" and result["d_model"] == 8 and result["device"] == "cpu"
    for key in ("levels", "head", "masking", "l0", "threads", "cpus", "load_avg_1m", "compact_min_d_sae"):
        assert key in result, key
    width = result["widths"]["300"]
    assert width["compact"] and width["batches"]["2"]["decisions_per_s"] > 0 and width["ppo"]["decisions"] == 4
    assert width["peak_rss_mib"] > 0 and width["batches"]["2"]["policy_speedup"] > 0
    assert stdout.startswith("crl bench policy: d_model=8") and f"written: {out}" in stdout
    assert any(line.split()[:2] == ["300", "2"] for line in stdout.splitlines())


@pytest.mark.parametrize(("override", "named"), [("bench.widths=[0]", "bench.widths"), ("bench.l0=0", "bench.l0")])
def test_bad_values_are_one_line(capsys, override, named):
    with pytest.raises(SystemExit) as e:
        crl_main(["bench", "policy", override])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"crl: error: {named}")
