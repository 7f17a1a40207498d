"""How well value estimates predict returns, shared by PPO's per-update metrics and the offline critic analysis.

NumPy only (no torch), so reading a run directory never imports the training stack.
"""

from __future__ import annotations

import numpy as np


def explained_variance(values: np.ndarray, returns: np.ndarray) -> float:
    """1 - Var(R - V) / Var(R): the share of the returns' variance the values explain (1 is perfect, 0 is no
    better than predicting the mean); NaN when the returns do not vary. Computed in the inputs' float precision,
    so PPO's float32 metric is what it always was."""
    v, r = np.asarray(values), np.asarray(returns)
    if r.dtype.kind != "f":
        r = r.astype(float)
    var = r.var()
    return float("nan") if var == 0 or r.size < 2 else float(1 - (r - v).var() / var)
