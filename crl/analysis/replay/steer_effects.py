"""What a feature does to the next token when CRL steers with it, at the run's own coefficient, mode and levels.

Descriptions built from inputs alone (top activations) miss what a feature does to outputs (Gur-Arieh et al.,
arXiv 2501.08319). So for every (feature, level) a run's eval phase used, `feature_effects` measures:

- `promotes` / `demotes`: the 10 tokens whose next-token log-prob rises / falls most when steered, as the mean
  change (steered - unsteered) over the neutral and the task prompts pooled (each prompt counts once);
- `kl_neutral` / `kl_task`: KL(P_unsteered || P_steered) of the next-token distribution, mean over the prompts of
  each set: fixed neutral sentences (`effects.NEUTRAL_PROMPTS`) and the first prompts of a task split;
- `top1_changed_neutral` / `top1_changed_task`: the share of those prompts whose most likely next token changes.

Only the decision position is steered, as CRL's step 0 does: the last prompt token, read for the next token
(features the policy chose at later steps are measured at this position too).
Neutral prompts are raw text (the tokenizer's special tokens added); task prompts are rendered exactly as the
environment renders step 0 (`crl.envs.steering_env.prompt_texts`, `crl.envs.lockstep.encode_prompts`: the chat
template, left padding, explicit positions). Steering is the environment's: `coef_mode=raw` adds c*l*W_dec[f],
`relative` adds c*l*||x||*W_dec[f]/||W_dec[f]||, x the unsteered residual there. The distribution is the model's
whole next-token distribution, before any constrained decoding (a multiple-choice task's letters): what steering
does to the model, not only to the task's answer.

Cost: each prompt set's tokens before the last run once into a KV cache (a start every prompt shares, such as the
chat template's system prompt, once for all); the unsteered baseline and each (feature, level) then run only the
last token of every prompt of the set, several (feature, level) variants per forward (`MAX_ROWS`). That makes it
cheap enough for every `crl analyze` (on by default: `AnalyzeConfig.feature_effects`).
Written to <run_dir>/analysis/feature_effects.json; read back with `crl.analysis.offline.feature_effects`.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crl.analysis.offline.feature_effects import EFFECTS_FILE, read_effects_record, used_levels
from crl.analysis.replay import announce
from crl.analysis.replay.effects import NEUTRAL_PROMPTS
from crl.errors import CRLError
from crl.logs.reader import load_run

if TYPE_CHECKING:  # importing these at run time pulls in torch and transformers
    import torch

    from crl.backends.model import FrozenLM
    from crl.run.components import Components

PHASE = "steering effects"  # its name in what `crl analyze` prints (`announce`)
N_TOKENS = 10  # promoted / demoted tokens kept per (feature, level)
MAX_FEATURES = 30  # most-used features measured per run; the rest are counted as left out
N_TASK_PROMPTS = 16  # first prompts of the task split
MAX_ROWS = 128  # rows per forward: several steered variants of a prompt set share one (memory: a cache copy each)


class DecisionBatch:
    """The decision position (the last token) of a batch of prompts, steered or not.

    The prompts before their last token run once into a KV cache (tokens every row starts with, such as a chat
    template's system prompt, once for all rows); each steered variant then runs only the last token, several
    variants per forward (`steered`), on a copy of that cache."""

    def __init__(self, lm: FrozenLM, hook_name: str, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> None:
        self.lm, self.hook_name = lm, hook_name
        # Only the last position's logits are read: skip the (tokens x vocab) head matmul for the rest.
        self.extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(lm.model.forward).parameters else {}
        self.last, self.last_pos = ids[:, -1:], pos[:, -1:]
        self.cache, self.mask = self._prefix(ids[:, :-1], mask[:, :-1], pos[:, :-1])
        self.base = self.logprobs()

    def __len__(self) -> int:
        return int(self.last.shape[0])

    @classmethod
    def from_texts(cls, lm: FrozenLM, hook_name: str, texts: list[str], add_special_tokens: bool) -> DecisionBatch:
        from crl.envs.lockstep import encode_prompts

        return cls(lm, hook_name, *encode_prompts(lm.tokenizer, texts, add_special_tokens, lm.device))

    def _forward(self, cache: Any, **inputs: torch.Tensor) -> Any:
        import torch

        with torch.no_grad():
            return self.lm.model(**inputs, past_key_values=cache, use_cache=cache is not None, **self.extra)

    def _prefix(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """(KV cache of every row's tokens before the last, the attention mask the last token then needs)."""
        import torch
        from transformers import DynamicCache

        n_rows = len(ids)
        full = torch.ones(n_rows, 1, dtype=mask.dtype, device=mask.device)
        if ids.shape[1] == 0:
            return None, full
        cache = DynamicCache(config=self.lm.model.config)
        rows = [r[m.bool()] for r, m in zip(ids, mask, strict=True)]
        shared = _shared_length(rows)
        if n_rows == 1 or shared < 2:  # nothing worth sharing: the env's left-padded batch as it is
            self._forward(cache, input_ids=ids, attention_mask=mask, position_ids=pos)
            return cache, torch.cat([mask, full], dim=1)
        # The shared start runs once; each row's rest follows it, left-padded: [shared | pads | rest], positions
        # counted over real tokens, so every token sees what it sees in the env's batch.
        self._forward(
            cache,
            input_ids=rows[0][None, :shared],
            attention_mask=torch.ones_like(rows[0][None, :shared]),
            position_ids=torch.arange(shared, device=ids.device)[None],
        )
        cache.batch_repeat_interleave(n_rows)
        width = max(len(r) for r in rows) - shared
        rest_ids = ids.new_zeros(n_rows, width)
        rest_mask = mask.new_zeros(n_rows, width)
        for i, r in enumerate(rows):
            if len(r) > shared:
                rest_ids[i, width - (len(r) - shared) :] = r[shared:]
                rest_mask[i, width - (len(r) - shared) :] = 1
        joined = torch.cat([torch.ones_like(mask[:, :shared]), rest_mask], dim=1)
        if width:
            rest_pos = (shared + rest_mask.cumsum(-1) - 1).clamp_min(0)
            self._forward(cache, input_ids=rest_ids, attention_mask=joined, position_ids=rest_pos)
        return cache, torch.cat([joined, full], dim=1)

    def logprobs(self, direction: torch.Tensor | None = None, scale: float = 0.0, relative: bool = False):
        """Next-token log-probs (n_prompts, vocab) at the last token, with `scale * direction` added to the residual
        there (times the residual's norm when `relative`); unsteered when `direction` is None."""
        import torch

        if direction is None:
            return self.steered(None, None)[0]
        return self.steered(direction[None], torch.tensor([float(scale)]), relative)[0]

    def steered(self, directions: torch.Tensor | None, scales: torch.Tensor | None, relative: bool = False):
        """Log-probs (n_variants, n_prompts, vocab): variant k adds `scales[k] * directions[k]` at the last token
        (times the residual's norm when `relative`); one unsteered variant when `directions` is None."""
        import copy

        import torch

        from crl.backends.hooks import residual_hook

        k = 1 if directions is None else len(directions)
        n = len(self)
        cache = copy.deepcopy(self.cache)  # the prefix stays as it is for the next variants
        if cache is not None and k > 1:
            cache.batch_repeat_interleave(k)  # row i * k + j: prompt i, variant j

        def add(resid: torch.Tensor) -> torch.Tensor:
            x = resid[:, -1, :]
            norm = x.float().norm(dim=-1, keepdim=True) if relative else 1.0
            delta = scales.to(x.device, torch.float32).repeat(n)[:, None] * directions.float().repeat(n, 1)
            out = resid.clone()
            out[:, -1, :] = x + (norm * delta).to(resid.dtype)
            return out

        hook = residual_hook(self.lm.layers, self.hook_name, add) if directions is not None else nullcontext()
        with hook:
            out = self._forward(
                cache,
                input_ids=self.last.repeat_interleave(k, 0),
                attention_mask=self.mask.repeat_interleave(k, 0),
                position_ids=self.last_pos.repeat_interleave(k, 0),
            )
        lp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
        return lp.view(n, k, -1).transpose(0, 1)


def _shared_length(rows: list[torch.Tensor]) -> int:
    """How many tokens every row starts with."""
    import torch

    shortest = min(len(r) for r in rows)
    agree = torch.stack([r[:shortest] == rows[0][:shortest] for r in rows]).all(0)
    return int(agree.long().cumprod(0).sum())


def _level(x: int | float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


def _shared_answer_tokens(comps: Components, examples: list) -> dict[str, int]:
    """The answer tokens of a constrained multiple-choice task ({"A": id, ...}) when every prompt allows the same
    ones, else {} (free-form tasks have no fixed answer tokens)."""
    tok = comps.lm.tokenizer
    try:
        allowed = {tuple(comps.task.allowed_token_ids(tok, e) or ()) for e in examples}
    except (AttributeError, TypeError):
        return {}
    if len(allowed) != 1 or not next(iter(allowed)):
        return {}
    return {tok.decode([int(t)]).strip() or str(t): int(t) for t in next(iter(allowed))}


def feature_effects(
    comps: Components,
    features_levels: dict[int, list[int | float]],
    n_task_prompts: int = N_TASK_PROMPTS,
    neutral_prompts: tuple[str, ...] | list[str] = NEUTRAL_PROMPTS,
    split: str = "val",
) -> dict[str, Any]:
    """What each (feature, level) does to the next token at the decision position (module docstring), steering at
    `comps.steering` (coef, coef_mode) times the level. `promotes` / `demotes` rank tokens by the mean change in
    log-prob over the neutral and the task prompts pooled; the KL and top-1 changes are per prompt set.

    Returns {"sae_identity", "model", "coef", "coef_mode", "split", "n_neutral", "n_task", "seconds",
    "features": {"<feature>": [{"level", "coef", "kl_neutral", "kl_task", "top1_changed_neutral",
    "top1_changed_task", "n_neutral", "n_task", "promotes": [[token, delta], ...], "demotes": [...],
    "answer_shift": {"A": delta, ...}}, ...]}}, the features and levels in the order given. `answer_shift` (constrained
    multiple choice only): the mean change, over the task prompts, of each answer token's log-probability among the
    answer tokens (what steering does to the answer itself; `crl.analysis.offline.agreement` groups features by it)."""
    import torch

    from crl.envs.steering_env import prompt_texts

    start = time.perf_counter()
    lm, sae = comps.lm, comps.sae
    bad = [f for f in features_levels if not 0 <= int(f) < sae.d_sae]
    if bad:
        raise CRLError(f"feature {bad[0]} is out of range for an SAE with d_sae={sae.d_sae}")
    if not neutral_prompts:
        raise CRLError("steering effects need at least one neutral prompt")
    if n_task_prompts < 1:
        raise CRLError(f"n_task_prompts={n_task_prompts} is invalid; use at least 1")
    if split not in comps.splits:
        raise CRLError(f"split '{split}' was not loaded (have {sorted(comps.splits)}); build the components with it")
    c = float(comps.steering.coef)
    relative = comps.steering.coef_mode == "relative"
    dirs = sae.directions(unit=relative).to(lm.device, torch.float32)
    texts, special = prompt_texts(comps.task, lm.tokenizer, comps.splits[split][:n_task_prompts])
    sets = {
        "neutral": DecisionBatch.from_texts(lm, sae.hook_name, list(neutral_prompts), True),
        "task": DecisionBatch.from_texts(lm, sae.hook_name, texts, special),
    }
    pairs = [(int(f), level) for f, levels in features_levels.items() for level in levels]
    letters = _shared_answer_tokens(comps, comps.splits[split][:n_task_prompts])
    answer: list[dict[str, float]] = []  # per pair: mean change of each answer token's log-prob among the answers
    stats: dict[str, list[tuple[float, float]]] = {}  # set -> (KL, top-1 changed) per pair
    delta_sum = torch.zeros(len(pairs), sets["neutral"].base.shape[-1])  # log-prob change summed over prompts
    for name, batch in sets.items():
        stats[name] = []
        per = max(1, MAX_ROWS // len(batch))  # variants per forward
        for at in range(0, len(pairs), per):
            chunk = pairs[at : at + per]
            scales = torch.tensor([c * float(level) for _, level in chunk])
            lps = batch.steered(dirs[[f for f, _ in chunk]], scales, relative)
            for j, lp in enumerate(lps):
                kl = (batch.base.exp() * (batch.base - lp)).sum(-1).mean()
                changed = (batch.base.argmax(-1) != lp.argmax(-1)).float().mean()
                stats[name].append((float(kl), float(changed)))
                delta_sum[at + j] += (lp - batch.base).sum(0).cpu()
                if name == "task" and letters:
                    ids = list(letters.values())
                    before = batch.base[:, ids].log_softmax(-1)
                    after = lp[:, ids].log_softmax(-1)
                    shift = (after - before).mean(0)
                    answer.append({t: round(float(v), 4) for t, v in zip(letters, shift, strict=True)})
    mean = delta_sum / sum(len(b) for b in sets.values())  # every prompt of both sets counts once
    decode = lm.tokenizer.decode
    features: dict[str, list[dict[str, Any]]] = {}
    for i, (f, level) in enumerate(pairs):
        up, down = mean[i].topk(N_TOKENS), (-mean[i]).topk(N_TOKENS)
        features.setdefault(str(f), []).append(
            {
                "level": _level(level),
                "coef": c * float(level),
                "kl_neutral": stats["neutral"][i][0],
                "kl_task": stats["task"][i][0],
                "top1_changed_neutral": stats["neutral"][i][1],
                "top1_changed_task": stats["task"][i][1],
                "n_neutral": len(sets["neutral"]),
                "n_task": len(sets["task"]),
                "promotes": [[decode([int(t)]), round(float(d), 4)] for d, t in zip(*up, strict=True)],
                "demotes": [[decode([int(t)]), round(-float(d), 4)] for d, t in zip(*down, strict=True)],
                **({"answer_shift": answer[i]} if answer else {}),
            }
        )
    return {
        "sae_identity": sae.identity,
        "model": lm.name,
        "coef": c,
        "coef_mode": comps.steering.coef_mode,
        "split": split,
        "n_neutral": len(sets["neutral"]),
        "n_task": len(sets["task"]),
        "seconds": round(time.perf_counter() - start, 2),
        "features": features,
    }


def _plan(run_dir: str | Path, eval_split: str | None, max_features: int) -> dict[str, Any]:
    """Which (feature, level) pairs the run's eval phase used, most used first: {"run", "phase", "used",
    "n_features_left_out", ...}."""
    run = load_run(run_dir, include_train=False)
    phase = run.eval_phase(eval_split)
    used, left_out = used_levels(run.steps_of(phase), run.info.coef, max_features)
    return {
        "run": run.name,
        "phase": phase,
        "sae_identity": run.sae_identity,
        "model": run.info.model,
        "coef": run.info.coef,
        "coef_mode": run.info.coef_mode,
        "max_features": max_features,
        "n_features_left_out": left_out,
        "used": used,
    }


def run_feature_effects(
    run_dir: str | Path,
    comps: Components | None = None,
    max_features: int = MAX_FEATURES,
    n_task_prompts: int = N_TASK_PROMPTS,
    split: str = "val",
    eval_split: str | None = None,
) -> dict[str, Any]:
    """`feature_effects` of every (feature, level) the run's eval phase (`RunDir.eval_phase(eval_split)`: test,
    then val) used, most used first, at most `max_features` features; the record adds the run, the phase, each
    level's `n_uses` (eval rows) and how many features were left out. `comps` defaults to the run's own."""
    return _measure(_plan(run_dir, eval_split, max_features), run_dir, comps, n_task_prompts, split)


def _measure(
    plan: dict[str, Any], run_dir: str | Path, comps: Components | None, n_task_prompts: int, split: str
) -> dict[str, Any]:
    used = plan["used"]
    head = {k: v for k, v in plan.items() if k != "used"}
    if not used:  # the eval policy never steered: nothing to measure, no model to load
        announce.say(f"{PHASE}: nothing to measure (the eval policy never steered)")
        return {**head, "features": {}}
    if comps is None:
        from crl.analysis.replay.runner import load_components

        comps = load_components(run_dir)
    n_pairs = sum(len(lv) for lv in used.values())
    size = (
        f"{len(used)} features, {n_pairs} (feature, level) pairs × ({len(NEUTRAL_PROMPTS)} neutral + "
        f"{len(comps.splits.get(split, [])[:n_task_prompts])} {split} prompts), one token each"
    )
    with announce.phase(PHASE, size):
        record = feature_effects(comps, {f: list(lv) for f, lv in used.items()}, n_task_prompts, split=split)
    for f, entries in record["features"].items():
        for e in entries:
            e["n_uses"] = used[int(f)][e["level"]]
    return {**head, **record}


def write_feature_effects(run_dir: str | Path, record: dict[str, Any]) -> Path:
    """Store a record as <run_dir>/analysis/feature_effects.json (atomic: a killed writer leaves the old file)."""
    from crl.logs.atomic import atomic_write_json

    path = Path(run_dir) / EFFECTS_FILE
    atomic_write_json(path, record)
    return path


def _current(record: dict[str, Any] | None, plan: dict[str, Any]) -> bool:
    """Whether a stored record measured exactly what the run's eval phase now uses (same SAE, phase, pairs, uses)."""
    if record is None or any(record.get(k) != plan[k] for k in ("phase", "sae_identity", "max_features")):
        return False
    have = {int(f): {e["level"]: e.get("n_uses") for e in es} for f, es in record["features"].items()}
    return have == plan["used"] and record.get("n_features_left_out") == plan["n_features_left_out"]


def stored_feature_effects(
    run_dir: str | Path, eval_split: str | None = None, max_features: int = MAX_FEATURES
) -> str | None:
    """`EFFECTS_FILE` when `ensure_feature_effects` with these settings (no force) would take the stored record, else
    None."""
    from crl.analysis.replay.runner import current_record

    stored = current_record(read_effects_record, run_dir, _plan(run_dir, eval_split, max_features), _current)
    return EFFECTS_FILE if stored is not None else None


def ensure_feature_effects(
    run_dir: str | Path,
    force: bool = False,
    eval_split: str | None = None,
    max_features: int = MAX_FEATURES,
    comps: Components | None = None,
    load: Callable[[], Components] | None = None,
) -> tuple[dict[str, Any] | None, str | None]:
    """The run's steering effects: the stored record when it is current (same eval phase and pairs; always
    re-measured with `force`), else measured and written. Returns (record, None), or (None, a one-line note) when
    the run's model and SAE cannot be rebuilt here (e.g. a hand-written config, a GPU run on a CPU host). `load`
    builds the components when `comps` is not given (default: `runner.load_components` of the run)."""
    plan = _plan(run_dir, eval_split, max_features)
    from crl.analysis.replay.runner import current_record, rebuild

    stored = current_record(read_effects_record, run_dir, plan, _current, force)
    if stored is not None:
        announce.reused(PHASE, EFFECTS_FILE)
        return stored, None
    if comps is None and plan["used"]:
        comps, note = rebuild(run_dir, load)
        if comps is None:
            announce.say(f"{PHASE}: {note}")
            return None, note
    record = _measure(plan, run_dir, comps, N_TASK_PROMPTS, "val")
    write_feature_effects(run_dir, record)
    return record, None
