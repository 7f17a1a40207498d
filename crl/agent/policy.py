"""The control policy: an actor-critic over SAE features.

The actor scores features through the SAE's own geometry: a small MLP maps the normalised residual
(policy.obs_norm: standardized per dimension by stats measured before training, or layer-normed) to a
query q in residual space, and feature i scores  s * <q, W_dec[i]> / ||W_dec[i]|| + b_i.
It holds d_model^2 + d_sae parameters, and the decoder is used by reference (no copy), so a 131k
dictionary fits where a dense Linear(d_model, d_sae) head would not. "No steering" gets its own logit.
With several coefficient levels (steering.coef_levels, e.g. amplify and suppress), a small head adds one logit per
level to every feature's. Invalid actions get a large negative logit (not -inf, which makes NaNs in the entropy).

Wide dictionaries (d_sae >= policy.compact_min_d_sae; Gemma Scope's 16k, 65k, 131k): a decision scores only its valid
actions (`Candidates`: each row's unmasked action ids), and the softmax runs over those. A masked action's probability
is exactly 0 either way, so the distribution is the same up to float rounding, while the cost follows the masking's
candidate set (tens to hundreds of features) instead of d_sae * levels: the (n, d_model) x (d_model, d_sae) product,
the (n, d_sae * levels + 1) logits, softmax, entropy and sampling, and in PPO the gradients through all of them.
`crl bench policy` measures both paths. Narrower dictionaries score every action, bit for bit as before.

Greedy choice (`policy.greedy_rule`, `greedy_columns`): argmax takes the most likely action. With thousands of feature
actions the steering mass is spread over them, so argmax picks the no-op unless one feature alone outweighs it (the
compare family: sampling steered 27-38% of decisions, argmax none). steer_if_likely decides hierarchically: steer iff
P(no-op) < 1/2, i.e. the valid steering actions together outweigh the no-op, then take the most likely of them.

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
about 1 - q of in-distribution decisions abstain. Not fitted (tau = inf): never abstains. `crl transfer` records
d(x) / tau per prompt and, for one-decision tasks, what other thresholds m * tau would have done
(crl/analysis/offline/abstention.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
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


class ActionScores(NamedTuple):
    """The masked logits of a batch of decisions. `ids` None: column j is action j (every action scored); else the
    action id of each column (-1: padding, masked), when only the valid actions were scored (`Candidates`)."""

    logits: torch.Tensor
    ids: torch.Tensor | None = None

    def actions(self, columns: torch.Tensor) -> torch.Tensor:
        """The action ids of these columns of `logits`: one per row (n,) or several (n, j)."""
        if self.ids is None:
            return columns
        if columns.dim() == 1:
            return self.ids.gather(-1, columns[:, None]).squeeze(-1)
        return self.ids.gather(-1, columns)


@dataclass
class Candidates:
    """The valid actions of each decision, compactly: ids (n, k) holds a row's valid steering actions in ascending
    order, padded with -1, and, when the no-op exists, its id in the last column (valid where the mask says). A dense
    (n, d_sae * levels + 1) bool mask of a 131k dictionary is 256 KiB a row; this is a few hundred ids."""

    ids: torch.Tensor  # (n, k) long
    valid: torch.Tensor  # (n, k) bool
    noop: bool  # whether the last column is the no-op

    @classmethod
    def from_mask(cls, mask: torch.Tensor, n_steer: int, noop: bool) -> Candidates:
        """From a dense bool mask (n, n_steer + noop)."""
        n, width = mask.shape
        if mask.device.type == "cpu":  # numpy's flatnonzero is several times faster than torch's nonzero here
            flat = torch.from_numpy(np.flatnonzero(mask.numpy()))
        else:
            flat = mask.reshape(-1).nonzero().squeeze(1)
        rows, cols = flat // width, flat % width
        steer = cols < n_steer
        rows, cols = rows[steer], cols[steer]
        counts = torch.bincount(rows, minlength=n)
        k = int(counts.max()) if n else 0
        start = counts.cumsum(0) - counts
        ids = torch.full((n, k), -1, dtype=torch.long, device=mask.device)
        ids[rows, torch.arange(len(rows), device=mask.device) - start[rows]] = cols
        valid = ids >= 0
        if noop:
            ids = torch.cat([ids, torch.full((n, 1), n_steer, dtype=torch.long, device=mask.device)], dim=1)
            valid = torch.cat([valid, mask[:, n_steer:].bool()], dim=1)
        return cls(ids, valid, noop)

    @classmethod
    def cat(cls, parts: list[Candidates]) -> Candidates:
        """Stack the rows of several (at least one), padding each one's steering columns to the widest."""
        noop = parts[0].noop
        k = max(p.ids.shape[1] for p in parts)
        ids, valid = [], []
        for p in parts:
            split, pad = p.ids.shape[1] - int(noop), k - p.ids.shape[1]
            ids.append(torch.cat([p.ids[:, :split], p.ids.new_full((len(p), pad), -1), p.ids[:, split:]], dim=1))
            valid.append(torch.cat([p.valid[:, :split], p.valid.new_zeros((len(p), pad)), p.valid[:, split:]], dim=1))
        return cls(torch.cat(ids), torch.cat(valid), noop)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, rows: torch.Tensor | slice) -> Candidates:
        return Candidates(self.ids[rows], self.valid[rows], self.noop)

    def to(self, device: torch.device | str) -> Candidates:
        return Candidates(self.ids.to(device), self.valid.to(device), self.noop)

    def columns(self, actions: torch.Tensor) -> torch.Tensor:
        """The column of each row's action (n,); every action must be one of its row's valid ones (checked on the
        CPU; on a GPU the check would cost a host sync per minibatch)."""
        hit = (self.ids == actions[:, None]) & self.valid
        if hit.device.type == "cpu" and not bool(hit.any(-1).all()):
            raise ValueError("an action is not among its decision's valid actions")
        return hit.to(torch.uint8).argmax(-1)


