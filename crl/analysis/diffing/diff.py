"""`diff_models`: which SAE features a fine-tune (GRPO) moved, and whether CRL picked them; every table in one call.

Inputs are two frozen models of one architecture and tokenizer (base, tuned), the SAE, the task and its prompts,
unrelated control text, and optionally CRL's eval intervention rows (from the CRL run on the same model, SAE and
task). Steps: the first pass (`measure`), the rankings and the SAE's fit (`rankings`), GRPO's gain, concordance with
CRL (`concordance`), the causal checks (`causal`), side effects, then the verdict (`verdict`). `write_result` writes
the tables (CSV) and the summary (JSON); the HTML report is `crl.analysis.report.diffing`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from crl.analysis.diffing import causal, concordance, rankings
from crl.analysis.diffing.forward import correct, margins, task_inputs
from crl.analysis.diffing.measure import Measured, measure
from crl.analysis.diffing.verdict import verdict
from crl.analysis.offline.agreement import DensityMatcher
from crl.analysis.offline.stats import StatsConfig, mcnemar_exact, paired_bootstrap
from crl.analysis.replay.effects import NEUTRAL_PROMPTS
from crl.errors import CRLError
from crl.logs.atomic import atomic_write_json

if TYPE_CHECKING:
    from crl.backends.model import FrozenLM
    from crl.backends.sae import LoadedSAE
    from crl.envs.tasks.base import Example, Task

SUMMARY_FILE = "rl_compare.json"
TABLES = ("features", "crl_usage", "overlap", "agreement", "causal")  # <name>.csv in the out dir


@dataclass
class DiffConfig:
    ks: list[int] = field(default_factory=lambda: [5, 10, 20, 50])  # overlap@k and the causal checks' set sizes
    n_null: int = 1000  # density-matched draws of the concordance nulls (cheap: no model)
    n_causal_null: int = 10  # random feature sets per causal check (one last-token pass over the prompts each)
    n_boot: int = 2000
    n_perm: int = 2000  # sign-flip permutations of the global shift test
    alpha: float = 0.05
    ev_margin: float = rankings.EV_MARGIN
    chunk_size: int = 64  # prompts per forward
    seed: int = 0


@dataclass
class CRLUsage:
    """What CRL did: its eval intervention rows (`RunDir.steps_of(eval phase)`) and its steering mode."""

    steps: pd.DataFrame
    coef_mode: str = "relative"
    name: str = "crl"


@dataclass
class DiffResult:
    summary: dict[str, Any]
    features: pd.DataFrame
    crl_usage: pd.DataFrame | None = None
    overlap: pd.DataFrame | None = None
    agreement: pd.DataFrame | None = None
    causal: pd.DataFrame | None = None
    delta: np.ndarray | None = None  # the mean residual shift (in memory only)

    @property
    def verdict(self) -> list[str]:
        return list(self.summary["verdict"])

    def tables(self) -> dict[str, pd.DataFrame]:
        return {name: getattr(self, name) for name in TABLES if getattr(self, name) is not None}


def control_sequences(
    tokenizer: Any, texts: tuple[str, ...] | list[str] = NEUTRAL_PROMPTS, token_rows: Any = None, n_rows: int = 16
) -> list[list[int]]:
    """Unrelated text as token-id sequences: `texts` (the tokenizer's special tokens added) and the first `n_rows`
    rows of `token_rows` (e.g. the feature cards' held-out text, `FeatureCards.tokens`)."""
    seqs = [list(tokenizer(t, add_special_tokens=True)["input_ids"]) for t in texts]
    if token_rows is not None:
        seqs += [list(map(int, r)) for r in np.asarray(token_rows)[:n_rows]]
    return seqs


def check_pair(base: FrozenLM, tuned: FrozenLM, sae: LoadedSAE) -> None:
    """One-line errors when the two models cannot be compared token by token, or the SAE does not fit them."""
    from crl.backends.sae import check_compatible

    if base.d_model != tuned.d_model or base.n_layers != tuned.n_layers:
        raise CRLError(
            f"the tuned model ({tuned.name}: {tuned.n_layers} layers x {tuned.d_model}) is not a fine-tune of the base "
            f"model ({base.name}: {base.n_layers} layers x {base.d_model}); compare a model with its own fine-tune"
        )
    if len(base.tokenizer) != len(tuned.tokenizer):
        raise CRLError(
            f"the tuned model's tokenizer has {len(tuned.tokenizer)} tokens, the base model's {len(base.tokenizer)}: "
            "teacher forcing needs one tokenizer"
        )
    check_compatible(sae, base.d_model, base.n_layers, base.name)


def diff_models(
    base: FrozenLM,
    tuned: FrozenLM,
    sae: LoadedSAE,
    task: Task,
    examples: list[Example],
    control: list[list[int]],
    crl: CRLUsage | None = None,
    density: np.ndarray | None = None,
    cfg: DiffConfig | None = None,
    describe: Callable[[int], str] = str,
    progress: bool = False,
) -> DiffResult:
    """Everything in the module docstring. `density`: each feature's firing rate for the nulls (e.g. the cards'
    density); None measures it on the control text with the base model. `describe` names features in the verdict;
    `progress` prints plain progress lines on stderr for the model passes."""
    cfg = cfg or DiffConfig()
    if not cfg.ks or min(cfg.ks) < 1:
        raise CRLError(f"ks={cfg.ks} must hold set sizes >= 1, e.g. [5, 10, 20, 50]")
    check_pair(base, tuned, sae)
    stats = StatsConfig(n_boot=cfg.n_boot, alpha=cfg.alpha, seed=cfg.seed)
    texts, special, options = task_inputs(task, base, examples)
    m = measure(base, tuned, sae, texts, special, options, control, cfg.chunk_size, progress)
    decoder = sae.directions().detach().float().cpu().numpy().astype(np.float64)
    table = rankings.feature_table(
        m.a_base, m.a_tuned, decoder, (m.h_tuned - m.h_base).mean(0), m.grad, m.a_control_base, m.a_control_tuned, stats
    )
    shift = rankings.global_shift(
        m.h_base,
        m.h_tuned,
        m.control.h_base.numpy().astype(np.float64),
        m.control.h_tuned.numpy().astype(np.float64),
        decoder,
        table["shift"].to_numpy(),
        cfg.n_perm,
        cfg.seed,
    )
    delta = shift.pop("delta")
    top_feature = int(table.sort_values("rank_shift")["feature"].iloc[0])
    shift["n_moved"] = int((table["shift_q"] < cfg.alpha).sum())
    shift["cos_delta_top_shift"] = rankings.cosine(delta, decoder[top_feature])
    keys = ("task_base", "task_tuned", "control_base", "control_tuned")
    fit = rankings.fit_check({k: m.explained_variance(k) for k in keys}, cfg.ev_margin)
    density_source = "given" if density is not None else "control text (base model)"
    if density is None:
        density = (m.a_control_base > 0).mean(axis=0)
    matcher = DensityMatcher(np.asarray(density, dtype=float))
    summary: dict[str, Any] = {
        "settings": {
            **asdict(cfg),
            "base": base.name,
            "tuned": tuned.name,
            "task": task.name,
            "sae_identity": sae.identity,
            "hook": sae.hook_name,
            "layer": sae.hook.layer,
            "d_sae": sae.d_sae,
            "n_prompts": m.n,
            "n_control_tokens": len(m.control.kl),
            "density": density_source,
        },
        "shift": shift,
        "fit": fit,
        "gain": _gain(m, stats),
        "side_effects": {
            "kl_control_mean": float(m.control.kl.mean()),
            "kl_control_max": float(m.control.kl.max()),
            "top1_changed_control": float(m.control.top1_changed.mean()),
            "kl_task_mean": float(m.kl_task.mean()),
            "kl_task_max": float(m.kl_task.max()),
        },
        "steering_cosine": None,
        "crl": None,
    }
    result = DiffResult(summary, table, delta=delta)
    crl_features = None
    if crl is not None:
        usage = concordance.crl_usage(crl.steps)
        result.crl_usage = usage
        crl_features = [int(f) for f in usage["feature"]]
        result.overlap = concordance.overlap_table(usage, table, matcher, cfg.ks, cfg.n_null, cfg.seed)
        result.agreement = concordance.agreement_table(usage, table, max(cfg.ks))
        summary["steering_cosine"] = concordance.steering_cosine(
            crl.steps, decoder, crl.coef_mode, delta, matcher, cfg.n_null, cfg.seed
        )
        summary["crl"] = {"name": crl.name, "coef_mode": crl.coef_mode, "decisions": len(crl.steps)}
        summary["crl"]["features_used"] = len(usage)
    if options is not None:
        ivs = causal.interventions(m, table, decoder, crl_features, matcher, cfg.ks, cfg.n_causal_null, cfg.seed)
        result.causal = causal.causal_table(m, ivs, causal.run_interventions(m, ivs, progress), stats)
    summary["warnings"] = [fit["warning"]] if fit["warning"] else []
    summary["verdict"] = verdict(summary, table, result.overlap, result.causal, describe)
    return result


def _gain(m: Measured, stats: StatsConfig) -> dict[str, float] | None:
    """GRPO's gain on the prompts, from the option logits: accuracy and margin, base -> tuned, paired tests."""
    if m.options is None:
        return None
    gold = m.options.gold
    ob, ot = m.option_logits["base"], m.option_logits["tuned"]
    cb, ct = correct(ob, gold), correct(ot, gold)
    mb, mt = margins(ob, gold), margins(ot, gold)
    acc, mar = paired_bootstrap(ct.astype(float), cb.astype(float), stats), paired_bootstrap(mt, mb, stats)
    return {
        "acc_base": float(cb.mean()),
        "acc_tuned": float(ct.mean()),
        "acc_diff": acc.diff,
        "acc_lo": acc.lo,
        "acc_hi": acc.hi,
        "acc_p": acc.p,
        "mcnemar_p": mcnemar_exact(ct, cb).p,
        "margin_base": float(mb.mean()),
        "margin_tuned": float(mt.mean()),
        "margin_diff": mar.diff,
        "margin_lo": mar.lo,
        "margin_hi": mar.hi,
        "margin_p": mar.p,
    }


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if np.isnan(x) else float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def write_result(result: DiffResult, out: str | Path) -> list[Path]:
    """The tables as <out>/<name>.csv and the summary (with the verdict) as <out>/rl_compare.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, df in result.tables().items():
        path = out / f"{name}.csv"
        df.to_csv(path, index=False)
        paths.append(path)
    atomic_write_json(out / SUMMARY_FILE, _jsonable(result.summary))
    return [*paths, out / SUMMARY_FILE]


def read_result(out: str | Path) -> DiffResult:
    """A result written by `write_result`."""
    out = Path(out)
    path = out / SUMMARY_FILE
    if not path.exists():
        raise CRLError(f"'{out}' holds no {SUMMARY_FILE}; write it with `crl rl-compare`")
    summary = json.loads(path.read_text(encoding="utf-8"))
    text = {"features": str, "shared": str}  # lists of feature ids, even when a list holds one id
    tables = {n: pd.read_csv(out / f"{n}.csv", dtype=text) if (out / f"{n}.csv").exists() else None for n in TABLES}
    return DiffResult(summary, **tables)
