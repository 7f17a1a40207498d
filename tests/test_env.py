"""Acceptance tests of the steering environment (`SteeringVecEnv`, `LockstepDecoder`, `SteeringEnv`).

A tiny random llama (2 layers, d_model 64) with a random sae-lens SAE at layer 0, so steering reaches the
next layer and its KV cache (steering the last layer would never influence later positions). Feature
`EOS_F` is the EOS unembedding row scaled far beyond the residual norm: choosing it ends an episode,
which is how the tests get episodes of different lengths inside one batch.
"""

from __future__ import annotations

import contextlib
import gc
import signal
import time
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from crl.backends.hooks import HookPoint, residual_hook
from crl.backends.model import FrozenLM, tiny_model
from crl.backends.sae import LoadedSAE
from crl.envs.lockstep import DecodeSpec, LockstepDecoder
from crl.envs.rollout import Episode, FixedFeature, NoSteer, RandomFeature, run_episodes
from crl.envs.single import SteeringEnv
from crl.envs.steering_env import SteeringConfig, SteeringVecEnv
from crl.envs.tasks.base import Example, Task, TaskConfig
from crl.envs.tasks.planted import PlantedTask
from crl.errors import CRLError

D_SAE = 32
EOS_F = 7
LAYER = 0


def make_sae(lm: FrozenLM, layer: int = LAYER, d_sae: int = D_SAE, eos_feature: int | None = EOS_F) -> LoadedSAE:
    from sae_lens import StandardSAE, StandardSAEConfig

    w = torch.randn(d_sae, lm.d_model, generator=torch.Generator().manual_seed(1))
    w = w / w.norm(dim=-1, keepdim=True)
    if eos_feature is not None:
        e = lm.model.get_output_embeddings().weight[lm.tokenizer.eos_token_id].detach()
        w[eos_feature] = 500.0 * e / e.norm()  # residual norms are ~0.2: this row decides the next token
    cfg = StandardSAEConfig(d_in=lm.d_model, d_sae=d_sae, dtype="float32", device="cpu")
    cfg.metadata.hook_name = HookPoint(layer, "post").name
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.W_dec.copy_(w)
        sae.W_enc.copy_(w.T)
        sae.b_enc.fill_(0.05)  # some features fire, so feature_act is not always 0
        sae.b_dec.zero_()
    return LoadedSAE(sae.eval(), HookPoint(layer, "post"), None, "test:random")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm() -> FrozenLM:
    return tiny_model("llama", n_layers=2, d_model=64, seed=0)


@pytest.fixture(scope="module")
def sae(lm: FrozenLM) -> LoadedSAE:
    return make_sae(lm)


@pytest.fixture(scope="module")
def task() -> PlantedTask:
    cfg = TaskConfig(name="planted", n_train=4, n_val=4, n_test=8, max_new_tokens=6, chat_template=False)
    return PlantedTask(cfg, n_classes=4)


@pytest.fixture(scope="module")
def examples(lm: FrozenLM, task: PlantedTask) -> list[Example]:
    exs = task.load("test")
    lengths = {len(prompt_ids(lm, task, e)) for e in exs[:4]}
    assert len(lengths) >= 3, "the tests need prompts of different lengths (left padding)"
    return exs


def prompt_ids(lm: FrozenLM, task: Task, ex: Example) -> list[int]:
    special = not (task.cfg.chat_template and lm.tokenizer.chat_template)
    return lm.tokenizer(task.format_prompt(ex, lm.tokenizer), add_special_tokens=special)["input_ids"]


def n_hooks(lm: FrozenLM) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm.model.modules())


def reference_tokens(lm: FrozenLM, task: Task, exs: list[Example], max_new_tokens: int) -> list[list[int]]:
    """Plain HF greedy generation (left-padded batch), each row cut after its first EOS."""
    tok = lm.tokenizer
    special = not (task.cfg.chat_template and tok.chat_template)
    enc = tok([task.format_prompt(e, tok) for e in exs], return_tensors="pt", padding=True, add_special_tokens=special)
    with torch.no_grad():
        out = lm.model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)
    rows = []
    for row in out[:, enc["input_ids"].shape[1] :].tolist():
        if tok.eos_token_id in row:
            row = row[: row.index(tok.eos_token_id) + 1]
        rows.append(row)
    return rows


def tokens(ep: Episode) -> list[int]:
    return [s["token_id"] for s in ep.steps]


