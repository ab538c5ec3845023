"""Synthetic scenes: the palette, the shape masks, and scenes whose occlusion is measured.

Every object is a flat-coloured shape painted from a boolean mask, with no anti-aliasing, so
that a pixel's colour says which object it belongs to and the occlusion of the target can be
measured exactly: ``occlusion = |target mask & union of distractor masks| / |target mask|``.

**[ours]** choices the paper leaves open (METHOD §1.6), used by ``colour.py`` and ``shapes.py``:

- Shapes are upright and never rotated (a rotated square would be a diamond); each is drawn
  inside a square placement box, and ``target_box`` is that box clipped to the canvas.
- "Target size" of the 800x600 tiers (80-200 px) is the side of the target's box, scaled by
  ``min(W, H) / 600`` at other image sizes; "target size" of the other tiers (e.g. 4-6% of the
  image) is the area of the target's box as a share of the image area, which keeps the
  proportions at any image size.
- Distractors are placed so that, apart from the few "occluders" chosen to reach the tier's
  occlusion, none touches the target; the occluders never cover a disc inside the target
  (about a third of what must stay visible), so a solid piece of the target always shows.
- Occluders are added greedily, each adding coverage without passing spec + 0.05, until
  the measured occlusion reaches spec - 0.015; a scene that ends more than 0.05 from the
  spec is redrawn with a new target position (up to 20 times, then the closest is kept).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, Sequence

import numpy as np
from PIL import Image, ImageDraw

COLOURS: tuple[str, ...] = ("red", "yellow", "blue", "green", "purple", "orange")
"""The six colours of METHOD §1.6."""

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "yellow": (245, 205, 0),
    "blue": (30, 80, 220),
    "green": (30, 160, 60),
    "purple": (130, 50, 180),
    "orange": (250, 130, 0),
}
"""Exact RGB of each colour; the canvas is white (255, 255, 255) and no pixel is blended."""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "hexagon", "star", "cross")
"""Shapes the generators draw (no two are rotations of each other)."""

BACKGROUND = (255, 255, 255)

# Outlines in the unit square, x to the right, y down.
_STAR = tuple(
    (0.5 + r * math.sin(k * math.pi / 5), 0.52 - r * math.cos(k * math.pi / 5))
    for k in range(10)
    for r in ((0.5,) if k % 2 == 0 else (0.21,))
)
_POLYGONS: dict[str, tuple[tuple[float, float], ...]] = {
    "square": ((0, 0), (1, 0), (1, 1), (0, 1)),
    "triangle": ((0.5, 0), (1, 1), (0, 1)),
    "diamond": ((0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)),
    "hexagon": ((0.25, 0.067), (0.75, 0.067), (1, 0.5), (0.75, 0.933), (0.25, 0.933), (0, 0.5)),
    "star": _STAR,
    "cross": (
        (1 / 3, 0), (2 / 3, 0), (2 / 3, 1 / 3), (1, 1 / 3), (1, 2 / 3), (2 / 3, 2 / 3),
        (2 / 3, 1), (1 / 3, 1), (1 / 3, 2 / 3), (0, 2 / 3), (0, 1 / 3), (1 / 3, 1 / 3),
    ),
}

_AIM = 0.015  # occluders are added until the occlusion is at least spec - _AIM

MIN_SIDE = 3
"""Smallest side, in pixels, of any drawn shape (below it no shape is recognisable at all)."""


def shape_mask(shape: str, side: int) -> np.ndarray:
    """Boolean mask ``[side, side]`` of ``shape`` filling a square box of ``side`` pixels.

    The array is read-only (masks up to 256 px are cached); copy it before changing it.
    """
    side = int(side)
    return _cached_mask(shape, side) if side <= 256 else _rasterise(shape, side)


@lru_cache(maxsize=4096)
def _cached_mask(shape: str, side: int) -> np.ndarray:
    return _rasterise(shape, side)


def _rasterise(shape: str, side: int) -> np.ndarray:
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    if side < 1:
        raise ValueError(f"side must be >= 1 pixel, got {side}")
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    last = side - 1
    if shape == "circle":
        draw.ellipse((0, 0, last, last), fill=255)
    else:
        draw.polygon([(x * last, y * last) for x, y in _POLYGONS[shape]], fill=255)
    mask = np.asarray(canvas) > 0
    mask.flags.writeable = False
    return mask


@dataclass(frozen=True)
class TierSpec:
    """One visual tier: how big the target is, how many distractors, how much is covered.

    ``size_unit == "px"``: ``size_range`` is the side of the target's box in pixels at a
    600-pixel short side (scaled to the canvas). ``size_unit == "area"``: it is the box's area
    as a share of the image. ``occlusion`` is the share of the target's area to cover (0: no
    distractor touches the target). ``distractor_scale`` is the side of a non-occluding
    distractor relative to the target's side (``None``: drawn from the target's own range).
    """

    tier: int
    size_unit: Literal["px", "area"]
    size_range: tuple[float, float]
    n_distractors: int
    occlusion: float
    default_size: tuple[int, int]
    distractor_scale: tuple[float, float] | None = None

    def side_range(self, size: tuple[int, int]) -> tuple[int, int]:
        """Integer range of the target's box side on a ``(W, H)`` canvas, inside the spec."""
        width, height = size
        if self.size_unit == "px":
            scale = min(width, height) / 600.0
            lo, hi = self.size_range[0] * scale, self.size_range[1] * scale
        else:
            lo = math.sqrt(self.size_range[0] * width * height)
            hi = math.sqrt(self.size_range[1] * width * height)
        lo_i, hi_i = math.ceil(lo - 1e-9), math.floor(hi + 1e-9)
        if lo_i > hi_i:  # canvas so small that no integer side is inside the spec
            lo_i = hi_i = max(MIN_SIDE, round((lo + hi) / 2))
        hi_i = min(hi_i, width, height)
        return max(MIN_SIDE, min(lo_i, hi_i)), max(MIN_SIDE, hi_i)

    def measured_size(self, box: tuple[int, int, int, int], size: tuple[int, int]) -> float:
        """The target size in this tier's unit: px at the 600-px reference, or area share."""
        side = max(box[2] - box[0], box[3] - box[1])
        if self.size_unit == "px":
            return side * 600.0 / min(size)
        return (box[2] - box[0]) * (box[3] - box[1]) / float(size[0] * size[1])


