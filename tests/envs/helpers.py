"""Shared by the environment tests: a random SAE whose feature `EOS_F` ends episodes, HF reference generation,
record comparison, and a deterministic per-prompt policy.

A tiny random llama (2 layers, d_model 64) with a random sae-lens SAE at layer 0, so steering reaches the
next layer and its KV cache (steering the last layer would never influence later positions). Feature
`EOS_F` is the EOS unembedding row scaled far beyond the residual norm: choosing it ends an episode,
which is how the tests get episodes of different lengths inside one batch.
"""

from __future__ import annotations

import contextlib
import signal
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from crl.backends.hooks import HookPoint
from crl.backends.model import FrozenLM
from crl.backends.sae import LoadedSAE
from crl.envs.rollout import Episode
from crl.envs.tasks.base import Example, Task

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
