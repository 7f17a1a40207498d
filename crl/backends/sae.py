"""The SAE backend: load through sae-lens, check it fits the model, expose steering directions.

Sources: ``pretrained`` (`SAE.from_pretrained(release, sae_id)`, needs a network), ``disk``
(`SAE.load_from_disk(path)`), and ``default``: CRL's SAE for a layer of the offline model, the shipped one
(crl/saes/, fp16 on disk, fp32 once loaded; its decoder hash is checked against the one it was shipped with)
when the layer has one, else the one `crl sae build` trained. Where they live is `crl.backends.sae_store`, so
loading never imports the training code.
Registry ids are checked against sae-lens's own directory before anything is downloaded.
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from crl.backends.hooks import HookPoint, parse_hook_name
from crl.backends.sae_store import IDENTITY_FILE, find_sae, shipped_layers
from crl.config import DEFAULT_MODEL_NAME, SAEConfig, validate
from crl.errors import CRLError

NEURONPEDIA_URL = "https://www.neuronpedia.org/{np_id}/{feature}"


@dataclass
class LoadedSAE:
    """An SAE plus where it reads from and (when known) its Neuronpedia id."""

    sae: object  # sae_lens.SAE
    hook: HookPoint
    neuronpedia_id: str | None = None
    source: str = ""
    # Trained on a TransformerLens model with centered writing weights (gpt2-small-res-jb): its residual is the HF
    # residual minus its mean over d_model, so the input is centered before encoding (`centers_input`).
    center_input: bool = False

    @property
    def hook_name(self) -> str:
        return self.hook.name

    @property
    def d_in(self) -> int:
        return int(self.sae.cfg.d_in)

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    @property
    def identity(self) -> str:
        """A string that names this SAE, so runs with different SAEs are never compared by feature id. A shipped
        SAE has the same identity for every user: its fp16 decoder loads to the same fp32 values everywhere."""
        return f"{self.source}|{self.hook_name}|d_sae={self.d_sae}|W_dec={decoder_sha1(self.sae.W_dec)[:12]}"

    def directions(self, unit: bool = False) -> torch.Tensor:
        """Decoder rows (d_sae, d_in), the steering directions; unit-normalized when `unit`."""
        w = self.sae.W_dec.detach()
        return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-8) if unit else w

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.sae.W_dec.dtype)
        return self.sae.encode(x - x.mean(dim=-1, keepdim=True) if self.center_input else x)

    def neuronpedia_url(self, feature: int) -> str | None:
        if not self.neuronpedia_id:
            return None
        return NEURONPEDIA_URL.format(np_id=self.neuronpedia_id, feature=int(feature))


def decoder_sha1(w_dec: torch.Tensor) -> str:
    """SHA-1 of the decoder's float32 bytes (row-major, on the CPU): the hash in `LoadedSAE.identity`."""
    import hashlib

    return hashlib.sha1(w_dec.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()


def check_compatible(sae: LoadedSAE, d_model: int, n_layers: int, model_name: str = "the model") -> None:
    """Fail before heavy work when the SAE does not fit the model and layer."""
    if sae.d_in != d_model:
        raise CRLError(
            f"SAE d_in={sae.d_in} does not match {model_name} d_model={d_model}; "
            "pick an SAE trained on this model (or the matching model for this SAE)"
        )
    if not 0 <= sae.hook.layer < n_layers:
        raise CRLError(
            f"SAE hook '{sae.hook_name}' reads layer {sae.hook.layer}, but {model_name} has "
            f"{n_layers} layers (0..{n_layers - 1})"
        )


def check_registry(release: str, sae_id: str) -> tuple[str | None, str | None]:
    """Check a (release, sae_id) pair against sae-lens's registry; return (hook name, Neuronpedia id)."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    if release not in directory:
        close = difflib.get_close_matches(release, list(directory), n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise CRLError(f"unknown SAE release '{release}' (not in the sae-lens registry){hint}")
    lookup = directory[release]
    if sae_id not in lookup.saes_map:
        close = difflib.get_close_matches(sae_id, list(lookup.saes_map), n=3)
        raise CRLError(f"unknown sae_id '{sae_id}' for release '{release}'; close ids: {close}")
    np_id = (lookup.neuronpedia_id or {}).get(sae_id)
    return None, np_id


def centers_input(sae) -> bool:
    """Whether the SAE was trained with TransformerLens's `center_writing_weights` (sae-lens records the model's
    loading kwargs in its metadata). Steering needs no change: every block reads the residual through a LayerNorm,
    which removes the mean either way."""
    kwargs = getattr(getattr(sae.cfg, "metadata", None), "model_from_pretrained_kwargs", None) or {}
    return bool(kwargs.get("center_writing_weights", False))


def _hook_of(sae) -> HookPoint:
    meta = getattr(sae.cfg, "metadata", None)
    hook_name = getattr(meta, "hook_name", None) or getattr(sae.cfg, "hook_name", None)
    if hook_name is None:
        raise CRLError("the SAE config has no hook_name; CRL needs to know which residual it reads")
    return parse_hook_name(hook_name)


def load_sae(cfg: SAEConfig) -> LoadedSAE:
    """Load an SAE. Registry ids and paths are validated first, with one-line errors."""
    from sae_lens import SAE

    validate(cfg, "sae.")
    if cfg.source == "pretrained":
        _, np_id = check_registry(cfg.release, cfg.sae_id)
        try:
            with warnings.catch_warnings():  # its advice to load the model centered: `encode` centers instead
                warnings.filterwarnings("ignore", r"\s*This SAE has non-empty model_from_", UserWarning)
                sae = SAE.from_pretrained(cfg.release, cfg.sae_id, device=cfg.device or "cpu")
        except Exception as e:  # noqa: BLE001 - network/hub failures
            raise CRLError(
                f"could not download SAE {cfg.release}/{cfg.sae_id} ({type(e).__name__}); it needs a network. "
                "Offline, use sae=default (built by `crl sae build`) or sae.source=disk"
            ) from None
        meta = getattr(sae.cfg, "metadata", None)
        np_id = getattr(meta, "neuronpedia_id", None) or np_id
        source = f"pretrained:{cfg.release}/{cfg.sae_id}"
        return LoadedSAE(sae.eval(), _hook_of(sae), np_id, source, centers_input(sae))
    if cfg.source == "disk":
        path = Path(cfg.path or "").expanduser()
        if not (path / "cfg.json").exists():
            raise CRLError(f"sae.path='{cfg.path}' is not an SAE directory (no cfg.json); save one with SAE.save_model")
        sae = SAE.load_from_disk(str(path), device=cfg.device or "cpu")
        meta = getattr(sae.cfg, "metadata", None)
        np_id = getattr(meta, "neuronpedia_id", None)
        return LoadedSAE(sae.eval(), _hook_of(sae), np_id, f"disk:{path.resolve()}", centers_input(sae))
    if cfg.source == "default":
        path, kind = find_sae(DEFAULT_MODEL_NAME, cfg.layer)
        if kind is None:
            shipped = ", ".join(map(str, shipped_layers())) or "none"
            raise CRLError(
                f"the default SAE for layer {cfg.layer} is not shipped (shipped layers: {shipped}) and not built "
                f"yet; run `crl sae build sae.layer={cfg.layer}`"
            )
        sae = SAE.load_from_disk(str(path), device=cfg.device or "cpu")
        if kind == "shipped":
            _check_shipped(sae, path)
            return LoadedSAE(sae.eval(), _hook_of(sae), None, f"shipped:layer{cfg.layer}")
        return LoadedSAE(sae.eval(), _hook_of(sae), None, f"default:layer{cfg.layer}")
    raise CRLError("sae.source=planted is constructed from the model for the planted task, not loaded")


def _check_shipped(sae, path: Path) -> None:
    """A shipped SAE must load to the decoder it was shipped with (a corrupted or edited file would silently
    change what every feature id means)."""
    import json

    try:
        expected = json.loads((path / IDENTITY_FILE).read_text())["W_dec_sha1"]
    except (OSError, ValueError, KeyError):
        raise CRLError(f"the shipped SAE at {path} has no readable {IDENTITY_FILE}; reinstall crl") from None
    got = decoder_sha1(sae.W_dec)
    if got != expected:
        raise CRLError(
            f"the shipped SAE at {path} does not match its {IDENTITY_FILE} (decoder sha1 {got[:12]}, shipped "
            f"{expected[:12]}); reinstall crl or restore the file"
        )


def sae_from_decoder(
    decoder: torch.Tensor, hook: HookPoint, source: str, device: str | torch.device = "cpu"
) -> LoadedSAE:
    """A sae-lens `StandardSAE` whose decoder rows are `decoder` (unit-normalized) and encoder is its transpose.

    For constructed dictionaries: the planted task, random-direction benchmarks and tests.
    """
    from sae_lens import StandardSAE, StandardSAEConfig

    w = decoder / decoder.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    cfg = StandardSAEConfig(d_in=w.shape[1], d_sae=w.shape[0], dtype="float32", device="cpu")
    cfg.metadata.hook_name = hook.name
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.W_dec.copy_(w)
        sae.W_enc.copy_(w.T)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return LoadedSAE(sae.to(device).eval(), hook, None, source)
