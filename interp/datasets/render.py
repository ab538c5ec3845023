"""Text drawn into an image: rendered words, sentences and whole problems.

`render_text(text, ...)` draws any text on a plain canvas with a font that ships with
matplotlib (DejaVu Sans, Sans Mono or Serif: no download), so rendered-text items need
nothing beyond the install. `fit_text(text, size, ...)` draws it as large as fits a canvas of
a given pixel size (a model's input size).

**[ours]** conventions:

- Font size is in points and `dpi` turns it into pixels: `pixels = round(points * dpi / 72)`
  (12 pt at DPI 50 / 100 / 200 is 8 / 17 / 33 px), the convention of matplotlib and of
  typesetting.
- Wrapping is greedy by words at `width` pixels (inside the margins); a word wider than the
  line stands on its own line and is not split. Explicit newlines start a new line.
- Lines are left-aligned, `line_spacing` x the font's pixel size apart; the canvas is as
  large as the text plus the margins unless `size` fixes it, in which case text that does not
  fit raises `ValueError` (use `fit_text` to shrink it instead).
- Deterministic: the same arguments give the same pixels on one install (FreeType renders
  the glyphs; anti-aliasing is on, as in a screenshot).

Nothing here imports matplotlib: the font files are found through its package folder.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageColor, ImageDraw, ImageFont

from interp.datasets.drawing import COLOUR_RGB

__all__ = ["FONTS", "DPIS", "font_path", "pixel_size", "wrap", "render_text", "fit_pixels", "fit_text"]

FONTS: dict[str, str] = {"sans": "DejaVuSans.ttf", "mono": "DejaVuSansMono.ttf", "serif": "DejaVuSerif.ttf"}
"""Font names and their files in matplotlib's `mpl-data/fonts/ttf`."""

DPIS: tuple[int, ...] = (50, 100, 200)
"""The resolutions the rendered-text variants use."""


def font_path(font: str) -> Path:
    """The file of `font` ("sans", "mono" or "serif"), or a path to any TrueType file."""
    if font not in FONTS:
        path = Path(font)
        if path.suffix.lower() in (".ttf", ".otf") and path.is_file():
            return path
        raise ValueError(f"unknown font {font!r}; choose one of {sorted(FONTS)} or give a .ttf file")
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the DejaVu fonts come with matplotlib, which is not installed; pip install matplotlib")
    path = Path(spec.submodule_search_locations[0]) / "mpl-data" / "fonts" / "ttf" / FONTS[font]
    if not path.is_file():
        raise ValueError(f"matplotlib's font file {path} is missing; reinstall matplotlib")
    return path


@lru_cache(maxsize=1024)  # fit_pixels tries every size down from the canvas height: 3 fonts x 64 px alone is 192
def _font(font: str, pixels: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_path(font)), pixels)


def pixel_size(points: float, dpi: int) -> int:
    """Pixels of a `points` font at `dpi` (at least 1)."""
    if points <= 0 or dpi <= 0:
        raise ValueError(f"font size and dpi must be positive, got {points} pt at {dpi} dpi")
    return max(1, round(points * dpi / 72))