@dataclass(frozen=True)
class PlacedShape:
    """An object of a scene: its shape, colour, role and unclipped placement box (x0, y0, x1, y1)."""

    shape: str
    colour: str
    role: Literal["target", "occluder", "distractor"]
    box: tuple[int, int, int, int]


@dataclass(frozen=True)
class Scene:
    """A drawn scene. ``occlusion`` is measured from the masks; ``n_distractors`` counts every
    distractor drawn (occluders included); ``visible_distractors`` those with a visible pixel."""

    image: Image.Image
    target_box: tuple[int, int, int, int]
    occlusion: float
    n_distractors: int
    visible_distractors: int
    objects: tuple[PlacedShape, ...]


def resolve_size(image_size: int | Sequence[int] | None, default: tuple[int, int]) -> tuple[int, int]:
    """``None`` -> the tier's default; an int -> a square canvas; ``(W, H)`` as given."""
    if image_size is None:
        return default
    if isinstance(image_size, (int, np.integer)):
        width = height = int(image_size)
    else:
        width, height = (int(v) for v in image_size)
    if width < 32 or height < 32:
        raise ValueError(f"image size must be at least 32x32 pixels, got {width}x{height}")
    return width, height


def _clip(x0: int, y0: int, mask: np.ndarray, width: int, height: int):
    """The canvas slices and the part of ``mask`` that fall inside the canvas, or None."""
    h, w = mask.shape
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + w, width), min(y0 + h, height)
    if cx0 >= cx1 or cy0 >= cy1:
        return None
    return (slice(cy0, cy1), slice(cx0, cx1)), mask[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]


