"""The images of the training tasks beyond the colour scenes: shape scenes, rendered words,
rendered contexts and scenes with a sign.

**[ours]** (the mix's reading and shape tasks, `read_share` / `shape_share`; 20% each in the
shipped recipe, 0 in the previous 4-layer one: docs/datasets.md has what each candidate measured):

- **shape scenes** (`ShapePool`): the 2-D shape set's four tiers (`interp.datasets.shapes`),
  pre-drawn like the colour scenes; the question asks the shape of the object of one colour.
- **a rendered word** (`word_image`): a colour word in black (15%: in another palette colour,
  so that the ink is no cue to the answer) in one of the three fonts, at a random pixel size
  from 6 to the largest that fits (half of them: from half the largest up; the run trained on
  uniform sizes read the evaluation's tier-0 words at 30%, the next one with this at 61%),
  centred (half of them) or anywhere on the canvas; the
  question is `READ_QUESTION` and the label the word. The pixel sizes of the evaluation's
  tier-0 renderings (`word_image_tier0` at `TIER0_SCALES`) are never drawn, so the held-out
  tier-0 check reads images training never showed.
- **a rendered context** (`context_image`): a context sentence of text tier 0 or 1, wrapped
  and fitted to the canvas; the question is the colour question about the sentence's shape
  and the label the stated colour (the image is the only source, so its statement is the
  truth).
- **a scene with a sign** (`sign_scene`): a colour scene of visual tier 0-4 drawn in the top
  three quarters, and below it a sign (a bordered box) with a colour word; asked the target's
  colour the label is the target's colour (the sign says nothing about it), asked
  `READ_QUESTION` it is the sign's word.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from interp.datasets.drawing import COLOURS, SHAPES, draw_scene, resolve_size
from interp.datasets.render import FONTS, fit_pixels, fit_text
from interp.datasets.shapes import draw_shape_scene
from interp.datasets.tiers import COLOUR_TIERS, SHAPE_TIERS
from modality_lens.tiny_vlm.aux import patch_labels

__all__ = ["READ_QUESTION", "TIER0_SCALES", "ShapePool", "word_image", "tier0_pixels", "word_image_tier0",
           "context_image", "sign_scene"]

READ_QUESTION = "What word is written in the image?"
TIER0_SCALES = (1.0, 0.75, 0.5)
"""The evaluation's tier-0 word sizes, as shares of the largest size that fits."""
FONT_NAMES = tuple(sorted(FONTS))


@dataclass
class ShapePool:
    """Pre-drawn shape-set scenes: images, target shape and colour, the absent shape (a wrong
    text shape, never drawn), an absent colour, and the visual tier."""

    images: list[Any]
    target_shape: np.ndarray
    target_colour: np.ndarray
    absent_shape: np.ndarray
    absent_colour: np.ndarray
    visual_tier: np.ndarray
    patches: list[np.ndarray] | None = None  # per scene, `aux.patch_labels` (with `patch=`)

    @classmethod
    def draw(cls, n: int, seed: int, image_size: int, patch: int | None = None, stream: int = 0) -> "ShapePool":
        """`n` scenes, the four tiers in turn; `stream` > 0 draws another pool of the same seed."""
        extra = [stream] if stream else []
        rng = np.random.default_rng([seed, 17, *extra])
        images, ts, tc, ash, ac, vt, patches = [], [], [], [], [], [], []
        for i in range(n):
            tier = i % len(SHAPE_TIERS)
            s, s_abs = rng.choice(len(SHAPES), 2, replace=False)
            c, c_abs = rng.choice(len(COLOURS), 2, replace=False)
            scene = draw_shape_scene(tier, SHAPES[s], COLOURS[c], SHAPES[s_abs],
                                     np.random.default_rng([seed, 19, i, *extra]), image_size,
                                     absent_colours=(COLOURS[c_abs],))
            images.append(scene.image)
            ts.append(s), tc.append(c), ash.append(s_abs), ac.append(c_abs), vt.append(tier)
            if patch:
                patches.append(patch_labels(scene, patch))
        arr = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731
        return cls(images, arr(ts), arr(tc), arr(ash), arr(ac), arr(vt), patches if patch else None)

    def __len__(self) -> int:
        return len(self.images)