def assert_same_records(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert [r["token_id"] for r in a] == [r["token_id"] for r in b]
    for key in ("step", "position", "token", "feature", "coef"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    for key in ("feature_act", "resid_norm"):
        np.testing.assert_allclose([r[key] for r in a], [r[key] for r in b], rtol=1e-4, atol=1e-5, err_msg=key)


class PerPrompt:
    """Actions that depend only on (prompt id, step), so a prompt acts alike in any batch; `eos_at` ends
    chosen prompts early with the EOS feature."""

    def __init__(self, eos_at: dict[str, int] | None = None, n_features: int = D_SAE):
        self.eos_at = eos_at or {}
        self.choices = [f for f in range(n_features) if f != EOS_F]

    def action(self, pid: str, step: int) -> int:
        if self.eos_at.get(pid) == step:
            return EOS_F
        return self.choices[zlib.crc32(f"{pid}:{step}".encode()) % len(self.choices)]

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        return np.array([self.action(p, int(s)) for p, s in zip(info["prompt_id"], info["step"], strict=True)]), {}


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail instead of hanging when a forward blocks on a parked env's hook."""

    def on_alarm(_sig: int, _frame: Any) -> None:
        raise TimeoutError(f"blocked for {seconds}s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


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
    from crl.backends.model import ModelConfig, load_model
    from crl.bench import random_sae
    from crl.envs.tasks.registry import make_task

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


# -- (b) steered logits equal a hand-steered forward ------------------------------------------------------
@pytest.mark.parametrize("mode", ["raw", "relative"])
def test_steered_logits_match_manual_forward(lm, sae, task, examples, mode):
    ex, f, g = examples[1], 3, 11
    coef = 0.3 if mode == "raw" else 1.5
    env = SteeringEnv(lm, sae, task, [ex], SteeringConfig(coef=coef, coef_mode=mode, max_new_tokens=4))
    captured: list[torch.Tensor] = []
    head = lm.model.get_output_embeddings().register_forward_hook(
        lambda _m, _a, out: captured.append(out[:, -1].detach().clone())
    )
    try:
        env.reset(options={"example": ex})
        _, _, _, _, info0 = env.step(f)
        _, _, _, _, info1 = env.step(g)
    finally:
        head.remove()
        env.close()
    dirs = sae.directions(unit=mode == "relative")
    ids = prompt_ids(lm, task, ex)
    last = len(ids) - 1

    def manual(seq: list[int], steer: dict[int, int]) -> torch.Tensor:
        def add(x: torch.Tensor) -> torch.Tensor:
            out = x.clone()
            for pos, feat in steer.items():
                scale = coef * (x[0, pos].norm() if mode == "relative" else 1.0)
                out[0, pos] += scale * dirs[feat]
            return out

        with torch.no_grad(), residual_hook(lm.layers, sae.hook_name, add):
            return lm.model(torch.tensor([seq])).logits[0, -1]

    t0 = info0["record"]["token_id"]
    ref0 = manual(ids, {last: f})
    torch.testing.assert_close(captured[0][0], ref0, rtol=1e-5, atol=1e-5)
    assert t0 == int(ref0.argmax())
    assert (manual(ids, {}) - ref0).abs().max() > 1e-2  # steering changed the logits: the check has teeth
    ref1 = manual([*ids, t0], {last: f, last + 1: g})
    torch.testing.assert_close(captured[1][0], ref1, rtol=1e-5, atol=1e-5)
    assert info1["record"]["token_id"] == int(ref1.argmax())
    assert (manual([*ids, t0], {last: f}) - ref1).abs().max() > 1e-2  # step 1 steers the fed-back token
    assert info0["record"]["position"] == last and info1["record"]["position"] == last + 1


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


# -- (e) gymnasium's checker ------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:.*Box observation space m.* value is .*infinity")  # residuals are unbounded
@pytest.mark.filterwarnings("error")  # any other complaint from the checker fails the test
def test_check_env_passes(lm, sae, task, examples):
    from gymnasium.utils.env_checker import check_env

    env = SteeringEnv(lm, sae, task, examples[:3], SteeringConfig(coef=0.3, coef_mode="raw", max_new_tokens=3))
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=5)
    assert obs.shape == (lm.d_model,) and obs.dtype == np.float32
    assert env.action_space.n == D_SAE + 1 and info["action_mask"].shape == (D_SAE + 1,)
    env.close()


def test_single_env_seed_picks_the_same_example(lm, sae, task, examples):
    env = SteeringEnv(lm, sae, task, examples, SteeringConfig(max_new_tokens=2))
    picks = [env.reset(seed=s)[1]["prompt_id"] for s in (1, 2, 1)]
    assert picks[0] == picks[2]
    assert len({env.reset(seed=s)[1]["prompt_id"] for s in range(8)}) > 1
    with pytest.raises(CRLError, match="after the episode ended"):
        env.step(0), env.step(0), env.step(0)
    env.close()


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


# -- (g) bad input fails early with a one-line CRLError ---------------------------------------------------
def test_bad_input(lm, sae, task, examples):
    env = SteeringVecEnv(lm, sae, task, examples[:2], SteeringConfig(max_new_tokens=3), num_envs=2)
    env.reset(options={"examples": examples[:2]})
    for bad in (D_SAE + 1, -1):
        with pytest.raises(CRLError, match="out of range") as e:
            env.step(np.array([0, bad]))
        assert "\n" not in str(e.value)
    env.step(np.array([0, 1]))  # the episode survives a rejected action
    env.close()
    single = SteeringEnv(lm, sae, task, examples[:2], SteeringConfig(allow_noop=False, max_new_tokens=3))
    single.reset(seed=0)
    with pytest.raises(CRLError, match="out of range"):
        single.step(D_SAE)
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
        policy = RandomFeature(D_SAE, seed=seed)
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
