"""The paper's presets (conf/experiment/{gemma2_2b,llama31_8b,gpt2_small}.yaml) through the real hub code paths.

Each preset composes to its model, SAE release and id, layer, coefficient and dtype, and its SAE id is one that
sae-lens's registry holds (with the Neuronpedia id the feature links use). It then trains end to end on a tiny
random-weight stand-in of the same architecture (the real layer count, a tiny width) and a tiny random SAE in
sae-lens format for the same hook. Only the hub lookups are replaced: the model id -> a local directory
(`huggingface_hub.snapshot_download`) and the SAE release's download-and-convert step -> a local sae-lens directory;
CRL's loading, sae-lens's registry, config overrides and weight folding all run for real.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from crl.backends.sae import check_registry, load_sae
from crl.config import SAEConfig
from crl.config.compose import compose_config
from crl.errors import CRLError
from tests.run.helpers import crl

D_MODEL = 32  # the stand-ins' width
D_SAE = 64


@dataclass(frozen=True)
class Preset:
    name: str  # conf/experiment/<name>.yaml
    model: str  # the HF id
    model_type: str  # transformers' model_type: the stand-in is built from this architecture's config class
    n_layers: int
    release: str
    sae_id: str
    hook: str  # the residual the SAE reads (sae-lens / TransformerLens name)
    layer: int
    dtype: str
    neuronpedia_id: str
    trained_on: str  # the registry's model for the release
    converter: str  # sae-lens's loader for the release (the step that downloads from the hub)
    repo_id: str  # what that step would download: the release's repo and the SAE's folder in it
    folder: str
    architecture: str  # the stand-in SAE's, as sae-lens's converter makes it
    centers_input: bool  # trained on TransformerLens's centered residual (gpt2-small-res-jb)


PRESETS = {
    p.name: p
    for p in (
        Preset(
            "gemma2_2b",
            "google/gemma-2-2b-it",
            "gemma2",
            26,
            "gemma-scope-2b-pt-res-canonical",
            "layer_12/width_16k/canonical",
            "blocks.12.hook_resid_post",
            12,
            "bfloat16",
            "gemma-2-2b/12-gemmascope-res-16k",
            "gemma-2-2b",
            "gemma_2",
            "google/gemma-scope-2b-pt-res",
            "layer_12/width_16k/average_l0_82",
            "jumprelu",
            False,
        ),
        Preset(
            "llama31_8b",
            "meta-llama/Llama-3.1-8B",
            "llama",
            32,
            "llama_scope_lxr_8x",
            "l15r_8x",
            "blocks.15.hook_resid_post",
            15,
            "bfloat16",
            "llama3.1-8b/15-llamascope-res-32k",
            "meta-llama/Llama-3.1-8B",
            "llama_scope",
            "fnlp/Llama3_1-8B-Base-LXR-8x",
            "Llama3_1-8B-Base-L15R-8x",
            "jumprelu",
            False,
        ),
        Preset(
            "gpt2_small",
            "gpt2",
            "gpt2",
            12,
            "gpt2-small-res-jb",
            "blocks.8.hook_resid_pre",
            "blocks.8.hook_resid_pre",
            8,
            "float32",
            "gpt2-small/8-res-jb",
            "gpt2-small",
            "sae_lens",
            "jbloom/GPT2-Small-SAEs-Reformatted",
            "blocks.8.hook_resid_pre",
            "standard",
            True,
        ),
    )
}


# -- composition and the registry ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_composes_to_the_paper_setting(name):
    p = PRESETS[name]
    cfg = compose_config("train", [f"experiment={name}"])
    assert (cfg.model.source, cfg.model.name, cfg.model.dtype, cfg.model.device) == ("hf", p.model, p.dtype, "cuda")
    assert (cfg.sae.source, cfg.sae.release, cfg.sae.sae_id) == ("pretrained", p.release, p.sae_id)
    assert cfg.steering.layer == p.layer < p.n_layers
    assert cfg.steering.coef_mode == "raw" and 10 <= cfg.steering.coef <= 100  # the paper's sweep
    assert cfg.ppo.num_envs >= 64 and cfg.ppo.episodes_per_update >= 256  # GPU batches, not the CPU defaults
    assert cfg.task.chat_template == name.startswith("gemma")  # only the instruct model has a chat template
    assert cfg.run.name == name
    # The SAE follows the steered layer, so one override moves both.
    moved = compose_config("train", [f"experiment={name}", "steering.layer=3"])
    assert moved.sae.sae_id == p.sae_id.replace(str(p.layer), "3", 1)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_sae_is_in_the_registry_for_its_model(name):
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    p = PRESETS[name]
    assert check_registry(p.release, p.sae_id)[1] == p.neuronpedia_id
    entry = get_pretrained_saes_directory()[p.release]
    assert (entry.repo_id, entry.saes_map[p.sae_id]) == (p.repo_id, p.folder)
    assert entry.model == p.trained_on and (entry.conversion_func or "sae_lens") == p.converter


def test_gemma_scope_hook_and_width_from_sae_lens_converter():
    """sae-lens derives Gemma Scope's config from the repo and folder names alone (no download): the hook the preset
    steers at and the real model's d_model."""
    from sae_lens.loading.pretrained_sae_loaders import get_gemma_2_config_from_hf

    p = PRESETS["gemma2_2b"]
    cfg = get_gemma_2_config_from_hf(p.repo_id, p.folder, "cpu")
    assert (cfg["hook_name"], cfg["d_in"], cfg["d_sae"]) == (p.hook, 2304, 16384)


