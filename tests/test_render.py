"""Rendered text (`interp.datasets.render`): sizes, wrapping, fitting, colours, determinism."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from interp.datasets.drawing import COLOUR_RGB
from interp.datasets.render import FONTS, _font, fit_pixels, fit_text, font_path, pixel_size, render_text, wrap


def digest(image) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


def ink_box(image):
    """Bounding box of every non-white pixel."""
    a = np.asarray(image.convert("RGB")).astype(int)
    ys, xs = np.nonzero((a != 255).any(axis=2))
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def test_point_sizes_turn_into_pixels_by_the_dpi():
    # 12 pt = 12/72 inch: 8.33, 16.67 and 33.33 px at 50, 100 and 200 dpi
    assert [pixel_size(12, d) for d in (50, 100, 200)] == [8, 17, 33]
    assert pixel_size(0.1, 50) == 1
    with pytest.raises(ValueError, match="positive"):
        pixel_size(0, 100)


def test_the_fonts_ship_with_matplotlib_and_differ():
    assert {font_path(f).name for f in FONTS} == {"DejaVuSans.ttf", "DejaVuSansMono.ttf", "DejaVuSerif.ttf"}
    assert len({digest(render_text("purple", font=f, dpi=100)) for f in FONTS}) == 3
    with pytest.raises(ValueError, match="unknown font 'comic'"):
        render_text("x", font="comic")


def test_rendering_is_deterministic_and_sized_by_the_text():
    a, b = render_text("the star is red .", dpi=100), render_text("the star is red .", dpi=100)
    assert digest(a) == digest(b)
    small, large = render_text("red", dpi=50), render_text("red", dpi=200)
    assert large.size[0] > 3 * small.size[0] and large.size[1] > 3 * small.size[1]


def test_greedy_wrapping_breaks_between_words_at_the_width():
    face = _font("sans", 20)
    two, three = face.getlength("a bb"), face.getlength("a bb ccc")
    assert wrap("a bb ccc", face, (two + three) / 2) == ["a bb", "ccc"]
    assert wrap("a bb ccc", face, three + 1) == ["a bb ccc"]
    assert wrap("a bb ccc", face, 1) == ["a", "bb", "ccc"]  # a word wider than the line stands alone
    assert wrap("a\nbb", face, None) == ["a", "bb"]
    image = render_text("a bb ccc", font_size=15, dpi=96, width=int(two) + 12)
    lines = np.nonzero((np.asarray(image.convert("L")) < 128).any(axis=1))[0]
    assert len(np.split(lines, np.nonzero(np.diff(lines) > 1)[0] + 1)) == 2  # two bands of ink


def test_text_takes_the_asked_colour_and_background():
    image = render_text("red", font_size=40, dpi=100, colour="red", background=(0, 0, 0))
    pixels = {tuple(p) for p in np.asarray(image).reshape(-1, 3)}
    assert COLOUR_RGB["red"] in pixels and (0, 0, 0) in pixels and (255, 255, 255) not in pixels
    with pytest.raises(ValueError, match="unknown colour"):
        render_text("x", colour="not-a-colour")
    with pytest.raises(ValueError, match="non-empty"):
        render_text("  ")


def test_a_fixed_canvas_refuses_text_that_does_not_fit():
    assert render_text("red", size=(64, 64), font_size=10, dpi=72).size == (64, 64)
    with pytest.raises(ValueError, match="fit_text"):
        render_text("a much longer sentence than fits", size=(40, 20), font_size=20, dpi=100)


@pytest.mark.parametrize("text", ["red", "yellow", "The star is painted blue."])
def test_fit_text_uses_the_largest_size_that_fits(text):
    pixels = fit_pixels(text, 64)
    image = fit_text(text, 64)
    assert image.size == (64, 64)
    x0, y0, x1, y1 = ink_box(image)
    assert 0 <= x0 and x1 <= 64 and 0 <= y0 and y1 <= 64
    # a second method: render_text on the same canvas accepts `pixels` and refuses one more
    render_text(text, size=(64, 64), font_size=pixels, dpi=72)
    with pytest.raises(ValueError):
        render_text(text, size=(64, 64), font_size=pixels + 1, dpi=72)
    assert fit_pixels(text, 128) >= pixels


def test_fit_text_refuses_what_cannot_fit():
    with pytest.raises(ValueError, match="does not fit"):
        fit_text("an extremely long sentence " * 20, 32, min_pixels=8)


def test_the_font_cache_holds_every_size_fit_pixels_tries_on_a_64_px_canvas():
    """Drawing rendered words the way training does (every font, sizes searched down from the
    canvas height) opens each (font, size) once: misses equal the entries kept, none evicted.
    A 64-entry cache evicted them (3 fonts x up to 59 sizes) and reopened the file every call."""
    import numpy as np

    from interp.datasets.drawing import COLOURS
    from modality_lens.tiny_vlm.reading import word_image

    _font.cache_clear()
    rng = np.random.default_rng(0)
    for _ in range(40):
        word_image(COLOURS[int(rng.integers(len(COLOURS)))], 64, rng)
    info = _font.cache_info()
    assert info.currsize > 64  # more than the old cache could hold
    assert info.misses == info.currsize and info.hits > info.misses
