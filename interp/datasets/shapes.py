"""The 2-D shape set **[ours]**: "What shape is the {colour} object?" (METHOD §1.6).

The analogue of the paper's CLEVR shape question, with the colour set's text tiers and
controls. A group fixes the target's colour (the subject), its shape in the image, a
different shape in the text, and an *absent* colour. **[ours]** choices:

- Visual tiers by scene complexity (the paper's CLEVR set has 4): more, smaller objects and,
  in tiers 2-3, some occlusion, kept low because a shape half hidden is no longer a shape.

  | tier | target box (share of image area) | distractors | occlusion |
  |---|---|---|---|
  | 0 | 15-25% | 0 | none |
  | 1 | 8-15% | 3 | none |
  | 2 | 5-10% | 8 | 15% |
  | 3 | 4-6% | 15 | 30% |

  Distractor sides are 0.5-0.9 of the target's (objects of one scale, as in CLEVR). Default
  image 224x224.
- Distractors never take the target's colour (the question must pick one object), nor the
  text shape (the analogue of "the text colour never appears on a distractor"), nor the
  absent colour. They may share the target's shape.
- Controls use the absent colour: the text-irrelevant context speaks of "the {absent}
  object"; the image-irrelevant question asks about it.
- Seeds as in ``colour.py``: each case is a pure function of (seed, group, tiers, kind).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np

from interp.datasets.case import CASE_KINDS, Case
from interp.datasets.colour import KIND_NAMES, check_arguments, check_seed, derive_seed
from interp.datasets.drawing import COLOURS, SHAPES, Scene, draw_scene, resolve_size
from interp.datasets.generate import generate_cases
from interp.datasets.text import SHAPE_QUESTION, SHAPE_SYNONYMS, shape_text_context
from interp.datasets.tiers import SHAPE_TIERS

_GROUP_STREAM, _SCENE_STREAM = 10, 11


@dataclass(frozen=True)
class ShapeGroup:
    index: int
    target_colour: str
    image_shape: str
    text_shape: str
    absent_colour: str


def shape_group(seed: int, index: int) -> ShapeGroup:
    """Group ``index``: (image shape, text shape) pairs balanced over groups, colours drawn."""
    seed = check_seed(seed)
    pairs = [(a, b) for a in SHAPES for b in SHAPES if a != b]
    order = np.random.default_rng([seed, _GROUP_STREAM]).permutation(len(pairs))
    image_shape, text_shape = pairs[int(order[index % len(pairs)])]
    rng = np.random.default_rng([seed, _GROUP_STREAM, index])
    target_colour, absent_colour = (COLOURS[i] for i in rng.permutation(len(COLOURS))[:2])
    return ShapeGroup(index, target_colour, image_shape, text_shape, absent_colour)


def draw_shape_scene(
    visual_tier: int,
    target_shape: str,
    target_colour: str,
    text_shape: str,
    rng: np.random.Generator,
    image_size: int | Sequence[int] | None = None,
    absent_colours: Sequence[str] = (),
) -> Scene:
    """The image of one shape-set tier: the target and distractors that are never
    ``target_colour`` or an ``absent_colours`` colour, and never a ``text_shape``."""
    if visual_tier not in range(len(SHAPE_TIERS)):
        raise ValueError(f"shape-set visual tier must be 0..3, got {visual_tier!r}")
    if target_shape == text_shape:
        raise ValueError("the text shape must differ from the image shape")
    spec = SHAPE_TIERS[visual_tier]
    return draw_scene(
        spec, target_shape, target_colour, rng, resolve_size(image_size, spec.default_size),
        distractor_shapes=[s for s in SHAPES if s != text_shape],
        distractor_colours=[c for c in COLOURS if c != target_colour and c not in absent_colours],
    )


def shape_scene_seed(seed: int, group: int, visual_tier: int) -> int:
    """``Case.seed`` of the scene of (group, visual tier)."""
    return derive_seed(seed, _SCENE_STREAM, group, visual_tier)


def shape_cases(
    n_per_cell: int,
    seed: int,
    image_size: int | Sequence[int] | None = None,
    visual_tiers: Iterable[int] = range(4),
    text_tiers: Iterable[int] = range(4),
    controls: bool = True,
    validate_cases: bool = True,
) -> Iterator[Case]:
    """Yield the shape set; same layout and arguments as ``colour_cases``."""
    seed, visual_tiers, text_tiers = check_arguments(
        n_per_cell, seed, image_size, visual_tiers, text_tiers, range(len(SHAPE_TIERS)))
    return _shape_cases(n_per_cell, seed, image_size, visual_tiers, text_tiers, controls,
                        validate_cases)


def _shape_cases(n_per_cell, seed, image_size, visual_tiers, text_tiers, controls, validate_cases):
    def draw(group, g, vt):
        case_seed = shape_scene_seed(seed, g, vt)
        return case_seed, draw_shape_scene(
            vt, group.image_shape, group.target_colour, group.text_shape,
            np.random.default_rng(case_seed), image_size, absent_colours=(group.absent_colour,),
        )

    return generate_cases(n_per_cell, visual_tiers, text_tiers, controls, validate_cases, prefix="shape",
                          make_group=lambda g: shape_group(seed, g), draw=draw, make_case=shape_case)


def shape_case(
    group: ShapeGroup,
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
    asked = group.absent_colour if control == "image_irrelevant" else group.target_colour
    spoken = group.target_colour if control is None else group.absent_colour
    context = shape_text_context(text_tier, spoken, group.text_shape, rng, avoid=(group.image_shape,))
    return Case(
        id=f"shape-g{group.index:05d}-v{visual_tier:02d}-t{text_tier}-{KIND_NAMES[control]}",
        group_id=f"shape-g{group.index:05d}",
        image=scene.image,
        question=SHAPE_QUESTION.format(colour=asked),
        context=context,
        image_answer=group.image_shape,
        text_answer=group.text_shape,
        image_candidates=SHAPE_SYNONYMS[group.image_shape],
        text_candidates=SHAPE_SYNONYMS[group.text_shape],
        visual_tier=visual_tier,
        text_tier=text_tier,
        control=control,
        target_box=scene.target_box,
        seed=case_seed,
        task="shape",
        image_name=image_name,
    )
