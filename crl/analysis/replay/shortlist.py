"""`crl train masking=shortlist`: the run's feature shortlist, picked before training from TRAIN prompts only.

`crl probe`'s oracle (crl/analysis/replay/oracle.py) on the first `masking.shortlist_prompts` train prompts, at the
run's layer, SAE, coefficient and levels: the unsteered model's answers through CRL's evaluator, then every level of
each prompt's candidate features (those masking=active offers there, with the run's `masking.threshold` and
`masking.top_k`, as `crl probe` does at its defaults; one-token multiple choice also scores the probe's
`oracle_static` features active on the most prompts on every prompt; free-form tasks: the first prompts whose
rollouts fit in the probe's `oracle_max_episodes`), and its greedy set cover of the prompts the unsteered model gets
wrong (`feature_shortlist`) keeps up to `masking.shortlist_k` features. Val and test prompts are never read, so the
run's checkpoint selection and its reported accuracy stay held out. Both passes print progress lines on stderr
(`[crl] shortlist oracle  96/256 episodes (37.5%) ... ETA`); the result line (`result_line`: the features and how
many of the wrong prompts they cover) goes to stdout.

The run then trains with exactly those features as masking=fixed: `resolve` returns them, `crl train` records
masking=fixed with them in config.yaml (so `crl eval`, `crl analyze`, `crl transfer`, `crl compare`, the random
baseline and a bare `resume=` see the same action set), and `<run>/shortlist.json` says how they were found. A resume
that still says masking=shortlist (a resume with overrides) reuses shortlist.json; it is never computed again for a
run that has one.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crl.errors import CRLError
from crl.logs import schema
from crl.logs.atomic import atomic_write_json

if TYPE_CHECKING:
    from crl.run.components import Components

SPLIT = "train"  # the only split a shortlist reads (val selects the checkpoint, test reports it)


def candidates(comps: Components) -> Components:
    """`comps` with the oracle's candidate masking: what masking=active offers at step 0 (the run's threshold and
    top_k; the shortlist's own features are what is being chosen)."""
    from crl.config import MaskingConfig

    m = comps.masking
    return dataclasses.replace(comps, masking=MaskingConfig(mode="active", threshold=m.threshold, top_k=m.top_k))


def train_shortlist(comps: Components) -> dict[str, Any]:
    """The shortlist record (module doc) of `comps` (its masking: mode=shortlist, with shortlist_k and
    shortlist_prompts) on the first train prompts: the oracle's `shortlist` fields (`features`, `new`, `cumulative`,
    `covered`, `n_wrong`, `labels`) plus the prompts it read (`split`, `n_prompts`, `prompt_ids`), the layer, the
    oracle's method and the wall seconds."""
    from crl.analysis.replay.oracle import oracle
    from crl.analysis.replay.probe import unsteered_pass
    from crl.config import ProbeConfig

    start = time.perf_counter()
    m = comps.masking
    cand = candidates(comps)
    examples = cand.splits[SPLIT][: m.shortlist_prompts]
    layer = cand.sae.hook.layer
    print(
        f"[crl] shortlist: the unsteered model, then every level of each prompt's candidate features, on the first "
        f"{len(examples)} {SPLIT} prompts at layer {layer} ...",
        file=sys.stderr,
        flush=True,
    )
    # Both phases print crl.progress lines on stderr: the oracle alone takes minutes on a real model.
    episodes, resid = unsteered_pass(cand, examples, [layer], f"shortlist: {SPLIT} prompts (no steering)")
    record = oracle(
        cand,
        examples,
        [ep.correct for ep in episodes],
        resid[layer],
        ProbeConfig.oracle_rows,
        ProbeConfig.oracle_max_episodes,
        ProbeConfig.oracle_static,
        progress="shortlist oracle",
        shortlist_k=m.shortlist_k,
    )
    n = int(record["n"])  # free-form: the first prompts whose rollouts fit
    return {
        **record["shortlist"],
        "split": SPLIT,
        "n_prompts": n,
        "shortlist_prompts": m.shortlist_prompts,
        "prompt_ids": [e.id for e in examples[:n]],
        "layer": layer,
        "hook": cand.sae.hook_name,
        "sae_identity": cand.sae.identity,
        "coef": cand.steering.coef,
        "coef_levels": list(cand.steering.coef_levels),
        "candidates": {"mode": "active", "threshold": m.threshold, "top_k": m.top_k},
        "method": record["method"],
        "seconds": round(time.perf_counter() - start, 2),
    }


def result_line(short: dict[str, Any]) -> str:
    """`[crl] shortlist (train, 64 prompts, 31 wrong): features [..] cover 29/31`.

    >>> result_line({"split": "train", "n_prompts": 8, "n_wrong": 4, "features": [5, 2], "covered": 4})
    '[crl] shortlist (train, 8 prompts, 4 wrong): features [5, 2] cover 4/4'
    """
    return (
        f"[crl] shortlist ({short['split']}, {short['n_prompts']} prompts, {short['n_wrong']} wrong): "
        f"features {list(short['features'])} cover {short['covered']}/{short['n_wrong']}"
    )


def check_cover(short: dict[str, Any]) -> None:
    """An empty shortlist is a one-line error that says why and what to change."""
    if short["features"]:
        return
    n, layer = short["n_prompts"], short["layer"]
    if not short["n_wrong"]:
        raise CRLError(
            f"masking=shortlist: the unsteered model answers all {n} {SPLIT} prompts it tried right at layer {layer}, "
            "so there is nothing for a shortlist to fix; train with another masking"
        )
    raise CRLError(
        f"masking=shortlist: no feature fixes any of the {short['n_wrong']} of {n} {SPLIT} prompts the unsteered "
        f"model gets wrong at layer {layer} (coef {short['coef']}, levels {short['coef_levels']}); try another "
        "steering.layer or steering.coef"
    )


def read(run_dir: Path) -> dict[str, Any]:
    """A run's shortlist.json; a damaged one is a one-line error."""
    path = Path(run_dir) / schema.SHORTLIST
    try:
        short = json.loads(path.read_text(encoding="utf-8"))
        features = short["features"]
        ok = isinstance(features, list) and features and all(isinstance(f, int) and f >= 0 for f in features)
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise CRLError(f"{path} is damaged (no list of feature ids); remove the run directory and train it again")
    return short


def resolve(comps: Components, run_dir: Path, resume: bool) -> list[int]:
    """The features a masking=shortlist run trains on: its stored shortlist.json when it has one (a resume, or a
    restart before the first checkpoint), else computed now and written atomically. Prints the result line."""
    m = comps.masking
    path = Path(run_dir) / schema.SHORTLIST
    if path.exists():
        short = read(run_dir)
        asked = {"shortlist_k": m.shortlist_k, "shortlist_prompts": m.shortlist_prompts}
        made = {"shortlist_k": short.get("k"), "shortlist_prompts": short.get("shortlist_prompts")}
        if made != asked:
            diff = ", ".join(f"masking.{k}={made[k]} (now {asked[k]})" for k in asked if made[k] != asked[k])
            raise CRLError(
                f"{path} was made with {diff}; resume with `crl train resume={run_dir}` alone, or start a new run"
            )
        print(f"{result_line(short)} (stored in {path})", flush=True)
        return [int(f) for f in short["features"]]
    if resume:
        raise CRLError(
            f"resume={run_dir} has no {schema.SHORTLIST}: it was not trained with masking=shortlist; resume with "
            f"`crl train resume={run_dir}` alone"
        )
    short = train_shortlist(comps)
    check_cover(short)
    atomic_write_json(path, short)
    print(result_line(short), flush=True)
    return list(short["features"])