# -- stand-ins -------------------------------------------------------------------------------------------------------
def _standin_model(p: Preset, root: Path) -> Path:
    """A random-weight model of the preset's architecture (its layer count, width D_MODEL), saved as the hub would
    serve it, with the offline default tokenizer (the real one needs the network)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from crl.backends.offline_default import default_tokenizer_dir

    out = root / p.name / "model"
    tok = AutoTokenizer.from_pretrained(str(default_tokenizer_dir()))
    ids = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    if p.model_type == "gpt2":
        shape = dict(n_embd=D_MODEL, n_layer=p.n_layers, n_head=2, n_positions=512)
    else:
        shape = dict(
            hidden_size=D_MODEL,
            intermediate_size=2 * D_MODEL,
            num_hidden_layers=p.n_layers,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=D_MODEL // 2,
            max_position_embeddings=512,
        )
        if p.model_type == "gemma2":
            shape.update(query_pre_attn_scalar=D_MODEL // 2, sliding_window=64, pad_token_id=tok.pad_token_id)
    config = AutoConfig.for_model(p.model_type, **shape, **ids)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _standin_sae(p: Preset, root: Path, d_in: int = D_MODEL, hook: str | None = None) -> Path:
    """A random SAE in sae-lens format, shaped as sae-lens's converter for the release shapes the real one."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    meta = SAEMetadata(hook_name=hook or p.hook, model_name=p.trained_on)
    if p.architecture == "jumprelu":
        # Llama Scope's converter asks sae-lens to fold the release's input-norm scaling into the weights.
        norm = "expected_average_only_in" if p.converter == "llama_scope" else "none"
        sae = JumpReLUSAE(
            JumpReLUSAEConfig(
                d_in=d_in, d_sae=D_SAE, apply_b_dec_to_input=False, normalize_activations=norm, metadata=meta
            )
        )
    else:
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=D_SAE, metadata=meta))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in sae.named_parameters():
            param.copy_(torch.rand_like(param) * 0.1 if name == "threshold" else torch.randn_like(param) * 0.3)
    out = root / p.name / f"sae-{d_in}-{meta.hook_name}"
    sae.save_model(out)
    # The flat config of the releases' own files and converters (sae-lens < 6), which sae-lens completes with the
    # registry's overrides (the Neuronpedia id, the TransformerLens loading kwargs).
    cfg = json.loads((out / "cfg.json").read_text())
    meta = cfg.pop("metadata")
    flat = {k: v for k, v in meta.items() if k not in ("sae_lens_version", "sae_lens_training_version")}
    (out / "cfg.json").write_text(json.dumps({**cfg, **flat}))
    return out


@pytest.fixture
def hub(monkeypatch):
    """Serve stand-ins where the hub would: `serve(preset, model_dir, sae_dir)`; `calls` records each lookup."""
    import huggingface_hub
    from sae_lens.loading import pretrained_sae_loaders as loaders

    calls: list[str] = []

    def serve(p: Preset, model_dir: Path | None, sae_dir: Path) -> None:
        def snapshot_download(repo_id: str, **_kwargs) -> str:
            calls.append(f"model:{repo_id}")
            if repo_id != p.model or model_dir is None:
                raise AssertionError(f"unexpected model download: {repo_id}")
            return str(model_dir)

        def download_and_convert(repo_id, folder_name, device="cpu", force_download=False, cfg_overrides=None):
            calls.append(f"sae:{repo_id}/{folder_name}")
            assert (repo_id, folder_name) == (p.repo_id, p.folder)
            cfg, state = loaders.sae_lens_disk_loader(sae_dir, device, cfg_overrides)
            return cfg, state, None

        monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
        monkeypatch.setitem(loaders.NAMED_PRETRAINED_SAE_LOADERS, p.converter, download_and_convert)

    serve.calls = calls
    return serve


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_sae_loads_through_the_registry(name, hub, tmp_path):
    p = PRESETS[name]
    hub(p, None, _standin_sae(p, tmp_path))
    cfg = compose_config("train", [f"experiment={name}"])
    sae = load_sae(cfg.sae)
    assert (sae.hook_name, sae.d_in, sae.d_sae) == (p.hook, D_MODEL, D_SAE)
    assert sae.neuronpedia_id == p.neuronpedia_id
    assert sae.neuronpedia_url(7) == f"https://www.neuronpedia.org/{p.neuronpedia_id}/7"
    assert sae.source == f"pretrained:{p.release}/{p.sae_id}"
    assert sae.center_input is p.centers_input
    # A shift along the all-ones direction, which TransformerLens's centering removes: the features of the HF
    # residual are those of the residual the SAE was trained on only when the input is centered.
    x = torch.randn(4, D_MODEL)
    assert torch.allclose(sae.encode(x), sae.encode(x + 5.0), atol=1e-5) is p.centers_input


