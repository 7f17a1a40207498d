"""`Components`: the one place that builds envs, fresh and trained policies, run.json, and the identity check."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from crl.agent.ppo import PolicyAgent
from crl.errors import CRLError
from crl.logs.writer import RunWriter
from crl.run.components import POLICY_FILE, Components, build
from tests.run.helpers import QUICK, compose_train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def comps() -> Components:
    return build(compose_train(QUICK))


def test_env_over_a_split_or_examples_with_steering_overrides(comps):
    env = comps.env("test", comps.masker(for_eval=True), seed=0)
    assert env.num_envs == comps.ppo.num_envs and env.examples == comps.splits["test"]
    assert env.cfg == comps.steering and env.masker is not None
    env.close()
    exs = comps.splits["val"][:3]
    env = comps.env(exs, num_envs=2, coef=0.0)
    assert env.examples == exs and env.num_envs == 2 and env.masker is None
    assert env.cfg.coef == 0.0 and comps.steering.coef != 0.0  # the override does not leak back
    env.close()


def test_run_info_holds_the_identity(comps):
    info = comps.run_info("r", seed=3)
    assert info.identity() == comps.identity()
    assert (info.run, info.seed, info.d_sae, info.layer) == ("r", 3, comps.sae.d_sae, 1)
    assert info.planted == comps.planted and info.coef == comps.steering.coef
    comps.check_identity(info, "somewhere")  # matches itself


def test_identity_mismatch_is_one_line_naming_the_keys(comps):
    saved = dataclasses.replace(comps.run_info("r", 0), sae_identity="another SAE", layer=5)
    with pytest.raises(CRLError, match="incompatible.*sae_identity.*another SAE.*layer") as e:
        comps.check_identity(saved, "runs/x")
    assert "\n" not in str(e.value)
    with pytest.raises(CRLError, match="sae_identity") as e:
        comps.check_identity(saved, "runs/x", keys=("sae_identity",))
    assert "layer: run has" not in str(e.value)
    comps.check_identity(saved, "runs/x", keys=("model", "task"))
    comps.check_identity(dataclasses.replace(saved, task_seed=None), "runs/x", keys=("task_seed",))  # not recorded


def test_load_policy_from_policy_file_or_checkpoint(comps, tmp_path):
    net = comps.new_policy()
    with torch.no_grad():
        next(net.parameters()).add_(1.0)  # differs from a fresh network
    with pytest.raises(CRLError, match="neither"):
        comps.load_policy(tmp_path)
    w = RunWriter(tmp_path)
    w.save_checkpoint({"policy": net.state_dict()})
    w.close()
    for _ in range(2):  # the checkpoint, then policy.pt, which wins
        agent = comps.load_policy(tmp_path, greedy=False, n_alternatives=2)
        assert isinstance(agent, PolicyAgent) and not agent.greedy and agent.k == 2
        loaded = agent.net.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in net.state_dict().items())
        torch.save(net.state_dict(), tmp_path / POLICY_FILE)
