"""Baselines on the held-out split, with the same prompts and decoding as the trained policy.

- none: no steering.
- random: a uniformly random action of the policy's action set (any valid feature, either sign), each token
  (seeded per seed): every level of every feature, not only level 0.
- static: one fixed feature at every token. Candidates = the top `n_usage` features by the policy's usage
  (given, e.g. from the run's logs) plus the top `n_act` features by mean SAE activation at the unsteered
  decisions on the selection split. The (feature, sign) with the best accuracy on `select_split` (train) at the
  run's coefficient times each of its coefficient levels (so suppression too, when the policy may suppress) is
  picked, then its coefficient is picked from `coef_grid` (signed) on `coef_split` (val).
- corr (CorrSteer-style): per unsteered train episode, each feature's activation averaged over the episode's
  decisions; the feature with the highest Pearson correlation between that and the reward is picked; its
  coefficient is chosen on val like static. Skipped with a note when the train rewards do not vary.
- prompting: an instruction or few-shot prefix on the user message, chosen from a small documented set by val
  accuracy after scoring on train too (`crl.analysis.replay.prompting`); no steering.
- letter_prior (constrained multiple choice only, else skipped with a note): a constant bias on the option letters'
  logits at the answer token, fit on unsteered train prompts (`crl.analysis.replay.letter_prior`); no steering.
- crl: the trained greedy policy (only when asked; the run already holds it as `eval:<split>`).

Val stage (rows `coef@`, `prompt@`, `score@<coef_split>`): every method scores the same `coef_split` prompts, the whole
split unless `max_val_prompts` caps it, i.e. the prompts CRL's val evaluations score, so all are read on the same
prompts; `max_select_prompts` caps only the `select_split` prompts. Each val row carries its per-prompt `outcomes`,
which `write_rows` moves to analysis/baseline_val_outcomes.csv (row = the row's 0-based index in
baseline_selection.csv, prompt_id, correct, well_formed), for a paired comparison with CRL.

Budget: every selection row carries `rollouts`, the episodes (or, for the letter prior, one-token forwards) it cost;
a method's budget is their sum (`BaselineResult.budgets`; none and random: 0). The unsteered pass whose activations
rank static's and corr's candidates counts for each of them (row stage `activations@<split>`), as each would pay it
alone. `crl.analysis.offline.budget` turns the rows into accuracy-vs-rollouts curves.

Shared (`run_baselines(cache=...)`, `crl.analysis.replay.shared`): what depends on neither the run's seed nor its
policy (random, corr, prompting, letter_prior, the unsteered pass, the scores of static's candidates by activation) can
come from a store another run filled; the rows are those this run would have computed.

Ties are broken by well-formed rate, then by the lower feature id / smaller coefficient. With greedy decoding the
deterministic methods (none, static, corr, prompting, letter_prior, crl) give the same episodes for every seed, so
they run once (seed = the first seed) unless `repeat_deterministic`; random runs once per seed.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

from crl.analysis.replay import announce
from crl.analysis.replay.letter_prior import accuracy_of, fit_letter_prior, letter_logits, prior_episodes
from crl.analysis.replay.prompting import SHOTS, PromptCandidate, apply_prefix, candidates, score_pools, select_prompt
from crl.analysis.replay.runner import (
    append_rows,
    base_id,
    batch_env,
    episode_frames,
    noop_action,
    outcomes,
    rollout,
    scores,
)
from crl.errors import CRLError
from crl.logs.reader import load_run
from crl.logs.rows import episode_rows
from crl.logs.schema import BASELINE_SELECTION, BASELINE_VAL_OUTCOMES, VAL_OUTCOME_COLUMNS, Phase

if TYPE_CHECKING:
    from crl.envs.rollout import Episode
    from crl.envs.tasks.base import Example
    from crl.run.components import Components

METHODS = ("none", "random", "static", "corr", "prompting", "letter_prior", "crl")


@dataclass
class BaselineConfig:
    split: str = "test"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    methods: list[str] = field(
        default_factory=lambda: ["none", "random", "static", "corr", "prompting", "letter_prior"]
    )
    n_usage: int = 8
    n_act: int = 8
    select_split: str = "train"
    coef_split: str = "val"
    coef_grid: list[float] | None = None  # default: the run's coef x (0.5, 1, 2)
    max_select_prompts: int = 64  # cap on select_split prompts (each candidate costs one pass)
    max_val_prompts: int | None = None  # cap on coef_split prompts; None: all, the prompts CRL's val evals score
    prior_prompts: int = 256  # train prompts the letter prior is fit on (one forward each; K-1 values to fit)
    repeat_deterministic: bool = False
    num_envs: int | None = None


@dataclass
class BaselineResult:
    episodes: dict[str, list[Episode]]  # phase -> episodes (all seeds, in seed order)
    seeds: dict[str, list[int]]  # phase -> the seed of each episode
    # every candidate tried, in the order spent: method, stage, accuracy, well_formed, rollouts; static/corr: feature,
    # coef; prompting: candidate, prefix_chars; letter_prior: bias; val rows: outcomes (`runner.outcomes`)
    selection: pd.DataFrame
    chosen: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    budgets: dict[str, int] = field(default_factory=dict)  # method -> rollouts spent selecting or fitting

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(episodes, steps) of every phase, in `load_run` columns, for `stats.method_table`."""
        eps, steps = [], []
        for phase, episodes in self.episodes.items():
            for seed in sorted(set(self.seeds[phase])):
                sel = [e for e, s in zip(episodes, self.seeds[phase], strict=True) if s == seed]
                e, s = episode_frames(sel, phase, seed)
                eps.append(e)
                steps.append(s)
        return pd.concat(eps, ignore_index=True), pd.concat(steps, ignore_index=True)

    def rows(self) -> BaselineRows:
        """What `write_rows` writes: each phase's log rows (episode ids from 0, no run name yet), the selection rows,
        what was chosen and the notes."""
        phases: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
        for phase, episodes in self.episodes.items():
            inter, eps = [], []
            for seed in sorted(set(self.seeds[phase])):
                sel = [e for e, s in zip(episodes, self.seeds[phase], strict=True) if s == seed]
                i, e = episode_rows(sel, "", phase, first_episode=len(eps), seed=seed, prompt_id=base_id)
                inter += i
                eps += e
            phases[phase] = (inter, eps)
        return BaselineRows(phases, selection_records(self.selection), dict(self.chosen), list(self.notes))


