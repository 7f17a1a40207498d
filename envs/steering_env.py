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
verifier. Autoreset is DISABLED: finished rows stay finished (zero observation, zero reward, ignored
actions) until `reset()`, which starts a fresh lockstep batch.

`info` per step: `action_mask` (N, n_actions) from the masking logic, `active`, `step`, `prompt_id`, and
`records[i]` for each row that acted: token id and text, feature, coefficient, the feature's SAE activation
before steering, the residual norm, position. Rows that end carry `final[i]`: completion, reward, correct,
well-formed, stop reason.
"""

from __future__ import annotations

from collections.abc import Callable
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

# (acts (n, d_sae), rows (n,), steps (n,)) -> bool mask (n, n_actions)
ActionMasker = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


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
    ):
        check_compatible(sae, lm.d_model, lm.n_layers, lm.name)
        if not examples:
            raise CRLError(f"task '{task.name}' gave no examples; check the split and task.n_* sizes")
        validate(cfg, "steering.")
        self.lm, self.sae, self.task, self.examples, self.cfg = lm, sae, task, examples, cfg
        self.num_envs = num_envs
        self.masker = masker
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
        self._gen = torch.Generator(device="cpu").manual_seed(seed)
        self._decoder = LockstepDecoder(lm, sae.hook_name, self._gen)
        self._decision: Decision | None = None
        self._batch: list[Example] = []

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
        tok = self.lm.tokenizer
        spec = DecodeSpec(
            max_new_tokens=self.max_new_tokens,
            eos_ids=set() if self.cfg.fixed_length else self._eos,
            stop_strings=[] if self.cfg.fixed_length else self.task.stop_strings(),
            allowed_token_ids=[self.task.allowed_token_ids(tok, e) for e in batch],
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
        rows = d.rows.cpu().numpy()
        acts = np.asarray(actions, dtype=np.int64).reshape(-1)
        if acts.shape[0] != self.num_envs:
            raise CRLError(f"expected {self.num_envs} actions, got {acts.shape[0]}")
        chosen = acts[rows]
        bad = (chosen < 0) | (chosen >= self.n_actions)
        if bad.any():
            raise CRLError(
                f"feature index {int(chosen[bad][0])} is out of range: valid actions are 0..{self.n_actions - 1}"
                + (f" ({self.noop} = no steering)" if self.noop is not None else "")
            )
        deltas, coefs = self._deltas(d, chosen)
        feat_acts = self._feature_acts(chosen)
        norms = d.resid.norm(dim=-1).cpu().numpy()
        self._decision = self._decoder.send(deltas)
        rewards = np.zeros(self.num_envs, dtype=np.float64)
        finals: list[dict[str, Any] | None] = [None] * self.num_envs
        records: list[dict[str, Any] | None] = [None] * self.num_envs
        tok = self.lm.tokenizer
        for i, r in enumerate(rows.tolist()):
            token_id = self._decoder.last_tokens[r]
            rec = {
                "step": int(d.steps[i]),
                "position": int(d.positions[i]),
                "token_id": token_id,
                "token": tok.decode([token_id]),
                "feature": -1 if chosen[i] == self.noop else int(chosen[i]) % self.d_sae,
                "coef": coefs[i],
                "feature_act": feat_acts[i],
                "resid_norm": float(norms[i]),
            }
            records[r] = rec
            self._records[r].append(rec)
            self._steps[r] += 1
        for r in self._decoder.finished:
            finals[r] = self._finish(r)
            rewards[r] = finals[r]["reward"]
        terminated = self._done.copy()
        obs, info = self._observe_or_close({"records": records, "final": finals})
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

    def _deltas(self, d: Decision, chosen: np.ndarray) -> tuple[torch.Tensor, list[float]]:
        steer = chosen != self.noop if self.noop is not None else np.ones(len(chosen), dtype=bool)
        feats = np.where(steer, chosen % self.d_sae, 0)
        coefs = [
            self.levels[a // self.d_sae] if s else 0.0 for a, s in zip(chosen.tolist(), steer.tolist(), strict=True)
        ]
        scale = torch.tensor(coefs, device=d.resid.device, dtype=torch.float32)
        if self.cfg.coef_mode == "relative":
            scale = scale * d.resid.float().norm(dim=-1)
        deltas = self._dirs[torch.as_tensor(feats, device=d.resid.device)] * scale[:, None]
        return deltas, coefs

    def _feature_acts(self, chosen: np.ndarray) -> list[float]:
        out = []
        for i, a in enumerate(chosen.tolist()):
            out.append(0.0 if a == self.noop else float(self._acts[i, a % self.d_sae]))
        return out

    def _finish(self, r: int) -> dict[str, Any]:
        ex = self._batch[r]
        text = self.lm.tokenizer.decode(self._decoder.completions[r], skip_special_tokens=True)
        for s in self.task.stop_strings():
            if s in text:
                text = text[: text.index(s)]
        cols = {k: [v[0]] for k, v in self.task.columns([ex]).items()}
        reward = float(self.task.reward([self._prompts[r]], [text], **cols)[0])
        self._done[r] = True
        return {
            "prompt_id": ex.id,
            "completion": text,
            "reward": reward,
            "correct": reward >= 1.0,
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
        obs = np.zeros((self.num_envs, self.lm.d_model), dtype=np.float32)
        mask = np.ones((self.num_envs, self.n_actions), dtype=bool)
        active = np.zeros(self.num_envs, dtype=bool)
        d = self._decision
        self._acts = None
        if d is not None:
            rows = d.rows.cpu().numpy()
            active[rows] = True
            obs[rows] = d.resid.float().cpu().numpy()
            self._acts = self.sae.encode(d.resid.float()).float()
            if self.masker is not None:
                m = self.masker(self._acts, d.rows, d.steps).cpu().numpy()
                empty = ~m.any(axis=1)
                if empty.any():
                    raise CRLError(
                        f"the action mask leaves no valid action for row {int(rows[empty][0])}; relax "
                        "masking (lower masking.threshold, raise masking.top_k) or set steering.allow_noop=true"
                    )
                if len(self.levels) > 1:  # every level of a feature is valid where the feature is
                    m = np.concatenate([m[:, : self.d_sae]] * len(self.levels) + [m[:, self.d_sae :]], axis=1)
                mask[rows] = m
            if self.cfg.steer_steps is not None:  # past the steerable steps only the no-op is valid
                late = rows[d.steps.cpu().numpy() >= self.cfg.steer_steps]
                mask[late, : self.n_steer] = False
            if self.cfg.obs_topk:
                k = min(self.cfg.obs_topk, self.d_sae)
                vals, feats = self._acts.topk(k, dim=-1)
                tf = np.full((self.num_envs, k), -1, dtype=np.int64)
                tv = np.zeros((self.num_envs, k), dtype=np.float32)
                tf[rows], tv[rows] = feats.cpu().numpy(), vals.cpu().numpy()
                info["topk_features"], info["topk_acts"] = tf, tv
        info.update(
            action_mask=mask,
            active=active,
            step=self._steps.copy(),
            prompt_id=[e.id for e in self._batch] + [""] * (self.num_envs - len(self._batch)),
        )
        return obs, info

    @property
    def feature_acts(self) -> torch.Tensor | None:
        """SAE activations (n_active, d_sae) at the current decision, rows as in `active`."""
        return self._acts
