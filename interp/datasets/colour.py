"""The colour-recognition conflict set of METHOD §1.6: 14 visual tiers x 4 text tiers + controls.

A **group** fixes a target shape, an image colour, a different text colour and an *absent*
shape. Across a group the answers never change; only the difficulty does. **[ours]** design:

- One scene per (group, visual tier); the 4 text tiers and the 3 case kinds (conflict,
  text-irrelevant, image-irrelevant) of that tier all use it, so text difficulty varies with
  the image held fixed.
- Distractors use neither the target's shape nor its colour (so "the {shape}" and its colour
  are unambiguous), nor the text colour (METHOD), nor the absent shape; so 5 shapes and 4
  colours remain for them.
- Controls use the absent shape: the text-irrelevant context speaks of it (and the question
  of the target); the image-irrelevant question asks about it (and the context speaks of it).
  In both, ``image_answer`` is the target's colour and ``text_answer`` the text colour, i.e.
  what each modality puts forward; ``Case.expected_answer`` says which one is right.
- (image colour, text colour) pairs are balanced: groups 0..29 use the 30 ordered pairs once
  each, in an order drawn from the seed; the shapes are drawn per group.
- Seeds: every case is a pure function of (seed, group, visual tier, text tier, kind), so
  cases do not depend on generation order or on which tiers were asked for. ``Case.seed`` is
  the scene seed: ``draw_colour_scene(..., rng=np.random.default_rng(case.seed))`` redraws
  the image, and the context is drawn from ``default_rng([case.seed, text_tier, kind])``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np

from interp.datasets.case import CASE_KINDS, Case
from interp.datasets.drawing import COLOURS, SHAPES, Scene, draw_scene, resolve_size
from interp.datasets.generate import generate_cases
from interp.datasets.text import COLOUR_QUESTION, COLOUR_SYNONYMS, TEXT_TIERS, text_context
from interp.datasets.tiers import COLOUR_TIERS, COLOUR_VISUAL_TIERS

VISUAL_TIERS = COLOUR_VISUAL_TIERS
KIND_NAMES = {None: "conflict", "text_irrelevant": "textirr", "image_irrelevant": "imageirr"}

_GROUP_STREAM, _SCENE_STREAM = 0, 1


@dataclass(frozen=True)
class ColourGroup:
    """What a group fixes."""

    index: int
    target_shape: str
    image_colour: str
    text_colour: str
    absent_shape: str


def check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def check_arguments(n_per_cell, seed, image_size, visual_tiers, text_tiers, allowed_visual):
    """Check a generator's arguments up front (generators run lazily); ValueError if bad."""
    if isinstance(n_per_cell, bool) or not isinstance(n_per_cell, (int, np.integer)) or n_per_cell < 0:
        raise ValueError(f"n_per_cell must be a non-negative integer, got {n_per_cell!r}")
    seed = check_seed(seed)
    resolve_size(image_size, (224, 224))
    visual_tiers, text_tiers = [int(t) for t in visual_tiers], [int(t) for t in text_tiers]
    bad = [t for t in visual_tiers if t not in allowed_visual]
    if bad:
        raise ValueError(f"visual tiers {bad} do not exist; choose from {list(allowed_visual)}")
    bad = [t for t in text_tiers if t not in TEXT_TIERS]
    if bad:
        raise ValueError(f"text tiers {bad} do not exist; choose from {list(TEXT_TIERS)}")
    for name, tiers in (("visual", visual_tiers), ("text", text_tiers)):
        if len(set(tiers)) != len(tiers):
            raise ValueError(f"{name} tiers repeat: {tiers}")
    return seed, visual_tiers, text_tiers


def derive_seed(*entropy: int) -> int:
    """A 63-bit seed from a tuple of non-negative integers (numpy SeedSequence)."""
    return int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(1, np.uint64)[0] >> 1)


def colour_group(seed: int, index: int) -> ColourGroup:
    """Group ``index`` of the dataset with this seed."""
    seed = check_seed(seed)
    pairs = [(a, b) for a in COLOURS for b in COLOURS if a != b]
    order = np.random.default_rng([seed, _GROUP_STREAM]).permutation(len(pairs))
    image_colour, text_colour = pairs[int(order[index % len(pairs)])]
    rng = np.random.default_rng([seed, _GROUP_STREAM, index])
    target_shape, absent_shape = (SHAPES[i] for i in rng.permutation(len(SHAPES))[:2])
    return ColourGroup(index, target_shape, image_colour, text_colour, absent_shape)