@dataclass
class BaselineRows:
    """Baselines as rows, ready for a run's logs (`write_rows`): computed here (`BaselineResult.rows`) or read from a
    shared store (`crl.analysis.replay.shared`)."""

    phases: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]]  # phase -> (interventions, episodes)
    selection: list[dict[str, Any]]  # analysis/baseline_selection.csv, one dict a row (absent columns left out)
    chosen: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def selection_records(selection: pd.DataFrame) -> list[dict[str, Any]]:
    """The selection table's rows as plain dicts: a column a row does not have (NaN) left out, numpy scalars as Python
    ones (a list, e.g. outcomes, as it is), so that `pd.DataFrame(records)` gives the table back."""
    out = []
    for rec in selection.to_dict("records"):
        row = {}
        for k, v in rec.items():
            v = v.item() if isinstance(v, np.generic) else v
            if not (isinstance(v, float) and np.isnan(v)):
                row[k] = v
        out.append(row)
    return out


class BaselineCache(Protocol):
    """Where `run_baselines` takes what does not depend on the run's policy, computing it (`compute()`) only when it
    is not stored yet (`crl.analysis.replay.shared.SharedBaselines`)."""

    def activations(self, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]: ...  # `unsteered_summary`

    def static_scores(self, compute: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]: ...


