"""`crl soak`: a reliability soak of the run directory, bounded in time (a few minutes on 2 cores).

    crl soak                    # all scenarios in a temporary directory; prints the counts, exit 1 on any failure
    crl soak kills=3 disk=skip  # shorter
    crl soak dir=/tmp/soak      # keep every run directory and process log for a look afterwards

On tiny planted runs (crl.commands.soak.harness.TINY), each compared with one uninterrupted run:
- kills: SIGKILL at `kills` random points of one run, each followed by `resume=`: no row lost or repeated, per
  log and phase, and the final parameters bit-identical (crl.commands.soak.kills);
- damage: torn last lines, a corrupt line mid-file, truncated checkpoints: the right result or one clear line;
- bad input: wrong layer, missing files, wrong resume dirs: one clear line, nothing left under runs/
  (crl.commands.soak.inputs);
- sweeps: two runs and two sweeps started in the same second, and two sweeps into one directory: nothing
  clobbered (crl.commands.soak.sweeps);
- a full disk: a small tmpfs (as root) or a simulated ENOSPC: one clear line, then a resume that ends in the
  uninterrupted run (crl.commands.soak.disk).
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from crl.commands.soak.disk import full_disk
from crl.commands.soak.harness import Tally
from crl.commands.soak.inputs import bad_inputs
from crl.commands.soak.kills import damaged_logs, kill_and_resume, reference
from crl.commands.soak.sweeps import same_second
from crl.config import SoakConfig, load
from crl.errors import exit_on_error
from crl.paths import CONF_DIR


def soak(cfg: SoakConfig, work: Path) -> Tally:
    """Every scenario in `work`, in two lanes at once (2 cores: most of a run is process start-up); the tally
    says what was tried and what held."""
    rng = random.Random(cfg.seed)  # the kill lane's; the other lane draws from its own, so a seed replays both
    other = random.Random(cfg.seed + 1)
    tally = Tally()
    t0 = time.time()

    def stage(name: str, fn: Callable[[], Any]) -> Any:
        print(f"[soak] {time.time() - t0:4.0f}s  {name}", file=sys.stderr)
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - a scenario that crashes is a failed check, the others still run
            tally.check(False, f"{name} crashed: {type(e).__name__}: {e}")
            return None

    ref = stage("the uninterrupted reference run", lambda: reference(work, tally))
    if ref is None:
        return tally  # nothing to compare with

    def kills() -> None:
        half = stage(f"{cfg.kills} kills, each resumed", lambda: kill_and_resume(work, ref, cfg.kills, rng, tally))
        stage("damaged logs and checkpoints", lambda: damaged_logs(work, ref, half, tally))

    def rest() -> None:
        stage("bad inputs", lambda: bad_inputs(work, ref, tally))
        stage("two sweeps in the same second", lambda: same_second(work, tally))
        if cfg.disk != "skip":
            stage("a full disk", lambda: full_disk(work, ref, cfg.disk, other, tally))

    with ThreadPoolExecutor(2) as pool:
        for lane in [pool.submit(kills), pool.submit(rest)]:
            lane.result()
    tally.note(f"wall time {time.time() - t0:.0f}s")
    return tally


def report(tally: Tally, kills: int) -> bool:
    """Print the counts; True when everything held."""
    passed = not tally.problems and tally.kills_survived == kills and tally.rows_lost == 0
    print(f"kills survived:   {tally.kills_survived}/{kills}")
    print(f"bad inputs tried: {tally.bad_inputs} ({tally.bad_inputs_handled} gave a clear error or recovered)")
    print(f"rows lost:        {tally.rows_lost} (of {tally.rows_compared} compared; {tally.rows_duplicated} extra)")
    print(f"runs clobbered:   {tally.runs_clobbered}")
    for note in tally.notes:
        print(f"note: {note}")
    for problem in tally.problems:
        print(f"FAILED: {problem}")
    print("soak passed" if passed else f"soak FAILED ({len(tally.problems)} problems)")
    print(json.dumps({k: v for k, v in tally.counts().items() if k != "notes"} | {"passed": passed}))
    return passed


@hydra.main(config_path=CONF_DIR, config_name="soak", version_base=None)
@exit_on_error
def main(raw: DictConfig) -> None:
    cfg = load(SoakConfig, raw)
    work = Path(cfg.dir).resolve() if cfg.dir else Path(tempfile.mkdtemp(prefix="crl-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"[soak] working in {work}", file=sys.stderr)
    passed = report(soak(cfg, work), cfg.kills)
    if passed and not cfg.dir:
        shutil.rmtree(work, ignore_errors=True)
    elif not passed:
        print(f"[soak] the runs and process logs are in {work}", file=sys.stderr)
    raise SystemExit(0 if passed else 1)
