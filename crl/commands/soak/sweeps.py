"""Two sweeps started in the same second into the same runs/: nothing clobbered.

The clocks of two processes cannot be made to agree, so conf/train.yaml's default sweep directory is used with
its timestamp pinned to one second; what keeps the two apart is the rest of the name (`${crl_tag:}`, the
process id). Then both sweeps are pointed at literally the same directory: a job that finds its directory taken
is refused with a clear error, and no run may mix the two.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from crl.commands.soak.harness import TINY, Tally, log_rows, start
from crl.errors import CRLError
from crl.logs import schema
from crl.logs.reader import load_run
from crl.paths import CONF_DIR

# Shorter still: 1 update, no val evaluations (this checks where runs go, not what they learn).
SHORT = [*TINY, "ppo.total_updates=1", "run.eval_before=false", "run.eval_every=0", "run.select=last"]
SECOND = "20000101-000000"


def _pinned(key: str) -> str:
    """conf/train.yaml's hydra.<key>.dir with its `${now:...}` fixed to one second."""
    hydra = yaml.safe_load((Path(CONF_DIR) / "train.yaml").read_text())["hydra"]
    return re.sub(r"\$\{now:[^}]*\}", SECOND, hydra[key]["dir"])


def _both(work: Path, cwd: Path, name: str, args: list[str]) -> list[tuple[int, str]]:
    """Start the same `crl train` twice at once; (exit code, error line) of each."""
    cwd.mkdir(parents=True, exist_ok=True)
    logs = [work / f"{name}-{i}.log" for i in range(2)]
    procs = [start(["train", *args], cwd, log) for log in logs]
    out = []
    for proc, log in zip(procs, logs, strict=True):
        proc.wait(timeout=600)
        lines = [ln for ln in log.read_text().splitlines() if ln.startswith("crl: error:")]
        out.append((proc.returncode, lines[-1] if lines else ""))
    return out


def _runs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob(schema.RUN_JSON))


def _rows(run: Path) -> dict:
    """The run's rows without their run name (same-seed runs in differently named directories must agree)."""
    return {k: [re.sub(r'"run": "[^"]*"', "", r) for r in rows] for k, rows in log_rows(run).items()}


def _intact(tally: Tally, runs: list[Path]) -> None:
    """Every run finished and reads cleanly, and runs of the same seed are row for row the same."""
    by_seed: dict[int, list[Path]] = {}
    for run in runs:
        try:
            seed = load_run(run).info.seed  # refuses missing files, repeated episodes, FAILED.json
        except CRLError as e:
            tally.count(runs_clobbered=1)
            tally.check(False, f"{run}: {e}")
            continue
        by_seed.setdefault(seed, []).append(run)
    for seed, same in by_seed.items():
        rows = [_rows(r) for r in same]
        bad = [str(r) for r, x in zip(same, rows, strict=True) if x != rows[0]]
        tally.count(runs_clobbered=len(bad))
        tally.check(not bad, f"runs of seed {seed} differ from {same[0]}: {bad}")


def same_second(work: Path, tally: Tally) -> None:
    cwd = work / "sweeps"
    sweeps = _both(work, cwd, "sweeps", ["-m", "seed=0,1", *SHORT, f"hydra.sweep.dir={_pinned('sweep')}"])
    tally.check(all(rc == 0 for rc, _ in sweeps), f"two sweeps in the same second: {sweeps}")
    made = _runs(cwd / "runs")
    tally.check(len(made) == 4, f"two sweeps of 2 jobs in the same second made {len(made)} run directories, not 4")

    # Literally the same sweep directory: a job that finds its directory taken is refused in one line.
    shared = cwd / "shared"
    results = _both(work, cwd, "shared", ["-m", "seed=0,1", *SHORT, f"hydra.sweep.dir={shared}"])
    refused = [err for rc, err in results if rc != 0]
    ok = all(rc == 0 or (rc == 2 and ("in use" in err or "not empty" in err)) for rc, err in results)
    tally.check(ok, f"two sweeps into one directory: {results}")
    tally.check(len(_runs(shared)) == 2, f"two sweeps into one directory left {len(_runs(shared))} runs, not 2")
    _intact(tally, _runs(cwd))
    tally.note(
        f"same-second sweeps: {sorted(p.name for p in (cwd / 'runs').iterdir())}; "
        f"one shared sweep dir: {len(refused)} of 2 sweeps refused ({refused[0] if refused else 'none'})"
    )
