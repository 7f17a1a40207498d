"""One `crl train` invocation's hold on its run directory: claim it, and on failure leave nothing or mark it.

Hydra creates the run directory (and writes `.hydra/` and `<job>.log` into it) before CRL's code runs, so a bad
input found while loading (a wrong layer, a missing data file) would otherwise leave an empty directory under
runs/. `claim` wraps the training call:

- an exclusive lock (`flock` on `.crl.lock`; the kernel drops it when the process dies, even on SIGKILL), so two
  processes never write one run directory at once (two sweeps started in the same second, a double resume);
- a new run needs a fresh directory: nothing in it but Hydra's own files; otherwise it refuses and touches nothing;
- on failure, a directory this invocation started that still holds no log rows and no checkpoint is removed
  (nothing useful was written), unless it is a sweep's job (`keep`: the sweep shows which job failed); otherwise
  FAILED.json records the one-line error, the command and the time, and `crl.logs.reader` refuses the directory
  until a successful resume removes the marker;
- a full disk becomes one line that says to free space and resume (checkpoints are atomic, so one stays good).

`run_tag` makes default run directory names unique per process (conf/train.yaml: `${crl_tag:}`), so two runs or
sweeps started in the same second never share a directory.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

from crl.errors import CRLError
from crl.logs import schema
from crl.logs.atomic import atomic_write_json
from crl.logs.schema import LOGS

LOCK = ".crl.lock"
HYDRA_OUTPUT = ".hydra"  # Hydra's output_subdir; its job log is <job name>.log next to it
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def run_tag() -> str:
    """This process's id in hex: unique among processes running at the same time on one machine."""
    return f"{os.getpid():x}"


def foreign_entries(run_dir: Path) -> list[str]:
    """What a directory holds besides Hydra's own files and the lock ([] for a fresh or missing directory)."""
    if not run_dir.is_dir():
        return []
    ours = {HYDRA_OUTPUT, LOCK}
    return sorted(p.name for p in run_dir.iterdir() if p.name not in ours and not p.name.endswith(".log"))


def never_checkpointed(run_dir: Path) -> bool:
    """A run killed before its first checkpoint: identity written, no checkpoint and not finished."""

    def has(name: str) -> bool:
        return (run_dir / name).exists()

    return has(schema.RUN_JSON) and has(schema.CONFIG_YAML) and not has(schema.CHECKPOINT) and not has(schema.SUMMARY)


def discard_progress(run_dir: Path, extra: Iterable[str] = ()) -> None:
    """Remove the logs, checkpoints and outputs of a run that is starting again from the beginning."""
    for name in (*LOGS, schema.SUMMARY, schema.FAILED, *extra):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / Path(schema.CHECKPOINT).parent, ignore_errors=True)


def is_disk_full(exc: BaseException, run_dir: Path) -> bool:
    """ENOSPC/EDQUOT anywhere in the exception chain, or an I/O failure while the disk has no room left
    (torch.save reports a full disk as a RuntimeError without an errno)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if (isinstance(e, OSError) and e.errno in _DISK_FULL) or "No space left" in str(e):
            return True
        e = e.__cause__ or e.__context__
    if isinstance(exc, OSError | RuntimeError):
        try:
            return shutil.disk_usage(run_dir).free < 1 << 20
        except OSError:
            return False
    return False


def one_line(exc: BaseException) -> str:
    if isinstance(exc, CRLError):
        return str(exc)
    first = next((s.strip() for s in str(exc).splitlines() if s.strip()), "")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def resume_command(command: str, run_dir: Path) -> str:
    """The command that continues a run made by `command` (`crl train ...` or `crl grpo ...`).

    >>> resume_command("crl grpo grpo.lora=false", Path("runs/a"))
    'crl grpo resume=runs/a'
    """
    words = command.split()[:2]
    return f"{' '.join(words) if len(words) == 2 and words[0] == 'crl' else 'crl train'} resume={run_dir}"


def mark_failed(run_dir: Path, error: str, command: str) -> None:
    """Write FAILED.json; best effort (on a full disk even this small file may not fit). Its `resume` command only
    where resume= can continue (identity and config written); else `command` runs the job again."""
    info = {"error": error, "command": command, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if (run_dir / schema.RUN_JSON).exists() and (run_dir / schema.CONFIG_YAML).exists():
        info["resume"] = resume_command(command, run_dir)
    with suppress(OSError):
        atomic_write_json(run_dir / schema.FAILED, info)


def _lock(run_dir: Path) -> IO[bytes]:
    fh = open(run_dir / LOCK, "ab")  # noqa: SIM115 - held for the whole invocation
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise CRLError(f"run directory {run_dir} is in use by another crl process; wait, or use another") from None
    return fh


def _useful(run_dir: Path) -> bool:
    logs = [run_dir / name for name in LOGS]
    return (run_dir / schema.CHECKPOINT).exists() or any(p.exists() and p.stat().st_size for p in logs)


def _sizes(run_dir: Path) -> dict[str, int]:
    return {name: (run_dir / name).stat().st_size if (run_dir / name).exists() else -1 for name in LOGS}


@contextmanager
def claim(run_dir: Path, *, new: bool, command: str, keep: bool = False) -> Iterator[None]:
    """Hold `run_dir` for one invocation (see the module docstring). `new`: a new run, not a resume; `keep`: on
    failure mark the directory even when nothing useful was written (a job of a sweep)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock(run_dir)
    try:
        foreign = foreign_entries(run_dir)
        if new and foreign:
            raise CRLError(
                f"run directory {run_dir} is not empty (it holds {', '.join(foreign[:4])}); a new run needs a new "
                f"directory: pass resume={run_dir} to continue that run, or another hydra.run.dir"
            )
        before = _sizes(run_dir)
        try:
            yield
        except BaseException as e:
            full = isinstance(e, Exception) and is_disk_full(e, run_dir)
            error = f"no space left on the disk of {run_dir} ({one_line(e)})" if full else one_line(e)
            removed = not keep and not foreign and not _useful(run_dir)
            if removed:
                shutil.rmtree(run_dir, ignore_errors=True)  # nothing worth keeping; the error says what went wrong
            elif not foreign or _sizes(run_dir) != before:
                mark_failed(run_dir, error, command)
            if full:
                then = "run it again" if removed else f"`{resume_command(command, run_dir)}` continues the run"
                raise CRLError(f"{error}; free some space, then {then}") from None
            raise
        (run_dir / schema.FAILED).unlink(missing_ok=True)
    finally:
        lock.close()


def preflight(args: list[str], command: str = "crl train") -> list[str]:
    """Check the run directory of `command` (`crl train`, `crl grpo`) before Hydra creates it or writes its files
    into one; returns the Hydra overrides to add (`resume=<dir>` writes into that directory instead of a new one)."""
    given = dict(a.split("=", 1) for a in args if "=" in a and not a.startswith("-"))
    resume = given.get("resume")
    if resume not in (None, "", "null"):
        missing = [name for name in (schema.RUN_JSON, schema.CONFIG_YAML) if not (Path(resume) / name).exists()]
        if missing:
            what = "does not exist" if not Path(resume).exists() else f"has no {' or '.join(missing)}"
            raise CRLError(f"resume={resume} is not a CRL run directory (it {what}); pass a directory of `{command}`")
        return [f"hydra.run.dir={resume}"]
    run_dir = given.get("hydra.run.dir")
    if run_dir and foreign_entries(Path(run_dir)):
        raise CRLError(
            f"hydra.run.dir={run_dir} is not empty; a new run needs a new directory (resume={run_dir} continues a run)"
        )
    return []