class ActivationRecorder:
    """Never steers; sums the SAE activations the environment computed at each decision, per prompt id."""

    def __init__(self, env: Any):
        self.env = env
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        acts = self.env.feature_acts
        if acts is not None:
            acts = acts.detach().float().cpu().numpy()
            for i, r in enumerate(np.flatnonzero(info["active"])):  # feature_acts rows follow active rows
                pid = info["prompt_id"][r]
                self.sums[pid] = self.sums.get(pid, 0.0) + acts[i]
                self.counts[pid] = self.counts.get(pid, 0) + 1
        noop = self.env.noop if self.env.noop is not None else 0
        return np.full(len(obs), noop), {}


def record_activations(
    comps: Components,
    examples: list[Example],
    seed: int = 0,
    num_envs: int | None = None,
    progress: str | None = None,
) -> tuple[np.ndarray, np.ndarray, list[Episode]]:
    """Unsteered episodes with per-episode mean SAE activations (n, d_sae) and rewards (n,). `progress`: as in
    `runner.rollout`."""
    from crl.envs.rollout import run_episodes

    if not comps.steering.allow_noop:
        raise CRLError("recording unsteered activations needs steering.allow_noop=true")
    env = batch_env(comps, examples, seed, num_envs)
    rec = ActivationRecorder(env)
    try:
        with announce.progress(progress, len(examples)) as on_done:
            episodes = run_episodes(env, examples, rec, on_done=on_done)
    finally:
        env.close()
    acts = np.stack([rec.sums[e.example.id] / max(rec.counts[e.example.id], 1) for e in episodes])
    return acts, np.array([e.reward for e in episodes], dtype=float), episodes


def unsteered_summary(comps: Components, cfg: BaselineConfig, ranked: str = "static and corr") -> dict[str, Any]:
    """The unsteered pass on the selection split, as much of it as static and corr read: its selection row
    (`act_row`), the top `n_act` features by mean activation (`by_act`), and corr's feature (`corr`: feature and r)
    or, when the rewards do not vary, the note that skips corr (`corr_note`)."""
    sel = comps.splits[cfg.select_split][: cfg.max_select_prompts]
    size = f"{len(sel)} {cfg.select_split} prompts without steering, to rank the {ranked} candidates"
    with announce.phase("baselines: unsteered activations", size, len(sel)):
        acts, rewards, unsteered = record_activations(
            comps, sel, num_envs=cfg.num_envs, progress=f"on {cfg.select_split}"
        )
    acc, wf = scores(unsteered)
    r = correlation_ranking(acts, rewards)
    act_row = {"stage": f"activations@{cfg.select_split}", "accuracy": acc, "well_formed": wf, "rollouts": len(sel)}
    out: dict[str, Any] = {
        "act_row": act_row,
        "by_act": [int(f) for f in np.argsort(-acts.mean(axis=0), kind="stable")[: cfg.n_act]],
        "corr": None,
        "corr_note": None,
    }
    if np.all(np.isnan(r)):
        out["corr_note"] = (
            f"corr skipped: the unsteered {cfg.select_split} rewards do not vary "
            f"(all {rewards[0] if len(rewards) else 'none'}), so no correlation is defined"
        )
    else:
        f = int(np.nanargmax(r))
        out["corr"] = {"feature": f, "r": float(r[f])}
    return out


