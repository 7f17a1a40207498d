"""The control policy: an actor-critic over SAE features.

The actor scores features through the SAE's own geometry: a small MLP maps the normalised residual
(policy.obs_norm: standardized per dimension by stats measured before training, or layer-normed) to a
query q in residual space, and feature i scores  s * <q, W_dec[i]> / ||W_dec[i]|| + b_i.
It holds d_model^2 + d_sae parameters, and the decoder is used by reference (no copy), so a 131k
dictionary fits where a dense Linear(d_model, d_sae) head would not. "No steering" gets its own logit.
With several coefficient levels (steering.coef_levels, e.g. amplify and suppress), a small head adds one logit per
level to every feature's. Invalid actions get a large negative logit (not -inf, which makes NaNs in the entropy).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Categorical

from crl.config import PolicyConfig, validate

MASK_FILL = -1e9
OBS_CLIP = 10.0  # standardized observations are clipped, as in gymnasium's NormalizeObservation + clip


def _mlp(d_in: int, hidden: int, d_out: int, out_std: float) -> nn.Sequential:
    last = nn.Linear(hidden, d_out)
    nn.init.orthogonal_(last.weight, out_std)
    nn.init.zeros_(last.bias)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), last)


class ActorCritic(nn.Module):
    def __init__(self, d_model: int, decoder: torch.Tensor, allow_noop: bool, cfg: PolicyConfig, n_levels: int = 1):
        super().__init__()
        validate(cfg, "policy.")
        self.cfg = cfg
        self.d_sae = decoder.shape[0]
        self.allow_noop = allow_noop
        self.n_levels = n_levels  # coefficient levels (steering.coef_levels): action = level * d_sae + feature
        self.n_actions = self.d_sae * n_levels + int(allow_noop)
        self.critic = _mlp(d_model, cfg.hidden, 1, 1.0)
        if cfg.head == "sae":
            self.actor = _mlp(d_model, cfg.hidden, d_model, 0.01)
            self.feature_bias = nn.Parameter(torch.zeros(self.d_sae))
            self.log_scale = nn.Parameter(torch.tensor(float(cfg.init_scale)).log())
            # Non-persistent: checkpoints stay small; the decoder comes back from the SAE on load.
            self.register_buffer("decoder", decoder.detach(), persistent=False)
            self.register_buffer("inv_norm", 1.0 / decoder.detach().norm(dim=-1).clamp_min(1e-8), persistent=False)
        else:  # dense: a Linear head over all features
            self.actor = _mlp(d_model, cfg.hidden, self.d_sae, 0.01)
        # A level's logit is added to every feature's: log pi(feature, level) = log pi(feature) + log pi(level).
        self.level_head = _mlp(d_model, cfg.hidden, n_levels, 0.01) if n_levels > 1 else None
        self.noop_head = _mlp(d_model, cfg.hidden, 1, 0.01) if allow_noop else None
        if self.noop_head is not None:  # + log(levels): the initial no-op probability does not depend on them
            nn.init.constant_(self.noop_head[-1].bias, cfg.noop_init_bias + math.log(n_levels))
        # Persistent: a checkpoint carries the standardization its weights were trained under.
        self.register_buffer("obs_mean", torch.zeros(d_model))
        self.register_buffer("obs_std", torch.ones(d_model))

    @property
    def device(self) -> torch.device:
        return self.log_scale.device if hasattr(self, "log_scale") else next(self.parameters()).device

    @torch.no_grad()
    def set_obs_stats(self, obs: torch.Tensor) -> None:
        """Standardize by these observations (n, d_model): per-dimension mean and std (floored, so a constant
        dimension does not blow up)."""
        obs = obs.float().to(self.obs_mean.device)
        std = obs.std(dim=0)
        self.obs_mean.copy_(obs.mean(dim=0))
        self.obs_std.copy_(std.clamp_min(1e-3 * float(std.mean()) + 1e-8))

    def _norm(self, obs: torch.Tensor) -> torch.Tensor:
        if self.cfg.obs_norm == "layer":
            return F.layer_norm(obs, obs.shape[-1:])
        return ((obs - self.obs_mean) / self.obs_std).clamp(-OBS_CLIP, OBS_CLIP)

    def get_value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(self._norm(obs)).squeeze(-1)

    def logits(self, obs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self._norm(obs)
        out = self.actor(h)
        if self.cfg.head == "sae":
            out = self.log_scale.exp() * (out @ self.decoder.T) * self.inv_norm + self.feature_bias
        if self.level_head is not None:
            out = (out[:, None, :] + self.level_head(h)[:, :, None]).reshape(len(out), -1)
        if self.noop_head is not None:
            out = torch.cat([out, self.noop_head(h)], dim=-1)
        if mask is not None:
            out = out.masked_fill(~mask, MASK_FILL)
        return out

    def get_action_and_value(
        self,
        obs: torch.Tensor,
        mask: torch.Tensor | None = None,
        action: torch.Tensor | None = None,
        greedy: bool = False,
    ):
        """Serves rollouts (action=None: sample or argmax) and updates (action given: its log-prob)."""
        logits = self.logits(obs, mask)
        dist = Categorical(logits=logits)
        if action is None:
            action = logits.argmax(-1) if greedy else dist.sample()
        return action, dist.log_prob(action), dist.entropy(), self.get_value(obs), logits
