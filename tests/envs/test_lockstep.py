"""The lockstep decoder's worker thread and hooks: never outliving an episode, reset mid-episode, a model
shared by paused envs."""

from __future__ import annotations

import gc
import time

import numpy as np
import pytest
import torch

from crl.config import SteeringConfig
from crl.envs.lockstep import DecodeSpec, LockstepDecoder
from crl.envs.rollout import run_episodes
from crl.envs.steering_env import SteeringVecEnv
from crl.errors import CRLError
from tests.envs.helpers import (
    D_SAE,
    PerPrompt,
    assert_same_records,
    deadline,
    n_hooks,
    reference_tokens,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# -- (f) hooks never outlive an episode; reset mid-episode; the model stays usable -------------------------
def test_hooks_removed_after_close_and_errors(lm, sae, task, examples):
    exs = examples[:2]
    assert n_hooks(lm) == 0
    env = SteeringVecEnv(lm, sae, task, exs, SteeringConfig(max_new_tokens=4), num_envs=2)
    env.reset(options={"examples": exs})
    env.step(np.array([1, 2]))
    assert n_hooks(lm) == 1
    env.close()
    assert n_hooks(lm) == 0
    # An error inside the forward (steering vectors of the wrong width) unwinds the worker and its hook.
    dec = LockstepDecoder(lm, sae.hook_name)
    dec.start([task.format_prompt(e, lm.tokenizer) for e in exs], DecodeSpec(max_new_tokens=3))
    assert n_hooks(lm) == 1
    with pytest.raises(RuntimeError):
        dec.send(torch.zeros(2, lm.d_model + 1))
    assert n_hooks(lm) == 0
    # An error on the caller's side (a masker that allows nothing) also ends the batch.
    empty = lambda acts, rows, steps: torch.zeros(len(rows), D_SAE, dtype=torch.bool)
    env = SteeringVecEnv(lm, sae, task, exs, SteeringConfig(allow_noop=False), num_envs=2, masker=empty)
    with pytest.raises(CRLError, match="no valid action"):
        env.reset(options={"examples": exs})
    assert n_hooks(lm) == 0
    # An env dropped mid-episode does not leave its worker in the hook.
    env = SteeringVecEnv(lm, sae, task, exs, SteeringConfig(), num_envs=2)
    env.reset(options={"examples": exs})
    del env
    gc.collect()
    for _ in range(200):  # the worker unwinds in its own thread
        if n_hooks(lm) == 0:
            break
        time.sleep(0.01)
    assert n_hooks(lm) == 0


def test_reset_mid_episode(lm, sae, task, examples):
    policy = PerPrompt()
    cfg = SteeringConfig(coef=0.3, coef_mode="raw", max_new_tokens=4)
    fresh = run_episodes(SteeringVecEnv(lm, sae, task, examples, cfg, num_envs=2), examples[2:4], policy)
    env = SteeringVecEnv(lm, sae, task, examples, cfg, num_envs=2)
    obs, info = env.reset(options={"examples": examples[:2]})
    for _ in range(2):
        obs, _, _, _, info = env.step(policy.act(obs, info)[0])
    assert n_hooks(lm) == 1
    again = run_episodes(env, examples[2:4], policy)  # its reset abandons the running batch
    for a, b in zip(fresh, again, strict=True):
        assert_same_records(a.steps, b.steps)
    assert n_hooks(lm) == 0


def test_model_usable_while_episodes_are_paused(lm, sae, task, examples):
    """Two envs mid-episode on one model, stepped alternately, plus a plain generate() in between."""
    cfg = SteeringConfig(coef=0.3, coef_mode="raw", max_new_tokens=4)
    policy = PerPrompt()
    plain = reference_tokens(lm, task, examples[:2], 3)
    solo = [
        run_episodes(SteeringVecEnv(lm, sae, task, examples, cfg, num_envs=2), examples[i : i + 2], policy)
        for i in (0, 2)
    ]
    envs = [SteeringVecEnv(lm, sae, task, examples, cfg, num_envs=2) for _ in range(2)]
    records: list[list[list[dict]]] = [[[], []], [[], []]]
    with deadline(60):
        state = [
            list(env.reset(options={"examples": examples[i : i + 2]})) for env, i in zip(envs, (0, 2), strict=True)
        ]
        assert reference_tokens(lm, task, examples[:2], 3) == plain  # the parked hooks pass it through
        for _ in range(cfg.max_new_tokens):
            for k, env in enumerate(envs):
                obs, info = state[k]
                if not info["active"].any():
                    continue
                obs, _, _, _, info = env.step(policy.act(obs, info)[0])
                state[k] = [obs, info]
                for r, rec in enumerate(info["records"]):
                    if rec is not None:
                        records[k][r].append(rec)
    for k in range(2):
        for r in range(2):
            assert_same_records(records[k][r], solo[k][r].steps)
    assert n_hooks(lm) == 0
