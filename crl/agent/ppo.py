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

from crl.agent.policy import MASK_FILL, ActionScores, ActorCritic, Candidates
from crl.agent.value_metrics import explained_variance
from crl.config import PPOConfig
from crl.envs.rollout import Episode


class PolicyAgent:
    """Adapts the network to the environment's action-policy protocol (sampling or greedy), on its device.

    With an abstention rule (policy.abstain, crl/agent/policy.py) and `abstain=True`, a decision whose residual is out
    of distribution may only take the no-op: its row of `info["action_mask"]` is narrowed in place, so the rollout
    stores it as a forced step (left out of PPO), and extras["abstained"] says where. `abstain=False` ignores the rule
    (the ablation of `crl transfer`)."""

    on_device = True  # run_episodes hands it device tensors (crl/envs/rollout.py); numpy in gives numpy out

    def __init__(self, net: ActorCritic, greedy: bool = False, n_alternatives: int = 3, abstain: bool = True):
        self.net, self.greedy, self.k = net, greedy, n_alternatives
        self.abstain = abstain and net.can_abstain

    @torch.no_grad()
    def act(self, obs: np.ndarray | torch.Tensor, info: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """Numpy observations (the env's host mode) give numpy actions and extras; tensors (its on_device mode) give
        tensors on the policy's device, with no transfer to the host: the decision stays on the device."""
        host = not isinstance(obs, torch.Tensor)
        device = self.net.device
        o = torch.as_tensor(obs, device=device)
        m = torch.as_tensor(info["action_mask"], device=device)
        ood = None
        if self.abstain:
            ood = self.net.out_of_distribution(o)
            no_op = self.net.n_actions - 1  # only the no-op (the last action) stays valid
            if host:
                ood = ood.cpu().numpy()
                if ood.any():
                    info["action_mask"][ood, :no_op] = False
                    m = torch.as_tensor(info["action_mask"], device=device)
            else:  # in place, so the rollout stores the narrowed mask; no sync
                info["action_mask"][:, :no_op] &= ~ood.to(info["action_mask"].device)[:, None]
                m = torch.as_tensor(info["action_mask"], device=device)
        action, logprob, _, value, scores = self.net.get_action_and_value(o, m, greedy=self.greedy)
        alts = self._alternatives(scores, action)
        if host:
            extras = {"logprob": logprob.cpu().numpy(), "value": value.cpu().numpy()}
            extras["top_alternatives"] = [[f for f in row if f >= 0] for row in alts.tolist()]
            if ood is not None:
                extras["abstained"] = ood
            return action.cpu().numpy(), extras
        extras = {"logprob": logprob, "value": value, "top_alternatives": alts}
        if ood is not None:
            extras["abstained"] = ood
        return action, extras

    def _alternatives(self, scores: ActionScores, action: torch.Tensor) -> torch.Tensor:
        """The best-scored valid actions other than the chosen one, at most `k` per row (n, <= k), best first, padded
        with -1, on the device: the top k + 1 without the chosen action (else without the last), a compact row's
        padding and masked actions. A row with fewer than k + 1 valid actions (masking=fixed's short list, a forced or
        abstained step) lists fewer, down to none."""
        k = min(self.k + 1, scores.logits.shape[-1])
        values, columns = scores.logits.topk(k, dim=-1)
        top = scores.actions(columns)  # -1: a compact row's padding
        masked = ~(values > MASK_FILL)  # the mask's fill value (or -inf, NaN): not an action the policy could take
        drop = (top == action[:, None]) | (top < 0) | masked
        order = torch.argsort(drop.to(torch.uint8), dim=1, stable=True)  # kept first, in score order
        return top.gather(1, order).masked_fill(drop.gather(1, order), -1)[:, : self.k]


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
    b_actions = torch.cat([ep.actions for ep in episodes])
    b_logprobs = torch.tensor([s["logprob"] for ep in episodes for s in ep.steps], dtype=torch.float32)
    b_values = torch.tensor([s["value"] for ep in episodes for s in ep.steps], dtype=torch.float32)
    b_adv, b_ret = torch.cat(advs), torch.cat(rets)
    # A wide dictionary's buffer keeps each decision's valid action ids, not its (n_actions,) bool mask (policy.py).
    b_masks: torch.Tensor | Candidates
    if net.compact:
        b_masks = Candidates.cat([net.candidates(ep.masks) for ep in episodes])
        decision = b_masks.valid.sum(-1) > 1
    else:
        b_masks = torch.cat([ep.masks for ep in episodes])
        decision = b_masks.sum(-1) > 1  # forced steps (only the no-op valid) are not decisions
    values_np, returns_np = b_values.numpy(), b_ret.numpy()
    # Everything on the policy's device first (the rollout may have left obs, masks and actions there already).
    keep = decision.to(device).nonzero().squeeze(1)  # one sync for the update, not one per indexed tensor
    b_obs, b_masks, b_actions = b_obs.to(device), b_masks.to(device), b_actions.to(device)
    b_logprobs, b_values, b_adv, b_ret = (t.to(device) for t in (b_logprobs, b_values, b_adv, b_ret))
    b_obs, b_masks, b_actions = b_obs[keep], b_masks[keep], b_actions[keep]
    b_logprobs, b_values, b_adv, b_ret = b_logprobs[keep], b_values[keep], b_adv[keep], b_ret[keep]
    n = len(b_obs)
    # The minibatch statistics stay on the device until the update ends (one transfer, not six per minibatch).
    stats: dict[str, list[torch.Tensor]] = {k: [] for k in ("pg", "v", "ent", "kl_ref", "old_kl", "kl", "clip")}
    if n:
        mb_size = max(1, n // cfg.num_minibatches)
        noop = net.n_actions - 1 if net.allow_noop else None
        for _epoch in range(cfg.update_epochs):
            perm = torch.randperm(n, generator=generator).to(device)
            for start in range(0, n, mb_size):
                mb = perm[start : start + mb_size]
                mb_masks = b_masks[mb]
                _, newlogprob, entropy, newvalue, scores = net.get_action_and_value(b_obs[mb], mb_masks, b_actions[mb])
                logratio = newlogprob - b_logprobs[mb]
                ratio = logratio.exp()
                with torch.no_grad():
                    stats["old_kl"].append((-logratio).mean())
                    stats["kl"].append(((ratio - 1) - logratio).mean())
                    stats["clip"].append(((ratio - 1.0).abs() > cfg.clip_coef).float().mean())
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
                    if isinstance(mb_masks, Candidates):  # the no-op is the last column of a compact row
                        valid, noop_col = mb_masks.valid, scores.logits.shape[-1] - 1
                    else:
                        valid, noop_col = mb_masks, noop
                    kl_ref = kl_to_no_steer(scores.logits, valid, noop_col, cfg.ref_eps).mean()
                    loss = loss + cfg.reg_coef * kl_ref
                    stats["kl_ref"].append(kl_ref.detach())
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(net.parameters(), cfg.max_grad_norm)
                optimizer.step()
                stats["pg"].append(pg_loss.detach())
                stats["v"].append(v_loss.detach())
                stats["ent"].append(entropy_loss.detach())
            if cfg.target_kl is not None and float(stats["kl"][-1]) > cfg.target_kl:  # a sync per epoch, only here
                break
    got = {k: torch.stack(v).tolist() if v else [] for k, v in stats.items()}
    last = {k: (v[-1] if v else 0.0) for k, v in got.items()}
    out = {
        "losses/policy_loss": last["pg"],
        "losses/value_loss": last["v"],
        "losses/entropy": last["ent"],
        "losses/old_approx_kl": last["old_kl"],
        "losses/approx_kl": last["kl"],
        "losses/clipfrac": float(np.mean(got["clip"])) if got["clip"] else 0.0,
        "losses/explained_variance": explained_variance(values_np, returns_np),
        "charts/decisions": float(n),
        "charts/nonzero_advantage": float((b_adv != 0).float().mean()) if n else 0.0,
    }
    if got["kl_ref"]:
        out["losses/kl_to_no_steer"] = last["kl_ref"]
    return out
