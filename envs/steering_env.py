"""`SteeringVecEnv`: N episodes of one task advance in lockstep; each step steers one token per row.

Observation: the residual (d_model,) at the SAE's hook at the current position, *before* steering.
Action: an SAE feature index in [0, d_sae), or d_sae = "no steering" when `allow_noop`.
Steering: x <- x + c * d_a at that position, where d_a is the decoder row W_dec[a] (`coef_mode=raw`),
or x <- x + c * ||x|| * W_dec[a] / ||W_dec[a]|| (`coef_mode=relative`, c relative to the residual norm).

Which positions are steered: step 0 steers the last prompt token (it decides the first answer token,
so a one-token multiple-choice answer still gets a steered decision); step t steers the t-th generated
token as it is fed back in. So there is exactly one decision per generated token, and the final token of
an episode is never fed back. Prompt tokens before the last are never steered.

Episodes end at EOS, a stop string, or `max_new_tokens`; the only reward is terminal, from the task's
verifier (`reward="exact"`), or with `reward="letter_prob"` (task.reward, for `crl train`'s training env only) the
probability of the gold letter, softmax over the option letters' logits at the answer token of constrained multiple
choice, read by the decoder from the steered forward; `correct` is the verifier's 0/1 verdict either way.
Autoreset is DISABLED: finished rows stay finished (zero observation, zero reward, ignored
actions) until `reset()`, which starts a fresh lockstep batch.

`info` per step: `action_mask` (N, n_actions) from the masking logic, `active`, `step`, `prompt_id`, and
`records[i]` for each row that acted: token id and text, feature, coefficient, the feature's SAE activation
before steering, the residual norm, position. Rows that end carry `final[i]`: completion, reward, correct,
well-formed, stop reason.

Two ways to drive it, chosen per batch by `reset(options={"on_device": ...})`:
- host (the default, the gymnasium convention): observations and masks are numpy arrays, actions any integer array,
  and every step's records come back in `info["records"]`.
- on_device (what `run_episodes` uses with a policy that declares `on_device`, e.g. the PPO agent): observations
  (N, d_model) float32 and `action_mask` are tensors on the model's device, actions a tensor (N,), and nothing goes
  to the host per token but what the decoder needs (crl/envs/lockstep.py). There is no `info["records"]`: each
  step's record values stay on the device and are moved in one transfer when the batch's last row ends, filling every
  `final[i]["records"]` list of the batch (rows that ended earlier included) before that last step returns. Bad
  actions and an empty action mask are reported then, with the same one-line errors.
Both compute the same values with the same operations, so they write the same logs (tests/run/test_log_identity.py).

Precision: the residual arrives in the model's dtype (float32, bfloat16 or float16: model.dtype). It is cast up to
float32 once per decision; the observation, the SAE encode (in the SAE's own dtype, float32 for every SAE CRL loads),
the residual norm, the action mask and the steering delta c * l * W_dec[a] are all computed in float32, and the
decoder adds the delta in float32 and casts the sum back to the model's dtype (crl/envs/lockstep.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from crl.backends.model import FrozenLM
from crl.backends.sae import LoadedSAE, check_compatible
from crl.config import SteeringConfig, validate
from crl.envs.lockstep import Decision, DecodeSpec, LockstepDecoder
from crl.envs.tasks.base import Example, Task
from crl.errors import CRLError

# (acts (n, d_sae), rows (n,), steps (n,)) -> bool mask (n, n_actions), all on the model's device
ActionMasker = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class _StepLog:
    """One step's record values for the rows that acted: host bookkeeping, device values (moved when logged)."""

    rows: np.ndarray
    steps: np.ndarray
    positions: np.ndarray
    chosen: torch.Tensor  # (n,) long: the action ids
    feature_act: torch.Tensor  # (n,) float32: the chosen feature's SAE activation (0 for the no-op)
    resid_norm: torch.Tensor  # (n,) float32
    tokens: list[int]


