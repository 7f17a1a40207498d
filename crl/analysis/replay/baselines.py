"""Baselines on the held-out split, with the same prompts and decoding as the trained policy.

- none: no steering.
- random: a uniformly random feature at every token (seeded per seed).
- static: one fixed feature at every token. Candidates = the top `n_usage` features by the policy's usage
  (given, e.g. from the run's logs) plus the top `n_act` features by mean SAE activation at the unsteered
  decisions on the selection split. The (feature, sign) with the best accuracy on `select_split` (train) at the
  run's coefficient times each of its coefficient levels (so suppression too, when the policy may suppress) is
  picked, then its coefficient is picked from `coef_grid` (signed) on `coef_split` (val).
- corr (CorrSteer-style): per unsteered train episode, each feature's activation averaged over the episode's
  decisions; the feature with the highest Pearson correlation between that and the reward is picked; its
  coefficient is chosen on val like static. Skipped with a note when the train rewards do not vary.
- crl: the trained greedy policy (only when asked; the run already holds it as `eval:<split>`).

Ties are broken by well-formed rate, then by the lower feature id / smaller coefficient. With greedy
decoding the deterministic methods (none, static, corr, crl) give the same episodes for every seed, so they
run once (seed = the first seed) unless `repeat_deterministic`; random runs once per seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from crl.analysis.replay.runner import append_rows, base_id, batch_env, episode_frames, rollout, scores
from crl.errors import CRLError
from crl.logs.reader import load_run
from crl.logs.rows import episode_rows
from crl.logs.schema import Phase

if TYPE_CHECKING:
    from crl.envs.rollout import Episode
    from crl.envs.tasks.base import Example
    from crl.run.components import Components

METHODS = ("none", "random", "static", "corr", "crl")


@dataclass
class BaselineConfig:
    split: str = "test"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    methods: list[str] = field(default_factory=lambda: ["none", "random", "static", "corr"])
    n_usage: int = 8
    n_act: int = 8
    select_split: str = "train"
    coef_split: str = "val"
    coef_grid: list[float] | None = None  # default: the run's coef x (0.5, 1, 2)
    max_select_prompts: int = 64  # cap on selection prompts (each candidate costs one pass)
    repeat_deterministic: bool = False
    num_envs: int | None = None


@dataclass
class BaselineResult:
    episodes: dict[str, list[Episode]]  # phase -> episodes (all seeds, in seed order)
    seeds: dict[str, list[int]]  # phase -> the seed of each episode
    selection: pd.DataFrame  # every candidate tried: method, stage, feature, coef, accuracy, well_formed
    chosen: dict[str, Any]
    notes: list[str] = field(default_factory=list)

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
    comps: Components, examples: list[Example], seed: int = 0, num_envs: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[Episode]]:
    """Unsteered episodes with per-episode mean SAE activations (n, d_sae) and rewards (n,)."""
    from crl.envs.rollout import run_episodes

    if not comps.steering.allow_noop:
        raise CRLError("recording unsteered activations needs steering.allow_noop=true")
    env = batch_env(comps, examples, seed, num_envs)
    rec = ActivationRecorder(env)
    try:
        episodes = run_episodes(env, examples, rec)
    finally:
        env.close()
    acts = np.stack([rec.sums[e.example.id] / max(rec.counts[e.example.id], 1) for e in episodes])
    return acts, np.array([e.reward for e in episodes], dtype=float), episodes


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
    comps: Components, candidates: list[int], cfg: BaselineConfig, method: str = "static"
) -> tuple[int, float, list[dict[str, Any]]]:
    """Best candidate feature on the selection split, then its best coefficient on the coef split."""
    from crl.envs.rollout import FixedFeature

    if not candidates:
        raise CRLError(f"no candidate features for the {method} baseline; pass usage features or raise n_act")
    sel = comps.splits[cfg.select_split][: cfg.max_select_prompts]
    rows = []
    for f in candidates:
        _check_fixed(comps, f)
        for level in dict.fromkeys(comps.steering.coef_levels):
            c = comps.steering.coef * level
            acc, wf = scores(rollout(comps, sel, FixedFeature(f), num_envs=cfg.num_envs, coef=_as_level0(comps, c)))
            rows.append(
                {
                    "method": method,
                    "stage": f"feature@{cfg.select_split}",
                    "feature": f,
                    "coef": c,
                    "accuracy": acc,
                    "well_formed": wf,
                }
            )
    best = _best(rows, "feature")
    feature = int(best["feature"])
    rows.extend(select_coef(comps, feature, cfg, method, base=float(best["coef"])))
    coef = float(_best([r for r in rows if r["stage"].startswith("coef")], "coef")["coef"])
    return feature, coef, rows


def _as_level0(comps: Components, coef: float) -> float:
    """The steering.coef override that makes action `feature` (level 0) steer with `coef`."""
    return coef / comps.steering.coef_levels[0]


def select_coef(
    comps: Components, feature: int, cfg: BaselineConfig, method: str, base: float | None = None
) -> list[dict[str, Any]]:
    """The best coefficient for `feature` on the coef split: `coef_grid`, default base * (0.5, 1, 2), where base is
    the signed coefficient it was selected at (default steering.coef)."""
    from crl.envs.rollout import FixedFeature

    base = comps.steering.coef if base is None else base
    grid = cfg.coef_grid or [base * m for m in (0.5, 1.0, 2.0)]
    val = comps.splits[cfg.coef_split][: cfg.max_select_prompts]
    rows = []
    for c in grid:
        fixed = FixedFeature(feature)
        acc, wf = scores(rollout(comps, val, fixed, num_envs=cfg.num_envs, coef=_as_level0(comps, float(c))))
        rows.append(
            {
                "method": method,
                "stage": f"coef@{cfg.coef_split}",
                "feature": feature,
                "coef": float(c),
                "accuracy": acc,
                "well_formed": wf,
            }
        )
    return rows


def run_baselines(
    comps: Components,
    cfg: BaselineConfig | None = None,
    usage_features: list[int] | None = None,
    policy: Any = None,
) -> BaselineResult:
    """Every requested baseline on `cfg.split` (see the module docstring). `policy` is needed for "crl"."""
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

    if {"static", "corr"} & set(cfg.methods):
        sel = comps.splits[cfg.select_split][: cfg.max_select_prompts]
        acts, rewards, _ = record_activations(comps, sel, num_envs=cfg.num_envs)
        if "static" in cfg.methods:
            by_act = [int(f) for f in np.argsort(-acts.mean(axis=0), kind="stable")[: cfg.n_act]]
            by_use = [int(f) for f in (usage_features or []) if f >= 0][: cfg.n_usage]
            cands = list(dict.fromkeys(by_use + by_act))
            f, c, rows = select_static(comps, cands, cfg)
            fixed["static"] = (f, c)
            selection.extend(rows)
            chosen.update(static_feature=f, static_coef=c, static_candidates=cands)
        if "corr" in cfg.methods:
            r = correlation_ranking(acts, rewards)
            if np.all(np.isnan(r)):
                notes.append(
                    f"corr skipped: the unsteered {cfg.select_split} rewards do not vary "
                    f"(all {rewards[0] if len(rewards) else 'none'}), so no correlation is defined"
                )
            else:
                f = int(np.nanargmax(r))
                rows = select_coef(comps, f, cfg, "corr")
                selection.extend(rows)
                c = float(_best(rows, "coef")["coef"])
                fixed["corr"] = (f, c)
                chosen.update(corr_feature=f, corr_coef=c, corr_r=float(r[f]))

    deterministic_seeds = cfg.seeds if (cfg.repeat_deterministic or not comps.steering.greedy) else cfg.seeds[:1]
    episodes: dict[str, list[Episode]] = {}
    seeds: dict[str, list[int]] = {}
    for method in cfg.methods:
        if method in ("static", "corr") and method not in fixed:
            continue
        phase = str(Phase.baseline(method, cfg.split))
        run_seeds = cfg.seeds if method == "random" else deterministic_seeds
        for s in run_seeds:
            if method == "none":
                eps = rollout(comps, test, None, seed=s, num_envs=cfg.num_envs)
            elif method == "random":
                eps = rollout(comps, test, RandomFeature(comps.sae.d_sae, seed=s), seed=s, num_envs=cfg.num_envs)
            elif method == "crl":
                masker = comps.masker(for_eval=True)
                eps = rollout(comps, test, policy, seed=s, masker=masker, num_envs=cfg.num_envs)
            else:
                f, c = fixed[method]
                eps = rollout(comps, test, FixedFeature(f), seed=s, num_envs=cfg.num_envs, coef=_as_level0(comps, c))
            episodes.setdefault(phase, []).extend(eps)
            seeds.setdefault(phase, []).extend([s] * len(eps))
    return BaselineResult(episodes, seeds, pd.DataFrame(selection), chosen, notes)


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
    the selection table to analysis/baseline_selection.csv. Returns the phases written."""
    run = load_run(run_dir, include_train=False)
    have = set(run.phases)
    next_id = int(run.episodes["episode"].max()) + 1
    written = []
    for phase, episodes in result.episodes.items():
        if phase in have:
            continue
        inter, eps = [], []
        for seed in sorted(set(result.seeds[phase])):
            sel = [e for e, s in zip(episodes, result.seeds[phase], strict=True) if s == seed]
            i, e = episode_rows(sel, run.name, phase, first_episode=next_id, seed=seed, prompt_id=base_id)
            next_id += len(sel)
            inter += i
            eps += e
        append_rows(run_dir, inter, eps)
        written.append(phase)
    out = Path(run_dir) / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    if len(result.selection):
        result.selection.to_csv(out / "baseline_selection.csv", index=False)
    return written
