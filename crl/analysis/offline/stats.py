"""Confidence intervals and paired tests for CRL vs baselines.

Definitions (all seeded, so a report is reproducible):

- `bootstrap_ci`: percentile bootstrap of the mean, `n_boot` resamples of the values with replacement.
- `aggregate_seeds`: accuracy per seed (mean over that seed's prompts), reported mean = the mean of the
  per-seed accuracies (every seed weighs the same). Its CI is a two-way bootstrap over the crossed
  seeds x prompts design: each resample draws seeds with replacement *and* prompts with replacement (one
  prompt draw shared by all seeds, because every seed runs the same prompts), so the interval covers both
  seed-to-seed and prompt-to-prompt variation. With one seed it is the plain prompt bootstrap.
- `paired_bootstrap`: per-prompt differences d_i = a_i - b_i (a_i, b_i are the per-prompt means over seeds),
  resampled over prompts; CI is the percentile interval of mean(d*), and the two-sided p-value uses the
  null-centred bootstrap, p = (1 + #{|mean(d*) - mean(d)| >= |mean(d)|}) / (n_boot + 1).
- `seeds_fixed_bootstrap`: the mean over seeds of per-seed paired differences, seeds fixed, prompts resampled
  within each seed (one draw shared by seeds that ran the same prompts, else one per seed); CI and p as above.
- `mcnemar_exact`: exact two-sided McNemar test on binary pairs: the exact binomial test of the discordant
  pairs, p = min(1, 2 * BinomCDF(min(n01, n10); n01 + n10, 1/2)) (`scipy.stats.binomtest`); p = 1 when
  there are no discordant pairs. Pairs are (seed, prompt): a method with one
  seed (e.g. one trained policy, or deterministic no-steering) is paired with every seed of the other;
  otherwise seeds are matched by id, and failing that in sorted order. Each seed pair gives its own test
  (pairs of different seeds on the same prompt are not independent), and the table reports the largest p
  over seed pairs, i.e. a difference counts as significant only if it is significant for every pair.
- `format_decomposition`: splits the change in correctness vs a baseline into format fixes (baseline was
  malformed, CRL correct) and answer fixes (baseline well-formed but wrong, CRL correct), and the same for
  breaks, so format repairs are kept apart from real gains.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy.stats import binomtest
from scipy.stats import t as student_t

from crl.errors import CRLError

_CHUNK = 2_000_000  # bootstrap index entries per chunk, to bound memory on long value arrays


@dataclass
class StatsConfig:
    n_boot: int = 2000
    alpha: float = 0.05
    seed: int = 0


@dataclass
class CI:
    mean: float
    lo: float
    hi: float
    n: int

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{k}": v for k, v in asdict(self).items()}


def _as_array(values: np.ndarray | pd.Series | list[float]) -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    return x[~np.isnan(x)]


def t_half_width(values: np.ndarray, alpha: float = 0.05) -> float:
    """Half the width of the t interval of the mean over seeds (NaN with fewer than two).

    >>> round(t_half_width(np.array([0.5, 0.7])), 3), t_half_width(np.array([0.5]))
    (1.271, nan)
    """
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return float("nan")
    return float(student_t.ppf(1 - alpha / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))


def bootstrap_means(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """`n_boot` bootstrap means of `values` (vectorized, chunked so memory stays bounded)."""
    x = _as_array(values)
    rng = np.random.default_rng(seed)
    n = len(x)
    out = np.empty(n_boot)
    rows = max(1, _CHUNK // max(n, 1))
    for start in range(0, n_boot, rows):
        stop = min(n_boot, start + rows)
        out[start:stop] = x[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return out


def bootstrap_ci(values: np.ndarray | pd.Series | list[float], cfg: StatsConfig | None = None) -> CI:
    """Mean with a percentile-bootstrap CI. NaNs are dropped; an empty input raises CRLError."""
    cfg = cfg or StatsConfig()
    x = _as_array(values)
    if len(x) == 0:
        raise CRLError("cannot compute a confidence interval of no values; check that the phase has episodes")
    if len(x) == 1 or np.all(x == x[0]):
        return CI(float(x.mean()), float(x.mean()), float(x.mean()), len(x))
    boots = bootstrap_means(x, cfg.n_boot, cfg.seed)
    lo, hi = np.quantile(boots, [cfg.alpha / 2, 1 - cfg.alpha / 2])
    return CI(float(x.mean()), float(lo), float(hi), len(x))


def wilson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson interval of k successes in n (`scipy.stats.binomtest`); (nan, nan) when n = 0.

    >>> [round(x, 3) for x in wilson(2, 10)]
    [0.057, 0.51]
    """
    if n == 0:
        return math.nan, math.nan
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=1 - alpha, method="wilson")
    return float(ci.low), float(ci.high)


