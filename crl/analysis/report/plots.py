"""PNG plots for the analysis report. Figures are built with the object API on the Agg canvas, so nothing
touches pyplot's global state (other code in the process may use another backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from crl.analysis.offline.critic import CATEGORIES, CATEGORY_LABELS

_COLORS = {
    "correct->correct": "#4c72b0",
    "incorrect->correct": "#55a868",
    "correct->incorrect": "#c44e52",
    "incorrect->incorrect": "#8c8c8c",
}


def _figure(w: float = 6.4, h: float = 3.6, ncols: int = 1) -> tuple[Figure, list]:
    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def feature_tick(feature: int, label: str | None = None, width: int = 36) -> str:
    """A feature on an axis or in a legend: ``1398 ≈'minimum' → 'less'`` (cut to `width`), or the bare id."""
    f = int(feature)
    if f < 0:
        return "no steer"
    text = f"{f} ≈{label}" if label and label != str(f) else str(f)
    return text if len(text) <= width else text[: width - 1] + "…"


def feature_usage_bars(usage: pd.DataFrame, path: str | Path, top_k: int = 20, title: str = "") -> Path:
    """Horizontal bars of the selection share of the top features, colored by mean reward when chosen."""
    top = usage.head(top_k).iloc[::-1]
    fig, (ax,) = _figure(7.2, 0.25 * len(top) + 1.2)
    if top.empty:
        _empty(ax, "no selections")
        return _save(fig, path)
    reward = top["mean_reward"].fillna(0).to_numpy(float)
    span = (reward.min(), reward.max()) if reward.max() > reward.min() else (reward.min() - 1, reward.max() + 1)
    colors = [(0.3, 0.45 + 0.4 * (r - span[0]) / (span[1] - span[0]), 0.7) for r in reward]
    ticks = [feature_tick(f, lab) for f, lab in zip(top["feature"], top["label"], strict=True)]
    ax.barh(range(len(top)), top["share"], color=colors)
    ax.set_yticks(range(len(top)), ticks, fontsize=8)
    ax.set_xlabel("share of decisions (bar color: lighter = higher mean reward)")
    ax.set_title(title or "Top features by selection share")
    return _save(fig, path)


def step_histogram_plot(
    hist: pd.DataFrame, path: str | Path, title: str = "", labels: dict[int, str] | None = None
) -> Path:
    """Where (token step) each top feature was chosen: one line per feature (see `one_step_bars` for runs
    whose every decision is at one step, where these lines would be single dots)."""
    labels = labels or {}
    fig, (ax,) = _figure()
    if hist.empty:
        _empty(ax, "no selections")
        return _save(fig, path)
    for f, g in hist.groupby("feature"):
        ax.plot(g["step"], g["count"], marker="o", ms=3, label=feature_tick(f, labels.get(int(f)), 28))
    ax.set_xlabel("token step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("selections")
    ax.legend(fontsize=7, ncol=2, loc="upper right")  # a fixed spot: loc="best" is slow to compute
    ax.set_title(title or "Token positions where top features are chosen")
    return _save(fig, path)


def one_step_bars(counts: pd.DataFrame, path: str | Path, step: int, labels: dict[int, str] | None = None) -> Path:
    """For runs whose every decision is at one token step (one-token answers, e.g. the compare task): per
    feature (no steering included), how often it was chosen there, split by whether the answer was right.
    `counts`: index feature, columns True / False (correct), values selections."""
    labels = labels or {}
    counts = counts.reindex(columns=[True, False], fill_value=0)
    counts = counts.loc[counts.sum(axis=1).sort_values().index]
    fig, (ax,) = _figure(8.0, max(2.6, 0.32 * len(counts) + 1.4))
    if counts.empty:
        _empty(ax, "no selections")
        return _save(fig, path)
    y = np.arange(len(counts))
    right, wrong = counts[True].to_numpy(), counts[False].to_numpy()
    ax.barh(y, right, color=_COLORS["incorrect->correct"], label="answer correct")
    ax.barh(y, wrong, left=right, color=_COLORS["correct->incorrect"], label="answer wrong")
    ax.set_yticks(y, [feature_tick(f, labels.get(int(f))) for f in counts.index], fontsize=8)
    ax.set_xlabel(f"decisions at token step {step}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside, off the bars
    ax.set_title(f"All decisions are at token step {step}: what was chosen, and the answer", fontsize=10)
    return _save(fig, path)


def baselines_ci(table: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Accuracy and well-formed rate per method with 95% CI error bars (format kept in its own panel)."""
    fig, axes = _figure(8.0, 3.6, ncols=2)
    x = np.arange(len(table))
    for ax, (col, lo, hi, name) in zip(
        axes,
        [("accuracy", "acc_lo", "acc_hi", "accuracy"), ("well_formed", "wf_lo", "wf_hi", "well-formed rate")],
        strict=True,
    ):
        y = table[col].to_numpy(float)
        err = np.vstack([y - table[lo].to_numpy(float), table[hi].to_numpy(float) - y])
        ax.bar(x, y, yerr=np.clip(err, 0, None), capsize=4, color="#4c72b0")
        ax.set_xticks(x, table["method"], rotation=30, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(name)
    fig.suptitle(title or "Methods with 95% CIs")
    return _save(fig, path)


def critic_trajectories(traj: pd.DataFrame, path: str | Path, xlabel: str = "token step") -> Path:
    """Mean critic value vs step per outcome category, with 95% bands."""
    fig, (ax,) = _figure(8.4, 3.6)
    if traj.empty:
        _empty(ax, "no eval steps with a baseline")
        return _save(fig, path)
    for cat in CATEGORIES:
        g = traj[traj["category"] == cat].sort_values("x")
        if g.empty:
            continue
        ax.plot(
            g["x"],
            g["mean"],
            color=_COLORS[cat],
            label=cat if CATEGORY_LABELS[cat] == cat else f"{CATEGORY_LABELS[cat]} ({cat})",
        )
        ax.fill_between(g["x"], g["lo"], g["hi"], color=_COLORS[cat], alpha=0.2)
    ax.set_xlabel(xlabel)
    if xlabel == "token step":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("critic value")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))  # outside, off the lines
    ax.set_title("Critic trajectories by outcome vs no steering")
    return _save(fig, path)


