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

"No steering" is always allowed when `steering.allow_noop`. The policy still picks one feature per token.
"""

from __future__ import annotations

import torch

from crl.config import MaskingConfig, check_some_action, validate


class FeatureMasker:
    """Callable used by the environment: (acts, rows, steps) -> bool mask (n, n_actions)."""

    def __init__(self, cfg: MaskingConfig, d_sae: int, allow_noop: bool):
        validate(cfg, "masking.")
        check_some_action(cfg, allow_noop)
        self.cfg, self.d_sae, self.allow_noop = cfg, d_sae, allow_noop
        self.share = torch.zeros(d_sae)
        self.update = 0
        self._sum: torch.Tensor | None = None
        self._count: torch.Tensor | None = None

    def begin(self, n_rows: int) -> None:
        self._sum = torch.zeros(n_rows, self.d_sae)
        self._count = torch.zeros(n_rows)

    def cap(self) -> float:
        c = self.cfg
        return c.max_share + (1.0 - c.max_share) * min(1.0, self.update / max(1, c.relax_updates))

    def __call__(self, acts: torch.Tensor, rows: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        n = acts.shape[0]
        feats = torch.ones(n, self.d_sae, dtype=torch.bool)
        if self.cfg.mode != "none":
            acts = acts.detach().float().cpu()
            rows = rows.cpu()
            if self._sum is None or int(rows.max()) >= self._sum.shape[0]:
                self.begin(int(rows.max()) + 1)
            self._sum[rows] += acts
            self._count[rows] += 1
            mean = self._sum[rows] / self._count[rows, None]
            feats = mean > self.cfg.threshold
            if self.cfg.top_k > 0:
                top = acts.topk(min(self.cfg.top_k, self.d_sae), dim=-1).indices
                feats.scatter_(1, top, True)
            if self.cfg.mode == "adaptive":
                over = self.share > self.cap()
                capped = feats & ~over
                feats = torch.where(capped.any(dim=1, keepdim=True), capped, feats)
        if self.allow_noop:
            feats = torch.cat([feats, torch.ones(n, 1, dtype=torch.bool)], dim=1)
        return feats

    def observe_update(self, features: torch.Tensor) -> None:
        """After a PPO update: fold the update's chosen features (no-op excluded) into the shares."""
        counts = torch.bincount(features[(features >= 0) & (features < self.d_sae)], minlength=self.d_sae)
        frac = counts.float() / max(1, int(features.numel()))
        self.share = self.cfg.share_decay * self.share + (1 - self.cfg.share_decay) * frac
        self.update += 1

    def state_dict(self) -> dict:
        return {"share": self.share.clone(), "update": self.update}

    def load_state_dict(self, state: dict) -> None:
        self.share, self.update = state["share"].clone(), int(state["update"])
