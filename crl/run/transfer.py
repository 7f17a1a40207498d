"""Re-run a trained policy on task variants held out of its training (`crl transfer`, crl/commands/transfer.py).

`transfer_outcomes` rebuilds model, SAE and policy from the run directory (as `crl eval` does: policy.pt, the
val-selected policy, else the last checkpoint's), then, for each variant (crl/envs/tasks/family.py), draws `n` fresh
test-split prompts and runs them greedily with no steering and with the policy; with an abstention rule
(policy.abstain) the policy runs twice, with the rule and without it. Returns per-prompt outcomes; the table and
its statistics are crl/analysis/offline/transfer.py's. Nothing is written into the run's logs.

The run with the rule is only rolled out for the prompts whose outcome the other two runs do not already fix:
greedy decoding is deterministic and the rule only ever replaces an action by "no steering", so where every decision
of the unsteered rollout is out of distribution the abstaining policy never steers and its episode is the unsteered
one, and where no decision of the rule-free rollout is out of distribution it is that one (up to the float noise of
another batch composition, as between any two evaluations). For one-token answers (compare) that is every prompt.

Per prompt it also records `decisions` (the most decisions among its episodes) and, when the policy can abstain,
`ood_ratio` = d(x) / tau at the first decision of the unsteered episode: the offline threshold ablation
(crl/analysis/offline/abstention.py) reads them.

`variant_outcomes` is that loop for any policy: the seed committee (crl/run/transfer_committee.py) runs through it too.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crl.agent.ppo import PolicyAgent
from crl.envs.rollout import Episode, NoSteer
from crl.envs.tasks.base import Example
from crl.envs.tasks.family import held_out_axes
from crl.errors import CRLError
from crl.logs import schema
from crl.logs.schema import RunInfo
from crl.run.components import Components, build, rollouts, saved_config, with_greedy_rule


def _steered(ep: Episode) -> bool:
    return any(f >= 0 for f in ep.features)


def _abstained(ep: Episode) -> bool:
    return any(bool(s.get("abstained")) for s in ep.steps)


def fit_abstention(comps: Components, net: Any) -> None:
    """Fit the policy's abstention rule as `crl train` does (crl/agent/policy.py): the training sample is the
    residuals of the first policy.obs_stats_prompts train prompts, the threshold a quantile of the val prompts'."""
    n = comps.policy.obs_stats_prompts
    train = comps.observation_sample("train", n, progress="abstention: train sample")
    val = comps.observation_sample("val", len(comps.splits["val"]), progress="abstention: val distances")
    net.fit_abstention(train, val)


@dataclasses.dataclass
class TransferPlan:
    """What `transfer_outcomes` will run on a run directory, read from its config alone (no model loads): the config
    it rebuilds, the parsed variant specs and the settings transfer.json records."""

    cfg: Any  # the run's TrainConfig with the greedy rule and the abstention rule asked for
    trained: Any  # the trained Variants
    parsed: list[tuple[str, Any]]  # (spec, Variants) per variant, in order
    settings: dict[str, Any]  # run, run_dir, task, trained, n, seed, abstain, abstain_fitted_now, greedy_rule

    @property
    def specs(self) -> list[str]:
        return [spec for spec, _ in self.parsed]


