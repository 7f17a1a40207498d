"""PPO over token decisions with one terminal verifiable reward (CleanRL style, top to bottom).

Each steerable token is one decision; the verifier's reward r arrives when the episode ends. The advantage of a
decision says how much better the episode went than a baseline for the same prompt (`ppo.advantage`):

- ``gae``:       GAE(gamma, lambda) with the learned critic (a value per token), rewards 0 until the last step;
- ``group``:     A = r - mean(r over the `group_size` samples of the same prompt in this update);
- ``loo``:       A = r - mean(r over the *other* samples of the same prompt) (leave-one-out: unbiased);
- ``unsteered``: A = r - r_0(prompt), where r_0 is the reward of the unsteered greedy rollout of the prompt. An
                 episode whose steering changed nothing gets exactly 0: only interventions that changed the outcome
                 move the policy. (r_0 is computed once per prompt by the trainer and passed in.)

The critic-free modes give every decision of an episode the episode's advantage. The critic is trained in every
mode, since the critic-trajectory analysis reads its values.

Steering has to earn its place (`ppo.regularizer`, coefficient `ppo.reg_coef` >= 0):

- ``steer_cost``: every steered decision pays lambda = reg_coef: A_t <- A_t - lambda * [a_t != no-op] (with ``gae``
                  the cost is a per-token reward -lambda instead). A feature is kept only where it raises the
                  expected reward by more than lambda.
- ``kl``:         the loss adds beta * KL(pi(.|s) || pi_ref(.|s)) with beta = reg_coef, the RLHF-style penalty
                  towards a reference policy; here pi_ref is "no steering", smoothed so the KL is finite:
                  pi_ref = (1 - eps) * [no-op] + eps * uniform(valid actions), eps = `ppo.ref_eps`.
                  KL = -H(pi) - pi(no-op) log pi_ref(no-op) - (1 - pi(no-op)) log(eps / K).
- ``none``:       no pull; the initial no-op logit (policy.noop_init_bias) is the only prior.

Advantages are normalised per minibatch (`ppo.norm_adv`): ``standardize`` (CleanRL: (A - mean) / std),
``scale`` (A / std, keeping the sign and the zero of "nothing changed"), or ``none``.
Forced steps (only the no-op is valid, e.g. past `steering.steer_steps`) are not decisions and are left out.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from crl.agent.policy import ActorCritic
from crl.agent.value_metrics import explained_variance
from crl.config import PPOConfig
from crl.envs.rollout import Episode


class PolicyAgent:
    """Adapts the network to the environment's action-policy protocol (sampling or greedy), on its device.

    With an abstention rule (policy.abstain, crl/agent/policy.py) and `abstain=True`, a decision whose residual is out
    of distribution may only take the no-op: its row of `info["action_mask"]` is narrowed in place, so the rollout
    stores it as a forced step (left out of PPO), and extras["abstained"] says where. `abstain=False` ignores the rule
    (the ablation of `crl transfer`)."""

    def __init__(self, net: ActorCritic, greedy: bool = False, n_alternatives: int = 3, abstain: bool = True):
        self.net, self.greedy, self.k = net, greedy, n_alternatives
        self.abstain = abstain and net.can_abstain

    @torch.no_grad()
    def act(self, obs: np.ndarray, info: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        device = self.net.device
        o = torch.as_tensor(obs, device=device)
        m = torch.as_tensor(info["action_mask"], device=device)
        ood = None
        if self.abstain:
            ood = self.net.out_of_distribution(o).cpu().numpy()
            if ood.any():
                info["action_mask"][ood, : self.net.n_actions - 1] = False  # only the no-op (the last action)
                m = torch.as_tensor(info["action_mask"], device=device)
        action, logprob, _, value, logits = self.net.get_action_and_value(o, m, greedy=self.greedy)
        k = min(self.k + 1, logits.shape[-1])
        top = logits.topk(k, dim=-1).indices.tolist()
        action, logprob, value = action.cpu(), logprob.cpu(), value.cpu()
        alts = [[int(f) for f in row if f != a][: self.k] for row, a in zip(top, action.tolist(), strict=True)]
        extras = {"logprob": logprob.numpy(), "value": value.numpy(), "top_alternatives": alts}
        if ood is not None:
            extras["abstained"] = ood
        return action.numpy(), extras


def episode_baselines(episodes: list[Episode], cfg: PPOConfig, unsteered: dict[str, float] | None = None) -> np.ndarray:
    """The critic-free baseline b of each episode (see the module docstring); A = r - b."""
    rewards = np.array([ep.reward for ep in episodes], dtype=np.float64)
    if cfg.advantage == "unsteered":
        if unsteered is None:
            raise ValueError("advantage=unsteered needs the unsteered reward of every prompt")
        return np.array([unsteered[ep.example.id] for ep in episodes])
    groups: dict[str, list[int]] = {}
    for i, ep in enumerate(episodes):
        groups.setdefault(ep.example.id, []).append(i)
    base = np.zeros(len(episodes))
    for idx in groups.values():
        r = rewards[idx]
        if cfg.advantage == "group" or len(idx) == 1:
            base[idx] = r.mean()
        else:  # loo
            base[idx] = (r.sum() - r) / (len(idx) - 1)
    return base


def compute_advantages(
    episodes: list[Episode], cfg: PPOConfig, unsteered: dict[str, float] | None = None
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-episode (advantages, returns), each of shape (n_steps,)."""
    cost = cfg.reg_coef if cfg.regularizer == "steer_cost" else 0.0
    advs, rets = [], []
    base = None if cfg.advantage == "gae" else episode_baselines(episodes, cfg, unsteered)
    for i, ep in enumerate(episodes):
        values = torch.tensor([s["value"] for s in ep.steps], dtype=torch.float32)
        steered = torch.tensor([s["feature"] >= 0 for s in ep.steps], dtype=torch.float32)
        n = len(values)
        if base is not None:
            adv = torch.full((n,), float(ep.reward - base[i])) - cost * steered
            ret = torch.full((n,), float(ep.reward))
        else:
            rewards = -cost * steered
            rewards[-1] += ep.reward
            adv = torch.zeros(n)
            lastgaelam = 0.0
            for t in reversed(range(n)):
                next_value = values[t + 1] if t + 1 < n else 0.0  # terminal: no bootstrap
                delta = rewards[t] + cfg.gamma * next_value - values[t]
                lastgaelam = delta + cfg.gamma * cfg.gae_lambda * lastgaelam
                adv[t] = lastgaelam
            ret = adv + values
        advs.append(adv)
        rets.append(ret)
    return advs, rets


