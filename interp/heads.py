"""Statistics over per-head measurements: means with intervals split by followers, the heads that
push hardest, random control heads, and what knocking heads out does to text-following.

Pure numpy (no torch): inputs are arrays with the case on axis 0 (e.g. a direct logit
attribution `heads` array, cases x layer x head, or an attention mass `of(query, span)`).

- `mean_by_label`: per group of cases ("text" / "vision" followers of the conflict pass, and
  "all"), the mean over cases of every cell, with a percentile bootstrap interval over cases
  (**[ours]** 1000 resamples, seeded; the same percentile method as
  `interp.oscillation.summarise_oscillations`), and the text-minus-vision difference with an
  interval from resampling the two groups independently.
- `top_heads`: the k heads with the largest (text-ward, `sign=+1`) or smallest (vision-ward,
  `sign=-1`) mean value; `random_heads`: k distinct heads outside a set, seeded.
- `HeadKnockoutReport`: TFR before / after a knockout over the kept cases and the shift's paired
  bootstrap interval (`interp.following.tfr_shift_ci`, as `interp.steering` reports steering);
  `shift_difference_ci`: the paired interval of (shift of one knockout) - (shift of another),
  cases resampled together for all three conditions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
from jaxtyping import Float

from interp.following import tfr_shift_ci, tfr_vfr

__all__ = ["GroupMean", "LabelMeans", "mean_by_label", "top_heads", "random_heads", "HeadKnockoutReport",
           "knockout_report", "shift_difference_ci"]

GROUPS: tuple[str, ...] = ("text", "vision", "all")


@dataclass(frozen=True)
class GroupMean:
    """Mean over the `n` cases of a group, cell by cell, with its bootstrap interval (NaN when n = 0;
    no interval when n < 2)."""

    n: int
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray


@dataclass(frozen=True)
class LabelMeans:
    """`groups["text" | "vision" | "all"]`, and text minus vision with its interval."""

    groups: dict[str, GroupMean]
    difference: np.ndarray
    difference_low: np.ndarray
    difference_high: np.ndarray
    level: float

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"level": self.level}
        for name, g in self.groups.items():
            out[name] = {"n": g.n, "mean": _list(g.mean), "low": _list(g.low), "high": _list(g.high)}
        out["text_minus_vision"] = {"mean": _list(self.difference), "low": _list(self.difference_low),
                                    "high": _list(self.difference_high)}
        return out


def _list(a: np.ndarray) -> Any:
    return [None if not np.isfinite(x) else float(x) for x in a.ravel()] if a.ndim == 1 else \
        [_list(row) for row in a]


def _boot_cell_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, *cells) means of resampled cases, drawn as multinomial counts so memory is
    n_boot x cells whatever the number of cases."""
    n = values.shape[0]
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)  # (n_boot, n)
    return (counts @ values.reshape(n, -1) / n).reshape(n_boot, *values.shape[1:])


def _group(values: np.ndarray, n_boot: int, level: float, rng: np.random.Generator):
    cells = values.shape[1:]
    if values.shape[0] == 0:
        nan = np.full(cells, np.nan)
        return GroupMean(0, nan, nan.copy(), nan.copy()), None
    mean = values.mean(0)
    if values.shape[0] < 2 or n_boot < 1:
        nan = np.full(cells, np.nan)
        return GroupMean(values.shape[0], mean, nan, nan.copy()), None
    boots = _boot_cell_means(values, n_boot, rng)
    low, high = np.percentile(boots, [50 * (1 - level), 50 * (1 + level)], axis=0)
    return GroupMean(values.shape[0], mean, low, high), boots