def plan_transfer(
    run_dir: Path,
    variants: list[str] | None = None,
    n: int = 400,
    seed: int | None = None,
    fit_abstain: str = "off",
    greedy_rule: str | None = None,
    devices: bool = True,
) -> TransferPlan:
    """`transfer_outcomes`'s checks and settings without its rollouts: not a run directory, a task without variants,
    an unknown variant spec are one CRLError line here. `devices`: refuse a run whose device this host cannot use
    (`saved_config`); `crl transfer run_dirs=` plans without it where it only pools stored results."""
    if not (run_dir / schema.CONFIG_YAML).exists() or not (run_dir / schema.RUN_JSON).exists():
        raise CRLError(
            f"run_dir={run_dir} is not a CRL run directory (needs {schema.CONFIG_YAML} and {schema.RUN_JSON})"
        )
    cfg = with_greedy_rule(saved_config(run_dir, devices=devices), greedy_rule)
    if fit_abstain != "off":
        cfg = dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, abstain=fit_abstain))
    task = _task_with_variants(cfg)  # every variant is checked before the model loads
    trained = task.variants()
    specs = variants or task.family_axes.default_specs(cfg.task.family, trained)
    parsed = [(spec, task.family_axes.parse(spec, trained, task.name)) for spec in specs]
    settings = {
        "run": run_dir.name,
        "run_dir": str(run_dir),
        "task": task.name,
        "trained": trained.describe(),
        "n": n,
        "seed": cfg.seed if seed is None else seed,
        "abstain": cfg.policy.abstain,
        "abstain_fitted_now": fit_abstain != "off",
        "greedy_rule": cfg.policy.greedy_rule,
    }
    return TransferPlan(cfg, trained, parsed, settings)


