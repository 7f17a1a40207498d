"""Sufficiency and necessity of the features a run steered with, measured with the model on held-out prompts.

What is measured and how it is read: `crl.analysis.offline.causal` (the plan, the five arms, the estimates). Here
the counterfactual arms are run: each is the policy's logged actions of a prompt, changed at the steps where it
chose the feature (or group), replayed through the environment (`crl.envs.rollout.Scripted` via
`runner.rollout`, as `effects.forced_feature_effects` forces features). An action is the environment's id,
level index * d_sae + feature (`runner.action_id`), so a feature is replayed at the level the policy chose. Arms
that equal the policy's own actions or no steering at all take the logged outcome. The first `N_CHECK` prompts also
replay the policy's own actions, to check that the replay reproduces the logged outcomes (`reproduced`).

Cost: one episode per prompt and replayed arm. Every replay (the check, then each feature's, then each group's) is
queued in that order, the same (prompt, actions) once, and run in batches of the env's size; no batch starts after
`max_seconds`, and a unit whose replays did not all run is listed as left out. `ensure_causal` measures on a report
(on by default: `AnalyzeConfig.causal`) unless the stored <run_dir>/analysis/causal.json is current.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from crl.analysis.offline.agreement import group_features
from crl.analysis.offline.causal import (
    CAUSAL_FILE,
    estimates,
    first_seed,
    is_current,
    matched_pool,
    plan,
    read_causal,
    sample_prompts,
)
from crl.analysis.offline.feature_effects import read_effects_record
from crl.analysis.offline.stats import StatsConfig
from crl.analysis.replay import announce
from crl.analysis.replay.runner import action_id, current_record, noop_action, rebuild, rollout
from crl.errors import CRLError
from crl.logs.reader import load_run
from crl.logs.schema import NO_STEER

if TYPE_CHECKING:
    from crl.run.components import Components

PHASE = "causal checks"  # its name in what `crl analyze` prints (`announce`)
N_CHECK = 16  # prompts whose logged policy actions are replayed to check the replay reproduces their outcome
Member = tuple[int, int]  # (feature, +1 amplify / -1 suppress)


@dataclasses.dataclass
class _Episodes:
    """The eval's logged actions and outcomes per prompt, and the logged no-steering outcomes."""

    actions: dict[str, list[int]]  # prompt -> the policy's action id per step
    sites: dict[str, list[Member | None]]  # prompt -> (feature, sign) per step, None where it did not steer
    levels: dict[str, list[int]]  # prompt -> level index per step (0 where it did not steer)
    policy: dict[str, bool]
    none: dict[str, bool]


