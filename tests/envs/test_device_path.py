"""The env's on_device mode (crl/envs/steering_env.py; `run_episodes` with an `on_device` policy such as the PPO agent):
the same episodes, records and PPO tensors as the host mode, bad input reported when the batch ends, and models in
bfloat16 / float16 with the steering added in float32 (fixtures: tests/envs/conftest.py)."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import pytest
import torch

from crl.agent.masking import FeatureMasker
from crl.agent.policy import ActorCritic
from crl.agent.ppo import PolicyAgent
from crl.backends.model import FrozenLM, tiny_model
from crl.config import MaskingConfig, PolicyConfig, SteeringConfig
from crl.envs.lockstep import DecodeSpec, LockstepDecoder
from crl.envs.rollout import NoSteer, run_episodes
from crl.envs.steering_env import SteeringVecEnv
from crl.errors import CRLError
from tests.envs.helpers import D_SAE, PerPrompt, make_sae, n_hooks

pytestmark = pytest.mark.usefixtures("one_thread")

# Every per-token branch: two levels, relative coefficients, sampled decoding, forced steps, top-k observations.
STEER = SteeringConfig(
    coef=0.5, coef_levels=[1.0, -1.0], max_new_tokens=5, greedy=False, temperature=0.8, steer_steps=2, obs_topk=3
)


class HostOnly:
    """The same policy, driven through numpy (the env's host mode)."""

    def __init__(self, policy: Any):
        self.policy = policy

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        assert isinstance(obs, np.ndarray) and isinstance(info["action_mask"], np.ndarray)
        return self.policy.act(obs, info)


@pytest.fixture(autouse=True)
def device_mode_on_cpu(monkeypatch):
    """run_episodes takes the host mode on a CPU model; these tests compare the device mode with it."""
    from crl.envs import rollout

    monkeypatch.setattr(rollout, "DEVICE_MODE_ON_CPU", True)


def _masker() -> FeatureMasker:
    masker = FeatureMasker(MaskingConfig(mode="adaptive", top_k=4, max_share=0.3), D_SAE, allow_noop=True)
    masker.share[:6] = 0.5  # over the cap: the adaptive branch masks them
    return masker


def _agent(lm: FrozenLM, sae: Any, sample: torch.Tensor) -> PolicyAgent:
    torch.manual_seed(0)
    cfg = PolicyConfig(hidden=16, noop_init_bias=0.0, abstain="knn", abstain_k=2, abstain_quantile=0.5)
    net = ActorCritic(lm.d_model, sae.directions(), True, cfg, n_levels=2)
    net.set_obs_stats(sample)
    net.fit_abstention(sample, sample)  # the median: about half the decisions abstain
    return PolicyAgent(net)


def _episodes(lm, sae, task, exs, policy, seed: int = 3):
    env = SteeringVecEnv(lm, sae, task, exs, STEER, num_envs=3, seed=seed, masker=_masker())
    torch.manual_seed(seed)  # the policy samples from the global generator
    try:
        return run_episodes(env, exs, policy, keep_tensors=True)
    finally:
        env.close()


def test_on_device_mode_gives_the_host_modes_episodes(lm, sae, task, examples):
    exs = examples[:5]  # batches of 3 and 2: the second has an idle row
    env = SteeringVecEnv(lm, sae, task, exs, STEER, num_envs=3)
    sample = torch.cat([ep.obs for ep in run_episodes(env, exs, NoSteer(env), keep_tensors=True)])
    env.close()
    agent = _agent(lm, sae, sample)
    device = _episodes(lm, sae, task, exs, agent)
    host = _episodes(lm, sae, task, exs, HostOnly(agent))
    steps = [s for ep in device for s in ep.steps]
    assert {s["abstained"] for s in steps} == {True, False}  # the rule narrowed some masks, not all
    assert {s["coef"] for s in steps} >= {0.5, -0.5, 0.0}
    for d, h in zip(device, host, strict=True):
        assert (d.completion, d.reward, d.stop_reason) == (h.completion, h.reward, h.stop_reason)
        assert d.steps == h.steps  # every record value, extras included, exactly
        assert torch.equal(d.obs, h.obs) and torch.equal(d.masks, h.masks) and torch.equal(d.actions, h.actions)
        assert d.obs.dtype == torch.float32 and d.masks.dtype == torch.bool and d.actions.dtype == torch.long
        assert not d.masks[[s["abstained"] for s in d.steps], :-1].any()  # an abstained decision: only the no-op


class WithExtras(PerPrompt):
    """Per-prompt actions (some episodes end early, on the EOS feature) with extras that name their prompt and step:
    a value, and a variable-length list of ids."""

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        actions, _ = super().act(obs, info)
        tags = [f"{p}:{s}" for p, s in zip(info["prompt_id"], info["step"], strict=True)]
        value = np.array([zlib.crc32(t.encode()) % 1000 / 7 for t in tags])
        ids = [list(range(int(s) % 3)) for s in info["step"]]
        return actions, {"value": value.astype(np.float32), "ids": ids}


class OnDevice:
    """A numpy policy behind the on_device protocol: tensors in and out, lists of ids padded with -1."""

    on_device = True

    def __init__(self, policy: Any):
        self.policy = policy

    def act(self, obs: torch.Tensor, info: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        actions, extras = self.policy.act(obs.cpu().numpy(), {**info, "action_mask": info["action_mask"].cpu().numpy()})
        ids = torch.full((len(obs), 3), -1, dtype=torch.long)
        for r, row in enumerate(extras["ids"]):
            ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        return torch.as_tensor(actions), {"value": torch.as_tensor(extras["value"]), "ids": ids}


def test_rows_that_end_at_different_steps_get_their_own_records_and_tensors(lm, sae, task, examples):
    exs = examples[:5]
    policy = WithExtras(eos_at={exs[0].id: 0, exs[2].id: 2, exs[4].id: 1})
    cfg = SteeringConfig(coef=0.3, coef_mode="raw", max_new_tokens=5)
    out = {}
    for mode, pol in (("host", policy), ("device", OnDevice(policy))):
        env = SteeringVecEnv(lm, sae, task, exs, cfg, num_envs=3)
        out[mode] = run_episodes(env, exs, pol, keep_tensors=True)
        env.close()
    assert sorted({len(ep.steps) for ep in out["device"]}) == [1, 2, 3, 5]
    for d, h in zip(out["device"], out["host"], strict=True):
        assert d.steps == h.steps
        expect = [float(np.float32(zlib.crc32(f"{d.example.id}:{s['step']}".encode()) % 1000 / 7)) for s in d.steps]
        assert [s["value"] for s in d.steps] == expect  # each step's extras in its own record
        assert [s["ids"] for s in d.steps] == [list(range(s["step"] % 3)) for s in d.steps]
        assert torch.equal(d.obs, h.obs) and torch.equal(d.masks, h.masks) and torch.equal(d.actions, h.actions)


def test_on_device_observations_are_tensors_and_records_come_at_the_end(lm, sae, task, examples):
    exs = examples[:2]
    env = SteeringVecEnv(lm, sae, task, exs, STEER, num_envs=2)
    obs, info = env.reset(options={"examples": exs, "on_device": True})
    assert isinstance(obs, torch.Tensor) and obs.dtype == torch.float32 and obs.shape == (2, lm.d_model)
    assert isinstance(info["action_mask"], torch.Tensor) and isinstance(info["topk_features"], torch.Tensor)
    assert isinstance(info["active"], np.ndarray)
    finals: dict[int, dict] = {}
    while len(finals) < 2:
        obs, _, _, _, info = env.step(torch.full((2,), env.noop))
        assert "records" not in info
        finals |= {r: f for r, f in enumerate(info["final"]) if f is not None}
    assert all(len(f["records"]) == f["n_steps"] > 0 for f in finals.values())  # filled by the last step
    env.close()


def test_on_device_bad_actions_and_empty_masks_fail_when_the_batch_ends(lm, sae, task, examples):
    exs = examples[:2]

    class Bad:
        on_device = True

        def act(self, obs, info):
            a = torch.zeros(len(obs), dtype=torch.long)
            a[1] = 10_000 if int(info["step"][1]) == 1 else 3
            return a, {}

    env = SteeringVecEnv(lm, sae, task, exs, SteeringConfig(max_new_tokens=3), num_envs=2)
    with pytest.raises(CRLError, match="feature index 10000 is out of range"):
        run_episodes(env, exs, Bad())
    assert n_hooks(lm) == 0

    def empty_row_1(acts, rows, steps):
        return (rows != 1)[:, None].expand(len(rows), D_SAE).clone()

    cfg = SteeringConfig(allow_noop=False, max_new_tokens=3)
    env = SteeringVecEnv(lm, sae, task, exs, cfg, num_envs=2, masker=empty_row_1)
    agent = PolicyAgent(ActorCritic(lm.d_model, sae.directions(), False, PolicyConfig(hidden=8), n_levels=2))
    with pytest.raises(CRLError, match="no valid action for row 1"):
        run_episodes(env, exs, agent)
    assert n_hooks(lm) == 0
    with pytest.raises(CRLError, match="no valid action for row 1"):  # the host mode says so at once
        env.reset(options={"examples": exs})
    assert n_hooks(lm) == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_model_steers_in_float32(task, examples, dtype):
    lm = tiny_model("llama", n_layers=2, d_model=64, seed=0)
    lm.model.to(dtype)
    sae = make_sae(lm)
    exs = examples[:3]
    # The decoder adds the delta to the float32 residual and rounds the sum once (crl/envs/lockstep.py).
    seen: list[torch.Tensor] = []

    def capture(_mod, args, kwargs):
        seen.append((args[0] if args else kwargs["hidden_states"])[:, -1, :].clone())

    dec = LockstepDecoder(lm, sae.hook_name)
    handle = lm.layers[1].register_forward_pre_hook(capture, with_kwargs=True)
    try:
        d = dec.start([task.format_prompt(e, lm.tokenizer) for e in exs], DecodeSpec(max_new_tokens=2))
        assert d.resid.dtype == dtype
        delta = torch.randn(len(exs), lm.d_model, generator=torch.Generator().manual_seed(0)) * 1e-2
        dec.send(delta)
    finally:
        handle.remove()
        dec.close()
    assert torch.equal(seen[0], (d.resid.float() + delta).to(dtype))
    # The whole path runs: float32 observations and records, on device and on the host alike.
    env = SteeringVecEnv(lm, sae, task, exs, SteeringConfig(coef=0.5, max_new_tokens=4), num_envs=3)
    agent = PolicyAgent(ActorCritic(lm.d_model, sae.directions(), True, PolicyConfig(hidden=8), n_levels=2))
    torch.manual_seed(0)
    on_device = run_episodes(env, exs, agent, keep_tensors=True)
    torch.manual_seed(0)
    on_host = run_episodes(env, exs, HostOnly(agent), keep_tensors=True)
    env.close()
    assert [ep.steps for ep in on_device] == [ep.steps for ep in on_host]
    assert all(ep.obs.dtype == torch.float32 for ep in on_device)
    assert all(np.isfinite(s["resid_norm"]) and s["resid_norm"] > 0 for ep in on_device for s in ep.steps)
