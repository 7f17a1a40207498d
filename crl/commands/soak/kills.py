"""SIGKILL a training run at random points and resume it each time; damage copies of the half-done run (torn last
lines, a truncated checkpoint, a truncated best.pt) and of the finished one. Every outcome must be the
uninterrupted run exactly, or a clear one-line error, never a silent wrong result."""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
from pathlib import Path

from crl.commands.soak.harness import TINY, Tally, clear_error, crl, error_line, same_run, snapshot, start
from crl.errors import CRLError
from crl.logs import schema
from crl.logs.reader import load_run, read_jsonl

BEST = "checkpoints/best.pt"


def reference(work: Path, tally: Tally) -> Path:
    """The uninterrupted run every other run is compared with."""
    ref = work / "ref" / "run"
    proc = crl(["train", *TINY, f"hydra.run.dir={ref}"], work, work / "ref.log")
    if proc.returncode != 0:
        raise CRLError(f"the reference run failed ({error_line(proc)}); see {work / 'ref.log'}")
    tally.note(f"reference run: {len(read_jsonl(ref / schema.INTERVENTIONS))} intervention rows")
    return ref


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _kill_at(args: list[str], work: Path, run: Path, target: int, rng: random.Random, log: Path) -> bool:
    """Start `crl <args>`; SIGKILL it once interventions.jsonl reaches `target` bytes (plus a random few ms).
    True when the kill landed on a running process."""
    proc = start(args, work, log)
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline and _size(run / schema.INTERVENTIONS) < target:
        time.sleep(rng.uniform(0.005, 0.05))
    time.sleep(rng.uniform(0.0, 0.05))
    if proc.poll() is not None:
        return False
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return True


def kill_and_resume(work: Path, ref: Path, kills: int, rng: random.Random, tally: Tally) -> Path | None:
    """`kills` SIGKILLs at random points of one run (spread over all of it: baseline, updates, checkpoints,
    val and final evaluations), each followed by `resume=`; then the run is finished and compared with `ref`.
    Returns a copy of the run as it was after the last kill (for the damage checks)."""
    run = work / "killed" / "run"
    total = _size(ref / schema.INTERVENTIONS)
    # The first kill lands as soon as rows reach the disk, before the first checkpoint (the resume then starts
    # the run again from the beginning); the others anywhere up to the final evaluations.
    targets = [1, *sorted(int(total * rng.uniform(0.02, 0.92)) for _ in range(kills - 1))][:kills]
    landed = 0
    for i, target in enumerate(targets):
        args = ["train", *TINY, f"hydra.run.dir={run}"] if i == 0 else ["train", f"resume={run}"]
        tally.count(kills_tried=1)
        if _kill_at(args, work, run, target, rng, work / f"kill{i}.log"):
            landed += 1
        else:
            tally.check(False, f"kill {i}: the process ended before the kill (see {work / f'kill{i}.log'})")
    half = work / "half-done"
    if run.exists():
        shutil.copytree(run, half, symlinks=True)
    proc = crl(["train", f"resume={run}"], work, work / "final-resume.log")
    ok = tally.check(proc.returncode == 0, f"the final resume failed: {error_line(proc)}")
    if ok and same_run(tally, ref, run, f"run killed {landed} times"):
        tally.count(kills_survived=landed)
    return half if half.exists() else None


def _copy(src: Path, dst: Path) -> Path:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, symlinks=True)
    return dst


def _tear(run: Path) -> None:
    """A torn last line in every log: the first half of a row, no newline (a writer killed mid-write)."""
    for name in schema.LOGS:
        rows = (run / name).read_bytes().splitlines(keepends=True)
        torn = rows[-1][: max(1, len(rows[-1]) // 2)].rstrip(b"\n") if rows else b'{"update": 1'
        with (run / name).open("ab") as fh:
            fh.write(torn)


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def damaged_logs(work: Path, ref: Path, half: Path | None, tally: Tally) -> None:
    """Torn last lines (finished and half-done runs), a corrupt line mid-file, truncated checkpoints."""
    # A finished run with a torn last line in each log reads as the run itself (the torn rows were never whole).
    torn = _copy(ref, work / "damaged" / "torn-finished")
    _tear(torn)
    same = all(read_jsonl(torn / n) == read_jsonl(ref / n) for n in schema.LOGS)
    tally.bad_input(same and len(load_run(torn).episodes) > 0, "torn last lines changed what a finished run reads as")

    # A corrupt line that is not the last: the reader refuses it in one line that names file and line.
    bad = _copy(ref, work / "damaged" / "corrupt-middle")
    lines = (bad / schema.EPISODES).read_text().splitlines(keepends=True)
    lines.insert(len(lines) // 2, '{"phase": "train", "upd\n')
    (bad / schema.EPISODES).write_text("".join(lines))
    try:
        load_run(bad)
        tally.bad_input(False, "a corrupt line mid-file was read without an error")
    except CRLError as e:
        msg = str(e)
        tally.bad_input("\n" not in msg and "line" in msg and schema.EPISODES in msg, f"unclear error: {msg}")

    if half is None or not (half / schema.RUN_JSON).exists():
        tally.check(False, "no half-done run to damage (every kill missed?)")
        return
    # The half-done run with torn last lines: the resume truncates them away and finishes the run exactly.
    run = _copy(half, work / "damaged" / "torn-half" / "run")
    _tear(run)
    proc = crl(["train", f"resume={run}"], work, work / "torn-half.log")
    tally.bad_input(proc.returncode == 0 and same_run(tally, ref, run, "torn, then resumed"), "torn, then resumed")

    # A truncated checkpoint: one line, and the directory is left as it was.
    run = _copy(half, work / "damaged" / "truncated-ckpt" / "run")
    if (run / schema.CHECKPOINT).exists():
        _truncate(run / schema.CHECKPOINT)
        before = {k: v for k, v in snapshot(run).items() if not k.startswith(".hydra") and not k.endswith(".log")}
        proc = crl(["train", f"resume={run}"], work, work / "truncated-ckpt.log")
        after = {k: v for k, v in snapshot(run).items() if not k.startswith(".hydra") and not k.endswith(".log")}
        tally.bad_input(clear_error(proc, "corrupt") and before == after, f"truncated checkpoint: {error_line(proc)}")
        # The advice it gives: delete the checkpoint and resume, which starts the run again from the beginning.
        (run / schema.CHECKPOINT).unlink()
        proc = crl(["train", f"resume={run}"], work, work / "deleted-ckpt.log")
        ok = proc.returncode == 0 and same_run(tally, ref, run, "checkpoint deleted, then resumed")
        tally.bad_input(ok, f"checkpoint deleted, then resumed: {error_line(proc)}")

    # A truncated best.pt (the selected policy): the right result or a clear error, nothing in between.
    run = _copy(half, work / "damaged" / "truncated-best" / "run")
    if (run / BEST).exists() and (run / schema.CHECKPOINT).exists():
        _truncate(run / BEST)
        proc = crl(["train", f"resume={run}"], work, work / "truncated-best.log")
        if proc.returncode == 0:
            tally.bad_input(same_run(tally, ref, run, "best.pt truncated, then resumed"), "truncated best.pt")
        else:
            tally.bad_input(clear_error(proc), f"truncated best.pt: {error_line(proc)}")
            tally.note(f"truncated best.pt -> {error_line(proc)}")