def greedy_columns(logits: torch.Tensor, noop: bool, rule: str = "argmax") -> torch.Tensor:
    """The greedy column of each row of masked logits (n, k) whose last column is the no-op when `noop` (the dense
    logits of every action, and compact `Candidates` alike). argmax: the most likely column. steer_if_likely: the most
    likely steering column where the steering columns together outweigh the no-op (P(no-op) < 1/2), else the no-op;
    without a no-op it is argmax."""
    if rule == "argmax" or not noop:
        return logits.argmax(-1)
    if rule != "steer_if_likely":
        raise ValueError(f"unknown greedy rule {rule!r}")
    noop_col = torch.full((len(logits),), logits.shape[-1] - 1, dtype=torch.long, device=logits.device)
    steer = logits[:, :-1]
    if steer.shape[-1] == 0:  # compact rows with no valid steering action at all
        return noop_col
    # P(no-op) < 1/2  <=>  sum_i exp(l_i) > exp(l_noop) over the steering columns (a masked one adds exp(MASK_FILL) = 0)
    go = torch.logsumexp(steer, dim=-1) > logits[:, -1]
    return torch.where(go, steer.argmax(-1), noop_col)


class ActorCritic(nn.Module):
    def __init__(self, d_model: int, decoder: torch.Tensor, allow_noop: bool, cfg: PolicyConfig, n_levels: int = 1):
        super().__init__()
        validate(cfg, "policy.")
        self.cfg = cfg
        self.d_sae = decoder.shape[0]
        self.allow_noop = allow_noop
        self.n_levels = n_levels  # coefficient levels (steering.coef_levels): action = level * d_sae + feature
        self.n_actions = self.d_sae * n_levels + int(allow_noop)
        # Wide dictionaries score only each decision's valid actions (module docstring).
        self.compact = self.d_sae >= cfg.compact_min_d_sae
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
        if not self.can_abstain:
            return torch.zeros(len(obs), dtype=torch.bool, device=obs.device)
        # Not fitted (tau = inf): no distance is above it. No test of tau on the host: no sync per decision.
        return (self.ood_distance(obs) > self.abstain_threshold).to(obs.device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        # The knn sample's size is the fitted one: take the saved tensor's shape before copying into it.
        saved = state_dict.get(prefix + "abstain_sample")
        if saved is not None and hasattr(self, "abstain_sample"):
            self.abstain_sample = torch.zeros_like(saved, device=self.obs_mean.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def get_value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(self._norm(obs)).squeeze(-1)

    def _feature_scores(self, h: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """Each feature's logit (n, d_sae), or only these features' (n, len(features))."""
        if self.cfg.head == "sae":
            q = self.actor(h)
            if features is None:
                return self.log_scale.exp() * (q @ self.decoder.T) * self.inv_norm + self.feature_bias
            dec, inv, bias = self.decoder[features], self.inv_norm[features], self.feature_bias[features]
            return self.log_scale.exp() * (q @ dec.T) * inv + bias
        if features is None:
            return self.actor(h)
        last = self.actor[-1]
        return F.linear(self.actor[:-1](h), last.weight[features], last.bias[features])

    def logits(self, obs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Every action's logit (n, n_actions); masked actions get MASK_FILL."""
        h = self._norm(obs)
        out = self._feature_scores(h)
        if self.level_head is not None:
            out = (out[:, None, :] + self.level_head(h)[:, :, None]).reshape(len(out), -1)
        if self.noop_head is not None:
            out = torch.cat([out, self.noop_head(h)], dim=-1)
        if mask is not None:
            out = out.masked_fill(~mask, MASK_FILL)
        return out

    def candidates(self, mask: torch.Tensor) -> Candidates:
        """The valid actions of a dense bool mask (n, n_actions), compactly."""
        return Candidates.from_mask(mask, self.d_sae * self.n_levels, self.allow_noop)

    def candidate_logits(self, obs: torch.Tensor, cand: Candidates) -> ActionScores:
        """The logits of each row's candidate actions only (n, k), the same values `logits` gives them (up to float
        rounding); padding gets MASK_FILL. The features are scored once for the union of the rows' candidates."""
        steer = cand.ids[:, : cand.ids.shape[1] - int(cand.noop)].clamp_min(0)
        h = self._norm(obs)
        feature = steer % self.d_sae
        features, where = torch.unique(feature, return_inverse=True)
        if 2 * len(features) > self.d_sae:  # most of the dictionary: one product with all of it beats gathering rows
            out = self._feature_scores(h).gather(1, feature)
        else:
            out = self._feature_scores(h, features).gather(1, where)
        if self.level_head is not None:
            out = out + self.level_head(h).gather(1, steer // self.d_sae)
        if self.noop_head is not None:  # candidates of this policy's masks: their last column is the no-op
            out = torch.cat([out, self.noop_head(h)], dim=-1)
        return ActionScores(out.masked_fill(~cand.valid, MASK_FILL), cand.ids)

    def get_action_and_value(
        self,
        obs: torch.Tensor,
        mask: torch.Tensor | Candidates | None = None,
        action: torch.Tensor | None = None,
        greedy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, ActionScores]:
        """Serves rollouts (action=None: sample, or the greedy choice of policy.greedy_rule) and updates (action
        given: its log-prob). A dense mask of a wide dictionary (`compact`) is turned into `Candidates`; given
        `Candidates`, only they are scored."""
        if mask is not None and not isinstance(mask, Candidates) and self.compact:
            mask = self.candidates(mask)
        if isinstance(mask, Candidates):
            scores = self.candidate_logits(obs, mask)
            column = None if action is None else mask.columns(action)
        else:
            scores, column = ActionScores(self.logits(obs, mask)), action
        dist = Categorical(logits=scores.logits, validate_args=False)  # validation syncs with the device twice
        if column is None:
            noop = mask.noop if isinstance(mask, Candidates) else self.allow_noop
            column = greedy_columns(scores.logits, noop, self.cfg.greedy_rule) if greedy else dist.sample()
        return scores.actions(column), dist.log_prob(column), dist.entropy(), self.get_value(obs), scores
