"""`crl rl-compare`'s inputs: a CRL run and a GRPO run, checked against each other before anything loads (`check_runs`),
then the models, SAE, task, prompts, control text and CRL's usage they name (`compare_runs`).

Bad input is one `CRLError` line before any model loads: a directory that is not the run it should be (a `crl train`
run for crl_run, a `crl grpo` run for grpo_run), a run that failed or has not finished (no summary.json; for GRPO no
tuned weights in model/), a CRL run without eval decisions, and two runs of different models, SAEs, tasks, task seeds
or layers (`RunInfo.IDENTITY_KEYS`): their feature ids or prompts would not mean the same thing.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crl.errors import CRLError
from crl.logs import schema
from crl.logs.reader import RunDir, load_run
from crl.logs.schema import RunInfo

if TYPE_CHECKING:
    from crl.analysis.diffing.diff import DiffResult
    from crl.analysis.report.cards import FeatureRefs
    from crl.backends.model import TunedWeights
    from crl.config import RLCompareConfig

GRPO_METHOD = "grpo"  # run.json "method" of a `crl grpo` run (crl/run/grpo.py)
OUT_SUBDIR = "rl_compare"


@dataclass
class RunPair:
    crl: RunDir
    grpo_dir: Path
    grpo: RunInfo
    weights: TunedWeights
    phase: str  # CRL's eval phase whose decisions are its usage


def run_method(run_dir: Path) -> str | None:
    """run.json's "method" ("grpo" for a `crl grpo` run; None for a `crl train` run or no readable run.json)."""
    try:
        data = json.loads((run_dir / schema.RUN_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("method") if isinstance(data, dict) else None


def check_grpo_run(g: Path, name: str) -> RunInfo:
    """The run.json of a finished `crl grpo` run at `g`, or one CRLError line (`name` says which argument it was): not
    a run directory, not a GRPO run, failed, not finished."""
    if not (g / schema.RUN_JSON).exists():
        raise CRLError(f"{name} is not a `crl grpo` run directory (no {schema.RUN_JSON})")
    info = RunInfo.read(g)  # not a run directory: one line
    if run_method(g) != GRPO_METHOD:
        raise CRLError(f"{name} is not a `crl grpo` run (its run.json has no method: grpo)")
    if (g / schema.FAILED).exists():
        raise CRLError(f"{name} failed (it has {schema.FAILED}); fix it and `crl grpo resume={g}`")
    if not (g / schema.SUMMARY).exists():
        raise CRLError(f"{name} has not finished (no {schema.SUMMARY}); let it finish or `crl grpo resume={g}`")
    return info


def check_comparable(infos: Mapping[str, RunInfo]) -> None:
    """Runs (name -> run.json) of one model, SAE, task, task seed and layer (`RunInfo.IDENTITY_KEYS`; a key a run
    leaves out is not compared), or one CRLError line naming the first run that differs from the first and how."""
    items = list(infos.items())
    if not items:
        return
    a, first = items[0][0], items[0][1].identity()
    for b, info in items[1:]:
        other = info.identity()
        keys = RunInfo.IDENTITY_KEYS
        diff = [k for k in keys if first[k] is not None and other[k] is not None and first[k] != other[k]]
        if diff:
            raise CRLError(
                f"{a} and {b} are not comparable: "
                + "; ".join(f"{k}: {a} has {first[k]!r}, {b} {other[k]!r}" for k in diff)
                + "; compare runs of one model, SAE (steering.layer) and task"
            )


def check_runs(crl_run: str | None, grpo_run: str | None, split: str | None = None) -> RunPair:
    """Both runs, read and checked without loading a model (module docstring)."""
    if not crl_run or not grpo_run:
        raise CRLError(
            "crl rl-compare needs crl_run=<a `crl train` run directory> grpo_run=<a `crl grpo` run directory>"
        )
    g = Path(grpo_run).expanduser()
    if not (g / schema.RUN_JSON).exists():
        raise CRLError(f"grpo_run={grpo_run} is not a `crl grpo` run directory (no {schema.RUN_JSON})")
    if run_method(Path(crl_run).expanduser()) == GRPO_METHOD:
        raise CRLError(f"crl_run={crl_run} is a `crl grpo` run; pass a `crl train` run as crl_run and this as grpo_run")
    crl = load_run(crl_run, include_train=False)  # not a run, failed, unfinished: one line each
    info = check_grpo_run(g, f"grpo_run={grpo_run}")  # not GRPO, failed, unfinished: one line each
    from crl.backends.model import find_weights  # imports torch: after the cheap checks

    weights = find_weights(g)  # no model/ (not finished) or no weights in it: one line
    check_comparable({"crl_run": crl.info, "grpo_run": info})
    phases = [p for p in crl.phases if p.startswith("eval:")]
    if not phases:
        raise CRLError(f"crl_run={crl_run} has no eval decisions; run `crl eval run_dir={crl_run}` first")
    phase = f"eval:{split}" if split and f"eval:{split}" in phases else crl.eval_phase()
    if crl.steps_of(phase).empty:
        raise CRLError(f"crl_run={crl_run} logged no decisions in phase {phase}; re-run `crl eval` on it")
    return RunPair(crl, g, info, weights, phase)


def default_out(pair: RunPair) -> Path:
    """<grpo_run>/rl_compare/<crl run directory's name>: one folder per CRL run compared with this GRPO run."""
    return pair.grpo_dir / OUT_SUBDIR / pair.crl.path.name


def compare_runs(
    cfg: RLCompareConfig, progress: bool = True, pair: RunPair | None = None
) -> tuple[DiffResult, RunPair, FeatureRefs]:
    """Check the runs (unless `pair` holds them checked), then load the base model, SAE and task from the CRL run's
    config, the tuned model from the GRPO run's weights, and diff them on the first `cfg.n` prompts of `cfg.split`
    (`diff_models`)."""
    from crl.analysis.diffing.diff import CRLUsage, DiffConfig, control_sequences, diff_models
    from crl.analysis.replay.runner import load_components
    from crl.analysis.report.cards import FeatureRefs
    from crl.backends.model import load_model
    from crl.run.components import saved_config

    pair = pair or check_runs(cfg.crl_run, cfg.grpo_run, cfg.split)
    comps = load_components(pair.crl.path)  # base model, SAE, task, splits; checked against the run's run.json
    if cfg.split not in comps.splits:
        raise CRLError(f"split '{cfg.split}' was not loaded from crl_run={cfg.crl_run}")
    tuned = load_model(dataclasses.replace(saved_config(pair.crl.path).model, weights=str(pair.grpo_dir)))
    refs = FeatureRefs.of(pair.crl)
    cards = refs.cards
    control = control_sequences(
        comps.lm.tokenizer, token_rows=cards.tokens if cards is not None else None, n_rows=cfg.control_rows
    )
    steps = pair.crl.steps_of(pair.phase)
    usage = CRLUsage(steps, pair.crl.info.coef_mode or comps.steering.coef_mode, pair.crl.name)
    dcfg = DiffConfig(
        ks=list(cfg.ks),
        n_null=cfg.n_null,
        n_causal_null=cfg.n_causal_null,
        n_boot=cfg.n_boot,
        chunk_size=cfg.chunk_size,
        seed=cfg.seed,
    )
    examples = comps.splits[cfg.split][: cfg.n]
    density = cards.density if cards is not None else None
    result = diff_models(
        comps.lm, tuned, comps.sae, comps.task, examples, control, usage, density, dcfg, refs.describe, progress
    )
    result.summary["settings"].update(_run_settings(pair, cfg))
    return result, pair, refs


def _run_settings(pair: RunPair, cfg: RLCompareConfig) -> dict[str, Any]:
    return {
        "tuned": f"{pair.grpo.run} (GRPO, {pair.weights.kind} weights)",
        "crl_run": str(pair.crl.path),
        "grpo_run": str(pair.grpo_dir),
        "tuned_weights": str(pair.weights.dir),
        "weights_kind": pair.weights.kind,
        "split": cfg.split,
        "crl_phase": pair.phase,
    }
