"""The control policy: an actor-critic over SAE features.

The actor scores features through the SAE's own geometry: a small MLP maps the normalised residual
(policy.obs_norm: standardized per dimension by stats measured before training, or layer-normed) to a
query q in residual space, and feature i scores  s * <q, W_dec[i]> / ||W_dec[i]|| + b_i.
It holds d_model^2 + d_sae parameters, and the decoder is used by reference (no copy), so a 131k
dictionary fits where a dense Linear(d_model, d_sae) head would not. "No steering" gets its own logit.
With several coefficient levels (steering.coef_levels, e.g. amplify and suppress), a small head adds one logit per
level to every feature's. Invalid actions get a large negative logit (not -inf, which makes NaNs in the entropy).

Abstention (`policy.abstain`): do no harm off the training distribution. A policy trained on one template of a task
steers prompts unlike any it saw (compare, seed 0: the inverse question steered on 36% of prompts, 0.47 -> 0.14; one
paraphrase on every prompt), so the policy may refuse to act where its input is unlike the training sample. With z
the standardized residual, clipped as the policy sees it, z_j = clip((x_j - mean_j) / std_j, -10, 10) (the same
statistics as obs_norm: every decision of unsteered rollouts of the first obs_stats_prompts train prompts):

- zscore: d(x) = mean_j z_j^2 (about 1 in distribution; no sample kept);
- knn:    d(x) = mean distance ||z - z_i|| / sqrt(d_model) to the abstain_k nearest training residuals z_i (the sample
          is kept with the policy: n x d_model floats, 0.6 MB for the default model).

Measured on SmolLM2-135M layer 15 (unsteered last-token residuals; share of decisions above the 0.99 val quantile):
trained on compare's one template, both flag 100% of every held-out variant (5 paraphrases, 1- and 3-digit numbers,
the inverse question; their zscore is 5-65 against at most 2.6 on val) and 0-3% of fresh in-distribution prompts.
Trained on the compare family (4 wordings x 2 directions), the training sample has several clusters and zscore, a
diagonal Gaussian, misses most of the held-out variants (3-digit numbers 7%, the "option" wording 75%), while knn
(k=5) still flags 100% of the held-out wordings and ranges and 0-2% of in-distribution prompts: use knn.

The threshold tau is the abstain_quantile quantile (default 0.99) of d over every decision of unsteered greedy rollouts
of the val prompts, fitted once before training (`fit_abstention`) and saved with the policy (buffers
abstain_threshold, abstain_sample). At every decision with d(x) > tau the action is forced to "no steering":
`PolicyAgent` narrows that decision's action mask to the no-op, so the decision is logged as forced
(`abstained` in the intervention rows) and PPO leaves it out like any forced step (crl/agent/ppo.py). By construction
about 1 - q of in-distribution decisions abstain. Not fitted (tau = inf): never abstains.
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
        # Only with policy.abstain, so the state dict of a policy without it is unchanged.
        if cfg.abstain != "off":
            self.register_buffer("abstain_threshold", torch.tensor(math.inf))
            if cfg.abstain == "knn":
                self.register_buffer("abstain_sample", torch.zeros(0, d_model))  # resized on fit and on load

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
        return self._standardize(obs)

    def _standardize(self, obs: torch.Tensor) -> torch.Tensor:
        return ((obs - self.obs_mean) / self.obs_std).clamp(-OBS_CLIP, OBS_CLIP)

    # -- abstention (module docstring) --------------------------------------------------------------------------
    @property
    def can_abstain(self) -> bool:
        """Whether the policy has an abstention rule (policy.abstain) it can apply (it needs the no-op)."""
        return self.cfg.abstain != "off" and self.allow_noop

    @torch.no_grad()
    def ood_distance(self, obs: torch.Tensor) -> torch.Tensor:
        """d(x) of each observation (n, d_model) -> (n,)."""
        z = self._standardize(obs.float().to(self.obs_mean.device))
        if self.cfg.abstain == "zscore":
            return z.pow(2).mean(-1)
        if self.cfg.abstain == "knn":
            sample = self.abstain_sample
            if not len(sample):
                return torch.zeros(len(z), device=z.device)
            k = min(self.cfg.abstain_k, len(sample))
            dist = torch.cdist(z, sample) / math.sqrt(z.shape[-1])
            return dist.topk(k, dim=-1, largest=False).values.mean(-1)
        raise ValueError(f"policy.abstain={self.cfg.abstain} has no distance")

    @torch.no_grad()
    def fit_abstention(self, train_obs: torch.Tensor, val_obs: torch.Tensor) -> float:
        """Keep the training sample (knn) and set the threshold to the abstain_quantile of the val distances (call
        after set_obs_stats, with the same training observations); returns the threshold."""
        if self.cfg.abstain == "knn":
            self.abstain_sample = self._standardize(train_obs.float().to(self.obs_mean.device))
        d = self.ood_distance(val_obs)
        self.abstain_threshold.fill_(float(torch.quantile(d.double(), self.cfg.abstain_quantile)))
        return float(self.abstain_threshold)

    @torch.no_grad()
    def out_of_distribution(self, obs: torch.Tensor) -> torch.Tensor:
        """(n,) bool: the decisions the rule forces to no steering (all False without a fitted rule)."""
        if not self.can_abstain or not math.isfinite(float(self.abstain_threshold)):
            return torch.zeros(len(obs), dtype=torch.bool, device=obs.device)
        return (self.ood_distance(obs) > self.abstain_threshold).to(obs.device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        # The knn sample's size is the fitted one: take the saved tensor's shape before copying into it.
        saved = state_dict.get(prefix + "abstain_sample")
        if saved is not None and hasattr(self, "abstain_sample"):
            self.abstain_sample = torch.zeros_like(saved, device=self.obs_mean.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

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
