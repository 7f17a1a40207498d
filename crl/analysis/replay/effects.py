"""Effects of single features, measured with the model.

- `forced_feature_effects`: for each feature f, the prompts where the policy chose f (from the eval
  intervention rows) are re-run forcing f at exactly those token steps, at the level the policy chose there, and
  no steering elsewhere, and
  compared with no steering on the same prompts: effect = accuracy(forced) - accuracy(none), with the
  paired bootstrap CI / p-value and the exact McNemar p of `stats`. Joinable on `feature` with
  `features.feature_usage` (written to analysis/effects.csv).
- `side_effects`: on neutral prompts, KL(P_unsteered || P_steered) of the next-token distribution when
  feature f is added at the hook (steering as in the environment: raw c * W_dec[f], or relative
  c * ||x|| * unit(W_dec[f])). positions="last" steers only the last prompt position and reads the next
  token (one CRL decision); positions="all" steers every position and averages the KL over positions (a
  static steering vector, an upper bound). Also the share of positions whose argmax token changes.
- `coef_sweep`: accuracy and well-formed rate of the trained policy per coefficient (coef 0 = no
  steering), stored as summary.json "coef_sweep" for `layers.coef_tolerance`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from crl.analysis.offline.stats import StatsConfig, mcnemar_exact, paired_bootstrap
from crl.analysis.replay import announce
from crl.analysis.replay.runner import action_id, noop_action, rollout, scores
from crl.errors import CRLError
from crl.logs import schema
from crl.logs.schema import NO_STEER

if TYPE_CHECKING:
    from crl.run.components import Components

NEUTRAL_PROMPTS = (
    "The weather today is",
    "She opened the door and",
    "In the morning, the market",
    "The history of the city begins",
    "My favourite kind of music is",
    "The train left the station at",
    "A good way to start the day is",
    "The museum is closed on",
)


@dataclass
class EffectConfig:
    top_k: int = 10  # features (by usage) whose forced effect is measured
    min_prompts: int = 2  # skip features chosen on fewer prompts
    positions: str = "last"  # side effects: last | all
    num_envs: int | None = None


def forced_feature_effects(
    comps: Components,
    steps: pd.DataFrame,
    cfg: EffectConfig | None = None,
    stats_cfg: StatsConfig | None = None,
    features: list[int] | None = None,
) -> pd.DataFrame:
    """Paired effect of forcing each feature where the policy chose it vs no steering (module docstring).

    `steps` are the eval intervention rows (prompt_id, step, feature) of the trained policy, e.g.
    `load_run(d).steps_of("eval:test")`. Prompt ids must be in `comps.splits`.
    """
    cfg = cfg or EffectConfig()
    if not comps.steering.allow_noop:
        raise CRLError("forced-feature effects compare with no steering; they need steering.allow_noop=true")
    by_id = {e.id: e for split in comps.splits.values() for e in split}
    steered = steps[steps["feature"] != NO_STEER]
    if features is None:
        features = [int(f) for f in steered["feature"].value_counts().index[: cfg.top_k]]
    missing = sorted(set(steps["prompt_id"]) - set(by_id))
    if missing:
        raise CRLError(
            f"{len(missing)} prompt ids of the eval rows (e.g. '{missing[0]}') are not in the loaded "
            "splits; rebuild the components with the run's config"
        )
    noop = noop_action(comps)
    rows = []
    todo = [(f, steered[steered["feature"] == f]) for f in features]
    todo = [(f, chosen, sorted(set(chosen["prompt_id"]))) for f, chosen in todo]
    todo = [(f, chosen, pids) for f, chosen, pids in todo if len(pids) >= cfg.min_prompts]
    n = sum(len(pids) for _, _, pids in todo)
    size = f"{len(todo)} features × (forced + no steering) on the {n} prompts where the policy chose them"
    with announce.phase("forced-feature effects", size, 2 * n):
        for i, (f, chosen, pids) in enumerate(todo, 1):
            scripts = {}
            for pid, g in chosen.groupby("prompt_id"):
                at = {int(s): action_id(comps, f, c) for s, c in zip(g["step"], g["coef"], strict=True)}  # its level
                scripts[pid] = [at.get(t, noop) for t in range(max(at) + 1)]
            examples = [by_id[p] for p in pids]
            item = f"feature {f} ({i}/{len(todo)})"
            forced = rollout(comps, examples, None, num_envs=cfg.num_envs, scripts=scripts, progress=f"{item} forced")
            none = rollout(comps, examples, None, num_envs=cfg.num_envs, progress=f"{item} without steering")
            a = np.array([e.correct for e in forced], float)
            b = np.array([e.correct for e in none], float)
            test = paired_bootstrap(a, b, stats_cfg)
            rows.append(
                {
                    "feature": int(f),
                    "n_prompts": len(pids),
                    "forced_acc": a.mean(),
                    "none_acc": b.mean(),
                    "effect": test.diff,
                    "effect_lo": test.lo,
                    "effect_hi": test.hi,
                    "effect_p": test.p,
                    "effect_mcnemar_p": mcnemar_exact(a.astype(bool), b.astype(bool)).p,
                }
            )
    return pd.DataFrame(
        rows,
        columns=[
            "feature",
            "n_prompts",
            "forced_acc",
            "none_acc",
            "effect",
            "effect_lo",
            "effect_hi",
            "effect_p",
            "effect_mcnemar_p",
        ],
    )


def side_effects(
    comps: Components,
    features: list[int],
    prompts: tuple[str, ...] | list[str] = NEUTRAL_PROMPTS,
    coef: float | None = None,
    positions: str = "last",
) -> pd.DataFrame:
    """KL of the next-token distribution on neutral prompts, steered vs not (module docstring).

    Columns feature, coef, kl_mean, kl_max, top1_changed, n_positions.
    """
    import torch

    from crl.backends.hooks import residual_hook

    if positions not in ("last", "all"):
        raise CRLError(f"positions='{positions}' is unknown; use last or all")
    if not prompts:
        raise CRLError("side effects need at least one neutral prompt")
    lm, sae = comps.lm, comps.sae
    c = float(comps.steering.coef if coef is None else coef)
    relative = comps.steering.coef_mode == "relative"
    dirs = sae.directions(unit=relative).to(lm.device, torch.float32)
    enc = lm.tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=True).to(lm.device)
    valid = enc["attention_mask"].bool()
    if positions == "last":  # left padding: the last column is every prompt's last token
        valid = torch.zeros_like(valid)
        valid[:, -1] = True

    @torch.no_grad()
    def logprobs(delta: torch.Tensor | None) -> torch.Tensor:
        def add(resid: torch.Tensor) -> torch.Tensor:
            d = delta.to(resid.dtype)
            scale = resid.float().norm(dim=-1, keepdim=True).to(resid.dtype) if relative else 1.0
            return resid + (c * scale * d) * valid[..., None].to(resid.dtype)

        if delta is None:
            return torch.log_softmax(lm.model(**enc).logits.float(), dim=-1)
        with residual_hook(lm.layers, sae.hook_name, add):
            return torch.log_softmax(lm.model(**enc).logits.float(), dim=-1)

    where = "the last position" if positions == "last" else "every position"
    size = f"{len(features)} features, one forward of {len(prompts)} neutral prompts each (steering {where})"
    with announce.phase("side effects", size, len(features) + 1, unit="forwards") as ph:
        ph.item("no steering")
        base = logprobs(None)
        ph.update(1)
        rows = []
        for f in features:
            if not 0 <= int(f) < sae.d_sae:
                raise CRLError(f"feature {f} is out of range for an SAE with d_sae={sae.d_sae}")
            ph.item(f"feature {f}")
            lp = logprobs(dirs[int(f)])
            kl = (base.exp() * (base - lp)).sum(-1)[valid]
            changed = (base.argmax(-1) != lp.argmax(-1))[valid].float()
            rows.append(
                {
                    "feature": int(f),
                    "coef": c,
                    "kl_mean": float(kl.mean()),
                    "kl_max": float(kl.max()),
                    "top1_changed": float(changed.mean()),
                    "n_positions": int(valid.sum()),
                }
            )
            ph.update(1)
    return pd.DataFrame(rows)


def coef_sweep(
    comps: Components, policy: Any, coefs: list[float], split: str = "val", num_envs: int | None = None
) -> list[dict[str, float]]:
    """[{coef, accuracy, well_formed_rate}] of `policy` per coefficient; coef 0 runs without steering."""
    if split not in comps.splits:
        raise CRLError(f"split '{split}' was not loaded; build the components with it")
    examples = comps.splits[split]
    out = []
    grid = sorted({0.0, *[float(x) for x in coefs]})
    size = f"{len(grid)} coefficients ({', '.join(f'{c:g}' for c in grid)}) × {len(examples)} {split} prompts"
    with announce.phase("coefficient sweep", size, len(grid) * len(examples)):
        for i, c in enumerate(grid, 1):
            item = f"coef {c:g} ({i}/{len(grid)})" + (" = no steering" if c == 0.0 else "")
            if c == 0.0:
                eps = rollout(comps, examples, None, num_envs=num_envs, progress=item)
            else:
                masker = comps.masker(for_eval=True)
                eps = rollout(comps, examples, policy, masker=masker, num_envs=num_envs, progress=item, coef=c)
            acc, wf = scores(eps)
            out.append({"coef": c, "accuracy": acc, "well_formed_rate": wf})
    return out


def write_coef_sweep(run_dir: str | Path, sweep: list[dict[str, float]]) -> None:
    """Store the sweep as summary.json "coef_sweep" (atomic rewrite; other keys are kept)."""
    from crl.logs.atomic import atomic_write_json

    path = Path(run_dir) / schema.SUMMARY
    if not path.exists():
        raise CRLError(f"run '{run_dir}' has no {schema.SUMMARY}; it is not finished, so no sweep is stored")
    summary = json.loads(path.read_text(encoding="utf-8"))
    summary["coef_sweep"] = sweep
    atomic_write_json(path, summary)


def write_tables(run_dir: str | Path, **tables: pd.DataFrame) -> list[Path]:
    """Save replay tables where `crl analyze` looks for them: analysis/<name>.csv (effects, branch_points,
    side_effects)."""
    out = Path(run_dir) / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, df in tables.items():
        p = out / f"{name}.csv"
        df.to_csv(p, index=False)
        paths.append(p)
    return paths
