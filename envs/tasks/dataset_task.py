"""A task backed by rows (hub, local file or packaged data): columns checked, split, filtered, capped, cached.

Subclasses name their hub dataset and required columns and turn one row into an `Example`; everything else
(where rows come from, splits, `task.subset` filtering, `n_<split>` caps) lives here, see `loading.py`.
"""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path

from crl.config import TaskConfig
from crl.envs.tasks.base import SPLITS, Example, Task
from crl.envs.tasks.loading import (
    FRACTIONS,
    ROW_INDEX,
    SOURCE_SPLIT,
    SPLIT_ALIASES,
    Row,
    cap,
    load_hub,
    read_table,
    require_columns,
    resolve_splits,
    split_column,
)
from crl.errors import CRLError


class DatasetTask(Task):
    hub_id: str | None = None
    hub_config: str | None = None
    column_aliases: dict[str, tuple[str, ...]] = {}
    offline_task: str | None = None  # named in the error when the hub is unreachable
    split_aliases: dict[str, tuple[str, ...]] = SPLIT_ALIASES  # raw split names -> train/val/test
    split_fractions: dict[str, float] = FRACTIONS  # how a pooled source is carved (test first, then val)
    release_format: str = ""  # the public release's file layout, named when a task.data_path file lacks a column

    def __init__(self, cfg: TaskConfig):
        super().__init__(cfg)
        self._splits: dict[str, list[Example]] | None = None

    # -- hooks ------------------------------------------------------------------------------------------
    def default_rows(self) -> dict[str, list[Row]] | list[Row]:
        """Rows when task.data_path is unset: the hub; offline tasks override this."""
        if self.hub_id is None:
            raise CRLError(f"task '{self.name}' has no default data; set task.data_path to a jsonl/csv/parquet file")
        return load_hub(self.hub_id, self.hub_config_name(), hint=self.offline_hint())

    def hub_config_name(self) -> str | None:
        return self.hub_config

    def read_local(self, path: Path) -> list[Row]:
        """Rows of a task.data_path file; a task whose public release has its own layout reads it here."""
        return read_table(path)

    def to_example(self, row: Row, split: str) -> Example:
        raise NotImplementedError

    def stratify_key(self, row: Row) -> Hashable | None:
        """Carved splits keep this key's proportions (e.g. refuse vs comply); None = plain shuffle."""
        return None

    def subset_of(self, example: Example) -> str | None:
        """The value `task.subset` selects on; None keeps the example whatever the subset."""
        return None

    # -- shared -----------------------------------------------------------------------------------------
    def offline_hint(self) -> str:
        cols = ", ".join(self.required_columns)
        alt = f" or use task={self.offline_task}" if self.offline_task else ""
        return f"offline, set task.data_path to a jsonl/csv/parquet file with columns {cols}{alt}"

    def column_fix(self) -> str:
        """How to repair a task.data_path file that lacks a required column (the end of that error)."""
        fmt = f" ({self.release_format})" if self.release_format else ""
        return f"add or rename the column(s) in the file{fmt}; README: 'Your own data (task.data_path)'"

    def source(self) -> str:
        if self.cfg.data_path:
            return f"task.data_path '{Path(self.cfg.data_path).expanduser()}'"
        return f"dataset '{self.hub_id}'" if self.hub_id else f"the packaged data of task '{self.name}'"

    def row_id(self, row: Row) -> str:
        rid = row.get("id", row.get("question_id", row.get("example_id")))
        if rid is None:  # no id column: the raw split and position are stable for a given source
            rid = f"{row[SOURCE_SPLIT]}-{row[ROW_INDEX]}"
        return f"{self.name}:{rid}"

    def rows(self) -> dict[str, list[Row]] | list[Row]:
        """Raw rows, columns checked; a dict when the source has its own splits."""
        if self.cfg.data_path:
            path = Path(self.cfg.data_path).expanduser()
            if path.is_dir():  # a hub clone or a local dataset folder: the hub code path
                raw = load_hub(str(path), self.hub_config_name(), hint=self.offline_hint())
            else:
                raw = split_column(self.read_local(path))
        else:
            raw = self.default_rows()
        flat = raw if isinstance(raw, list) else [r for rows in raw.values() for r in rows]
        fix = self.column_fix() if self.cfg.data_path else ""
        require_columns(flat, self.required_columns, self.source(), self.name, self.column_aliases, fix)
        return raw

    def _build(self) -> dict[str, list[Example]]:
        raw = self.rows()
        key = self.stratify_key if type(self).stratify_key is not DatasetTask.stratify_key else None
        splits = resolve_splits(raw, self.cfg.seed, key=key, aliases=self.split_aliases, fractions=self.split_fractions)
        out: dict[str, list[Example]] = {}
        seen: set[str] = set()
        for split in SPLITS:
            examples = [self.to_example(r, split) for r in splits[split]]
            seen.update(s for e in examples if (s := self.subset_of(e)) is not None)
            if self.cfg.subset is not None:
                examples = [e for e in examples if self.subset_of(e) in (None, self.cfg.subset)]
            out[split] = cap(examples, getattr(self.cfg, f"n_{split}"), self.cfg.seed, split)
        if self.cfg.subset is not None and not any(out.values()):
            raise CRLError(
                f"task.subset='{self.cfg.subset}' matches no example of task '{self.name}' "
                f"({self.source()}); present: {', '.join(sorted(seen)) or 'none'}"
            )
        return out

    def load_split(self, split: str) -> list[Example]:
        if self._splits is None:
            self._splits = self._build()
        return list(self._splits[split])
