"""Bad input to `crl train`: each must end in one clear line (exit code 2) and leave nothing under runs/ (or a
directory marked FAILED.json), and a directory that was there before must be left exactly as it was."""

from __future__ import annotations

import shutil
from pathlib import Path

from crl.commands.soak.harness import TINY, Tally, clear_error, crl, error_line, snapshot
from crl.logs import schema


def _new_dirs(runs: Path, before: set[str]) -> list[Path]:
    return [p for p in runs.iterdir() if p.name not in before] if runs.exists() else []


def bad_inputs(work: Path, ref: Path, tally: Tally) -> None:
    cwd = work / "inputs"
    runs = cwd / "runs"  # where `crl train` puts run directories by default (relative to the working directory)
    runs.mkdir(parents=True, exist_ok=True)
    finished = cwd / "finished"
    shutil.copytree(ref, finished, symlinks=True)
    user = cwd / "notes"  # a directory of the user's that is not a run
    user.mkdir()
    (user / "todo.txt").write_text("not a run\n")

    cases: list[tuple[str, list[str], tuple[str, ...]]] = [
        ("a layer the model does not have", ["steering.layer=99"], ("steering.layer=99",)),
        ("a missing data file", ["task=gsm8k_offline", "sae=disk", "sae.path=/nonexistent", "task.data_path=/no.jsonl"],
         ("/no.jsonl",)),
        ("a missing SAE directory", ["task=arith", "sae=disk", "sae.path=/nonexistent/sae"], ("/nonexistent/sae",)),
        ("a val split too small to select on", ["task.n_val=5"], ("task.n_val",)),
        ("an unknown task", ["task=no_such_task"], ("no_such_task",)),
        ("a resume dir that does not exist", ["resume=runs/nope"], ("runs/nope",)),
        ("a resume dir that is not a run", [f"resume={user}"], (str(user),)),
        ("a new run into a finished run's dir", [f"hydra.run.dir={finished}"], ("not empty",)),
        ("a seed NumPy cannot take", ["seed=-1"], ("seed=-1", "[0, 2**32-1]")),
        # No host has 100 GPUs: with the CPU-only torch this names TORCH_SPEC, with a CUDA torch the GPU count.
        ("a device this torch cannot use", ["model.device=cuda:99"], ("model.device=cuda:99",)),
    ]  # fmt: skip
    for i, (what, args, needles) in enumerate(cases):
        existing = {p.name for p in runs.iterdir()}
        kept = {d: snapshot(d) for d in (finished, user)}
        resume = any(a.startswith("resume=") for a in args)
        proc = crl(["train", *args] if resume else ["train", *TINY, *args], cwd, work / f"input{i}.log")
        left = [d for d in _new_dirs(runs, existing) if not (d / schema.FAILED).exists()]
        touched = [str(d) for d, snap in kept.items() if snapshot(d) != snap]
        ok = clear_error(proc, *needles) and not left and not touched
        detail = f"{error_line(proc)}; left {[str(d) for d in left]}; touched {touched}"
        tally.bad_input(ok, f"{what}: {detail}")
