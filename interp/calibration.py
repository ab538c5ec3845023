"""Does confidence track accuracy? Calibration, separation and confidence-aware decoding (METHOD §3).

Pure numpy / scipy over per-case arrays:

- :func:`expected_calibration_error` (equal-mass bins), :func:`reliability_bins`,
  :func:`brier_score`, :func:`auroc` (confidence as a score for correctness);
- :func:`bootstrap_ci` (the percentile interval over case resamples that the rest of the
  toolkit uses, ``interp.oscillation``), :func:`mean_ci`, :func:`auroc_by_layer` and
  :func:`first_separating_layer` (the lens's per-layer view);
- :func:`confidence_accuracy_slope`: does mean confidence move with accuracy across levels?
- :func:`vcd_scores`: visual contrastive decoding with the adaptive plausibility cut-off;
- :func:`weighted_vote`, :func:`majority_vote`, :func:`voting_curve`: confidence-weighted
  self-consistency against plain majority voting.

Conventions: ``correct`` is boolean per case; a *probability* (``p`` of ECE and Brier) lies in
[0, 1]; a *score* (AUROC) is any real number, **higher = more confident** (NMLP, the answer
probability, ``-entropy``, ``1 - (1 - max p)``, the margin). Numbers that cannot be computed
(one class only for AUROC, no cases) are ``None``, never invented.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.stats

from interp.oscillation import boot_means, percentile_ci

__all__ = [
    "ECE_BINS", "VCD_ALPHA", "VCD_BETA", "VOTING_NS", "ReliabilityBin", "VotingCurve",
    "auroc", "auroc_by_layer", "auroc_ci", "bootstrap_ci", "brier_score", "confidence_accuracy_slope",
    "expected_calibration_error", "first_separating_layer", "majority_vote", "mean_ci",
    "reliability_bins", "vcd_scores", "voting_curve", "weighted_vote",
]

ECE_BINS = 10
"""Equal-mass bins of the ECE and the reliability diagram **[ours]** (the usual 10; with fewer
cases than bins, one case per bin)."""
VCD_ALPHA = 1.0
"""alpha of visual contrastive decoding (the VCD paper's default)."""
VCD_BETA = 0.1
"""beta of the adaptive plausibility cut-off (the VCD paper's default): only tokens with
``p(y | i) >= beta * max_w p(w | i)`` keep a score."""
VOTING_NS = (1, 2, 4, 8, 16, 32)
"""Sample counts N of the voting curves (Du et al. plot 1..32)."""


# --------------------------------------------------------------------------- inputs
def _scores_and_labels(score: Any, correct: Any, what: str = "confidence") -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(score, dtype=np.float64).ravel()
    y = np.asarray(correct).ravel()
    if s.size != y.size:
        raise ValueError(f"{what} has {s.size} entries but correct has {y.size}; need one per case")
    if y.dtype != bool:
        if not np.all(np.isin(y, (0, 1))):
            raise ValueError("correct must be boolean (or 0/1) per case")
        y = y.astype(bool)
    if np.any(~np.isfinite(s)):
        raise ValueError(f"{what} has NaN or infinite entries; drop those cases first")
    return s, y


def _probabilities(p: Any, correct: Any) -> tuple[np.ndarray, np.ndarray]:
    p, y = _scores_and_labels(p, correct, "p")
    if np.any((p < 0) | (p > 1)):
        raise ValueError("calibration needs probabilities in [0, 1] (e.g. the answer probability), not a raw "
                         "score such as NMLP; rank scores with auroc instead")
    return p, y


# --------------------------------------------------------------------------- calibration
@dataclass(frozen=True)
class ReliabilityBin:
    """One equal-mass bin: its cases' mean confidence and accuracy."""

    n: int
    confidence: float
    accuracy: float
    low: float
    high: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def reliability_bins(p: Any, correct: Any, n_bins: int = ECE_BINS) -> tuple[ReliabilityBin, ...]:
    """Equal-mass bins over the sorted confidences (sizes differ by at most one; ``np.array_split``
    of the stably sorted cases, so tied confidences may straddle an edge **[ours]**).

    ``min(n_bins, n)`` bins; ``low`` / ``high`` are each bin's smallest and largest confidence.
    """
    p, y = _probabilities(p, correct)
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer; got {n_bins!r}")
    if p.size == 0:
        return ()
    order = np.argsort(p, kind="stable")
    out = []
    for idx in np.array_split(order, min(int(n_bins), p.size)):
        out.append(ReliabilityBin(n=int(idx.size), confidence=float(p[idx].mean()), accuracy=float(y[idx].mean()),
                                  low=float(p[idx].min()), high=float(p[idx].max())))
    return tuple(out)


def expected_calibration_error(p: Any, correct: Any, n_bins: int = ECE_BINS) -> float | None:
    """``ECE = sum_b (n_b / n) |acc_b - conf_b|`` over equal-mass bins (:func:`reliability_bins`).

    ``p`` is the probability the model gives its answer (in [0, 1]); None without cases.
    """
    bins = reliability_bins(p, correct, n_bins)
    if not bins:
        return None
    n = sum(b.n for b in bins)
    return float(sum(b.n / n * abs(b.accuracy - b.confidence) for b in bins))


def brier_score(p: Any, correct: Any) -> float | None:
    """``mean (p - 1[correct])^2`` (the Brier score of the answer probability); None without cases."""
    p, y = _probabilities(p, correct)
    if p.size == 0:
        return None
    return float(np.mean((p - y) ** 2))


def auroc(score: Any, correct: Any) -> float | None:
    """Area under the ROC curve of ``score`` as a detector of correct answers.

    The Mann-Whitney form ``(R_correct - n1 (n1 + 1) / 2) / (n1 n0)`` with mid-ranks, so ties
    count one half; 0.5 = the score does not separate right from wrong, 1 = every correct answer
    scores higher. None when every answer is right or every one wrong.
    """
    s, y = _scores_and_labels(score, correct)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return None
    ranks = scipy.stats.rankdata(s)
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


# --------------------------------------------------------------------------- intervals
def _check_boot(n_boot: int, level: float) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ValueError(f"n_boot must be an integer >= 0; got {n_boot!r}")
    if not 0 < level < 1:
        raise ValueError(f"ci_level must lie in (0, 1); got {level!r}")


def bootstrap_ci(statistic: Callable[..., float | None], *arrays: Any, n_boot: int = 1000, seed: int = 0,
                 ci_level: float = 0.95) -> tuple[float, float] | None:
    """Percentile interval of ``statistic(*arrays)`` over ``n_boot`` resamples of the cases.

    The arrays share their first axis (the cases), resampled together with a seeded numpy
    Generator; resamples where the statistic is None or NaN (e.g. AUROC of one class) are
    dropped, and the interval is None when fewer than half of them remain, with fewer than two
    cases, or with ``n_boot = 0``. The percentiles are ``interp.oscillation``'s.
    """
    _check_boot(n_boot, ci_level)
    arrs = [np.asarray(a) for a in arrays]
    n = arrs[0].shape[0] if arrs else 0
    if n < 2 or n_boot == 0:
        return None
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    values = np.array([np.nan if (v := statistic(*(a[i] for a in arrs))) is None else v for i in idx], dtype=float)
    values = values[np.isfinite(values)]
    if values.size < n_boot / 2:
        return None
    return percentile_ci(values, ci_level)


def mean_ci(values: Any, *, n_boot: int = 1000, seed: int = 0, ci_level: float = 0.95) -> dict[str, Any]:
    """``{"n", "mean", "ci_low", "ci_high"}`` of the finite ``values`` (percentile bootstrap).

    The resampled means are ``interp.oscillation``'s (vectorised); they draw the same resamples
    as ``bootstrap_ci(np.mean, values)`` with the same seed, so the two give the same interval.
    """
    _check_boot(n_boot, ci_level)
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    ci = None
    if v.size >= 2 and n_boot > 0:
        ci = percentile_ci(boot_means(v, n_boot, np.random.default_rng(seed)), ci_level)
    return {"n": int(v.size), "mean": float(v.mean()) if v.size else None,
            "ci_low": ci[0] if ci else None, "ci_high": ci[1] if ci else None}


def auroc_ci(score: Any, correct: Any, *, n_boot: int = 1000, seed: int = 0,
             ci_level: float = 0.95) -> tuple[float, float] | None:
    """``bootstrap_ci(auroc, score, correct, ...)`` computed for all resamples at once (the same
    resamples, the same interval: mid-ranks per resample row, one-class resamples dropped)."""
    _check_boot(n_boot, ci_level)
    s, y = _scores_and_labels(score, correct)
    if s.size < 2 or n_boot == 0:
        return None
    idx = np.random.default_rng(seed).integers(0, s.size, size=(n_boot, s.size))
    ss, yy = s[idx], y[idx]
    n1 = yy.sum(axis=1)
    n0 = s.size - n1
    ranks = scipy.stats.rankdata(ss, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = ((ranks * yy).sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0)
    values = values[(n1 > 0) & (n0 > 0)]
    if values.size < n_boot / 2:
        return None
    return percentile_ci(values, ci_level)


def auroc_by_layer(scores: Any, correct: Any, *, n_boot: int = 1000, seed: int = 0,
                   ci_level: float = 0.95) -> list[dict[str, Any]]:
    """AUROC of each layer's confidence for the final answer's correctness, with a bootstrap CI.

    ``scores`` has shape ``(case, layer)`` (the lens's confidence per layer, higher = more
    confident); ``correct`` is per case. One dict per layer: ``layer``, ``auroc``, ``ci_low``,
    ``ci_high`` (the same case resamples for every layer: one seed).
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must be (case, layer); got shape {s.shape}")
    y = np.asarray(correct).ravel()
    out = []
    for layer in range(s.shape[1]):
        ci = auroc_ci(s[:, layer], y, n_boot=n_boot, seed=seed, ci_level=ci_level)
        out.append({"layer": layer, "auroc": auroc(s[:, layer], y),
                    "ci_low": ci[0] if ci else None, "ci_high": ci[1] if ci else None})
    return out


def first_separating_layer(by_layer: Sequence[dict[str, Any]]) -> int | None:
    """The first layer whose AUROC interval lies above 0.5 **[ours]** (its lower bound > 0.5):
    where the lens's confidence first tells right from wrong answers. None when no layer does."""
    for row in by_layer:
        if row.get("ci_low") is not None and row["ci_low"] > 0.5:
            return int(row["layer"])
    return None


# --------------------------------------------------------------------------- tracking
def confidence_accuracy_slope(accuracy: Any, confidence: Any) -> dict[str, Any]:
    """Least-squares slope of mean confidence against accuracy across levels, with its r.

    One point per (perturbation) level: ``accuracy[j]``, ``confidence[j]``. A slope near 0
    while accuracy falls is the miscalibration of Du et al. (confidence does not track
    perception). None (with ``n``) for fewer than 2 levels or no spread in accuracy.
    """
    a = np.asarray(accuracy, dtype=np.float64).ravel()
    c = np.asarray(confidence, dtype=np.float64).ravel()
    if a.size != c.size:
        raise ValueError("accuracy and confidence need one value per level each")
    ok = np.isfinite(a) & np.isfinite(c)
    a, c = a[ok], c[ok]
    if a.size < 2 or np.ptp(a) == 0:
        return {"n": int(a.size), "slope": None, "intercept": None, "r": None}
    fit = scipy.stats.linregress(a, c)
    r = float(fit.rvalue) if np.ptp(c) > 0 else None
    return {"n": int(a.size), "slope": float(fit.slope), "intercept": float(fit.intercept), "r": r}


# --------------------------------------------------------------------------- decoding
def vcd_scores(logp_clean: Any, logp_noised: Any, *, alpha: float = VCD_ALPHA, beta: float = VCD_BETA,
               dim: int = -1) -> np.ndarray:
    """Visual contrastive decoding: ``(1 + alpha) log P(y | i) - alpha log P(y | i')`` (METHOD §3.3).

    ``i`` is the image, ``i'`` its noised copy (the diffusion perturbation); both inputs are
    log-probabilities over the vocabulary on axis ``dim`` (the model's, or one lens layer's:
    a per-layer contrastive lens). The adaptive plausibility cut-off of the VCD paper keeps
    only tokens with ``P(y | i) >= beta P_max(i)``; the rest score ``-inf``. Scores are not
    renormalised **[ours]** (the argmax is what decoding uses), so ``alpha = 0`` gives the plain
    log-probability on the plausible set, and with ``beta = 0`` everywhere.
    """
    lc = np.asarray(logp_clean, dtype=np.float64)
    ln = np.asarray(logp_noised, dtype=np.float64)
    if lc.shape != ln.shape:
        raise ValueError(f"clean and noised log-probs differ in shape: {lc.shape} vs {ln.shape}")
    if alpha < 0 or not 0 <= beta <= 1:
        raise ValueError(f"VCD needs alpha >= 0 and beta in [0, 1]; got alpha={alpha}, beta={beta}")
    with np.errstate(invalid="ignore"):
        score = lc if alpha == 0 else (1 + alpha) * lc - alpha * ln
    cutoff = np.log(beta) + lc.max(axis=dim, keepdims=True) if beta > 0 else -np.inf
    return np.where(lc >= cutoff, score, -np.inf)


def weighted_vote(answers: Sequence[Any], confidences: Sequence[float] | None = None) -> Any:
    """``argmax_k V[k]``, ``V[k] = sum_i C_i 1(A_i = k)`` (METHOD §3.3); ``C_i = 1`` is majority voting.

    Confidences must be >= 0 (higher = more confident: shift NMLP or use the answer probability).
    **[ours]** A tie goes to the answer that reached the top vote first in sample order.
    """
    if len(answers) == 0:
        raise ValueError("voting needs at least one sampled answer (N >= 1)")
    conf = np.ones(len(answers)) if confidences is None else np.asarray(confidences, dtype=np.float64)
    if conf.shape != (len(answers),) or np.any(~np.isfinite(conf)) or np.any(conf < 0):
        raise ValueError("voting needs one finite confidence >= 0 per answer")
    votes: dict[Any, float] = {}
    for a, c in zip(answers, conf):
        votes[a] = votes.get(a, 0.0) + float(c)
    best = max(votes.values())
    return next(a for a in votes if votes[a] == best)


def majority_vote(answers: Sequence[Any]) -> Any:
    """The most frequent answer (ties as :func:`weighted_vote`)."""
    return weighted_vote(answers, None)


@dataclass(frozen=True)
class VotingCurve:
    """Accuracy against the number of samples N for weighted and majority voting.

    ``slope_*``: least-squares slope of accuracy against ``log2 N`` **[ours]** (accuracy points
    per doubling of N), the number Du et al. compare across voting rules.
    """

    ns: tuple[int, ...]
    weighted: tuple[float, ...]
    majority: tuple[float, ...]
    slope_weighted: float | None
    slope_majority: float | None

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


def _slope(ns: Sequence[int], acc: Sequence[float]) -> float | None:
    x = np.log2(np.asarray(ns, dtype=np.float64))
    return float(scipy.stats.linregress(x, acc).slope) if len(ns) >= 2 else None


def voting_curve(answers: Any, confidences: Any, truth: Sequence[Any], *, ns: Sequence[int] = VOTING_NS,
                 n_draws: int = 20, seed: int = 0) -> VotingCurve:
    """Accuracy of weighted and majority voting over N of a case's sampled answers.

    ``answers`` / ``confidences``: ``(case, samples)``; ``truth``: the right answer per case.
    For each N, ``n_draws`` subsets of N samples per case (without replacement, seeded; the
    same subsets for both rules) are voted on, and the accuracy is averaged over cases and
    draws. N must lie in 1..samples.
    """
    a = np.asarray(answers, dtype=object)
    c = np.asarray(confidences, dtype=np.float64)
    if a.ndim != 2 or c.shape != a.shape or len(truth) != a.shape[0]:
        raise ValueError("answers and confidences must be (case, samples), with one truth per case")
    ns = tuple(int(n) for n in ns)
    if not ns or min(ns) < 1 or max(ns) > a.shape[1]:
        raise ValueError(f"every N must lie in 1..{a.shape[1]} (the samples per case); got {ns}")
    rng = np.random.default_rng(seed)
    weighted, majority = [], []
    for n in ns:
        hits_w = hits_m = 0
        for row, conf, right in zip(a, c, truth):
            for _ in range(n_draws):
                pick = rng.choice(a.shape[1], size=n, replace=False)
                hits_w += weighted_vote(list(row[pick]), conf[pick]) == right
                hits_m += majority_vote(list(row[pick])) == right
        weighted.append(hits_w / (a.shape[0] * n_draws))
        majority.append(hits_m / (a.shape[0] * n_draws))
    return VotingCurve(ns=ns, weighted=tuple(weighted), majority=tuple(majority),
                       slope_weighted=_slope(ns, weighted), slope_majority=_slope(ns, majority))