def draw_colour_scene(
    visual_tier: int,
    target_shape: str,
    target_colour: str,
    text_colour: str,
    rng: np.random.Generator,
    image_size: int | Sequence[int] | None = None,
    absent_shapes: Sequence[str] = (),
) -> Scene:
    """The image of one visual tier: a ``target_colour`` ``target_shape`` and distractors of
    other shapes (not ``absent_shapes``) and other colours (never ``text_colour``)."""
    if visual_tier not in VISUAL_TIERS:
        raise ValueError(f"visual tier must be one of 0..13, got {visual_tier!r}")
    if target_colour == text_colour:
        raise ValueError("the text colour must differ from the image colour")
    spec = COLOUR_TIERS[visual_tier]
    return draw_scene(
        spec,
        target_shape,
        target_colour,
        rng,
        resolve_size(image_size, spec.default_size),
        distractor_shapes=[s for s in SHAPES if s != target_shape and s not in absent_shapes],
        distractor_colours=[c for c in COLOURS if c not in (target_colour, text_colour)],
    )


def scene_seed(seed: int, group: int, visual_tier: int) -> int:
    """``Case.seed`` of the scene of (group, visual tier)."""
    return derive_seed(seed, _SCENE_STREAM, group, visual_tier)


def colour_cases(
    n_per_cell: int,
    seed: int,
    image_size: int | Sequence[int] | None = None,
    visual_tiers: Iterable[int] = range(14),
    text_tiers: Iterable[int] = range(4),
    controls: bool = True,
    validate_cases: bool = True,
) -> Iterator[Case]:
    """Yield the colour set: ``n_per_cell`` groups, each giving one conflict case per
    (visual tier, text tier) cell and, with ``controls``, one text-irrelevant and one
    image-irrelevant case per cell too (so ``n_per_cell * tiers * text tiers * 3`` cases).

    ``image_size``: ``None`` -> the paper's 800x600 (tiers 0-4) and 224x224 (5-13); an int
    ``n`` -> n x n for every tier; ``(W, H)`` -> that size for every tier (at least 32x32,
    proportions of the tiers kept). Cases are validated unless ``validate_cases`` is False.
    """
    seed, visual_tiers, text_tiers = check_arguments(
        n_per_cell, seed, image_size, visual_tiers, text_tiers, VISUAL_TIERS)
    return _colour_cases(n_per_cell, seed, image_size, visual_tiers, text_tiers, controls,
                         validate_cases)


def _colour_cases(n_per_cell, seed, image_size, visual_tiers, text_tiers, controls, validate_cases):
    def draw(group, g, vt):
        case_seed = scene_seed(seed, g, vt)
        return case_seed, draw_colour_scene(
            vt, group.target_shape, group.image_colour, group.text_colour,
            np.random.default_rng(case_seed), image_size, absent_shapes=(group.absent_shape,),
        )

    return generate_cases(n_per_cell, visual_tiers, text_tiers, controls, validate_cases, prefix="colour",
                          make_group=lambda g: colour_group(seed, g), draw=draw, make_case=colour_case)


def colour_case(
    group: ColourGroup,
    visual_tier: int,
    text_tier: int,
    control: str | None,
    case_seed: int,
    scene: Scene,
    image_name: str | None = None,
) -> Case:
    """One case of ``group`` on an already drawn ``scene``."""
    if control not in CASE_KINDS:
        raise ValueError(f"control must be one of {CASE_KINDS}, got {control!r}")
    rng = np.random.default_rng([case_seed, text_tier, CASE_KINDS.index(control)])
    asked = group.absent_shape if control == "image_irrelevant" else group.target_shape
    spoken = group.target_shape if control is None else group.absent_shape
    context = text_context(text_tier, spoken, group.text_colour, rng, avoid=(group.image_colour,))
    return Case(
        id=f"colour-g{group.index:05d}-v{visual_tier:02d}-t{text_tier}-{KIND_NAMES[control]}",
        group_id=f"colour-g{group.index:05d}",
        image=scene.image,
        question=COLOUR_QUESTION.format(shape=asked),
        context=context,
        image_answer=group.image_colour,
        text_answer=group.text_colour,
        image_candidates=COLOUR_SYNONYMS[group.image_colour],
        text_candidates=COLOUR_SYNONYMS[group.text_colour],
        visual_tier=visual_tier,
        text_tier=text_tier,
        control=control,
        target_box=scene.target_box,
        seed=case_seed,
        task="colour",
        image_name=image_name,
    )


def generator_parameters(n_per_cell, image_size, visual_tiers, text_tiers, controls) -> dict:
    """The generator parameters as written to ``dataset.json``."""
    return {
        "n_per_cell": int(n_per_cell),
        "image_size": list(image_size) if isinstance(image_size, (tuple, list)) else image_size,
        "visual_tiers": [int(t) for t in visual_tiers],
        "text_tiers": [int(t) for t in text_tiers],
        "controls": bool(controls),
    }
