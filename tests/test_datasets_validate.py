"""validate(): a hand-built good case passes, and each rule rejects a hand-built bad case."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from interp.datasets import RULES, Case, validate
from interp.errors import CaseError

RED, BLUE, GREEN = (220, 30, 30), (30, 80, 220), (30, 160, 60)  # the palette, typed by hand


def _image(extra: dict[tuple[int, int], tuple[int, int, int]] | None = None) -> Image.Image:
    """64x64 white with a red 20x20 square at x, y in [10, 30)."""
    pixels = np.full((64, 64, 3), 255, np.uint8)
    pixels[10:30, 10:30] = RED
    for (x, y), rgb in (extra or {}).items():
        pixels[y, x] = rgb
    return Image.fromarray(pixels, "RGB")


def colour_case(**changes) -> Case:
    case = Case(
        id="hand-1",
        group_id="hand",
        image=_image(),
        question="What colour is the square?",
        context="The square is blue.",
        image_answer="red",
        text_answer="blue",
        image_candidates=("red", "crimson"),
        text_candidates=("blue",),
        visual_tier=0,
        text_tier=0,
        control=None,
        target_box=(10, 10, 30, 30),
        seed=7,
        task="colour",
    )
    return replace(case, **changes)


def shape_case(**changes) -> Case:
    case = colour_case(
        question="What shape is the red object?",
        context="The red object is a circle.",
        image_answer="square",
        text_answer="circle",
        image_candidates=("square",),
        text_candidates=("circle", "round"),
        task="shape",
    )
    return replace(case, **changes)


def test_good_cases_pass_and_prompts_follow_method():
    case = validate(colour_case())
    validate(shape_case())
    validate(colour_case(control="text_irrelevant", context="The star is blue."))
    validate(colour_case(control="image_irrelevant", question="What colour is the star?",
                         context="The star is blue."))
    validate(colour_case(text_tier=2, context="The square has the colour of a sapphire."))
    assert case.prompt == (
        "The square is blue. What colour is the square? Please use one word to answer this question."
    )
    assert case.vision_prompt == "What colour is the square? Please use one word to answer this question."
    assert case.text_prompt == case.prompt
    assert case.expected_answer == "red"
    assert colour_case(control="image_irrelevant").expected_answer == "blue"


BAD_CASES = {
    "ids": lambda tmp: colour_case(group_id=" "),
    "image": lambda tmp: colour_case(image=tmp / "no-such-image.png"),
    "question": lambda tmp: colour_case(question="What colour is the ball?"),
    "context": lambda tmp: colour_case(task="mc2:color", context="  "),
    "answers": lambda tmp: colour_case(text_answer="teal", text_candidates=("teal",),
                                       context="The square is teal."),
    "answers_differ": lambda tmp: colour_case(task="mc2:color", text_answer=" Red.",
                                              text_candidates=(" Red.",)),
    "candidates_lead": lambda tmp: colour_case(image_candidates=("crimson", "red")),
    "candidates_disjoint": lambda tmp: colour_case(text_candidates=("blue", "crimson")),
    "tiers": lambda tmp: colour_case(visual_tier=14),
    "control": lambda tmp: colour_case(control="both_irrelevant"),
    "target_box": lambda tmp: colour_case(target_box=(10, 10, 65, 30)),
    "seed": lambda tmp: colour_case(seed=-1),
    "context_names_text_answer": lambda tmp: colour_case(context="The square is nice."),
    "context_hides_image_answer": lambda tmp: colour_case(context="The square is blue, not red."),
    "control_subject": lambda tmp: colour_case(control="text_irrelevant"),
    "text_colour_absent": lambda tmp: colour_case(image=_image({(50, 50): BLUE})),
    "target_visible": lambda tmp: colour_case(image=_image({(50, 50): RED})),
    "image_subject_absent": lambda tmp: shape_case(
        control="image_irrelevant", question="What shape is the green object?",
        context="The green object is a circle.", image=_image({(50, 50): GREEN})),
}


def test_every_rule_has_a_bad_case():
    assert set(BAD_CASES) == set(RULES)


@pytest.mark.parametrize("rule", sorted(BAD_CASES))
def test_rule_rejects_its_bad_case(rule, tmp_path):
    with pytest.raises(CaseError) as info:
        validate(BAD_CASES[rule](tmp_path))
    assert info.value.rule == rule
    assert f"'{rule}'" in str(info.value)


@pytest.mark.parametrize(
    "rule, case",
    [
        ("question", colour_case(question="What colour is the square")),
        ("target_box", colour_case(target_box=(30, 10, 10, 30))),
        ("target_visible", colour_case(target_box=(40, 40, 60, 60))),
        ("control_subject", colour_case(context="The star is blue.")),
        ("tiers", shape_case(visual_tier=4)),
        ("context_names_text_answer", colour_case(text_tier=2, context="The square has the colour of a lemon.")),
    ],
)
def test_more_ways_to_break_a_rule(rule, case):
    with pytest.raises(CaseError) as info:
        validate(case)
    assert info.value.rule == rule


def test_undecodable_image_file_is_rejected(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(CaseError) as info:
        validate(colour_case(image=path))
    assert info.value.rule == "image"


def test_imported_cases_skip_synthetic_rules():
    case = colour_case(task="mc2:color", question="What color is the bus?", context="The bus is blue.",
                       image_answer="yellow", text_answer="blue", image_candidates=("yellow",),
                       visual_tier=None, text_tier=None, target_box=None, seed=None)
    validate(case)