def _ink(word: str, rng: np.random.Generator, coloured_share: float) -> str:
    if rng.random() < coloured_share:
        return COLOURS[int(rng.choice([k for k, c in enumerate(COLOURS) if c != word]))]
    return "black"


def word_image(word: str, size: int, rng: np.random.Generator, *, coloured_share: float = 0.15,
               centred_share: float = 0.5, large_share: float = 0.5) -> Image.Image:
    """`word` rendered on a `size` canvas: random font, pixel size and place (see the module doc);
    in a `large_share` of them the size is drawn from the upper half of the sizes that fit."""
    font = FONT_NAMES[int(rng.integers(len(FONT_NAMES)))]
    ink = _ink(word, rng, coloured_share)
    held_out = tier0_pixels(word, size, font)
    largest = fit_pixels(word, (size, size), font=font, margin=0)
    sizes = [p for p in range(6, largest + 1) if p not in held_out]
    if rng.random() < large_share:
        sizes = [p for p in sizes if p >= largest // 2] or sizes
    tile = fit_text(word, (size, size), font=font, colour=ink, max_pixels=sizes[int(rng.integers(len(sizes)))],
                    centre=False, margin=0)
    # crop the text's box and place it centred or anywhere on the canvas
    box = Image.eval(tile.convert("L"), lambda v: 255 - v).getbbox() or (0, 0, size, size)
    text = tile.crop(box)
    canvas = Image.new("RGB", (size, size), "white")
    if rng.random() < centred_share:
        x, y = (size - text.size[0]) // 2, (size - text.size[1]) // 2
    else:
        x = int(rng.integers(0, size - text.size[0] + 1))
        y = int(rng.integers(0, size - text.size[1] + 1))
    canvas.paste(text, (x, y))
    return canvas


def tier0_pixels(word: str, size: int, font: str) -> set[int]:
    """The pixel sizes of `word_image_tier0(word, size, font, s)` for s in `TIER0_SCALES`."""
    largest = fit_pixels(word, (size, size), font=font)
    return {max(6, int(largest * s)) for s in TIER0_SCALES}


def word_image_tier0(word: str, size: int, font: str = "sans", scale: float = 1.0,
                     colour: str = "black") -> Image.Image:
    """The evaluation's tier-0 rendering: centred, in `font`, at `scale` x the largest size
    that fits (black unless `colour` says otherwise)."""
    largest = fit_pixels(word, (size, size), font=font)
    return fit_text(word, (size, size), font=font, colour=colour, max_pixels=max(6, int(largest * scale)))


def context_image(context: str, size: int, rng: np.random.Generator) -> Image.Image:
    """A context sentence wrapped and fitted to a `size` canvas in a random font (the same
    sentence, size and font give the same image, fitted once: `_fitted_context`)."""
    return _fitted_context(context, size, FONT_NAMES[int(rng.integers(len(FONT_NAMES)))]).copy()


@lru_cache(maxsize=8192)
def _fitted_context(context: str, size: int, font: str) -> Image.Image:
    # fitting a sentence tries font sizes (16 ms a sentence); context_image hands out copies
    return fit_text(context, (size, size), font=font, min_pixels=4)


def sign_scene(tier: int, shape: str, colour: str, word: str, size: int, rng: np.random.Generator,
               distractor_shapes, distractor_colours) -> tuple[Image.Image, Any]:
    """A colour scene of `tier` (0-4) above a sign reading `word`; (image, scene)."""
    strip = size // 4
    spec = COLOUR_TIERS[tier]
    width, height = resolve_size(size, spec.default_size)
    scene = draw_scene(spec, shape, colour, rng, (width, height - strip), distractor_shapes=distractor_shapes,
                       distractor_colours=distractor_colours)
    canvas = Image.new("RGB", (width, height), "white")
    canvas.paste(scene.image, (0, 0))
    sign_w = int(rng.integers(width // 2, width + 1))
    sign = fit_text(word, (sign_w - 2, strip - 2), font=FONT_NAMES[int(rng.integers(len(FONT_NAMES)))], margin=1)
    x = int(rng.integers(0, width - sign_w + 1))
    canvas.paste(sign, (x + 1, height - strip + 1))
    ImageDraw.Draw(canvas).rectangle((x, height - strip, x + sign_w - 1, height - 1), outline=(0, 0, 0))
    return canvas, scene
