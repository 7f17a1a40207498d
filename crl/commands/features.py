"""`crl features show|build|index|export`: what a feature of the SAE in use is (crl/cards).

    crl features show 1398                    # the card of feature 1398 in the terminal
    crl features show 652 steering.layer=6    # the SAE of another layer (the same groups as `crl train`)
    crl features show 1398 run_dir=runs/<run> # plus what steering with it did in that run (the run's SAE)
    crl features build [force=true]           # compute and cache the cards when none are shipped or cached
    crl features index [out=PATH]             # every feature in one HTML page; index.html#feature-1398 opens one
    crl features export 1398 > 1398.json      # one card as Neuronpedia JSON

The SAE is the one `crl train` would use with the same `model`, `sae` and `steering.layer`. Where its cards ship
with it (the default model's layers 6, 15, 24) or are cached, nothing heavy runs: the SAE is identified from its
files (`crl_identity.json`, `cfg.json`, the decoder's hash) without torch or the model. Otherwise the model and
the SAE load and the cards are built once (minutes; progress on stderr) and cached.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig

from crl.config import DEFAULT_MODEL_NAME, load
from crl.config.apps import (
    FeaturesBuildConfig,
    FeaturesConfig,
    FeaturesExportConfig,
    FeaturesIndexConfig,
    FeaturesShowConfig,
)
from crl.errors import CRLError, exit_on_error
from crl.paths import CONF_DIR  # absolute: a relative config_path is resolved as a Python package

if TYPE_CHECKING:
    from crl.cards.store import FeatureCards


@dataclass
class SAEFiles:
    """What the SAE's own files say about it, read without torch."""

    identity: str | None  # None: known only once loaded (a pretrained SAE from the hub)
    model_name: str  # the model name cards are kept under (as `load_model` names it)
    d_sae: int | None
    what: str  # for messages, e.g. "the shipped SAE of layer 15"


def _read_cfg(path: Path) -> tuple[str, int]:
    """(hook name, d_sae) from sae-lens' cfg.json."""
    from crl.backends.sae_store import SAE_CONFIG_FILE

    try:
        cfg = json.loads((path / SAE_CONFIG_FILE).read_text())
        hook = (cfg.get("metadata") or {}).get("hook_name") or cfg["hook_name"]
        return str(hook), int(cfg["d_sae"])
    except (OSError, ValueError, KeyError, TypeError):
        raise CRLError(f"the SAE at {path} has no readable {SAE_CONFIG_FILE}; rebuild or re-save it") from None


def _decoder_sha1(path: Path) -> str | None:
    """`crl.backends.sae.decoder_sha1` of the decoder as stored (float32 bytes); None when unreadable. A loader
    that changes the decoder gives another hash: the cards are then simply not found here and the slow path runs."""
    import numpy as np
    from safetensors.numpy import load_file

    try:
        w_dec = load_file(str(path / "sae_weights.safetensors"))["W_dec"]
    except (OSError, ValueError, KeyError):
        return None
    return hashlib.sha1(np.ascontiguousarray(w_dec.astype(np.float32)).tobytes()).hexdigest()


def sae_files(cfg: FeaturesConfig) -> SAEFiles:
    """Identify the SAE of `cfg` from its files (module docstring); a layer with no SAE is a one-line error."""
    from crl.backends.sae_store import IDENTITY_FILE, find_sae, model_cache_name, shipped_layers

    sae = cfg.sae
    if sae.source == "default":
        layer = cfg.steering.layer  # as in `crl train`: the default SAE is the one of the steered layer
        if cfg.model.source != "default":
            raise CRLError(
                "sae=default is the SAE for the offline default model; with another model use sae=pretrained "
                "or sae=disk"
            )
        path, kind = find_sae(DEFAULT_MODEL_NAME, layer)
        if kind is None:
            shipped = ", ".join(map(str, shipped_layers())) or "none"
            raise CRLError(
                f"no SAE for steering.layer={layer}: {DEFAULT_MODEL_NAME} ships SAEs for layers {shipped} and none "
                f"is built for {layer}; pick one of those or build one with `crl sae build sae.layer={layer}`"
            )
        hook, d_sae = _read_cfg(path)
        if kind == "shipped":
            try:
                recorded = json.loads((path / IDENTITY_FILE).read_text())
            except (OSError, ValueError):
                raise CRLError(f"the shipped SAE at {path} has no readable {IDENTITY_FILE}; reinstall crl") from None
            sha = str(recorded.get("W_dec_sha1", ""))
            identity = recorded.get("sae_identity") or f"shipped:layer{layer}|{hook}|d_sae={d_sae}|W_dec={sha[:12]}"
            return SAEFiles(identity, DEFAULT_MODEL_NAME, d_sae, f"the shipped SAE of layer {layer}")
        sha = _decoder_sha1(path)
        identity = f"default:layer{layer}|{hook}|d_sae={d_sae}|W_dec={sha[:12]}" if sha else None
        return SAEFiles(identity, DEFAULT_MODEL_NAME, d_sae, f"the built SAE of layer {layer} ({path})")
    model_name = model_cache_name(cfg.model)
    if sae.source == "disk":
        path = Path(sae.path or "").expanduser()
        hook, d_sae = _read_cfg(path)
        sha = _decoder_sha1(path)
        identity = f"disk:{path.resolve()}|{hook}|d_sae={d_sae}|W_dec={sha[:12]}" if sha else None
        return SAEFiles(identity, model_name, d_sae, f"the SAE at {path}")
    # pretrained: its decoder (so its identity) is known once downloaded
    return SAEFiles(None, model_name, None, f"the SAE {sae.release}/{sae.sae_id}")


