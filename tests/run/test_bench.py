"""`bench_rollout` on a tiny model: the result's shape and sanity, never its timings (the command: tests/commands)."""

from __future__ import annotations

import json
import math
import statistics
import time

import pytest

from crl.config import BenchConfig, TaskConfig
from crl.envs.tasks.registry import make_task
from crl.errors import CRLError
from crl.run.bench import UtilizationSampler, bench_rollout, gpu_utilization_reader, random_sae

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm():
    from crl.backends.model import tiny_model

    return tiny_model("llama", n_layers=2, d_model=64)


def _positive(x: object) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_bench_rollout_structure(lm):
    task = make_task(TaskConfig(name="arith", n_train=2, n_val=2, n_test=3))
    cfg = BenchConfig(batch_sizes=[1, 4], naive_batch_sizes=[4, 2], new_tokens=3, repeats=2, layer=1, d_sae=16)
    out = json.loads(json.dumps(bench_rollout(lm, random_sae(64, 16, 1), task, task.load("test"), cfg)))
    assert out["new_tokens"] == 3 and out["d_sae"] == 16 and out["layer"] == 1
    assert list(out["results"]) == ["1", "2", "4"]  # batch 4 cycles the 3 prompts
    for b in ("1", "4"):
        row = out["results"][b]
        for key in ("plain_s", "steered_s", "plain_tok_s", "steered_tok_s", "overhead_ratio"):
            assert _positive(row[key]), (b, key, row[key])
        assert row["overhead_ratio"] == pytest.approx(row["plain_s"] / row["steered_s"])
        assert row["steered_tok_s"] == pytest.approx(int(b) * 3 / row["steered_s"])
        # The training path: rollouts with the policy plus one PPO update, per decision.
        for key in ("train_s", "train_update_s", "train_decisions_s"):
            assert _positive(row[key]), (b, key, row[key])
        assert row["train_update_s"] < row["train_s"]
        assert row["train_decisions_s"] == pytest.approx(int(b) * 3 / row["train_s"])
        for key in ("peak_mem_mib", "train_peak_mem_mib", "gpu_util_plain", "gpu_util_steered", "gpu_util_train"):
            assert row[key] is None, key  # CUDA only
    assert out["device"] == "cpu" and out["device_name"] is None and out["gpu_util_source"] is None
    assert out["model_dtype"] == "float32"
    assert "naive_speedup" not in out["results"]["1"]
    for b in ("2", "4"):  # batch 2 is naive-only: it gets its own cached steered time to compare with
        row = out["results"][b]
        assert _positive(row["naive_speedup"]) and _positive(row["naive_tok_s"]) and _positive(row["steered_s"])
        assert row["naive_speedup"] == pytest.approx(row["naive_s"] / row["steered_s"])


def test_bench_rejects_bad_sizes(lm):
    task = make_task(TaskConfig(name="arith", n_train=2, n_val=2, n_test=2))
    for cfg in (
        BenchConfig(batch_sizes=[0]),
        BenchConfig(batch_sizes=[]),
        BenchConfig(new_tokens=0),
        BenchConfig(batch_sizes=[1], layer=5),
    ):
        with pytest.raises(CRLError):
            bench_rollout(lm, random_sae(64, 8, 1), task, task.load("test"), cfg)


def test_utilization_sampler_averages_readings_and_is_null_without_a_reader():
    readings = iter([10.0, None, 30.0, 20.0, 20.0] + [40.0] * 10_000)
    sampler = UtilizationSampler(lambda: next(readings), interval=0.001)
    for until in (2, 4):  # entries add up; a None (no reading) is skipped
        with sampler:
            deadline = time.time() + 10
            while len(sampler.readings) < until and time.time() < deadline:
                time.sleep(0.001)
    assert sampler.readings[:4] == [10.0, 30.0, 20.0, 20.0]
    assert sampler.mean() == pytest.approx(statistics.fmean(sampler.readings))
    with UtilizationSampler(None) as none:
        pass
    assert none.mean() is None


def test_gpu_utilization_reader_on_cpu_and_through_nvidia_smi(monkeypatch):
    import shutil
    import subprocess

    import torch

    assert gpu_utilization_reader(torch.device("cpu")) == (None, None)

    def no_pynvml(*_a, **_k):
        raise ModuleNotFoundError("pynvml does not seem to be installed")

    def no_uuid(*_a, **_k):
        raise AttributeError("uuid")

    monkeypatch.setattr(torch.cuda, "utilization", no_pynvml)
    monkeypatch.setattr(torch.cuda, "get_device_properties", no_uuid)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert gpu_utilization_reader(torch.device("cuda", 0)) == (None, None)  # neither source
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    out = {"stdout": "GPU-1111, 37\n"}
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, out["stdout"], ""))
    read, source = gpu_utilization_reader(torch.device("cuda", 0))
    assert source == "nvidia-smi" and read() == 37.0
    out["stdout"] = "GPU-1111, 5\nGPU-2222, 80\n"  # several GPUs and no uuid to tell which: no reading
    assert read() is None
    out["stdout"] = "garbage"
    assert read() is None
