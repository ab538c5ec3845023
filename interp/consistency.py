"""Cross-modal consistency: the same item as text, as an image and mixed (METHOD §2; REST / REST+).

Every item is asked in the formats of :data:`FORMATS` (``text``: all as text; ``image``: the whole
problem rendered; ``mixed``: the context rendered, the question as text). Per item and format
there is a parsed ``answer`` (a canonical string, or ``None`` when the parser matched nothing:
an *invalid* answer) and a ``correct`` flag. Pure numpy / scipy:

- :func:`answers_identical` per item, :func:`rer`: share of items whose answers are identical in
  all formats (right or wrong);
- :func:`cfr`: among items solved in at least one format, the share solved in some but not all;
- :func:`mmc`: share of items solved in at least one format;
- :func:`format_accuracy` and :func:`mcnemar` (exact, on the discordant pairs, through
  ``scipy.stats.binomtest``);
- :func:`consistency_metrics`: all of them with percentile-bootstrap CIs over items
  (``interp.calibration.bootstrap_ci`` / ``mean_ci``), on all items and, given an OCR mask, on
  the subset the model transcribed perfectly (:func:`character_error_rate` = 0).

Conventions **[ours]** (the paper leaves them open):

- An invalid answer is wrong, and it is identical to nothing, not even another invalid answer:
  an item with any invalid answer does not count towards RER (the parser could not tell that
  the model said the same thing twice). Invalid answers are counted per format.
- CFR is ``None`` when no item is solved in any format (0 / 0 is not invented).
- The character error rate is the Levenshtein distance between the transcription and the source
  text divided by the source's length, after collapsing runs of whitespace and stripping both
  ends (line breaks of the rendering are not errors); case is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.stats

from interp.calibration import bootstrap_ci, mean_ci

__all__ = [
    "FORMATS", "ConsistencyMetrics", "McNemarResult", "answers_identical", "cfr", "character_error_rate",
    "consistency_metrics", "format_accuracy", "mcnemar", "mmc", "rer",
]

FORMATS: tuple[str, ...] = ("text", "image", "mixed")
"""The three formats of every item, in the paper's order."""


def _correct(correct: Any) -> np.ndarray:
    c = np.asarray(correct)
    if c.ndim != 2:
        raise ValueError(f"correct must be (items, formats); got shape {c.shape}")
    return c.astype(bool)


def answers_identical(answers: Sequence[Sequence[str | None]]) -> np.ndarray:
    """Per item: are its answers identical in every format (none of them invalid)?"""
    out = []
    for row in answers:
        row = list(row)
        out.append(bool(row) and all(a is not None for a in row) and len(set(row)) == 1)
    return np.asarray(out, dtype=bool)


def rer(answers: Sequence[Sequence[str | None]]) -> float | None:
    """Share of items whose answers are identical in all formats (right or wrong)."""
    same = answers_identical(answers)
    return float(same.mean()) if same.size else None


def mmc(correct: Any) -> float | None:
    """Share of items solved in at least one format."""
    c = _correct(correct)
    return float(c.any(axis=1).mean()) if c.shape[0] else None


def cfr(correct: Any) -> float | None:
    """Among items solved in at least one format, the share solved in some but not all."""
    c = _correct(correct)
    some = c.any(axis=1)
    if not some.any():
        return None
    return float((some & ~c.all(axis=1)).sum() / some.sum())


def format_accuracy(correct: Any) -> np.ndarray:
    """Accuracy per format (column means), shape (formats,)."""
    c = _correct(correct)
    return c.mean(axis=0) if c.shape[0] else np.full(c.shape[1], np.nan)


@dataclass(frozen=True)
class McNemarResult:
    """Exact McNemar test of two formats on the same items.

    ``only_a`` / ``only_b``: items solved in one format and not the other (the discordant pairs);
    ``p_value``: two-sided exact binomial test of ``only_a`` out of ``only_a + only_b`` at 1/2
    (1.0 when there is no discordant pair).
    """

    a: str
    b: str
    only_a: int
    only_b: int
    p_value: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mcnemar(correct_a: Any, correct_b: Any, a: str = "a", b: str = "b") -> McNemarResult:
    """Exact McNemar test of paired correctness (``scipy.stats.binomtest`` on the discordant pairs)."""
    ca, cb = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if ca.shape != cb.shape:
        raise ValueError(f"paired arrays differ in shape: {ca.shape} vs {cb.shape}")
    n01, n10 = int((ca & ~cb).sum()), int((~ca & cb).sum())
    p = 1.0 if n01 + n10 == 0 else float(scipy.stats.binomtest(n01, n01 + n10, 0.5).pvalue)
    return McNemarResult(a, b, n01, n10, p)