def transfer_outcomes(
    run_dir: Path,
    variants: list[str] | None = None,
    n: int = 400,
    seed: int | None = None,
    fit_abstain: str = "off",
    greedy_rule: str | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(per-prompt outcomes, one dict per variant: variant, held_out, describe, and the settings) of `run_dir`.
    `greedy_rule`: how the greedy policy picks (policy.greedy_rule); None: the run's own."""
    plan = plan_transfer(run_dir, variants, n, seed, fit_abstain, greedy_rule)
    settings = plan.settings
    comps = build(plan.cfg, splits=("train", "val") if fit_abstain != "off" else ())
    comps.check_identity(RunInfo.read(run_dir), run_dir, keys=("sae_identity",))
    agent = comps.load_policy(run_dir, greedy=True)
    if fit_abstain != "off":
        fit_abstention(comps, agent.net)
    seed = settings["seed"]

    def arms(examples: list[Example], none: list[Episode], label: str) -> dict[str, list[Episode]]:
        if not agent.net.can_abstain:
            return {"crl": variant_rollouts(comps, examples, agent, seed, f"{label} crl")}
        free_agent = PolicyAgent(agent.net, greedy=True, abstain=False)
        free = variant_rollouts(comps, examples, free_agent, seed, f"{label} crl_no_abstain")
        return {"crl_abstain": _with_rule(comps, examples, agent, none, free, seed, label), "crl_no_abstain": free}

    def ratios(runs: dict[str, list[Episode]]) -> list[dict[str, Any]] | None:
        return [{"ood_ratio": r} for r in ood_ratios(agent.net, runs["none"])] if agent.net.can_abstain else None

    outcomes, info = variant_outcomes(comps, plan, arms, ("crl_abstain",), ratios)
    return outcomes, info, settings


Arms = Callable[[list[Example], list[Episode], str], dict[str, list[Episode]]]


def variant_outcomes(
    comps: Components,
    plan: TransferPlan,
    arms: Arms,
    abstaining: tuple[str, ...] = (),
    more: Callable[[dict[str, list[Episode]]], list[dict[str, Any]] | None] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rollouts and per-prompt rows of `crl transfer`, for any policy: on each variant of `plan`, its test prompts
    with no steering, then `arms(examples, none's episodes, label)`: the episodes of each arm (a policy), by name, in
    the columns' order. A row: variant, prompt_id, none_correct, per arm <arm>_correct, <arm>_steered (and, for the
    arms in `abstaining`, <arm>_abstained: its policy withheld steering at some decision), decisions, and the prompt's
    entry of `more(runs)` (one dict per prompt; None: nothing). Returns (rows, one dict per variant)."""
    seed, n = plan.settings["seed"], plan.settings["n"]
    outcomes: list[dict[str, Any]] = []
    info: list[dict[str, Any]] = []
    for i, (spec, vs) in enumerate(plan.parsed, 1):
        held = held_out_axes(vs, plan.trained)
        examples = comps.task.variant_examples(vs, "test", n)
        label = f"transfer {i}/{len(plan.parsed)} {spec}"
        print(f"[crl] {label}: {len(examples)} test prompts, {vs.describe()}", file=sys.stderr, flush=True)
        runs = {"none": variant_rollouts(comps, examples, None, seed, f"{label} no steering")}
        runs.update(arms(examples, runs["none"], label))
        info.append({"variant": spec, "held_out": "+".join(held), "describe": vs.describe(), "n": len(examples)})
        extra = more(runs) if more is not None else None
        for j, ex in enumerate(examples):
            row: dict[str, Any] = {"variant": spec, "prompt_id": ex.id, "none_correct": runs["none"][j].correct}
            for name, episodes in runs.items():
                if name == "none":
                    continue
                row[f"{name}_correct"] = episodes[j].correct
                row[f"{name}_steered"] = _steered(episodes[j])
                if name in abstaining:
                    row[f"{name}_abstained"] = _abstained(episodes[j])
            row["decisions"] = max(len(r[j].steps) for r in runs.values())
            if extra is not None:
                row.update(extra[j])
            outcomes.append(row)
    return outcomes, info


def ood_ratios(net: Any, episodes: list[Episode]) -> list[float]:
    """d(x) / tau (crl/agent/policy.py) at each episode's first decision (nan without one); > 1: the rule abstains
    there. Episode by episode, as `_with_rule` tests them, so the same floats decide."""
    tau = float(net.abstain_threshold)
    out = []
    for ep in episodes:
        if ep.obs is None or not len(ep.obs):
            out.append(math.nan)
        else:
            d = float(net.ood_distance(ep.obs[:1])[0])
            out.append(d / tau if tau else math.inf if d > 0 else 0.0)
    return out


def variant_rollouts(
    comps: Components, examples: list[Example], policy: Any, seed: int, progress: str | None
) -> list[Episode]:
    """`crl.run.evaluate.evaluate`, keeping each decision's observation (the rule's distances need them)."""
    env = comps.env(examples, comps.masker(for_eval=True), seed)
    try:
        return rollouts(env, examples, policy if policy is not None else NoSteer(env), progress, keep_tensors=True)
    finally:
        env.close()


def _with_rule(
    comps: Components,
    examples: list[Example],
    agent: PolicyAgent,
    none: list[Episode],
    free: list[Episode],
    seed: int,
    label: str,
) -> list[Episode]:
    """The abstaining policy's episodes: taken from `none` or `free` where they fix it (module docstring), the rest
    rolled out. A taken episode's steps are marked abstained (from `none`) or not (from `free`)."""
    net = agent.net
    ood = lambda ep: net.out_of_distribution(ep.obs) if ep.obs is not None else None  # noqa: E731
    out: list[Episode | None] = []
    for n_ep, f_ep in zip(none, free, strict=True):
        n_ood, f_ood = ood(n_ep), ood(f_ep)
        if n_ood is not None and bool(n_ood.all()):
            out.append(marked(n_ep, True))
        elif f_ood is not None and not bool(f_ood.any()):
            out.append(marked(f_ep, False))
        else:
            out.append(None)
    rest = [j for j, ep in enumerate(out) if ep is None]
    if rest:
        ran = variant_rollouts(comps, [examples[j] for j in rest], agent, seed, f"{label} crl_abstain")
        for j, ep in zip(rest, ran, strict=True):
            out[j] = ep
    print(
        f"[crl] {label} crl_abstain: {len(out) - len(rest)}/{len(out)} prompts fixed by the other runs, "
        f"{len(rest)} rolled out",
        file=sys.stderr,
        flush=True,
    )
    return out  # type: ignore[return-value]


def marked(ep: Episode, abstained: bool) -> Episode:
    """`ep` with every step marked as withheld (abstained) or not: an episode taken from another run."""
    return dataclasses.replace(ep, steps=[{**s, "abstained": abstained} for s in ep.steps])


def _task_with_variants(cfg: Any) -> Any:
    from crl.envs.tasks.registry import make_task

    task = make_task(cfg.task)
    if task.family_axes is None:
        raise CRLError(
            f"task '{task.name}' has no variants, so crl transfer has nothing to hold out; "
            "it needs a run of a task with variants (compare)"
        )
    return task
