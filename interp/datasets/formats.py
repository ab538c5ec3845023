"""Items in three formats (text, image, mixed) and the REST+ rendering variants (METHOD §2).

A `ConsistencyItem` is a question with a known answer, an optional context and its answer
parser. `item_formats(item, variant)` gives the three `FormattedItem`s the model is asked:

- ``text``: the context and the question as text, no image;
- ``image``: context and question rendered into one image; the text turn holds only
  :data:`IMAGE_PROMPT` (the instruction to answer what the image asks);
- ``mixed``: the context rendered, the question as text.

Items come from the colour conflict set (`colour_items`: the case's context sentence is the
context, the answer the one the sentence states), SoEBench (`soe_items`) and a user JSONL
(`load_items`: ``question``, ``answer``, optional ``context``, optional ``pattern``).

**[ours]** conventions:

- An item without a context has no mixed format (``None``): there is nothing to render apart
  from the question. The study counts such items in per-format accuracy and leaves them out of
  the three-format metrics (RER / CFR / MMC), with a count.
- Rendering: :data:`RENDER_WIDTH` px wide (margins included), 12 pt; the default variant is
  DejaVu Sans at 100 DPI, black on white; the REST+ variants are the 3 fonts x 3 DPIs of
  `interp.datasets.render` plus DejaVu Sans at 100 DPI in red (:data:`REST_PLUS`).
- The parser of an item is named by its ``task``: ``"word"`` (the first allowed word),
  ``"soe"`` (every variable's value), ``"regex"`` (``pattern``'s first group, compared to the
  answer case-insensitively and whitespace-collapsed; a JSONL line without a pattern takes
  :data:`FIRST_PHRASE`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from PIL import Image

from interp.datasets.render import DPIS, FONTS, fit_text, render_text
from interp.datasets.soebench import SoeItem, parse_regex, parse_soe, parse_word
from interp.datasets.text import INSTRUCTION
from interp.errors import DatasetError

__all__ = [
    "IMAGE_PROMPT", "RENDER_WIDTH", "REST_PLUS", "DEFAULT_VARIANT", "ConsistencyItem", "FormattedItem", "Variant",
    "SIGN_FRACTION", "colour_items", "item_formats", "load_items", "pad_square", "sign_images", "soe_items",
]

IMAGE_PROMPT = "Answer the question in the image."
"""The text turn of the image format **[ours]**."""
RENDER_WIDTH = 448
"""Width in pixels of a rendered problem **[ours]**: about 50 characters of 12 pt at 100 DPI."""
TASKS = ("word", "soe", "regex")
FIRST_PHRASE = r"([^\n.!?]+)"
"""The parser of a JSONL line without a ``pattern`` **[ours]**: the text up to the first line or
sentence end."""


@dataclass(frozen=True)
class Variant:
    """A rendering of the rendered parts: font, DPI, text colour, font size in points; or, with
    `canvas` (pixels at 100 DPI), the text wrapped and fitted at the largest size that fills a
    square canvas of `canvas` x DPI / 100 pixels (the font size is then the fit's)."""

    name: str
    font: str = "sans"
    dpi: int = 100
    colour: str = "black"
    font_size: float = 12.0
    canvas: int | None = None

    def render(self, text: str, width: int = RENDER_WIDTH) -> Image.Image:
        if self.canvas is not None:
            if not text.strip() or self.dpi <= 0 or self.canvas < 1:
                raise ValueError(f"a canvas rendering needs non-empty text, dpi > 0 and canvas >= 1 (got {text!r}, "
                                 f"dpi {self.dpi}, canvas {self.canvas})")
            side = max(1, round(self.canvas * self.dpi / 100))
            try:
                return fit_text(text, side, font=self.font, colour=self.colour, min_pixels=1)
            except ValueError:
                raise DatasetError(f"{text[:60]!r}... does not fit a {side} px square canvas even at 1 px per line; "
                                   f"use a larger canvas (--canvas) or none (--canvas none)") from None
        # the width scales with the DPI so the line breaks are the same at every resolution
        return render_text(text, font=self.font, font_size=self.font_size, dpi=self.dpi, colour=self.colour,
                           width=max(1, round(width * self.dpi / 100)))


DEFAULT_VARIANT = Variant("default")
REST_PLUS: tuple[Variant, ...] = tuple(Variant(f"{f}-{d}", f, d) for f in FONTS for d in DPIS) + (
    Variant("sans-100-red", colour="red"),)
"""The REST+ variants: 3 fonts x 3 DPIs, and one coloured-text variant."""


@dataclass(frozen=True)
class ConsistencyItem:
    """A question with a known answer; `allowed` (task "word"), `variables` ("soe") or
    `pattern` ("regex") configure the parser; `accepted`: answers that also count as right."""

    item_id: str
    source: str
    question: str
    answer: str
    context: str | None = None
    task: str = "word"
    allowed: tuple[str, ...] = ()
    accepted: tuple[str, ...] = ()
    variables: str = ""
    pattern: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {TASKS}")
        if not self.question.strip() or not str(self.answer).strip():
            raise ValueError(f"item {self.item_id}: the question and the answer must be non-empty")

    def parse(self, text: str) -> str | None:
        """The canonical answer in the model's `text`, or None (invalid)."""
        if self.task == "word":
            return parse_word(text, self.allowed or (self.answer, *self.accepted))
        if self.task == "soe":
            return parse_soe(text, self.variables)
        found = parse_regex(text, self.pattern or r"(.+)")
        return " ".join(found.lower().split()) if found is not None else None

    def is_correct(self, parsed: str | None) -> bool:
        if parsed is None:
            return False
        norm = lambda s: " ".join(str(s).lower().split())  # noqa: E731
        return norm(parsed) in {norm(a) for a in (self.answer, *self.accepted)}

    @property
    def problem(self) -> str:
        """The whole problem as one text: the context, a line break, the question."""
        return f"{self.context}\n{self.question}" if self.context else self.question


@dataclass(frozen=True)
class FormattedItem:
    """One format of an item: `question` / `context` go in as text, `image` (or None) is the
    rendered part and `rendered` the text drawn in it (the OCR target)."""

    item_id: str
    format: str
    variant: str
    question: str
    context: str | None
    image: Image.Image | None
    rendered: str | None


def item_formats(item: ConsistencyItem, variant: Variant = DEFAULT_VARIANT,
                 width: int = RENDER_WIDTH) -> dict[str, FormattedItem | None]:
    """The text, image and mixed formats of `item` (mixed None without a context)."""
    mixed = None
    if item.context:
        mixed = FormattedItem(item.item_id, "mixed", variant.name, item.question, None,
                              variant.render(item.context, width), item.context)
    return {
        "text": FormattedItem(item.item_id, "text", variant.name, item.question, item.context, None, None),
        "image": FormattedItem(item.item_id, "image", variant.name, IMAGE_PROMPT, None,
                               variant.render(item.problem, width), item.problem),
        "mixed": mixed,
    }


def colour_items(cases: Iterable[Any], colours: Sequence[str]) -> list[ConsistencyItem]:
    """Items from colour-set cases: the context sentence and the question (with the one-word
    instruction); the answer is what the sentence states (`text_answer`), `colours` the parser's
    words. Controls are skipped (their sentence does not answer the question)."""
    out = []
    for case in cases:
        if case.control is not None:
            continue
        out.append(ConsistencyItem(case.id, "colour", f"{case.question} {INSTRUCTION}", case.text_answer,
                                   context=case.context, task="word", allowed=tuple(colours),
                                   accepted=tuple(case.text_candidates),
                                   meta={"text_tier": case.text_tier, "visual_tier": case.visual_tier}))
    return out


def soe_items(systems: Iterable[SoeItem]) -> list[ConsistencyItem]:
    """Items from SoEBench systems: the equations are the context."""
    return [ConsistencyItem(s.item_id, "soebench", s.question, s.answer, context=s.context, task="soe",
                            variables=s.variables) for s in systems]


def _line_item(record: Any, where: str, index: int) -> ConsistencyItem:
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: a line must be a JSON object with 'question' and 'answer'")
    for key in ("question", "answer"):
        if not isinstance(record.get(key), (str, int, float)) or not str(record[key]).strip():
            raise DatasetError(f"{where}: no '{key}' (every line needs a non-empty 'question' and 'answer'); "
                               "add it or remove the line")
    context = record.get("context")
    if context is not None and (not isinstance(context, str) or not context.strip()):
        raise DatasetError(f"{where}: 'context' must be a non-empty string when given; drop the key or fill it")
    pattern = record.get("pattern")
    return ConsistencyItem(str(record.get("id", f"jsonl-{index:05d}")), "jsonl", str(record["question"]),
                           str(record["answer"]), context=context, task="regex",
                           pattern=pattern or FIRST_PHRASE, accepted=tuple(str(a) for a in record.get("accepted", ())))


def load_items(path: str | Path) -> list[ConsistencyItem]:
    """Items from a JSONL file; a bad line raises DatasetError naming the line and the fix."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"cannot read the items file {path}: {err}; give a UTF-8 JSONL file") from None
    items = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DatasetError(f"{where}: not JSON ({err.msg}); write one JSON object per line") from None
        items.append(_line_item(record, where, n))
    if not items:
        raise DatasetError(f"{path} holds no items; write one JSON object per line with 'question' and 'answer'")
    ids = [it.item_id for it in items]
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{path}: item ids repeat; give every line its own 'id'")
    return items


SIGN_FRACTION = 0.35
"""Height of the sign below a scene, as a fraction of the scene's height **[ours]**."""
SIGN_MIN_WIDTH = 224
"""A scene narrower than this is enlarged by a whole factor (nearest neighbour) before its sign is
drawn **[ours]**, so that a sentence fits (the processor resizes the result to the model's input)."""


def sign_images(scene: Image.Image, text: str, *, fraction: float = SIGN_FRACTION, font: str = "sans",
                colour: str = "black") -> tuple[Image.Image, Image.Image]:
    """(`scene` with a sign below it, the sign alone on a blank canvas of the same size).

    The typographic conflict (METHOD §2 -> §1): the context sentence drawn into the picture as
    a white sign with a black frame under the scene (the scene itself is left intact), as large
    as fits (`fit_text`); the sign-alone image is the same canvas with the scene left white, so
    its sign pixels are the signed scene's. Both images are :data:`SIGN_MIN_WIDTH` px wide or more.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"the sign's height fraction must lie in (0, 1]; got {fraction!r}")
    if scene.size[0] < SIGN_MIN_WIDTH:  # a small scene is enlarged (nearest) so a sentence fits its sign
        k = -(-SIGN_MIN_WIDTH // scene.size[0])
        scene = scene.resize((scene.size[0] * k, scene.size[1] * k), Image.Resampling.NEAREST)
    w, h = scene.size
    band = max(12, round(h * fraction))
    sign = fit_text(text, (w - 2, band - 2), font=font, colour=colour, min_pixels=4)
    signed = Image.new("RGB", (w, h + band), (255, 255, 255))
    signed.paste(scene.convert("RGB"), (0, 0))
    alone = Image.new("RGB", (w, h + band), (255, 255, 255))
    for canvas in (signed, alone):
        canvas.paste((0, 0, 0), (0, h, w, h + band))  # the frame
        canvas.paste(sign, (1, h + 1))
    return signed, alone


def pad_square(image: Image.Image, background: str | tuple[int, int, int] = "white") -> Image.Image:
    """`image` centred on a square canvas of its longer side (a processor that crops or squashes
    every image to one square then keeps all of it, at one scale)."""
    w, h = image.size
    if w == h:
        return image.copy()
    side = max(w, h)
    canvas = Image.new(image.mode, (side, side), background)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas
