"""The following curve P(follow text | dH_rel) and its balance point (METHOD §1.4).

The paper states the law (P(follow text) falls as dH_rel rises) and defines the balance point
(the dH_rel where P = 0.5) but gives no fitting procedure. Everything here is **[ours]**:

- a per-case logistic fit ``P(text) = sigmoid(a + b * dH_rel)`` by maximum likelihood
  (Newton-Raphson with step halving), balance point ``-a / b``, and a percentile bootstrap
  interval over cases (default 1000 resamples, seeded ``numpy`` Generator), vectorised over
  resamples so that the main job can afford it on every run;
- a model-free estimate: the 0.5 crossing of the monotone decreasing (isotonic) regression;
- an empirical curve of equal-count bins with Wilson intervals (for plots);
- monotonicity: Spearman rho of dH_rel with following text, and the share of adjacent bins
  that decrease;
- "no crossing in the observed range" (``balance_point=None`` and a note) instead of an
  extrapolated number.

Degenerate inputs never raise and never give inf; they return a :class:`FollowingCurve`
whose ``status`` and ``note`` say what is missing and why:

- NaN in dH_rel or in the label: the row is dropped and counted (``n_dropped_nan``) **[ours]**:
  a NaN dH_rel comes from a pass whose entropy could not be computed, and one such case must
  not void the curve of all the others;
- fewer than ``min_cases`` (default 10) usable cases: ``"too_few_cases"``, nothing estimated;
- a single class (all text or all vision): ``"single_class"``; the curve is flat at 0 or 1,
  no logistic MLE exists and nothing crosses 0.5; bins are still reported;
- all dH_rel equal: ``"constant_dh_rel"``; the slope is not identifiable;
- perfect separation (every text case at a dH_rel on one side of every vision case, ties at
  the boundary included): ``"separation"``; the logistic MLE does not exist (|b| -> inf) so
  ``a``, ``b``, ``balance_point`` are ``None``, while the isotonic crossing (the midpoint of
  the gap) is still reported.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.special
import scipy.stats
from jaxtyping import Bool, Float

from interp.results import CurveBin, FollowingCurve, RobustnessSplit

__all__ = [
    "fit_following",
    "fit_logistic",
    "isotonic_decreasing",
    "robustness_split",
    "wilson_interval",
]

MIN_CASES = 10
"""**[ours]** Fewer usable cases than this give no estimate: a two-parameter fit and its
bootstrap are meaningless on a handful of points."""

N_BINS = 10
"""**[ours]** Default number of equal-count bins of the empirical curve."""

MIN_PER_BIN = 5
"""**[ours]** Bins are made larger (fewer) so that each holds at least this many cases."""

MIN_BOOT_SHARE = 0.9
"""**[ours]** The bootstrap interval is reported only when at least this share of resamples
gives a finite MLE; otherwise the interval would describe only the resamples that happen to
overlap, and be too narrow."""

_MAX_ITER = 100
_TOL = 1e-10


# --------------------------------------------------------------------------- logistic MLE
def _separated(x: np.ndarray, y: np.ndarray) -> bool:
    """True when no logistic MLE exists: one class, or the classes are (quasi-)separated in x."""
    x1, x0 = x[y], x[~y]
    if x1.size == 0 or x0.size == 0:
        return True
    return bool(x1.max() <= x0.min() or x0.max() <= x1.min())


def fit_logistic(x: Float[np.ndarray, " n"], y: Bool[np.ndarray, " n"]) -> tuple[float, float] | None:
    """Maximum-likelihood ``(a, b)`` of ``P(y = 1) = sigmoid(a + b x)``.

    Newton-Raphson on the log-likelihood, with step halving whenever a step would lower it,
    started at ``a = logit(mean y)``, ``b = 0``; stops when the largest step is below 1e-10.

    Returns:
        ``(a, b)``, or ``None`` when the MLE does not exist: a single class, or (quasi-)complete
        separation of the classes by ``x`` (which includes a constant ``x``).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=bool)
    if _separated(x, y):
        return None
    yf = y.astype(np.float64)
    mean = yf.mean()
    theta = np.array([np.log(mean / (1.0 - mean)), 0.0])

    def loglik(t: np.ndarray) -> float:
        eta = t[0] + t[1] * x
        return float(np.sum(yf * eta - np.logaddexp(0.0, eta)))

    current = loglik(theta)
    for _ in range(_MAX_ITER):
        p = scipy.special.expit(theta[0] + theta[1] * x)
        r = yf - p
        w = p * (1.0 - p)
        grad = np.array([r.sum(), r @ x])
        hess = np.array([[w.sum(), w @ x], [w @ x, w @ (x * x)]])
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            return None
        scale = 1.0
        while True:
            candidate = theta + scale * step
            value = loglik(candidate)
            if value >= current - 1e-12 or scale < 1e-10:
                break
            scale /= 2.0
        theta, current = candidate, value
        if np.max(np.abs(scale * step)) < _TOL:
            break
    if not np.all(np.isfinite(theta)):
        return None
    return float(theta[0]), float(theta[1])


