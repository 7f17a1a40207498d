"""Load and validate a run directory (format in `crl.logs.schema`) into pandas tables.

Every problem is a one-line `CRLError` that names what is wrong and what to do. Non-train phases can be
logged at several policy updates (periodic evals); `RunDir.episodes_of` keeps the latest update by default,
which is the final policy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd

from crl.errors import CRLError
from crl.logs.schema import (
    CONFIG_YAML,
    EPISODES,
    FORMAT_VERSION,
    INTERVENTIONS,
    METRICS,
    RUN_JSON,
    SUMMARY,
    EpisodeRow,
    InterventionRow,
)

REQUIRED_FILES = (RUN_JSON, CONFIG_YAML, INTERVENTIONS, EPISODES, METRICS, SUMMARY)
REQUIRED_RUN_KEYS = (
    "format_version",
    "run",
    "model",
    "sae_identity",
    "hook_name",
    "layer",
    "d_sae",
    "task",
    "seed",
    "coef",
)
# Columns a row must carry; fields with defaults in the schema may be absent and are filled.
_EPISODE_COLS = [f.name for f in fields(EpisodeRow)]
_STEP_COLS = [f.name for f in fields(InterventionRow)]
_EPISODE_REQUIRED = ("phase", "update", "episode", "prompt_id", "reward", "correct", "well_formed")
_STEP_REQUIRED = ("phase", "update", "episode", "prompt_id", "step", "token", "feature", "value")


@dataclass(frozen=True)
class Phase:
    """A parsed phase name: kind train|eval|baseline, method ("crl" or the baseline's name), split."""

    name: str
    kind: str
    method: str
    split: str


def parse_phase(name: str) -> Phase:
    parts = name.split(":")
    if parts == ["train"]:
        return Phase(name, "train", "crl", "train")
    if len(parts) == 2 and parts[0] == "eval":
        return Phase(name, "eval", "crl", parts[1])
    if len(parts) == 3 and parts[0] == "baseline":
        return Phase(name, "baseline", parts[1], parts[2])
    raise CRLError(f"phase '{name}' is not 'train', 'eval:<split>' or 'baseline:<name>:<split>'; fix the log writer")


@dataclass
class RunDir:
    """One loaded run. `episodes` and `steps` hold every phase, with a `seed` column added to both."""

    path: Path
    info: dict[str, Any]
    summary: dict[str, Any]
    config_text: str
    episodes: pd.DataFrame
    steps: pd.DataFrame
    metrics: pd.DataFrame

    @property
    def name(self) -> str:
        return str(self.info["run"])

    @property
    def task(self) -> str:
        return str(self.info["task"])

    @property
    def layer(self) -> int:
        return int(self.info["layer"])

    @property
    def sae_identity(self) -> str:
        return str(self.info["sae_identity"])

    @property
    def neuronpedia_id(self) -> str | None:
        return self.info.get("neuronpedia_id") or None

    @property
    def phases(self) -> list[str]:
        return sorted(set(self.episodes["phase"]))

    def eval_phase(self, split: str | None = None) -> str:
        """The trained policy's eval phase: `eval:<split>`, or by default test, then val, then any."""
        evals = [p for p in self.phases if p.startswith("eval:")]
        if split is not None:
            want = f"eval:{split}"
            if want not in evals:
                raise CRLError(
                    f"run '{self.name}' has no '{want}' episodes (it has {evals or 'no eval phase'}); "
                    "run `crl eval` on that split or pick another split"
                )
            return want
        for want in ("eval:test", "eval:val"):
            if want in evals:
                return want
        if not evals:
            raise CRLError(f"run '{self.name}' has no eval phase; run `crl eval run_dir={self.path}` first")
        return evals[0]

    def baseline_phases(self, split: str) -> dict[str, str]:
        """Baseline name -> phase for one split, e.g. {"none": "baseline:none:test"}."""
        out = {}
        for p in self.phases:
            ph = parse_phase(p)
            if ph.kind == "baseline" and ph.split == split:
                out[ph.method] = p
        return out

    def episodes_of(self, phase: str, latest: bool = True) -> pd.DataFrame:
        """Episodes of one phase; for non-train phases only the latest update (the final policy)."""
        df = self.episodes[self.episodes["phase"] == phase]
        if latest and phase != "train" and len(df):
            df = df[df["update"] == df["update"].max()]
        return df.reset_index(drop=True)

    def steps_of(self, phase: str, latest: bool = True) -> pd.DataFrame:
        df = self.steps[self.steps["phase"] == phase]
        if latest and phase != "train" and len(df):
            df = df[df["update"] == df["update"].max()]
        return df.reset_index(drop=True)


def _read_jsonl(path: Path, run: str) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                if not line.endswith("\n"):
                    break  # a torn final line from a killed writer; crl.logs.run_dir skips it too
                raise CRLError(
                    f"{path.name} line {i} of run '{run}' is not valid JSON; the file is corrupt, "
                    "re-run or repair that line"
                ) from None
    return rows


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


def load_run(path: str | Path, include_train: bool = True) -> RunDir:
    """Load and validate a run directory; `include_train=False` skips the (large) train-phase step rows."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CRLError(f"run directory '{path}' does not exist; pass run_dir=<a directory written by `crl train`>")
    if not p.is_dir():
        raise CRLError(f"'{path}' is a file, not a run directory; pass the directory that holds run.json")
    if not (p / RUN_JSON).exists():
        raise CRLError(f"'{path}' is not a CRL run directory (no {RUN_JSON}); pass a directory written by `crl train`")
    try:
        info = json.loads((p / RUN_JSON).read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise CRLError(f"{p / RUN_JSON} is not valid JSON; the run is corrupt, re-run it") from None
    version = info.get("format_version")
    if version != FORMAT_VERSION:
        shown = "none (written before versioning)" if version is None else version
        raise CRLError(
            f"run '{path}' has format_version={shown} but this CRL reads version {FORMAT_VERSION}; "
            "re-run it with this version or convert its logs"
        )
    missing = [f for f in REQUIRED_FILES if not (p / f).exists()]
    if missing:
        raise CRLError(
            f"run '{path}' is incomplete: missing {', '.join(missing)} (summary.json is written last); "
            "let the run finish or resume it with `crl train`"
        )
    missing_keys = [k for k in REQUIRED_RUN_KEYS if k not in info]
    if missing_keys:
        raise CRLError(f"{RUN_JSON} of run '{path}' lacks keys {missing_keys}; re-run it with this CRL version")
    run = str(info["run"])
    try:
        summary = json.loads((p / SUMMARY).read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise CRLError(f"{p / SUMMARY} is not valid JSON; the run did not finish cleanly, re-run it") from None

    episodes = _frame(_read_jsonl(p / EPISODES, run), _EPISODE_COLS, _EPISODE_REQUIRED, EPISODES, run)
    if episodes.empty:
        raise CRLError(f"run '{path}' has no episodes in {EPISODES}; it logged nothing, re-run it")
    step_rows = _read_jsonl(p / INTERVENTIONS, run)
    if not include_train:
        step_rows = [r for r in step_rows if r.get("phase") != "train"]
    steps = _frame(step_rows, _STEP_COLS, _STEP_REQUIRED, INTERVENTIONS, run)
    metrics = pd.DataFrame(_read_jsonl(p / METRICS, run))

    # Seeds of several-seed phases live in the episode meta; otherwise the run's own seed.
    default_seed = int(info["seed"])
    for df in (episodes, steps):
        df["run"] = df["run"].fillna(run) if len(df) else df["run"]
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
    if len(steps):
        keys = episodes[["phase", "update", "episode", "seed"]]
        steps = steps.merge(keys, on=["phase", "update", "episode"], how="left")
        steps["seed"] = steps["seed"].fillna(default_seed).astype(int)
        steps["prompt_id"] = steps["prompt_id"].astype(str)
        steps["feature"] = steps["feature"].astype(int)
        steps["step"] = steps["step"].astype(int)
        steps["value"] = steps["value"].astype(float)
        steps["token"] = steps["token"].fillna("").astype(str)
    else:
        steps["seed"] = pd.Series(dtype=int)
    for ph in set(episodes["phase"]):
        parse_phase(ph)  # fail early on unknown phase names
    return RunDir(p, info, summary, (p / CONFIG_YAML).read_text(encoding="utf-8"), episodes, steps, metrics)
