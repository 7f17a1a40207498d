"""`SteeringEnv`: one episode at a time, as a plain `gymnasium.Env` over `SteeringVecEnv(num_envs=1)`.

For tools that expect a single-agent env (env checkers, SB3-style loops). Semantics are the vector env's
(see `crl.envs.steering_env`): the observation is the residual (d_model,) at the SAE's hook at the current
position before steering; the action is a feature index in [0, d_sae), or d_sae = no steering when
`allow_noop`; the reward is terminal; the episode is never truncated.

`reset(seed=s)` picks the example with the env's seeded `np_random`, so the same seed gives the same prompt
(and the same sampled tokens when `greedy=False`); ``options={"example": ex}`` or ``{"index": i}`` picks it
by hand. `info` holds `action_mask` (n_actions,), `step`, `prompt_id`, after a step `record` (the token and
intervention of that step), and on the last step `final` (completion, reward, correct, ...).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding

from crl.backends.model import FrozenLM
from crl.backends.sae import LoadedSAE
from crl.config import SteeringConfig
from crl.envs.steering_env import ActionMasker, SteeringVecEnv
from crl.envs.tasks.base import Example, Task
from crl.errors import CRLError


class SteeringEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(
        self,
        lm: FrozenLM,
        sae: LoadedSAE,
        task: Task,
        examples: list[Example],
        cfg: SteeringConfig,
        seed: int = 0,
        masker: ActionMasker | None = None,
    ):
        self.vec = SteeringVecEnv(lm, sae, task, examples, cfg, num_envs=1, seed=seed, masker=masker)
        self.examples = examples
        self.observation_space = self.vec.single_observation_space
        self.action_space = self.vec.single_action_space
        self.render_mode = None
        self._running = False
        self.np_random, _ = seeding.np_random(seed)  # unseeded resets still pick reproducibly

    @property
    def n_actions(self) -> int:
        return self.vec.n_actions

    @property
    def noop(self) -> int | None:
        return self.vec.noop

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        example = options.get("example")
        if example is None:
            index = options.get("index")
            if index is None:
                index = int(self.np_random.integers(len(self.examples)))
            if not 0 <= int(index) < len(self.examples):
                raise CRLError(f"reset index {index} is out of range: the env has {len(self.examples)} examples")
            example = self.examples[int(index)]
        obs, info = self.vec.reset(seed=seed, options={"examples": [example]})
        self._running = True
        return obs[0], self._single(info)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if not self._running:
            raise CRLError("step() before reset() or after the episode ended; call reset()")
        a = np.asarray(action)
        if a.size != 1 or not np.issubdtype(a.dtype, np.integer):
            raise CRLError(f"action must be one integer feature index, got {action!r}")
        obs, rewards, terminated, truncated, info = self.vec.step(a.reshape(1).astype(np.int64))
        done = bool(terminated[0])
        self._running = not done
        return obs[0], float(rewards[0]), done, bool(truncated[0]), self._single(info)

    def close(self) -> None:
        self._running = False
        self.vec.close()

    @staticmethod
    def _single(info: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "action_mask": info["action_mask"][0],
            "step": int(info["step"][0]),
            "prompt_id": info["prompt_id"][0],
        }
        if info.get("records") is not None:
            out["record"] = info["records"][0]
        if info.get("final") is not None and info["final"][0] is not None:
            out["final"] = info["final"][0]
        for key in ("topk_features", "topk_acts"):
            if key in info:
                out[key] = info[key][0]
        return out