def calibration_curve(table: pd.DataFrame, path: str | Path, ece: float | None = None) -> Path:
    """Binned mean value vs observed mean reward; the diagonal is perfect calibration."""
    fig, (ax,) = _figure(4.4, 4.0)
    if table.empty:
        _empty(ax, "no values")
        return _save(fig, path)
    lo = min(table["bin_lo"].min(), table["mean_value"].min())
    hi = max(table["bin_hi"].max(), table["mean_value"].max())
    ax.plot([lo, hi], [lo, hi], ls="--", color="gray", lw=1)
    size = 20 + 200 * table["n"] / table["n"].max()
    ax.scatter(table["mean_value"], table["mean_reward"], s=size, color="#4c72b0")
    ax.plot(table["mean_value"], table["mean_reward"], color="#4c72b0", lw=1)
    ax.set_xlabel("mean predicted value (bin)")
    ax.set_ylabel("mean final reward")
    ax.set_title("Critic calibration" + (f" (ECE {ece:.3f})" if ece is not None else ""))
    return _save(fig, path)


def layer_comparison(layers: pd.DataFrame, path: str | Path) -> Path:
    """Accuracy (CI), effective number of features, syntactic-token share and coef tolerance per layer."""
    fig, axes = _figure(11.0, 3.2, ncols=4)
    x = layers["layer"].to_numpy()
    y = layers["accuracy"].to_numpy(float)
    err = np.clip(np.vstack([y - layers["acc_lo"].to_numpy(float), layers["acc_hi"].to_numpy(float) - y]), 0, None)
    axes[0].errorbar(x, y, yerr=err, marker="o", capsize=4)
    axes[0].set_ylabel("accuracy (95% CI)")
    axes[1].plot(x, layers["effective_features"], marker="o")
    axes[1].set_ylabel("effective features (2^H)")
    axes[2].plot(x, layers["syntactic_share"], marker="o")
    axes[2].set_ylim(0, 1.05)
    axes[2].set_ylabel("syntactic/format token share")
    axes[3].plot(x, layers["coef_tolerance"], marker="o")
    if "coef_at_ceiling" in layers:  # at the sweep's largest |coef|: a lower bound, drawn as an upward triangle
        up = layers["coef_at_ceiling"].fillna(False).astype(bool).to_numpy()
        axes[3].plot(x[up], layers["coef_tolerance"].to_numpy(float)[up], "^", ms=10, label=">= (sweep max)")
        if up.any():
            axes[3].legend(fontsize=8)
    axes[3].set_ylabel("coef tolerance")
    for ax in axes:
        ax.set_xlabel("layer")
        ax.set_xticks(x)
    return _save(fig, path)