@dataclass
class PairedTest:
    diff: float  # mean(a) - mean(b) over the shared prompts
    lo: float
    hi: float
    p: float
    n: int


def paired_bootstrap(a: np.ndarray, b: np.ndarray, cfg: StatsConfig | None = None) -> PairedTest:
    """Paired bootstrap of mean(a - b): CI and two-sided null-centred p-value (see module docstring)."""
    cfg = cfg or StatsConfig()
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise CRLError(f"paired samples must be 1-d and the same length (got {a.shape} and {b.shape})")
    if len(a) == 0:
        raise CRLError("no paired prompts to compare; the methods must run on the same prompt_ids")
    d = a - b
    return _percentile_test(bootstrap_means(d, cfg.n_boot, cfg.seed), float(d.mean()), len(d), cfg)


def _percentile_test(boots: np.ndarray, obs: float, n: int, cfg: StatsConfig) -> PairedTest:
    """The percentile CI of the bootstrap means `boots` and the null-centred two-sided p-value of `obs`."""
    lo, hi = np.quantile(boots, [cfg.alpha / 2, 1 - cfg.alpha / 2])
    extreme = np.abs(boots - obs) >= abs(obs) - 1e-12
    p = (1 + int(extreme.sum())) / (cfg.n_boot + 1) if obs != 0 else 1.0
    return PairedTest(obs, float(lo), float(hi), float(min(1.0, p)), n)


def seeds_fixed_bootstrap(diffs: list[np.ndarray], shared: bool, cfg: StatsConfig | None = None) -> PairedTest:
    """The mean over seeds of each seed's mean paired difference (every seed weighs the same; `diffs`: one array of
    per-prompt differences a - b per seed), with the percentile CI and the null-centred p-value of a bootstrap that
    resamples prompts within each seed and holds the seeds fixed. `shared`: every seed ran the same prompts, aligned
    in one order, so one draw of prompt positions serves every seed (a prompt's correlation across seeds is kept: the
    bootstrap of the per-prompt means over seeds); otherwise each seed is drawn on its own (stratified). n: the
    (seed, prompt) pairs.

    >>> t = seeds_fixed_bootstrap([np.array([1.0, 0.0]), np.array([0.0, 0.0, 0.0, 0.0])], shared=False)
    >>> t.diff, t.n, t.lo >= 0
    (0.25, 6, True)
    """
    cfg = cfg or StatsConfig()
    ds = [np.asarray(d, dtype=float) for d in diffs]
    if not ds or any(d.ndim != 1 or len(d) == 0 for d in ds):
        raise CRLError("seeds_fixed_bootstrap needs one non-empty 1-d array of paired differences per seed")
    obs = float(np.mean([d.mean() for d in ds]))
    if shared:
        if len({len(d) for d in ds}) > 1:
            raise CRLError(f"shared prompts need one length per seed (got {[len(d) for d in ds]})")
        boots = bootstrap_means(np.mean(ds, axis=0), cfg.n_boot, cfg.seed)
    else:  # one stream per seed: with one seed for all, same-length seeds would share their draws
        boots = np.mean([bootstrap_means(d, cfg.n_boot, cfg.seed + i) for i, d in enumerate(ds)], axis=0)
    return _percentile_test(boots, obs, sum(len(d) for d in ds), cfg)


