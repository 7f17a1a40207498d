"""Feature cards on disk: what every feature of one SAE is, read without torch or the model.

A card set is two files in one directory (`CARDS_FILE`, `META_FILE`), about 2 MB for 3,072 features:

- ``cards.safetensors`` (numpy arrays): the held-out token stream once (``tokens``, rows x seq), and per
  feature: the top examples and the activation-quantile examples as (flat position in ``tokens``, activation),
  density, max and mean activation, a histogram of the nonzero activations, the logit-lens tokens (ids and
  values, promoted and suppressed), the features that fire together with it (phi coefficient of the firing
  indicators) and the nearest decoder directions (cosine).
- ``cards.json``: which SAE (its identity, so cards never describe another dictionary), which text and how many
  tokens, the decoded string of every token id used, and the heuristic labels.

`FeatureCards.card(i)` gives one feature in Neuronpedia's field names (``activations`` with ``tokens`` and
``values``, ``pos_str``/``pos_values``, ``neg_str``/``neg_values``, ``frac_nonzero``,
``freq_hist_data_bar_heights``/``_values``, ``explanations``, ...), so a user with a network can upload them.

Where card sets live: next to a shipped SAE (``crl/saes/<model>/layer<L>/cards/``, package data), else in
``$CRL_CACHE/cards/<hash of the SAE identity>/``. `find_cards` looks in both and checks the identity.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crl.backends.sae_store import SHIPPED_DIR
from crl.errors import CRLError
from crl.paths import cache_dir

FORMAT_VERSION = 1
CARDS_FILE = "cards.safetensors"
META_FILE = "cards.json"
CARDS_SUBDIR = "cards"  # inside a shipped SAE's directory
CONTEXT = 10  # tokens shown on each side of an example

# array name -> (dtype on disk, dtype in memory); values are stored in fp16 to keep shipped cards small
_ARRAYS: dict[str, tuple[str, str]] = {
    "tokens": ("int32", "int64"),
    "density": ("float32", "float32"),
    "max_act": ("float32", "float32"),
    "mean_act": ("float32", "float32"),
    "top_pos": ("int32", "int64"),
    "top_val": ("float16", "float32"),
    "q_pos": ("int32", "int64"),
    "q_val": ("float16", "float32"),
    "q_bin": ("int8", "int64"),
    "hist": ("int32", "int64"),
    "logit_pos_ids": ("int32", "int64"),
    "logit_pos_val": ("float16", "float32"),
    "logit_neg_ids": ("int32", "int64"),
    "logit_neg_val": ("float16", "float32"),
    "cofire_ids": ("int32", "int64"),
    "cofire_val": ("float16", "float32"),
    "cos_ids": ("int32", "int64"),
    "cos_val": ("float16", "float32"),
}


@dataclass
class FeatureCards:
    """Every feature of one SAE (module docstring). Arrays are indexed by feature id; -1 pads missing slots."""

    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]
    vocab: dict[int, str]
    labels: list[str]
    path: Path | None = field(default=None, compare=False)

    def __getattr__(self, name: str) -> np.ndarray:
        arrays = self.__dict__.get("arrays", {})
        if name in arrays:
            return arrays[name]
        raise AttributeError(name)

    @property
    def d_sae(self) -> int:
        return int(self.meta["d_sae"])

    @property
    def identity(self) -> str:
        return str(self.meta["sae_identity"])

    @property
    def layer(self) -> int | None:
        return self.meta.get("layer")

    def check(self, feature: int) -> int:
        f = int(feature)
        if not 0 <= f < self.d_sae:
            raise CRLError(f"feature {f} is out of range: this SAE has features 0..{self.d_sae - 1}")
        return f

    def label(self, feature: int) -> str:
        """The heuristic label of a feature ("no steer" for the no-steering action, a negative id)."""
        if int(feature) < 0:
            return "no steer"
        return self.labels[self.check(feature)]

    def token(self, token_id: int) -> str:
        return self.vocab.get(int(token_id), f"<{int(token_id)}>")

    def context(self, pos: int, width: int = CONTEXT) -> tuple[list[str], int]:
        """The decoded tokens around flat position `pos` (same row only) and the index of `pos` among them."""
        seq = self.tokens.shape[1]
        row, col = divmod(int(pos), seq)
        lo, hi = max(0, col - width), min(seq, col + width + 1)
        return [self.token(t) for t in self.tokens[row, lo:hi]], col - lo

    def examples(self, feature: int, kind: str = "top") -> list[dict[str, Any]]:
        """Examples as dicts: tokens, values (the feature's activation where known, else 0), the activating
        token's index, its activation and, for quantile examples, the bin. Known values are the example's own
        and any other stored example of this feature that falls inside the window."""
        f = self.check(feature)
        pos, val = (self.top_pos[f], self.top_val[f]) if kind == "top" else (self.q_pos[f], self.q_val[f])
        known = {int(p): float(v) for p, v in zip(self.top_pos[f], self.top_val[f], strict=True) if p >= 0}
        known.update({int(p): float(v) for p, v in zip(self.q_pos[f], self.q_val[f], strict=True) if p >= 0})
        out = []
        for i, (p, v) in enumerate(zip(pos, val, strict=True)):
            if p < 0:
                continue
            toks, at = self.context(int(p))
            start = int(p) - at
            values = [known.get(start + j, 0.0) for j in range(len(toks))]
            ex = {"tokens": toks, "values": values, "maxValue": float(v), "maxValueTokenIndex": at}
            if kind != "top":
                b = int(self.q_bin[f][i])
                ex.update(bin_index=b, **self.bin_range(f, b))
            out.append(ex)
        return out

    def bin_range(self, feature: int, b: int) -> dict[str, float]:
        n_bins = int(self.meta["quantile_bins"])
        top = float(self.max_act[feature])
        return {"bin_min": top * b / n_bins, "bin_max": top * (b + 1) / n_bins}

    def histogram(self, feature: int) -> tuple[list[float], list[int]]:
        """(bin centres, counts) of the nonzero activations on [0, max_act] (parallel arrays)."""
        f = self.check(feature)
        counts = self.hist[f]
        width = float(self.max_act[f]) / max(1, len(counts))
        return [width * (i + 0.5) for i in range(len(counts))], [int(c) for c in counts]

    def logit_lens(self, feature: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
        """(promoted, suppressed) tokens with their logit-lens values, strongest first."""
        f = self.check(feature)
        pos = [(self.token(t), float(v)) for t, v in zip(self.logit_pos_ids[f], self.logit_pos_val[f], strict=True)]
        neg = [(self.token(t), float(v)) for t, v in zip(self.logit_neg_ids[f], self.logit_neg_val[f], strict=True)]
        return pos, neg

    def neighbours(self, feature: int, kind: str = "cofire") -> list[tuple[int, float]]:
        f = self.check(feature)
        ids, vals = (self.cofire_ids[f], self.cofire_val[f]) if kind == "cofire" else (self.cos_ids[f], self.cos_val[f])
        return [(int(i), float(v)) for i, v in zip(ids, vals, strict=True) if i >= 0]

    def card(self, feature: int) -> dict[str, Any]:
        """One feature in Neuronpedia's field names (plus CRL's own, prefixed ``crl_``)."""
        f = self.check(feature)
        pos, neg = self.logit_lens(f)
        centres, heights = self.histogram(f)
        cofire, cos = self.neighbours(f, "cofire"), self.neighbours(f, "cos")
        quantiles = self.examples(f, "quantile")
        return {
            "modelId": self.meta.get("model"),
            "layer": self.meta.get("neuronpedia_layer") or self.meta.get("hook_name"),
            "index": str(f),
            "maxActApprox": float(self.max_act[f]),
            "frac_nonzero": float(self.density[f]),
            "freq_hist_data_bar_heights": heights,
            "freq_hist_data_bar_values": centres,
            "pos_str": [t for t, _ in pos],
            "pos_values": [v for _, v in pos],
            "neg_str": [t for t, _ in neg],
            "neg_values": [v for _, v in neg],
            "correlated_features_indices": [i for i, _ in cofire],
            "correlated_features_pearson": [v for _, v in cofire],
            "topkCosSimIndices": [i for i, _ in cos],
            "topkCosSimValues": [v for _, v in cos],
            "activations": self.examples(f, "top") + quantiles,
            "explanations": [
                {
                    "description": self.labels[f],
                    "explanationModelName": "crl-heuristic",
                    "typeName": "heuristic: top-activation tokens + logit lens",
                }
            ],
            "crl_mean_act": float(self.mean_act[f]),
            "crl_sae_identity": self.identity,
            "crl_text": self.meta.get("text"),
            "crl_neuronpedia_url": neuronpedia_url(self.meta.get("neuronpedia_id"), f),
        }

    def search(self, query: str, limit: int = 20) -> list[int]:
        """Feature ids whose id or label contains `query` (case-insensitive), densest first."""
        q = query.strip().lower()
        if q.isdigit() and int(q) < self.d_sae:
            return [int(q)]
        hits = [i for i, lab in enumerate(self.labels) if q in lab.lower()]
        return sorted(hits, key=lambda i: -float(self.density[i]))[:limit]

    # -- disk ---------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write both files atomically into directory `path`."""
        from safetensors.numpy import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tmp = path / f".{CARDS_FILE}.{os.getpid()}.tmp"
        save_file({k: np.ascontiguousarray(v.astype(_ARRAYS[k][0])) for k, v in self.arrays.items()}, str(tmp))
        meta = {**self.meta, "format_version": FORMAT_VERSION, "labels": self.labels}
        meta["vocab"] = {str(k): v for k, v in sorted(self.vocab.items())}
        tmp_meta = path / f".{META_FILE}.{os.getpid()}.tmp"
        tmp_meta.write_text(json.dumps(meta, ensure_ascii=False, separators=(",", ":")))
        os.replace(tmp, path / CARDS_FILE)
        os.replace(tmp_meta, path / META_FILE)
        self.path = path
        return path


