"""The generation loop shared by the synthetic sets (colour, shapes)."""

from __future__ import annotations

from interp.datasets.case import CASE_KINDS
from interp.datasets.validate import validate

__all__ = ["generate_cases"]


def generate_cases(n_per_cell, visual_tiers, text_tiers, controls, validate_cases, *, prefix, make_group, draw,
                   make_case):
    """The generation loop shared by the synthetic sets: one scene per (group, visual tier), reused
    by every text tier and case kind; the first case of each scene has its image validated.

    ``make_group(g)`` -> group; ``draw(group, g, visual_tier)`` -> (scene seed, scene);
    ``make_case(group, visual_tier, text_tier, control, scene_seed, scene, image_name)`` -> Case.
    """
    kinds = CASE_KINDS if controls else (None,)
    for g in range(int(n_per_cell)):
        group = make_group(g)
        for vt in visual_tiers:
            case_seed, scene = draw(group, g, vt)
            image_name = f"{prefix}-g{g:05d}-v{vt:02d}.png"
            first = True
            for tt in text_tiers:
                for kind in kinds:
                    case = make_case(group, vt, tt, kind, case_seed, scene, image_name)
                    if validate_cases:
                        validate(case, check_image=first)
                    first = False
                    yield case