def _rgb(colour: str | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(colour, str):
        if colour in COLOUR_RGB:  # the datasets' own palette first: "red" is the scenes' red
            return COLOUR_RGB[colour]
        try:
            return ImageColor.getrgb(colour)[:3]
        except ValueError:
            raise ValueError(f"unknown colour {colour!r}; give a name (e.g. 'black') or an (r, g, b) triple")
    rgb = tuple(int(c) for c in colour)
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise ValueError(f"a colour triple needs three values in 0..255, got {colour!r}")
    return rgb  # type: ignore[return-value]


def wrap(text: str, font: ImageFont.FreeTypeFont, width: float | None) -> list[str]:
    """Greedy word wrap of `text` at `width` pixels (None: only at explicit newlines)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if width is None or not line or font.getlength(candidate) <= width:
                line = candidate
            else:
                lines.append(line)
                line = word
        lines.append(line)
    return lines


def _margin(pixels: int, margin: int | None) -> int:
    """The margin in pixels: `margin`, else a quarter of the font's pixel size (at least 1)."""
    return max(1, pixels // 4) if margin is None else int(margin)


def _draw(lines: list[str], face: ImageFont.FreeTypeFont, pixels: int, line_spacing: float, canvas: tuple[int, int],
          background, colour, origin: tuple[int, int], centred_in: int | None = None) -> Image.Image:
    """`lines` on a new `canvas` from `origin` (top-left of the text block), each line centred in a
    block `centred_in` pixels wide when given, else left-aligned."""
    image = Image.new("RGB", tuple(canvas), _rgb(background))
    draw = ImageDraw.Draw(image)
    step = max(1, round(pixels * line_spacing))
    fill = _rgb(colour)
    x0, y0 = origin
    for i, line in enumerate(lines):
        lx = x0 + (centred_in - round(face.getlength(line))) // 2 if centred_in is not None else x0
        draw.text((lx, y0 + i * step), line, font=face, fill=fill)
    return image


def _layout(text: str, font: ImageFont.FreeTypeFont, pixels: int, width: float | None,
            line_spacing: float) -> tuple[list[str], int, int]:
    lines = wrap(text, font, width)
    step = max(1, round(pixels * line_spacing))
    ascent, descent = font.getmetrics()
    w = max((font.getlength(line) for line in lines), default=0)
    h = step * (len(lines) - 1) + ascent + descent
    return lines, int(round(w)), h


def render_text(
    text: str,
    *,
    font: str = "sans",
    font_size: float = 12.0,
    dpi: int = 100,
    colour: str | Sequence[int] = "black",
    background: str | Sequence[int] = "white",
    width: int | None = None,
    size: tuple[int, int] | None = None,
    margin: int | None = None,
    line_spacing: float = 1.2,
) -> Image.Image:
    """`text` drawn in `font` at `font_size` points and `dpi`, in `colour` on `background`.

    `width`: the wrapping width in pixels, margins included (default: `size`'s width, else no
    wrapping). `size`: the canvas (width, height); default as large as the text needs.
    `margin`: pixels around the text (default a quarter of the font's pixel size).
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("render_text needs a non-empty string")
    pixels = pixel_size(font_size, dpi)
    face = _font(font, pixels)
    margin = _margin(pixels, margin)
    width = size[0] if width is None and size is not None else width
    inner = None if width is None else width - 2 * margin
    if inner is not None and inner <= 0:
        raise ValueError(f"width {width} px leaves no room inside margins of {margin} px")
    lines, w, h = _layout(text, face, pixels, inner, line_spacing)
    canvas = size or (w + 2 * margin, h + 2 * margin)
    if w + 2 * margin > canvas[0] or h + 2 * margin > canvas[1]:
        raise ValueError(f"the text needs {w + 2 * margin}x{h + 2 * margin} px at {pixels} px per line, more "
                         f"than the canvas {canvas[0]}x{canvas[1]}; use a smaller font_size or fit_text")
    return _draw(lines, face, pixels, line_spacing, canvas, background, colour, (margin, margin))


def fit_pixels(text: str, size: tuple[int, int] | int, *, font: str = "sans", max_pixels: int | None = None,
               min_pixels: int = 6, margin: int | None = None, line_spacing: float = 1.2) -> int:
    """The largest font size in pixels (<= `max_pixels`, default the canvas height) at which
    `text`, wrapped at the canvas width, fits a `size` canvas; ValueError if not even `min_pixels`."""
    width, height = (size, size) if isinstance(size, int) else size
    for pixels in range(max_pixels or height, min_pixels - 1, -1):
        m = _margin(pixels, margin)
        if width - 2 * m <= 0:
            continue
        _, w, h = _layout(text, _font(font, pixels), pixels, width - 2 * m, line_spacing)
        if w + 2 * m <= width and h + 2 * m <= height:
            return pixels
    raise ValueError(f"{text!r} does not fit {width}x{height} px even at {min_pixels} px per line")


def fit_text(
    text: str,
    size: tuple[int, int] | int,
    *,
    font: str = "sans",
    colour: str | Sequence[int] = "black",
    background: str | Sequence[int] = "white",
    max_pixels: int | None = None,
    min_pixels: int = 6,
    margin: int | None = None,
    line_spacing: float = 1.2,
    centre: bool = True,
) -> Image.Image:
    """`text` at the largest font (in pixels, <= `max_pixels`) that fits a `size` canvas
    (`fit_pixels`), wrapped at its width, centred when `centre`; ValueError if even
    `min_pixels` does not fit."""
    width, height = (size, size) if isinstance(size, int) else size
    pixels = fit_pixels(text, (width, height), font=font, max_pixels=max_pixels, min_pixels=min_pixels,
                        margin=margin, line_spacing=line_spacing)
    face = _font(font, pixels)
    m = _margin(pixels, margin)
    lines, w, h = _layout(text, face, pixels, width - 2 * m, line_spacing)
    origin = ((width - w) // 2, (height - h) // 2) if centre else (m, m)
    return _draw(lines, face, pixels, line_spacing, (width, height), background, colour, origin,
                 centred_in=w if centre else None)
