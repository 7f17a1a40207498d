"""What the soak scenarios share: the tiny run they train, launching `crl train` processes, comparing two run
directories row by row, and the tally of what was tried and what held."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from crl.logs import schema
from crl.logs.reader import read_jsonl

# A planted run on the tiny random model (seconds per run on 2 cores), with every phase a default run has:
# the unsteered baseline, val evaluations during training, the final test/train evaluations.
TINY = [
    "experiment=planted",
    "logger=disabled",
    "run.analyze=false",
    "sae.d_sae=32",
    "ppo.episodes_per_update=16",
    "ppo.num_envs=16",
    "task.n_test=16",
    "ppo.total_updates=12",
]
# Metrics that measure wall time differ between any two runs; everything else must be bit-identical.
TIMING = re.compile(r"seconds|per_sec|wall|_time\b|\btime_")
PROCESS_TIMEOUT = 600


@dataclass
class Tally:
    """What the soak tried and what held. `problems` names each failed check in one line. Two scenario lanes run
    at once (crl.commands.soak.soak), so every update goes through the lock."""

    kills_tried: int = 0
    kills_survived: int = 0
    bad_inputs: int = 0
    bad_inputs_handled: int = 0
    rows_lost: int = 0
    rows_duplicated: int = 0
    rows_compared: int = 0
    runs_clobbered: int = 0
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, **added: int) -> None:
        with self._lock:
            for name, n in added.items():
                setattr(self, name, getattr(self, name) + n)

    def note(self, text: str) -> None:
        with self._lock:
            self.notes.append(text)

    def check(self, ok: bool, what: str) -> bool:
        if not ok:
            with self._lock:
                self.problems.append(what)
        return ok

    def bad_input(self, ok: bool, what: str) -> bool:
        """One bad input tried: `ok` when it gave a clear one-line error or recovered to the right result."""
        self.count(bad_inputs=1, bad_inputs_handled=int(ok))
        return self.check(ok, what)

    def counts(self) -> dict[str, Any]:
        with self._lock:
            return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}


def crl(args: list[str], cwd: Path, log: Path | None = None) -> subprocess.CompletedProcess:
    """Run `crl <args>` in a fresh interpreter; stdout and stderr captured (and kept in `log`, if given)."""
    proc = subprocess.run(
        [sys.executable, "-m", "crl.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=PROCESS_TIMEOUT
    )
    if log is not None:
        log.write_text(f"$ crl {' '.join(args)}\n[exit {proc.returncode}]\n{proc.stdout}\n{proc.stderr}")
    return proc


def start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """Start `crl <args>` without waiting; output goes to `log` (a pipe could fill and stall it), unbuffered so
    that a killed process's log shows how far it got."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as fh:
        argv = [sys.executable, "-m", "crl.cli", *args]
        return subprocess.Popen(argv, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, env=env)


def clear_error(proc: subprocess.CompletedProcess, *needles: str) -> bool:
    """Exit code 2, exactly one `crl: error:` line naming every needle, and no traceback."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("crl: error:")]
    one = lines[0] if len(lines) == 1 else ""
    return proc.returncode == 2 and bool(one) and "Traceback" not in proc.stderr and all(n in one for n in needles)


def error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    return next((ln for ln in lines if ln.startswith("crl: error:")), lines[-1] if lines else f"exit {proc.returncode}")


def _canonical(row: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in row.items() if not TIMING.search(k)}, sort_keys=True)


def log_rows(run_dir: Path) -> dict[tuple[str, str], list[str]]:
    """(log, phase) -> that phase's rows in file order, timing keys dropped. Metrics rows have no phase ("-")."""
    out: dict[tuple[str, str], list[str]] = {}
    for name in schema.LOGS:
        for row in read_jsonl(run_dir / name):
            out.setdefault((name, str(row.get("phase", "-"))), []).append(_canonical(row))
    return out


@dataclass
class RowDiff:
    compared: int = 0
    lost: int = 0  # rows of the reference run missing from the other
    extra: int = 0  # rows the reference run does not have (duplicates, or rows that differ)
    reordered: list[str] = field(default_factory=list)  # (log, phase) groups with the same rows in another order

    @property
    def equal(self) -> bool:
        return not (self.lost or self.extra or self.reordered)

    def describe(self) -> str:
        return f"{self.lost} rows lost, {self.extra} extra, reordered: {self.reordered or 'none'}"


def diff_rows(ref: Path, got: Path) -> RowDiff:
    a, b = log_rows(ref), log_rows(got)
    diff = RowDiff()
    for key in sorted(set(a) | set(b)):
        ra, rb = a.get(key, []), b.get(key, [])
        diff.compared += len(ra)
        ca, cb = Counter(ra), Counter(rb)
        diff.lost += sum((ca - cb).values())
        diff.extra += sum((cb - ca).values())
        if ca == cb and ra != rb:
            diff.reordered.append("/".join(key))
    return diff


def _tensors(path: Path, key: str | None) -> dict[str, Any] | None:
    import torch

    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    return state[key] if key else state


def same_parameters(ref: Path, got: Path) -> bool:
    """The final policy, the last checkpoint's policy and the selected best policy are bit-identical."""
    import torch

    for name, key in (("policy.pt", None), (schema.CHECKPOINT, "policy"), ("checkpoints/best.pt", "policy")):
        a, b = _tensors(ref / name, key), _tensors(got / name, key)
        if (a is None) != (b is None):
            return False
        if a is not None and (a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a)):
            return False
    return True


def _untimed(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _untimed(v) for k, v in x.items() if not TIMING.search(k)}
    if isinstance(x, list):
        return [_untimed(v) for v in x]
    return x


def same_summary(ref: Path, got: Path) -> bool:
    load = lambda p: _untimed(json.loads((p / schema.SUMMARY).read_text()))
    return (got / schema.SUMMARY).exists() and load(ref) == load(got)


def same_run(tally: Tally, ref: Path, got: Path, what: str) -> bool:
    """`got` holds exactly the reference run: every row once, in order, per log and phase; the same summary and
    parameters. Adds its rows to the tally's lost/duplicated counts."""
    diff = diff_rows(ref, got)
    tally.count(rows_compared=diff.compared, rows_lost=diff.lost, rows_duplicated=diff.extra)
    ok = tally.check(diff.equal, f"{what}: {diff.describe()}")
    ok = tally.check(same_summary(ref, got), f"{what}: summary.json differs from the uninterrupted run's") and ok
    return tally.check(same_parameters(ref, got), f"{what}: final parameters differ") and ok


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` -> (size, mtime_ns), to show that a refused invocation touched nothing."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}
