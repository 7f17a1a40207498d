"""`model.device=cuda` places everything (model, SAE, policy, masking inputs, the planted task's tensors): train,
eval and analyze end to end on a GPU. Skipped where no GPU is visible; the placement code itself also runs on CPU in
every other test, since the same code paths take `model.device` whatever it is."""

from __future__ import annotations

import pytest
import torch

from crl.logs import schema
from crl.logs.reader import read_jsonl
from crl.run.components import build
from crl.run.evaluate import evaluate_run
from crl.run.train import train
from tests.run.helpers import QUICK, compose_train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")


def test_everything_follows_model_device(tmp_path):
    comps = build(compose_train([*QUICK, "model.device=cuda"]))
    assert comps.lm.device.type == "cuda"
    assert comps.sae.sae.W_dec.device.type == "cuda"
    assert comps.new_policy().device.type == "cuda"


def test_train_eval_and_analyze_on_cuda(tmp_path):
    from crl.analysis.api import analyze_run

    run = tmp_path / "run"
    summary = train(compose_train([*QUICK, "model.device=cuda", "ppo.total_updates=4"]), run)
    assert summary["after"]["n"] > 0
    assert read_jsonl(run / schema.INTERVENTIONS)
    again = evaluate_run(run, "test")
    assert again["n"] == summary["after"]["n"]
    assert analyze_run(run, env=True, env_seeds=[0]).exists()  # the replay analyses re-run the model on the GPU


def test_advantages_that_need_unsteered_rollouts_on_cuda(tmp_path):
    args = [*QUICK, "model.device=cuda", "ppo.total_updates=2", "ppo.advantage=unsteered"]
    summary = train(
        compose_train([*args, "ppo.regularizer=kl", "ppo.reg_coef=0.1", "steering.coef_levels=[1,-1]"]), tmp_path
    )
    assert summary["after"]["n"] > 0