def _train_args(name: str, run_dir: Path) -> list[str]:
    return [
        f"experiment={name}",
        "model.device=cpu",  # the preset's cuda: tests run on CPU
        "logger=disabled",
        "run.analyze=false",
        "run.eval_before=false",
        "run.select=last",
        "run.eval_every=0",
        "ppo.total_updates=2",
        "ppo.num_envs=8",
        "ppo.episodes_per_update=8",
        "task.n_train=16",
        "task.n_val=8",
        "task.n_test=8",
        "policy.obs_stats_prompts=8",
        f"hydra.run.dir={run_dir}",
    ]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_trains_end_to_end_on_a_standin(name, hub, tmp_path, monkeypatch, capsys, one_thread):
    p = PRESETS[name]
    monkeypatch.chdir(tmp_path)  # the hub id is not a local directory here
    hub(p, _standin_model(p, tmp_path), _standin_sae(p, tmp_path))
    run = tmp_path / "run"
    assert crl("train", *_train_args(name, run)) == 0, capsys.readouterr().err
    assert hub.calls == [f"model:{p.model}", f"sae:{p.repo_id}/{p.folder}"]
    info = json.loads((run / "run.json").read_text())
    assert (info["model"], info["layer"], info["hook_name"]) == (p.model, p.layer, p.hook)
    assert (info["neuronpedia_id"], info["d_sae"], info["coef_mode"]) == (p.neuronpedia_id, D_SAE, "raw")
    assert info["sae_identity"].startswith(f"pretrained:{p.release}/{p.sae_id}|{p.hook}|")
    assert (run / "policy.pt").exists()
    assert "[crl] test accuracy" in capsys.readouterr().out


# -- misuse: one line, before the heavy part where it can be --------------------------------------------------------
def test_preset_layer_beyond_the_model_fails_before_any_download(hub, tmp_path, monkeypatch, capsys):
    p = PRESETS["gemma2_2b"]
    monkeypatch.chdir(tmp_path)
    hub(p, tmp_path / "never-read", tmp_path / "never-read")
    assert crl("train", *_train_args(p.name, tmp_path / "run"), "steering.layer=26") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("crl: error: unknown sae_id 'layer_26/width_16k/canonical'") and "\n" not in err
    assert hub.calls == []  # the registry answered first


@pytest.mark.parametrize(
    "sae_shape,message",
    [
        ({"d_in": D_MODEL + 16}, f"SAE d_in={D_MODEL + 16} does not match google/gemma-2-2b-it d_model={D_MODEL}"),
        ({"hook": "blocks.11.hook_resid_post"}, "steering.layer=12 but the SAE reads 'blocks.11.hook_resid_post'"),
    ],
)
def test_preset_with_an_sae_that_does_not_fit_is_one_line(sae_shape, message, hub, tmp_path, monkeypatch, capsys):
    p = PRESETS["gemma2_2b"]
    monkeypatch.chdir(tmp_path)
    hub(p, _standin_model(p, tmp_path), _standin_sae(p, tmp_path, **sae_shape))
    capsys.readouterr()  # transformers' progress lines while the stand-in was saved
    assert crl("train", *_train_args(p.name, tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]  # after transformers' progress lines while the stand-in loads
    assert last.startswith("crl: error: ") and message in last and "Traceback" not in err
    assert not (tmp_path / "run" / "run.json").exists()


def test_preset_cuda_device_on_a_host_without_one_is_one_line(tmp_path, monkeypatch, capsys):
    if torch.cuda.is_available():
        pytest.skip("this host has a GPU")
    monkeypatch.chdir(tmp_path)
    assert crl("train", "experiment=gpt2_small", f"hydra.run.dir={tmp_path / 'run'}") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("crl: error: model.device=cuda is invalid") and "\n" not in err


def test_preset_run_needs_the_network_without_a_standin(tmp_path, monkeypatch, capsys):
    """No stand-in served: the real hub lookup runs (offline here) and fails in one line naming the way out."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # a host's warm cache must not answer
    monkeypatch.chdir(tmp_path)
    assert crl("train", *_train_args("gpt2_small", tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip()
    assert "model 'gpt2' is neither a local directory nor loadable" in err and "\n" not in err
    with pytest.raises(CRLError, match="could not download SAE gpt2-small-res-jb/blocks.8.hook_resid_pre"):
        load_sae(SAEConfig(source="pretrained", release="gpt2-small-res-jb", sae_id="blocks.8.hook_resid_pre"))
