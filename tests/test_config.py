"""Typed configs: every app's composed default validates, bad values are one-line errors before any model loads,
and each default is set once (in crl/config, not restated by a YAML file)."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
import yaml

from crl import cli
from crl.config import APPS, GROUPS, AnalyzeConfig, ConfigError, PPOConfig, TrainConfig, load, param, validate
from crl.config.compose import check_command, compose_config
from crl.config.core import describe, omegaconf_schema
from crl.paths import CONF_DIR

CONF = Path(CONF_DIR)
# A group option's identity (task name, model/sae source, masking/logger mode) is stated in its file even where it
# equals the schema default, so each file says what it is.
IDENTITY = {"task": "name", "model": "source", "sae": "source", "masking": "mode", "logger": "mode"}
# Extra overrides a group option needs to compose into a valid `crl train` config.
NEEDS = {
    ("model", "hf"): ["model.name=org/model"],
    ("sae", "disk"): ["sae.path=/some/sae"],
    ("sae", "pretrained"): ["sae.release=r", "sae.sae_id=i"],
    ("sae", "planted"): ["task=planted"],
    ("masking", "fixed"): ["masking.features=[1591,652]"],
}

# The acceptance cases: (override, the key the error must name).
BAD = [
    ("masking.top_k=abc", "masking.top_k=abc"),
    ("ppo.num_envs=0", "ppo.num_envs=0"),
    ("ppo.total_updates=-3", "ppo.total_updates=-3"),
    ("steering.coef_mode=weird", "steering.coef_mode=weird"),
    ("task=nope", "task=nope"),
    ("ppo.advantage=magic", "ppo.advantage=magic"),
    ("ppo.regularizer=l2", "ppo.regularizer=l2"),
    ("ppo.reg_coef=-0.1", "ppo.reg_coef=-0.1"),
    ("seed=-1", "seed=-1"),  # NumPy's seeding would fail after the model loaded, with a traceback
    ("masking.shortlist_k=0", "masking.shortlist_k=0"),
]


# -- bad values: one line, exit code 2, within 5 s, before any model loads ----------------------------------------
@pytest.mark.parametrize("override,named", BAD)
def test_bad_value_is_one_line_before_any_model_loads(override, named, tmp_path):
    cache = tmp_path / "cache"  # nothing may be converted, built or downloaded into it
    env = {**os.environ, "CRL_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "crl.cli", "train", override], env=env, capture_output=True, text=True, timeout=60
    )
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"crl: error: {named} is invalid: "), lines[0]
    assert "; valid: " in lines[0]
    assert proc.stdout == ""
    assert elapsed < 5, f"{elapsed:.1f}s"
    assert not cache.exists() or not any(cache.iterdir())


@pytest.mark.parametrize("override,named", BAD)
def test_bad_value_fails_before_the_command_is_imported(override, named, monkeypatch, capsys):
    def command() -> None:
        raise AssertionError("the command ran: validation must come first")

    # The command (which loads the model) is replaced by one that fails the test if it is ever reached.
    monkeypatch.setitem(sys.modules, "_crl_test_command", types.SimpleNamespace(main=command))
    monkeypatch.setitem(cli.COMMANDS, ("train",), "_crl_test_command:main")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", override])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith(f"crl: error: {named} is invalid: ")


# -- devices: a device this host's torch cannot use is one line, before anything loads ------------------------------
def _cpu_only_torch():
    torch = pytest.importorskip("torch")
    if torch.version.cuda is not None or torch.cuda.is_available():
        pytest.skip("needs the CPU-only torch that `make` installs")
    return torch


@pytest.mark.parametrize(
    "override,why",
    [
        ("model.device=cuda", "is built without CUDA; valid: cpu; "),
        ("model.device=gpu", "not a torch device (such as cpu, cuda, cuda:1, mps); valid: cpu; "),
    ],
)
def test_a_device_this_torch_cannot_use_is_one_line_before_any_model_loads(override, why, tmp_path):
    _cpu_only_torch()
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    env = {**os.environ, "CRL_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, "-m", "crl.cli", "train", override, f"hydra.run.dir={run_dir}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # not torch's "Torch not compiled with CUDA enabled" traceback
    assert lines[0].startswith(f"crl: error: {override} is invalid: "), lines[0]
    assert why in lines[0] and "make train TORCH_SPEC=torch" in lines[0], lines[0]  # the fix is named
    assert proc.stdout == ""
    assert not cache.exists() or not any(cache.iterdir())  # the model was not converted or loaded
    assert not run_dir.exists()


@pytest.mark.parametrize(
    "words", [("train",), ("bench", "rollout"), ("sae", "build"), ("sae", "info"), ("sae", "export")]
)
def test_every_command_that_takes_model_device_checks_it_first(words, monkeypatch, capsys):
    _cpu_only_torch()

    def command() -> None:
        raise AssertionError("the command ran: the device check must come first")

    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # what `crl bench rollout` sets; restored afterwards
    monkeypatch.setitem(sys.modules, "_crl_test_command", types.SimpleNamespace(main=command))
    monkeypatch.setitem(cli.COMMANDS, words, "_crl_test_command:main")
    with pytest.raises(SystemExit) as exit_:
        cli.main([*words, "model.device=cuda"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("crl: error: model.device=cuda is invalid: this torch (") and "TORCH_SPEC" in err
    assert len(err.strip().splitlines()) == 1


def test_eval_of_a_run_made_on_a_gpu_is_one_line_on_a_host_without_one(tmp_path, monkeypatch, capsys):
    _cpu_only_torch()
    from crl.config import ModelConfig
    from crl.run.train import config_yaml

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_bytes(config_yaml(TrainConfig(model=ModelConfig(device="cuda"))))
    (run / "run.json").write_text("{}")
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["eval", f"run_dir={run}"])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"crl: error: {run / 'config.yaml'}: model.device=cuda is invalid: this torch ("), lines
    assert "TORCH_SPEC" in lines[0]


@pytest.mark.parametrize(
    "device,gpus,cuda,message",
    [
        ("cuda:1", 1, "12.8", "model.device=cuda:1 is invalid: this host has 1 CUDA GPU; valid: cpu, cuda, cuda:0"),
        ("cuda:2", 2, "12.8", "model.device=cuda:2 is invalid: this host has 2 CUDA GPUs; valid: cpu, cuda, cuda:0, "),
        ("cuda", 0, "12.8", "model.device=cuda is invalid: torch sees no CUDA GPU on this host"),
        ("cuda", 0, None, "model.device=cuda is invalid: this torch ("),
        (
            "gpu",
            1,
            "12.8",
            "model.device=gpu is invalid: not a torch device (such as cpu, cuda, cuda:1, mps); valid: cpu, ",
        ),
        ("cuda:0", 1, "12.8", None),
        ("cuda", 2, "12.8", None),
        ("cpu", 0, None, None),
    ],
)
def test_device_check_on_hosts_with_and_without_gpus(device, gpus, cuda, message, monkeypatch):
    torch = pytest.importorskip("torch")
    from crl.config.device import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.version, "cuda", cuda)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    if message is None:
        check_device("model.device", device)
        return
    with pytest.raises(ConfigError) as err:
        check_device("model.device", device)
    assert str(err.value).startswith(message), str(err.value)
    assert ("TORCH_SPEC" in str(err.value)) == (cuda is None)  # the fix is named only where it is the fix


def test_validation_imports_nothing_heavy():
    code = (
        "import sys; from crl.config.compose import compose_config; compose_config('train', ['ppo.num_envs=4']); "
        "print(sorted(m for m in ('torch', 'transformers', 'sae_lens', 'crl.envs') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["ppo.foo=1"], "ppo.foo=1 is invalid: no such key; valid: total_updates, "),
        (["model.n_layers=two"], "model.n_layers=two is invalid: not an integer; valid: an integer >= 1"),
        (["task.n_val=0"], "task.n_val=0 is invalid: an empty split"),
        (["ppo.advantage=group", "ppo.group_size=1"], "ppo.group_size=1 is invalid: advantage=group compares"),
        (["logger.mode=loud"], "logger.mode=loud is invalid: unknown choice; valid: offline, online, disabled"),
        (["seed=0,1"], "seed=0,1 is invalid: a comma list is a sweep"),
        (["ppo.num_envs=[1"], "ppo.num_envs=[1 is invalid: not an override"),
        (["-m", "seed=0,1", "ppo.num_envs=16,0"], "ppo.num_envs=0 is invalid: out of range"),
        (["--multirun", "task=arith,nope"], "task=nope is invalid: no such option in config group 'task'"),
        (["sae=planted"], "sae.source=planted is invalid: the planted SAE is built for the planted task"),
        (["seed=-1"], "seed=-1 is invalid: out of range; valid: an integer in [0, 2**32-1]"),
        (["task.seed=4294967296"], "task.seed=4294967296 is invalid: out of range; valid: an integer in [0, 2**32-1]"),
        (["model.seed=-2"], "model.seed=-2 is invalid: out of range; valid: an integer in [0, 2**32-1]"),
        (["masking=fixed"], "masking.features=null is invalid: masking=fixed steers only the listed features"),
        (["masking=fixed", "masking.features=[-3]"], "masking.features=[-3] is invalid: out of range; valid: a list"),
        (["masking=fixed", "masking.features=[5,5]"], "masking.features=[5,5] is invalid: feature 5 is listed twice"),
        (["masking.features=[5]"], "masking.features=[5] is invalid: masking.features is only used with masking=fixed"),
    ],
)
def test_train_errors_name_key_value_and_valid_range(argv, message):
    with pytest.raises(ConfigError) as err:
        check_command("train", argv)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "name,override,message",
    [
        ("bench_rollout", "bench.batch_sizes=[1,0]", "bench.batch_sizes=[1,0] is invalid: out of range"),
        ("eval", "split=dev", "split=dev is invalid: unknown choice; valid: train, val, test"),
        ("compare", "features=some", "features=some is invalid: unknown choice; valid: auto, require, skip"),
        ("analyze", "wandb.enabled=true", "wandb.enabled=true is invalid: no such key; valid: mode, project, entity"),
        ("sae_build", "build.k=4000", "build.k=4000 is invalid: at least d_sae=3072; valid: 1..3071"),
        ("sae_build", "sae=disk", "sae.source=disk is invalid: `crl sae build` works on the SAE that CRL builds"),
        ("bench_rollout", "bench.seed=-1", "bench.seed=-1 is invalid: out of range; valid: an integer in [0, 2**32-1]"),
        ("eval", "seed=-1", "seed=-1 is invalid: out of range; valid: an integer in [0, 2**32-1] or null"),
        ("analyze", "env_seeds=[0,-1]", "env_seeds=[0,-1] is invalid: out of range; valid: a list of at least 1, each"),
        ("analyze", "coef_sweep=[-1]", "coef_sweep=[-1.0] is invalid: out of range; valid: a list of at least 1, each"),
        ("analyze", "coef_sweep=[]", "coef_sweep=[] is invalid: out of range; valid: a list of at least 1, each"),
        ("sae_build", "build.seed=-1", "build.seed=-1 is invalid: out of range; valid: an integer in [0, 2**32-1]"),
    ],
)
def test_other_apps_validate_too(name, override, message):
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        check_command(name, [override])


def test_analyze_coef_sweep_is_positive_multipliers_that_env_true_runs():
    """coef_sweep: the coefficient sweep's multiples of steering.coef, default 0.5, 1, 2, 4; each > 0, at least one;
    a sweep other than the default needs env=true, the only mode that runs it (else it would do nothing)."""
    assert compose_config("analyze", []).coef_sweep == [0.5, 1.0, 2.0, 4.0]
    cfg = compose_config("analyze", ["env=true", "coef_sweep=[0.5,1,2,4,8,16]"])
    assert cfg.coef_sweep == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
    assert compose_config("analyze", ["coef_sweep=[4,2,1,0.5]"]).coef_sweep == [4.0, 2.0, 1.0, 0.5]  # the default
    for bad, why in (("[-1]", "out of range"), ("[]", "out of range"), ("[0.5,0]", "out of range")):
        with pytest.raises(ConfigError, match="^" + re.escape("coef_sweep=")) as err:
            check_command("analyze", ["env=true", f"coef_sweep={bad}"])
        assert why in str(err.value) and "\n" not in str(err.value)
    message = "coef_sweep=[1.0,8.0] is invalid: the coefficient sweep runs with env=true only"
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        check_command("analyze", ["run_dir=/nonexistent", "coef_sweep=[1,8]"])
    for bad in ([0.5, -2.0], []):  # the library's way in (crl.analysis.api) is checked the same
        with pytest.raises(ConfigError, match=re.escape("valid: a list of at least 1, each a number > 0")):
            load(AnalyzeConfig, {"env": True, "coef_sweep": bad})


def test_bench_policy_checks_fixed_features_against_its_narrowest_width():
    message = "masking.features=[3,20] is invalid: feature 20 is not in the 16-feature SAE of bench.widths"
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        check_command("bench_policy", ["masking=fixed", "masking.features=[3,20]", "bench.widths=[64,16]"])
    check_command("bench_policy", ["masking=fixed", "masking.features=[3,15]", "bench.widths=[64,16]"])


def _seed_fields(cls: type, prefix: str = "") -> Iterator[tuple[str, dict]]:
    for f in dataclasses.fields(cls):
        tp = f.default_factory().__class__ if f.default_factory is not dataclasses.MISSING else None
        if tp is not None and dataclasses.is_dataclass(tp):
            yield from _seed_fields(tp, f"{prefix}{f.name}.")
        elif "seed" in f.name:
            yield prefix + f.name, dict(f.metadata)


def test_every_seed_takes_the_range_every_generator_accepts():
    fields = {f"{app}:{key}": meta for app, cls in APPS.items() for key, meta in _seed_fields(cls)}
    assert {"train:seed", "train:task.seed", "train:model.seed", "bench_rollout:bench.seed"} <= set(fields)
    assert {"sae_build:build.seed", "eval:seed", "analyze:seed", "analyze:env_seeds", "soak:seed"} <= set(fields)
    wrong = [key for key, meta in fields.items() if (meta.get("ge"), meta.get("le")) != (0, 2**32 - 1)]
    assert not wrong, f"seed fields without the range [0, 2**32-1]: {wrong}"


def test_every_command_has_a_root_schema():
    assert {"_".join(words) for words in cli.COMMANDS} == set(APPS)  # cli composes conf/<words joined by _>.yaml


def test_hydra_flags_are_left_to_hydra():
    check_command("train", ["--help"])  # no composition at all
    check_command("train", ["--info", "defaults"])
    check_command("train", ["--cfg", "job", "ppo.num_envs=4"])
    check_command("train", ["-m", "seed=0,1,2", "steering.layer=3,6"])


# -- each default once ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(APPS))
def test_composed_default_config_is_the_schema_default(name):
    assert compose_config(name, []) == APPS[name]()


@pytest.mark.parametrize(
    "group,option",
    [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))] + [("experiment", "planted")],
)
def test_every_group_option_validates(group, option):
    compose_config("train", [f"{group}={option}", *NEEDS.get((group, option), [])])


def _restated(data: dict, defaults: dict, skip: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """Keys of `data` whose value equals the schema default."""
    out = []
    for key, value in data.items():
        if key in ("defaults", "hydra") or key in skip or key not in defaults:
            continue
        if isinstance(value, dict) and isinstance(defaults[key], dict):
            out += [f"{key}.{k}" for k in _restated(value, defaults[key])]
        elif value == defaults[key]:
            out.append(key)
    return out


def test_no_yaml_restates_a_schema_default():
    restated = []
    for group, cls in GROUPS.items():
        for path in sorted((CONF / group).glob("*.yaml")):
            data = yaml.safe_load(path.read_text()) or {}
            assert f"base_{group}" in data.get("defaults", []), f"{path} does not pull in its schema"
            keys = _restated(data, dataclasses.asdict(cls()), {IDENTITY.get(group, "")})
            restated += [f"{path.relative_to(CONF)}: {k}" for k in keys]
    for name, cls in APPS.items():
        data = yaml.safe_load((CONF / f"{name}.yaml").read_text())
        assert f"base_{name}" in data["defaults"], f"conf/{name}.yaml does not pull in its schema"
        restated += [f"{name}.yaml: {k}" for k in _restated(data, dataclasses.asdict(cls()))]
    for path in sorted((CONF / "experiment").glob("*.yaml")):
        keys = _restated(yaml.safe_load(path.read_text()), dataclasses.asdict(TrainConfig()))
        restated += [f"{path.relative_to(CONF)}: {k}" for k in keys]
    assert not restated, "these restate a default of crl/config; drop them from the YAML: " + ", ".join(restated)


def test_ppo_drift_resolved_toward_the_yaml():
    assert PPOConfig().total_updates == 12  # what users ran (the dataclass said 20)


# -- the schema machinery ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Inner:
    mode: Literal["a", "b"] = "a"
    sizes: list[int] = param(factory=lambda: [1, 2], ge=1, min_len=1)
    rate: float | None = param(None, gt=0, le=1)


@dataclasses.dataclass
class _Outer:
    inner: _Inner = dataclasses.field(default_factory=_Inner)
    n: int = param(3, ge=1)


@pytest.mark.parametrize(
    "data,message",
    [
        ({"n": 0}, "n=0 is invalid: out of range; valid: an integer >= 1"),
        ({"n": True}, "n=true is invalid: not an integer"),
        ({"inner": {"mode": "c"}}, "x.inner.mode=c is invalid: unknown choice; valid: a, b"),
        ({"inner": {"sizes": []}}, "x.inner.sizes=[] is invalid: out of range; valid: a list of at least 1, each"),
        ({"inner": {"rate": 2.0}}, "x.inner.rate=2.0 is invalid: out of range; valid: a number in (0, 1] or null"),
        ({"inner": {"colour": 1}}, "x.inner.colour=1 is invalid: no such key; valid: mode, sizes, rate"),
    ],
)
def test_load_reports_the_first_bad_value(data, message):
    with pytest.raises(ConfigError) as err:
        load(_Outer, data, "x." if "inner" in data else "")
    assert str(err.value).startswith(message)


def test_load_fills_defaults_and_converts_ints_for_floats():
    out = load(_Outer, {"inner": {"rate": 1}})
    assert out == _Outer(inner=_Inner(rate=1.0)) and isinstance(out.inner.rate, float)
    validate(TrainConfig())


def test_omegaconf_view_types_literals_as_their_value_type():
    from omegaconf import OmegaConf

    node = OmegaConf.structured(omegaconf_schema(_Outer))
    assert node.inner.mode == "a" and list(node.inner.sizes) == [1, 2]
    with pytest.raises(Exception, match="could not be converted"):
        node.n = "abc"
    assert describe(Literal["x", "y"] | None) == "x, y or null"


def test_a_val_split_too_small_to_select_on_is_one_line_before_any_model_loads(tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "CRL_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, "-m", "crl.cli", "train", "task.n_val=5", f"hydra.run.dir={tmp_path / 'run'}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("crl: error: "), proc.stderr
    assert "has 5 prompts, fewer than run.min_val_prompts=20" in lines[0]
    assert "run.select=last" in lines[0]  # the fix is named
    assert not cache.exists() or not any(cache.iterdir())  # before the model was converted or loaded
