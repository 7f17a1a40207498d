"""Reachability: can any single action of the policy's action set make a held-out prompt's answer right?

For each prompt, the oracle tries every action the policy could take at the decision step (step 0: the last prompt
token): each unmasked feature (the eval masking at step 0, `Components.masker(for_eval=True)`) at each level, plus
"no steering" when `steering.allow_noop`. A prompt counts as reachable when at least one action makes it right, so the
oracle accuracy bounds any CRL policy's first decision from above (a policy must also pick that action, from the
residual alone). Two ways to score an action:

- `suffix` (constrained multiple choice, one answer token): the answer is the argmax of the option letters' logits at
  the last prompt token, so one forward of that position per action scores it. The prompt's tokens before the last
  run once into a KV cache; the unsteered residual x at the SAE's layer is read at the last token; then each action's
  x + delta (the environment's delta: c*l*W_dec[a], or c*l*||x||*W_dec[a]/||W_dec[a]|| when relative) runs through
  the layers above the SAE's layer only, at that one position, many actions at once: the actions of a prompt are
  laid out as a sequence of tokens that share one position id, each attending to the cached prompt and to itself
  only (a 4-D attention mask), so the cache is never copied. Only the option letters' rows of the unembedding are
  applied. The first chunk is checked against the whole model with the steering hook (`SuffixScorer.check`); a
  model whose layers cannot be run that way (it would disagree) is scored through the whole model instead.
- `rollout` (free-form tasks; first decision only): each (prompt, action) is one environment episode that takes the
  action at step 0 and no steering afterwards, scored by the task's verifier. Exact, but one rollout each.

Besides each prompt's own actions, `suffix` scores every level of the `n_static` features found in the most prompts'
action sets on every prompt, which gives the best single static action among them (the one that makes the most
prompts right when applied to all of them; chosen and scored on the same prompts, so an upper bound for a static
intervention). `rollout` gives it only where every prompt tried every action (masking=none, or masking=fixed: every
prompt's set is the listed features).

The shortlist (`shortlist_k` > 0): up to k features for `masking=fixed`, by greedy set cover of the prompts the
unsteered model gets wrong. A feature covers a prompt when any of its levels, scored there, makes the answer right
(every scored cell counts, not only the prompt's own action set: under masking=fixed the features are candidates on
every prompt); each step takes the feature that covers the most prompts not yet covered (ties: the one whose levels
break fewer of the prompts the unsteered model gets right, counted over the cells scored; then the lower id). When no
feature covers a new prompt, the slots left go to spare levers: the other features that fix the most wrong prompts in
all (same ties; 0 new each; on the compare XOR one feature fixes every wrong prompt of the sample). Both ways to score
give it: `suffix` from the cells above (own actions and the static candidates), `rollout` from each prompt's own actions
only (with an adaptive mask a lower bound on what masking=fixed would cover). It is computed from the grid the oracle
already holds, over the wrong rows and the columns of features that fix one of them. `crl probe` reads it on test
prompts; `crl train masking=shortlist` trains on it, computed on train prompts only (crl/analysis/replay/shortlist.py).

Reading it: on a two-option task one action that moves every answer to the other letter, together with no steering,
already reaches 1.0; the oracle then says the levers exist, not that a policy can tell when to pull them (the probe
says whether the residual holds what it needs). A short oracle means no single action at this layer and coefficient
reaches the answer, whatever the policy learns.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from crl.errors import CRLError
from crl.progress import Progress

if TYPE_CHECKING:
    from collections.abc import Iterator

    import torch

    from crl.envs.tasks.base import Example
    from crl.run.components import Components

PROMPT_CHUNK = 8  # prompts whose prefix caches run together
TOLERANCE = 1e-3  # largest |logit| gap between the layers-above path and the whole model that still counts as equal


@dataclass
class Action:
    feature: int
    level: int  # index into steering.coef_levels

    def coef(self, comps: Components) -> float:
        return float(comps.steering.coef) * float(comps.steering.coef_levels[self.level])


def action_sets(comps: Components, resid: torch.Tensor) -> np.ndarray:
    """Which features the policy may pick at step 0 for each residual (n, d_model): bool (n, d_sae), the eval masking
    of the environment (no-op excluded)."""
    import torch

    masker = comps.masker(for_eval=True)
    n = len(resid)
    if hasattr(masker, "begin"):
        masker.begin(n)
    acts = comps.sae.encode(resid.to(comps.lm.device).float()).float()
    mask = masker(acts, torch.arange(n), torch.zeros(n, dtype=torch.long))
    return mask[:, : comps.sae.d_sae].cpu().numpy().astype(bool)


def answer_ids(comps: Components, examples: list[Example]) -> tuple[list[int], list[list[int]], list[int]] | None:
    """(the union of the option-letter token ids, each prompt's allowed ids, each prompt's gold id) when every prompt
    is constrained one-token multiple choice, else None."""
    tok, task = comps.lm.tokenizer, comps.task
    if int(comps.steering.max_new_tokens or task.cfg.max_new_tokens) != 1:
        return None
    allowed, gold = [], []
    for e in examples:
        ids = task.allowed_token_ids(tok, e)
        options = e.meta.get("options")
        if not ids or not options or e.answer not in options:
            return None
        allowed.append([int(i) for i in ids])
        gold.append(int(ids[list(options).index(e.answer)]))
    union = sorted({i for ids in allowed for i in ids})
    return union, allowed, gold


def _body(lm: Any) -> Any:
    """The decoder stack without the head (HF: `model.model`), which owns the layers."""
    body = lm.model.get_decoder() if hasattr(lm.model, "get_decoder") else None
    if body is None or not hasattr(body, "layers"):
        raise CRLError(f"the oracle cannot find the decoder body of {type(lm.model).__name__}")
    return body


def _snapshot(cache: Any) -> Any:
    """What `_restore` needs to put the cache back as it is now (each layer's tensors: updates concatenate new ones)."""
    import copy

    layers = getattr(cache, "layers", None)
    if layers is not None and all(hasattr(layer, "keys") for layer in layers):
        return ("layers", [(layer.keys, layer.values) for layer in layers])
    return ("copy", copy.deepcopy(cache))


def _restore(cache: Any, snap: Any) -> Any:
    kind, saved = snap
    if kind == "layers":
        for layer, (k, v) in zip(cache.layers, saved, strict=True):
            layer.keys, layer.values = k, v
        return cache
    import copy

    return copy.deepcopy(saved)


class SuffixScorer:
    """Answer logits at the decision position of a chunk of prompts, for many steering deltas at once (module doc)."""

    def __init__(self, comps: Components, texts: list[str], special: bool, ids: list[int]):
        import torch

        from crl.analysis.replay.steer_effects import DecisionBatch
        from crl.backends.hooks import residual_hook

        self.comps, self.lm = comps, comps.lm
        self.hook = comps.sae.hook
        self.batch = DecisionBatch.from_texts(self.lm, self.hook.name, texts, special)
        self.ids = torch.tensor(ids, device=self.lm.device)
        head = self.lm.model.get_output_embeddings()
        self.w = head.weight.detach()[self.ids].float()
        self.b = head.bias.detach()[self.ids].float() if getattr(head, "bias", None) is not None else None
        self.body = _body(self.lm)
        seen: list[torch.Tensor] = []

        def tap(resid: torch.Tensor) -> None:
            seen.append(resid[:, -1, :].detach().clone())

        with residual_hook(self.lm.layers, self.hook.name, tap):
            base = self.batch.steered(None, None)[0]  # (n, vocab) log-probs, unsteered
        self.resid = seen[-1].float()  # (n, d_model) unsteered residual at the decision position
        self.base = base[:, self.ids]
        self.prefix = 0 if self.batch.cache is None else int(self.batch.cache.get_seq_length())
        self.fast = True  # the layers above the SAE's layer only (`check` may switch to the whole model)

    def __len__(self) -> int:
        return len(self.batch)

    def logits(self, deltas: torch.Tensor, fast: bool | None = None) -> torch.Tensor:
        """Answer logits (n_prompts, k, n_ids) with deltas (n_prompts, k, d_model) added at the decision position."""
        import torch

        fast = self.fast if fast is None else fast
        n, k, _ = deltas.shape
        dev = self.lm.device
        mask = torch.zeros(n, 1, k, self.prefix + k, dtype=torch.bool, device=dev)
        if self.prefix:
            mask[:, 0, :, : self.prefix] = self.batch.mask[:, : self.prefix].bool()[:, None, :]
        mask[:, 0, :, self.prefix :] = torch.eye(k, dtype=torch.bool, device=dev)
        pos = self.batch.last_pos.expand(n, k)
        cache = self.batch.cache
        snap = _snapshot(cache) if cache is not None else None
        try:
            with torch.no_grad():
                if fast:
                    h = (self.resid[:, None, :] + deltas.float()).to(self._dtype())
                    with self._layers_above():
                        out = self.body(
                            inputs_embeds=h,
                            attention_mask=mask,
                            position_ids=pos,
                            past_key_values=cache,
                            use_cache=cache is not None,
                        )
                else:
                    with self._steer(deltas):
                        out = self.body(
                            input_ids=self.batch.last.expand(n, k),
                            attention_mask=mask,
                            position_ids=pos,
                            past_key_values=cache,
                            use_cache=cache is not None,
                        )
        finally:
            if snap is not None:
                self.batch.cache = _restore(cache, snap)
        logits = out.last_hidden_state.float() @ self.w.T
        return logits + self.b if self.b is not None else logits

    def check(self, deltas: torch.Tensor) -> float:
        """Run `deltas` both ways; keep the layers-above path only if it agrees with the whole model. Returns the
        largest gap (inf when the layers-above path cannot run on this model)."""
        try:
            gap = float((self.logits(deltas, fast=True) - self.logits(deltas, fast=False)).abs().max())
        except (TypeError, ValueError, RuntimeError, AttributeError):
            gap = float("inf")
        self.fast = gap <= TOLERANCE * max(1.0, float(self.base.abs().max()))
        return gap

    def _dtype(self) -> torch.dtype:
        return next(self.lm.model.parameters()).dtype

    @contextmanager
    def _layers_above(self) -> Iterator[None]:
        """The body with only the layers after the SAE's hook (resid_post of L: from L+1; resid_pre of L: from L)."""
        from torch import nn

        layers = self.body.layers
        start = self.hook.layer + (1 if self.hook.kind == "post" else 0)
        self.body.layers = nn.ModuleList(list(layers)[start:])
        try:
            yield
        finally:
            self.body.layers = layers

    def _steer(self, deltas: torch.Tensor) -> Any:
        from crl.backends.hooks import residual_hook

        def add(resid: torch.Tensor) -> torch.Tensor:
            return resid + deltas.to(resid.dtype)

        return residual_hook(self.lm.layers, self.hook.name, add)


def _deltas(comps: Components, resid: torch.Tensor, feats: torch.Tensor, coefs: torch.Tensor) -> torch.Tensor:
    """(n, k, d_model): the steering delta of action (feats[i, j], coefs[i, j]) at residual i, as the environment adds
    it (relative: times the residual's norm)."""
    import torch

    relative = comps.steering.coef_mode == "relative"
    dirs = comps.sae.directions(unit=relative).to(resid.device, torch.float32)
    delta = dirs[feats.to(resid.device)] * coefs.to(resid.device, torch.float32)[..., None]
    return delta * resid.float().norm(dim=-1)[:, None, None] if relative else delta


def static_candidates(allowed: np.ndarray, n: int) -> np.ndarray:
    """The `n` features in the most prompts' action sets (ties: the lower id), those in none left out.

    >>> static_candidates(np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1]], dtype=bool), 2).tolist()
    [2, 0]
    """
    freq = allowed.sum(axis=0)
    order = np.lexsort((np.arange(len(freq)), -freq))
    return order[: min(n, int((freq > 0).sum()))]


def greedy_cover(cover: np.ndarray, breaks: np.ndarray, ids: np.ndarray, k: int) -> tuple[list[int], list[int]]:
    """Greedy set cover: up to `k` columns of `cover` (prompts x features, bool), each the one covering the most rows
    not yet covered (ties: fewer `breaks`, then the lower `ids`). Once every coverable row is covered, the slots left
    go to the other columns covering the most rows in all (same ties; 0 new rows each): spare levers, as one feature
    that fixes every wrong prompt of a 2-option task on this sample may not on others (PPO learned the compare XOR
    with 4). Returns the chosen columns and how many new rows each covered.

    >>> cover = np.array([[1, 0, 1], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=bool)  # A: {0,1,2}, B: {2,3}, C: {0}
    >>> greedy_cover(cover, np.zeros(3), np.arange(3), 2)
    ([0, 1], [3, 1])
    >>> greedy_cover(cover, np.zeros(3), np.arange(3), 4)  # C is a spare: it covers nothing new
    ([0, 1, 2], [3, 1, 0])
    >>> greedy_cover(cover, np.zeros(3), np.arange(3), 1)
    ([0], [3])
    >>> greedy_cover(np.array([[1, 1]], dtype=bool), np.array([2, 0]), np.array([3, 4]), 2)  # a tie: fewer breaks
    ([1, 0], [1, 0])
    """
    left = np.ones(cover.shape[0], dtype=bool)
    picked: list[int] = []
    new: list[int] = []
    while len(picked) < k and cover.shape[1]:
        gain = cover[left].sum(axis=0)
        best = int(gain.max())
        if best == 0:
            break
        ties = np.flatnonzero(gain == best)
        j = int(ties[np.lexsort((ids[ties], breaks[ties]))[0]])
        picked.append(j)
        new.append(best)
        left &= ~cover[:, j]
    total = cover.sum(axis=0)
    spare = [j for j in np.lexsort((ids, breaks, -total)) if total[j] > 0 and j not in picked]
    for j in spare[: max(0, k - len(picked))]:
        picked.append(int(j))
        new.append(0)
    return picked, new


def feature_shortlist(
    actions: list[Action], correct: np.ndarray, scored: np.ndarray, unsteered: np.ndarray, k: int
) -> dict[str, Any]:
    """Up to `k` features for masking=fixed (module doc): `features`, the prompts each newly covers (`new`), the
    cumulative share of the unsteered-wrong prompts covered (`cumulative`), `n_wrong` and `covered`. Works on the wrong
    rows and the columns of features that fix one of them only, so its memory is bounded by the grid's."""
    wrong = np.flatnonzero(~unsteered)
    right = np.flatnonzero(unsteered)
    feat_of = np.array([a.feature for a in actions], dtype=np.int64)
    fixing = correct[wrong].any(axis=0) if len(wrong) else np.zeros(len(actions), dtype=bool)
    ids = np.unique(feat_of[fixing])  # the features with a level that fixes some wrong prompt
    cols = np.flatnonzero(np.isin(feat_of, ids))  # every level of each
    inv = np.searchsorted(ids, feat_of[cols])
    order = np.argsort(inv, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(inv[order]) != 0]) if len(cols) else np.zeros(0, dtype=np.int64)

    def per_feature(cells: np.ndarray) -> np.ndarray:  # (rows, cols) -> (rows, features): any level
        if not len(cols):
            return np.zeros((cells.shape[0], 0), dtype=bool)
        return np.logical_or.reduceat(cells[:, order], starts, axis=1)

    cover = per_feature(correct[np.ix_(wrong, cols)])
    breaks = per_feature(~correct[np.ix_(right, cols)] & scored[np.ix_(right, cols)]).sum(axis=0)
    picked, new = greedy_cover(cover, breaks, ids, k)
    n_wrong = len(wrong)
    return {
        "k": k,
        "features": [int(ids[j]) for j in picked],
        "new": new,
        "cumulative": [float(c / n_wrong) for c in np.cumsum(new)] if n_wrong else [],
        "n_wrong": n_wrong,
        "covered": int(sum(new)),
    }


