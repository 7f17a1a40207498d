"""`crl train -m` on one of Hydra's launchers: sequential (basic, the default), in parallel on this machine
(`hydra/launcher=joblib`, `hydra/launcher=submitit_local`) or as Slurm jobs (`hydra/launcher=submitit_slurm`).

Each job writes its own run directory under the sweep directory (conf/train.yaml: hydra.sweep) and its own wandb
run, grouped by the sweep (logger.group defaults to the sweep directory's name). What this module adds:

- threads: parallel jobs on one machine share its cores, each gets `cores // jobs at once` torch threads
  (OMP_NUM_THREADS, set before the jobs start unless already set); a Slurm job uses its own allocation;
- a failed job does not stop the others: its error is one line, its directory is kept and marked FAILED.json,
  and the sweep ends with that error (exit 2) once every job is done;
- output: every line a job prints starts with `[job N] ` (Hydra's `#N` in its list of jobs), so the lines of
  parallel jobs can be told apart.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from crl.errors import CRLError

LOCAL_PARALLEL = ("joblib", "submitit_local")  # launchers that run several jobs at once on this machine
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # torch's CPU thread pools read these when it loads


@dataclass(frozen=True)
class Sweep:
    """What a `crl train` command line asks of Hydra's launcher."""

    launcher: str = "basic"
    n_jobs: int | None = None  # hydra.launcher.n_jobs (joblib), when given
    size: int | None = None  # jobs in the sweep; None when the sweeper decides (glob or interval sweeps)


def parse(argv: list[str]) -> Sweep | None:
    """The sweep `argv` asks for, or None when it is a single run."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ValueType

    args, _ = get_args_parser().parse_known_args(argv)
    if not (args.multirun or "hydra.mode=MULTIRUN" in args.overrides):
        return None
    launcher, n_jobs, size = "basic", None, 1
    for o in OverridesParser.create().parse_overrides(args.overrides):
        key = o.get_key_element()
        if key == "hydra/launcher":
            launcher = o.value()
        elif key == "hydra.launcher.n_jobs" and not o.is_sweep_override():
            n_jobs = int(o.value())
        elif o.is_sweep_override():
            discrete = o.is_discrete_sweep() and o.value_type != ValueType.GLOB_CHOICE_SWEEP
            size = size * len(list(o.sweep_string_iterator())) if discrete and size else None
    return Sweep(str(launcher), n_jobs, size)


def cores() -> int:
    """The cores this process may run on (its affinity: a Slurm allocation, taskset)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_job(sweep: Sweep, n_cores: int) -> int | None:
    """Torch threads for each job of `sweep` on `n_cores` cores; None to leave torch's default (one job at a time
    here, or Slurm jobs on their own allocations)."""
    if sweep.launcher not in LOCAL_PARALLEL:
        return None
    at_once = sweep.size or n_cores
    if sweep.launcher == "joblib":  # joblib's n_jobs: -1 all cores, -2 all but one, ...
        n = -1 if sweep.n_jobs is None else sweep.n_jobs
        at_once = min(at_once, n if n > 0 else max(1, n_cores + 1 + n))
    return max(1, n_cores // max(1, at_once))  # submitit_local starts every job at once


@contextmanager
def launching(sweep: Sweep) -> Iterator[None]:
    """The environment the launcher starts the jobs in, for the duration (then restored):

    - THREAD_VARS = `threads_per_job` (the jobs inherit them; torch reads them when it loads), unless the user set
      OMP_NUM_THREADS;
    - HYDRA_FULL_ERROR=1: Hydra then raises a failed job's error (once every job of the batch is done) instead of
      printing a traceback and exiting 1, so `crl` prints its CRLError in one line and exits 2.
    """
    missing = [c for c in ("sbatch", "srun") if sweep.launcher == "submitit_slurm" and shutil.which(c) is None]
    if missing:
        raise CRLError(
            f"hydra/launcher=submitit_slurm submits Slurm jobs, but this host has no {' or '.join(missing)}; run it on "
            "a login node of the cluster (or use hydra/launcher=joblib or submitit_local on this machine)"
        )
    env = {"HYDRA_FULL_ERROR": "1"}
    n = threads_per_job(sweep, cores())
    if n is not None and "OMP_NUM_THREADS" not in os.environ:
        env |= dict.fromkeys(THREAD_VARS, str(n))
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    except Exception as e:
        if type(e).__name__ != "FailedJobError":  # submitit: sbatch refused the jobs, or a job died (killed, timeout)
            raise
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "no message")
        raise CRLError(f"the launcher's jobs failed: {first} (see the logs in the sweep's .submitit/)") from None
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass(frozen=True)
class Job:
    """One job of a sweep, as seen from inside it."""

    num: int
    sweep_dir: Path

    @property
    def group(self) -> str:
        """The wandb group of the sweep's runs: the sweep directory's name (unique: time and process id)."""
        return self.sweep_dir.name


def current_job() -> Job | None:
    """This process's job of a sweep, or None outside a multirun (call inside a Hydra app)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    return Job(int(hc.job.num), Path(str(hc.sweep.dir)))


class Tagged:
    """A text stream that starts every line with `tag` (the rest is the wrapped stream's)."""

    def __init__(self, stream: TextIO, tag: str):
        self._stream, self._tag, self._line_start = stream, tag, True

    def write(self, text: str) -> int:
        out = []
        for piece in re.findall(r"[^\n]*\n|[^\n]+", text):
            out.append(self._tag + piece if self._line_start else piece)
            self._line_start = piece.endswith("\n")
        self._stream.write("".join(out))
        return len(text)

    def __getattr__(self, name: str):  # flush, fileno, isatty, encoding, ...
        return getattr(self._stream, name)


@contextmanager
def tagged_output(job: Job) -> Iterator[None]:
    """stdout and stderr with every line starting `[job N] ` for the duration."""
    old = sys.stdout, sys.stderr
    tag = f"[job {job.num}] "
    sys.stdout, sys.stderr = Tagged(old[0], tag), Tagged(old[1], tag)  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = old
