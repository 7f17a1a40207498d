"""Acceptance tests of `SteeringVecEnv`: unsteered = plain generation, batches = single runs, naive = cached,
bad input, step records, reproducibility (fixtures: tests/envs/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crl.backends.model import tiny_model
from crl.config import SteeringConfig, TaskConfig
from crl.envs.rollout import FixedFeature, NoSteer, RandomFeature, run_episodes
from crl.envs.single import SteeringEnv
from crl.envs.steering_env import SteeringVecEnv
from crl.errors import CRLError
from tests.envs.helpers import (
    D_SAE,
    EOS_F,
    PerPrompt,
    assert_same_records,
    n_hooks,
    prompt_ids,
    reference_tokens,
    tokens,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# -- (a) no steering reproduces plain greedy generation ---------------------------------------------------
@pytest.mark.parametrize("how", ["coef0", "noop"])
def test_unsteered_matches_generate(lm, sae, task, examples, how):
    exs = examples[:4]
    coef = 0.0 if how == "coef0" else 0.3
    cfg = SteeringConfig(coef=coef, coef_mode="raw", max_new_tokens=6)
    ref_batch = reference_tokens(lm, task, exs, 6)
    env = SteeringVecEnv(lm, sae, task, exs, cfg, num_envs=4)
    policy = FixedFeature(3) if how == "coef0" else NoSteer(env)
    batched = run_episodes(env, exs, policy)
    assert [tokens(ep) for ep in batched] == ref_batch
    single = SteeringVecEnv(lm, sae, task, exs, cfg, num_envs=1)
    for ex, ep in zip(exs, run_episodes(single, exs, policy), strict=True):
        assert tokens(ep) == reference_tokens(lm, task, [ex], 6)[0]
    assert {s["feature"] for ep in batched for s in ep.steps} == ({3} if how == "coef0" else {-1})


def test_default_model_unsteered_matches_generate():
    """(a) on the real offline default model (SmolLM2-135M-Instruct, chat template, left padding)."""
    from crl.backends.model import load_model
    from crl.config import ModelConfig
    from crl.envs.tasks.registry import make_task
    from crl.run.bench import random_sae

    lm = load_model(ModelConfig())
    task = make_task(TaskConfig(name="arith", n_train=2, n_val=2, n_test=8, max_new_tokens=4))
    pool = task.load("test")
    first = len(prompt_ids(lm, task, pool[0]))
    exs = [pool[0], next(e for e in pool if len(prompt_ids(lm, task, e)) != first)]  # left padding matters
    env = SteeringVecEnv(lm, random_sae(lm.d_model, 64, 6), task, exs, SteeringConfig(), num_envs=2)
    eps = run_episodes(env, exs, NoSteer(env))
    for got, ref in [
        *zip(eps, reference_tokens(lm, task, exs, 4), strict=True),
        *[(ep, reference_tokens(lm, task, [ep.example], 4)[0]) for ep in eps],
    ]:
        if got.stop_reason == "stop_string":  # arith stops at a newline, generate() does not
            assert tokens(got) == ref[: len(tokens(got))]
        else:
            assert tokens(got) == ref


# -- (c) a batch equals N single-episode runs -------------------------------------------------------------
def test_batched_env_equals_single_runs(lm, sae, task, examples):
    exs = examples[:4]
    cfg = SteeringConfig(coef=0.3, coef_mode="raw", max_new_tokens=5)
    policy = PerPrompt(eos_at={exs[0].id: 1, exs[2].id: 2})
    venv = SteeringVecEnv(lm, sae, task, exs, cfg, num_envs=3)  # batches of 3 and 1 (two idle rows)
    batched = run_episodes(venv, exs, policy, keep_tensors=True)
    assert [len(ep.steps) for ep in batched] == [2, 5, 3, 5]  # early EOS rows were compacted out
    assert [ep.stop_reason for ep in batched] == ["eos", "max_new_tokens", "eos", "max_new_tokens"]
    single = SteeringEnv(lm, sae, task, exs, cfg)
    for ex, ep in zip(exs, batched, strict=True):
        obs, info = single.reset(options={"example": ex})
        records, observations, done = [], [obs], False
        while not done:
            obs, reward, done, truncated, info = single.step(policy.action(ex.id, info["step"]))
            records.append(info["record"])
            observations.append(obs)
            assert not truncated
        assert_same_records(records, ep.steps)
        torch.testing.assert_close(torch.from_numpy(np.stack(observations[:-1])), ep.obs, rtol=1e-4, atol=1e-5)
        assert info["final"]["completion"] == ep.completion and reward == ep.reward
        assert info["final"]["stop_reason"] == ep.stop_reason
        assert not observations[-1].any()  # the terminal observation is zero


# -- (d) the naive reference (re-run the prefix) equals KV-cached decoding --------------------------------
@pytest.mark.parametrize("mode", ["raw", "relative"])
def test_naive_equals_cached(lm, sae, task, examples, mode):
    exs = examples[:4]
    policy = PerPrompt(eos_at={exs[1].id: 2} if mode == "raw" else {})
    out = {}
    for use_cache in (True, False):
        cfg = SteeringConfig(coef=0.3 if mode == "raw" else 1.0, coef_mode=mode, max_new_tokens=5, use_cache=use_cache)
        out[use_cache] = run_episodes(
            SteeringVecEnv(lm, sae, task, exs, cfg, num_envs=4), exs, policy, keep_tensors=True
        )
    for a, b in zip(out[True], out[False], strict=True):
        assert_same_records(a.steps, b.steps)
        torch.testing.assert_close(a.obs, b.obs, rtol=1e-4, atol=1e-5)
    if mode == "raw":
        assert out[True][1].stop_reason == "eos"  # compaction happened mid-batch in both decoders


# -- (g) bad input fails early with a one-line CRLError ---------------------------------------------------
def test_bad_input(lm, sae, task, examples):
    env = SteeringVecEnv(lm, sae, task, examples[:2], SteeringConfig(max_new_tokens=3), num_envs=2)
    env.reset(options={"examples": examples[:2]})
    for bad in (2 * D_SAE + 1, -1):  # two coefficient levels by default: 2 * D_SAE is the no-op
        with pytest.raises(CRLError, match="out of range") as e:
            env.step(np.array([0, bad]))
        assert "\n" not in str(e.value)
    env.step(np.array([0, 1]))  # the episode survives a rejected action
    env.close()
    single = SteeringEnv(lm, sae, task, examples[:2], SteeringConfig(allow_noop=False, max_new_tokens=3))
    single.reset(seed=0)
    with pytest.raises(CRLError, match="out of range"):
        single.step(2 * D_SAE)
    with pytest.raises(CRLError, match="one integer"):
        single.step(np.array([1, 2]))
    single.close()
    with pytest.raises(CRLError, match="no examples"):
        SteeringVecEnv(lm, sae, task, [], SteeringConfig(), num_envs=1)
    with pytest.raises(CRLError, match="no examples"):
        SteeringEnv(lm, sae, task, [], SteeringConfig())
    with pytest.raises(CRLError, match="does not fit") as e:
        SteeringVecEnv(lm, sae, task, examples, SteeringConfig(max_new_tokens=lm.max_context - 2), num_envs=1)
    assert "\n" not in str(e.value)
    room = lm.max_context - max(len(prompt_ids(lm, task, ex)) for ex in examples)
    SteeringVecEnv(lm, sae, task, examples, SteeringConfig(max_new_tokens=room), num_envs=1)  # just fits
    with pytest.raises(CRLError, match="does not fit"):
        SteeringVecEnv(lm, sae, task, examples, SteeringConfig(max_new_tokens=room + 1), num_envs=1)
    with pytest.raises(CRLError, match="coef_mode"):
        SteeringVecEnv(lm, sae, task, examples, SteeringConfig(coef_mode="absolute"), num_envs=1)
    with pytest.raises(CRLError, match="d_in"):
        SteeringVecEnv(tiny_model("llama", n_layers=2, d_model=32), sae, task, examples, SteeringConfig(), 1)
    assert n_hooks(lm) == 0


# -- (h) what a step records -------------------------------------------------------------------------------
def test_info_records(lm, sae, task, examples):
    ex = examples[0]
    env = SteeringEnv(lm, sae, task, [ex], SteeringConfig(coef=0.3, coef_mode="raw", max_new_tokens=3))
    obs, info = env.reset(options={"example": ex})
    acts = sae.encode(torch.from_numpy(obs)[None]).float()[0]
    feature = int(acts.masked_fill(torch.arange(D_SAE) == EOS_F, -1.0).argmax())  # EOS_F would end it
    obs1, _, _, _, info = env.step(feature)
    rec = info["record"]
    assert rec["token_id"] == int(rec["token_id"]) and rec["token"] == lm.tokenizer.decode([rec["token_id"]])
    assert rec["feature"] == feature and rec["coef"] == 0.3 and rec["step"] == 0
    assert rec["feature_act"] == pytest.approx(float(acts[feature]), rel=1e-5) and rec["feature_act"] > 0
    assert rec["resid_norm"] == pytest.approx(float(np.linalg.norm(obs)), rel=1e-5)
    _, _, _, _, info = env.step(env.noop)
    assert info["record"]["feature"] == -1 and info["record"]["coef"] == 0.0 and info["record"]["step"] == 1
    assert info["record"]["resid_norm"] == pytest.approx(float(np.linalg.norm(obs1)), rel=1e-5)
    _, reward, done, _, info = env.step(env.noop)
    final = info["final"]
    assert done and final["n_steps"] == 3 and final["stop_reason"] in ("max_new_tokens", "eos")
    assert [r["token_id"] for r in final["records"]][0] == rec["token_id"] and final["reward"] == reward
    env.close()


# -- (i) reproducibility ----------------------------------------------------------------------------------
def test_same_seed_same_records(lm, sae, task, examples):
    cfg = SteeringConfig(coef=0.3, coef_mode="raw", max_new_tokens=5, greedy=False)

    def run(seed: int) -> list[list[dict]]:
        env = SteeringVecEnv(lm, sae, task, examples, cfg, num_envs=3, seed=seed)
        obs, info = env.reset(seed=seed)
        policy = RandomFeature(env.n_steer, seed=seed)
        out: list[list[dict]] = [[] for _ in range(3)]
        while info["active"].any():
            obs, _, _, _, info = env.step(policy.act(obs, info)[0])
            for r, rec in enumerate(info["records"]):
                if rec is not None:
                    out[r].append(rec)
        env.close()
        return out

    a, b, c = run(3), run(3), run(4)
    assert a == b
    assert a != c
