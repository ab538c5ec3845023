"""Layer-wise oscillation between the modalities, and its mean per dH_rel region (METHOD §1.5).

The logit-lens trajectory of a conflict case is, per layer, the class of the lens's top-1
token: ``"text"`` (a first token of the text answer), ``"vision"`` (of the image answer) or
``"irrelevant"``. An oscillation is one switch between vision and text, irrelevant layers
skipped: vision, irrelevant, text counts 1.

**Which layers count [ours]**: the decoder layers, every one of them, last included. The
embedding output (Hugging Face's ``hidden_states[0]``) is excluded: METHOD reads the lens "at
every decoder layer", and the lens of the embedding mostly returns the input token itself, so
a switch there says nothing about the decision. :func:`count_switches` counts every entry it
is given; when a trajectory starts with the embedding output, pass ``has_embedding=True``
and that first entry is skipped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
from jaxtyping import Float

from interp.results import OscillationSummary, RegionMean
from interp.vocabulary import LAYER_CLASSES

__all__ = [
    "AMBIGUOUS_WIDTH",
    "compare_regions",
    "region_entry",
    "constant_layers",
    "count_switches",
    "region_labels",
    "summarise_oscillations",
    "switch_layers",
]

AMBIGUOUS_WIDTH = 0.5
"""Half-width of the ambiguous region around the balance point, in dH_rel units (METHOD §1.5)."""

Region = Literal["ambiguous", "clear"]


def count_switches(classes: Iterable[str], *, has_embedding: bool = False) -> int:
    """Number of switches between ``"vision"`` and ``"text"`` along one trajectory.

    ``"irrelevant"`` layers are skipped: only consecutive *relevant* classes are compared, so
    vision, irrelevant, text is 1 switch; vision, text, vision, text is 3; a trajectory with
    no relevant layer, or only one modality, is 0.

    Args:
        classes: per layer, one of ``"text"``, ``"vision"``, ``"irrelevant"``, in layer order.
        has_embedding: True when ``classes[0]`` is the embedding output; it is then not
            counted (see the module docstring for the layer policy).

    Raises:
        ValueError: an entry is not one of the three classes.
    """
    seq = list(classes)
    for c in seq:
        if c not in LAYER_CLASSES:
            raise ValueError(f"unknown layer class {c!r}; expected one of {LAYER_CLASSES}")
    if has_embedding:
        seq = seq[1:]
    relevant = [c for c in seq if c != "irrelevant"]
    return sum(1 for prev, cur in zip(relevant, relevant[1:]) if prev != cur)


def switch_layers(classes: Sequence[str], layers: Sequence[int], counted: Iterable[int] | None = None) -> list[int]:
    """The lens positions at which the switches of one trajectory land (METHOD §1.5, by depth).

    Only the positions in ``counted`` (all of ``layers`` when None) take part; among them the
    irrelevant ones are skipped, as in :func:`count_switches`, and a switch is attributed to the
    *later* of the two relevant positions it joins (the layer where the new modality appears).
    ``len(switch_layers(...)) == count_switches`` of the same counted classes.

    Args:
        classes: per position, ``"text"``, ``"vision"`` or ``"irrelevant"``.
        layers: the lens position of each entry (0 = embedding output, l = after decoder layer l).
        counted: the positions that count.
    """
    if len(classes) != len(layers):
        raise ValueError(f"{len(classes)} classes for {len(layers)} layers; need one class per layer")
    keep = None if counted is None else set(counted)
    pairs = sorted((int(l), c) for l, c in zip(layers, classes) if keep is None or int(l) in keep)
    for _, c in pairs:
        if c not in LAYER_CLASSES:
            raise ValueError(f"unknown layer class {c!r}; expected one of {LAYER_CLASSES}")
    relevant = [(l, c) for l, c in pairs if c != "irrelevant"]
    return [l for (_, prev), (l, cur) in zip(relevant, relevant[1:]) if prev != cur]


CONSTANT_SHARE = 1.0
"""**[ours]** A lens position is flagged as constant when one top-1 token is this share of all its
rows (every input, every pass): such a layer says nothing about the input, yet it adds a switch
to every case whose answer is that token and whose later layers say otherwise."""


def constant_layers(layers: Sequence[int], top1: Sequence[int], share: float = CONSTANT_SHARE) -> dict[str, Any]:
    """Per lens position, its most frequent top-1 token and that token's share of the rows.

    Args:
        layers, top1: one entry per layer row (any passes and cases).
        share: a position whose modal token reaches this share is flagged.

    Returns:
        ``{"flagged": [positions], "share": share, "layers": [{"layer", "n", "top1", "top1_share"}]}``;
        among equally frequent tokens ``top1`` is the smallest id.
    """
    if len(layers) != len(top1):
        raise ValueError(f"{len(layers)} layers for {len(top1)} top-1 ids; need one per row")
    counts: dict[int, Counter] = {}
    for l, t in zip(layers, top1):
        if t is not None:
            counts.setdefault(int(l), Counter())[int(t)] += 1
    rows = []
    for l in sorted(counts):
        # the smallest id among equally frequent tokens: independent of the order of the rows
        (token, k), n = min(counts[l].items(), key=lambda tk: (-tk[1], tk[0])), sum(counts[l].values())
        rows.append({"layer": l, "n": n, "top1": token, "top1_share": k / n})
    return {"flagged": [r["layer"] for r in rows if r["top1_share"] >= share], "share": share, "layers": rows}


def region_labels(
    dh_rel: Float[np.ndarray, " n"],
    balance_point: float | None,
    width: float = AMBIGUOUS_WIDTH,
) -> list[Region | None]:
    """Per case, ``"ambiguous"`` when ``|dH_rel - balance_point| <= width``, else ``"clear"``.

    Args:
        dh_rel: dH_rel per case.
        balance_point: the curve's balance point (``FollowingCurve.balance_point``).
        width: half-width of the ambiguous region (default 0.5, METHOD §1.5).

    Returns:
        One label per case; ``None`` for a case with NaN dH_rel, and **[ours]** ``None`` for
        every case when ``balance_point`` is ``None``: without a balance point the regions are
        undefined, and centring them on 0 instead would silently assume no modality
        preference. (Pass ``balance_point=0.0`` explicitly if that is what you want.)
        :func:`summarise_oscillations` counts ``None`` labels as unassigned.
    """
    if width < 0 or not np.isfinite(width):
        raise ValueError(f"width must be a finite number >= 0, got {width!r}")
    x = np.asarray(dh_rel, dtype=np.float64).ravel()
    if balance_point is None:
        return [None] * x.size
    if not np.isfinite(balance_point):
        raise ValueError(f"balance_point must be finite or None, got {balance_point!r}")
    out: list[Region | None] = []
    for v in x.tolist():
        if np.isnan(v):
            out.append(None)
        else:
            out.append("ambiguous" if abs(v - balance_point) <= width else "clear")
    return out


def percentile_ci(means: np.ndarray, level: float) -> tuple[float, float]:
    """The central `level` percentile interval of bootstrap statistics `means`."""
    q = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return float(q[0]), float(q[1])


def boot_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """`n_boot` means of `values` resampled with replacement (one row of draws per replicate)."""
    return values[rng.integers(0, values.size, size=(n_boot, values.size))].mean(axis=1)


def summarise_oscillations(
    counts: Sequence[int] | np.ndarray,
    regions: Sequence[str | None],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    ci_level: float = 0.95,
) -> OscillationSummary:
    """Mean switch count per region with a percentile bootstrap interval (METHOD §1.5, CI **[ours]**).

    For each region: ``n`` cases, the mean of their switch counts, and the
    ``(1 - ci_level)/2``, ``(1 + ci_level)/2`` percentiles of the mean over ``n_boot``
    resamples of that region's cases (seeded ``numpy`` Generator). Also the difference
    mean(ambiguous) - mean(clear) with an interval from resampling both regions independently.
    ``"ambiguous"`` and ``"clear"`` are always reported (``n=0``, mean ``None`` when empty);
    any other label (e.g. a control group) is summarised too.

    Args:
        counts: switch count per case (from :func:`count_switches`), integers >= 0.
        regions: region label per case (from :func:`region_labels`); ``None`` = unassigned,
            counted in ``n_unassigned`` and left out.
        n_boot: bootstrap resamples (0: no intervals).
        seed: seed of the resampling Generator.
        ci_level: interval level.

    Raises:
        ValueError: lengths differ, or a count is negative, non-integer or NaN.
    """
    values = np.asarray(counts, dtype=np.float64).ravel()
    labels = list(regions)
    if values.size != len(labels):
        raise ValueError(f"counts has {values.size} entries but regions has {len(labels)}; need one per case")
    if np.any(~np.isfinite(values)) or np.any(values < 0) or np.any(values != np.round(values)):
        raise ValueError("counts must be non-negative integers (switches per case)")
    rng = np.random.default_rng(seed)
    names: list[str] = ["ambiguous", "clear"]
    for label in labels:
        if label is not None and label not in names:
            names.append(label)
    label_arr = np.array([lab if lab is not None else "" for lab in labels], dtype=object)
    summaries: list[RegionMean] = []
    boots: dict[str, np.ndarray] = {}
    for name in names:
        v = values[label_arr == name]
        lo = hi = None
        if v.size >= 2 and n_boot > 0:
            boots[name] = boot_means(v, n_boot, rng)
            lo, hi = percentile_ci(boots[name], ci_level)
        summaries.append(
            RegionMean(region=name, n=int(v.size), mean=float(v.mean()) if v.size else None, ci_low=lo, ci_high=hi)
        )
    amb, clear = summaries[0], summaries[1]
    difference = diff_ci = None
    notes = []
    if amb.mean is not None and clear.mean is not None:
        difference = amb.mean - clear.mean
        if "ambiguous" in boots and "clear" in boots:
            diff_ci = percentile_ci(boots["ambiguous"] - boots["clear"], ci_level)
    else:
        notes.append("no difference: the ambiguous or the clear region is empty")
    n_unassigned = sum(lab is None for lab in labels)
    if n_unassigned:
        notes.append(f"{n_unassigned} case(s) without a region (no balance point or NaN dH_rel) left out")
    small = [s.region for s in summaries if 0 < s.n < 2]
    if small:
        notes.append(f"no interval for region(s) with a single case: {small}")
    return OscillationSummary(
        regions=tuple(summaries),
        difference=difference,
        difference_ci=diff_ci,
        n_unassigned=n_unassigned,
        ci_level=ci_level,
        n_boot=n_boot,
        seed=seed,
        note="; ".join(notes) or None,
    )



def compare_regions(counts: Sequence[int], regions: Sequence[str | None], *, n_boot: int, seed: int,
                    ci_level: float = 0.95) -> dict[str, Any]:
    """:func:`summarise_oscillations` as JSON: ``{"ambiguous": {"mean", "ci", "n"}, "clear": {...},
    "difference", "difference_ci", "n_unassigned", "note"}``."""
    osc = summarise_oscillations(counts, regions, n_boot=n_boot, seed=seed, ci_level=ci_level)
    return {"ambiguous": region_entry(osc, "ambiguous"), "clear": region_entry(osc, "clear"),
            "difference": osc.difference, "difference_ci": list(osc.difference_ci) if osc.difference_ci else None,
            "n_unassigned": osc.n_unassigned, "note": osc.note}


def region_entry(summary: Any, name: str) -> dict[str, Any]:
    """One region of a :func:`summarise_oscillations` result as JSON: ``{"mean", "ci", "n"}``."""
    r = summary.region(name)
    return {"mean": r.mean, "ci": [r.ci_low, r.ci_high] if r.ci_low is not None else None, "n": r.n}
