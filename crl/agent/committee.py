"""A committee of trained policies that steers only where its members agree: deep-ensemble disagreement as an
abstention rule (Lakshminarayanan et al. 2017, "Simple and scalable predictive uncertainty estimation using deep
ensembles").

Why: seeds of one recipe each gain on their training distribution, but off it the sign of a seed's effect can be the
seed's own (issue #19, the compare XOR on a held-out wording: +0.000 / +0.015 / -0.172 over three seeds). A distance to
the training residuals (policy.abstain=knn) abstains on every new wording; disagreement abstains where the seeds read
the input differently, the ensemble's own measure of what it does not know.

At every decision each member's greedy policy picks an action, under its own mask and without its own abstention rule
(`crl transfer`'s policy without the rule). An action is a (feature id, level) pair or no steering, and members are
compared by that identity, not by action index, so a member that orders its coefficient levels otherwise
(steering.coef_levels [-1, 1] against [1, -1]) still agrees on the same feature and sign. The committee takes the action
that at least `quorum` members picked, else no steering (an abstention for disagreement). Its actions are in the env's
layout (action id = level index * d_sae + feature, the no-op last).

Per decision, extras: `agreed` (the most members behind one action, no steering included), `abstained` (no action
reached the quorum) and `votes` (each member's action, in the env's ids).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from crl.agent.ppo import PolicyAgent


def quorum_size(rule: str, n_members: int) -> int:
    """How many members must pick one action: all of them, or a strict majority.

    >>> quorum_size("all", 3), quorum_size("majority", 3), quorum_size("majority", 4)
    (3, 2, 3)
    """
    if rule == "all":
        return n_members
    if rule == "majority":
        return n_members // 2 + 1
    raise ValueError(f"unknown quorum {rule!r}: all or majority")


@dataclass
class Member:
    """One member: its greedy policy (abstention off), its coefficient levels in its own action order, and, when the
    env offers more features than the member was trained with (members of masking=fixed on different lists), its own."""

    agent: PolicyAgent
    levels: list[float]
    features: list[int] | None = None


class Committee:
    """The committee's action policy over an env of `levels` and `d_sae` features with a no-op (module docstring)."""

    on_device = True  # as PolicyAgent: tensors in (the env's on_device mode) give tensors out, numpy gives numpy

    def __init__(self, members: list[Member], levels: list[float], d_sae: int, quorum: int):
        if len(members) < 2:
            raise ValueError("a committee needs two members or more")
        if not len(members) // 2 < quorum <= len(members):  # above half: at most one action can reach it
            raise ValueError(f"quorum {quorum} of {len(members)} members: more than half, at most all")
        self.members, self.levels, self.d_sae, self.quorum = members, list(levels), d_sae, quorum
        self.noop = d_sae * len(self.levels)
        self._maps = [self._layout(m) for m in members]  # on the device of the last masks seen (`_maps_on`)

    def _layout(self, m: Member) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(the env level of each member level; the env mask's columns in the member's action order, None when they
        are the env's; the member's allowed actions in its order, None when the env's mask is its own)."""
        if sorted(m.levels) != sorted(self.levels):
            raise ValueError(f"member levels {m.levels} are not the env's {self.levels}")
        to_env = torch.tensor([self.levels.index(lv) for lv in m.levels])
        d = torch.arange(self.d_sae)
        columns = None
        if to_env.tolist() != list(range(len(self.levels))):
            columns = torch.cat([*(int(j) * self.d_sae + d for j in to_env), torch.tensor([self.noop])])
        allowed = None
        if m.features is not None:
            row = torch.zeros(self.d_sae, dtype=torch.bool)
            row[m.features] = True
            allowed = torch.cat([row.repeat(len(self.levels)), torch.ones(1, dtype=torch.bool)])
        return to_env, columns, allowed

    def _maps_on(self, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]]:
        """The layouts on `device`, moved once (not once a decision: on a GPU each move is a copy)."""
        if self._maps[0][0].device != device:
            self._maps = [tuple(t if t is None else t.to(device) for t in mp) for mp in self._maps]  # type: ignore[misc]
        return self._maps

    @torch.no_grad()
    def votes(
        self, obs: np.ndarray | torch.Tensor, info: dict[str, Any], which: list[int] | None = None
    ) -> torch.Tensor:
        """(n, members): each member's greedy action (or only the members in `which`), in the env's ids, on the mask's
        device."""
        mask = torch.as_tensor(info["action_mask"])
        host = not isinstance(obs, torch.Tensor)
        votes = []
        for i, (m, (to_env, columns, allowed)) in enumerate(zip(self.members, self._maps_on(mask.device), strict=True)):
            if which is not None and i not in which:
                continue
            own = info
            if columns is not None or allowed is not None:
                sub = mask if columns is None else mask[:, columns]
                sub = sub if allowed is None else sub & allowed
                own = {**info, "action_mask": sub.numpy() if host else sub}
            a, _ = m.agent.act(obs, own)
            a = torch.as_tensor(a, device=mask.device).long()
            steer = a < self.noop  # the member's no-op is its last action too: same count of levels
            env_a = to_env[(a // self.d_sae).clamp_max(len(self.levels) - 1)] * self.d_sae + a % self.d_sae
            votes.append(torch.where(steer, env_a, self.noop))
        return torch.stack(votes, dim=1)

    @torch.no_grad()
    def act(self, obs: np.ndarray | torch.Tensor, info: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        host = not isinstance(obs, torch.Tensor)
        v = self.votes(obs, info)  # (n, members)
        backing = (v[:, :, None] == v[:, None, :]).sum(-1)  # (n, members): how many members picked member i's action
        agreed, best = backing.max(-1)
        abstained = agreed < self.quorum
        action = torch.where(abstained, self.noop, v.gather(1, best[:, None]).squeeze(1))
        extras = {"agreed": agreed, "abstained": abstained, "votes": v}
        if host:
            return action.numpy(), {k: t.numpy() for k, t in extras.items()}
        return action, extras

    def describe(self, action: int) -> str:
        """An env action id as `feature@level` (e.g. `3@+1`), or `none` for no steering."""
        if action >= self.noop:
            return "none"
        return f"{action % self.d_sae}@{self.levels[action // self.d_sae]:+g}"


class MemberView:
    """One member acting alone through the committee's env layout (its levels and features mapped as the committee
    maps them): what `agree=answer` rolls out per member. Extras: `votes` (its action, for the same columns)."""

    on_device = True

    def __init__(self, committee: Committee, index: int):
        self.committee, self.index = committee, index

    @torch.no_grad()
    def act(self, obs: np.ndarray | torch.Tensor, info: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        v = self.committee.votes(obs, info, [self.index])  # (n, 1)
        if not isinstance(obs, torch.Tensor):
            return v[:, 0].numpy(), {"votes": v.numpy()}
        return v[:, 0], {"votes": v}


def answer_vote(answers: list[str | None], quorum: int) -> tuple[int | None, int]:
    """The member whose episode the committee keeps, and how many members gave its answer: the first member with the
    most common parsed answer, if at least `quorum` members gave it; None (keep the unsteered episode) otherwise. An
    answer the task could not parse (None) backs nothing.

    >>> answer_vote(["B", "B", "B"], 3), answer_vote(["A", "B", "B"], 3), answer_vote(["A", "B", "B"], 2)
    ((0, 3), (None, 2), (1, 2))
    >>> answer_vote([None, None, "C"], 2)
    (None, 1)
    """
    counts = {a: answers.count(a) for a in answers if a is not None}
    if not counts:
        return None, 0
    best = max(counts.values())
    top = next(a for a in answers if a is not None and counts[a] == best)
    return (answers.index(top) if best >= quorum else None), best
