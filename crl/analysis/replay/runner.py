"""Shared plumbing of the replay analyses (they re-run the model): rebuild a run's components and policy,
run episodes, and turn them into the tables and run-directory rows the offline analyses read.

Env construction, policy loading and the identity check belong to `crl.run.components.Components`; log
rows come from `crl.logs.rows.episode_rows`. Nothing here is trained.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from crl.analysis.replay import announce
from crl.errors import CRLError
from crl.logs import schema
from crl.logs.rows import episode_rows
from crl.logs.schema import NO_STEER, base_id

if TYPE_CHECKING:  # importing these at run time pulls in torch and transformers
    from crl.envs.rollout import ActionPolicy, Episode
    from crl.envs.steering_env import SteeringVecEnv
    from crl.envs.tasks.base import Example
    from crl.run.components import Components


def load_components(run_dir: str | Path) -> Components:
    """Rebuild model, SAE, task and splits from a run's resolved config.yaml, checked against its run.json."""
    from crl.run.components import build, saved_config

    if not (Path(run_dir) / schema.CONFIG_YAML).exists():
        raise CRLError(f"'{run_dir}' has no {schema.CONFIG_YAML}; pass a run directory written by `crl train`")
    saved = schema.RunInfo.read(run_dir)  # before the model loads: a bad run.json or config.yaml fails fast
    comps = build(saved_config(run_dir))
    comps.check_identity(saved, run_dir)
    return comps


# -- the stored-measurement protocol of the report's replays (feature effects, causal checks, side effects) ---------
def current_record(
    read: Callable[[str | Path], dict[str, Any] | None],
    run_dir: str | Path,
    want: dict[str, Any],
    is_current: Callable[[dict[str, Any] | None, dict[str, Any]], bool],
    force: bool = False,
) -> dict[str, Any] | None:
    """The stored record when it matches what is wanted now (and `force` is off), else None. A damaged file counts as
    none: it is measured again and replaced."""
    try:
        stored = read(run_dir)
    except CRLError:
        return None
    return stored if not force and is_current(stored, want) else None


def rebuild(
    run_dir: str | Path, load: Callable[[], Components] | None = None, need_noop: bool = False
) -> tuple[Components | None, str | None]:
    """(components, None), or (None, the report's one-line note) when the run's model and SAE cannot be rebuilt here
    (a hand-written config, a GPU run on a CPU host) or, with `need_noop`, the run cannot steer "no steering"."""
    try:
        comps = load() if load is not None else load_components(run_dir)
    except (CRLError, OSError) as e:
        return None, f"not measured: the run's model and SAE could not be rebuilt ({e})"
    if need_noop and not comps.steering.allow_noop:
        return None, "not measured: it compares with no steering, and this run has steering.allow_noop=false"
    return comps, None


class SharedComponents:
    """A run's components, loaded on the first call and kept, so the report's sections that run the model share
    one load; a failed load raises the same error again without retrying."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = run_dir
        self._comps: Components | None = None
        self._error: Exception | None = None

    def __call__(self) -> Components:
        if self._error is not None:
            raise self._error
        if self._comps is None:
            try:
                with announce.phase("loading the run's model and SAE", f"from {schema.CONFIG_YAML}"):
                    self._comps = load_components(self.run_dir)
            except (CRLError, OSError) as e:
                self._error = e
                raise
        return self._comps


def batch_env(
    comps: Components, examples: list[Example], seed: int = 0, num_envs: int | None = None, **kw: Any
) -> SteeringVecEnv:
    """`Components.env` over `examples`, at most `num_envs` (default ppo.num_envs) rows, never more than
    there are examples. `kw`: masker and steering overrides."""
    n = max(1, min(num_envs or comps.ppo.num_envs, len(examples)))
    return comps.env(examples, seed=seed, num_envs=n, **kw)


def rollout(
    comps: Components,
    examples: list[Example],
    policy: ActionPolicy | None,
    seed: int = 0,
    masker: Any = None,
    num_envs: int | None = None,
    scripts: dict[str, list[int]] | None = None,
    progress: str | None = None,
    **steering: Any,
) -> list[Episode]:
    """Run every example once; `policy=None` means no steering (`NoSteer`). `scripts` (prompt id -> actions
    by step) override the policy at those steps (`Scripted`). Steering overrides (e.g. coef) apply. `progress`: what
    these episodes are, in the progress lines of `crl analyze` (`announce.progress`; None: none), which change nothing
    else."""
    from crl.envs.rollout import NoSteer, Scripted, run_episodes

    env = batch_env(comps, examples, seed, num_envs, masker=masker, **steering)
    try:
        act = policy if policy is not None else NoSteer(env)
        with announce.progress(progress, len(examples)) as on_done:
            return run_episodes(env, examples, Scripted(scripts, act) if scripts is not None else act, on_done=on_done)
    finally:
        env.close()


def noop_action(comps: Components) -> int:
    """The environment's "no steering" action id: the last one, after every (level, feature)."""
    return comps.sae.d_sae * len(comps.steering.coef_levels)


