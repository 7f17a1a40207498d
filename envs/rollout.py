"""Run whole episodes through `SteeringVecEnv` with any action policy, and simple reference policies.

    episodes = run_episodes(env, examples, NoSteer(env))

A policy is any object with ``act(obs, info) -> (actions, extras)``; `extras` may hold per-row arrays
``logprob``, ``value`` and ``top_alternatives`` that are copied into the step records.

A policy whose `on_device` attribute is true gets the env's device-resident observations (`SteeringVecEnv`'s on_device
mode): `obs` (N, d_model) and `info["action_mask"]` are tensors on the model's device, and it returns an actions tensor
(N,) and extras as tensors (N, ...). Nothing is moved to the host per token: the extras (and, with `keep_tensors`, the
observations, masks and actions) are gathered when the batch ends, one transfer per batch. A 2-D integer extra is a
list of ids per row padded with -1 (dropped in the record). Any other policy gets numpy arrays (the default).
On a CPU model the host mode is used for every policy (`device_mode`): there a sync costs nothing and the tensor
bookkeeping did (the default `crl train`: 20.5 vs 17.0 s an update, 2 idle cores). Both modes log the same rows.
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


DEVICE_MODE_ON_CPU = False  # tests of the device mode set it, to run that mode on a CPU


def device_mode(device: torch.device) -> bool:
    """Whether rollouts keep their per-token decisions on `device` (an accelerator) rather than on the host (a CPU)."""
    return device.type != "cpu" or DEVICE_MODE_ON_CPU


def run_episodes(
    env: SteeringVecEnv,
    examples: list[Example],
    policy: ActionPolicy,
    keep_tensors: bool = False,
    on_done: Callable[[int], None] | None = None,
) -> list[Episode]:
    """Every example once, in batches of `env.num_envs`; returns episodes in the order given. `on_done(k)` is
    told after each step how many more episodes just finished (progress lines; it changes nothing else)."""
    on_device = bool(getattr(policy, "on_device", False)) and device_mode(env.lm.device)
    out: list[Episode] = []
    for start in range(0, len(examples), env.num_envs):
        batch = examples[start : start + env.num_envs]
        obs, info = env.reset(options={"examples": batch, "on_device": on_device})
        tensors: list[dict[str, list]] = [{"obs": [], "masks": [], "actions": []} for _ in batch]
        steps: list[_Step] = []  # on_device: what each step left on the device
        finals: list[dict[str, Any] | None] = [None] * len(batch)
        while not all(f is not None for f in finals):
            actions, extras = policy.act(obs, info)
            active = info["active"].copy()
            mask = info["action_mask"]
            if on_device:
                steps.append(
                    _Step(active[: len(batch)], extras, obs, mask, actions)
                    if keep_tensors
                    else _Step(active[: len(batch)], extras)
                )
            elif keep_tensors:
                for r in np.flatnonzero(active[: len(batch)]):
                    tensors[r]["obs"].append(torch.from_numpy(obs[r].copy()))
                    tensors[r]["masks"].append(torch.from_numpy(mask[r].copy()))
                    tensors[r]["actions"].append(int(actions[r]))
            obs, _, _, _, info = env.step(actions)
            if not on_device:
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
        kept = _gather(steps, finals, keep_tensors) if on_device else None
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
            if kept is not None and keep_tensors:
                ep.obs, ep.masks, ep.actions = kept[r]
            elif keep_tensors:
                ep.obs = torch.stack(tensors[r]["obs"])
                ep.masks = torch.stack(tensors[r]["masks"])
                ep.actions = torch.tensor(tensors[r]["actions"])
            out.append(ep)
    return out


@dataclass
class _Step:
    """One on_device step: which batch rows acted (host), the policy's extras and, with keep_tensors, its inputs and
    actions (all on the device)."""

    active: np.ndarray
    extras: dict[str, Any]
    obs: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    actions: torch.Tensor | None = None


def _gather(
    steps: list[_Step], finals: list[dict[str, Any]], keep_tensors: bool
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None:
    """The end of an on_device batch: copy the extras into the records (one transfer per extra) and, with
    keep_tensors, each row's (obs, masks, actions) over its steps, gathered on the device in one indexing each."""
    if not steps:
        return None
    active = np.stack([s.active for s in steps])  # (n_steps, batch)
    values: dict[str, Any] = {}
    for key in steps[0].extras:
        per_step = [s.extras[key] for s in steps]
        if all(isinstance(v, torch.Tensor) for v in per_step):
            values[key] = torch.stack(per_step).cpu().numpy()
        else:
            values[key] = per_step
    for r, fin in enumerate(finals):
        acted = np.flatnonzero(active[:, r])
        records = fin["records"]
        if len(records) != len(acted):
            raise RuntimeError(f"row {r} has {len(records)} records for {len(acted)} steps")
        for rec, t in zip(records, acted.tolist(), strict=True):
            for key, vals in values.items():
                v = vals[t][r]
                if isinstance(v, np.ndarray) and v.ndim == 1 and v.dtype.kind == "i":
                    v = v[v >= 0]  # a list of ids, -1 padded
                rec[key] = v.tolist() if hasattr(v, "tolist") else v
    if not keep_tensors:
        return None
    order = [(t, r) for r in range(active.shape[1]) for t in np.flatnonzero(active[:, r]).tolist()]
    counts = active.sum(0).tolist()
    step_idx = np.array([t for t, _ in order], dtype=np.int64)
    row_idx = np.array([r for _, r in order], dtype=np.int64)

    def take(parts: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        stacked = torch.stack(parts)  # (n_steps, n_envs, ...)
        t_idx = torch.as_tensor(step_idx, device=stacked.device)
        r_idx = torch.as_tensor(row_idx, device=stacked.device)
        return torch.split(stacked[t_idx, r_idx], counts)

    obs = take([s.obs for s in steps])
    masks = take([s.mask for s in steps])
    actions = take([torch.as_tensor(s.actions).reshape(-1) for s in steps])
    return list(zip(obs, masks, actions, strict=True))


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

    on_device = True  # numpy in, numpy out; a tensor in (run_episodes' on_device mode), a tensor out

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        if isinstance(obs, torch.Tensor):
            return torch.full((len(obs),), self.noop, dtype=torch.long, device=obs.device), {}
        return np.full(len(obs), self.noop), {}


class FixedFeature:
    """Always the same feature (the static-steering baseline)."""

    def __init__(self, feature: int):
        self.feature = feature

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        return np.full(len(obs), self.feature), {}


class RandomFeature:
    """A uniformly random action of the policy's action set (any valid feature, either sign), each token, seeded:
    the random baseline, a null for "the policy's choices matter".

    `n_steer` is the env's number of steering actions, n_levels * d_sae (`SteeringVecEnv.n_steer`; action id =
    level index * d_sae + feature, the no-op after them), so every level of every feature the action mask allows
    is equally likely (with the default levels [1, -1] a feature amplified or suppressed) and the no-op never is.
    A row whose mask allows no steering action (past `steering.steer_steps`) takes the no-op, its only valid action.
    """

    def __init__(self, n_steer: int, seed: int = 0):
        self.n_steer = n_steer
        self.rng = np.random.default_rng(seed)

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        mask = np.asarray(info["action_mask"], dtype=bool)
        valid = mask[:, : self.n_steer]
        counts = valid.sum(axis=1)
        k = self.rng.integers(0, np.maximum(counts, 1))  # the k-th valid action of each row, one draw a row
        out = (valid.cumsum(axis=1) > k[:, None]).argmax(axis=1).astype(np.int64)
        fallback = self.n_steer if mask.shape[1] > self.n_steer else 0  # the no-op, where the env has one
        return np.where(counts > 0, out, fallback), {}


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