def _episodes(comps: Components, steps: pd.DataFrame, episodes: pd.DataFrame, none: pd.DataFrame) -> _Episodes:
    d = comps.sae.d_sae
    actions: dict[str, list[int]] = {}
    sites: dict[str, list[Member | None]] = {}
    lvl: dict[str, list[int]] = {}
    for pid, g in steps.sort_values("step").groupby("prompt_id"):
        logged = [(int(f), float(c)) for f, c in zip(g["feature"], g["coef"], strict=True)]
        acts = [action_id(comps, f, c) for f, c in logged]
        steered = [(f, 1 if c > 0 else -1) if f != NO_STEER else None for f, c in logged]
        actions[str(pid)], sites[str(pid)] = acts, steered
        lvl[str(pid)] = [a // d if s is not None else 0 for a, s in zip(acts, steered, strict=True)]
    policy = {str(p): bool(x) for p, x in zip(episodes["prompt_id"], episodes["correct"], strict=True)}
    logged_none = {str(p): bool(x) for p, x in zip(none["prompt_id"], none["correct"], strict=True)}
    return _Episodes(actions, sites, lvl, policy, logged_none)


def _strip(script: list[int], noop: int) -> tuple[int, ...]:
    """A script without its trailing no-ops (after the script the replay does not steer either)."""
    end = len(script)
    while end and script[end - 1] == noop:
        end -= 1
    return tuple(script[:end])


Job = tuple[str, tuple[int, ...], bool]  # (prompt, script, replayed even when logged: the reproduction check)


class _Runner:
    """Replays scripts, one episode per job, in batches of the env's size (jobs queued in order, so the first
    units finish first); remembers every outcome and counts the episodes it ran."""

    def __init__(self, comps: Components, eps: _Episodes, num_envs: int | None) -> None:
        self.comps, self.eps = comps, eps
        self.batch = max(1, num_envs or comps.ppo.num_envs)
        self.noop = noop_action(comps)
        self.by_id = {e.id: e for split in comps.splits.values() for e in split}
        self.known: dict[Job, bool] = {}
        self.queue: dict[Job, None] = {}
        self.n_replayed = 0

    def logged(self, pid: str, script: tuple[int, ...]) -> bool | None:
        """The logged outcome of a script that is the policy's own episode or no steering at all, else None."""
        if script == _strip(self.eps.actions[pid], self.noop):
            return self.eps.policy.get(pid)
        if not script:
            return self.eps.none.get(pid)
        return None

    def add(self, jobs: list[Job]) -> None:
        """Take the logged outcome where there is one, else queue the job."""
        for job in jobs:
            if job in self.known or job in self.queue:
                continue
            got = None if job[2] else self.logged(job[0], job[1])
            if got is None:
                self.queue[job] = None
            else:
                self.known[job] = got

    def drain(self, stop: Callable[[], bool]) -> None:
        """Replay the queue, one batch at a time, until it is empty or `stop()` says so before a batch."""
        todo = list(self.queue)
        n_batches = -(-len(todo) // self.batch)
        for at in range(0, len(todo), self.batch):
            if stop():
                return
            chunk = todo[at : at + self.batch]
            examples, scripts = [], {}
            for k, (pid, script, _) in enumerate(chunk):
                ex = dataclasses.replace(self.by_id[pid], id=f"{pid}#causal{k}")
                examples.append(ex)
                scripts[ex.id] = list(script)
            item = f"replay batch {at // self.batch + 1}/{n_batches}"
            episodes = rollout(self.comps, examples, None, num_envs=self.batch, scripts=scripts, progress=item)
            self.n_replayed += len(chunk)
            for job, ep in zip(chunk, episodes, strict=True):
                self.known[job] = bool(ep.correct)
                del self.queue[job]

    def outcomes(self, jobs: list[Job]) -> np.ndarray | None:
        """1/0 per job, or None while one of them has not run."""
        if any(j not in self.known for j in jobs):
            return None
        return np.array([self.known[j] for j in jobs], float)


def _unit_jobs(
    runner: _Runner, members: set[Member], pids: list[str], density: np.ndarray | None, rng: np.random.Generator
) -> tuple[dict[str, list[Job]], list[float]]:
    """The jobs of the counterfactual arms of one feature or group on its prompts (none, alone, replaced_none,
    replaced_random), and the levels the policy used there."""
    eps, noop, d = runner.eps, runner.noop, runner.comps.sae.d_sae
    pools = {f: matched_pool(f, density, d) for f in sorted({f for f, _ in members})}
    jobs: dict[str, list[Job]] = {k: [] for k in ("none", "alone", "replaced_none", "replaced_random")}
    levels = set()
    for pid in pids:
        acts, sites = eps.actions[pid], eps.sites[pid]
        at = {t for t, s in enumerate(sites) if s in members}
        draw = {f: int(rng.choice(pool)) for f, pool in pools.items()}
        rand = list(acts)
        for t in at:
            rand[t] = eps.levels[pid][t] * d + draw[sites[t][0]]
            levels.add(float(runner.comps.steering.coef_levels[eps.levels[pid][t]]))
        jobs["none"].append((pid, (), False))
        jobs["alone"].append((pid, _strip([a if t in at else noop for t, a in enumerate(acts)], noop), False))
        jobs["replaced_none"].append((pid, _strip([noop if t in at else a for t, a in enumerate(acts)], noop), False))
        jobs["replaced_random"].append((pid, _strip(rand, noop), False))
    return jobs, sorted(levels, reverse=True)


def _groups(
    comps: Components, sites: dict[str, list[Member | None]], features: list[int], effects: dict[Member, np.ndarray]
) -> list[list[Member]]:
    """Groups of two or more of the measured features that do the same thing (`agreement.group_features` over
    their signed decoder directions and answer effects), as lists of (feature, sign)."""
    used = sorted({s for ss in sites.values() for s in ss if s is not None and s[0] in features})
    if len({f for f, _ in used}) < 2:
        return []
    decoder = comps.sae.directions().detach().float().cpu().numpy()
    gid = group_features(used, decoder, effects)
    out = []
    for g in sorted(set(gid.values())):
        members = sorted(m for m, i in gid.items() if i == g)
        if len({f for f, _ in members}) >= 2:
            out.append(members)
    return out


def answer_effects(record: dict[str, Any] | None) -> dict[Member, np.ndarray]:
    """(feature, sign) -> its measured shift of the answer tokens' log-probabilities (feature_effects.json)."""
    out = {}
    for f, rows in (record or {}).get("features", {}).items():
        for r in rows:
            shift = r.get("answer_shift")
            if shift and float(r.get("level", 0)) != 0:
                out[(int(f), 1 if float(r["level"]) > 0 else -1)] = np.array([shift[k] for k in sorted(shift)], float)
    return out


def causal_checks(
    comps: Components,
    want: dict[str, Any],
    steps: pd.DataFrame,
    episodes: pd.DataFrame,
    none: pd.DataFrame,
    density: np.ndarray | None = None,
    effects: dict[Member, np.ndarray] | None = None,
    num_envs: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Every row of `want` (`offline.causal.plan`): its features, then the groups among them, until
    `settings.max_seconds` have passed. `steps`/`episodes`: the eval phase's rows (one seed); `none`: the logged
    no-steering episodes of the same split (prompts without one are replayed). `density`: per-feature activation
    density for the random replacement (None: uniform)."""
    start = clock()
    if not comps.steering.allow_noop:
        raise CRLError("the causal check compares with no steering; it needs steering.allow_noop=true")
    settings = want["settings"]
    stats = StatsConfig(n_boot=int(settings["n_boot"]), seed=int(settings["seed"]))
    if density is not None and len(density) != comps.sae.d_sae:
        density = None  # cards of another SAE
    eps = _episodes(comps, first_seed(steps), first_seed(episodes), first_seed(none))
    runner = _Runner(comps, eps, num_envs)
    features = [int(f) for f in want["features"]]
    missing = sorted({p for ps in want["features"].values() for p in ps} - set(runner.by_id))
    if missing:
        raise CRLError(
            f"{len(missing)} prompt ids of the eval rows (e.g. '{missing[0]}') are not in the loaded splits; "
            "rebuild the components with the run's config"
        )
    union = sorted({p for ps in want["features"].values() for p in ps})
    check = [(p, _strip(eps.actions[p], runner.noop), True) for p in union[:N_CHECK]]
    runner.add(check)
    units: list[tuple[str, list[Member], list[str]]] = []
    for f in features:
        members = sorted({s for p in want["features"][str(f)] for s in eps.sites[p] if s is not None and s[0] == f})
        units.append(("feature", members, want["features"][str(f)]))
    for members in _groups(comps, eps.sites, features, effects or {}):
        mset = set(members)
        pids = sorted(p for p, ss in eps.sites.items() if any(s in mset for s in ss))
        salt = zlib.crc32(repr(members).encode())
        units.append(("group", members, sample_prompts(pids, int(settings["prompts"]), int(settings["seed"]), salt)))
    planned = []
    for kind, members, pids in units:
        rng = np.random.default_rng([int(settings["seed"]), *(f for f, _ in members)])
        jobs, levels = _unit_jobs(runner, set(members), pids, density, rng)
        runner.add([j for js in jobs.values() for j in js])
        planned.append((kind, members, pids, jobs, levels))
    limit = settings.get("max_seconds")
    n_groups = sum(kind == "group" for kind, *_ in planned)
    size = (
        f"{len(features)} feature{'s' * (len(features) != 1)} + {n_groups} group{'s' * (n_groups != 1)} on at most "
        f"{settings['prompts']} prompts each: "
        f"{len(runner.queue)} episodes to replay" + (f", no batch started after {float(limit):g}s" if limit else "")
    )
    with announce.phase(PHASE, size, len(runner.queue), unit="episodes"):
        runner.drain(lambda: limit is not None and clock() - start > float(limit))
    replayed = runner.outcomes(check)
    one_step = max((len(a) for a in eps.actions.values()), default=0) <= 1
    rows, left_out = [], []
    for kind, members, pids, jobs, levels in planned:
        head = {
            "kind": kind,
            "members": [list(m) for m in members],
            **({"feature": members[0][0]} if kind == "feature" else {}),
        }
        arms = {k: runner.outcomes(js) for k, js in jobs.items()}
        if any(a is None for a in arms.values()):
            left_out.append(head)
            continue
        arms["policy"] = np.array([eps.policy[p] for p in pids], float)
        rows.append({**head, "levels": levels, "prompts": pids, **estimates(arms, stats, one_step)})
    agree = (
        None if replayed is None else int(sum(r == eps.policy[p] for (p, _, _), r in zip(check, replayed, strict=True)))
    )
    return {
        **want,
        "model": comps.lm.name,
        "coef": float(comps.steering.coef),
        "coef_mode": comps.steering.coef_mode,
        "density_matched": density is not None,
        "one_step": one_step,
        "reproduced": {"n": len(check), "agree": agree},
        "n_replayed": runner.n_replayed,
        "left_out": left_out,
        "seconds": round(clock() - start, 2),
        "rows": rows,
    }


def write_causal(run_dir: str | Path, record: dict[str, Any]) -> Path:
    """Store a record as <run_dir>/analysis/causal.json (atomic: a killed writer leaves the old file)."""
    from crl.logs.atomic import atomic_write_json

    path = Path(run_dir) / CAUSAL_FILE
    atomic_write_json(path, record)
    return path


def card_density(identity: str, model: str) -> np.ndarray | None:
    """Each feature's activation density from the SAE's feature cards, or None when it has none."""
    from crl.cards.store import find_cards

    cards = find_cards(identity, model)
    return None if cards is None else np.asarray(cards.density, dtype=float)


def stored_causal(
    run_dir: str | Path,
    eval_split: str | None = None,
    top: int = 5,
    prompts: int = 128,
    seed: int = 0,
    n_boot: int = 2000,
    max_seconds: float | None = None,
) -> str | None:
    """`CAUSAL_FILE` when `ensure_causal` with these settings (no force) would take the stored record, else None."""
    want = plan(load_run(run_dir, include_train=False), eval_split, top, prompts, seed, n_boot, max_seconds)
    return CAUSAL_FILE if current_record(read_causal, run_dir, want, is_current) is not None else None


def ensure_causal(
    run_dir: str | Path,
    force: bool = False,
    eval_split: str | None = None,
    top: int = 5,
    prompts: int = 128,
    seed: int = 0,
    n_boot: int = 2000,
    max_seconds: float | None = None,
    load: Callable[[], Components] | None = None,
) -> tuple[dict[str, Any] | None, str | None]:
    """The run's causal checks: the stored record when it is current (the same plan; always measured again with
    `force`), else measured and written. Returns (record, None), or (None, a one-line note) when they cannot be
    measured here (the run's model and SAE cannot be rebuilt, or the run cannot steer "no steering")."""
    run = load_run(run_dir, include_train=False)
    want = plan(run, eval_split, top, prompts, seed, n_boot, max_seconds)
    stored = current_record(read_causal, run_dir, want, is_current, force)
    if stored is not None:
        announce.reused(PHASE, CAUSAL_FILE)
        return stored, None
    if not want["features"]:  # the eval policy never steered (or top=0): nothing to run, no model to load
        announce.say(f"{PHASE}: nothing to replay (no feature to check)")
        record = {**want, "rows": [], "left_out": [], "n_replayed": 0}
        write_causal(run_dir, record)
        return record, None
    comps, note = rebuild(run_dir, load, need_noop=True)
    if comps is None:
        announce.say(f"{PHASE}: {note}")
        return None, note
    phase = want["phase"]
    none = run.episodes_of(want["none_phase"]) if want["none_phase"] else pd.DataFrame(columns=["prompt_id", "correct"])
    try:
        record = causal_checks(
            comps,
            want,
            run.steps_of(phase),
            run.episodes_of(phase),
            none,
            density=card_density(run.sae_identity, str(run.info.model)),
            effects=answer_effects(read_effects_record(run_dir)),
        )
    except CRLError as e:  # e.g. logs that do not match the rebuilt config: the rest of the report still stands
        note = f"not measured: {e}"
        announce.say(f"{PHASE}: {note}")
        return None, note
    write_causal(run_dir, record)
    return record, None
