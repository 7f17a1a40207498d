"""Reading a run directory (format in `crl.logs.schema`), the counterpart of `crl.logs.writer`.

- `read_jsonl`: the one JSONL reader. The writer appends whole rows, each ending in a newline, so a final
  line without its newline is a write a killed process did not finish: if it does not parse it is skipped
  with a warning (a complete row that only lacks its newline is kept). An unparseable line anywhere else
  means the file is damaged: a one-line `CRLError` naming the file and line.
- `load_run`: a whole run directory, validated, as pandas tables (`RunDir`). Every problem is a one-line
  `CRLError` that names what is wrong and what to do; a directory marked FAILED.json (a failed `crl train`) is
  refused with its error. Non-train phases can be logged at several policy updates (periodic evals);
  `RunDir.episodes_of` keeps the latest update by default, the final policy.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd

from crl.errors import CRLError
from crl.logs.schema import (
    CONFIG_YAML,
    EPISODES,
    FAILED,
    INTERVENTIONS,
    METRICS,
    RUN_JSON,
    SUMMARY,
    EpisodeRow,
    InterventionRow,
    Phase,
    RunInfo,
)

REQUIRED_FILES = (RUN_JSON, CONFIG_YAML, INTERVENTIONS, EPISODES, METRICS, SUMMARY)
# Columns a row must carry; fields with defaults in the schema may be absent and are filled.
_EPISODE_COLS = [f.name for f in fields(EpisodeRow)]
_STEP_COLS = [f.name for f in fields(InterventionRow)]
_EPISODE_REQUIRED = ("phase", "update", "episode", "prompt_id", "reward", "correct", "well_formed")
_STEP_REQUIRED = ("phase", "update", "episode", "prompt_id", "step", "token", "feature", "value")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every complete row of a JSONL log ([] when the file does not exist); see the module docstring."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with path.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                if not line.endswith("\n"):  # only the last line can lack its newline
                    print(f"crl: warning: {path} line {i} is incomplete (a killed writer); skipped", file=sys.stderr)
                    break
                raise CRLError(
                    f"{path} line {i} is not valid JSON; the file is corrupt, re-run or repair that line"
                ) from None
    return rows


@dataclass
class RunDir:
    """One loaded run. `episodes` and `steps` hold every phase, with a `seed` column added to both.

    Phases are the strings the logs store (`str(Phase)`); methods take a `Phase` or its string."""

    path: Path
    info: RunInfo
    summary: dict[str, Any]
    config_text: str
    episodes: pd.DataFrame
    steps: pd.DataFrame
    metrics: pd.DataFrame

    @property
    def name(self) -> str:
        return str(self.info.run)

    @property
    def task(self) -> str:
        return str(self.info.task)

    @property
    def layer(self) -> int:
        return int(self.info.layer)

    @property
    def sae_identity(self) -> str:
        return str(self.info.sae_identity)

    @property
    def neuronpedia_id(self) -> str | None:
        return self.info.neuronpedia_id or None

    @property
    def phases(self) -> list[str]:
        return sorted(set(self.episodes["phase"]))

    def eval_phase(self, split: str | None = None) -> str:
        """The trained policy's eval phase: `eval:<split>`, or by default test, then val, then any."""
        evals = [p for p in self.phases if Phase.parse(p).kind == "eval"]
        if split is not None:
            want = str(Phase.eval(split))
            if want not in evals:
                raise CRLError(
                    f"run '{self.name}' has no '{want}' episodes (it has {evals or 'no eval phase'}); "
                    "run `crl eval` on that split or pick another split"
                )
            return want
        for want in ("test", "val"):
            if str(Phase.eval(want)) in evals:
                return str(Phase.eval(want))
        if not evals:
            raise CRLError(f"run '{self.name}' has no eval phase; run `crl eval run_dir={self.path}` first")
        return evals[0]

    def baseline_phases(self, split: str) -> dict[str, str]:
        """Baseline name -> phase for one split, e.g. {"none": "baseline:none:test"}."""
        out = {}
        for p in self.phases:
            ph = Phase.parse(p)
            if ph.kind == "baseline" and ph.split == split:
                out[ph.method] = p
        return out

    def episodes_of(self, phase: Phase | str, latest: bool = True) -> pd.DataFrame:
        """Episodes of one phase; for non-train phases only the latest update (the final policy)."""
        return _of_phase(self.episodes, str(phase), latest)

    def steps_of(self, phase: Phase | str, latest: bool = True) -> pd.DataFrame:
        return _of_phase(self.steps, str(phase), latest)


def _of_phase(df: pd.DataFrame, phase: str, latest: bool) -> pd.DataFrame:
    df = df[df["phase"] == phase]
    if latest and phase != "train" and len(df):
        df = df[df["update"] == df["update"].max()]
    return df.reset_index(drop=True)


def _frame(
    rows: list[dict[str, Any]], columns: list[str], required: tuple[str, ...], fname: str, run: str
) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=None if rows else columns)
    missing = [c for c in required if c not in df.columns]
    if rows and missing:
        raise CRLError(
            f"{fname} of run '{run}' lacks columns {missing}; it was written by another CRL version, "
            "re-run it or convert the logs"
        )
    for c in columns:
        if c not in df.columns:
            df[c] = None
    return df


