"""`crl transfer 'committee=[a,b,c]'`: a seed committee (crl/agent/committee.py) on held-out task variants.

`plan_committee` reads every member's config.yaml and checks, before any model loads, that the members can steer
through one env: one task (every task.* key), model and SAE (but their device), steering (layer, coefficient, its
mode, the levels as a set, the no-op, ...) and evaluation masking (masking=adaptive evaluates as active; members of
masking=fixed may list different features: the env then offers their union and each member picks among its own). Else
one CRLError line names the first key that differs, the two runs, and the fix. `committee_outcomes` then loads the model
and SAE once and every member's greedy policy without its abstention rule, and runs `crl transfer`'s loop
(crl.run.transfer.variant_outcomes) with one arm, `committee`. Per prompt it adds, at the first decision, how many
members agreed (`committee_agreed`) and what each picked (`committee_votes`, `feature@level` or `none`), and over the
episode the decisions withheld for disagreement (`committee_disagreed`) out of `committee_decisions`.

`agree`: what the members must agree on. `action` (the default): the same (feature, level) at each decision, as
above. `answer`: the same answer. Each member's greedy policy runs its own episode on the prompt (through the
committee's env layout, `MemberView`); the task parses each completion (`Task.extract`), and where at least `quorum`
members reach one answer the committee keeps the first such member's episode, else the unsteered one (every decision of
that episode counts as withheld). Seeds that steer through different features to the same letter then agree (the
compare XOR's seeds pick -457, -128 and -457 for one move); the price is one episode per member and prompt, not one
per prompt. `committee_agreed` is then the most members behind one answer, `committee_answers` each member's answer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crl.agent.committee import Committee, Member, MemberView, answer_vote, quorum_size
from crl.agent.ppo import PolicyAgent
from crl.config import MaskingConfig, TrainConfig
from crl.config.core import show
from crl.envs.rollout import Episode
from crl.envs.tasks.base import Example
from crl.errors import CRLError
from crl.logs.schema import RunInfo
from crl.run.components import build, policy_file
from crl.run.transfer import TransferPlan, marked, plan_transfer, variant_outcomes, variant_rollouts

ARM = "committee"
UNSHARED = ("model.device", "sae.device")  # where a member ran, not what it is


@dataclass
class CommitteePlan:
    """What `committee_outcomes` runs, read from the members' configs alone."""

    plan: TransferPlan  # the first member's plan, its config with the env's masking: the env, prompts and variants
    members: list[tuple[Path, TrainConfig]]  # each member's run directory and config (greedy rule applied)
    features: list[list[int] | None]  # per member: its own masking=fixed features where the env offers a union
    quorum: int  # members that must pick one action (agree=action) or reach one answer (agree=answer)
    agree: str  # action | answer (module docstring)
    settings: dict[str, Any]  # what transfer_committee.json records


