"""Task families: one task, several variants of its template, so that a policy has to read the question.

A templated task names its variants along up to three axes (`FamilyAxes`):

- wording:   how the question is put ("Which number is larger?", "Pick the greater number.", ...);
- direction: what is asked (compare: larger | smaller), so the same two numbers can have either answer;
- range:     where the numbers come from (compare: 1digit 1-9, 2digit 10-99, 3digit 100-999).

`task.family` (`crl.config.FamilyConfig`) selects the `Variants` that train, val and test draw from. Each problem
draws its wording, then its direction, then its range from the selected values (seeded; an axis with a single value
draws nothing), then its numbers, so a family of one wording, one direction and one range yields exactly the prompts
of the task's single template. Splits stay disjoint whatever the variants: a prompt's split is a hash of its text
(`procedural.py`), so a prompt belongs to one split under every family and seed.

Held out, for `crl transfer`: the wordings and ranges named by `task.family.holdout_wordings` / `holdout_ranges`
(null: every one the splits do not draw from), and every direction the splits do not draw from (the inverse
question). A variant spec says how a variant differs from the trained variants:

    trained                      the trained variants themselves (fresh test prompts)
    wording:pick                 one wording instead of the trained ones (directions and ranges as trained)
    range:3digit                 one range instead of the trained ones
    direction:smaller            one direction (the inverse question when the run trained on larger only)
    wording:pick+range:3digit    several axes at once
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from crl.config import FamilyConfig
from crl.errors import CRLError

AXES = ("wording", "direction", "range")
TRAINED = "trained"


@dataclass(frozen=True)
class Variants:
    """The values a problem may draw on each axis (an axis the task does not have holds ())."""

    wordings: tuple[str, ...]
    directions: tuple[str, ...]
    ranges: tuple[str, ...]

    def of(self, axis: str) -> tuple[str, ...]:
        return getattr(self, f"{axis}s")

    def with_axis(self, axis: str, values: tuple[str, ...]) -> Variants:
        return replace(self, **{f"{axis}s": tuple(values)})

    def describe(self) -> str:
        """`wording plain | direction larger | range 2digit` (axes the task lacks are left out)."""
        return " | ".join(f"{a} {','.join(self.of(a))}" for a in AXES if self.of(a))


@dataclass(frozen=True)
class FamilyAxes:
    """What a task offers on each axis (in its documented order) and what a family draws from by default."""

    wordings: tuple[str, ...]
    directions: tuple[str, ...]
    ranges: tuple[str, ...]
    default_ranges: tuple[str, ...]  # task.family.ranges=null (other axes: every value)

    def of(self, axis: str) -> tuple[str, ...]:
        return getattr(self, f"{axis}s")

    def check(self, fam: FamilyConfig, task: str) -> None:
        """Every name in `fam` is one of the task's, and nothing is both trained on and held out."""
        for axis in AXES:
            for key in (f"{axis}s", f"holdout_{axis}s"):
                values = getattr(fam, key, None) or []
                unknown = [v for v in values if v not in self.of(axis)]
                if unknown:
                    allowed = ", ".join(self.of(axis)) or f"none (task '{task}' has no {axis} axis)"
                    raise CRLError(
                        f"task.family.{key} names '{unknown[0]}', unknown for task '{task}'; allowed: {allowed}"
                    )
        chosen = self.selected(fam)
        for axis in ("wording", "range"):
            both = [v for v in getattr(fam, f"holdout_{axis}s") or [] if v in chosen.of(axis)]
            if both:
                raise CRLError(
                    f"task.family.holdout_{axis}s names '{both[0]}', which task.family.{axis}s trains on; "
                    f"hold out only {axis}s that training does not draw from"
                )

    def selected(self, fam: FamilyConfig) -> Variants:
        """The variants train/val/test draw from when the family is enabled."""
        return Variants(
            tuple(fam.wordings or self.wordings),
            tuple(fam.directions or self.directions),
            tuple(fam.ranges or self.default_ranges),
        )

    def held_out(self, fam: FamilyConfig, trained: Variants) -> Variants:
        """Per axis, the values `crl transfer` evaluates one by one (see the module docstring)."""

        def pick(axis: str, named: list[str] | None) -> tuple[str, ...]:
            return tuple(named) if named is not None else tuple(v for v in self.of(axis) if v not in trained.of(axis))

        return Variants(
            pick("wording", fam.holdout_wordings),
            pick("direction", None),
            pick("range", fam.holdout_ranges),
        )

    def default_specs(self, fam: FamilyConfig, trained: Variants) -> list[str]:
        """`crl transfer`'s default variants: the trained distribution (one row per direction when several are
        trained, so a policy that ignores the question shows up as harm on one of them), then each held-out wording,
        each held-out range and each direction not trained on (the inverse question, a control)."""
        specs = [TRAINED] if len(trained.directions) <= 1 else [f"direction:{d}" for d in trained.directions]
        held = self.held_out(fam, trained)
        return specs + [f"{axis}:{v}" for axis in ("wording", "range", "direction") for v in held.of(axis)]

    def parse(self, spec: str, trained: Variants, task: str) -> Variants:
        """The variants a spec names (module docstring), each value checked against the task's."""
        spec = spec.strip()
        if spec == TRAINED:
            return trained
        out = trained
        for part in spec.split("+"):
            axis, sep, value = part.partition(":")
            if not sep or axis not in AXES or not value:
                raise CRLError(
                    f"variant '{spec}' is not 'trained' or axis:value[+axis:value] with axis wording, direction or "
                    "range; e.g. variants=[wording:pick,range:3digit]"
                )
            if value not in self.of(axis):
                allowed = ", ".join(self.of(axis)) or "none"
                raise CRLError(f"variant '{spec}': {axis} '{value}' is unknown for task '{task}'; allowed: {allowed}")
            out = out.with_axis(axis, (value,))
        return out


def held_out_axes(variants: Variants, trained: Variants) -> list[str]:
    """The axes on which `variants` draws a value that training never drew ([] = the training distribution)."""
    return [a for a in AXES if any(v not in trained.of(a) for v in variants.of(a))]
