"""Progress of a long phase as plain lines on stderr, so a log file shows it as well as a terminal.

A tqdm bar written to a file or pipe only shows its last state, so a long phase looked stuck. A `Progress` prints
one line when its phase starts, one at most every `EVERY_S` seconds while it runs (as work completes), and one
when it ends, with its duration. stdout stays free for a command's results (JSON, the summary):

    [crl] test before training (no steering)  128/400 prompts (32.0%)  21 prompts/s  elapsed 6s  ETA 13s
    crl sae: activations  153,600/600,000 tok (25.6%)  2,410 tok/s  elapsed 1m04s  ETA 3m05s

Used by `crl train`/`crl eval` (crl/run) and by the SAE build (crl/sae_training/progress.py adds its `crl sae:`
prefix). Progress lines never go into a run's logs.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

EVERY_S = 15.0  # seconds between lines (read when a Progress starts; tests set it to 0 to see every step)


def duration(seconds: float) -> str:
    """`42s`, `3m05s`, `1h02m`."""
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def _rate(per_s: float) -> str:
    return f"{per_s:.1f}" if per_s < 10 else f"{per_s:,.0f}"


class Progress:
    """`done/total unit`, the rate, the elapsed time and the ETA of one phase named `label`, printed at most every
    `every` seconds (default `EVERY_S`). `ends=False` prints only the lines in between (a phase that reports its
    own result line, like a training update)."""

    def __init__(
        self,
        label: str,
        total: int,
        unit: str = "prompts",
        enabled: bool = True,
        every: float | None = None,
        stream: TextIO | None = None,
        ends: bool = True,
    ):
        self.label, self.total, self.unit, self.enabled, self.ends = label, max(1, int(total)), unit, enabled, ends
        self.every = EVERY_S if every is None else every
        self.stream = stream
        self.done = 0
        self.start = self.last = time.perf_counter()
        self._closed = False
        if enabled and ends:
            self._print(f"{label}  0/{self.total:,} {unit} ...")

    def _print(self, line: str) -> None:
        stream = self.stream or sys.stderr  # looked up late: tests and the CLI redirect it
        print(line, file=stream, flush=True)

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta_s = duration(eta) if eta == eta else "?"
        pct = 100.0 * self.done / self.total
        return (
            f"{self.label}  {self.done:,}/{self.total:,} {self.unit} ({pct:.1f}%)  "
            f"{_rate(rate)} {self.unit}/s  elapsed {duration(elapsed)}  ETA {eta_s}"
        )

    def update(self, n: int) -> None:
        self.done += int(n)
        now = time.perf_counter()
        if self.enabled and now - self.last >= self.every and self.done < self.total:
            self.last = now
            self._print(self.line())

    def close(self) -> float:
        """Print the final line (once), with the phase's duration; returns the phase's seconds."""
        elapsed = time.perf_counter() - self.start
        self.total = max(self.total, self.done)  # a phase may do more than it planned (the corpus tokenizes ahead)
        if self.enabled and self.ends and not self._closed:
            self._print(self.line().split("  ETA")[0] + "  done")
        self._closed = True
        return elapsed

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, *_exc) -> None:
        if exc_type is None:
            self.close()
