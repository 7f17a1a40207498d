"""`crl compare` section "Across seeds: which features the task relies on": the runs' top features, their
agreement, and the groups of features that do the same thing, against a density-matched null
(`crl.analysis.offline.agreement` defines each number). Shown when the runs share one SAE and one task."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from crl.analysis.offline.agreement import AgreementConfig, load_decoder, seed_agreement
from crl.analysis.offline.feature_effects import read_effects_record
from crl.analysis.report.cards import FeatureRefs
from crl.analysis.report.document import Report, para
from crl.backends.sae_store import find_sae, sae_dir, shipped_sae_dir
from crl.logs.reader import RunDir


def sae_directory(identity: str, model: str) -> Path | None:
    """The directory of the SAE named by a run's identity (shipped, CRL-built or disk), else None (a hub SAE)."""
    head = identity.split("|", 1)[0]
    kind, _, rest = head.partition(":")
    if kind == "shipped" and rest.startswith("layer"):
        return shipped_sae_dir(model, int(rest[5:]))
    if kind == "default" and rest.startswith("layer"):
        path = sae_dir(model, int(rest[5:]))
        return path if path.exists() else find_sae(model, int(rest[5:]))[0]
    if kind == "disk":
        return Path(rest)
    return None


def answer_effects(runs: list[RunDir]) -> dict[tuple[int, int], np.ndarray]:
    """(feature, sign) -> mean answer-token shift over the runs that measured it (feature_effects.json)."""
    acc: dict[tuple[int, int], list[np.ndarray]] = {}
    for run in runs:
        record = read_effects_record(run.path)
        for f, rows in (record or {}).get("features", {}).items():
            for r in rows:
                shift = r.get("answer_shift")
                if shift and float(r.get("level", 0)) != 0:
                    key = (int(f), 1 if float(r["level"]) > 0 else -1)
                    acc.setdefault(key, []).append(np.array([shift[k] for k in sorted(shift)], np.float64))
    return {k: np.mean(v, axis=0) for k, v in acc.items()}


def seeds_section(rep: Report, runs: list[RunDir], split: str | None, refs: FeatureRefs) -> str | None:
    """Adds the section; returns its headline sentence (None when the runs are not comparable)."""
    s = rep.section("Across seeds: which features the task relies on")
    tasks = {r.task for r in runs}
    if len(tasks) > 1:
        s.append(para(f"Skipped: the runs are of different tasks ({', '.join(sorted(tasks))})."))
        return None
    steps = {f"{r.name} (seed {r.info.seed})": r.steps_of(r.eval_phase(split)) for r in runs}
    where = sae_directory(runs[0].sae_identity, str(runs[0].info.model))
    decoder = load_decoder(str(where)) if where is not None and (where / "sae_weights.safetensors").exists() else None
    density = refs.cards.density if refs.cards is not None else None
    effects = answer_effects(runs)
    cfg = AgreementConfig()
    labels = None
    if refs.cards is not None:
        labels = {f: refs.label(f) for f in range(refs.cards.d_sae)}
    res = seed_agreement(steps, decoder, density, effects, labels, cfg)
    s.append(para(res.headline + "."))
    s.append(
        para(
            f"A run uses a signed feature (+ amplify, − suppress) when it takes ≥ {cfg.min_share:.0%} of the eval "
            f"decisions (top {cfg.top_k}). Features are grouped when their signed decoder directions have cosine ≥ "
            f"{cfg.min_cosine} or their measured effects on the answer tokens (feature_effects.json) point the same "
            f"way (cosine ≥ {cfg.min_effect_cosine}, each ≥ {cfg.min_effect} nats). The null replaces each run's "
            f"features with random ones of the same density decile ({cfg.n_null} draws)."
            + (
                ""
                if effects
                else " No run has answer-token effects (free-form task or not measured): grouping by "
                "decoder direction only."
            )
            + ("" if decoder is not None else " The SAE's decoder is not on disk (hub SAE): grouping by effect only.")
        )
    )
    top = refs.annotate(res.runs.assign(sign=res.runs["sign"].map({1: "+", -1: "−"})), link_rows=None)
    rep.add_table(s, "seed_features", top, **refs.table_kw())
    rep.add_table(s, "seed_groups", res.groups)
    rep.add_table(s, "seed_pairs", res.pairs)
    return res.headline


__all__ = ["answer_effects", "sae_directory", "seeds_section"]
