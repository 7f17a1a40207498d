"""The per-token path may move between host and device, change dtypes or batch its transfers, but on CPU a run's logs
stay what they were: every episode, intervention and metrics row of two tiny runs is compared with a stored reference
(tests/run/log_reference/<case>.json.gz) recorded from the code before the lean GPU path (#22), i.e. commit e39b62f,
the parent of 63964c8, with one torch thread. Timings are left out (they are never identical).

Discrete fields (ints, strings, bools, lists of token ids / features) must be equal; floats are compared with a
tolerance (`close`), so a last-bit difference from another CPU's kernels does not fail the test, while a changed
choice, token, reward or loss does. After a deliberate change of what the logs hold, re-record with
`CRL_RECORD_LOG_REFERENCE=1 pytest tests/run/test_log_identity.py` and say why in the commit (the reference then
comes from that commit, no longer from e39b62f). One deliberate change was edited into wide.json.gz instead, its floats
kept from e39b62f: a decision whose only valid action is the no-op (past steer_steps, or abstained) logs no
`top_alternatives` (it logged three masked actions, the top-k's pick among equal fill values)."""

from __future__ import annotations

import gzip
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from crl.logs import schema
from crl.logs.reader import read_jsonl
from crl.run.train import train
from tests.run.helpers import QUICK, compose_train

pytestmark = pytest.mark.usefixtures("one_thread")

REFERENCE = Path(__file__).with_name("log_reference")
TIMINGS = {"charts/decisions_per_sec", "charts/update_seconds"}
# Tolerance for floats: another CPU's kernels differ in the last bits of float32 (~1e-7 relative), and two PPO updates
# may grow that by an order or two, so 1e-4 keeps margin; a changed choice, token or reward changes a discrete field
# or moves floats far more. The absolute floor is for values near 0 (a loss or advantage mean), where relative is noise.
REL, ABS = 1e-4, 1e-6

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

Rows = dict[str, list[dict[str, Any]]]


def log_rows(run_dir: Path) -> Rows:
    """The run's log rows without what differs between identical runs (the run's name, timings)."""
    out = {}
    for name in schema.LOGS:
        rows = [{k: v for k, v in r.items() if k != "run" and k not in TIMINGS} for r in read_jsonl(run_dir / name)]
        out[name] = rows
    return out


def close(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=REL, abs_tol=ABS)


_MISSING = "<missing>"


def _diff(got: Any, ref: Any, path: str) -> tuple[str, Any, Any] | None:
    """The first place (a key path) where got and ref differ: floats within the tolerance, everything else exactly."""
    numbers = [isinstance(x, (int, float)) and not isinstance(x, bool) for x in (got, ref)]
    if all(numbers) and (isinstance(got, float) or isinstance(ref, float)):
        return None if close(float(got), float(ref)) else (path, got, ref)
    if isinstance(got, dict) and isinstance(ref, dict):
        for k in sorted(got.keys() | ref.keys()):
            d = _diff(got.get(k, _MISSING), ref.get(k, _MISSING), f"{path}.{k}" if path else k)
            if d:
                return d
        return None
    if isinstance(got, list) and isinstance(ref, list):
        if len(got) != len(ref):
            return (path, got, ref)
        if any(_diff(g, r, path) for g, r in zip(got, ref, strict=True)):
            return (path, got, ref)  # the whole list: its key names the field (token ids, features, ...)
        return None
    return None if type(got) is type(ref) and got == ref else (path, got, ref)


def first_difference(rows: Rows, reference: Rows) -> str | None:
    """None when the rows match the reference, else the log file, row index, first differing key and both values."""
    for name in sorted(rows.keys() | reference.keys()):
        got, ref = rows.get(name), reference.get(name)
        if got is None or ref is None:
            return f"{name}: {'not in the reference' if ref is None else 'not written'}"
        if len(got) != len(ref):
            return f"{name}: {len(got)} rows, the reference has {len(ref)}"
        for i, (g, r) in enumerate(zip(got, ref, strict=True)):
            d = _diff(g, r, "")
            if d:
                key, a, b = d
                return f"{name} row {i}: {key!r} is {a!r}, the reference has {b!r}"
    return None


def read_reference(case: str) -> Rows:
    return json.loads(gzip.decompress((REFERENCE / f"{case}.json.gz").read_bytes()))


def write_reference(case: str, rows: Rows) -> None:
    REFERENCE.mkdir(exist_ok=True)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as f:  # same rows, same bytes
        f.write(json.dumps(rows, sort_keys=True, separators=(",", ":")).encode())
    (REFERENCE / f"{case}.json.gz").write_bytes(buf.getvalue())


@pytest.mark.parametrize("case", sorted(CASES))
def test_cpu_logs_are_unchanged(case, tmp_path):
    rows = log_rows(_run(CASES[case], tmp_path))
    assert all(rows.values()), {k: len(v) for k, v in rows.items()}
    if os.environ.get("CRL_RECORD_LOG_REFERENCE") == "1":
        write_reference(case, rows)
    diff = first_difference(rows, read_reference(case))
    assert diff is None, f"the {case} run's logs changed: {diff}"


def test_the_comparison_sees_a_changed_run(tmp_path):
    # The comparison above can fail: another seed of the quick run gives other rows.
    rows = log_rows(_run([*CASES["quick"], "seed=1"], tmp_path))
    assert first_difference(rows, read_reference("quick")) is not None


def test_the_comparison_tolerates_only_last_digits():
    # One float moved by 1e-2 relative fails, naming its log, row and key; every float moved by 1e-7 relative passes.
    reference = read_reference("quick")
    name, i, key = next(
        (n, i, k)
        for n in sorted(reference)
        for i, r in enumerate(reference[n])
        for k, v in sorted(r.items())
        if isinstance(v, float) and abs(v) > 1e-3
    )
    moved = json.loads(json.dumps(reference))
    moved[name][i][key] *= 1 + 1e-2
    assert first_difference(moved, reference) == (
        f"{name} row {i}: {key!r} is {moved[name][i][key]!r}, the reference has {reference[name][i][key]!r}"
    )

    def nudge(x: Any) -> Any:
        if isinstance(x, float):
            return x * (1 + 1e-7)
        if isinstance(x, dict):
            return {k: nudge(v) for k, v in x.items()}
        if isinstance(x, list):
            return [nudge(v) for v in x]
        return x

    nudged = nudge(reference)
    assert nudged != reference
    assert first_difference(nudged, reference) is None
    # A discrete field is compared exactly: one token id off fails.
    token = json.loads(json.dumps(reference))
    token["interventions.jsonl"][0]["token_id"] += 1
    assert first_difference(token, reference).startswith("interventions.jsonl row 0: 'token_id'")


def _run(overrides: list[str], run_dir: Path) -> Path:
    train(compose_train(overrides), run_dir)
    return run_dir
