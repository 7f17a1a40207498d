"""Adaptive Feature Masking (AFM): which features the policy may pick at each token.

The paper names AFM without defining it; CRL defines it as follows. Let a_t in R^{d_sae} be the SAE
activations at the current position of an episode and m_t = (1/(t+1)) * sum_{s<=t} a_s their running
mean over the episode's decisions so far.

- ``none``:     C_t = all features.
- ``active``:   C_t = A_t = {i : m_t[i] > tau}  U  TopK(a_t, K)
                (features active in the current context; tau = `threshold`, K = `top_k`).
- ``adaptive``: C_t = A_t \\ {i : p_i > rho_u}, falling back to A_t if that is empty, where p_i is the
                feature's recent share of selections (an EMA over updates with decay `share_decay` of the
                fraction of training decisions that chose i) and rho_u = rho_0 + (1 - rho_0) * min(1, u / U)
                is a cap that relaxes from rho_0 = `max_share` to 1 (no pressure) over U = `relax_updates`
                PPO updates. Over-used features are masked early, so the policy keeps discovering
                alternatives, and the pressure is gone by the end of training.
- ``fixed``:    C_t = F, the listed features (`features`), at every decision of every episode, training and
                evaluation alike; threshold, top_k and the share cap do not apply. A diagnostic: when the probe and
                the oracle show headroom but PPO over thousands of actions does not learn, restrict the action set to
                a few features known to move the answer and see whether the policy then learns *when* to steer.
- ``shortlist``: ``fixed`` on features `crl train` picks before training (the oracle's greedy set cover of the
                first train prompts the unsteered model gets wrong, crl/analysis/replay/shortlist.py); the run's
                config then says ``fixed`` with those features, so a masker is never built with ``shortlist``.

"No steering" is always allowed when `steering.allow_noop`. The policy still picks one feature per token.

The running means live on the device of the activations (the model's), so a decision's mask is computed there with no
transfer to the host; the selection shares (updated once per PPO update) stay on the host, with a device copy of the
over-cap features made once per update. ``fixed`` keeps one bool row (its features and the no-op) on that device,
made once, and repeats it over a decision's rows.

Each mask is over features (n, d_sae + noop); the environment repeats its feature columns over the coefficient levels
(action id = level * d_sae + feature), so every level of a candidate feature is a valid action.
"""

from __future__ import annotations

import torch

from crl.config import ConfigError, MaskingConfig, check_some_action, validate
from crl.errors import CRLError


class FeatureMasker:
    """Callable used by the environment: (acts, rows, steps) -> bool mask (n, n_actions)."""

    def __init__(self, cfg: MaskingConfig, d_sae: int, allow_noop: bool):
        validate(cfg, "masking.")
        if cfg.mode == "shortlist":
            raise CRLError("masking=shortlist has no features yet: `crl train` picks them before building the masking")
        check_some_action(cfg, allow_noop)
        self.cfg, self.d_sae, self.allow_noop = cfg, d_sae, allow_noop
        self.share = torch.zeros(d_sae)
        self.update = 0
        self._sum: torch.Tensor | None = None
        self._count: torch.Tensor | None = None
        self._rows: int | None = None
        self._over: torch.Tensor | None = None  # the over-cap features' ids on the activations' device (cached)
        self._fixed: torch.Tensor | None = None  # mode=fixed: the one mask row (d_sae + noop,), on the host
        if cfg.mode == "fixed":
            features = list(cfg.features or [])
            for f in features:
                if f >= d_sae:
                    why = f"feature {f} is not in the SAE, which has {d_sae} features"
                    raise ConfigError("masking.features", features, why, f"ids in 0..{d_sae - 1}")
            self._fixed = torch.zeros(d_sae + int(allow_noop), dtype=torch.bool)
            self._fixed[features] = True
            self._fixed[d_sae:] = True  # the no-op, when there is one

    def begin(self, n_rows: int) -> None:
        """Start fresh running means for `n_rows` rows (allocated on the device of the first activations)."""
        self._rows, self._sum, self._count = n_rows, None, None

    def cap(self) -> float:
        c = self.cfg
        return c.max_share + (1.0 - c.max_share) * min(1.0, self.update / max(1, c.relax_updates))

    def __call__(self, acts: torch.Tensor, rows: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        # O(n * d_sae) elementwise work, no Python loop over features: at 131k it is a small share of a decision.
        n, device = acts.shape[0], acts.device
        if self._fixed is not None:  # the same row at every decision: moved to the device once, then repeated
            if self._fixed.device != device:
                self._fixed = self._fixed.to(device)
            return self._fixed.expand(n, -1).clone()
        out = torch.ones(n, self.d_sae + int(self.allow_noop), dtype=torch.bool, device=device)
        if self.cfg.mode != "none":
            feats = out[:, : self.d_sae]  # a view: written in place, the no-op column stays True
            acts = acts.detach().float()
            rows = rows.to(device)
            # Without begin() the rows' range is read from them (a sync, once); on the CPU it is checked every call.
            if self._rows is None or device.type == "cpu":
                self._rows = max(self._rows or 0, int(rows.max()) + 1)
            if self._sum is None or self._sum.device != device or self._rows > self._sum.shape[0]:
                self._sum = torch.zeros(self._rows, self.d_sae, device=device)
                self._count = torch.zeros(self._rows, device=device)
            self._sum.index_add_(0, rows, acts)  # rows are distinct: the same sums as _sum[rows] += acts
            self._count[rows] += 1
            torch.gt(self._sum[rows] / self._count[rows, None], self.cfg.threshold, out=feats)
            if self.cfg.top_k > 0:
                top = acts.topk(min(self.cfg.top_k, self.d_sae), dim=-1).indices
                feats.scatter_(1, top, True)
            if self.cfg.mode == "adaptive":
                # Shares sum to at most 1 and the cap is at least max_share, so few features are ever over it: mask
                # those columns in the rows that keep another candidate (the rest fall back to their full set).
                over = self._over_cap(device)
                if len(over):
                    hit = feats[:, over]
                    feats[:, over] = False
                    feats[:, over] = hit & ~feats.any(1, keepdim=True)
        return out

    def _over_cap(self, device: torch.device) -> torch.Tensor:
        if self._over is None or self._over.device != device:
            self._over = (self.share > self.cap()).nonzero().squeeze(1).to(device)
        return self._over

    def observe_update(self, features: torch.Tensor) -> None:
        """After a PPO update: fold the update's chosen features (no-op excluded) into the shares."""
        counts = torch.bincount(features[(features >= 0) & (features < self.d_sae)], minlength=self.d_sae)
        frac = counts.float() / max(1, int(features.numel()))
        self.share = self.cfg.share_decay * self.share + (1 - self.cfg.share_decay) * frac
        self.update += 1
        self._over = None

    def state_dict(self) -> dict:
        return {"share": self.share.clone(), "update": self.update}

    def load_state_dict(self, state: dict) -> None:
        self.share, self.update = state["share"].clone(), int(state["update"])
        self._over = None
