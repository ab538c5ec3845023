"""``modality-lens dataset colour | shapes | mc2 | check``: write or check a dataset folder.

The generators default to the main job's settings: ``--n-per-cell 16 --seed 0``, images drawn
at the size the caller's ``default_image_size`` gives (the shipped model's input size in the
``modality-lens`` command), or the paper's sizes with ``--image-size paper``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from interp.datasets.colour import colour_cases, generator_parameters
from interp.datasets.mc2 import load_mc2
from interp.datasets.shapes import shape_cases
from interp.datasets.storage import check_output_folder, dataset_info, load_dataset, save_dataset
from interp.datasets.validate import validate
from interp.errors import CaseError, DatasetError


DEFAULT_N_PER_CELL = 16
"""Groups per (visual tier, text tier) cell when ``--n-per-cell`` is not given (the main job's
default too: ``modality_lens.cases.BUILTIN_N_PER_CELL``)."""


def _image_size(text: str) -> int | tuple[int, int] | str | None:
    """``"224"`` -> 224, ``"320x240"`` -> (320, 240), ``"paper"`` -> None, ``"auto"`` kept."""
    if text in ("auto", "paper"):
        return None if text == "paper" else "auto"
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1 and parts[0] >= 32:
        return parts[0]
    if len(parts) == 2 and min(parts) >= 32:
        return parts[0], parts[1]
    raise argparse.ArgumentTypeError(f"expected auto, paper, N or WxH with sides >= 32, got {text!r}")


def _tier_list(text: str) -> list[int]:
    """``"0-4,7,9"`` -> [0, 1, 2, 3, 4, 7, 9]."""
    tiers: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            tiers.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected tiers like 0-4,7,9, got {text!r}") from None
    return tiers


def _integer(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < least:
        raise argparse.ArgumentTypeError(f"expected an integer >= {least}, got {text!r}")
    return value


def _non_negative(text: str) -> int:
    return _integer(text, 0)


def _positive(text: str) -> int:
    return _integer(text, 1)


def _add_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="dataset folder to write")
    parser.add_argument("--force", action="store_true",
                        help="replace the dataset already in --out (never an unrelated folder)")


def _add_generator(parser: argparse.ArgumentParser, n_visual: int) -> None:
    _add_output(parser)
    parser.add_argument("--n-per-cell", type=_positive, default=DEFAULT_N_PER_CELL,
                        help=f"groups, i.e. conflict cases per (visual tier, text tier) cell (default "
                             f"{DEFAULT_N_PER_CELL}, as in `modality-lens run`)")
    parser.add_argument("--seed", type=_non_negative, default=0, help="default 0, as in `modality-lens run`")
    parser.add_argument("--image-size", type=_image_size, default="auto",
                        help="auto (default: the shipped model's input size), paper (the paper's sizes), "
                             "or N or WxH for every tier")
    parser.add_argument("--visual-tiers", type=_tier_list, default=list(range(n_visual)),
                        help=f"e.g. 0-4,7 (default 0-{n_visual - 1})")
    parser.add_argument("--text-tiers", type=_tier_list, default=[0, 1, 2, 3],
                        help="e.g. 0,3 (default 0-3)")
    parser.add_argument("--no-controls", action="store_true",
                        help="leave out the text-irrelevant and image-irrelevant controls")


def register(subparsers, default_image_size: Callable[[], int | None] | None = None) -> argparse.ArgumentParser:
    """Add ``dataset`` and its subcommands to the top-level CLI.

    ``default_image_size()`` gives the size ``--image-size auto`` stands for (None, or no
    callable: the paper's sizes); it is called only when a generator runs.
    """
    parser = subparsers.add_parser("dataset", help="generate, import or check a conflict dataset")
    parser.set_defaults(default_image_size=default_image_size)
    sub = parser.add_subparsers(dest="dataset_command", required=True)

    colour = sub.add_parser("colour", help="the colour-recognition set (14 visual x 4 text tiers)")
    _add_generator(colour, 14)
    colour.set_defaults(func=_run_generator, generator="colour")

    shapes = sub.add_parser("shapes", help="the 2-D shape set (4 visual x 4 text tiers)")
    _add_generator(shapes, 4)
    shapes.set_defaults(func=_run_generator, generator="shapes")

    mc2 = sub.add_parser("mc2", help="import MC²-format JSON with your image folder")
    mc2.add_argument("--json", required=True, type=Path, help="MC²-format JSON / JSON lines")
    mc2.add_argument("--images", required=True, type=Path, help="folder of the images")
    mc2.add_argument("--skip-missing", action="store_true",
                     help="leave out items whose image is missing or broken (recorded in dataset.json)")
    _add_output(mc2)
    mc2.set_defaults(func=_run_mc2)

    check = sub.add_parser("check", help="load a dataset folder and validate every case")
    check.add_argument("folder", type=Path)
    check.set_defaults(func=_run_check)
    return parser


def _run_generator(args: argparse.Namespace) -> int:
    check_output_folder(args.out, args.force)  # fail before any work is done
    if args.image_size == "auto":
        args.image_size = args.default_image_size() if args.default_image_size else None
    controls = not args.no_controls
    make = colour_cases if args.generator == "colour" else shape_cases
    try:
        cases = make(args.n_per_cell, args.seed, args.image_size, args.visual_tiers,
                     args.text_tiers, controls)
    except ValueError as err:
        raise DatasetError(str(err)) from err
    total = args.n_per_cell * len(args.visual_tiers) * len(args.text_tiers) * (3 if controls else 1)
    meta = {
        "generator": args.generator,
        "parameters": generator_parameters(args.n_per_cell, args.image_size, args.visual_tiers,
                                        args.text_tiers, controls),
        "seed": args.seed,
    }
    info = save_dataset(cases, args.out, meta, overwrite=args.force, total=total)
    print(f"wrote {info['n_cases']} cases ({info['n_images']} images) to {args.out} "
          f"[{info['content_hash']}]")
    return 0


def _run_mc2(args: argparse.Namespace) -> int:
    check_output_folder(args.out, args.force)
    imported = load_mc2(args.json, args.images, skip_missing=args.skip_missing)
    meta = {
        "generator": "mc2",
        "parameters": {"json": str(args.json), "images": str(args.images),
                       "skip_missing": bool(args.skip_missing)},
        "seed": None,
        "skipped": imported.skipped,
    }
    info = save_dataset(imported.cases, args.out, meta, overwrite=args.force,
                        total=len(imported.cases))
    print(f"wrote {info['n_cases']} cases ({info['n_images']} images) to {args.out}; "
          f"skipped {len(imported.skipped)} item(s)")
    return 0


def _run_check(args: argparse.Namespace) -> int:
    info = dataset_info(args.folder)
    cases = load_dataset(args.folder)
    try:
        for case in cases:
            validate(case)
    except CaseError as err:
        raise DatasetError(f"{args.folder}: {err}") from err
    print(f"{args.folder}: {len(cases)} valid cases, generator {info.get('generator')!r}, "
          f"{info.get('content_hash')}")
    return 0
