"""The colour and shape generators: tiers within spec, colour rules, controls, text tiers."""

from __future__ import annotations

import re

import numpy as np
import pytest

from interp.datasets import (
    COLOUR_RGB,
    SHAPES,
    colour_cases,
    colour_group,
    draw_colour_scene,
    draw_shape_scene,
    shape_cases,
    shape_group,
    shape_mask,
    text_context,
    vocabulary,
    words,
)
from interp.datasets.text import _TEMPLATES, COLOUR_OBJECTS, SHAPE_OBJECTS, render_context

# METHOD §1.6, typed from the table: tier -> (target box area share range, distractors, occlusion)
METHOD_TABLE = {
    5: ((0.20, 0.40), 7, 0.50),
    6: ((0.20, 0.40), 10, 0.80),
    7: ((0.05, 0.10), 7, 0.50),
    8: ((0.05, 0.10), 11, 0.80),
    9: ((0.04, 0.06), 20, 0.30),
    10: ((0.04, 0.06), 30, 0.60),
    11: ((0.04, 0.06), 40, 0.50),
    12: ((0.04, 0.06), 55, 0.60),
    13: ((0.04, 0.06), 70, 0.70),
}
SIX_COLOURS = {"red", "yellow", "blue", "green", "purple", "orange"}


def _pixels_of(image, colour: str) -> np.ndarray:
    return (np.asarray(image) == np.array(COLOUR_RGB[colour], np.uint8)).all(-1)


def _asked_shape(question: str) -> str:
    return re.fullmatch(r"What colour is the (\w+)\?", question).group(1)


def _scene_of(case, seed, image_size=None):
    """Redraw a colour case's scene from its seed."""
    group = colour_group(seed, int(case.group_id.rsplit("g", 1)[1]))
    return group, draw_colour_scene(case.visual_tier, group.target_shape, group.image_colour,
                                    group.text_colour, np.random.default_rng(case.seed),
                                    image_size, absent_shapes=(group.absent_shape,))


@pytest.mark.parametrize("image_size", [None, 64])
def test_occluded_tiers_within_method_spec(image_size):
    cases = list(colour_cases(3, seed=11, image_size=image_size, visual_tiers=METHOD_TABLE,
                              text_tiers=[0], controls=False))
    assert len(cases) == 3 * 9
    for case in cases:
        (lo, hi), n_distractors, occlusion = METHOD_TABLE[case.visual_tier]
        width, height = case.image.size
        assert (width, height) == ((224, 224) if image_size is None else (64, 64))
        x0, y0, x1, y1 = case.target_box
        assert lo <= (x1 - x0) * (y1 - y0) / (width * height) <= hi
        # occlusion from the pixels: visible target colour vs the whole shape's area
        visible = _pixels_of(case.image, case.image_answer)
        whole = shape_mask(_asked_shape(case.question), x1 - x0).sum()
        assert abs((1 - visible.sum() / whole) - occlusion) <= 0.10, case.id
        assert visible[y0:y1, x0:x1].sum() == visible.sum() > 0  # target colour only on the target
        group, scene = _scene_of(case, 11, image_size)
        assert np.array_equal(np.asarray(scene.image), np.asarray(case.image))
        roles = [o.role for o in scene.objects]
        assert roles.count("target") == 1 and len(roles) - 1 == n_distractors


def test_large_tiers_have_their_distractors_and_no_occlusion():
    for case in colour_cases(2, seed=5, visual_tiers=range(5), text_tiers=[0], controls=False):
        assert case.image.size == (800, 600)
        x0, y0, x1, y1 = case.target_box
        assert 80 <= x1 - x0 <= 200 and y1 - y0 == x1 - x0
        visible = _pixels_of(case.image, case.image_answer).sum()
        assert visible == shape_mask(_asked_shape(case.question), x1 - x0).sum()  # nothing covers it
        _, scene = _scene_of(case, 5)
        assert len(scene.objects) - 1 == case.visual_tier  # tier k has k distractors


def test_colour_rules_hold_on_pixels_and_objects():
    for case in colour_cases(4, seed=3, image_size=96, text_tiers=[0], controls=False):
        assert not _pixels_of(case.image, case.text_answer).any()
        group, scene = _scene_of(case, 3, 96)
        assert case.image_answer != case.text_answer
        for obj in scene.objects[1:]:
            assert obj.shape not in (group.target_shape, group.absent_shape)
            assert obj.colour not in (group.image_colour, group.text_colour)