def _check_feature(feature: int | None, d_sae: int | None, command: str) -> int:
    if feature is None:
        raise CRLError(f"which feature? pass its id: `crl features {command} 1398` (or feature=1398)")
    if d_sae is not None and not 0 <= feature < d_sae:
        raise CRLError(f"feature={feature} is out of range: this SAE has features 0..{d_sae - 1}")
    return int(feature)


def load_or_build_cards(
    cfg: FeaturesConfig, feature: int | None = None, force: bool = False, command: str = ""
) -> tuple[FeatureCards, bool]:
    """(the cards of `cfg`'s SAE, whether they were built now): shipped or cached ones without torch, else built
    (and cached) from the model. For `show`/`export`, `feature` is checked against the SAE's size first."""
    from crl.cards.store import find_cards

    ref = sae_files(cfg)
    if command in ("show", "export"):
        _check_feature(feature, ref.d_sae, command)
    if ref.identity is not None and not force:
        cards = find_cards(ref.identity, ref.model_name)
        if cards is not None:
            return cards, False
    return _build(cfg, ref, feature, force, command), True


def _build(cfg: FeaturesConfig, ref: SAEFiles, feature: int | None, force: bool, command: str) -> FeatureCards:
    from crl.backends.model import load_model
    from crl.backends.sae import check_compatible, load_sae
    from crl.cards.build import ensure_cards

    sae_cfg = cfg.sae if cfg.sae.device else dataclasses.replace(cfg.sae, device=cfg.model.device)
    if sae_cfg.source == "default":
        sae_cfg = dataclasses.replace(sae_cfg, layer=cfg.steering.layer)
    sae = load_sae(sae_cfg)
    if feature is not None:
        _check_feature(feature, sae.d_sae, command)
    why = "rebuilding them (force=true)" if force else "none are shipped or cached yet; building them"
    print(f"crl features: cards for {ref.what}: {why} (minutes on a CPU; cached afterwards)", file=sys.stderr)
    lm = load_model(cfg.model)
    check_compatible(sae, lm.d_model, lm.n_layers, lm.name)
    return ensure_cards(lm, sae, progress=True, force=force)


def _emit(text: str) -> None:
    """Print to stdout; a reader that stops early (`| head`) is not an error (Python's documented way out)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _run_effects(run_dir: str) -> tuple[str, str, dict[int, list[dict]]]:
    """(model, SAE identity, steering effects per feature) of a finished run."""
    from crl.analysis.offline.feature_effects import read_feature_effects
    from crl.logs.schema import RunInfo

    info = RunInfo.read(run_dir)
    return info.model, info.sae_identity, read_feature_effects(run_dir) or {}


@hydra.main(config_path=CONF_DIR, config_name="features_show", version_base=None)
@exit_on_error
def show(raw: DictConfig) -> None:
    from crl.cards.render import card_text

    cfg = load(FeaturesShowConfig, raw)
    effects: list[dict] | None = None
    if cfg.run_dir:
        from crl.cards.store import find_cards

        model, identity, by_feature = _run_effects(cfg.run_dir)
        cards = find_cards(identity, model)
        if cards is None:
            raise CRLError(
                f"no feature cards for the SAE of run '{cfg.run_dir}' ({identity}); build them with "
                "`crl features build` and the run's model/sae/steering.layer settings"
            )
        feature = cards.check(_check_feature(cfg.feature, cards.d_sae, "show"))
        effects = by_feature.get(feature)
    else:
        cards, _ = load_or_build_cards(cfg, cfg.feature, command="show")
        feature = cards.check(cfg.feature)
    _emit(card_text(cards, feature, effects, width=cfg.width))


@hydra.main(config_path=CONF_DIR, config_name="features_build", version_base=None)
@exit_on_error
def build(raw: DictConfig) -> None:
    from crl.cards.store import META_FILE, shipped_location

    cfg = load(FeaturesBuildConfig, raw)
    t0 = time.perf_counter()
    cards, built = load_or_build_cards(cfg, force=cfg.force)
    shipped = shipped_location(cards.identity, cards.meta.get("model") or "")
    if built:
        how = f"built in {time.perf_counter() - t0:.0f}s"
        if shipped is not None and (shipped / META_FILE).exists():
            how += f"; the shipped cards at {shipped} still come first for this SAE"
    else:
        kind = "shipped" if cards.path == shipped else "cached"
        how = f"{kind}, nothing to build; force=true rebuilds"
    print(f"crl features: {cards.d_sae:,} cards for {cards.identity} at {cards.path} ({how})")


@hydra.main(config_path=CONF_DIR, config_name="features_index", version_base=None)
@exit_on_error
def index(raw: DictConfig) -> None:
    from crl.cards.render import index_page
    from crl.cards.store import cache_location

    cfg = load(FeaturesIndexConfig, raw)
    cards, _ = load_or_build_cards(cfg)
    out = Path(cfg.out).expanduser() if cfg.out else cache_location(cards.identity) / "index.html"
    page = index_page(cards)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    print(f"crl features: index of {cards.d_sae:,} features ({len(page.encode()) / 1e6:.1f} MB): {out}")


@hydra.main(config_path=CONF_DIR, config_name="features_export", version_base=None)
@exit_on_error
def export(raw: DictConfig) -> None:
    cfg = load(FeaturesExportConfig, raw)
    cards, _ = load_or_build_cards(cfg, cfg.feature, command="export")
    _emit(json.dumps(cards.card(cards.check(cfg.feature)), ensure_ascii=False, indent=1))
