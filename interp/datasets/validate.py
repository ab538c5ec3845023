"""``validate(case)``: every rule a case must keep, each with a name that the error carries.

Rules marked *synthetic* apply to the generated sets (``task`` "colour" or "shape"), whose
wording and images we control; imported MC² cases (any other ``task``) are held to the
general rules only. The image rules read pixels, relying on the flat, unblended palette of
``drawing.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from interp.datasets.case import CASE_KINDS, Case
from interp.datasets.drawing import COLOUR_RGB, COLOURS, SHAPES
from interp.datasets.text import COLOUR_OBJECTS, SHAPE_OBJECTS, TEXT_TIERS, words
from interp.datasets.tiers import COLOUR_VISUAL_TIERS, SHAPE_VISUAL_TIERS
from interp.errors import CaseError
from interp.vocabulary import normalise_answer

RULES: dict[str, str] = {
    "ids": "id and group_id are non-empty strings",
    "image": "the image is a PIL image, or a file that exists and decodes",
    "question": "the question is non-empty and ends with '?'; synthetic: it has its set's form",
    "context": "the context is a non-empty string (the text the text-only pass reads)",
    "answers": "both answers are non-empty; synthetic: one word each, from the set's values",
    "answers_differ": "the image answer and the text answer differ (after normalisation)",
    "candidates_lead": "each candidate list is non-empty and starts with its answer",
    "candidates_disjoint": "no candidate is in both lists",
    "tiers": "synthetic: visual and text tiers are in range; imported: both None or integers",
    "control": "control is None, 'text_irrelevant' or 'image_irrelevant'",
    "target_box": "synthetic: (x0, y0, x1, y1) integers with x0 < x1, y0 < y1 inside the image",
    "seed": "synthetic: a non-negative integer; imported: None or one",
    "context_names_text_answer": "synthetic: the context states the text answer (tier 2: "
    "through an object of the table for it)",
    "context_hides_image_answer": "synthetic: the context never names the image answer",
    "control_subject": "synthetic: the context speaks of the subject asked about, except in a "
    "text-irrelevant control, where it must not",
    "text_colour_absent": "colour set: no pixel of the image has the text colour",
    "target_visible": "synthetic: pixels of the target's colour show inside target_box and "
    "nowhere else",
    "image_subject_absent": "shape set, image-irrelevant: no pixel has the colour asked about",
}
"""Rule name -> what it requires. ``CaseError.rule`` holds the name of the rule that failed."""

_SYNTHETIC = ("colour", "shape")
_QUESTION_FORM = {
    "colour": re.compile(r"^What colour is the ([a-z]+)\?$"),
    "shape": re.compile(r"^What shape is the ([a-z]+) object\?$"),
}
_VALUES = {"colour": COLOURS, "shape": SHAPES}
_SUBJECTS = {"colour": SHAPES, "shape": COLOURS}
_OBJECTS = {"colour": COLOUR_OBJECTS, "shape": SHAPE_OBJECTS}
_VISUAL_TIERS = {"colour": COLOUR_VISUAL_TIERS, "shape": SHAPE_VISUAL_TIERS}


def _fail(case: Case, rule: str, detail: str):
    err = CaseError(f"case {case.id!r} breaks rule '{rule}' ({RULES[rule]}): {detail}")
    err.rule = rule
    raise err


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _contains(text_words: list[str], phrase: str) -> bool:
    """Whether the word sequence of ``phrase`` occurs in ``text_words``."""
    target = words(phrase)
    n = len(target)
    return any(text_words[i : i + n] == target for i in range(len(text_words) - n + 1))


def validate(case: Case, check_image: bool = True) -> Case:
    """Check every rule of ``RULES``; return the case, or raise ``CaseError`` naming the rule.

    ``check_image=False`` skips the rules that decode pixels (``image`` then only needs to
    be a PIL image or an existing path): the generators check each scene once, not once per
    text tier sharing it.
    """
    if not (isinstance(case.id, str) and case.id.strip()):
        _fail(case, "ids", f"id is {case.id!r}")
    if not (isinstance(case.group_id, str) and case.group_id.strip()):
        _fail(case, "ids", f"group_id is {case.group_id!r}")

    pixels = None
    if isinstance(case.image, Image.Image):
        if check_image:
            pixels = np.asarray(case.open_image())
    elif isinstance(case.image, (str, Path)):
        if not Path(case.image).is_file():
            _fail(case, "image", f"no file at {case.image}")
        if check_image:
            try:
                pixels = np.asarray(case.open_image())
            except (OSError, ValueError) as err:
                _fail(case, "image", f"{case.image} does not decode: {err}")
    else:
        _fail(case, "image", f"expected a PIL image or a path, got {type(case.image).__name__}")

    synthetic = case.task in _SYNTHETIC
    if not (isinstance(case.question, str) and case.question.strip().endswith("?")):
        _fail(case, "question", f"question is {case.question!r}")
    if not (isinstance(case.context, str) and case.context.strip()):
        _fail(case, "context", f"context is {case.context!r}")
    subject = None
    if synthetic:
        match = _QUESTION_FORM[case.task].match(case.question)
        if not match or match.group(1) not in _SUBJECTS[case.task]:
            _fail(case, "question", f"{case.question!r} is not of the {case.task} set's form")
        subject = match.group(1)

    for name in ("image_answer", "text_answer"):
        answer = getattr(case, name)
        if not (isinstance(answer, str) and normalise_answer(answer)):
            _fail(case, "answers", f"{name} is {answer!r}")
        if synthetic and answer not in _VALUES[case.task]:
            _fail(case, "answers", f"{name} {answer!r} is not one of {_VALUES[case.task]}")
    if normalise_answer(case.image_answer) == normalise_answer(case.text_answer):
        _fail(case, "answers_differ", f"both answers are {case.image_answer!r}")

    for name, answer in (("image_candidates", case.image_answer), ("text_candidates", case.text_answer)):
        candidates = getattr(case, name)
        if not candidates or normalise_answer(candidates[0]) != normalise_answer(answer):
            _fail(case, "candidates_lead", f"{name} {list(candidates or [])} does not start with {answer!r}")
    shared = {normalise_answer(c) for c in case.image_candidates} & {
        normalise_answer(c) for c in case.text_candidates
    }
    if shared:
        _fail(case, "candidates_disjoint", f"{sorted(shared)} in both lists")

    if synthetic:
        if case.visual_tier not in _VISUAL_TIERS[case.task] or not _is_int(case.visual_tier):
            _fail(case, "tiers", f"visual tier {case.visual_tier!r} not in {_VISUAL_TIERS[case.task]}")
        if case.text_tier not in TEXT_TIERS or not _is_int(case.text_tier):
            _fail(case, "tiers", f"text tier {case.text_tier!r} not in {TEXT_TIERS}")
    else:
        for tier in (case.visual_tier, case.text_tier):
            if tier is not None and not _is_int(tier):
                _fail(case, "tiers", f"tier {tier!r} is neither None nor an integer")

    if case.control not in CASE_KINDS:
        _fail(case, "control", f"control is {case.control!r}")

    box = case.target_box
    if box is not None or synthetic:
        if box is None or len(box) != 4 or not all(_is_int(v) for v in box):
            _fail(case, "target_box", f"target_box is {box!r}")
        if pixels is not None:
            height, width = pixels.shape[:2]
        else:
            width, height = case.image_size()
        x0, y0, x1, y1 = box
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            _fail(case, "target_box", f"{tuple(box)} is empty or outside the {width}x{height} image")

    if synthetic:
        if not _is_int(case.seed) or case.seed < 0:
            _fail(case, "seed", f"seed is {case.seed!r}")
    elif case.seed is not None and not _is_int(case.seed):
        _fail(case, "seed", f"seed is {case.seed!r}")

    if synthetic:
        _check_context(case, subject)
        if pixels is not None:
            _check_pixels(case, subject, pixels)
    return case


def _check_context(case: Case, subject: str) -> None:
    context = words(case.context)
    objects = _OBJECTS[case.task]
    if case.text_tier == 2:
        if not any(_contains(context, obj) for obj in objects[case.text_answer]):
            _fail(case, "context_names_text_answer",
                  f"no object of the {case.text_answer!r} table in {case.context!r}")
    elif case.text_answer not in context:
        _fail(case, "context_names_text_answer", f"{case.text_answer!r} not in {case.context!r}")
    leaks = [c for c in case.image_candidates if _contains(context, c)]
    leaks += [o for o in objects[case.image_answer] if _contains(context, o)]
    if leaks:
        _fail(case, "context_hides_image_answer", f"{leaks} in {case.context!r}")
    mentioned = subject in context
    if case.control == "text_irrelevant" and mentioned:
        _fail(case, "control_subject", f"text-irrelevant context speaks of {subject!r}")
    if case.control != "text_irrelevant" and not mentioned:
        _fail(case, "control_subject", f"the context never speaks of {subject!r}")


def _pack(rgb) -> np.ndarray:
    """RGB -> one int32 per pixel, so a colour test is one comparison instead of three."""
    rgb = np.asarray(rgb, dtype=np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _colour_mask(packed: np.ndarray, colour: str) -> np.ndarray:
    return packed == _pack(COLOUR_RGB[colour])


def _check_pixels(case: Case, subject: str, pixels: np.ndarray) -> None:
    pixels = _pack(pixels)
    if case.task == "colour":
        if _colour_mask(pixels, case.text_answer).any():
            _fail(case, "text_colour_absent", f"the image shows the text colour {case.text_answer!r}")
        target_colour = case.image_answer
    elif case.control == "image_irrelevant":
        if _colour_mask(pixels, subject).any():
            _fail(case, "image_subject_absent", f"the image shows a {subject!r} object")
        return  # the target's colour is not named by this case
    else:
        target_colour = subject
    mask = _colour_mask(pixels, target_colour)
    x0, y0, x1, y1 = case.target_box
    inside = int(mask[y0:y1, x0:x1].sum())
    if inside == 0:
        _fail(case, "target_visible", f"no {target_colour!r} pixel inside {tuple(case.target_box)}")
    if int(mask.sum()) != inside:
        _fail(case, "target_visible", f"{target_colour!r} pixels outside {tuple(case.target_box)}")
