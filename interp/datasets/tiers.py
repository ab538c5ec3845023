"""The visual difficulty tiers of the built-in sets (METHOD §1.6), as data.

The generators (`interp.datasets.colour`, `interp.datasets.shapes`) draw scenes from these
specs and `interp.datasets.validate` checks a case's tier against them, so the tables live here,
below both.
"""

from __future__ import annotations

from interp.datasets.drawing import TierSpec

__all__ = ["COLOUR_TIERS", "COLOUR_VISUAL_TIERS", "SHAPE_TIERS", "SHAPE_VISUAL_TIERS"]

_PAPER_LARGE = (800, 600)
_PAPER_SMALL = (224, 224)

COLOUR_TIERS: tuple[TierSpec, ...] = tuple(
    [TierSpec(t, "px", (80.0, 200.0), t, 0.0, _PAPER_LARGE) for t in range(5)]
    + [
        TierSpec(t, "area", size, n, occ, _PAPER_SMALL, (0.3, 0.6))
        for t, size, n, occ in (
            (5, (0.20, 0.40), 7, 0.5),
            (6, (0.20, 0.40), 10, 0.8),
            (7, (0.05, 0.10), 7, 0.5),
            (8, (0.05, 0.10), 11, 0.8),
            (9, (0.04, 0.06), 20, 0.3),
            (10, (0.04, 0.06), 30, 0.6),
            (11, (0.04, 0.06), 40, 0.5),
            (12, (0.04, 0.06), 55, 0.6),
            (13, (0.04, 0.06), 70, 0.7),
        )
    ]
)
"""The METHOD §1.6 table. Tiers 0-4: target box side 80-200 px at 800x600, 0-4 distractors
none touching the target. Tiers 5-13: target box area as a share of the image, distractor
count, share of the target covered; non-occluding distractors have 0.3-0.6 of the target's
side **[ours]**."""

COLOUR_VISUAL_TIERS: tuple[int, ...] = tuple(spec.tier for spec in COLOUR_TIERS)

SHAPE_TIERS: tuple[TierSpec, ...] = (
    TierSpec(0, "area", (0.15, 0.25), 0, 0.0, (224, 224), (0.5, 0.9)),
    TierSpec(1, "area", (0.08, 0.15), 3, 0.0, (224, 224), (0.5, 0.9)),
    TierSpec(2, "area", (0.05, 0.10), 8, 0.15, (224, 224), (0.5, 0.9)),
    TierSpec(3, "area", (0.04, 0.06), 15, 0.30, (224, 224), (0.5, 0.9)),
)
"""The shape set's four tiers: target area share, distractor count, share of the target covered."""

SHAPE_VISUAL_TIERS: tuple[int, ...] = tuple(spec.tier for spec in SHAPE_TIERS)