def _keep_disc(target: np.ndarray, visible_share: float, rng: np.random.Generator, size):
    """A disc inside the target that occluders must leave alone, as a canvas-sized mask:
    its area is a third of the share that must stay visible (a single pixel if no such disc
    fits inside the shape)."""
    width, height = size
    area = int(target.sum())
    radius = math.sqrt(max(visible_share, 0.0) * area / 3.0 / math.pi)
    ys, xs = np.nonzero(target)
    yy, xx = np.ogrid[:height, :width]
    for _ in range(40):
        k = int(rng.integers(len(xs)))
        disc = (xx - xs[k]) ** 2 + (yy - ys[k]) ** 2 <= radius**2
        if not (disc & ~target).any():
            return disc
        radius *= 0.95
    keep = np.zeros((height, width), dtype=bool)
    k = int(rng.integers(len(xs)))
    keep[ys[k], xs[k]] = True
    return keep


def draw_scene(
    tier: TierSpec,
    target_shape: str,
    target_colour: str,
    rng: np.random.Generator,
    size: tuple[int, int] | None = None,
    *,
    distractor_shapes: Sequence[str],
    distractor_colours: Sequence[str],
    tolerance: float = 0.05,
) -> Scene:
    """Draw the target and ``tier.n_distractors`` distractors on a white canvas.

    Distractors take their shape from ``distractor_shapes`` and colour from
    ``distractor_colours`` only (the callers leave out the target's colour, the text answer,
    and whatever the question must not find in the image). Deterministic given ``rng``.
    Occluders are added until the measured occlusion is close to ``tier.occlusion``; a scene
    more than ``tolerance`` away is redrawn (the dataset spec allows 0.10).
    """
    if not distractor_shapes or not distractor_colours:
        if tier.n_distractors:
            raise ValueError("a tier with distractors needs distractor shapes and colours")
    width, height = size or tier.default_size
    best = None
    for _attempt in range(20):
        scene = _try_scene(
            tier, target_shape, target_colour, rng, (width, height),
            list(distractor_shapes), list(distractor_colours), tolerance,
        )
        miss = abs(scene.occlusion - tier.occlusion)
        if best is None or miss < abs(best.occlusion - tier.occlusion):
            best = scene
        if miss <= (tolerance if tier.occlusion > 0 else 0.0):
            return scene
    return best