def _bootstrap_balance_points(
    x: np.ndarray, y: np.ndarray, start: tuple[float, float], n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """``-a/b`` of the logistic MLE on ``n_boot`` case resamples; NaN where no MLE exists.

    All resamples are fitted at once: Newton steps on arrays of shape ``(n_boot, n)``, started
    at the full-sample MLE ``start`` (near every resample's own MLE, so a few steps converge).
    Resamples that are single-class or separated have no MLE and are NaN.
    """
    n = x.size
    idx = rng.integers(0, n, size=(n_boot, n))
    xs = x[idx]
    ys = y[idx]
    x1_max = np.where(ys, xs, -np.inf).max(axis=1)
    x1_min = np.where(ys, xs, np.inf).min(axis=1)
    x0_max = np.where(ys, -np.inf, xs).max(axis=1)
    x0_min = np.where(ys, np.inf, xs).min(axis=1)
    # One class gives +-inf here, and the comparisons below then flag it as separated.
    ok = (x1_max > x0_min) & (x0_max > x1_min)
    xs, yb = xs[ok], ys[ok]
    yf = yb.astype(np.float64)
    a = np.full(xs.shape[0], start[0])
    b = np.full(xs.shape[0], start[1])
    converged = np.zeros(xs.shape[0], dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for _ in range(25):
            p = scipy.special.expit(a[:, None] + b[:, None] * xs)
            r = yf - p
            w = p * (1.0 - p)
            wx = w * xs
            ga = r.sum(axis=1)
            gb = np.einsum("ij,ij->i", r, xs)
            haa = w.sum(axis=1)
            hab = wx.sum(axis=1)
            hbb = np.einsum("ij,ij->i", wx, xs)
            det = haa * hbb - hab * hab
            da = (hbb * ga - hab * gb) / det
            db = (haa * gb - hab * ga) / det
            a = a + da
            b = b + db
            converged = np.abs(da) + np.abs(db) < 1e-9
            if np.all(converged | ~np.isfinite(a + b)):
                break
        # Plain Newton can overshoot on a resample far from the full-sample fit (near
        # separation); those few are refitted one by one with step halving.
        for i in np.flatnonzero(~(converged & np.isfinite(a + b))):
            fit = fit_logistic(xs[i], yb[i])
            a[i], b[i] = fit if fit is not None else (np.nan, np.nan)
        bp = -a / b
    out = np.full(n_boot, np.nan)
    out[ok] = np.where(np.isfinite(bp), bp, np.nan)
    return out


# --------------------------------------------------------------------------- isotonic
def isotonic_decreasing(
    x: Float[np.ndarray, " n"], y: Float[np.ndarray, " n"]
) -> tuple[Float[np.ndarray, " m"], Float[np.ndarray, " m"]]:
    """Least-squares monotone non-increasing fit of ``y`` on ``x`` (pool-adjacent-violators).

    Cases with equal ``x`` are pooled first (a function of x must give them one value).

    Returns:
        ``(xu, fit)``: the sorted distinct values of ``x`` and the fitted, non-increasing
        mean of ``y`` at each.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xu, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=y, minlength=xu.size)
    # Blocks as (sum, weight, length); merge while a block's mean exceeds its predecessor's.
    block_sum: list[float] = []
    block_w: list[float] = []
    block_len: list[int] = []
    for s, c in zip(sums.tolist(), counts.tolist()):
        block_sum.append(s)
        block_w.append(float(c))
        block_len.append(1)
        while len(block_sum) > 1 and block_sum[-1] / block_w[-1] > block_sum[-2] / block_w[-2]:
            s_last, w_last, l_last = block_sum.pop(), block_w.pop(), block_len.pop()
            block_sum[-1] += s_last
            block_w[-1] += w_last
            block_len[-1] += l_last
    fit = np.repeat(np.array(block_sum) / np.array(block_w), block_len)
    return xu, fit


def _crossing(xu: np.ndarray, fit: np.ndarray, level: float = 0.5) -> float | None:
    """Where the non-increasing step fit, linearly interpolated between its points, meets ``level``.

    **[ours]** When the fit equals ``level`` on a run of points, the midpoint of that run.
    ``None`` when the fit stays above or below ``level`` over the whole observed range.
    A constant fit (one pooled block: no evidence of a decrease) has no crossing either.
    """
    if fit.size == 0 or fit.max() == fit.min():
        return None
    at = np.flatnonzero(fit == level)
    if at.size:
        return float((xu[at[0]] + xu[at[-1]]) / 2.0)
    above = np.flatnonzero(fit > level)
    below = np.flatnonzero(fit < level)
    if above.size == 0 or below.size == 0:
        return None
    i, j = above[-1], below[0]  # adjacent, since the fit is non-increasing
    return float(xu[i] + (fit[i] - level) / (fit[i] - fit[j]) * (xu[j] - xu[i]))


# --------------------------------------------------------------------------- bins
def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``k / n`` at confidence ``level``.

    ``(c -+ h)`` with ``z`` the normal quantile, ``c = (p + z^2/2n) / (1 + z^2/n)``,
    ``h = z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/4n^2)``; stays inside [0, 1] and is not
    degenerate at ``k = 0`` or ``k = n``.
    """
    if n <= 0:
        raise ValueError("a Wilson interval needs n >= 1")
    z = float(scipy.stats.norm.ppf(0.5 + level / 2.0))
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def _bins(x: np.ndarray, y: np.ndarray, n_bins: int, level: float) -> tuple[CurveBin, ...]:
    """Equal-count bins over sorted dH_rel (sizes differ by at most one; ties may straddle an edge)."""
    n_bins = max(1, min(n_bins, x.size // MIN_PER_BIN))
    order = np.argsort(x, kind="stable")
    out = []
    for part in np.array_split(order, n_bins):
        xb, yb = x[part], y[part]
        k = int(yb.sum())
        lo, hi = wilson_interval(k, xb.size, level)
        out.append(
            CurveBin(
                dh_rel_lo=float(xb.min()),
                dh_rel_hi=float(xb.max()),
                dh_rel_mean=float(xb.mean()),
                n=int(xb.size),
                n_text=k,
                p_text=k / xb.size,
                ci_low=lo,
                ci_high=hi,
            )
        )
    return tuple(out)


def _share_decreasing(bins: tuple[CurveBin, ...]) -> float | None:
    """Share of adjacent bin pairs whose ``p_text`` strictly decreases; ``None`` with < 2 bins."""
    if len(bins) < 2:
        return None
    p = np.array([b.p_text for b in bins])
    return float(np.mean(np.diff(p) < 0))


# --------------------------------------------------------------------------- the curve
def _clean(dh_rel: Any, follows_text: Any) -> tuple[np.ndarray, np.ndarray, int]:
    """Float dH_rel and boolean labels with NaN rows dropped, and how many were dropped."""
    x = np.asarray(dh_rel, dtype=np.float64).ravel()
    raw = np.asarray(follows_text)
    y = raw.astype(np.float64).ravel()
    if x.size != y.size:
        raise ValueError(f"dh_rel has {x.size} entries but follows_text has {y.size}; need one per case")
    if np.any(np.isinf(x)):
        raise ValueError("dh_rel has infinite entries; dH_rel lies in [-2, 2]")
    keep = ~(np.isnan(x) | np.isnan(y))
    if not np.all((y[keep] == 0) | (y[keep] == 1)):
        raise ValueError("follows_text must hold booleans or 0/1 (NaN rows are dropped)")
    return x[keep], y[keep] == 1, int(x.size - keep.sum())


def fit_following(
    dh_rel: Float[np.ndarray, " n"],
    follows_text: Bool[np.ndarray, " n"],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    ci_level: float = 0.95,
    n_bins: int = N_BINS,
    min_cases: int = MIN_CASES,
) -> FollowingCurve:
    """Fit the following curve and estimate the balance point (METHOD §1.4).

    Args:
        dh_rel: dH_rel per case (dimensionless, in [-2, 2]); NaN rows are dropped and counted.
        follows_text: per case, True (or 1) when the conflict answer follows the text, False
            (0) when it follows the image. Pass only text- or vision-following cases ("other"
            answers are not part of the curve); NaN rows are dropped and counted.
        n_boot: bootstrap resamples of cases for the balance-point interval (0: no interval).
        seed: seed of the ``numpy.random.Generator`` that draws the resamples.
        ci_level: level of the bootstrap and Wilson intervals.
        n_bins: number of equal-count bins (fewer when a bin would hold < 5 cases).
        min_cases: fewer usable cases than this give ``status="too_few_cases"``.

    Returns:
        :class:`~interp.results.FollowingCurve` (see its fields and this module's docstring
        for what each degenerate input gives). ``balance_point`` is ``-a/b`` only when it lies
        in ``[min dH_rel, max dH_rel]``; otherwise ``None`` with ``status="no_crossing"``.
        Its interval is the ``(1 - ci_level)/2`` and ``(1 + ci_level)/2`` percentiles of
        ``-a/b`` over the resamples with a finite MLE, and is reported only alongside a
        balance point and when at least 90% of the resamples have an MLE.

    Raises:
        ValueError: lengths differ, dH_rel is infinite, or a label is not boolean/0/1.
    """
    x, y, n_dropped = _clean(dh_rel, follows_text)
    n, n_text = int(x.size), int(y.sum())
    notes: list[str] = []
    if n_dropped:
        notes.append(f"{n_dropped} case(s) with NaN dH_rel or label dropped")
    common: dict[str, Any] = dict(
        n=n, n_text=n_text, n_dropped_nan=n_dropped, ci_level=ci_level, n_boot=n_boot, seed=seed
    )
    if n < min_cases:
        notes.append(f"too few cases to fit a curve: {n} < {min_cases}")
        return FollowingCurve(
            status="too_few_cases",
            dh_rel_min=float(x.min()) if n else None,
            dh_rel_max=float(x.max()) if n else None,
            a=None, b=None, balance_point=None, balance_point_ci=None, n_boot_ok=0,
            isotonic_balance_point=None, spearman_rho=None, spearman_p=None, bins=(),
            share_decreasing=None, note="; ".join(notes), **common,
        )  # fmt: skip

    lo, hi = float(x.min()), float(x.max())
    bins = _bins(x, y.astype(np.float64), n_bins, ci_level)
    share = _share_decreasing(bins)
    xu, iso = isotonic_decreasing(x, y.astype(np.float64))
    iso_bp = _crossing(xu, iso)
    rho = p_rho = None
    if 0 < n_text < n and lo < hi:
        res = scipy.stats.spearmanr(x, y.astype(np.float64))
        rho, p_rho = float(res.statistic), float(res.pvalue)
    if iso_bp is None:
        notes.append("the isotonic fit does not cross 0.5 in the observed range")

    fit = fit_logistic(x, y)
    a = b = bp = ci = None
    n_boot_ok = 0
    if n_text in (0, n):
        status = "single_class"
        which = "text" if n_text == n else "the image"
        notes.append(f"single class: all {n} cases follow {which}; no logistic fit, no crossing")
    elif lo == hi:
        status = "constant_dh_rel"
        notes.append(f"all cases have dH_rel = {lo:g}; the slope cannot be estimated")
    elif fit is None:
        status = "separation"
        if x[y].max() <= x[~y].min():
            side = f"text cases at dH_rel <= {x[y].max():g}, image cases at >= {x[~y].min():g}"
        else:
            side = f"image cases at dH_rel <= {x[~y].max():g}, text cases at >= {x[y].min():g}"
        notes.append(f"perfect separation ({side}): the logistic MLE does not exist (|b| -> inf)")
    else:
        a, b = fit
        crossing = -a / b if b != 0 else np.inf
        if lo <= crossing <= hi:
            status = "ok"
            bp = float(crossing)
        else:
            status = "no_crossing"
            notes.append(
                f"no crossing in the observed range [{lo:g}, {hi:g}]: the logistic curve stays "
                f"{'above' if (a + b * (lo + hi) / 2) > 0 else 'below'} 0.5 there"
            )
        if b > 0:
            notes.append("b > 0: P(text) rises with dH_rel, against the law")
        if n_boot > 0:
            rng = np.random.default_rng(seed)
            boots = _bootstrap_balance_points(x, y, fit, n_boot, rng)
            finite = boots[np.isfinite(boots)]
            n_boot_ok = int(finite.size)
            if bp is not None:
                if n_boot_ok >= MIN_BOOT_SHARE * n_boot:
                    q = np.percentile(finite, [50 * (1 - ci_level), 50 * (1 + ci_level)])
                    ci = (float(q[0]), float(q[1]))
                else:
                    notes.append(
                        f"no bootstrap interval: only {n_boot_ok} of {n_boot} resamples had a logistic MLE"
                    )
    return FollowingCurve(
        status=status, dh_rel_min=lo, dh_rel_max=hi, a=a, b=b, balance_point=bp,
        balance_point_ci=ci, n_boot_ok=n_boot_ok, isotonic_balance_point=iso_bp,
        spearman_rho=rho, spearman_p=p_rho, bins=bins, share_decreasing=share,
        note="; ".join(notes) or None, **common,
    )  # fmt: skip


def robustness_split(
    dh_rel: Float[np.ndarray, " n"],
    follows_text: Bool[np.ndarray, " n"],
    total_entropy: Float[np.ndarray, " n"],
    **fit_kwargs: Any,
) -> RobustnessSplit:
    """Fit the following curve separately below and above the median of ``H_t + H_v`` (paper Fig. 4b).

    The law should hold in both halves; a balance point that moves a lot between them says
    the curve depends on the overall uncertainty level, not only on the relative one.

    **[ours]** Cases with ``total_entropy <= median`` form the low half, ``> median`` the high
    half (ties at the median go low). Rows with NaN total entropy are dropped and counted
    before the median is taken; NaN dH_rel/labels are dropped inside each fit as usual. Both
    halves are fitted with the same ``fit_kwargs`` (including the seed).

    Args:
        dh_rel, follows_text: as :func:`fit_following`.
        total_entropy: ``H_t + H_v`` per case, in nats.
        **fit_kwargs: passed to :func:`fit_following` (``n_boot``, ``seed``, ...).
    """
    x = np.asarray(dh_rel, dtype=np.float64).ravel()
    y = np.asarray(follows_text).ravel()
    total = np.asarray(total_entropy, dtype=np.float64).ravel()
    if not (x.size == y.size == total.size):
        raise ValueError(
            f"dh_rel, follows_text and total_entropy need one entry per case; got {x.size}, {y.size}, {total.size}"
        )
    keep = ~np.isnan(total)
    x, y, total = x[keep], y[keep], total[keep]
    median = float(np.median(total)) if total.size else None
    low = total <= median if median is not None else np.zeros(0, dtype=bool)
    return RobustnessSplit(
        median_total_entropy=median,
        low=fit_following(x[low], y[low], **fit_kwargs),
        high=fit_following(x[~low], y[~low], **fit_kwargs),
        n_dropped_nan=int((~keep).sum()),
    )
