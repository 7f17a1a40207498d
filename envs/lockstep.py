"""Lockstep batched decoding that pauses inside the residual hook at every token.

The policy must see the residual at layer L of the *current* position before choosing what to add at
that same position. Splitting an HF forward at layer L is model-specific, so instead the batched
generation loop runs in a worker thread and the hook hands the residual to the caller and waits for
the steering vectors: one forward per token, any model family, exact semantics.

Per step, for every active row: the residual at the current position (the last prompt token at step 0,
then each newly generated token) is observed, `delta` is added to it at the hook, the rest of the model
runs, and the next token is decoded (greedy, or sampled with a seeded generator). Rows that finish
(EOS, a stop string, `max_new_tokens`) are compacted out of the batch and out of the KV cache; the
prefix is never re-run unless `use_cache=False` (the naive reference used by `crl bench rollout`).

Host syncs: the decoder's bookkeeping (which rows are active, their steps and positions) is kept on the host beside its
device copy, so the only device-to-host transfer per token is the new tokens themselves (one `tolist`, needed for the
stop checks). Precision: the steering delta is added to the residual in float32 and the sum cast to the model's dtype
once (a bf16/fp16 model loses no precision in the addition); with a float32 model this is the plain addition.
"""

from __future__ import annotations

import inspect
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from crl.backends.hooks import residual_hook
from crl.backends.model import FrozenLM

_CANCEL = object()


class _Cancelled(Exception):
    pass


@dataclass
class Decision:
    """What the decoder asks for: steering at the current position of each active row. The index tensors are on the
    model's device; `host_*` hold the same values on the host (no transfer needed to log them)."""

    resid: torch.Tensor  # (n_active, d_model), unsteered, in the model's dtype
    rows: torch.Tensor  # (n_active,) row indices in the original batch
    positions: torch.Tensor  # (n_active,) absolute token positions (0 = first real prompt token)
    steps: torch.Tensor  # (n_active,) decision index within each episode
    host_rows: np.ndarray  # (n_active,) int64, = rows
    host_positions: np.ndarray  # (n_active,) int64, = positions
    host_steps: np.ndarray  # (n_active,) int64, = steps


@dataclass
class DecodeSpec:
    max_new_tokens: int
    eos_ids: set[int] = field(default_factory=set)
    stop_strings: list[str] = field(default_factory=list)
    allowed_token_ids: list[list[int] | None] | None = None  # constrained decoding, per row
    greedy: bool = True
    temperature: float = 1.0
    use_cache: bool = True
    add_special_tokens: bool = False  # chat-templated prompts already hold their special tokens
    # Per row, a token id whose probability at the first generated token (after the allowed-token mask, before any
    # temperature) is kept in `LockstepDecoder.first_prob`: constrained multiple choice's gold letter, for
    # task.reward=letter_prob. None: nothing is computed (one extra transfer per batch when set).
    score_token_ids: list[int] | None = None


def encode_prompts(
    tokenizer: Any, prompts: list[str], add_special_tokens: bool, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step 0's model inputs: (input ids, attention mask, position ids), left-padded (the tokenizer's padding side,
    set by `crl.backends.model`), with explicit positions counted from each row's first real token, so a padded row
    sees the positions it would see alone. The last column is every prompt's last token."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens)
    ids = enc["input_ids"].to(device)
    mask = enc["attention_mask"].to(device)
    return ids, mask, (mask.cumsum(-1) - 1).clamp_min(0)


