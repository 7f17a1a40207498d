"""A full disk during training: a clear one-line error, then (space freed) a resume that ends in exactly the
uninterrupted run.

With root and `mount`, the run writes into a small tmpfs whose size is drawn between "the first checkpoint fits"
and "the run can never finish", so the disk fills at a random point (a checkpoint, a log append, policy.pt);
afterwards the tmpfs is grown and the run resumed. Otherwise (disk=simulate, or no tmpfs) the log writer raises
ENOSPC after a random number of appends, in a process that is otherwise `crl train`.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

from crl.commands.soak.harness import TINY, Tally, clear_error, crl, error_line, same_run

# `crl train`, but the log writer's append raises ENOSPC after FAIL_AFTER calls (a disk that fills up).
_SIMULATE = """
import errno, sys
from crl.logs import writer
calls, original = [0], writer.RunWriter.append
def append(self, log, rows):
    calls[0] += 1
    if calls[0] > {fail_after}:
        raise OSError(errno.ENOSPC, "No space left on device (simulated)", log)
    return original(self, log, rows)
writer.RunWriter.append = append
from crl.cli import main
main(sys.argv[1:])
"""


def _mount(point: Path, size: int, remount: bool = False) -> bool:
    opts = f"remount,size={size}" if remount else f"size={size}"
    cmd = ["mount", "-o", opts, str(point)] if remount else ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(point)]
    return subprocess.run(cmd, capture_output=True).returncode == 0


def _finish(work: Path, ref: Path, run: Path, first: subprocess.CompletedProcess, how: str, tally: Tally) -> None:
    """The failed run: one clear line about the disk; then resumed (or, if nothing was kept, run again)."""
    tally.bad_input(clear_error(first, "no space left"), f"full disk ({how}): {error_line(first)}")
    tally.note(f"full disk ({how}): {error_line(first)}")
    args = ["train", f"resume={run}"] if run.exists() else ["train", *TINY, f"hydra.run.dir={run}"]
    proc = crl(args, work, work / "disk-resume.log")
    ok = proc.returncode == 0 and same_run(tally, ref, run, f"full disk ({how}), then resumed")
    tally.bad_input(ok, f"full disk ({how}), then resumed: {error_line(proc)}")


def _tmpfs(work: Path, ref: Path, rng: random.Random, tally: Tally) -> bool:
    point = work / "tmpfs"
    point.mkdir()
    ckpt = (ref / "checkpoints" / "last.pt").stat().st_size
    best = sum(p.stat().st_size for p in (ref / "checkpoints").glob("best.pt"))
    logs = sum((ref / n).stat().st_size for n in ("interventions.jsonl", "episodes.jsonl", "metrics.jsonl"))
    size = int(best + ckpt * 1.2 + rng.uniform(0, ckpt * 0.8 + logs * 0.5))
    if not _mount(point, size):
        point.rmdir()
        return False
    try:
        run = point / "run"
        first = crl(["train", *TINY, f"hydra.run.dir={run}"], work, work / "disk-full.log")
        if not tally.check(first.returncode != 0, f"the tmpfs of {size} bytes never filled; the check proves nothing"):
            return True
        tally.check(_mount(point, size * 8, remount=True), "could not grow the tmpfs to resume")
        _finish(work, ref, run, first, f"tmpfs of {size // 1024} KiB", tally)
    finally:
        subprocess.run(["umount", str(point)], capture_output=True)
    return True


def _simulated(work: Path, ref: Path, rng: random.Random, tally: Tally) -> None:
    run = work / "enospc" / "run"
    fail_after = rng.randint(3, 40)
    code = _SIMULATE.format(fail_after=fail_after)
    argv = [sys.executable, "-c", code, "train", *TINY, f"hydra.run.dir={run}"]
    first = subprocess.run(argv, cwd=work, capture_output=True, text=True, timeout=600)
    (work / "disk-full.log").write_text(first.stdout + first.stderr)
    if tally.check(first.returncode != 0, f"simulated ENOSPC after {fail_after} appends never fired"):
        _finish(work, ref, run, first, f"simulated ENOSPC after {fail_after} log appends", tally)


def full_disk(work: Path, ref: Path, mode: str, rng: random.Random, tally: Tally) -> None:
    tmpfs_ok = mode in ("auto", "tmpfs") and shutil.which("mount") is not None and _tmpfs(work, ref, rng, tally)
    if mode == "tmpfs" and not tmpfs_ok:
        tally.check(False, "disk=tmpfs but a tmpfs could not be mounted here (needs root); use disk=simulate")
    elif not tmpfs_ok:
        _simulated(work, ref, rng, tally)
