"""Writing a run directory so that a killed process loses nothing and never leaves a broken file.

- JSON/YAML/checkpoints are written to a temp file, fsynced, then `os.replace`d (atomic on POSIX;
  `crl.logs.atomic`).
- JSONL logs are append-only. Each checkpoint records their byte sizes; resuming truncates every log
  back to those sizes, so rows written after the last checkpoint are dropped and then re-generated
  identically (no duplicates, none missing). `crl.logs.reader` skips a torn final line.
- `RunWriter` appends the logs and saves checkpoints; `load_checkpoint` reads one back.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from crl.errors import CRLError
from crl.logs import schema
from crl.logs.atomic import atomic_write_bytes
from crl.logs.rows import episode_rows
from crl.logs.schema import Phase

if TYPE_CHECKING:
    from crl.envs.rollout import Episode

LOGS = schema.LOGS


class RunWriter:
    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._files = {name: open(self.dir / name, "a", encoding="utf-8") for name in LOGS}  # noqa: SIM115

    def append(self, log: str, rows: list[dict[str, Any]]) -> None:
        if rows:
            self._files[log].write("".join(json.dumps(r, default=_jsonable) + "\n" for r in rows))

    def append_episodes(
        self, episodes: list[Episode], run: str, phase: Phase | str, update: int = 0, first_episode: int = 0
    ) -> None:
        """Rollouts as rows (`episode_rows`), appended to interventions.jsonl and episodes.jsonl."""
        inter, eps = episode_rows(episodes, run, phase, update, first_episode)
        self.append(schema.INTERVENTIONS, inter)
        self.append(schema.EPISODES, eps)

    def flush(self) -> dict[str, int]:
        """Flush and fsync all logs; returns their sizes for the checkpoint."""
        sizes = {}
        for name, f in self._files.items():
            f.flush()
            os.fsync(f.fileno())
            sizes[name] = f.tell()
        return sizes

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        state = {**state, "log_sizes": self.flush(), "format_version": schema.FORMAT_VERSION}
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.dir / schema.CHECKPOINT, buf.getvalue())

    def truncate_to(self, sizes: dict[str, int]) -> None:
        for name, f in self._files.items():
            f.flush()
            size = int(sizes.get(name, 0))
            if os.path.getsize(self.dir / name) < size:
                raise CRLError(f"log {name} in {self.dir} is shorter than its checkpoint says; the run dir is damaged")
            f.truncate(size)
            f.seek(size)

    def close(self) -> None:
        """Close every log, even when one fails (a full disk fails the final flush); the first error is raised."""
        errors = []
        for f in self._files.values():
            try:
                f.close()
            except OSError as e:
                errors.append(e)
        if errors:
            raise errors[0]


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / schema.CHECKPOINT
    if not path.exists():
        raise CRLError(f"no checkpoint at {path}: the run has nothing to resume from; start a new run")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise CRLError(
            f"checkpoint {path} is corrupt ({type(e).__name__}); delete it and start again "
            f"(`crl train resume={run_dir}` restarts an unfinished run from the beginning)"
        ) from None


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)
