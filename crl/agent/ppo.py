"""PPO over token steps with a terminal verifiable reward (CleanRL style, top to bottom).

Each generated token is one decision. Rewards are 0 except the last step of an episode, which gets the
verifier's reward. Advantages are GAE(gamma, lambda) per episode, or, with `advantage=group`, the
critic-free group-relative form: several samples per prompt, advantage = reward - the group's mean reward,
the same for every token of the episode (it suits sparse terminal rewards). The critic is trained in both
modes, since critic-trajectory analysis reads its values.
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
    """Adapts the network to the environment's action-policy protocol (sampling or greedy)."""

    def __init__(self, net: ActorCritic, greedy: bool = False, n_alternatives: int = 3):
        self.net, self.greedy, self.k = net, greedy, n_alternatives

    @torch.no_grad()
    def act(self, obs: np.ndarray, info: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        o = torch.from_numpy(obs)
        m = torch.from_numpy(info["action_mask"])
        action, logprob, _, value, logits = self.net.get_action_and_value(o, m, greedy=self.greedy)
        k = min(self.k + 1, logits.shape[-1])
        top = logits.topk(k, dim=-1).indices
        alts = [[int(f) for f in row if f != a][: self.k] for row, a in zip(top.tolist(), action.tolist(), strict=True)]
        return action.numpy(), {"logprob": logprob.numpy(), "value": value.numpy(), "top_alternatives": alts}


def compute_advantages(episodes: list[Episode], cfg: PPOConfig) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-episode (advantages, returns), each of shape (n_steps,)."""
    advs, rets = [], []
    if cfg.advantage == "group":
        groups: dict[str, list[float]] = {}
        for ep in episodes:
            groups.setdefault(ep.example.id, []).append(ep.reward)
    for ep in episodes:
        values = torch.tensor([s["value"] for s in ep.steps], dtype=torch.float32)
        n = len(values)
        if cfg.advantage == "group":
            base = float(np.mean(groups[ep.example.id]))
            adv = torch.full((n,), ep.reward - base)
            ret = torch.full((n,), float(ep.reward))
        else:
            rewards = torch.zeros(n)
            rewards[-1] = ep.reward
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


def ppo_update(
    net: ActorCritic,
    optimizer: torch.optim.Optimizer,
    episodes: list[Episode],
    cfg: PPOConfig,
    generator: torch.Generator,
) -> dict[str, float]:
    advs, rets = compute_advantages(episodes, cfg)
    b_obs = torch.cat([ep.obs for ep in episodes])
    b_masks = torch.cat([ep.masks for ep in episodes])
    b_actions = torch.cat([ep.actions for ep in episodes])
    b_logprobs = torch.tensor([s["logprob"] for ep in episodes for s in ep.steps], dtype=torch.float32)
    b_values = torch.tensor([s["value"] for ep in episodes for s in ep.steps], dtype=torch.float32)
    b_adv, b_ret = torch.cat(advs), torch.cat(rets)
    n = len(b_obs)
    mb_size = max(1, n // cfg.num_minibatches)
    clipfracs, approx_kl, old_approx_kl = [], torch.tensor(0.0), torch.tensor(0.0)
    pg_loss = v_loss = entropy_loss = torch.tensor(0.0)
    for _epoch in range(cfg.update_epochs):
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n, mb_size):
            mb = perm[start : start + mb_size]
            _, newlogprob, entropy, newvalue, _ = net.get_action_and_value(b_obs[mb], b_masks[mb], b_actions[mb])
            logratio = newlogprob - b_logprobs[mb]
            ratio = logratio.exp()
            with torch.no_grad():
                old_approx_kl = (-logratio).mean()
                approx_kl = ((ratio - 1) - logratio).mean()
                clipfracs.append(((ratio - 1.0).abs() > cfg.clip_coef).float().mean().item())
            mb_adv = b_adv[mb]
            if cfg.norm_adv and len(mb) > 1:
                mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
            pg_loss = torch.max(-mb_adv * ratio, -mb_adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()
            if cfg.clip_vloss:
                v_clipped = b_values[mb] + (newvalue - b_values[mb]).clamp(-cfg.clip_coef, cfg.clip_coef)
                v_loss = 0.5 * torch.max((newvalue - b_ret[mb]) ** 2, (v_clipped - b_ret[mb]) ** 2).mean()
            else:
                v_loss = 0.5 * ((newvalue - b_ret[mb]) ** 2).mean()
            entropy_loss = entropy.mean()
            loss = pg_loss - cfg.ent_coef * entropy_loss + cfg.vf_coef * v_loss
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), cfg.max_grad_norm)
            optimizer.step()
        if cfg.target_kl is not None and approx_kl > cfg.target_kl:
            break
    return {
        "losses/policy_loss": pg_loss.item(),
        "losses/value_loss": v_loss.item(),
        "losses/entropy": entropy_loss.item(),
        "losses/old_approx_kl": old_approx_kl.item(),
        "losses/approx_kl": approx_kl.item(),
        "losses/clipfrac": float(np.mean(clipfracs)) if clipfracs else 0.0,
        "losses/explained_variance": explained_variance(b_values.numpy(), b_ret.numpy()),
        "charts/decisions": float(n),
    }