def _read_info(p: Path, path: str | Path) -> RunInfo:
    """run.json, validated, after checking the directory is there and complete."""
    if not p.exists():
        raise CRLError(f"run directory '{path}' does not exist; pass run_dir=<a directory written by `crl train`>")
    if not p.is_dir():
        raise CRLError(f"'{path}' is a file, not a run directory; pass the directory that holds run.json")
    info = RunInfo.read(p)  # run.json first: a missing one means "not a run dir", not "incomplete"
    if (p / FAILED).exists():
        raise CRLError(f"run '{path}' failed ({failure_line(p / FAILED)}); fix that, then `crl train resume={path}`")
    missing = [f for f in REQUIRED_FILES if not (p / f).exists()]
    if missing:
        raise CRLError(
            f"run '{path}' is incomplete: missing {', '.join(missing)} (summary.json is written last); "
            "let the run finish or resume it with `crl train`"
        )
    return info


def failure_line(path: Path) -> str:
    """The one-line error a FAILED.json records (crl.logs.lifecycle writes it)."""
    try:
        return str(json.loads(path.read_text(encoding="utf-8")).get("error", "no error recorded"))
    except (OSError, ValueError, AttributeError):
        return f"{path.name} is unreadable"


def _typed_episodes(episodes: pd.DataFrame, run: str, default_seed: int) -> pd.DataFrame:
    # Seeds of several-seed phases live in the episode meta; otherwise the run's own seed.
    episodes["run"] = episodes["run"].fillna(run)
    episodes["meta"] = [m if isinstance(m, dict) else {} for m in episodes["meta"]]
    episodes["seed"] = [int(m.get("seed", default_seed)) for m in episodes["meta"]]
    for c in ("correct", "well_formed"):
        episodes[c] = episodes[c].astype(bool)
    episodes["reward"] = episodes["reward"].astype(float)
    episodes["prompt_id"] = episodes["prompt_id"].astype(str)
    dup = episodes.duplicated(["phase", "update", "episode"])
    if dup.any():
        row = episodes[dup].iloc[0]
        raise CRLError(
            f"{EPISODES} of run '{run}' repeats episode {row['episode']} in phase '{row['phase']}'; "
            "episode ids must be unique per phase and update (was a resumed run not truncated?)"
        )
    return episodes


def _typed_steps(steps: pd.DataFrame, episodes: pd.DataFrame, run: str, default_seed: int) -> pd.DataFrame:
    if not len(steps):
        steps["seed"] = pd.Series(dtype=int)
        return steps
    steps["run"] = steps["run"].fillna(run)
    keys = episodes[["phase", "update", "episode", "seed"]]
    steps = steps.merge(keys, on=["phase", "update", "episode"], how="left")
    steps["seed"] = steps["seed"].fillna(default_seed).astype(int)
    steps["prompt_id"] = steps["prompt_id"].astype(str)
    steps["feature"] = steps["feature"].astype(int)
    steps["step"] = steps["step"].astype(int)
    steps["value"] = steps["value"].astype(float)
    steps["token"] = steps["token"].fillna("").astype(str)
    return steps


def load_run(path: str | Path, include_train: bool = True) -> RunDir:
    """Load and validate a run directory; `include_train=False` skips the (large) train-phase step rows."""
    p = Path(path).expanduser()
    info = _read_info(p, path)
    run = str(info.run)
    try:
        summary = json.loads((p / SUMMARY).read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise CRLError(f"{p / SUMMARY} is not valid JSON; the run did not finish cleanly, re-run it") from None

    episodes = _frame(read_jsonl(p / EPISODES), _EPISODE_COLS, _EPISODE_REQUIRED, EPISODES, run)
    if episodes.empty:
        raise CRLError(f"run '{path}' has no episodes in {EPISODES}; it logged nothing, re-run it")
    step_rows = read_jsonl(p / INTERVENTIONS)
    if not include_train:
        step_rows = [r for r in step_rows if r.get("phase") != "train"]
    steps = _frame(step_rows, _STEP_COLS, _STEP_REQUIRED, INTERVENTIONS, run)
    metrics = pd.DataFrame(read_jsonl(p / METRICS))
    episodes = _typed_episodes(episodes, run, int(info.seed))
    steps = _typed_steps(steps, episodes, run, int(info.seed))
    for ph in set(episodes["phase"]):
        Phase.parse(ph)  # fail early on unknown phase names
    return RunDir(p, info, summary, (p / CONFIG_YAML).read_text(encoding="utf-8"), episodes, steps, metrics)


def sweep_jobs(root: str | Path) -> list[tuple[Path, str | None]]:
    """The job directories of a sweep (`crl train -m`: each folder under `root` with a run.json, a FAILED.json or
    Hydra's .hydra), each with None when it finished, else one line on why not. [] when there are none."""
    root = Path(root).expanduser()
    found = {p.parent for name in (RUN_JSON, FAILED, ".hydra") for p in root.rglob(name)} - {root}
    jobs: list[tuple[Path, str | None]] = []
    for job in sorted(found):
        if (job / FAILED).exists():
            jobs.append((job, f"failed ({failure_line(job / FAILED)})"))
        elif not (job / SUMMARY).exists():
            how = f"`crl train resume={job}`" if (job / RUN_JSON).exists() else "nothing to resume: run the job again"
            jobs.append((job, f"incomplete (no {SUMMARY}: still running, or stopped; {how})"))
        else:
            jobs.append((job, None))
    return jobs
