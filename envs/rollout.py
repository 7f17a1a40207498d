"""Run whole episodes through `SteeringVecEnv` with any action policy, and simple reference policies.

    episodes = run_episodes(env, examples, NoSteer(env))

A policy is any object with ``act(obs, info) -> (actions, extras)``; `extras` may hold per-row arrays
``logprob``, ``value`` and ``top_alternatives`` that are copied into the step records.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from crl.envs.steering_env import SteeringVecEnv
from crl.envs.tasks.base import Example


class ActionPolicy(Protocol):
    def act(self, obs: np.ndarray, info: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]: ...


@dataclass
class Episode:
    example: Example
    completion: str
    reward: float
    correct: bool
    well_formed: bool
    stop_reason: str
    steps: list[dict[str, Any]]
    obs: torch.Tensor | None = None  # (n_steps, d_model), kept for PPO
    masks: torch.Tensor | None = None  # (n_steps, n_actions) bool
    actions: torch.Tensor | None = None  # (n_steps,)
    extras: dict[str, list[float]] = field(default_factory=dict)

    @property
    def features(self) -> list[int]:
        return [s["feature"] for s in self.steps]


def run_episodes(
    env: SteeringVecEnv,
    examples: list[Example],
    policy: ActionPolicy,
    keep_tensors: bool = False,
    on_done: Callable[[int], None] | None = None,
) -> list[Episode]:
    """Every example once, in batches of `env.num_envs`; returns episodes in the order given. `on_done(k)` is
    told after each step how many more episodes just finished (progress lines; it changes nothing else)."""
    out: list[Episode] = []
    for start in range(0, len(examples), env.num_envs):
        batch = examples[start : start + env.num_envs]
        obs, info = env.reset(options={"examples": batch})
        tensors: list[dict[str, list]] = [{"obs": [], "masks": [], "actions": []} for _ in batch]
        finals: list[dict[str, Any] | None] = [None] * len(batch)
        while not all(f is not None for f in finals):
            actions, extras = policy.act(obs, info)
            active = info["active"].copy()
            mask = info["action_mask"]
            if keep_tensors:
                for r in np.flatnonzero(active[: len(batch)]):
                    tensors[r]["obs"].append(torch.from_numpy(obs[r].copy()))
                    tensors[r]["masks"].append(torch.from_numpy(mask[r].copy()))
                    tensors[r]["actions"].append(int(actions[r]))
            obs, _, _, _, info = env.step(actions)
            for r, rec in enumerate(info["records"][: len(batch)]):
                if rec is not None:
                    for key, vals in extras.items():
                        v = vals[r]
                        rec[key] = v.tolist() if hasattr(v, "tolist") else v
            finished = 0
            for r, fin in enumerate(info["final"][: len(batch)]):
                if fin is not None:
                    finished += finals[r] is None
                    finals[r] = fin
            if on_done is not None and finished:
                on_done(finished)
        for r, (ex, fin) in enumerate(zip(batch, finals, strict=True)):
            ep = Episode(
                ex,
                fin["completion"],
                fin["reward"],
                fin["correct"],
                fin["well_formed"],
                fin["stop_reason"],
                fin["records"],
            )
            if keep_tensors:
                ep.obs = torch.stack(tensors[r]["obs"])
                ep.masks = torch.stack(tensors[r]["masks"])
                ep.actions = torch.tensor(tensors[r]["actions"])
            out.append(ep)
    return out


def accuracy(episodes: list[Episode]) -> dict[str, float]:
    """Accuracy, well-formed rate and mean reward of a list of episodes (0.0 each for none)."""
    n = max(1, len(episodes))
    return {
        "accuracy": sum(e.correct for e in episodes) / n,
        "well_formed": sum(e.well_formed for e in episodes) / n,
        "mean_reward": sum(e.reward for e in episodes) / n,
    }


class NoSteer:
    """Never steers: the reference "no steering" policy (needs `steering.allow_noop`).

    `NoSteer(env)` takes the no-op action from the env; `NoSteer(noop=d_sae)` needs no env (the no-op action
    is always index d_sae), for scripts that build their envs later.
    """

    def __init__(self, env: SteeringVecEnv | None = None, *, noop: int | None = None):
        if env is not None:
            noop = env.noop
            if noop is None:
                raise ValueError("NoSteer needs steering.allow_noop=true")
        if noop is None:
            raise ValueError("NoSteer needs an env or the no-op action index (noop=d_sae)")
        self.noop = noop

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        return np.full(len(obs), self.noop), {}


class FixedFeature:
    """Always the same feature (the static-steering baseline)."""

    def __init__(self, feature: int):
        self.feature = feature

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        return np.full(len(obs), self.feature), {}


class RandomFeature:
    """A uniformly random valid feature each token (no-op excluded), seeded."""

    def __init__(self, n_features: int, seed: int = 0):
        self.n_features = n_features
        self.rng = np.random.default_rng(seed)

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        mask = info["action_mask"][:, : self.n_features]
        out = np.zeros(len(obs), dtype=np.int64)
        for r in range(len(obs)):
            valid = np.flatnonzero(mask[r])
            out[r] = self.rng.choice(valid) if len(valid) else 0
        return out, {}


class Scripted:
    """Follows a per-prompt script of actions by step, then defers to `then` (for branch points)."""

    def __init__(self, scripts: dict[str, list[int]], then: ActionPolicy):
        self.scripts, self.then = scripts, then

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        actions, extras = self.then.act(obs, info)
        actions = np.array(actions, copy=True)
        for r, pid in enumerate(info["prompt_id"]):
            script = self.scripts.get(pid)
            step = int(info["step"][r])
            if script is not None and step < len(script) and script[step] is not None:
                actions[r] = script[step]
        return actions, extras