def test_every_tier_works_at_64_pixels():
    cases = list(colour_cases(1, seed=0, image_size=64))  # validated while generated
    assert len(cases) == 14 * 4 * 3
    assert {c.image.size for c in cases} == {(64, 64)}
    shapes = list(shape_cases(1, seed=0, image_size=(64, 64)))
    assert len(shapes) == 4 * 4 * 3


def test_controls():
    cases = {c.id: c for c in colour_cases(2, seed=9, visual_tiers=[9], text_tiers=[0, 1, 2, 3])}
    for g in range(2):
        group = colour_group(9, g)
        for t in range(4):
            stem = f"colour-g{g:05d}-v09-t{t}"
            conflict, text_irr, image_irr = (cases[f"{stem}-{k}"] for k in ("conflict", "textirr", "imageirr"))
            assert conflict.question == text_irr.question == f"What colour is the {group.target_shape}?"
            assert image_irr.question == f"What colour is the {group.absent_shape}?"
            assert group.target_shape in words(conflict.context)
            assert group.target_shape not in words(text_irr.context)
            assert group.absent_shape in words(text_irr.context) and group.absent_shape in words(image_irr.context)
            assert text_irr.expected_answer == group.image_colour
            assert image_irr.expected_answer == group.text_colour
            _, scene = _scene_of(image_irr, 9)
            assert group.absent_shape not in {o.shape for o in scene.objects}


def test_cases_do_not_depend_on_what_else_is_generated():
    everything = {c.id: c for c in colour_cases(2, seed=4, image_size=64)}
    subset = list(colour_cases(2, seed=4, image_size=64, visual_tiers=[12, 3], text_tiers=[2]))
    assert len(subset) == 2 * 2 * 1 * 3
    for case in subset:
        same = everything[case.id]
        assert (case.context, case.question, case.seed, case.target_box) == (
            same.context, same.question, same.seed, same.target_box)
        assert np.array_equal(np.asarray(case.image), np.asarray(same.image))


def test_groups_balance_colour_pairs():
    pairs = [(colour_group(2, g).image_colour, colour_group(2, g).text_colour) for g in range(30)]
    assert len(set(pairs)) == 30 and all(a != b for a, b in pairs)  # all 6*5 ordered pairs once


def _template_regex(template: str) -> re.Pattern:
    parts = re.split(r"\{\w+\}", template)
    return re.compile("^" + "(.+?)".join(re.escape(p) for p in parts) + "$")


@pytest.mark.parametrize("kind", ["colour", "shape"])
def test_each_text_tier_uses_at_least_five_templates(kind):
    rng = np.random.default_rng(0)
    subject, value = ("star", "blue") if kind == "colour" else ("red", "circle")
    for tier in range(4):
        templates = _TEMPLATES[kind][tier]
        assert len(templates) >= 5
        patterns = [_template_regex(t) for t in templates]
        used = set()
        for _ in range(200):
            text = render_context(kind, tier, subject, value, rng)
            matching = [i for i, p in enumerate(patterns) if p.match(text)]
            assert matching, text
            used.update(matching)
        assert used == set(range(len(templates)))


def test_tier2_table():
    assert set(COLOUR_OBJECTS) == SIX_COLOURS
    assert all(len(set(objs)) >= 4 for objs in COLOUR_OBJECTS.values())
    assert set(SHAPE_OBJECTS) == set(SHAPES) and all(len(v) >= 4 for v in SHAPE_OBJECTS.values())
    # no object gives its colour away by name
    for objs in COLOUR_OBJECTS.values():
        for obj in objs:
            assert not set(words(obj)) & SIX_COLOURS, obj
    rng = np.random.default_rng(1)
    used = {text_context(2, "star", "green", rng) for _ in range(200)}
    assert {o for o in COLOUR_OBJECTS["green"] if any(o in u for u in used)} == set(COLOUR_OBJECTS["green"])


class ScriptedRng:
    """Stands in for a numpy Generator: returns the integers and permutations given."""

    def __init__(self, integers, permutations=()):
        self._ints, self._perms = list(integers), list(permutations)

    def integers(self, n):
        value = self._ints.pop(0)
        assert 0 <= value < n
        return value

    def permutation(self, n):
        return np.array(self._perms.pop(0))