def mean_by_label(values: Float[np.ndarray, "case ..."], labels: Sequence[str], keep: Sequence[bool] | None = None,
                  *, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> LabelMeans:
    """Means over cases of `values` for the text followers, the vision followers and all kept
    cases (labels as `interp.following.label_following` gives them; "other" enters only "all"),
    with percentile bootstrap intervals over cases (see the module docstring)."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape[0] != len(labels) or (keep is not None and len(keep) != len(labels)):
        raise ValueError(f"need one label (and keep flag) per case: {values.shape[0]} cases, {len(labels)} labels"
                         + ("" if keep is None else f", {len(keep)} keep flags"))
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    kept = np.ones(len(labels), dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    lab = np.asarray(labels, dtype=object)
    rng = np.random.default_rng(seed)
    groups, boots = {}, {}
    for name in GROUPS:
        rows = kept if name == "all" else kept & (lab == name)
        groups[name], boots[name] = _group(values[rows], n_boot, level, rng)
    diff = groups["text"].mean - groups["vision"].mean
    if boots["text"] is not None and boots["vision"] is not None:
        low, high = np.percentile(boots["text"] - boots["vision"], [50 * (1 - level), 50 * (1 + level)], axis=0)
    else:
        low, high = np.full(diff.shape, np.nan), np.full(diff.shape, np.nan)
    return LabelMeans(groups, diff, low, high, level)


def top_heads(score: Float[np.ndarray, "layer head"], k: int, *, sign: int = 1) -> list[tuple[int, int, float]]:
    """The `k` (layer, head) cells with the largest `sign * score`, largest first, with their score."""
    score = np.asarray(score, dtype=np.float64)
    if score.ndim != 2:
        raise ValueError(f"score must be a layer x head array, got shape {score.shape}")
    if sign not in (1, -1):
        raise ValueError(f"sign is +1 (text-ward) or -1 (vision-ward), got {sign}")
    if not 0 < k <= score.size:
        raise ValueError(f"k must be between 1 and the {score.size} heads, got {k}")
    order = np.argsort(-sign * score, axis=None, kind="stable")[:k]
    return [(int(i // score.shape[1]), int(i % score.shape[1]), float(score.flat[i])) for i in order]


def random_heads(n_layers: int, n_heads: int, k: int, *, exclude: Iterable[tuple[int, int]] = (),
                 seed: int = 0) -> list[tuple[int, int]]:
    """`k` distinct (layer, head) pairs drawn uniformly from those not in `exclude` (seeded)."""
    banned = {(int(l), int(h)) for l, h in exclude}
    pool = [(l, h) for l in range(n_layers) for h in range(n_heads) if (l, h) not in banned]
    if not 0 < k <= len(pool):
        raise ValueError(f"cannot draw {k} control heads from the {len(pool)} heads outside the excluded set")
    pick = np.random.default_rng(seed).choice(len(pool), size=k, replace=False)
    return sorted(pool[i] for i in pick)


@dataclass(frozen=True)
class HeadKnockoutReport:
    """Text-following of the conflict pass before and after knocking out `heads`, over kept cases."""

    name: str
    heads: tuple[tuple[int, int], ...]
    before: tuple[str, ...]
    after: tuple[str, ...]
    kept: tuple[bool, ...]
    tfr_before: float | None
    tfr_after: float | None
    shift_ci: tuple[float, float] | None
    level: float

    @property
    def shift(self) -> float | None:
        """TFR(after) - TFR(before), or None when either is undefined."""
        if self.tfr_before is None or self.tfr_after is None:
            return None
        return self.tfr_after - self.tfr_before

    def counts(self, which: str = "after") -> dict[str, int]:
        """Text / vision / other labels of the kept cases, "before" or "after" the knockout."""
        labels = [lab for lab, k in zip(self.before if which == "before" else self.after, self.kept) if k]
        return {name: sum(1 for lab in labels if lab == name) for name in ("text", "vision", "other")}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "heads": [list(h) for h in self.heads], "n_kept": int(sum(self.kept)),
                "counts_before": self.counts("before"), "counts_after": self.counts("after"),
                "tfr_before": self.tfr_before, "tfr_after": self.tfr_after, "tfr_shift": self.shift,
                "tfr_shift_ci": None if self.shift_ci is None else list(self.shift_ci), "level": self.level}

    def __str__(self) -> str:
        fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
        ci = "no CI" if self.shift_ci is None else \
            f"{self.level:.0%} CI {self.shift_ci[0]:+.3f} to {self.shift_ci[1]:+.3f}"
        shift = "n/a" if self.shift is None else f"{self.shift:+.3f}"
        c = self.counts()
        return (f"{self.name}: {len(self.heads)} heads, TFR {fmt(self.tfr_before)} -> {fmt(self.tfr_after)} "
                f"(shift {shift}, {ci}; {sum(self.kept)} kept cases, after: text {c['text']}, vision "
                f"{c['vision']}, other {c['other']})")


def knockout_report(name: str, heads: Iterable[tuple[int, int]], before: Sequence[str], after: Sequence[str],
                    kept: Sequence[bool] | None = None, *, level: float = 0.95, n_boot: int = 2000,
                    seed: int = 0) -> HeadKnockoutReport:
    """TFR before / after over the kept cases and the paired bootstrap interval of the shift."""
    keep = tuple(bool(k) for k in (kept if kept is not None else [True] * len(before)))
    if not len(before) == len(after) == len(keep):
        raise ValueError(f"need one label per case before and after, and one keep flag: {len(before)}, "
                         f"{len(after)}, {len(keep)}")
    used = [i for i, k in enumerate(keep) if k]
    ci = tfr_shift_ci(after, before, keep, level=level, n_boot=n_boot, seed=seed)
    return HeadKnockoutReport(name, tuple((int(l), int(h)) for l, h in heads), tuple(before), tuple(after), keep,
                              tfr_vfr(before[i] for i in used).tfr, tfr_vfr(after[i] for i in used).tfr, ci, level)


def shift_difference_ci(a: HeadKnockoutReport, b: HeadKnockoutReport, *, level: float = 0.95, n_boot: int = 2000,
                        seed: int = 0) -> tuple[float, float] | None:
    """Paired percentile interval of shift(a) - shift(b) (the same cases and baseline; resampled
    together). None when a resample leaves a TFR undefined in more than 5% of draws."""
    if a.before != b.before or a.kept != b.kept:
        raise ValueError("the two knockouts must share their cases, baseline labels and kept flags")
    idx = np.flatnonzero(np.asarray(a.kept, dtype=bool))
    if len(idx) == 0:
        return None
    draws = idx[np.random.default_rng(seed).integers(0, len(idx), size=(n_boot, len(idx)))]

    def tfr(labels: Sequence[str]) -> np.ndarray:
        lab = np.asarray(labels)[draws]
        text, both = (lab == "text").sum(1), (lab == "text").sum(1) + (lab == "vision").sum(1)
        return np.where(both > 0, text / np.maximum(both, 1), np.nan)

    diff = tfr(a.after) - tfr(b.after)  # the shared baseline cancels, draw by draw
    diff = np.where(np.isfinite(tfr(a.before)), diff, np.nan)
    ok = diff[np.isfinite(diff)]
    if len(ok) < 0.95 * n_boot:
        return None
    return float(np.percentile(ok, 50 * (1 - level))), float(np.percentile(ok, 50 * (1 + level)))
