"""Draw docs/contact_sheet.png: one case per visual tier x text tier (colour set, then shape set).

Each row is a visual tier: its scene (one group per set throughout, so the answers stay fixed
and only the difficulty changes), the tier's spec and what was measured on this scene, then
the four text tiers' prompts. Usage: python experiments/contact_sheet.py [--out PATH] [--seed S]
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from interp.datasets import (
    COLOUR_TIERS,
    SHAPE_TIERS,
    colour_case,
    colour_group,
    draw_colour_scene,
    draw_shape_scene,
    shape_case,
    shape_group,
)
from interp.datasets.colour import scene_seed
from interp.datasets.shapes import shape_scene_seed

THUMB_H = 168
TEXT_W = 300
LABEL_W = 190
ROW_PAD = 8


def _spec_text(name: str, spec) -> str:
    lo, hi = spec.size_range
    size = f"{lo:.0f}-{hi:.0f} px" if spec.size_unit == "px" else f"{lo:.0%}-{hi:.0%} of image"
    occ = "none" if spec.occlusion == 0 else f"{spec.occlusion:.0%}"
    return f"{name} visual tier {spec.tier}\nsize {size}\n{spec.n_distractors} distractors\nocclusion {occ}"


def _rows(seed: int, group_index: int):
    """(label, scene, the conflict case of each text tier) per visual tier of both sets."""
    group = colour_group(seed, group_index)
    for spec in COLOUR_TIERS:
        case_seed = scene_seed(seed, group_index, spec.tier)
        scene = draw_colour_scene(spec.tier, group.target_shape, group.image_colour,
                                  group.text_colour, np.random.default_rng(case_seed),
                                  absent_shapes=(group.absent_shape,))
        cases = [colour_case(group, spec.tier, t, None, case_seed, scene) for t in range(4)]
        yield _spec_text("colour", spec), spec, scene, cases
    group = shape_group(seed, group_index)
    for spec in SHAPE_TIERS:
        case_seed = shape_scene_seed(seed, group_index, spec.tier)
        scene = draw_shape_scene(spec.tier, group.image_shape, group.target_colour,
                                 group.text_shape, np.random.default_rng(case_seed),
                                 absent_colours=(group.absent_colour,))
        cases = [shape_case(group, spec.tier, t, None, case_seed, scene) for t in range(4)]
        yield _spec_text("shape", spec), spec, scene, cases


def make_sheet(seed: int = 0, group_index: int = 0) -> Image.Image:
    font = ImageFont.load_default(size=13)
    bold = ImageFont.load_default(size=15)
    thumb_w = round(THUMB_H * 4 / 3)
    width = LABEL_W + thumb_w + 4 * TEXT_W + 20
    header = 40
    row_h = THUMB_H + 2 * ROW_PAD
    rows = list(_rows(seed, group_index))
    sheet = Image.new("RGB", (width, header + row_h * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((10, 12), f"seed {seed}, group {group_index} (conflict cases)", font=bold, fill="black")
    for t in range(4):
        draw.text((LABEL_W + thumb_w + 10 + t * TEXT_W, 12), f"text tier {t}", font=bold, fill="black")
    for row, (title, spec, scene, cases) in enumerate(rows):
        y = header + row * row_h
        draw.line((0, y, width, y), fill=(120, 120, 120) if title.startswith("shape") and spec.tier == 0
                  else (200, 200, 200), width=3 if title.startswith("shape") and spec.tier == 0 else 1)
        size = spec.measured_size(scene.target_box, scene.image.size)
        measured = f"measured: size {size:.0f} px" if spec.size_unit == "px" else f"measured: size {size:.1%}"
        label = (f"{title}\n{measured}\n{scene.n_distractors} distractors, "
                 f"occl. {scene.occlusion:.0%}\nimage {scene.image.size[0]}x{scene.image.size[1]}")
        draw.multiline_text((10, y + ROW_PAD), label, font=font, fill="black", spacing=2)
        thumb = scene.image.copy()
        thumb.thumbnail((thumb_w, THUMB_H))
        sheet.paste(thumb, (LABEL_W, y + ROW_PAD))
        draw.rectangle((LABEL_W, y + ROW_PAD, LABEL_W + thumb.size[0] - 1, y + ROW_PAD + thumb.size[1] - 1),
                       outline=(160, 160, 160))
        for t, case in enumerate(cases):
            body = "\n".join(textwrap.wrap(case.context, 44)) + "\n" + case.question
            body += f"\n-> image: {case.image_answer}, text: {case.text_answer}"
            draw.multiline_text((LABEL_W + thumb_w + 10 + t * TEXT_W, y + ROW_PAD), body,
                                font=font, fill="black", spacing=2)
    # a small palette keeps the file small; the sheet is for people, not for measuring
    return sheet.quantize(colors=64, method=Image.Quantize.MEDIANCUT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/contact_sheet.png"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--group", type=int, default=0)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    make_sheet(args.seed, args.group).save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