def _levenshtein(s: str, t: str) -> int:
    prev = list(range(len(t) + 1))
    for i, cs in enumerate(s, 1):
        cur = [i]
        for j, ct in enumerate(t, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (cs != ct)))
        prev = cur
    return prev[-1]


def character_error_rate(transcription: str, source: str) -> float:
    """Levenshtein distance / len(source), whitespace runs collapsed and ends stripped (**[ours]**)."""
    norm = lambda s: " ".join(str(s).split())  # noqa: E731
    hyp, ref = norm(transcription), norm(source)
    if not ref:
        raise ValueError("the CER needs a non-empty source text")
    return _levenshtein(hyp, ref) / len(ref)


def _ci(value: float | None, ci: tuple[float, float] | None) -> dict[str, Any]:
    return {"value": value, "ci_low": ci[0] if ci else None, "ci_high": ci[1] if ci else None}


@dataclass(frozen=True)
class ConsistencyMetrics:
    """RER, CFR, MMC and per-format accuracy, each ``{"value", "ci_low", "ci_high"}``, on ``n`` items.

    ``invalid``: invalid (unparsable) answers per format; ``mcnemar``: the exact test of every
    pair of formats.
    """

    n: int
    formats: tuple[str, ...]
    rer: dict[str, Any]
    cfr: dict[str, Any]
    mmc: dict[str, Any]
    accuracy: dict[str, dict[str, Any]]
    invalid: dict[str, int]
    mcnemar: tuple[McNemarResult, ...]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["formats"] = list(self.formats)
        out["mcnemar"] = [m.to_dict() for m in self.mcnemar]
        return out


def consistency_metrics(answers: Sequence[Sequence[str | None]], correct: Any, *, formats: Sequence[str] = FORMATS,
                        n_boot: int = 1000, seed: int = 0, ci_level: float = 0.95) -> ConsistencyMetrics:
    """All metrics of the items (rows) over `formats` (columns), with bootstrap CIs over items.

    Rows where a format's answer is invalid must have ``correct`` False there (an invalid answer
    is wrong); a row that says otherwise raises ValueError.
    """
    c = _correct(correct)
    ans = [list(r) for r in answers]
    if c.shape != (len(ans), len(formats)) or any(len(r) != len(formats) for r in ans):
        raise ValueError(f"answers and correct must both be (items, {len(formats)} formats); got {c.shape}")
    invalid = np.array([[a is None for a in r] for r in ans], dtype=bool).reshape(c.shape)
    if (invalid & c).any():
        raise ValueError("an invalid (unparsable) answer is marked correct; an invalid answer counts as wrong")
    kw = dict(n_boot=n_boot, seed=seed, ci_level=ci_level)
    same = answers_identical(ans).astype(float)
    m = mean_ci(same, **kw)
    acc = {}
    for k, f in enumerate(formats):
        mk = mean_ci(c[:, k].astype(float), **kw)
        acc[f] = {"value": mk["mean"], "ci_low": mk["ci_low"], "ci_high": mk["ci_high"]}
    tests = tuple(mcnemar(c[:, i], c[:, j], formats[i], formats[j])
                  for i in range(len(formats)) for j in range(i + 1, len(formats)))
    return ConsistencyMetrics(
        n=int(c.shape[0]), formats=tuple(formats),
        rer={"value": m["mean"], "ci_low": m["ci_low"], "ci_high": m["ci_high"]},
        cfr=_ci(cfr(c), bootstrap_ci(cfr, c, **kw) if c.shape[0] else None),
        mmc=_ci(mmc(c), bootstrap_ci(mmc, c, **kw) if c.shape[0] else None),
        accuracy=acc, invalid={f: int(invalid[:, k].sum()) for k, f in enumerate(formats)}, mcnemar=tests,
    )
