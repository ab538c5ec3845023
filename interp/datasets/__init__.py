"""Conflict datasets whose visual and textual difficulty we control (METHOD §1.6).

- ``colour_cases``: the colour set, 14 visual tiers x 4 text tiers, with controls;
- ``shape_cases``: the 2-D shape set, 4 visual tiers x 4 text tiers, with controls;
- ``load_mc2``: MC²-format JSON with the user's images;
- ``validate``: every rule a case keeps (``RULES``), ``CaseError`` naming the one broken;
- ``save_dataset`` / ``load_dataset``: the folder of PNGs + cases.jsonl + dataset.json;
- ``draw_scene`` / ``draw_colour_scene`` / ``text_context``: the building blocks, e.g. for
  training a small model at low resolution; ``vocabulary()``: every token they can emit;
- ``render_text`` / ``fit_text``: any text drawn into an image (fonts that ship with matplotlib);
- ``item_formats`` / ``REST_PLUS`` / ``soebench``: items in the text, image and mixed formats, the
  REST+ rendering variants, SoEBench systems and their parsers (METHOD §2; ``load_items`` for a
  JSONL of question / answer / context, ``sign_images`` for the typographic conflict);
- ``perturb`` / ``PERTURBATIONS``: an image degraded at a level in [0, 1] (diffusion noise, blur,
  occlusion of the target's box, edge crops), deterministic for a seed (METHOD §3.2).

See docs/datasets.md for the tier tables and the choices marked [ours].
"""

from interp.datasets.case import CASE_KINDS, Case, build_prompt
from interp.datasets.colour import (
    COLOUR_TIERS,
    ColourGroup,
    colour_case,
    colour_cases,
    colour_group,
    draw_colour_scene,
)
from interp.datasets.drawing import (
    COLOUR_RGB,
    COLOURS,
    SHAPES,
    PlacedShape,
    Scene,
    TierSpec,
    draw_scene,
    shape_mask,
)
from interp.datasets.formats import (
    REST_PLUS,
    ConsistencyItem,
    FormattedItem,
    Variant,
    colour_items,
    item_formats,
    load_items,
    sign_images,
    soe_items,
)
from interp.datasets.mc2 import Mc2Import, load_mc2
from interp.datasets.perturb import PERTURBATIONS, diffusion_levels, perturb
from interp.datasets.render import FONTS, fit_text, render_text
from interp.datasets.soebench import SoeItem, parse_soe, soebench
from interp.datasets.shapes import SHAPE_TIERS, ShapeGroup, draw_shape_scene, shape_case, shape_cases, shape_group
from interp.datasets.storage import dataset_info, load_dataset, save_dataset
from interp.datasets.text import (
    INSTRUCTION,
    shape_text_context,
    text_context,
    vocabulary,
    words,
)
from interp.datasets.validate import RULES, validate
from interp.vocabulary import CONTROLS, normalise_answer

__all__ = [
    "CASE_KINDS", "CONTROLS", "COLOURS", "COLOUR_RGB", "COLOUR_TIERS", "Case", "ColourGroup", "ConsistencyItem",
    "FONTS", "FormattedItem", "INSTRUCTION", "REST_PLUS", "SoeItem", "Variant", "colour_items", "item_formats",
    "load_items", "parse_soe", "sign_images", "soe_items", "soebench",
    "Mc2Import", "PERTURBATIONS", "PlacedShape", "RULES", "SHAPES", "SHAPE_TIERS", "Scene", "ShapeGroup",
    "TierSpec", "build_prompt", "colour_case", "colour_cases", "colour_group", "dataset_info",
    "diffusion_levels", "draw_colour_scene", "draw_scene", "draw_shape_scene", "fit_text", "load_dataset", "load_mc2",
    "normalise_answer", "perturb", "render_text", "save_dataset", "shape_case", "shape_cases", "shape_group",
    "shape_mask", "shape_text_context", "text_context", "validate", "vocabulary", "words",
]