class LockstepDecoder:
    """Drive with `start(prompts)` then `send(deltas)` until it returns None.

    After each `send`, `last_tokens` maps row -> token generated at that step and `finished` lists
    the rows that ended at that step. `completions[row]` holds the generated token ids; with
    `DecodeSpec.score_token_ids`, `first_prob[row]` the probability of the row's scored token at the first step.
    """

    def __init__(self, lm: FrozenLM, hook_name: str, generator: torch.Generator | None = None):
        self.lm = lm
        self.hook_name = hook_name
        self.generator = generator
        self._thread: threading.Thread | None = None
        self._to_main: queue.Queue = queue.Queue()
        self._from_main: queue.Queue = queue.Queue()
        self.completions: list[list[int]] = []
        self.last_tokens: dict[int, int] = {}
        self.finished: list[int] = []
        self.stop_reason: dict[int, str] = {}
        self.first_prob: dict[int, float] = {}
        self._worker_id: int | None = None

    # -- caller side ------------------------------------------------------------------------------
    def start(self, prompts: list[str], spec: DecodeSpec) -> Decision | None:
        self.close()
        self._to_main, self._from_main = queue.Queue(), queue.Queue()
        self.completions = [[] for _ in prompts]
        self.last_tokens, self.finished, self.stop_reason, self.first_prob = {}, [], {}, {}
        self._thread = threading.Thread(target=self._run, args=(prompts, spec), daemon=True)
        self._thread.start()
        return self._next()

    def send(self, deltas: torch.Tensor | None) -> Decision | None:
        if self._thread is None:
            raise RuntimeError("send() before start(), or after the batch finished")
        self.last_tokens, self.finished = {}, []
        self._from_main.put(deltas)
        return self._next()

    def close(self, wait: bool = True) -> None:
        """Abandon a running batch (the worker unwinds and its hook is removed); `wait=False` from finalizers."""
        if self._thread is not None and self._thread.is_alive():
            self._from_main.put(_CANCEL)
            if wait:
                self._thread.join()
        self._thread = None

    def _next(self) -> Decision | None:
        kind, payload = self._to_main.get()
        if kind == "decision":
            return payload
        self._thread.join()
        self._thread = None
        if kind == "error":
            raise payload
        return None

    # -- worker side ------------------------------------------------------------------------------
    def _run(self, prompts: list[str], spec: DecodeSpec) -> None:
        self._worker_id = threading.get_ident()
        try:
            with torch.no_grad():
                self._generate(prompts, spec)
            self._to_main.put(("done", None))
        except _Cancelled:
            pass
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            self._to_main.put(("error", e))

    def _generate(self, prompts: list[str], spec: DecodeSpec) -> None:
        tok, model = self.lm.tokenizer, self.lm.model
        device = self.lm.device
        ids, mask, pos = encode_prompts(tok, prompts, spec.add_special_tokens, device)
        rows = torch.arange(len(prompts), device=device)
        steps = torch.zeros(len(prompts), dtype=torch.long, device=device)
        cache = None
        if spec.use_cache:
            from transformers import DynamicCache

            cache = DynamicCache(config=model.config)
        # Host mirrors of rows, last positions and steps (one transfer per batch, here): logging needs no sync.
        h_rows, h_pos, h_steps = list(range(len(prompts))), pos[:, -1].tolist(), [0] * len(prompts)
        self._state = {"rows": rows, "pos": pos[:, -1], "steps": steps, "history": [], "use_cache": spec.use_cache}
        self._state.update(h_rows=h_rows, h_pos=h_pos, h_steps=h_steps)
        allowed = self._allowed_mask(spec, len(prompts), device)
        # Only the last position's logits are read: skip the (tokens x vocab) head matmul for the rest.
        extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
        score = spec.score_token_ids
        with residual_hook(self.lm.layers, self.hook_name, self._hook):
            out = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=pos,
                past_key_values=cache,
                use_cache=spec.use_cache,
                **extra,
            )
            while True:
                logits = out.logits[:, -1, :].float()
                if allowed is not None:
                    logits = logits.masked_fill(~allowed, float("-inf"))
                if score is not None:  # the first step only: every row is still in the batch, in order
                    probs = torch.softmax(logits, dim=-1).gather(1, torch.tensor(score, device=device)[:, None])
                    self.first_prob = dict(zip(h_rows, probs[:, 0].tolist(), strict=True))
                    score = None
                nxt = self._pick(logits, spec)
                keep: list[int] = []  # positions in the active batch of the rows that go on
                for i, (r, t) in enumerate(zip(h_rows, nxt.tolist(), strict=True)):  # the one sync per token
                    self.last_tokens[r] = t
                    reason = self._stop(r, t, spec)
                    if reason:
                        self.finished.append(r)
                        self.stop_reason[r] = reason
                    else:
                        keep.append(i)
                steps = steps + 1
                h_steps = [s + 1 for s in h_steps]
                if not keep:
                    return
                if len(keep) < len(h_rows):
                    h_rows, h_pos, h_steps = ([h[i] for i in keep] for h in (h_rows, h_pos, h_steps))
                    idx = torch.tensor(keep, device=device)
                    rows, steps, nxt = rows[idx], steps[idx], nxt[idx]
                    mask, pos, ids = mask[idx], pos[idx], ids[idx]
                    if allowed is not None:
                        allowed = allowed[idx]
                    if cache is not None:
                        cache.reorder_cache(idx)
                    self._state["history"] = [h[idx] for h in self._state["history"]]
                mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
                new_pos = pos[:, -1:] + 1
                pos = torch.cat([pos, new_pos], dim=1)
                ids = torch.cat([ids, nxt[:, None]], dim=1)
                h_pos = [p + 1 for p in h_pos]
                self._state.update(
                    rows=rows, pos=new_pos[:, 0], steps=steps, h_rows=h_rows, h_pos=h_pos, h_steps=h_steps
                )
                if spec.use_cache:
                    out = model(
                        input_ids=nxt[:, None],
                        attention_mask=mask,
                        position_ids=new_pos,
                        past_key_values=cache,
                        use_cache=True,
                        **extra,
                    )
                else:
                    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, **extra)

    def _hook(self, resid: torch.Tensor) -> torch.Tensor | None:
        # The hook sits on a shared layer module: a forward from any other thread (another env's worker,
        # a plain generate() in the caller) must pass through, or it would block forever on our queue.
        if threading.get_ident() != self._worker_id:
            return None
        st = self._state
        host = (np.array(st[k], dtype=np.int64) for k in ("h_rows", "h_pos", "h_steps"))
        decision = Decision(
            resid[:, -1, :].detach().clone(), st["rows"].clone(), st["pos"].clone(), st["steps"].clone(), *host
        )
        self._to_main.put(("decision", decision))
        deltas = self._from_main.get()
        if deltas is _CANCEL:
            raise _Cancelled
        if deltas is None:
            deltas = resid.new_zeros(resid.shape[0], resid.shape[-1], dtype=torch.float32)
        out = resid.clone()
        # In float32, cast to the model's dtype once (module docstring); a no-op cast for a float32 model.
        if st["use_cache"]:
            out[:, -1, :] = (resid[:, -1, :].float() + deltas.float()).to(resid.dtype)
        else:
            # The naive path re-runs the whole prefix, so every earlier decision is re-applied.
            st["history"].append(deltas.float())
            n = len(st["history"])
            out[:, -n:, :] = (resid[:, -n:, :].float() + torch.stack(st["history"], dim=1)).to(resid.dtype)
        return out

    def _pick(self, logits: torch.Tensor, spec: DecodeSpec) -> torch.Tensor:
        if spec.greedy:
            return logits.argmax(-1)
        probs = torch.softmax(logits / max(spec.temperature, 1e-6), dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)

    def _stop(self, row: int, token: int, spec: DecodeSpec) -> str | None:
        self.completions[row].append(token)
        if token in spec.eos_ids:
            return "eos"
        if spec.stop_strings:
            text = self.lm.tokenizer.decode(self.completions[row][-8:], skip_special_tokens=True)
            if any(s in text for s in spec.stop_strings):
                return "stop_string"
        if len(self.completions[row]) >= spec.max_new_tokens:
            return "max_new_tokens"
        return None

    def _allowed_mask(self, spec: DecodeSpec, n: int, device: torch.device) -> torch.Tensor | None:
        if not spec.allowed_token_ids or all(a is None for a in spec.allowed_token_ids):
            return None
        vocab = self.lm.model.get_output_embeddings().weight.shape[0]
        allowed = torch.ones(n, vocab, dtype=torch.bool, device=device)
        for i, ids in enumerate(spec.allowed_token_ids):
            if ids is not None:
                allowed[i] = False
                allowed[i, ids] = True
        return allowed