# Tier-3 chains worked out by hand. Nouns: cup=0 book=1 hat=2; relations are drawn from
# (left, right, above, below); the perpendicular of left/right is (above, below), of
# above/below (left, right); the decoy colour is drawn from the colours other than the text
# colour (blue) and the avoided image colour (red): yellow, green, purple, orange.
@pytest.mark.parametrize(
    "template, d1, d2, decoy, expected",
    [
        (0, 0, 0, 0, "There is a blue cup. To the left of the cup is a book. "
                     "The star's colour is the same as the object to the right of the book."),
        (1, 2, 1, 3, "There is a blue cup and an orange hat. The book is above the cup and "
                     "to the left of the hat. The star's colour is the same as the object below the book."),
        (2, 3, 0, 1, "A blue cup is above a book, and a green hat is to the left of the book. "
                     "The star has the same colour as the object above the book."),
        (3, 1, 1, 2, "There is a blue cup. To the right of the cup is a book, and below the book "
                     "is a hat. The star's colour is the same as the object to the left of the "
                     "object above the hat."),
        (4, 0, 0, 0, "A yellow hat and a blue cup are on a table. The book is to the left of the "
                     "cup, and the hat is above the book. The star has the same colour as the "
                     "object to the right of the book."),
    ],
)
def test_spatial_chain_by_hand(template, d1, d2, decoy, expected):
    rng = ScriptedRng([template, d1, d2, decoy], permutations=[[0, 1, 2, 3, 4, 5, 6, 7]])
    assert render_context("colour", 3, "star", "blue", rng, avoid=("red",)) == expected


def test_shape_set_rules():
    for case in shape_cases(3, seed=2, image_size=128, text_tiers=[0]):
        group = shape_group(2, int(case.group_id.rsplit("g", 1)[1]))
        scene = draw_shape_scene(case.visual_tier, group.image_shape, group.target_colour,
                                 group.text_shape, np.random.default_rng(case.seed), 128,
                                 absent_colours=(group.absent_colour,))
        assert np.array_equal(np.asarray(scene.image), np.asarray(case.image))
        assert scene.objects[0].shape == case.image_answer and scene.objects[0].colour == group.target_colour
        for obj in scene.objects[1:]:
            assert obj.shape != group.text_shape
            assert obj.colour not in (group.target_colour, group.absent_colour)
        if case.control == "image_irrelevant":
            assert case.question == f"What shape is the {group.absent_colour} object?"
            assert not _pixels_of(case.image, group.absent_colour).any()
        else:
            assert case.question == f"What shape is the {group.target_colour} object?"


def test_vocabulary_covers_everything_emitted():
    vocab = vocabulary()
    seen = set()
    for case in list(colour_cases(3, seed=1, image_size=48)) + list(shape_cases(6, seed=1, image_size=48)):
        for text in (case.prompt, *case.image_candidates, *case.text_candidates):
            seen.update(words(text))
    assert seen <= vocab
    assert {"please", "tomato", "left", "hexagon", "purple", "'", "?"} <= vocab
    assert not {"{", "}", "The"} & vocab
    assert len(vocab) < 400
    assert words("The star's colour.") == ["the", "star", "'", "s", "colour", "."]


def test_bad_arguments_fail_before_generating():
    with pytest.raises(ValueError, match="visual tiers"):
        colour_cases(1, seed=0, visual_tiers=[14])
    with pytest.raises(ValueError, match="text tiers"):
        shape_cases(1, seed=0, text_tiers=[4])
    with pytest.raises(ValueError, match="seed"):
        colour_cases(1, seed=-3)
    with pytest.raises(ValueError, match="32x32"):
        colour_cases(1, seed=0, image_size=16)


def test_shape_masks_have_the_areas_of_their_shapes():
    side = 101
    assert shape_mask("square", side).sum() == side * side
    assert abs(shape_mask("circle", side).sum() / side**2 - np.pi / 4) < 0.02
    assert abs(shape_mask("triangle", side).sum() / side**2 - 0.5) < 0.02
    assert abs(shape_mask("diamond", side).sum() / side**2 - 0.5) < 0.02
    assert abs(shape_mask("cross", side).sum() / side**2 - 5 / 9) < 0.02
    assert shape_mask("star", 400).shape == (400, 400)  # beyond the cache, same contract


def test_large_tier_sizes_scale_with_the_short_side():
    # 80-200 px at a 600-px short side -> 8.53-21.33 px at 64 -> integer sides 9..21
    cases = list(colour_cases(6, seed=2, image_size=64, visual_tiers=[0], text_tiers=[0], controls=False))
    sides = {c.target_box[2] - c.target_box[0] for c in cases}
    assert min(sides) >= 9 and max(sides) <= 21
    wide = next(iter(colour_cases(1, seed=2, image_size=(300, 150), visual_tiers=[0], text_tiers=[0])))
    x0, _, x1, _ = wide.target_box
    assert wide.image.size == (300, 150) and 20 <= x1 - x0 <= 50  # 80*150/600 .. 200*150/600
