"""Teacher-forced passes through one frozen model, read and changed at the decision position.

The task prompts are rendered and encoded exactly as the environment's step 0 (`crl.envs.steering_env.prompt_texts`,
`crl.envs.lockstep.encode_prompts`: chat template, left padding, explicit positions), so base and tuned see the
identical token sequences and the decision position is the last prompt token (the one that decides the first answer
token; for a one-token multiple-choice answer, the answer).

`PrefixBatch` runs everything before the last token once into a KV cache (optionally with the residual at the SAE's
hook replaced by given values: the patch); each `last` call then runs only the last token, with the residual at the
hook read, shifted by a per-prompt delta or replaced, and crops the cache back. So every intervention costs one token
per prompt. `Options` holds the token id of each answer option as the first answer token (multiple-choice letters,
the planted task's targets) and the gold option, which turns next-token logits into the answer margin.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from crl.backends.hooks import residual_hook
from crl.errors import CRLError

if TYPE_CHECKING:
    from crl.backends.model import FrozenLM
    from crl.envs.tasks.base import Example, Task


@dataclass
class Options:
    """Per prompt: the token ids of its answer options (`ids`, padded with -1) and the gold option's index."""

    ids: np.ndarray  # (n, m) int64, -1 where a prompt has fewer options
    gold: np.ndarray  # (n,) int64
    letters: list[list[str]]  # the options as text, per prompt

    def __len__(self) -> int:
        return len(self.gold)

    def take(self, rows: slice) -> Options:
        return Options(self.ids[rows], self.gold[rows], self.letters[rows])

    def logits(self, logits: torch.Tensor) -> np.ndarray:
        """Option logits (n, m) from next-token logits (n, vocab); -inf where a prompt has no such option."""
        ids = torch.as_tensor(self.ids, device=logits.device)
        got = logits.float().gather(1, ids.clamp_min(0))
        return got.masked_fill(ids < 0, float("-inf")).detach().cpu().numpy().astype(np.float64)


