"""The planted diagnostic task: the right feature is known by construction, per prompt.

Each prompt is some filler words followed by one of K cue words; the cue is the last prompt token, so
the residual at the decision position reveals the class. The gold answer is the class's target word
(' A', ' B', ...), and the reward is 1 when the *first* generated token is that word. Episodes run for
`max_new_tokens` (default 2) tokens, so only step 0 matters: branch-point tracking must find step 0.

`build_planted_sae` makes an SAE over the model's residual at `layer` whose decoder holds, at known
feature ids, one direction per class that pushes the model to that class's target (found by gradient
ascent on the target log-prob through the frozen model), plus random distractor directions. Forcing
feature `planted[k]` on a class-k prompt makes the model answer correctly; no other feature does, and
without steering the model is mostly wrong. A policy has to read the cue from the residual and pick
the class's feature: learning is verifiable against ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from crl.backends.hooks import HookPoint, residual_hook
from crl.backends.model import FrozenLM
from crl.backends.sae import LoadedSAE, sae_from_decoder
from crl.config import TaskConfig
from crl.envs.tasks.base import Example, Task
from crl.envs.tasks.registry import register_task

CUES = [" apple", " river", " stone", " cloud", " horse", " chair", " music", " paper"]
TARGETS = [" A", " B", " C", " D", " E", " F", " G", " H"]
FILLER = [
    "the",
    "a",
    "of",
    "to",
    "in",
    "and",
    "is",
    "was",
    "for",
    "on",
    "with",
    "as",
    "by",
    "at",
    "from",
    "this",
    "that",
    "it",
    "be",
    "are",
    "or",
    "an",
    "have",
    "not",
    "they",
    "one",
    "all",
    "we",
    "can",
    "her",
    "his",
    "there",
    "been",
    "if",
    "more",
    "when",
    "will",
    "would",
    "who",
    "so",
]
_SPLIT_SEED = {"train": 0, "val": 1, "test": 2}  # disjoint RNG streams per split


@dataclass
class PlantedInfo:
    planted: list[int]  # feature id per class
    coef: float  # relative coefficient at which forcing the planted feature answers correctly


@register_task("planted")
class PlantedTask(Task):
    name = "planted"
    answer_kind = "token"

    def __init__(self, cfg: TaskConfig, n_classes: int = 4):
        super().__init__(cfg)
        self.n_classes = n_classes

    def load_split(self, split: str) -> list[Example]:
        n = {"train": self.cfg.n_train, "val": self.cfg.n_val, "test": self.cfg.n_test}[split]
        rng = np.random.default_rng([self.cfg.seed, _SPLIT_SEED[split]])
        out = []
        for i in range(n):
            k = i % self.n_classes
            words = rng.choice(FILLER, size=int(rng.integers(3, 7))).tolist()
            prompt = " ".join(w.capitalize() if j == 0 else w for j, w in enumerate(words)) + CUES[k]
            out.append(Example(f"planted-{split}-{i}", prompt, TARGETS[k].strip(), {"cls": k}))
        return out

    def format_prompt(self, example: Example, tokenizer) -> str:
        return example.prompt  # a base-model style prompt: the cue must be the last token

    def extract(self, completion: str) -> str | None:
        words = completion.split()
        return words[0] if words else None

    def reward(self, prompts: list[str], completions: list[str], answer: list[str], **_) -> list[float]:
        """1.0 when the first generated word is the class target.

        >>> PlantedTask(TaskConfig(name="planted")).reward(["x"], [" B and"], answer=["B"])
        [1.0]
        """
        return [float(self.extract(c) == a) for c, a in zip(completions, answer, strict=True)]


def _target_ids(tokenizer, n: int) -> list[int]:
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TARGETS[:n]]
    assert all(len(i) == 1 for i in ids), "planted targets must be single tokens"
    return [i[0] for i in ids]


def build_planted_sae(
    lm: FrozenLM, task: PlantedTask, layer: int, d_sae: int = 64, coef: float = 2.0, seed: int = 0, steps: int = 25
) -> tuple[LoadedSAE, PlantedInfo]:
    """An SAE at blocks.{layer}.hook_resid_post with one planted feature per class (see module doc)."""
    g = torch.Generator().manual_seed(seed)
    hook = HookPoint(layer, "post")
    tok = lm.tokenizer
    targets = _target_ids(tok, task.n_classes)
    train = task.load(split="train")
    planted = torch.randperm(d_sae, generator=g)[: task.n_classes].tolist()
    W = torch.randn(d_sae, lm.d_model, generator=g)
    for k in range(task.n_classes):
        prompts = [task.format_prompt(e, tok) for e in train if e.meta["cls"] == k][:8]
        W[planted[k]] = _push_direction(lm, hook.name, prompts, targets[k], coef, steps, g).cpu()
    sae = sae_from_decoder(W, hook, f"planted:{lm.name}:layer{layer}:seed{seed}", device=lm.device)
    return sae, PlantedInfo(planted, coef)


def _push_direction(
    lm: FrozenLM, hook_name: str, prompts: list[str], target: int, coef: float, steps: int, g: torch.Generator
) -> torch.Tensor:
    """A unit direction v maximizing log p(target) when x_last += coef * ||x_last|| * v."""
    enc = lm.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(lm.device)
    v = torch.randn(lm.d_model, generator=g).to(lm.device).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=0.1)

    def steer(resid: torch.Tensor) -> torch.Tensor:
        x = resid[:, -1, :]
        unit = v / v.norm()
        out = resid.clone()
        out[:, -1, :] = x + coef * x.norm(dim=-1, keepdim=True) * unit
        return out

    with residual_hook(lm.layers, hook_name, steer):
        for _ in range(steps):
            logits = lm.model(**enc).logits[:, -1, :]
            loss = -torch.log_softmax(logits.float(), dim=-1)[:, target].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return (v / v.norm()).detach()