@dataclass
class McNemar:
    n01: int  # a wrong, b right
    n10: int  # a right, b wrong
    p: float


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> McNemar:
    """Exact McNemar test on paired binary outcomes a (e.g. CRL correct) and b (baseline correct)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise CRLError(f"McNemar needs paired outcomes of the same length (got {a.shape} and {b.shape})")
    n10 = int((a & ~b).sum())
    n01 = int((~a & b).sum())
    n = n01 + n10
    p = 1.0 if n == 0 else float(binomtest(min(n01, n10), n, 0.5).pvalue)  # binomtest needs n >= 1
    return McNemar(n01, n10, p)


def seed_prompt_matrix(episodes: pd.DataFrame, value: str = "correct") -> pd.DataFrame:
    """seeds x prompt_ids table of the per-(seed, prompt) mean of `value` (NaN where not run)."""
    if episodes.empty:
        raise CRLError("no episodes to aggregate; check the phase name and that the run logged it")
    df = episodes.assign(_v=episodes[value].astype(float))
    return df.pivot_table(index="seed", columns="prompt_id", values="_v", aggfunc="mean")


@dataclass
class SeedAggregate:
    mean: float  # mean of per-seed means
    lo: float
    hi: float
    n_seeds: int
    n_prompts: int
    per_seed: dict[int, float]


def aggregate_seeds(episodes: pd.DataFrame, value: str = "correct", cfg: StatsConfig | None = None) -> SeedAggregate:
    """Per-seed mean of `value`, their mean, and the two-way (seeds x prompts) bootstrap CI."""
    cfg = cfg or StatsConfig()
    mat = seed_prompt_matrix(episodes, value)
    m = mat.to_numpy(dtype=float)
    mask = ~np.isnan(m)
    m0 = np.where(mask, m, 0.0)
    per_seed = {int(s): float(np.nanmean(row)) for s, row in zip(mat.index, m, strict=True)}
    mean = float(np.mean(list(per_seed.values())))
    n_s, n_p = m.shape
    rng = np.random.default_rng(cfg.seed)
    ws = rng.multinomial(n_s, np.full(n_s, 1 / n_s), size=cfg.n_boot).astype(float)
    wp = rng.multinomial(n_p, np.full(n_p, 1 / n_p), size=cfg.n_boot).astype(float)
    num = ((ws @ m0) * wp).sum(axis=1)
    den = ((ws @ mask.astype(float)) * wp).sum(axis=1)
    boots = num[den > 0] / den[den > 0]
    lo, hi = np.quantile(boots, [cfg.alpha / 2, 1 - cfg.alpha / 2]) if len(boots) else (mean, mean)
    return SeedAggregate(mean, float(min(lo, mean)), float(max(hi, mean)), n_s, n_p, per_seed)


def _per_prompt(episodes: pd.DataFrame, value: str) -> pd.Series:
    return episodes.assign(_v=episodes[value].astype(float)).groupby("prompt_id")["_v"].mean()


def _seed_pairs(seeds_a: list[int], seeds_b: list[int]) -> list[tuple[int, int]]:
    if len(seeds_a) == 1:
        return [(seeds_a[0], s) for s in sorted(seeds_b)]
    if len(seeds_b) == 1:
        return [(s, seeds_b[0]) for s in sorted(seeds_a)]
    common = sorted(set(seeds_a) & set(seeds_b))
    if common:
        return [(s, s) for s in common]
    return list(zip(sorted(seeds_a), sorted(seeds_b), strict=False))


def paired_mcnemar(a: pd.DataFrame, b: pd.DataFrame) -> list[tuple[int, int, McNemar]]:
    """McNemar per seed pair (see module docstring); each is (seed_a, seed_b, result)."""
    ma, mb = seed_prompt_matrix(a), seed_prompt_matrix(b)
    out = []
    for sa, sb in _seed_pairs(list(ma.index), list(mb.index)):
        ra, rb = ma.loc[sa].dropna(), mb.loc[sb].dropna()
        shared = ra.index.intersection(rb.index)
        if len(shared):
            # Repeated episodes of one prompt in one seed are averaged; > 0.5 counts as correct.
            out.append((int(sa), int(sb), mcnemar_exact(ra[shared] > 0.5, rb[shared] > 0.5)))
    return out


def _state(df: pd.DataFrame) -> pd.Series:
    """'C' correct, 'W' well-formed but wrong, 'M' malformed, per (seed, prompt_id) (first episode)."""
    first = df.drop_duplicates(["seed", "prompt_id"]).set_index(["seed", "prompt_id"])
    correct, formed = first["correct"].astype(bool), first["well_formed"].astype(bool)
    return pd.Series(np.where(correct, "C", np.where(formed, "W", "M")), index=first.index)


def format_decomposition(crl: pd.DataFrame, base: pd.DataFrame) -> dict[str, float]:
    """Change vs a baseline split into format and answer fixes/breaks, as fractions of (seed, prompt) pairs.

    States: C correct, W well-formed but wrong, M malformed. format_fixes = M->C, answer_fixes = W->C,
    format_breaks = C->M, answer_breaks = C->W, reformatted = M->W (format repaired, still wrong).
    accuracy change = format_fixes + answer_fixes - format_breaks - answer_breaks. Seeds are paired as
    for McNemar.
    """
    sa, sb = _state(crl), _state(base)
    seeds_a = sorted(set(sa.index.get_level_values(0)))
    seeds_b = sorted(set(sb.index.get_level_values(0)))
    pairs = []
    for s_a, s_b in _seed_pairs(seeds_a, seeds_b):
        xa, xb = sa.loc[s_a], sb.loc[s_b]
        shared = xa.index.intersection(xb.index)
        pairs.append(xb[shared].to_numpy() + xa[shared].to_numpy())  # "<base><crl>", e.g. "MC"
    trans = np.concatenate(pairs) if pairs else np.array([], dtype=str)
    n = max(len(trans), 1)
    frac = lambda code: float((trans == code).sum() / n)
    return {
        "format_fixes": frac("MC"),
        "answer_fixes": frac("WC"),
        "format_breaks": frac("CM"),
        "answer_breaks": frac("CW"),
        "reformatted": frac("MW"),
        "deformatted": frac("WM"),
    }


def _acc_wf(df: pd.DataFrame) -> float:
    wf = df[df["well_formed"].astype(bool)]
    return float(wf["correct"].astype(float).mean()) if len(wf) else float("nan")


def method_table(
    methods: dict[str, pd.DataFrame], reference: str = "crl", cfg: StatsConfig | None = None
) -> pd.DataFrame:
    """One row per method: accuracy and well-formed rate with CIs, and the paired tests vs `reference`.

    `methods` maps a method name to its episodes (columns prompt_id, seed, correct, well_formed, reward).
    Accuracy among well-formed completions is reported separately so format repairs are not read as gains.
    """
    cfg = cfg or StatsConfig()
    if reference not in methods:
        raise CRLError(f"the reference method '{reference}' has no episodes; run its eval first")
    ref = methods[reference]
    rows = []
    for name, eps in methods.items():
        acc = aggregate_seeds(eps, "correct", cfg)
        wf = aggregate_seeds(eps, "well_formed", cfg)
        row = {
            "method": name,
            "n_seeds": acc.n_seeds,
            "n_prompts": acc.n_prompts,
            "accuracy": acc.mean,
            "acc_lo": acc.lo,
            "acc_hi": acc.hi,
            "well_formed": wf.mean,
            "wf_lo": wf.lo,
            "wf_hi": wf.hi,
            "acc_among_well_formed": _acc_wf(eps),
            "mean_reward": float(eps["reward"].astype(float).mean()),
        }
        if name != reference:
            pa, pb = _per_prompt(ref, "correct"), _per_prompt(eps, "correct")
            shared = pa.index.intersection(pb.index)
            if len(shared) == 0:
                raise CRLError(
                    f"'{reference}' and '{name}' share no prompt_ids; baselines must run on the same "
                    "split and prompts as the policy"
                )
            test = paired_bootstrap(pa[shared].to_numpy(), pb[shared].to_numpy(), cfg)
            mcn = paired_mcnemar(ref, eps)
            row.update(
                {
                    "diff_vs_ref": test.diff,
                    "diff_lo": test.lo,
                    "diff_hi": test.hi,
                    "p_bootstrap": test.p,
                    "n_paired": test.n,
                    "mcnemar_p_max": max((m.p for _, _, m in mcn), default=float("nan")),
                    "mcnemar_per_seed": "; ".join(f"s{sa}/s{sb}: {m.n10}+ {m.n01}- p={m.p:.3g}" for sa, sb, m in mcn),
                }
            )
            row.update(format_decomposition(ref, eps))
        rows.append(row)
    return pd.DataFrame(rows)


# -- many paired differences at once (crl rl-compare: one per SAE feature) ---------------------------------------------


def _boot_weights(n: int, cfg: StatsConfig) -> np.ndarray:
    """(n_boot, n) resampling counts: row b says how often bootstrap resample b draws each of the n items."""
    rng = np.random.default_rng(cfg.seed)
    return rng.multinomial(n, np.full(n, 1 / n), size=cfg.n_boot).astype(float)


def bootstrap_columns(d: np.ndarray, cfg: StatsConfig | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`paired_bootstrap` of every column of `d` (n items x k paired differences) at once, one shared resampling of
    the items: (lo, hi, p) per column, p the null-centred two-sided p-value (1 where the mean is exactly 0).

    >>> lo, hi, p = bootstrap_columns(np.array([[1.0, 0.0], [1.2, 0.0], [0.9, 0.0], [1.1, 0.0]]))
    >>> bool(lo[0] > 0.8), float(p[1])
    (True, 1.0)
    """
    cfg = cfg or StatsConfig()
    d = np.asarray(d, dtype=float)
    if d.ndim != 2 or len(d) == 0:
        raise CRLError(f"bootstrap_columns needs an (items x columns) array with items (got shape {d.shape})")
    n = len(d)
    obs = d.mean(axis=0)
    boots = _boot_weights(n, cfg) @ d / n
    lo, hi = np.quantile(boots, [cfg.alpha / 2, 1 - cfg.alpha / 2], axis=0)
    extreme = (np.abs(boots - obs) >= np.abs(obs) - 1e-12).sum(axis=0)
    p = np.where(obs != 0, np.minimum(1.0, (1 + extreme) / (cfg.n_boot + 1)), 1.0)
    return lo, hi, p


