"""`crl eval`: a trained run re-evaluated greedily appends fresh `eval:<split>` rows; a swapped SAE is refused;
`greedy_rule=` re-evaluates it under another greedy rule and the summary says which."""

from __future__ import annotations

import json
import sys

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


def test_eval_takes_another_greedy_rule_and_records_it(tmp_path, monkeypatch, capsys):
    from omegaconf import OmegaConf

    from tests.run.helpers import crl

    run_dir = tmp_path / "run"
    train(compose_train([*QUICK, "ppo.total_updates=1"]), run_dir)
    monkeypatch.chdir(tmp_path)  # Hydra's job log goes to the working directory
    monkeypatch.setattr(sys, "argv", list(sys.argv))

    def eval_summary(*args: str) -> dict:
        assert crl("eval", f"run_dir={run_dir}", *args) == 0, capsys.readouterr().err
        return json.loads(capsys.readouterr().out)

    assert eval_summary("greedy_rule=steer_if_likely")["greedy_rule"] == "steer_if_likely"
    assert eval_summary()["greedy_rule"] == "argmax"  # the run's own
    # A run made before policy.greedy_rule existed: argmax.
    saved = OmegaConf.load(run_dir / schema.CONFIG_YAML)
    assert saved.policy.pop("greedy_rule") == "argmax"
    OmegaConf.save(saved, run_dir / schema.CONFIG_YAML)
    assert eval_summary()["greedy_rule"] == "argmax"
    assert crl("eval", f"run_dir={run_dir}", "greedy_rule=max") == 2
    assert "greedy_rule=max is invalid" in capsys.readouterr().err