def prompt_texts(task: Task, tokenizer: Any, examples: list[Example]) -> tuple[list[str], bool]:
    """The exact texts the env feeds the model for `examples` (the task's format, chat template included), and
    whether the tokenizer adds its special tokens: chat-templated prompts already hold theirs, raw prompts get the
    tokenizer's (BOS). With `crl.envs.lockstep.encode_prompts` this is step 0's input, for analyses that re-run it."""
    special = not (task.cfg.chat_template and getattr(tokenizer, "chat_template", None))
    return [task.format_prompt(e, tokenizer) for e in examples], special


class SteeringVecEnv(VectorEnv):
    metadata = {"autoreset_mode": AutoresetMode.DISABLED}

    def __init__(
        self,
        lm: FrozenLM,
        sae: LoadedSAE,
        task: Task,
        examples: list[Example],
        cfg: SteeringConfig,
        num_envs: int,
        seed: int = 0,
        masker: ActionMasker | None = None,
        reward: str = "exact",
    ):
        check_compatible(sae, lm.d_model, lm.n_layers, lm.name)
        if not examples:
            raise CRLError(f"task '{task.name}' gave no examples; check the split and task.n_* sizes")
        validate(cfg, "steering.")
        self.lm, self.sae, self.task, self.examples, self.cfg = lm, sae, task, examples, cfg
        self.num_envs = num_envs
        self.masker = masker
        if reward not in ("exact", "letter_prob"):
            raise CRLError(f"task.reward={reward} is unknown; use exact or letter_prob")
        self.reward = reward
        self.d_sae = sae.d_sae
        self.levels = [float(c) * float(cfg.coef) for c in cfg.coef_levels]  # action id = level * d_sae + feature
        self.n_steer = self.d_sae * len(self.levels)
        self.noop = self.n_steer if cfg.allow_noop else None
        self.n_actions = self.n_steer + (1 if cfg.allow_noop else 0)
        self.max_new_tokens = int(cfg.max_new_tokens or task.cfg.max_new_tokens)
        self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, (lm.d_model,), np.float32)
        self.single_action_space = gym.spaces.Discrete(self.n_actions)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._dirs = sae.directions(unit=cfg.coef_mode == "relative").to(lm.device, torch.float32)
        self._levels = torch.tensor(self.levels, dtype=torch.float32, device=lm.device)
        self._token_text: dict[int, str] = {}  # token id -> its decoded text (the same every time)
        tok = lm.tokenizer
        self._eos = {
            i
            for i in (tok.eos_token_id, getattr(lm.model.generation_config, "eos_token_id", None))
            if isinstance(i, int)
        }
        gen_eos = getattr(lm.model.generation_config, "eos_token_id", None)
        if isinstance(gen_eos, list):
            self._eos |= set(gen_eos)
        self._check_context()
        self._rng = np.random.default_rng(seed)
        self._order: list[int] = []
        self._gen = torch.Generator(device=lm.device).manual_seed(seed)  # sampled decoding, on the model's device
        self._decoder = LockstepDecoder(lm, sae.hook_name, self._gen)
        self._decision: Decision | None = None
        self._batch: list[Example] = []
        self._on_device = False
        self._log: list[_StepLog] = []
        self._first_empty: torch.Tensor | None = None

    # -- validation -------------------------------------------------------------------------------
    def _add_special_tokens(self) -> bool:
        return prompt_texts(self.task, self.lm.tokenizer, [])[1]

    def _check_context(self) -> None:
        # Count tokens exactly as the decoder will tokenize them (a BOS counts against the context too).
        special = self._add_special_tokens()
        longest = max(
            len(
                self.lm.tokenizer(self.task.format_prompt(e, self.lm.tokenizer), add_special_tokens=special)[
                    "input_ids"
                ]
            )
            for e in self.examples
        )
        if longest + self.max_new_tokens > self.lm.max_context:
            raise CRLError(
                f"max_new_tokens={self.max_new_tokens} does not fit: the longest prompt has {longest} tokens "
                f"and {self.lm.name} has a context of {self.lm.max_context}; lower task.max_new_tokens"
            )
        if self.max_new_tokens < 1:
            raise CRLError("max_new_tokens must be >= 1")

    # -- gymnasium API ----------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
            self._gen.manual_seed(seed)
            self._order = []
        batch = (options or {}).get("examples")
        if batch is None:
            batch = [self.examples[self._next_index()] for _ in range(self.num_envs)]
        if not 0 < len(batch) <= self.num_envs:
            raise CRLError(f"reset got {len(batch)} examples for num_envs={self.num_envs}")
        self._batch = list(batch)
        n = len(batch)
        self._done = np.array([i >= n for i in range(self.num_envs)])
        self._steps = np.zeros(self.num_envs, dtype=np.int64)
        self._records: list[list[dict[str, Any]]] = [[] for _ in range(self.num_envs)]
        self._on_device = bool((options or {}).get("on_device", False))
        self._log, self._first_empty = [], None
        tok = self.lm.tokenizer
        allowed = [self.task.allowed_token_ids(tok, e) for e in batch]
        spec = DecodeSpec(
            max_new_tokens=self.max_new_tokens,
            eos_ids=set() if self.cfg.fixed_length else self._eos,
            stop_strings=[] if self.cfg.fixed_length else self.task.stop_strings(),
            allowed_token_ids=allowed,
            score_token_ids=self._gold_ids(batch, allowed) if self.reward == "letter_prob" else None,
            greedy=self.cfg.greedy,
            temperature=self.cfg.temperature,
            use_cache=self.cfg.use_cache,
            add_special_tokens=self._add_special_tokens(),
        )
        self._prompts = prompt_texts(self.task, tok, batch)[0]
        if hasattr(self.masker, "begin"):
            self.masker.begin(self.num_envs)  # running means are per episode
        self._decision = self._decoder.start(self._prompts, spec)
        return self._observe_or_close({})

    def step(self, actions):
        if self._decision is None:
            raise CRLError("step() after every episode finished; call reset()")
        d = self._decision
        if self._on_device:  # checked when the batch ends (_end_batch): no sync here
            chosen = self._action_tensor(actions)[d.rows]
        else:
            chosen = torch.as_tensor(self._host_actions(actions)[d.host_rows], device=self.lm.device)
        deltas, entry = self._deltas(d, chosen)
        self._decision = self._decoder.send(deltas)
        entry.tokens = [self._decoder.last_tokens[r] for r in d.host_rows.tolist()]
        self._steps[d.host_rows] += 1
        info: dict[str, Any] = {}
        if self._on_device:
            self._log.append(entry)
        else:
            info["records"] = [None] * self.num_envs
            for r, rec in self._log_records([entry]):
                info["records"][r] = rec
        rewards = np.zeros(self.num_envs, dtype=np.float64)
        finals: list[dict[str, Any] | None] = [None] * self.num_envs
        for r in self._decoder.finished:
            finals[r] = self._finish(r)
            rewards[r] = finals[r]["reward"]
        if self._on_device and self._decision is None:
            self._end_batch()
        terminated = self._done.copy()
        info["final"] = finals
        obs, info = self._observe_or_close(info)
        return obs, rewards, terminated, np.zeros(self.num_envs, dtype=bool), info

    def close(self, **kwargs: Any) -> None:
        self._decoder.close()
        self._decision = None

    def __del__(self) -> None:
        # An env dropped mid-episode must not leave its worker parked in the layer hook.
        decoder = getattr(self, "_decoder", None)
        if decoder is not None:
            decoder.close(wait=False)

    # -- internals --------------------------------------------------------------------------------
    def _next_index(self) -> int:
        if not self._order:  # cycle through a fresh shuffle, so every prompt is seen each epoch
            self._order = self._rng.permutation(len(self.examples)).tolist()
        return self._order.pop()

    def _host_actions(self, actions: Any) -> np.ndarray:
        acts = np.asarray(actions, dtype=np.int64).reshape(-1)
        if acts.shape[0] != self.num_envs:
            raise CRLError(f"expected {self.num_envs} actions, got {acts.shape[0]}")
        self._check_actions(acts[self._decision.host_rows])
        return acts

    def _action_tensor(self, actions: Any) -> torch.Tensor:
        acts = torch.as_tensor(actions, device=self.lm.device).reshape(-1).long()
        if acts.shape[0] != self.num_envs:
            raise CRLError(f"expected {self.num_envs} actions, got {acts.shape[0]}")
        return acts

    def _check_actions(self, chosen: np.ndarray) -> None:
        bad = (chosen < 0) | (chosen >= self.n_actions)
        if bad.any():
            raise CRLError(
                f"feature index {int(chosen[bad][0])} is out of range: valid actions are 0..{self.n_actions - 1}"
                + (f" ({self.noop} = no steering)" if self.noop is not None else "")
            )

    def _deltas(self, d: Decision, chosen: torch.Tensor) -> tuple[torch.Tensor, _StepLog]:
        """The steering vectors (n_active, d_model) in float32 for these actions, and the step's record values; all on
        the device. An out-of-range action (reported when the batch ends, on_device) only indexes in range here."""
        if self.noop is not None:
            steer = chosen != self.noop
        else:
            steer = torch.ones_like(chosen, dtype=torch.bool)
        feats = torch.where(steer, chosen % self.d_sae, 0)
        scale = torch.where(steer, self._levels[(chosen // self.d_sae).clamp(0, len(self.levels) - 1)], 0.0)
        norms = d.resid.float().norm(dim=-1)
        if self.cfg.coef_mode == "relative":
            scale = scale * norms
        deltas = self._dirs[feats] * scale[:, None]
        acts = self._acts.gather(1, feats[:, None]).squeeze(1)
        feature_act = torch.where(steer, acts, torch.zeros_like(acts))
        entry = _StepLog(d.host_rows, d.host_steps, d.host_positions, chosen, feature_act, norms, [])
        return deltas, entry

    def _log_records(self, log: list[_StepLog]) -> list[tuple[int, dict[str, Any]]]:
        """Build the records of these steps (one transfer per value for all of them) and append each to its row's
        list; returns (row, record) in step order."""
        chosen = torch.cat([e.chosen for e in log]).tolist()
        feature_act = torch.cat([e.feature_act for e in log]).tolist()
        norms = torch.cat([e.resid_norm for e in log]).tolist()
        if self._on_device:  # the range check that step() skipped
            self._check_actions(np.asarray(chosen, dtype=np.int64))
        out, i = [], 0
        for e in log:
            for j, r in enumerate(e.rows.tolist()):
                a = chosen[i]
                steer = a != self.noop
                rec = {
                    "step": int(e.steps[j]),
                    "position": int(e.positions[j]),
                    "token_id": e.tokens[j],
                    "token": self._text(e.tokens[j]),
                    "feature": a % self.d_sae if steer else -1,
                    "coef": self.levels[a // self.d_sae] if steer else 0.0,
                    "feature_act": feature_act[i],
                    "resid_norm": norms[i],
                }
                self._records[r].append(rec)
                out.append((r, rec))
                i += 1
        return out

    def _text(self, token_id: int) -> str:
        text = self._token_text.get(token_id)
        if text is None:
            text = self._token_text[token_id] = self.lm.tokenizer.decode([token_id])
        return text

    def _end_batch(self) -> None:
        """on_device: the batch's last row ended; report what step() could not check, then log every record."""
        if self._first_empty is not None:
            row = int(self._first_empty)
            if row < self.num_envs:
                raise self._empty_mask_error(row)
        log, self._log = self._log, []
        if log:
            self._log_records(log)

    def _gold_ids(self, batch: list[Example], allowed: list[list[int] | None]) -> list[int]:
        """The gold option letter's token id per example (letter_prob): its place among the allowed letters."""
        if self.max_new_tokens != 1 or any(a is None for a in allowed):
            raise CRLError(
                f"task.reward=letter_prob needs one-token constrained multiple choice; task '{self.task.name}' "
                "is not (set task.mode=constrained on a multiple-choice task, or task.reward=exact)"
            )
        return [ids[list(ex.meta["options"]).index(ex.answer)] for ex, ids in zip(batch, allowed, strict=True)]

    def _empty_mask_error(self, row: int) -> CRLError:
        return CRLError(
            f"the action mask leaves no valid action for row {row}; relax masking (lower masking.threshold, "
            "raise masking.top_k) or set steering.allow_noop=true"
        )

    def _finish(self, r: int) -> dict[str, Any]:
        ex = self._batch[r]
        text = self.lm.tokenizer.decode(self._decoder.completions[r], skip_special_tokens=True)
        for s in self.task.stop_strings():
            if s in text:
                text = text[: text.index(s)]
        cols = {k: [v[0]] for k, v in self.task.columns([ex]).items()}
        verdict = float(self.task.reward([self._prompts[r]], [text], **cols)[0])
        reward = self._decoder.first_prob[r] if self.reward == "letter_prob" else verdict
        self._done[r] = True
        return {
            "prompt_id": ex.id,
            "completion": text,
            "reward": reward,
            "correct": verdict >= 1.0,
            "well_formed": bool(self.task.well_formed(text)),
            "n_steps": int(self._steps[r]),
            "stop_reason": self._decoder.stop_reason.get(r, ""),
            "answer": ex.answer,
            "records": self._records[r],
        }

    def _observe_or_close(self, info: dict[str, Any]):
        # A failed observation (e.g. an empty action mask) ends the batch: no worker stays parked in the hook.
        try:
            return self._observe(info)
        except BaseException:
            self.close()
            raise

    def _observe(self, info: dict[str, Any]):
        n, device = self.num_envs, self.lm.device
        obs = torch.zeros(n, self.lm.d_model, dtype=torch.float32, device=device)
        mask = torch.ones(n, self.n_actions, dtype=torch.bool, device=device)
        active = np.zeros(n, dtype=bool)
        d = self._decision
        self._acts = None
        if d is not None:
            active[d.host_rows] = True
            x = d.resid.float()  # the model's dtype -> float32, once (module docstring)
            obs[d.rows] = x
            self._acts = self.sae.encode(x).float()
            m = None
            if self.masker is not None:
                m = self.masker(self._acts, d.rows, d.steps)
                self._check_mask(m, d)
                if len(self.levels) > 1:  # every level of a feature is valid where the feature is
                    m = torch.cat([m[:, : self.d_sae]] * len(self.levels) + [m[:, self.d_sae :]], dim=1)
            if self.cfg.steer_steps is not None:  # past the steerable steps only the no-op is valid
                if m is None:
                    m = torch.ones(len(d.host_rows), self.n_actions, dtype=torch.bool, device=device)
                late = d.steps >= self.cfg.steer_steps
                m = torch.cat([m[:, : self.n_steer] & ~late[:, None], m[:, self.n_steer :]], dim=1)
            if m is not None:
                mask[d.rows] = m
            if self.cfg.obs_topk:
                k = min(self.cfg.obs_topk, self.d_sae)
                vals, feats = self._acts.topk(k, dim=-1)
                tf = torch.full((n, k), -1, dtype=torch.long, device=device)
                tv = torch.zeros(n, k, dtype=torch.float32, device=device)
                tf[d.rows], tv[d.rows] = feats, vals
                info["topk_features"], info["topk_acts"] = (t if self._on_device else t.cpu().numpy() for t in (tf, tv))
        info.update(
            action_mask=mask if self._on_device else mask.cpu().numpy(),
            active=active,
            step=self._steps.copy(),
            prompt_id=[e.id for e in self._batch] + [""] * (self.num_envs - len(self._batch)),
        )
        return (obs if self._on_device else obs.cpu().numpy()), info

    def _check_mask(self, m: torch.Tensor, d: Decision) -> None:
        empty = ~m.any(dim=1)
        if self._on_device:  # the first such row, reported when the batch ends (_end_batch)
            first = torch.where(empty, d.rows, self.num_envs).min()
            self._first_empty = first if self._first_empty is None else torch.minimum(self._first_empty, first)
        elif bool(empty.any()):
            raise self._empty_mask_error(int(d.host_rows[empty.cpu().numpy()][0]))

    @property
    def feature_acts(self) -> torch.Tensor | None:
        """SAE activations (n_active, d_sae) at the current decision, rows as in `active`."""
        return self._acts