def bh_qvalues(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values (false discovery rate) of p-values.

    >>> bh_qvalues(np.array([0.01, 0.04, 0.03, 0.5])).round(3).tolist()
    [0.04, 0.053, 0.053, 0.5]
    """
    p = np.asarray(p, dtype=float)
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p)
    ranked = p[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(q, 1.0)
    return out


def sign_flip_test(d: np.ndarray, n_perm: int = 2000, seed: int = 0) -> float:
    """Two-sided permutation p-value that paired difference vectors (n items x k) have mean 0: the statistic is
    ||mean(d)||, its null distribution that of ||mean(s_i d_i)|| over random signs s_i (exchangeable pairs), and
    p = (1 + #{null >= observed}) / (1 + n_perm); 1 when every difference is 0.

    >>> sign_flip_test(np.zeros((5, 3)))
    1.0
    >>> sign_flip_test(np.ones((12, 2))) < 0.01
    True
    """
    d = np.asarray(d, dtype=float)
    d = d.reshape(len(d), -1)
    obs = float(np.linalg.norm(d.mean(axis=0)))
    if obs == 0.0:
        return 1.0
    rng = np.random.default_rng(seed)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n_perm, len(d)))
    null = np.linalg.norm(signs @ d / len(d), axis=1)
    return float((1 + int((null >= obs - 1e-12).sum())) / (1 + n_perm))


def ratio_bootstrap(num: np.ndarray, den: np.ndarray, cfg: StatsConfig | None = None) -> CI:
    """mean(num) / mean(den) over paired items, with a percentile-bootstrap CI resampling items (resamples whose
    denominator is 0 are dropped); NaN throughout when mean(den) is 0.

    >>> ratio_bootstrap(np.array([1.0, 1.0, 1.0]), np.array([2.0, 2.0, 2.0])).mean
    0.5
    """
    cfg = cfg or StatsConfig()
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    if num.shape != den.shape or num.ndim != 1 or len(num) == 0:
        raise CRLError(f"ratio_bootstrap needs two 1-d arrays of one nonzero length (got {num.shape}, {den.shape})")
    n = len(num)
    if den.mean() == 0:
        nan = float("nan")
        return CI(nan, nan, nan, n)
    ratio = float(num.mean() / den.mean())
    w = _boot_weights(n, cfg)
    bn, bd = w @ num, w @ den
    ok = bd != 0
    if not ok.any():
        return CI(ratio, ratio, ratio, n)
    lo, hi = np.quantile(bn[ok] / bd[ok], [cfg.alpha / 2, 1 - cfg.alpha / 2])
    return CI(ratio, float(lo), float(hi), n)