def correlation_ranking(acts: np.ndarray, rewards: np.ndarray) -> np.ndarray:
    """Pearson r between each feature's pooled activation and the reward; NaN where either is constant."""
    a = acts - acts.mean(axis=0)
    r = rewards - rewards.mean()
    denom = np.sqrt((a**2).sum(axis=0) * (r**2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (a * r[:, None]).sum(axis=0) / denom, np.nan)


def _best(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    # Best accuracy, then well-formed rate, then the smaller feature id / coefficient.
    return sorted(rows, key=lambda r: (-r["accuracy"], -r["well_formed"], abs(r[key])))[0]


def _check_fixed(comps: Components, feature: int) -> None:
    if not 0 <= feature < comps.sae.d_sae:
        raise CRLError(f"feature {feature} is out of range for an SAE with d_sae={comps.sae.d_sae}")


def select_static(
    comps: Components,
    candidates: list[int],
    cfg: BaselineConfig,
    method: str = "static",
    scored: dict[tuple[int, float], dict[str, Any]] | None = None,
) -> tuple[int, float, list[dict[str, Any]]]:
    """Best candidate feature on the selection split, then its best coefficient on the coef split. `scored`: rows
    of (feature, coefficient) pairs scored already (`score_candidates`), taken as they are."""
    if not candidates:
        raise CRLError(f"no candidate features for the {method} baseline; pass usage features or raise n_act")
    rows = score_candidates(comps, candidates, cfg, method, scored)
    best = _best(rows, "feature")
    feature = int(best["feature"])
    rows.extend(select_coef(comps, feature, cfg, method, base=float(best["coef"])))
    coef = float(_best([r for r in rows if r["stage"].startswith("coef")], "coef")["coef"])
    return feature, coef, rows


def score_candidates(
    comps: Components,
    candidates: list[int],
    cfg: BaselineConfig,
    method: str = "static",
    scored: dict[tuple[int, float], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One selection row per candidate and coefficient level: accuracy on the selection split with that feature
    fixed at every token (in candidate order; a (feature, coefficient) in `scored` is not run again)."""
    from crl.envs.rollout import FixedFeature

    sel = comps.splits[cfg.select_split][: cfg.max_select_prompts]
    scored = scored or {}
    rows = []
    for i, f in enumerate(candidates, 1):
        _check_fixed(comps, f)
        for level in _levels(comps):
            c = comps.steering.coef * level
            if (f, c) in scored:
                rows.append({**scored[(f, c)], "method": method})
                continue
            item = f"candidate {i}/{len(candidates)} (feature {f}, level {level:+g}) on {cfg.select_split}"
            eps = rollout(comps, sel, FixedFeature(f), num_envs=cfg.num_envs, progress=item, coef=_as_level0(comps, c))
            acc, wf = scores(eps)
            rows.append(
                {
                    "method": method,
                    "stage": f"feature@{cfg.select_split}",
                    "feature": f,
                    "coef": c,
                    "accuracy": acc,
                    "well_formed": wf,
                    "rollouts": len(sel),
                }
            )
    return rows


def _val_prompts(comps: Components, cfg: BaselineConfig) -> list[Example]:
    """The `coef_split` prompts every val stage scores: the first `max_val_prompts`, None: all (as CRL's val evals)."""
    return comps.splits[cfg.coef_split][: cfg.max_val_prompts]


def _levels(comps: Components) -> list[float]:
    """The coefficient levels a static candidate is tried at (each once)."""
    return list(dict.fromkeys(comps.steering.coef_levels))


def _grid(comps: Components, cfg: BaselineConfig, base: float | None = None) -> list[float]:
    """The coefficients `select_coef` tries: `coef_grid`, default base * (0.5, 1, 2) (base: default steering.coef)."""
    base = comps.steering.coef if base is None else base
    return list(cfg.coef_grid or [base * m for m in (0.5, 1.0, 2.0)])


def _as_level0(comps: Components, coef: float) -> float:
    """The steering.coef override that makes action `feature` (level 0) steer with `coef`."""
    return coef / comps.steering.coef_levels[0]


def select_coef(
    comps: Components, feature: int, cfg: BaselineConfig, method: str, base: float | None = None
) -> list[dict[str, Any]]:
    """The best coefficient for `feature` on the coef split: `coef_grid`, default base * (0.5, 1, 2), where base is
    the signed coefficient it was selected at (default steering.coef)."""
    from crl.envs.rollout import FixedFeature

    grid = _grid(comps, cfg, base)
    val = _val_prompts(comps, cfg)
    rows = []
    for j, c in enumerate(grid, 1):
        fixed = FixedFeature(feature)
        item = f"feature {feature}, coefficient {j}/{len(grid)} ({float(c):+g}) on {cfg.coef_split}"
        eps = rollout(comps, val, fixed, num_envs=cfg.num_envs, progress=item, coef=_as_level0(comps, float(c)))
        acc, wf = scores(eps)
        rows.append(
            {
                "method": method,
                "stage": f"coef@{cfg.coef_split}",
                "feature": feature,
                "coef": float(c),
                "accuracy": acc,
                "well_formed": wf,
                "rollouts": len(val),
                "outcomes": outcomes(eps),
            }
        )
    return rows


def run_baselines(
    comps: Components,
    cfg: BaselineConfig | None = None,
    usage_features: list[int] | None = None,
    policy: Any = None,
    cache: BaselineCache | None = None,
) -> BaselineResult:
    """Every requested baseline on `cfg.split` (see the module docstring). `policy` is needed for "crl". `cache`:
    where the parts that do not depend on the run's policy come from when another run computed them already (the
    unsteered pass, the scores of static's candidates by activation; `crl.analysis.replay.shared`)."""
    from crl.envs.rollout import FixedFeature, RandomFeature

    cfg = cfg or BaselineConfig()
    unknown = sorted(set(cfg.methods) - set(METHODS))
    if unknown:
        raise CRLError(f"unknown baseline(s) {unknown}; choose from {list(METHODS)}")
    if not cfg.seeds:
        raise CRLError("baselines need at least one seed; pass seeds=[0,1,2]")
    if "crl" in cfg.methods and policy is None:
        raise CRLError("the crl baseline needs the trained policy; pass policy=comps.load_policy(run_dir)")
    for split in {cfg.split, cfg.select_split, cfg.coef_split}:
        if split not in comps.splits:
            raise CRLError(f"split '{split}' was not loaded; build the components with that split")
    test = comps.splits[cfg.split]
    notes: list[str] = []
    chosen: dict[str, Any] = {}
    selection: list[dict[str, Any]] = []
    fixed: dict[str, tuple[int, float]] = {}

    n_val = len(_val_prompts(comps, cfg))
    if {"static", "corr"} & set(cfg.methods):
        sel = comps.splits[cfg.select_split][: cfg.max_select_prompts]
        ranked = " and ".join(m for m in ("static", "corr") if m in cfg.methods or cache is not None)  # shared: both
        compute = partial(unsteered_summary, comps, cfg, ranked)
        summary = cache.activations(compute) if cache is not None else compute()
        act_row = summary["act_row"]
        if "static" in cfg.methods:
            selection.append({"method": "static", **act_row})
            by_act = [int(f) for f in summary["by_act"]]
            by_use = [int(f) for f in (usage_features or []) if f >= 0][: cfg.n_usage]
            cands = list(dict.fromkeys(by_use + by_act))
            scored: dict[tuple[int, float], dict[str, Any]] = {}
            if cache is not None and by_act:  # the candidates by activation do not depend on the run's policy
                shared = cache.static_scores(lambda: _score_by_act(comps, by_act, cfg))
                scored = {(int(r["feature"]), float(r["coef"])): r for r in shared}
            levels = _levels(comps)
            n_levels, n_grid = len(levels), len(_grid(comps, cfg))
            n_new = sum((f, comps.steering.coef * lv) not in scored for f in cands for lv in levels)
            size = (
                f"{len(cands)} candidates × {n_levels} level{'s' if n_levels > 1 else ''} × {len(sel)} "
                f"{cfg.select_split} prompts, then {n_grid} coefficients × {n_val} {cfg.coef_split} prompts"
            ) + (f" ({len(cands) * n_levels - n_new} candidate scores shared)" if scored else "")
            with announce.phase("baselines: static feature", size, n_new * len(sel) + n_grid * n_val):
                f, c, rows = select_static(comps, cands, cfg, scored=scored)
            fixed["static"] = (f, c)
            selection.extend(rows)
            chosen.update(static_feature=f, static_coef=c, static_candidates=cands)
        if "corr" in cfg.methods:
            if summary["corr"] is None:
                notes.append(summary["corr_note"])
                announce.say(f"baselines: {notes[-1]}")
            else:
                f, r = int(summary["corr"]["feature"]), float(summary["corr"]["r"])
                n_grid = len(_grid(comps, cfg))
                size = f"feature {f} (r = {r:.2f}), {n_grid} coefficients × {n_val} {cfg.coef_split} prompts"
                with announce.phase("baselines: corr (CorrSteer)", size, n_grid * n_val):
                    rows = select_coef(comps, f, cfg, "corr")
                selection.extend([{"method": "corr", **act_row}, *rows])
                c = float(_best(rows, "coef")["coef"])
                fixed["corr"] = (f, c)
                chosen.update(corr_feature=f, corr_coef=c, corr_r=r)

    prefix: str | None = None
    if "prompting" in cfg.methods:
        cand, rows = _select_prompting(comps, cfg)
        prefix = cand.prefix
        selection.extend(rows)
        chosen.update(prompting_candidate=cand.name, prompting_prefix=cand.prefix)
    prior: np.ndarray | None = None
    if "letter_prior" in cfg.methods:
        prior, rows, note = _fit_prior(comps, cfg)
        selection.extend(rows)
        if note:
            notes.append(note)
            announce.say(f"baselines: {note}")
        else:
            chosen.update(letter_prior_bias=[float(x) for x in prior])

    deterministic_seeds = cfg.seeds if (cfg.repeat_deterministic or not comps.steering.greedy) else cfg.seeds[:1]
    todo = [
        (method, cfg.seeds if method == "random" else deterministic_seeds)
        for method in cfg.methods
        if not ((method in ("static", "corr") and method not in fixed) or (method == "letter_prior" and prior is None))
    ]
    episodes: dict[str, list[Episode]] = {}
    seeds: dict[str, list[int]] = {}
    test_logits = None
    which = ", ".join(m + (f" ({len(ss)} seeds)" if len(ss) > 1 else "") for m, ss in todo)
    total = sum(len(ss) for _, ss in todo) * len(test)
    size = f"{which} × {len(test)} {cfg.split} prompts"
    with announce.phase(f"baselines on {cfg.split}", size, total) if todo else nullcontext():
        for method, run_seeds in todo:
            phase = str(Phase.baseline(method, cfg.split))
            for s in run_seeds:
                item = f"{method}, seed {s}"
                if method == "none":
                    eps = rollout(comps, test, None, seed=s, num_envs=cfg.num_envs, progress=item)
                elif method == "random":
                    random_ = RandomFeature(noop_action(comps), seed=s)  # every level
                    eps = rollout(comps, test, random_, seed=s, num_envs=cfg.num_envs, progress=item)
                elif method == "crl":
                    masker = comps.masker(for_eval=True)
                    eps = rollout(comps, test, policy, seed=s, masker=masker, num_envs=cfg.num_envs, progress=item)
                elif method == "prompting":
                    prompted = apply_prefix(test, prefix or "")
                    eps = rollout(comps, prompted, None, seed=s, num_envs=cfg.num_envs, progress=item)
                elif method == "letter_prior":
                    # deterministic: one forward per prompt
                    test_logits = test_logits or letter_logits(comps, test, progress=f"{item} (one forward each)")
                    eps = prior_episodes(comps, test, test_logits[0], test_logits[2], prior)
                else:
                    f, c = fixed[method]
                    eps = rollout(
                        comps, test, FixedFeature(f), seed=s, num_envs=cfg.num_envs, progress=item,
                        coef=_as_level0(comps, c),
                    )  # fmt: skip
                episodes.setdefault(phase, []).extend(eps)
                seeds.setdefault(phase, []).extend([s] * len(eps))
    budgets = {m: 0 for m in cfg.methods if m in ("none", "random")}
    for row in selection:
        budgets[row["method"]] = budgets.get(row["method"], 0) + int(row["rollouts"])
    chosen.update({f"{m}_rollouts": n for m, n in budgets.items()})
    return BaselineResult(episodes, seeds, pd.DataFrame(selection), chosen, notes, budgets)


def _score_by_act(comps: Components, by_act: list[int], cfg: BaselineConfig) -> list[dict[str, Any]]:
    """The selection rows of static's candidates by activation (what `BaselineCache.static_scores` stores)."""
    sel = comps.splits[cfg.select_split][: cfg.max_select_prompts]
    n_levels = len(_levels(comps))
    levels = f"{n_levels} level{'s' if n_levels > 1 else ''}"
    size = f"{len(by_act)} candidates by activation × {levels} × {len(sel)} {cfg.select_split} prompts"
    with announce.phase("baselines: static feature, shared candidates", size, len(by_act) * n_levels * len(sel)):
        return score_candidates(comps, by_act, cfg)


def _fits(comps: Components, examples: list[Example]) -> bool:
    """Whether every prompt plus the generation budget fits the model's context (as the environment checks)."""
    from crl.envs.steering_env import prompt_texts

    tok = comps.lm.tokenizer
    texts, special = prompt_texts(comps.task, tok, examples)
    longest = max(len(tok(t, add_special_tokens=special)["input_ids"]) for t in texts)
    return longest + int(comps.steering.max_new_tokens or comps.task.cfg.max_new_tokens) <= comps.lm.max_context


def _select_prompting(comps: Components, cfg: BaselineConfig) -> tuple[PromptCandidate, list[dict[str, Any]]]:
    """The prompting baseline's prefix (crl.analysis.replay.prompting), scored without steering."""
    cands = candidates(comps.task.answer_kind, comps.splits[cfg.select_split])
    used = comps.splits[cfg.select_split][: cfg.max_select_prompts + max(SHOTS)]
    used += _val_prompts(comps, cfg) + comps.splits[cfg.split]
    longest = sorted(used, key=lambda e: -len(e.prompt))[:16]  # the context check reads the longest prompts only
    cands = [c for c in cands if not c.prefix or _fits(comps, apply_prefix(longest, c.prefix))]

    def score(c: PromptCandidate, split: str, examples: list[Example]) -> tuple[float, float, int, list[list[Any]]]:
        item = f"candidate {cands.index(c) + 1}/{len(cands)} ({c.name}) on {split}"
        eps = rollout(comps, apply_prefix(examples, c.prefix), None, num_envs=cfg.num_envs, progress=item)
        return (*scores(eps), len(eps), outcomes(eps))

    caps = (cfg.max_select_prompts, cfg.max_val_prompts)
    pools = score_pools(cands, comps.splits, cfg.select_split, cfg.coef_split, *caps)
    size = f"{len(cands)} candidates × (" + " + ".join(f"{len(p)} {s}" for s, p in pools.items()) + " prompts)"
    with announce.phase("baselines: prompting", size, len(cands) * sum(len(p) for p in pools.values())):
        return select_prompt(cands, comps.splits, score, cfg.select_split, cfg.coef_split, *caps)


def _fit_prior(comps: Components, cfg: BaselineConfig) -> tuple[np.ndarray | None, list[dict[str, Any]], str | None]:
    """(bias, selection rows, None), or (None, [], the one-line note) where the task has no letter logits."""
    from crl.analysis.replay.oracle import answer_ids

    if answer_ids(comps, comps.splits[cfg.split][:1]) is None:
        return (
            None,
            [],
            (
                f"letter_prior skipped: task '{comps.task.name}' is not constrained one-token multiple choice, "
                "so there are no option-letter logits to bias"
            ),
        )
    train = comps.splits[cfg.select_split][: cfg.prior_prompts]
    val = _val_prompts(comps, cfg)
    size = f"one forward each on {len(train)} {cfg.select_split} + {len(val)} {cfg.coef_split} prompts"
    with announce.phase("baselines: letter prior", size, len(train) + len(val)):
        logits, gold, _ = letter_logits(comps, train, progress=f"fit on {cfg.select_split}")
        bias = fit_letter_prior(logits, gold)
        v_logits, _, v_allowed = letter_logits(comps, val, progress=f"score on {cfg.coef_split}")
    # Val is scored as the test episodes are (the task's verifier on the biased letter), so its accuracy is its
    # outcomes' mean and the row and its prompts never disagree.
    val_outcomes = outcomes(prior_episodes(comps, val, v_logits, v_allowed, bias))

    def row(stage: str, accuracy: float, n: int, **extra: Any) -> dict[str, Any]:
        bias_text = " ".join(f"{x:+.3f}" for x in bias)
        # an option letter is always emitted, so always well-formed
        point = {"accuracy": accuracy, "well_formed": 1.0, "rollouts": n, **extra}
        return {"method": "letter_prior", "stage": stage, "bias": bias_text, **point}

    rows = [
        row(f"fit@{cfg.select_split}", accuracy_of(logits, gold, bias), len(gold)),
        row(f"score@{cfg.coef_split}", float(np.mean([o[1] for o in val_outcomes])), len(val), outcomes=val_outcomes),
    ]
    return bias, rows, None


def usage_from_run(run_dir: str | Path, n: int = 8) -> list[int]:
    """The policy's most used features (train phase, else eval), for static-baseline candidates."""
    run = load_run(run_dir)
    for phase in ("train", run.eval_phase()):
        steps = run.steps_of(phase)
        steps = steps[steps["feature"] >= 0]
        if len(steps):
            return [int(f) for f in steps["feature"].value_counts().index[:n]]
    return []


def write_baselines(run_dir: str | Path, result: BaselineResult) -> list[str]:
    """Append the baseline phases to the run's logs (phases the run already has are left out) and save
    the selection table to analysis/baseline_selection.csv (val outcomes: `write_rows`). Returns the phases written."""
    return write_rows(run_dir, result.rows())


def _own(row: dict[str, Any], run: str, first: int) -> dict[str, Any]:
    """A stored row as this run's: its name, its episode id counted from `first`."""
    return {**row, "run": run, "episode": int(row["episode"]) + first}


def write_rows(run_dir: str | Path, rows: BaselineRows) -> list[str]:
    """`write_baselines` for baselines as rows: each phase the run does not have yet is appended with the run's name
    and its next episode ids; the selection table goes to analysis/baseline_selection.csv, its rows' outcomes to
    analysis/baseline_val_outcomes.csv (`val_outcome_rows`; none: an old file is removed). No selection rows: both
    files are left as they are. Returns the phases written."""
    run = load_run(run_dir, include_train=False)
    have = set(run.phases)
    next_id = int(run.episodes["episode"].max()) + 1
    written = []
    for phase, (inter, eps) in rows.phases.items():
        if phase in have:
            continue
        append_rows(run_dir, [_own(r, run.name, next_id) for r in inter], [_own(r, run.name, next_id) for r in eps])
        next_id += len(eps)
        written.append(phase)
    run_dir = Path(run_dir)
    (run_dir / "analysis").mkdir(parents=True, exist_ok=True)
    selection, val = val_outcome_rows(rows.selection)
    if selection:  # both or neither: the outcomes' `row` indexes this selection table
        pd.DataFrame(selection).to_csv(run_dir / BASELINE_SELECTION, index=False)
        if val:
            pd.DataFrame(val, columns=list(VAL_OUTCOME_COLUMNS)).to_csv(run_dir / BASELINE_VAL_OUTCOMES, index=False)
        else:  # a stale file would point into another table
            (run_dir / BASELINE_VAL_OUTCOMES).unlink(missing_ok=True)
    return written


def val_outcome_rows(selection: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[list[Any]]]:
    """(the selection rows without "outcomes", the rows of baseline_val_outcomes.csv: [row, prompt_id, correct,
    well_formed], row = the 0-based index of its selection row). The rows given are not changed."""
    rest, val = [], []
    for i, r in enumerate(selection):
        rest.append({k: v for k, v in r.items() if k != "outcomes"})
        val.extend([i, *o] for o in r.get("outcomes") or [])
    return rest, val