def branch_positions(branches: pd.DataFrame, path: str | Path) -> Path:
    """Histogram of token steps of branch points, split by flip direction."""
    fig, (ax,) = _figure()
    if branches.empty:
        _empty(ax, "no branch points")
        return _save(fig, path)
    steps = branches["step"].to_numpy(int)
    bins = np.arange(steps.min(), steps.max() + 2) - 0.5
    for flip, color in (("to_correct", "#55a868"), ("to_incorrect", "#c44e52")):
        sel = branches[branches["flip"] == flip]["step"].to_numpy(int)
        if len(sel):
            ax.hist(sel, bins=bins, alpha=0.6, color=color, label=flip)
    ax.set_xlabel("token step of the branch point")
    ax.set_ylabel("count")
    ax.legend()
    ax.set_title("Branch-point positions")
    return _save(fig, path)


def coef_sweep_plot(sweep: pd.DataFrame, path: str | Path, tolerance: float | None = None) -> Path:
    """Accuracy and well-formed rate vs steering coefficient."""
    fig, (ax,) = _figure()
    s = sweep.sort_values("coef")
    ax.plot(s["coef"], s["accuracy"], marker="o", label="accuracy")
    ax.plot(s["coef"], s["well_formed_rate"], marker="s", label="well-formed rate")
    if tolerance is not None and not np.isnan(tolerance):
        ax.axvline(tolerance, ls="--", color="gray", label=f"tolerance {tolerance:g}")
    ax.set_xlabel("coefficient")
    ax.set_ylim(0, 1.05)
    ax.legend()
    ax.set_title("Coefficient sweep")
    return _save(fig, path)


def learning_curve(
    val: pd.DataFrame, train: pd.DataFrame, path: str | Path, selected: int | None = None, title: str = ""
) -> Path:
    """Left: greedy val accuracy per evaluation and sampled train reward per update; right: no-steer shares."""
    fig, (ax, ax2) = _figure(10.0, 3.6, ncols=2)
    if len(train):
        ax.plot(train["update"] + 1, train["reward"], color="#8c8c8c", lw=1, label="train reward (sampling)")
    if len(val):
        ax.plot(val["update"], val["accuracy"], "o-", color="#4c72b0", label="val accuracy (greedy)")
        ax2.plot(val["update"], val["noop_share"], "o-", color="#4c72b0", label="val, greedy")
    if len(train):
        ax2.plot(train["update"] + 1, train["noop_share"], color="#8c8c8c", lw=1, label="train, sampling")
    for a in (ax, ax2):
        if selected is not None:
            a.axvline(selected, color="#55a868", ls="--", lw=1, label=f"selected (update {selected})")
        a.set_xlabel("PPO update")
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.legend(fontsize=7, loc="best")
    ax.set_ylabel("accuracy / reward")
    ax.set_title(title or "learning curve", fontsize=9)
    ax2.set_ylabel('share of "no steering" decisions')
    ax2.set_ylim(-0.02, 1.02)
    ax2.set_title("how much the policy steers", fontsize=9)
    return _save(fig, path)


def moved_features_bars(
    table: pd.DataFrame, path: str | Path, picked: set[int], labels: dict[int, str] | None = None, top_k: int = 20
) -> Path:
    """`crl rl-compare`: the top features by |activation shift| (tuned - base) with their 95% CIs; the ones CRL picked
    in orange, the others grey."""
    top = table.sort_values("rank_shift").head(top_k).iloc[::-1]
    fig, (ax,) = _figure(7.2, 0.25 * len(top) + 1.2)
    if top.empty:
        _empty(ax, "no features")
        return _save(fig, path)
    shift = top["shift"].to_numpy(float)
    err = np.abs(np.vstack([shift - top["shift_lo"].to_numpy(float), top["shift_hi"].to_numpy(float) - shift]))
    colors = ["#dd8452" if int(f) in picked else "#8c8c8c" for f in top["feature"]]
    y = np.arange(len(top))
    ax.barh(y, shift, xerr=err, color=colors, ecolor="#444444", capsize=2)
    ax.set_yticks(y, [feature_tick(f, (labels or {}).get(int(f))) for f in top["feature"]], fontsize=7)
    ax.axvline(0, color="#444444", lw=0.8)
    ax.set_xlabel("activation shift at the decision (tuned - base), 95% CI")
    ax.set_title("features GRPO moved most (orange: CRL picked them)", fontsize=9)
    return _save(fig, path)