def action_id(comps: Components, feature: int, coef: float) -> int:
    """The environment's action id of a logged intervention row: level index * d_sae + feature, the level read off
    the logged coefficient (steering.coef x level); `noop_action` for a no-steer row."""
    if int(feature) == NO_STEER:
        return noop_action(comps)
    levels, run_coef = [float(x) for x in comps.steering.coef_levels], float(comps.steering.coef)
    level = float(coef) / run_coef if run_coef else float("nan")
    gaps = [abs(level - lv) for lv in levels]
    i = int(np.argmin(gaps))
    if not gaps[i] <= 1e-6 * max(1.0, abs(level)):
        raise CRLError(
            f"a logged coefficient {coef} is not one of the run's levels {levels} x coef {run_coef}; "
            "the run's config does not match its logs"
        )
    return i * comps.sae.d_sae + int(feature)


def action_parts(comps: Components, action: int) -> tuple[int, int | None]:
    """(feature, level index) of an environment action id, the inverse of `action_id`: level index * d_sae +
    feature; (NO_STEER, None) for the no-op (`noop_action`). An id outside the run's actions is refused."""
    d, n_levels = comps.sae.d_sae, len(comps.steering.coef_levels)
    a = int(action)
    if comps.steering.allow_noop and a == noop_action(comps):
        return NO_STEER, None
    if not 0 <= a < d * n_levels:
        raise CRLError(
            f"action {a} is not one of the run's actions: 0..{d * n_levels - 1} (level * d_sae + feature, d_sae={d}, "
            f"{n_levels} level{'s' if n_levels > 1 else ''})"
            + (f", {d * n_levels} no steering" if comps.steering.allow_noop else "")
        )
    return a % d, a // d


def action_label(comps: Components, action: int) -> str:
    """An action id as the tables show it: "no steer", else the feature with its level's sign ("+12" amplifies,
    "−12" suppresses, as in `crl compare`'s groups), and its multiplier after "×" where two of the run's levels
    share a sign (levels [1, 2]: "+12×1", "+12×2")."""
    feature, level = action_parts(comps, action)
    if level is None:
        return "no steer"
    levels = [float(x) for x in comps.steering.coef_levels]
    lv = levels[level]
    text = f"{'−' if lv < 0 else '+'}{feature}"
    if len({x < 0 for x in levels}) < len(levels):
        text += f"×{abs(lv):g}"
    return text


def tagged(examples: list[Example], tag: str) -> list[Example]:
    """Copies with ids `<id>#<tag>`, so several variants of one prompt can share a batch (`Scripted` is
    keyed by prompt id). `base_id` recovers the original."""
    return [dataclasses.replace(e, id=f"{e.id}#{tag}") for e in examples]


def episode_frames(
    episodes: list[Episode], phase: str, seed: int = 0, run: str = "analysis"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(episodes, steps) DataFrames with the columns `crl.logs.reader.load_run` gives (for `stats`)."""
    inter, eps = episode_rows(episodes, run, phase, prompt_id=base_id)
    return pd.DataFrame(eps).assign(seed=seed), pd.DataFrame(inter).assign(seed=seed)


def scores(episodes: list[Episode]) -> tuple[float, float]:
    """(accuracy, well-formed rate) of some episodes."""
    return float(np.mean([e.correct for e in episodes])), float(np.mean([e.well_formed for e in episodes]))


def outcomes(episodes: list[Episode]) -> list[list[Any]]:
    """[prompt id (`base_id`), correct, well-formed] per episode, 0/1 ints, in episode order: a val selection row's
    per-prompt outcomes (analysis/baseline_val_outcomes.csv), so baselines pair with CRL prompt by prompt."""
    return [[base_id(e.example.id), int(bool(e.correct)), int(bool(e.well_formed))] for e in episodes]


def append_rows(run_dir: str | Path, inter: list[dict], eps: list[dict]) -> None:
    """Append rows to a run's interventions.jsonl / episodes.jsonl (the logs are append-only)."""
    from crl.logs.writer import RunWriter

    writer = RunWriter(Path(run_dir))
    try:
        writer.append(schema.INTERVENTIONS, inter)
        writer.append(schema.EPISODES, eps)
        writer.flush()
    finally:
        writer.close()