class _Canvas:
    """A scene being drawn: its pixels, which object covers each pixel, and the target's masks."""

    def __init__(self, size: tuple[int, int], rng: np.random.Generator) -> None:
        width, height = size
        self.size, self.rng = size, rng
        self.rgb = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
        self.labels = np.full((height, width), -1, dtype=np.int16)
        self.objects: list[PlacedShape] = []

    def paint(self, shape: str, colour: str, role: str, x0: int, y0: int, side: int, sl, sub) -> None:
        self.rgb[sl][sub] = COLOUR_RGB[colour]
        self.labels[sl][sub] = len(self.objects)
        self.objects.append(PlacedShape(shape, colour, role, (x0, y0, x0 + side, y0 + side)))

    def pick(self, seq):
        return seq[int(self.rng.integers(len(seq)))]

    def place_target(self, tier: TierSpec, shape: str, colour: str) -> None:
        width, height = self.size
        self.lo, self.hi = tier.side_range(self.size)
        self.tside = int(self.rng.integers(self.lo, self.hi + 1))
        self.tx0 = int(self.rng.integers(0, width - self.tside + 1))
        self.ty0 = int(self.rng.integers(0, height - self.tside + 1))
        tmask = shape_mask(shape, self.tside)
        self.target = np.zeros((height, width), dtype=bool)
        tsl = (slice(self.ty0, self.ty0 + self.tside), slice(self.tx0, self.tx0 + self.tside))
        self.target[tsl] = tmask
        self.paint(shape, colour, "target", self.tx0, self.ty0, self.tside, tsl, tmask)
        self.area = int(tmask.sum())
        self.occupied = self.target.copy()
        self.covered = np.zeros_like(self.target)

    def place_occluders(self, tier: TierSpec, d_shapes, d_colours, tolerance: float) -> int:
        """Greedy: each occluder must add coverage, never overshoot, never touch the keep disc."""
        goal, area, target, covered = tier.occlusion, self.area, self.target, self.covered
        width, height = self.size
        n_occluders = 0
        if goal <= 0:
            return 0
        keep = _keep_disc(target, 1.0 - goal, self.rng, self.size)
        scale_hi, fails = 0.85, 0
        while n_occluders < tier.n_distractors and fails < 400:
            if covered.sum() >= (goal - _AIM) * area:
                break
            side = max(MIN_SIDE, round(self.tside * self.rng.uniform(0.3, scale_hi)))
            cx = self.tx0 + int(self.rng.integers(self.tside))
            cy = self.ty0 + int(self.rng.integers(self.tside))
            x0, y0 = cx - side // 2, cy - side // 2
            shape = self.pick(d_shapes)
            clipped = _clip(x0, y0, shape_mask(shape, side), width, height)
            if clipped is None:
                fails += 1
                continue
            sl, sub = clipped
            if (keep[sl] & sub).any():
                fails += 1
                continue
            gain = int((target[sl] & sub & ~covered[sl]).sum())
            if gain < 0.02 * area:
                fails += 1
                continue
            if covered.sum() + gain > (goal + tolerance) * area:
                fails += 1
                scale_hi = max(0.35, scale_hi * 0.93)
                continue
            covered[sl] |= sub & target[sl]
            self.occupied[sl] |= sub
            self.paint(shape, self.pick(d_colours), "occluder", x0, y0, side, sl, sub)
            n_occluders += 1
        return n_occluders

    def place_distractor(self, tier: TierSpec, d_shapes, d_colours) -> None:
        """One distractor that never touches the target: the best of a few spots by least overlap."""
        width, height = self.size
        placed = None
        for tries in range(60):
            if tier.distractor_scale is None:
                side = int(self.rng.integers(self.lo, self.hi + 1))
            else:
                side = round(self.tside * self.rng.uniform(*tier.distractor_scale))
            side = max(MIN_SIDE, min(side, width, height) - (tries // 20) * max(1, side // 4))
            side = max(MIN_SIDE, side)
            x0 = int(self.rng.integers(0, width - side + 1))
            y0 = int(self.rng.integers(0, height - side + 1))
            shape = self.pick(d_shapes)
            mask = shape_mask(shape, side)
            sl = (slice(y0, y0 + side), slice(x0, x0 + side))
            if (self.target[sl] & mask).any():
                continue
            overlap = int((self.occupied[sl] & mask).sum())
            if placed is None or overlap < placed[0]:
                placed = (overlap, shape, side, x0, y0, sl, mask)
            if overlap == 0 or tries >= 7:
                break
        if placed is None:  # 60 spots, shrinking, all touched the target: the canvas is full
            raise RuntimeError(f"tier {tier.tier}: no room for a distractor on a {self.size} canvas")
        _, shape, side, x0, y0, sl, mask = placed
        self.occupied[sl] |= mask
        self.paint(shape, self.pick(d_colours), "distractor", x0, y0, side, sl, mask)


def _try_scene(tier, target_shape, target_colour, rng, size, d_shapes, d_colours, tolerance):
    canvas = _Canvas(size, rng)
    canvas.place_target(tier, target_shape, target_colour)
    n_occluders = canvas.place_occluders(tier, d_shapes, d_colours, tolerance)
    for _ in range(tier.n_distractors - n_occluders):
        canvas.place_distractor(tier, d_shapes, d_colours)
    labels = canvas.labels
    occlusion = 1.0 - float((labels == 0).sum()) / canvas.area
    visible = len(np.unique(labels[labels > 0]))
    box = (canvas.tx0, canvas.ty0, canvas.tx0 + canvas.tside, canvas.ty0 + canvas.tside)
    return Scene(
        image=Image.fromarray(canvas.rgb, "RGB"),
        target_box=box,
        occlusion=occlusion,
        n_distractors=len(canvas.objects) - 1,
        visible_distractors=visible,
        objects=tuple(canvas.objects),
    )
