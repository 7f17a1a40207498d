"""The letter-prior baseline: a constant bias on the option letters' logits at the answer token, nothing else.

On constrained one-token multiple choice the answer is the argmax of the option letters' logits at the last prompt
token (`crl.analysis.replay.oracle.answer_ids`: the same token ids the environment allows). The prior adds one value
per option letter (A's fixed to 0, so it is identified) and is fit once on unsteered train prompts: one forward each,
the letter logits kept, then the bias that maximizes the mean log-likelihood of the gold letter (full-batch L-BFGS in
float64; the objective is convex in the bias). It is then scored on val (for the budget curves) and test, where
episodes are built from the biased argmax and scored by the task's own verifier.

What it separates: a gain a constant bias gets is a position-bias fix; a method must beat it to have read the
question. Its budget in rollouts is the prompts forwarded (train fit + val score), one forward each.
Other tasks (free-form, or more than one answer token) have no letter logits to bias: `answer_ids` is None there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from crl.errors import CRLError

if TYPE_CHECKING:
    from crl.envs.rollout import Episode
    from crl.envs.tasks.base import Example
    from crl.run.components import Components

BATCH = 32  # prompts per forward


def letter_logits(
    comps: Components, examples: list[Example], progress: str | None = None
) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """Unsteered option-letter logits at the answer token, as log-probs (`DecisionBatch`: a prefix every prompt
    shares runs once): (logits (n, K), -inf where a prompt has fewer than K options; gold option index (n,); each
    prompt's letter token ids, in option order). `progress`: as in `runner.rollout` (prompts forwarded)."""
    from crl.analysis.replay import announce
    from crl.analysis.replay.oracle import answer_ids
    from crl.analysis.replay.steer_effects import DecisionBatch
    from crl.envs.steering_env import prompt_texts

    got = answer_ids(comps, examples)
    if got is None:
        raise CRLError(
            f"task '{comps.task.name}' is not constrained one-token multiple choice; the letter prior needs "
            "option-letter logits (task.mode=constrained on a multiple-choice task)"
        )
    _, allowed, gold_ids = got
    texts, special = prompt_texts(comps.task, comps.lm.tokenizer, examples)
    out = np.full((len(examples), max(len(a) for a in allowed)), -np.inf)
    with announce.progress(progress, len(examples)) as on_done:
        for start in range(0, len(examples), BATCH):
            # Log-probs differ from logits by one constant per prompt, which no letter comparison sees.
            last = DecisionBatch.from_texts(comps.lm, comps.sae.hook_name, texts[start : start + BATCH], special).base
            for i, a in enumerate(allowed[start : start + BATCH]):
                out[start + i, : len(a)] = last[i, a].cpu().numpy()
            if on_done is not None:
                on_done(len(allowed[start : start + BATCH]))
    gold = np.array([a.index(g) for a, g in zip(allowed, gold_ids, strict=True)])
    return out, gold, allowed


def fit_letter_prior(logits: np.ndarray, gold: np.ndarray, max_iter: int = 500) -> np.ndarray:
    """The bias (K,), bias[0] = 0, that maximizes the mean log-likelihood of `gold` under softmax(logits + bias)
    (-inf logits: options a prompt lacks)."""
    import torch

    logits = np.asarray(logits, dtype=float)
    if logits.ndim != 2 or len(logits) != len(gold) or len(gold) == 0:
        raise CRLError(f"the letter prior needs logits (n, K) and n gold indices; got {logits.shape} and {len(gold)}")
    k = logits.shape[1]
    if k < 2:
        return np.zeros(k)
    z = torch.tensor(np.where(np.isfinite(logits), logits, -1e30), dtype=torch.float64)
    g = torch.as_tensor(np.asarray(gold), dtype=torch.long)
    b = torch.zeros(k - 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-14, line_search_fn="strong_wolfe"
    )

    def nll() -> torch.Tensor:
        opt.zero_grad()
        full = torch.cat([torch.zeros(1, dtype=b.dtype), b])
        loss = -torch.log_softmax(z + full, dim=1)[torch.arange(len(g)), g].mean()
        loss.backward()
        return loss

    opt.step(nll)
    return np.concatenate([[0.0], b.detach().numpy()])


def predict(logits: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The option index each prompt answers with the bias added (greedy: ties go to the earlier letter)."""
    return np.argmax(np.asarray(logits, dtype=float) + np.asarray(bias, dtype=float)[None, :], axis=1)


def prior_episodes(
    comps: Components, examples: list[Example], logits: np.ndarray, allowed: list[list[int]], bias: np.ndarray
) -> list[Episode]:
    """One episode per prompt: the biased argmax letter as the completion, scored by the task's verifier as the
    environment scores one (no steering, so no steps)."""
    from crl.envs.rollout import Episode

    task, tok = comps.task, comps.lm.tokenizer
    out = []
    for e, p, a in zip(examples, predict(logits, bias), allowed, strict=True):
        text = tok.decode([a[int(p)]], skip_special_tokens=True)
        cols = {key: [v[0]] for key, v in task.columns([e]).items()}
        reward = float(task.reward([e.prompt], [text], **cols)[0])
        out.append(Episode(e, text, reward, reward >= 1.0, bool(task.well_formed(text)), "max_new_tokens", []))
    return out


def accuracy_of(logits: np.ndarray, gold: np.ndarray, bias: np.ndarray) -> float:
    return float(np.mean(predict(logits, bias) == np.asarray(gold)))
