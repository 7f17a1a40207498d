"""What `crl analyze` prints while it runs the model, so a long replay never looks stuck.

Each phase that runs the model prints one line when it starts (its name and size), progress lines while its rollouts
run (`crl.progress.Progress`, as `crl train` prints them: on stderr, at most one every `crl.progress.EVERY_S` seconds,
labelled with the phase and the item running; `runner.rollout(..., progress=<item>)`), and one line when it ends, with
its wall time. A measurement taken from its stored file (`runner.current_record`) prints one "reused" line instead.
`crl analyze` first lists them all (`say`). From a tiny run (shortened):

    [crl analyze] phases that run the model: baselines (random, static, corr, prompting, letter_prior; none
        logged already), branch points, forced-feature effects, side effects, coefficient sweep, steering effects, ...
    [crl analyze] baselines: static feature — 9 candidates × 1 level × 8 train prompts, then 3 coefficients × 8 val
        prompts
    [crl analyze] baselines: static feature, candidate 3/9 (feature 14, level +1) on train  24/96 prompts (25.0%)
        241 prompts/s  elapsed 0s  ETA 0s
    [crl analyze] baselines: static feature done in 0s (96 prompts)
    ...
    [crl analyze] phases that run the model: none; steering effects: reused (stored analysis/feature_effects.json)

Nothing is printed outside a `session` (`analyze_run` opens one), so the replay functions stay silent when called on
their own (tests, notebooks). Printing never changes what is computed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from crl.progress import Progress, duration

_PREFIX: ContextVar[str | None] = ContextVar("crl_announce_prefix", default=None)
_PHASE: ContextVar[Phase | None] = ContextVar("crl_announce_phase", default=None)


@contextmanager
def session(prefix: str = "crl analyze") -> Iterator[None]:
    """Print the phases run inside, each line starting `[prefix]`."""
    token = _PREFIX.set(prefix)
    try:
        yield
    finally:
        _PREFIX.reset(token)


def say(text: str) -> None:
    """One line on stderr (where `crl.progress` prints), inside a session only."""
    prefix = _PREFIX.get()
    if prefix is not None:
        print(f"[{prefix}] {text}", file=sys.stderr, flush=True)  # looked up late: tests and the CLI redirect it


def reused(name: str, file: str) -> None:
    """The line of a phase whose measurement is read from its stored file (`runner.current_record`)."""
    say(f"{name}: reused (stored {file})")


class Phase:
    """An open phase: its progress line (the item running, done/total, rate, ETA) is printed by `crl.progress`."""

    def __init__(self, name: str, total: int, unit: str) -> None:
        prefix = _PREFIX.get()
        self.name, self.planned = name, total
        self.bar = Progress(f"[{prefix}] {name}", total, unit, enabled=prefix is not None, ends=False)

    def item(self, label: str | None) -> None:
        """Name the item now running in the progress lines (the phase's name, then the item)."""
        self.bar.label = f"[{_PREFIX.get()}] {self.name}" + (f", {label}" if label else "")

    def add(self, n: int) -> None:
        """Work found while the phase runs (e.g. the alternatives replayed after the policy's own episodes)."""
        self.planned += int(n)
        self.bar.total = max(1, self.planned)

    def update(self, n: int) -> None:
        self.bar.update(n)


@contextmanager
def phase(name: str, size: str, total: int = 0, unit: str = "prompts") -> Iterator[Phase]:
    """A phase of `total` `unit`s (0: unknown, each labelled rollout adds its own): a start line `name — size`, the
    progress of the rollouts labelled inside it (`progress`), and a closing line with its wall time."""
    say(f"{name} — {size}")
    ph = Phase(name, total, unit)
    start = time.perf_counter()
    token = _PHASE.set(ph)
    try:
        yield ph
    except BaseException:
        say(f"{name} stopped after {duration(time.perf_counter() - start)}")
        raise
    finally:
        _PHASE.reset(token)
    done = f" ({ph.bar.done:,} {unit})" if ph.bar.done else ""
    say(f"{name} done in {duration(time.perf_counter() - start)}{done}")


@contextmanager
def progress(label: str | None, n: int, unit: str = "prompts") -> Iterator[Callable[[int], None] | None]:
    """The `on_done` callback (`crl.envs.rollout.run_episodes`) of `n` episodes labelled `label`: inside an open
    phase its progress, labelled `<phase>, <label>`; outside one, a progress of their own (a first and a last line).
    None, so nothing is printed, when `label` is None or no session is open."""
    prefix = _PREFIX.get()
    if label is None or prefix is None:
        yield None
        return
    ph = _PHASE.get()
    if ph is None:
        with Progress(f"[{prefix}] {label}", n, unit) as bar:
            yield bar.update
        return
    ph.item(label)
    if ph.planned <= ph.bar.done:  # a phase that did not plan this work
        ph.add(n + ph.bar.done - ph.planned)
    yield ph.update