def margins(option_logits: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Answer margin per prompt: the gold option's logit minus the best other option's.

    >>> margins(np.array([[2.0, 1.0, -np.inf], [0.0, 3.0, 1.0]]), np.array([0, 0]))
    array([ 1., -3.])
    """
    n = len(gold)
    gold_logit = option_logits[np.arange(n), gold]
    others = option_logits.copy()
    others[np.arange(n), gold] = -np.inf
    return gold_logit - others.max(axis=1)


def correct(option_logits: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Whether the gold option has the highest logit (what constrained greedy decoding answers).

    >>> correct(np.array([[2.0, 1.0], [0.0, 3.0]]), np.array([0, 0]))
    array([ True, False])
    """
    return option_logits.argmax(axis=1) == gold


def _option_strings(task: Task, example: Example, text: str) -> tuple[list[str], int] | None:
    """The options as the text that follows the prompt, and the gold index; None for a free-form task."""
    opts = example.meta.get("options")
    if opts:
        letters = [str(o) for o in opts]
        if example.answer not in letters:
            return None
        sep = "" if not text or text[-1].isspace() else " "  # as MultipleChoiceTask.allowed_token_ids
        return [sep + letter for letter in letters], letters.index(example.answer)
    if task.name == "planted":  # the class targets (" A", " B", ...) follow the cue directly
        from crl.envs.tasks.planted import TARGETS

        n = int(getattr(task, "n_classes", 0))
        return list(TARGETS[:n]), int(example.meta["cls"])
    return None


def answer_options(task: Task, tokenizer: Any, examples: list[Example], texts: list[str]) -> Options | None:
    """Each prompt's options as first answer tokens (see module docstring); None when the task has no options or an
    option is not one token after its prompt (then nothing is scored from option logits)."""
    rows, letters, gold = [], [], []
    for e, text in zip(examples, texts, strict=True):
        got = _option_strings(task, e, text)
        if got is None:
            return None
        strings, g = got
        base = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = []
        for s in strings:
            full = tokenizer(text + s, add_special_tokens=False)["input_ids"]
            if len(full) != len(base) + 1 or full[: len(base)] != base:
                return None
            ids.append(int(full[-1]))
        if len(set(ids)) != len(ids):
            return None
        rows.append(ids)
        letters.append([s.strip() for s in strings])
        gold.append(g)
    width = max(len(r) for r in rows)
    padded = np.full((len(rows), width), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        padded[i, : len(r)] = r
    return Options(padded, np.asarray(gold, dtype=np.int64), letters)


def task_inputs(task: Task, lm: FrozenLM, examples: list[Example]) -> tuple[list[str], bool, Options | None]:
    """(the exact texts the env feeds the model, whether the tokenizer adds special tokens, the answer options)."""
    from crl.envs.steering_env import prompt_texts

    if not examples:
        raise CRLError(f"task '{task.name}' gave no prompts to compare on; check the split and its size")
    texts, special = prompt_texts(task, lm.tokenizer, examples)
    return texts, special, answer_options(task, lm.tokenizer, examples, texts)


@dataclass
class LastToken:
    """One pass of the last token: the residual at the hook before any change, the next-token logits, and (with
    `grad`) the leaf that replaced the residual, for gradients of the logits with respect to it."""

    resid: torch.Tensor  # (n, d_model)
    logits: torch.Tensor  # (n, vocab), float32
    leaf: torch.Tensor | None = None


class PrefixBatch:
    """A batch of prompts in one model: the prefix cached once, the last token run per call (module docstring)."""

    def __init__(
        self,
        lm: FrozenLM,
        hook_name: str,
        ids: torch.Tensor,
        mask: torch.Tensor,
        pos: torch.Tensor,
        patch: torch.Tensor | None = None,
        keep_prefix: bool = False,
    ) -> None:
        self.lm, self.hook_name = lm, hook_name
        self.ids, self.mask, self.pos = ids, mask, pos
        self.prefix_len = int(ids.shape[1]) - 1
        params = inspect.signature(lm.model.forward).parameters
        self.extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self.prefix_resid: torch.Tensor | None = None  # (n, prefix_len, d_model) with keep_prefix
        self.cache: Any = None
        self._pristine: Any = None
        if self.prefix_len == 0:
            return
        from transformers import DynamicCache

        self.cache = DynamicCache(config=lm.model.config)

        def at_hook(resid: torch.Tensor) -> torch.Tensor | None:
            if keep_prefix:
                self.prefix_resid = resid.detach().clone()
            return None if patch is None else patch.to(resid.device, resid.dtype)

        with torch.no_grad(), residual_hook(lm.layers, hook_name, at_hook):
            lm.model(
                input_ids=ids[:, :-1],
                attention_mask=mask[:, :-1],
                position_ids=pos[:, :-1],
                past_key_values=self.cache,
                use_cache=True,
                **self.extra,
            )
        if lm.family == "gemma":  # sliding-window cache layers cannot be cropped: run each call on a copy
            self._pristine = self.cache

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def last(
        self, delta: torch.Tensor | None = None, replace: torch.Tensor | None = None, grad: bool = False
    ) -> LastToken:
        """Run the last token: at the hook the residual x becomes `replace` (when given) plus `delta` (n, d_model);
        with `grad` the new residual is a leaf that requires grad (returned), so the logits can be differentiated."""
        seen: dict[str, torch.Tensor] = {}

        def at_hook(resid: torch.Tensor) -> torch.Tensor | None:
            x = resid[:, -1, :]
            seen["x"] = x.detach()
            new = x if replace is None else replace.to(x.device, x.dtype)
            if delta is not None:
                new = new + delta.to(x.device, x.dtype)
            if grad:
                new = new.detach().requires_grad_(True)
                seen["leaf"] = new
            return None if new is x else new[:, None, :]

        cache = copy.deepcopy(self._pristine) if self._pristine is not None else self.cache
        context = torch.enable_grad() if grad else torch.no_grad()
        try:
            with context, residual_hook(self.lm.layers, self.hook_name, at_hook):
                out = self.lm.model(
                    input_ids=self.ids[:, -1:],
                    attention_mask=self.mask,
                    position_ids=self.pos[:, -1:],
                    past_key_values=cache,
                    use_cache=cache is not None,
                    **self.extra,
                )
        finally:
            if cache is not None and self._pristine is None:
                cache.crop(-1)  # drop the last token: the next call starts from the prefix again
                if grad:
                    _detach(cache)
        return LastToken(seen["x"], out.logits[:, -1, :].float(), seen.get("leaf"))


def _detach(cache: Any) -> None:
    """Cut a cache's tensors from the autograd graph of a gradient pass: the layers past the hook concatenated the
    prefix with the last token's (graph-carrying) keys and values, and the cropped prefix is a view of that."""
    for layer in getattr(cache, "layers", ()):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor) and t.requires_grad:
                setattr(layer, name, t.detach())


def encode(lm: FrozenLM, texts: list[str], special: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step 0's model inputs for `texts` on the model's device (`crl.envs.lockstep.encode_prompts`)."""
    from crl.envs.lockstep import encode_prompts

    return encode_prompts(lm.tokenizer, texts, special, lm.device)


@dataclass
class ControlPass:
    """Both models teacher-forced on unrelated text: the residual at the hook at every token but each sequence's first
    (the attention sink, left out of SAE training too), and the next-token KL(base || tuned) and top-1 change there."""

    h_base: torch.Tensor  # (tokens, d_model)
    h_tuned: torch.Tensor
    kl: np.ndarray  # (tokens,)
    top1_changed: np.ndarray  # (tokens,) bool


def control_pass(
    base: FrozenLM, tuned: FrozenLM, hook_name: str, sequences: list[list[int]], batch: int = 8
) -> ControlPass:
    """`ControlPass` over token-id sequences (each at least two tokens), `batch` sequences per forward."""
    seqs = [list(map(int, s)) for s in sequences if len(s) >= 2]
    if not seqs:
        raise CRLError("the control text has no sequence of two or more tokens; pass some unrelated text")
    pad = base.tokenizer.pad_token_id if base.tokenizer.pad_token_id is not None else 0
    hb, ht, kls, top1 = [], [], [], []
    for start in range(0, len(seqs), batch):
        chunk = seqs[start : start + batch]
        width = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, s in enumerate(chunk):  # left padding, as the tokenizer pads
            ids[i, width - len(s) :] = torch.tensor(s)
            mask[i, width - len(s) :] = 1
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        keep = mask.bool() & (pos > 0)  # every real token but the first
        outs = []
        for lm in (base, tuned):
            seen: dict[str, torch.Tensor] = {}

            def at_hook(resid: torch.Tensor, seen: dict[str, torch.Tensor] = seen) -> None:
                seen["h"] = resid.detach()

            dev = lm.device
            with torch.no_grad(), residual_hook(lm.layers, hook_name, at_hook):
                logits = lm.model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev)).logits
            k = keep.to(dev)
            outs.append((seen["h"][k].float().cpu(), torch.log_softmax(logits.float(), dim=-1)[k].cpu()))
        (h0, lp0), (h1, lp1) = outs
        hb.append(h0)
        ht.append(h1)
        kls.append((lp0.exp() * (lp0 - lp1)).sum(-1).numpy())
        top1.append((lp0.argmax(-1) != lp1.argmax(-1)).numpy())
    return ControlPass(torch.cat(hb), torch.cat(ht), np.concatenate(kls), np.concatenate(top1))


def next_token_kl(logits_base: torch.Tensor, logits_tuned: torch.Tensor) -> np.ndarray:
    """KL(P_base || P_tuned) of the next-token distributions, per row."""
    lp0 = torch.log_softmax(logits_base.float(), dim=-1)
    lp1 = torch.log_softmax(logits_tuned.float(), dim=-1)
    return (lp0.exp() * (lp0 - lp1)).sum(-1).detach().cpu().numpy().astype(np.float64)