def load_cards(path: str | Path) -> FeatureCards:
    """Read a card set written by `FeatureCards.save`; a damaged or foreign one is a one-line error."""
    from safetensors.numpy import load_file

    path = Path(path)
    try:
        meta = json.loads((path / META_FILE).read_text())
        raw = load_file(str(path / CARDS_FILE))
    except (OSError, ValueError) as e:
        raise CRLError(
            f"the feature cards at {path} are unreadable ({type(e).__name__}); rebuild them with `crl features build`"
        ) from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise CRLError(
            f"the feature cards at {path} have format {meta.get('format_version')}, this CRL reads "
            f"{FORMAT_VERSION}; rebuild them with `crl features build`"
        )
    labels = meta.pop("labels")
    vocab = {int(k): v for k, v in meta.pop("vocab").items()}
    arrays = {k: raw[k].astype(_ARRAYS[k][1]) for k in _ARRAYS}
    return FeatureCards(meta, arrays, vocab, labels, path)


def cache_location(identity: str) -> Path:
    """Where cards for an SAE that ships none are cached."""
    return cache_dir() / "cards" / hashlib.sha1(identity.encode()).hexdigest()[:16]


def shipped_location(identity: str, model_name: str) -> Path | None:
    """The cards directory of a shipped SAE (identity ``shipped:layer<L>|...``), else None."""
    head = identity.split("|", 1)[0]
    if not head.startswith("shipped:layer"):
        return None
    from crl.backends.sae_store import shipped_sae_dir

    return shipped_sae_dir(model_name, int(head[len("shipped:layer") :]), SHIPPED_DIR) / CARDS_SUBDIR


def find_cards(identity: str, model_name: str) -> FeatureCards | None:
    """The card set for the SAE named by `identity` (shipped, else cached), or None when there is none yet."""
    for where in (shipped_location(identity, model_name), cache_location(identity)):
        if where is not None and (where / META_FILE).exists():
            cards = load_cards(where)
            if cards.identity == identity:
                return cards
    return None


NEURONPEDIA_URL = "https://www.neuronpedia.org/{np_id}/{feature}"


def neuronpedia_url(neuronpedia_id: str | None, feature: int) -> str | None:
    if not neuronpedia_id or int(feature) < 0:
        return None
    return NEURONPEDIA_URL.format(np_id=neuronpedia_id, feature=int(feature))
