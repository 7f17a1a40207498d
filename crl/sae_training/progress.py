"""Progress of an SAE build as plain lines, so a log file shows it as well as a terminal.

A tqdm bar written to a file or pipe only shows its last state, and sae-lens updated its bar every 100 steps
(20% of a default build), so a build looked stuck for minutes. Each phase here prints one line when it starts,
one at least every `EVERY_S` seconds, and one when it ends, to stderr (stdout carries the command's JSON):

    crl sae: activations  153,600/600,000 tok (25.6%)  2,410 tok/s  elapsed 1m04s  ETA 3m05s
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

EVERY_S = 15.0  # seconds between lines; the issue asks for at most 30


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """`done/total unit`, the rate, the elapsed time and the ETA of one phase, printed every `every` seconds."""

    def __init__(
        self,
        phase: str,
        total: int,
        unit: str = "tok",
        enabled: bool = True,
        every: float | None = None,
        stream: TextIO | None = None,
        prefix: str = "crl sae",
    ):
        self.phase, self.total, self.unit, self.enabled = phase, max(1, int(total)), unit, enabled
        self.every = EVERY_S if every is None else every
        self.stream = stream
        self.prefix = prefix
        self.done = 0
        self.start = self.last = time.perf_counter()
        self._closed = False
        if enabled:
            self._print(f"{prefix}: {phase}  0/{self.total:,} {unit} ...")

    def _print(self, line: str) -> None:
        stream = self.stream or sys.stderr  # looked up late: tests and the CLI redirect it
        print(line, file=stream, flush=True)

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta_s = _duration(eta) if eta == eta else "?"
        pct = 100.0 * self.done / self.total
        return (
            f"{self.prefix}: {self.phase}  {self.done:,}/{self.total:,} {self.unit} ({pct:.1f}%)  "
            f"{rate:,.0f} {self.unit}/s  elapsed {_duration(elapsed)}  ETA {eta_s}"
        )

    def update(self, n: int) -> None:
        self.done += int(n)
        now = time.perf_counter()
        if self.enabled and now - self.last >= self.every and self.done < self.total:
            self.last = now
            self._print(self.line())

    def close(self) -> float:
        """Print the final line (once); returns the phase's seconds."""
        elapsed = time.perf_counter() - self.start
        self.total = max(self.total, self.done)  # a phase may do more than it planned (the corpus tokenizes ahead)
        if self.enabled and not self._closed:
            self._print(self.line().split("  ETA")[0] + "  done")
        self._closed = True
        return elapsed

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, *_exc) -> None:
        if exc_type is None:
            self.close()
