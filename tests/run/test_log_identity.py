"""The per-token path may move between host and device, change dtypes or batch its transfers, but on CPU a run's logs
stay what they were: every episode, intervention and metrics row of two tiny runs is compared, through a digest, with
the one recorded from the code before the lean GPU path (#22). Timings are left out (they are never identical).

Floats are digested to 6 significant digits (the discrete fields exactly), so a last-bit difference from another
CPU's kernels does not fail the test, while a changed choice, token, reward or loss does. After a deliberate change
of what the logs hold, re-record with `CRL_RECORD_LOG_DIGESTS=1 pytest tests/run/test_log_identity.py` and say why
in the commit."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from crl.logs import schema
from crl.logs.reader import read_jsonl
from crl.run.train import train
from tests.run.helpers import QUICK, compose_train

pytestmark = pytest.mark.usefixtures("one_thread")

DIGESTS = Path(__file__).with_name("log_digests.json")
TIMINGS = {"charts/decisions_per_sec", "charts/update_seconds"}

CASES = {
    # The planted quick run: greedy decoding, one level, no masking, layer norm, GAE.
    "quick": [*QUICK, "ppo.total_updates=2", "run.eval_every=1"],
    # Every per-token branch at once: sampled decoding, two levels, relative coefficients, adaptive masking, forced
    # steps past steer_steps, standardized observations with kNN abstention, obs_topk, group advantages, the KL pull,
    # the unsteered baseline before training.
    "wide": [
        *QUICK,
        "ppo.total_updates=2",
        "run.eval_every=1",
        "run.eval_before=true",
        "task.max_new_tokens=4",
        "steering.greedy=false",
        "steering.temperature=0.7",
        "steering.coef_levels=[1,-1]",
        "steering.coef_mode=relative",
        "steering.coef=0.5",
        "steering.steer_steps=2",
        "steering.obs_topk=3",
        "masking=adaptive",
        "masking.top_k=4",
        "policy.obs_norm=standardize",
        "policy.obs_stats_prompts=16",
        "policy.abstain=knn",
        "policy.abstain_k=3",
        "ppo.advantage=group",
        "ppo.group_size=2",
        "ppo.regularizer=kl",
        "ppo.reg_coef=0.05",
    ],
}


def _canon(x: Any) -> Any:
    if isinstance(x, float):
        return f"{x:.6g}"
    if isinstance(x, dict):
        return {k: _canon(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_canon(v) for v in x]
    return x


def log_rows(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """The run's log rows without what differs between identical runs (the run's name, timings)."""
    out = {}
    for name in schema.LOGS:
        rows = [{k: v for k, v in r.items() if k != "run" and k not in TIMINGS} for r in read_jsonl(run_dir / name)]
        out[name] = rows
    return out


def digest(rows: dict[str, list[dict[str, Any]]]) -> str:
    return hashlib.sha256(json.dumps(_canon(rows), sort_keys=True).encode()).hexdigest()


@pytest.mark.parametrize("case", sorted(CASES))
def test_cpu_logs_are_unchanged(case, tmp_path):
    rows = log_rows(_run(CASES[case], tmp_path))
    assert all(rows.values()), {k: len(v) for k, v in rows.items()}
    got = digest(rows)
    recorded = json.loads(DIGESTS.read_text()) if DIGESTS.exists() else {}
    if os.environ.get("CRL_RECORD_LOG_DIGESTS") == "1":
        recorded[case] = got
        DIGESTS.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    assert got == recorded.get(case), f"the {case} run's logs changed (rows: { {k: len(v) for k, v in rows.items()} })"


def test_the_digest_sees_a_changed_run(tmp_path):
    # The comparison above can fail: another seed of the quick run gives other rows and another digest.
    rows = log_rows(_run([*CASES["quick"], "seed=1"], tmp_path))
    assert digest(rows) != json.loads(DIGESTS.read_text())["quick"]


def _run(overrides: list[str], run_dir: Path) -> Path:
    train(compose_train(overrides), run_dir)
    return run_dir
