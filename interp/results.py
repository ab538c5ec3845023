"""Typed results of the analysis functions, each with a JSON-ready ``to_dict()``.

Every result is a frozen dataclass: a run's ``summary.json`` is built from ``to_dict()`` of
these objects, so ``to_dict()`` returns only plain Python types (``dict``, ``list``, ``str``,
``int``, ``float``, ``bool``, ``None``). Numpy scalars become Python numbers and any NaN or
infinity becomes ``None``: a missing number is ``None`` and the result's ``note`` says why
(JSON has no NaN, and ``json.dumps`` would otherwise write the non-standard token ``NaN``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "CorrectInBoth",
    "CurveBin",
    "FollowingCurve",
    "FollowingRatios",
    "OscillationSummary",
    "RegionMean",
    "RobustnessSplit",
]


def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON types: NaN and infinity -> None, numpy -> Python, tuples -> lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


class _Result:
    """Mixin: ``to_dict()`` for a frozen dataclass."""

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON types (NaN/inf -> None, numpy -> Python)."""
        return _jsonable(self)


# --------------------------------------------------------------------------- following.py
@dataclasses.dataclass(frozen=True)
class FollowingRatios(_Result):
    """Macro following ratios (METHOD §1.1).

    ``tfr = n_text / (n_text + n_vision)``, ``vfr = 1 - tfr``; "other" answers are left out
    of the denominator. Both are ``None`` when the denominator is 0 (``note`` says so).
    """

    n_text: int
    n_vision: int
    n_other: int
    tfr: float | None
    vfr: float | None
    note: str | None = None


@dataclasses.dataclass(frozen=True)
class CorrectInBoth(_Result):
    """Outcome of the correct-in-both filter (METHOD §1.1).

    ``kept[i]`` is True when case ``i`` is kept; ``reasons[i]`` is ``None`` for a kept case,
    else one of ``"both_wrong"``, ``"vision_wrong"``, ``"text_wrong"``, ``"not_conflict"``.
    ``dropped`` counts every reason (all four keys are always present).
    """

    kept: tuple[bool, ...]
    reasons: tuple[str | None, ...]
    n_total: int
    n_kept: int
    dropped: dict[str, int]

    @property
    def kept_indices(self) -> tuple[int, ...]:
        """Indices of the kept cases, in input order."""
        return tuple(i for i, k in enumerate(self.kept) if k)


# --------------------------------------------------------------------------- curves.py
@dataclasses.dataclass(frozen=True)
class CurveBin(_Result):
    """One equal-count bin of the empirical following curve.

    ``p_text = n_text / n``; ``ci_low``/``ci_high`` the Wilson score interval at the curve's
    ``ci_level``. ``dh_rel_lo``/``dh_rel_hi`` are the smallest/largest dH_rel in the bin and
    ``dh_rel_mean`` their mean (the x to plot).
    """

    dh_rel_lo: float
    dh_rel_hi: float
    dh_rel_mean: float
    n: int
    n_text: int
    p_text: float
    ci_low: float
    ci_high: float


@dataclasses.dataclass(frozen=True)
class FollowingCurve(_Result):
    """The following curve P(follow text | dH_rel) and its balance point (METHOD §1.4).

    Fields (``None`` wherever a number cannot be estimated; ``note`` says why):

    - ``status``: ``"ok"``, ``"no_crossing"`` (the logistic curve does not cross 0.5 inside the
      observed dH_rel range), ``"separation"`` (the classes are perfectly separated by dH_rel:
      no logistic MLE exists), ``"single_class"``, ``"constant_dh_rel"`` or ``"too_few_cases"``.
    - ``n``: cases used; ``n_text``: of them, text-following; ``n_dropped_nan``: input rows
      dropped because dH_rel or the label was NaN.
    - ``dh_rel_min``/``dh_rel_max``: the observed range.
    - ``a``, ``b``: logistic MLE of ``P(text) = sigmoid(a + b * dH_rel)``.
    - ``balance_point``: ``-a / b`` when it lies inside the observed range, else ``None``.
    - ``balance_point_ci``: ``(low, high)`` percentile bootstrap interval at ``ci_level``.
    - ``n_boot``: resamples drawn; ``n_boot_ok``: resamples with a finite MLE (the others were
      separated or single-class and are left out of the percentiles).
    - ``isotonic_balance_point``: 0.5 crossing of the monotone decreasing (isotonic) fit.
    - ``spearman_rho``/``spearman_p``: Spearman correlation of dH_rel with following text.
    - ``bins``: the equal-count binned curve with Wilson intervals.
    - ``share_decreasing``: share of adjacent bin pairs whose ``p_text`` strictly decreases.
    """

    status: str
    n: int
    n_text: int
    n_dropped_nan: int
    dh_rel_min: float | None
    dh_rel_max: float | None
    a: float | None
    b: float | None
    balance_point: float | None
    balance_point_ci: tuple[float, float] | None
    ci_level: float
    n_boot: int
    n_boot_ok: int
    seed: int
    isotonic_balance_point: float | None
    spearman_rho: float | None
    spearman_p: float | None
    bins: tuple[CurveBin, ...]
    share_decreasing: float | None
    note: str | None = None


@dataclasses.dataclass(frozen=True)
class RobustnessSplit(_Result):
    """Following curves of the cases below / above the median of ``H_t + H_v`` (paper Fig. 4b).

    ``low`` holds the cases with total entropy ``<= median``, ``high`` those ``> median``.
    ``n_dropped_nan`` counts rows dropped because the total entropy was NaN.
    """

    median_total_entropy: float | None
    low: FollowingCurve
    high: FollowingCurve
    n_dropped_nan: int


# --------------------------------------------------------------------------- oscillation.py
@dataclasses.dataclass(frozen=True)
class RegionMean(_Result):
    """Mean switch count in one region with its percentile bootstrap interval.

    ``mean`` is ``None`` when ``n == 0``; the interval is ``None`` when ``n < 2``.
    """

    region: str
    n: int
    mean: float | None
    ci_low: float | None
    ci_high: float | None


@dataclasses.dataclass(frozen=True)
class OscillationSummary(_Result):
    """Per-region mean oscillation counts (METHOD §1.5).

    ``regions`` always holds ``"ambiguous"`` and ``"clear"`` first, then any other region
    label in order of first appearance. ``difference`` is mean(ambiguous) - mean(clear) with
    a bootstrap interval from resampling the two regions independently (``None`` unless both
    regions have at least two cases). ``n_unassigned`` counts cases whose region was ``None``.
    """

    regions: tuple[RegionMean, ...]
    difference: float | None
    difference_ci: tuple[float, float] | None
    n_unassigned: int
    ci_level: float
    n_boot: int
    seed: int
    note: str | None = None

    def region(self, name: str) -> RegionMean:
        """The summary of region ``name``; ``KeyError`` when there is none."""
        for r in self.regions:
            if r.region == name:
                return r
        raise KeyError(f"no region {name!r}; have {[r.region for r in self.regions]}")
