"""The three formats, the REST+ variants, byte-identical rendering, a rendered word read back by
template matching against glyphs drawn separately (no model), and bad input."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from interp.datasets import colour_cases
from interp.datasets.formats import (IMAGE_PROMPT, REST_PLUS, ConsistencyItem, Variant, colour_items, item_formats,
                                     load_items, soe_items)
from interp.datasets.render import render_text
from interp.datasets.soebench import soebench
from interp.errors import DatasetError


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_rendering_is_byte_identical_for_the_same_arguments():
    item = soe_items(soebench(1, seed=4))[0]
    for variant in REST_PLUS:
        a, b = item_formats(item, variant), item_formats(item, variant)
        assert _png(a["image"].image) == _png(b["image"].image)
        assert _png(a["mixed"].image) == _png(b["mixed"].image)
    digests = {hashlib.sha256(_png(item_formats(item, v)["image"].image)).hexdigest() for v in REST_PLUS}
    assert len(digests) == len(REST_PLUS) == 10  # every variant draws something different


def test_three_formats_hold_the_right_parts():
    item = ConsistencyItem("x", "jsonl", "What colour is the sky?", "blue", context="The sky is blue.")
    f = item_formats(item)
    assert f["text"].image is None and f["text"].context == item.context and f["text"].question == item.question
    assert f["image"].context is None and f["image"].question == IMAGE_PROMPT
    assert f["image"].rendered == "The sky is blue.\nWhat colour is the sky?"
    assert f["mixed"].context is None and f["mixed"].question == item.question and f["mixed"].rendered == item.context
    assert item_formats(ConsistencyItem("y", "jsonl", "2 + 2 = ?", "4"))["mixed"] is None
    # the DPI scales the canvas, not the line breaks: 200 DPI is about twice 100 DPI
    w100 = item_formats(item, Variant("a", dpi=100))["image"].image.size
    w200 = item_formats(item, Variant("b", dpi=200))["image"].image.size
    assert abs(w200[1] / w100[1] - 2) < 0.15


def test_sources_colour_soebench_jsonl(tmp_path):
    cases = list(colour_cases(1, seed=0, image_size=32, visual_tiers=[0], text_tiers=[0, 1]))
    items = colour_items(cases, ["red", "blue", "green", "yellow", "purple", "orange"])
    assert len(items) == 2 and all(it.context and it.answer for it in items)
    tier0 = next(it for it in items if it.meta["text_tier"] == 0)
    assert tier0.answer in tier0.context  # tier 0 states the colour outright
    assert tier0.is_correct(tier0.parse(f"It is {tier0.answer}."))
    soe = soe_items(soebench(2, seed=0))[0]
    assert soe.is_correct(soe.parse(soe.answer)) and not soe.is_correct(soe.parse("no idea"))
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps({"question": "Capital of France?", "answer": "Paris"}) + "\n\n"
                    + json.dumps({"id": "n", "question": "N?", "answer": "7", "context": "N is 7.", "pattern": r"(\d+)"}))
    loaded = load_items(path)
    assert [it.item_id for it in loaded] == ["jsonl-00001", "n"]
    assert loaded[0].is_correct(loaded[0].parse("Paris. It is")) and loaded[1].parse("it is 7") == "7"
    assert loaded[1].parse("seven") is None  # a parser that matches nothing: invalid, and wrong
    assert not loaded[1].is_correct(None)


@pytest.mark.parametrize("line, message", [
    ('{"question": "Q?"}', "no 'answer'"),
    ('{"question": "Q?", "answer": "  "}', "no 'answer'"),
    ('{"answer": "A"}', "no 'question'"),
    ('not json', "not JSON"),
    ('{"question": "Q?", "answer": "a", "context": ""}', "'context'"),
])
def test_bad_jsonl_lines(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "ok?", "answer": "ok"}\n' + line + "\n")
    with pytest.raises(DatasetError, match=message) as err:
        load_items(path)
    assert ":2" in str(err.value)  # the line is named
    assert path.read_text().startswith('{"question": "ok?"')  # nothing written is touched


def test_bad_rendering_arguments():
    with pytest.raises(ValueError, match="unknown font"):
        Variant("x", font="comic").render("hello")
    with pytest.raises(ValueError, match="dpi"):
        Variant("x", dpi=0).render("hello")
    with pytest.raises(ValueError, match="non-empty"):
        render_text("   ")
    with pytest.raises(ValueError):
        ConsistencyItem("x", "jsonl", "Q?", "")


def _ink_box(rgb: np.ndarray) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the pixels darker than white, right and bottom exclusive."""
    ys, xs = np.nonzero(rgb.min(axis=-1) < 200)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def test_a_canvas_fits_the_text_to_a_square_the_dpi_scales():
    text = "Everyone can see that the circle is red."
    for dpi, side in ((50, 32), (100, 64), (200, 128)):
        image = Variant("x", dpi=dpi, canvas=64).render(text)
        assert image.size == (side, side)
        assert _png(image) == _png(Variant("x", dpi=dpi, canvas=64).render(text))
    image = np.asarray(Variant("x", canvas=64).render(text))
    left, top, right, bottom = _ink_box(image)
    assert 0 < left and right < 64 and 0 < top and bottom < 64  # all of it inside, a margin around it
    assert right - left > 0.75 * 64  # as large as fits: the widest line spans most of the canvas
    height = lambda im: (lambda b: b[3] - b[1])(_ink_box(np.asarray(im)))  # noqa: E731
    # a short text is drawn larger than at its point size: "red" at 12 pt is about 12 px of ink high
    assert height(Variant("x", canvas=64).render("red")) > 1.5 * height(Variant("x").render("red"))
    red = np.asarray(Variant("x", canvas=64, colour="red").render(text)).astype(int)
    assert (red[..., 0] - red[..., 1] > 100).any()  # the variant's colour
    with pytest.raises(DatasetError, match="--canvas"):
        Variant("x", canvas=8, dpi=50).render(" ".join(["word"] * 400))
    for bad in (dict(dpi=0), dict(canvas=0)):
        with pytest.raises(ValueError, match="dpi > 0 and canvas >= 1"):
            Variant("x", **{"canvas": 64, **bad}).render(text)
    with pytest.raises(ValueError, match="non-empty"):
        Variant("x", canvas=64).render("  ")