def kl_to_no_steer(logits: torch.Tensor, mask: torch.Tensor, noop: int, eps: float) -> torch.Tensor:
    """KL(pi || pi_ref) per row, pi_ref = (1 - eps) * [no-op] + eps * uniform over the valid actions."""
    logp = torch.log_softmax(logits, dim=-1)
    p = logp.exp()
    k = mask.sum(-1).clamp_min(1).float()
    ref_other = torch.log(eps / k)
    ref_noop = torch.log((1 - eps) + eps / k)
    neg_entropy = (p * logp).sum(-1)
    p_noop = p[:, noop]
    return neg_entropy - p_noop * ref_noop - (1 - p_noop) * ref_other


def normalize(adv: torch.Tensor, how: str) -> torch.Tensor:
    if len(adv) < 2 or how == "none":
        return adv
    if how == "standardize":
        return (adv - adv.mean()) / (adv.std() + 1e-8)
    return adv / (adv.std() + 1e-8)  # scale: keep the sign, and zero where nothing changed


def ppo_update(
    net: ActorCritic,
    optimizer: torch.optim.Optimizer,
    episodes: list[Episode],
    cfg: PPOConfig,
    generator: torch.Generator,
    unsteered: dict[str, float] | None = None,
) -> dict[str, float]:
    advs, rets = compute_advantages(episodes, cfg, unsteered)
    device = net.device
    b_obs = torch.cat([ep.obs for ep in episodes])
    b_masks = torch.cat([ep.masks for ep in episodes])
    b_actions = torch.cat([ep.actions for ep in episodes])
    b_logprobs = torch.tensor([s["logprob"] for ep in episodes for s in ep.steps], dtype=torch.float32)
    b_values = torch.tensor([s["value"] for ep in episodes for s in ep.steps], dtype=torch.float32)
    b_adv, b_ret = torch.cat(advs), torch.cat(rets)
    decision = b_masks.sum(-1) > 1  # forced steps (only the no-op valid) are not decisions
    values_np, returns_np = b_values.numpy(), b_ret.numpy()
    b_obs, b_masks, b_actions = b_obs[decision], b_masks[decision], b_actions[decision]
    b_logprobs, b_values, b_adv, b_ret = b_logprobs[decision], b_values[decision], b_adv[decision], b_ret[decision]
    n = len(b_obs)
    stats: dict[str, list[float]] = {k: [] for k in ("pg", "v", "ent", "kl_ref", "old_kl", "kl", "clip")}
    if n:
        b_obs, b_masks, b_actions = b_obs.to(device), b_masks.to(device), b_actions.to(device)
        b_logprobs, b_values, b_adv, b_ret = (t.to(device) for t in (b_logprobs, b_values, b_adv, b_ret))
        mb_size = max(1, n // cfg.num_minibatches)
        noop = net.n_actions - 1 if net.allow_noop else None
        for _epoch in range(cfg.update_epochs):
            perm = torch.randperm(n, generator=generator).to(device)
            for start in range(0, n, mb_size):
                mb = perm[start : start + mb_size]
                _, newlogprob, entropy, newvalue, logits = net.get_action_and_value(
                    b_obs[mb], b_masks[mb], b_actions[mb]
                )
                logratio = newlogprob - b_logprobs[mb]
                ratio = logratio.exp()
                with torch.no_grad():
                    stats["old_kl"].append((-logratio).mean().item())
                    stats["kl"].append(((ratio - 1) - logratio).mean().item())
                    stats["clip"].append(((ratio - 1.0).abs() > cfg.clip_coef).float().mean().item())
                mb_adv = normalize(b_adv[mb], cfg.norm_adv)
                pg_loss = torch.max(-mb_adv * ratio, -mb_adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()
                if cfg.clip_vloss:
                    v_clipped = b_values[mb] + (newvalue - b_values[mb]).clamp(-cfg.clip_coef, cfg.clip_coef)
                    v_loss = 0.5 * torch.max((newvalue - b_ret[mb]) ** 2, (v_clipped - b_ret[mb]) ** 2).mean()
                else:
                    v_loss = 0.5 * ((newvalue - b_ret[mb]) ** 2).mean()
                entropy_loss = entropy.mean()
                loss = pg_loss - cfg.ent_coef * entropy_loss + cfg.vf_coef * v_loss
                if cfg.regularizer == "kl" and noop is not None:
                    kl_ref = kl_to_no_steer(logits, b_masks[mb], noop, cfg.ref_eps).mean()
                    loss = loss + cfg.reg_coef * kl_ref
                    stats["kl_ref"].append(kl_ref.item())
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(net.parameters(), cfg.max_grad_norm)
                optimizer.step()
                stats["pg"].append(pg_loss.item())
                stats["v"].append(v_loss.item())
                stats["ent"].append(entropy_loss.item())
            if cfg.target_kl is not None and stats["kl"][-1] > cfg.target_kl:
                break
    last = {k: (v[-1] if v else 0.0) for k, v in stats.items()}
    out = {
        "losses/policy_loss": last["pg"],
        "losses/value_loss": last["v"],
        "losses/entropy": last["ent"],
        "losses/old_approx_kl": last["old_kl"],
        "losses/approx_kl": last["kl"],
        "losses/clipfrac": float(np.mean(stats["clip"])) if stats["clip"] else 0.0,
        "losses/explained_variance": explained_variance(values_np, returns_np),
        "charts/decisions": float(n),
        "charts/nonzero_advantage": float((b_adv != 0).float().mean()) if n else 0.0,
    }
    if stats["kl_ref"]:
        out["losses/kl_to_no_steer"] = last["kl_ref"]
    return out