@dataclass
class Grid:
    """The (prompt x action) correctness of each prompt's own actions and of the static candidates (`suffix_grid`)."""

    actions: list[Action]  # the columns: every action of any prompt's set, and the static candidates
    correct: np.ndarray  # (n_prompts, n_actions) bool: the answer is right with that action (False where not scored)
    own: np.ndarray  # (n_prompts, n_actions) bool: the action is in the prompt's own action set
    scored: np.ndarray  # (n_prompts, n_actions) bool: scored (own actions, and every static candidate)
    unsteered: np.ndarray  # (n_prompts,) bool: right without steering, as scored here
    fast: bool  # scored through the layers above the SAE's (else the whole model)
    gap: float | None  # the largest logit gap of the check against the whole model


def suffix_grid(
    comps: Components,
    examples: list[Example],
    max_rows: int = 512,
    n_static: int = 64,
    progress: str | None = None,
) -> Grid:
    """Score, on each prompt, every action of its own action set and every level of the `n_static` features in the
    most prompts' sets (the best static action's candidates), for constrained one-token multiple choice (module doc).
    `max_rows`: (prompt, action) rows per forward."""
    import torch

    from crl.envs.steering_env import prompt_texts

    spec = answer_ids(comps, examples)
    if spec is None:
        raise CRLError("the suffix oracle needs constrained one-token multiple choice (task.mode=constrained)")
    ids, allowed_ids, gold = spec
    col = {t: i for i, t in enumerate(ids)}
    texts, special = prompt_texts(comps.task, comps.lm.tokenizer, examples)
    chunks = [range(i, min(i + PROMPT_CHUNK, len(examples))) for i in range(0, len(examples), PROMPT_CHUNK)]
    scorers = [SuffixScorer(comps, [texts[i] for i in rows], special, ids) for rows in chunks]
    allowed = action_sets(comps, torch.cat([s.resid for s in scorers]))  # (n, d_sae)
    static = np.zeros(allowed.shape[1], dtype=bool)
    static[static_candidates(allowed, n_static)] = True
    levels = comps.steering.coef_levels
    feats = np.flatnonzero(allowed.any(axis=0) | static)
    actions = [Action(int(f), li) for li in range(len(levels)) for f in feats]  # level-major, as the env numbers them
    feat_of = np.array([a.feature for a in actions], dtype=np.int64)
    coef_of = np.array([a.coef(comps) for a in actions], dtype=np.float32)
    n, k = len(examples), len(actions)
    own = allowed[:, feat_of] if k else np.zeros((n, 0), dtype=bool)
    scored = own | static[feat_of][None, :]
    correct = np.zeros((n, k), dtype=bool)
    unsteered = np.zeros(n, dtype=bool)
    bar = Progress(f"[crl] {progress}", int(scored.sum()), "actions", enabled=progress is not None)
    gap = None
    for rows, sc in zip(chunks, scorers, strict=True):
        rows = list(rows)
        mask_ids = torch.full((len(sc), len(ids)), float("-inf"))
        for j, i in enumerate(rows):
            mask_ids[j, [col[t] for t in allowed_ids[i]]] = 0.0
        gold_col = torch.tensor([col[gold[i]] for i in rows])
        unsteered[rows] = (sc.base.cpu() + mask_ids).argmax(-1).numpy() == gold_col.numpy()
        todo = [np.flatnonzero(scored[i]) for i in rows]  # each prompt's own columns, padded below to one width
        width = max((len(t) for t in todo), default=0)
        per = max(1, max_rows // len(sc))
        for at in range(0, width, per):
            cols = np.stack([np.resize(t, width)[at : at + per] if len(t) else np.zeros(0, int) for t in todo])
            real = np.arange(at, at + cols.shape[1])[None, :] < np.array([len(t) for t in todo])[:, None]
            deltas = _deltas(comps, sc.resid, torch.as_tensor(feat_of[cols]), torch.as_tensor(coef_of[cols]))
            if gap is None:  # once: the layers-above path against the whole model
                gap = sc.check(deltas[:, : min(4, cols.shape[1])])
                for other in scorers:
                    other.fast = sc.fast
            logits = sc.logits(deltas).cpu() + mask_ids[:, None, :]
            right = (logits.argmax(-1) == gold_col[:, None]).numpy()
            for j, i in enumerate(rows):
                correct[i, cols[j][real[j]]] = right[j][real[j]]
            bar.update(int(real.sum()))
    bar.close()
    return Grid(actions, correct, own, scored, unsteered, scorers[0].fast, gap)


def suffix_oracle(
    comps: Components,
    examples: list[Example],
    unsteered: list[bool],
    max_rows: int = 512,
    n_static: int = 64,
    progress: str | None = None,
    shortlist_k: int = 0,
) -> dict[str, Any]:
    """The oracle of constrained one-token multiple choice (module doc), on `examples` (their unsteered correctness
    from the environment in `unsteered`, which decides the no-steering action); with `shortlist_k` its shortlist."""
    start = time.perf_counter()
    grid = suffix_grid(comps, examples, max_rows, n_static, progress)
    env = np.asarray(unsteered, dtype=bool)
    return _summary(
        comps,
        grid.actions,
        grid.correct,
        grid.own,
        grid.scored,
        env,
        method="suffix: layers above the SAE's" if grid.fast else "suffix: whole model (fallback)",
        seconds=time.perf_counter() - start,
        extra={"agree_with_env": float(np.mean(grid.unsteered == env)), "max_logit_gap": grid.gap},
        shortlist_k=shortlist_k,
    )


def rollout_oracle(
    comps: Components,
    examples: list[Example],
    unsteered: list[bool],
    resid: torch.Tensor,
    max_episodes: int = 1024,
    progress: str | None = None,
    shortlist_k: int = 0,
) -> dict[str, Any]:
    """The oracle of a free-form task, over the first decision only (module doc): one environment episode per
    (prompt, action of its own action set), at most `max_episodes` in all (the first prompts that fit). `resid`: the
    unsteered residuals (n, d_model) at each prompt's decision position (the environment's step-0 observations)."""
    from crl.analysis.replay.runner import tagged

    if not comps.steering.allow_noop:
        raise CRLError("the free-form oracle steers the first decision only, which needs steering.allow_noop=true")
    start = time.perf_counter()
    allowed = action_sets(comps, resid)
    n_levels = len(comps.steering.coef_levels)
    per_prompt = allowed.sum(axis=1) * n_levels
    fits = int(np.searchsorted(np.cumsum(per_prompt), max_episodes, side="right"))
    if fits == 0:
        raise CRLError(
            f"one prompt has {int(per_prompt[0])} actions, more than oracle_max_episodes={max_episodes}; raise it"
        )
    examples, allowed, unsteered = examples[:fits], allowed[:fits], list(unsteered)[:fits]
    feats = np.flatnonzero(allowed.any(axis=0))
    actions = [Action(int(f), li) for li in range(n_levels) for f in feats]  # level-major, as the env numbers them
    index = {(a.feature, a.level): j for j, a in enumerate(actions)}
    d_sae = comps.sae.d_sae
    batch, scripts, where = [], {}, []
    for i, e in enumerate(examples):
        for li in range(n_levels):
            for f in np.flatnonzero(allowed[i]).tolist():
                (copy,) = tagged([e], f"{f}:{li}")
                batch.append(copy)
                scripts[copy.id] = [li * d_sae + f]  # action id = level * d_sae + feature; later steps: no steering
                where.append((i, index[(f, li)]))
    episodes = _scripted(comps, batch, scripts, progress)
    correct = np.zeros((len(examples), len(actions)), dtype=bool)
    own = np.zeros_like(correct)
    for (i, j), ep in zip(where, episodes, strict=True):
        correct[i, j], own[i, j] = bool(ep.correct), True
    return _summary(
        comps,
        actions,
        correct,
        own,
        own,  # only the own actions are rolled out: a best static action is known where every prompt tried it
        np.asarray(unsteered, dtype=bool),
        method="rollout: first decision steered, then none",
        seconds=time.perf_counter() - start,
        extra={"max_episodes": max_episodes},
        shortlist_k=shortlist_k,
    )


def _scripted(comps: Components, batch: list, scripts: dict[str, list[int]], progress: str | None) -> list:
    """Episodes of `batch` that follow `scripts` (prompt id -> actions by step), then no steering."""
    from crl.analysis.replay.runner import batch_env
    from crl.envs.rollout import NoSteer, Scripted, run_episodes

    env = batch_env(comps, batch)
    bar = Progress(f"[crl] {progress}", len(batch), "episodes", enabled=progress is not None)
    try:
        return run_episodes(env, batch, Scripted(scripts, NoSteer(env)), on_done=bar.update)
    finally:
        bar.close()
        env.close()


def _summary(
    comps: Components,
    actions: list[Action],
    correct: np.ndarray,
    own: np.ndarray,
    scored: np.ndarray,
    unsteered: np.ndarray,
    method: str,
    seconds: float,
    extra: dict[str, Any],
    top: int = 10,
    shortlist_k: int = 0,
) -> dict[str, Any]:
    """The oracle's record from the (prompts x actions) correctness grid `correct`: `own` marks the actions each
    prompt's own action set holds (what the oracle may use), `scored` the cells measured; the best static action is
    chosen among the columns scored on every prompt. With `shortlist_k` > 0 also `shortlist` (`feature_shortlist`, each
    feature's label beside it)."""
    from crl.cards.store import find_cards

    n = len(unsteered)
    noop = comps.steering.allow_noop
    reach = (correct & own).any(axis=1) | (unsteered if noop else False)
    cards = find_cards(comps.sae.identity, comps.lm.name)
    label = (lambda f: cards.label(f) if 0 <= f < cards.d_sae else None) if cards is not None else (lambda f: None)

    def describe(j: int) -> dict[str, Any]:
        a = actions[j]
        return {"feature": a.feature, "level": comps.steering.coef_levels[a.level], "coef": a.coef(comps)}

    wrong = ~unsteered
    fixes = ((correct & own) & wrong[:, None]).sum(axis=0)
    breaks = ((~correct & own) & unsteered[:, None]).sum(axis=0)
    order = sorted(range(len(actions)), key=lambda j: (-int(fixes[j]), int(breaks[j]), j))
    fixers = [
        {**describe(j), "fixes": int(fixes[j]), "breaks": int(breaks[j]), "label": label(actions[j].feature)}
        for j in order[:top]
        if fixes[j] > 0
    ]
    record: dict[str, Any] = {
        "method": method,
        "n": n,
        "unsteered": float(unsteered.mean()) if n else float("nan"),
        "accuracy": float(reach.mean()) if n else float("nan"),
        "reached": int(reach.sum()),
        "fixed": int((reach & wrong).sum()),
        "actions_per_prompt": float(own.sum(axis=1).mean()) if n else 0.0,
        "actions_scored": int(scored.sum()),
        "seconds": round(seconds, 2),
        "includes_no_steering": bool(noop),
        "top_fixers": fixers,
        "best_static": None,
    }
    full = np.flatnonzero(scored.all(axis=0)) if n else np.zeros(0, dtype=np.int64)
    if len(full):
        acc = correct[:, full].mean(axis=0)
        j = int(full[int(np.argmax(acc))])  # ties: the first, i.e. the lower level index, then the lower feature id
        record["best_static"] = {
            **describe(j),
            "accuracy": float(correct[:, j].mean()),
            "label": label(actions[j].feature),
            "n_candidates": len(full),
        }
    if shortlist_k > 0:
        short = feature_shortlist(actions, correct, scored, unsteered, shortlist_k)
        record["shortlist"] = {**short, "labels": [label(f) for f in short["features"]]}
    record.update(extra)
    return record


def oracle(
    comps: Components,
    examples: list[Example],
    unsteered: list[bool],
    resid: torch.Tensor,
    max_rows: int = 512,
    max_episodes: int = 1024,
    n_static: int = 64,
    progress: str | None = None,
    shortlist_k: int = 0,
) -> dict[str, Any]:
    """`suffix_oracle` where the task is constrained one-token multiple choice, else `rollout_oracle`."""
    if answer_ids(comps, examples) is not None:
        return suffix_oracle(comps, examples, unsteered, max_rows, n_static, progress, shortlist_k)
    return rollout_oracle(comps, examples, unsteered, resid, max_episodes, progress, shortlist_k)
