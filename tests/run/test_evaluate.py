"""`crl eval`: a trained run re-evaluated greedily appends fresh `eval:<split>` rows; a swapped SAE is refused."""

from __future__ import annotations

import json

import pytest

from crl.errors import CRLError
from crl.logs import schema
from crl.logs.reader import read_jsonl
from crl.run.evaluate import evaluate_run
from crl.run.train import train
from tests.run.helpers import QUICK, compose_train

pytestmark = pytest.mark.usefixtures("one_thread")


def test_eval_appends_rows_and_checks_the_sae(tmp_path):
    run_dir = tmp_path / "run"
    summary = train(compose_train([*QUICK, "ppo.total_updates=1"]), run_dir)
    before = read_jsonl(run_dir / schema.EPISODES)
    out = evaluate_run(run_dir, "test")
    rows = read_jsonl(run_dir / schema.EPISODES)[len(before) :]
    assert {r["phase"] for r in rows} == {"eval:test"} and len(rows) == out["n"] == 16
    assert min(r["episode"] for r in rows) == 1 + max(r["episode"] for r in before)  # fresh episode ids
    assert out["accuracy"] == summary["after"]["accuracy"]  # greedy: the same policy gives the same answers
    info = json.loads((run_dir / schema.RUN_JSON).read_text())
    (run_dir / schema.RUN_JSON).write_text(json.dumps({**info, "sae_identity": "another"}))
    with pytest.raises(CRLError, match="sae_identity.*another"):
        evaluate_run(run_dir, "test")
    with pytest.raises(CRLError, match="not a CRL run directory"):
        evaluate_run(tmp_path / "nothing", "test")