def test_a_square_canvas_reaches_a_cropping_processor_whole():
    """A CLIP-style processor resizes the short side and crops the centre square: the point-size
    rendering of a sentence (a wide strip) loses both ends; the canvas rendering arrives whole."""
    from transformers import CLIPImageProcessor

    from hooks.processors import square_input_side

    processor = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64},
                                   image_mean=[0.0] * 3, image_std=[1.0] * 3)
    assert square_input_side(processor) == 64
    text = "Everyone can see that the circle is red."
    seen = lambda im: (processor(images=[im], return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)  # noqa: E731
                       * 255).round()
    source = Variant("x").render(text)
    ink = lambda a: float((255 - np.asarray(a, dtype=float)).sum())  # noqa: E731
    scale = (64 / min(source.size)) ** 2  # the resize multiplies the ink by the area's scale
    assert source.size[0] > 3 * source.size[1] and ink(seen(source)) < 0.3 * ink(source) * scale  # most is cut
    whole = Variant("x", canvas=64).render(text)
    assert _ink_box(seen(whole)) == _ink_box(np.asarray(whole))


def test_the_square_every_image_becomes_is_read_from_the_processor():
    import transformers as T

    from hooks.processors import square_input_side

    assert square_input_side(T.CLIPImageProcessor(crop_size={"height": 336, "width": 336})) == 336
    assert square_input_side(T.CLIPImageProcessor(do_center_crop=False, size={"shortest_edge": 336})) is None
    assert square_input_side(T.SiglipImageProcessor(size={"height": 224, "width": 224})) == 224  # squashed
    assert square_input_side(T.SiglipImageProcessor(size={"height": 224, "width": 448})) is None
    for dynamic in (T.Qwen2VLImageProcessor(), T.LlavaNextImageProcessor(), T.Idefics3ImageProcessor(),
                    T.MllamaImageProcessor()):  # dynamic resolution, any-res grids, splitting, tiles
        assert square_input_side(dynamic) is None, type(dynamic).__name__


# --------------------------------------------------------------------------- read-back by template matching
def _mono_font(pixels: int) -> ImageFont.FreeTypeFont:
    import matplotlib  # found here independently of interp.datasets.render.font_path

    return ImageFont.truetype(f"{matplotlib.get_data_path()}/fonts/ttf/DejaVuSansMono.ttf", pixels)


def _ink(image: Image.Image) -> np.ndarray:
    return 255.0 - np.asarray(image.convert("L"), dtype=float)


def _templates(face: ImageFont.FreeTypeFont, cell: int, height: int, alphabet: str) -> dict[str, np.ndarray]:
    out = {}
    for ch in alphabet:
        im = Image.new("L", (cell, height), 255)
        ImageDraw.Draw(im).text((0, 0), ch, font=face, fill=0)
        out[ch] = 255.0 - np.asarray(im, dtype=float)
    return out


def _read_mono(image: Image.Image, pixels: int, margin: int, alphabet: str) -> str:
    """Cut a one-line monospaced rendering into advance-width cells and match each cell against
    each glyph drawn alone (least squares, best of a few pixel shifts)."""
    face = _mono_font(pixels)
    cell = round(face.getlength("M"))
    ink = _ink(image)
    height = ink.shape[0] - margin
    templates = _templates(face, cell + 2, height, alphabet)
    n = round((ink.shape[1] - 2 * margin) / face.getlength("M"))
    text = ""
    for k in range(n):
        x0 = margin + round(k * face.getlength("M"))
        best = None
        for dx in (-1, 0, 1):
            patch = np.zeros((height, cell + 2))
            region = ink[margin:, max(0, x0 + dx):x0 + dx + cell + 2]
            patch[:, :region.shape[1]] = region[:height]
            for ch, t in templates.items():
                d = float(((patch - t) ** 2).sum())
                if best is None or d < best[0]:
                    best = (d, ch)
        text += best[1]
    return text


@pytest.mark.parametrize("word", ["blue", "purple", "tomato", "A=3"])
def test_rendered_word_reads_back_by_template_matching(word):
    pixels, margin = 24, 4
    image = render_text(word, font="mono", font_size=pixels * 72 / 100, dpi=100, margin=margin)
    assert _read_mono(image, pixels, margin, "abcdefghijklmnopqrstuvwxyzABCDE=0123456789") == word