def _flat(prefix: str, obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        out.update(_flat(f"{prefix}{f.name}.", v) if dataclasses.is_dataclass(v) else {f"{prefix}{f.name}": v})
    return out


def _eval_masking(m: MaskingConfig) -> str:
    """The action set a masking gives at evaluation (MaskingConfig.for_eval, as Components.masker uses it)."""
    m = m.for_eval()
    return f"active (threshold {m.threshold:g}, top_k {m.top_k})" if m.mode == "active" else m.mode


def _shared(cfg: TrainConfig) -> dict[str, Any]:
    """What members must have in common, by config key."""
    keys = {**_flat("task.", cfg.task), **_flat("model.", cfg.model), **_flat("sae.", cfg.sae)}
    keys.update(_flat("steering.", cfg.steering))
    keys["steering.coef_levels"] = sorted(cfg.steering.coef_levels)  # the order is the index layout only
    keys["masking"] = _eval_masking(cfg.masking)
    return {k: v for k, v in keys.items() if k not in UNSHARED}


def check_members(named: list[tuple[str, TrainConfig]]) -> MaskingConfig:
    """One CRLError line on the first key where a member differs from the first (module docstring); returns the
    env's masking: the members' own, or masking=fixed on the union of their features."""
    a, first = named[0][0], _shared(named[0][1])
    for b, cfg in named:
        if not cfg.steering.allow_noop:
            raise CRLError(
                f"committee: {b} has steering.allow_noop=false, but a committee that disagrees does not steer: "
                "list runs trained with steering.allow_noop=true"
            )
        other = _shared(cfg)
        for k, v in other.items():
            if v != first.get(k):
                raise CRLError(
                    f"committee: {b} has {k}={show(v)}, {a} has {k}={show(first.get(k))}; the members steer "
                    f"through one model, SAE and env, so they must share it: list runs trained with one {k}"
                )
    maskings = [cfg.masking for _, cfg in named]
    if maskings[0].mode != "fixed" or all(m.features == maskings[0].features for m in maskings):
        return maskings[0]
    union = sorted({f for m in maskings for f in m.features or []})
    return dataclasses.replace(maskings[0], features=union)


def plan_committee(
    run_dirs: list[Path],
    quorum: str = "all",
    variants: list[str] | None = None,
    n: int = 400,
    seed: int | None = None,
    greedy_rule: str | None = None,
    agree: str = "action",
) -> CommitteePlan:
    """Every check of a committee transfer, no model loaded: each member a run directory of a task with variants and
    a trained policy, the members compatible (`check_members`), `quorum` all or majority."""
    if len(run_dirs) < 2:
        raise CRLError("committee: a committee needs two runs or more; for one run use run_dir=")
    if agree not in ("action", "answer"):
        raise CRLError(f"committee: agree={agree} is not a rule; use agree=action or agree=answer")
    plans = [plan_transfer(d, variants, n, seed, "off", greedy_rule) for d in run_dirs]
    names = [d.name for d in run_dirs]
    masking = check_members([(name, p.cfg) for name, p in zip(names, plans, strict=True)])
    for d in run_dirs:
        if policy_file(d) is None:
            raise CRLError(f"committee: {d} has no trained policy (policy.pt or a checkpoint); train it first")
    union = masking != plans[0].cfg.masking
    features = [list(p.cfg.masking.features or []) if union else None for p in plans]
    first = plans[0]
    plan = dataclasses.replace(first, cfg=dataclasses.replace(first.cfg, masking=masking))
    k = quorum_size(quorum, len(run_dirs))
    keep = ("task", "trained", "n", "seed")
    settings = {
        **{key: first.settings[key] for key in keep},
        "run": committee_name(quorum, agree),
        "quorum": quorum,
        "agree": agree,
        "quorum_size": k,
        "members": len(run_dirs),
        "masking": _eval_masking(masking) + (f" {masking.features}" if masking.mode == "fixed" else ""),
        "runs": [
            {"run": name, "run_dir": str(d), "seed": p.cfg.seed, "greedy_rule": p.cfg.policy.greedy_rule}
            for name, d, p in zip(names, run_dirs, plans, strict=True)
        ],
    }
    members = [(d, p.cfg) for d, p in zip(run_dirs, plans, strict=True)]
    return CommitteePlan(plan, members, features, k, agree, settings)


def committee_name(quorum: str, agree: str) -> str:
    """The committee's name (its default folder): committee-<quorum>, with -answer for agree=answer.

    >>> committee_name("all", "action"), committee_name("majority", "answer")
    ('committee-all', 'committee-majority-answer')
    """
    return f"{ARM}-{quorum}" + ("-answer" if agree == "answer" else "")


def answer_committee(
    task: Any, none: list[Episode], members: list[list[Episode]], quorum: int, noop: int
) -> list[Episode]:
    """agree=answer: per prompt, the episode of the first member whose parsed answer at least `quorum` members share,
    else the unsteered one (`answer_vote`). Every step is marked `abstained` (disagreement) or not; the first step
    carries `agreed`, `votes` (each member's first action; `noop` for a member without a decision) and `answers`."""
    out = []
    for j, plain in enumerate(none):
        eps = [m[j] for m in members]
        answers = [task.extract(ep.completion) for ep in eps]
        pick, agreed = answer_vote(answers, quorum)
        chosen = marked(plain if pick is None else eps[pick], pick is None)
        if chosen.steps:
            votes = [int(ep.steps[0]["votes"][0]) if ep.steps else noop for ep in eps]
            chosen.steps[0].update(agreed=agreed, votes=votes, answers=answers)  # marked's steps are new dicts
        out.append(chosen)
    return out


def committee_outcomes(cp: CommitteePlan) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(per-prompt outcomes, one dict per variant, the settings), as `crl.run.transfer.transfer_outcomes` (module
    docstring)."""
    comps = build(cp.plan.cfg, splits=())
    members = []
    for (d, cfg), features in zip(cp.members, cp.features, strict=True):
        comps.check_identity(RunInfo.read(d), d, keys=("sae_identity",))
        own = dataclasses.replace(comps, policy=cfg.policy, steering=cfg.steering)  # its net's shape and rule
        net = own.load_policy(d, greedy=True).net
        members.append(Member(PolicyAgent(net, greedy=True, abstain=False), list(cfg.steering.coef_levels), features))
    committee = Committee(members, list(comps.steering.coef_levels), comps.sae.d_sae, cp.quorum)
    seed = cp.settings["seed"]

    def arms(examples: list[Example], none: list[Episode], label: str) -> dict[str, list[Episode]]:
        if cp.agree == "action":
            return {ARM: variant_rollouts(comps, examples, committee, seed, f"{label} {ARM}")}
        k = len(members)
        own = [
            variant_rollouts(comps, examples, MemberView(committee, i), seed, f"{label} member {i + 1}/{k}")
            for i in range(k)
        ]
        return {ARM: answer_committee(comps.task, none, own, cp.quorum, committee.noop)}

    def agreement(runs: dict[str, list[Episode]]) -> list[dict[str, Any]]:
        rows = []
        for ep in runs[ARM]:
            first = ep.steps[0] if ep.steps else {}
            rows.append(
                {
                    f"{ARM}_agreed": first.get("agreed"),
                    f"{ARM}_votes": "|".join(committee.describe(int(v)) for v in first.get("votes", [])),
                    f"{ARM}_disagreed": sum(bool(s.get("abstained")) for s in ep.steps),
                    f"{ARM}_decisions": len(ep.steps),
                }
            )
            if cp.agree == "answer":
                rows[-1][f"{ARM}_answers"] = "|".join(str(a) for a in first.get("answers", []))
        return rows

    outcomes, info = variant_outcomes(comps, cp.plan, arms, (ARM,), agreement)
    return outcomes, info, cp.settings
