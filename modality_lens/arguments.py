"""The arguments of a run, checked for type and range before a model is loaded or a file written.

One checker per kind of value; the command line uses them as argparse types (so a bad option
is refused while parsing, exit 2) and `modality_lens.pipeline.run` calls `check_run_arguments`
first, so API callers get the same `interp.errors.ArgumentError` with the same words.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from interp.errors import ArgumentError

__all__ = ["BUILTIN_DATASETS", "MIN_IMAGE_SIZE", "positive_int", "non_negative_int", "image_size_option",
           "dataset_source", "output_folder", "check_run_arguments", "region_width_option", "layers_option",
           "check_layers"]

BUILTIN_DATASETS = ("colour", "shapes")
MIN_IMAGE_SIZE = 32
"""The smallest side the built-in scenes are drawn at (the dataset command's limit too)."""


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ArgumentError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise ArgumentError(f"{name} must be an integer, got {value!r}") from None
    if not isinstance(value, int):
        raise ArgumentError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    return value


def positive_int(name: str, value: Any) -> int:
    """`value` as an int >= 1."""
    number = _integer(name, value)
    if number < 1:
        raise ArgumentError(f"{name} must be at least 1, got {number}")
    return number


def non_negative_int(name: str, value: Any) -> int:
    """`value` as an int >= 0."""
    number = _integer(name, value)
    if number < 0:
        raise ArgumentError(f"{name} must be 0 or more, got {number}")
    return number


def non_negative_float(name: str, value: Any) -> float:
    """`value` as a finite float >= 0."""
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ArgumentError(f"{name} must be a number, got {value!r}") from None
    if not number >= 0 or number == float("inf"):
        raise ArgumentError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def image_size_option(value: Any) -> int | str | None:
    """"auto" (the model's input size), "paper" / None (the paper's sizes), or pixels >= 32."""
    if value is None or value == "paper":
        return None
    if value == "auto":
        return "auto"
    try:
        number = _integer("--image-size", value)
    except ArgumentError:
        raise ArgumentError(f"--image-size takes auto, paper or a number of pixels, not {value!r}") from None
    if number < MIN_IMAGE_SIZE:
        raise ArgumentError(f"--image-size must be at least {MIN_IMAGE_SIZE} pixels (or auto, paper), got {number}")
    return number


def region_width_option(value: Any) -> float:
    """The half-width of the ambiguous region, a finite number >= 0 (dH_rel units)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ArgumentError(f"--region-width must be a number, got {value!r}") from None
    if not (0 <= number < float("inf")):
        raise ArgumentError(f"--region-width must be a finite number >= 0, got {value!r}")
    return number


def layers_option(value: Any) -> list[int] | None:
    """The lens positions whose switches count: None / "all" (every decoder layer), or a list such
    as "2-4,6" or [2, 3, 4, 6] (0 = the embedding output, l = after decoder layer l)."""
    if value is None or value == "all":
        return None
    if isinstance(value, str):
        out: set[int] = set()
        for part in value.replace(" ", "").split(","):
            low, dash, high = part.partition("-")
            try:
                a, b = int(low), int(high) if dash else int(low)
            except ValueError:
                raise ArgumentError(f"--layers takes all or a list like 2-4,6 (lens positions), not {value!r}") from None
            if a < 0 or b < a:
                raise ArgumentError(f"--layers: {part!r} is no range of lens positions (0 <= first <= last)")
            out.update(range(a, b + 1))
        return sorted(out)
    numbers = sorted({non_negative_int("--layers", v) for v in value})
    if not numbers:
        raise ArgumentError("--layers needs at least one lens position (or all)")
    return numbers


def check_layers(layers: list[int] | None, n_layers: int) -> None:
    """Refuse counted lens positions the model does not have (0..n_layers)."""
    bad = [p for p in layers or () if p > n_layers]
    if bad:
        raise ArgumentError(f"--layers {bad} beyond this model's {n_layers} decoder layers: lens positions are "
                            f"0 (embedding output) to {n_layers}")


def dataset_source(value: Any) -> str | None:
    """None (the colour set), a built-in set's name, or an existing dataset folder."""
    if value is None:
        return None
    text = str(value)
    if text in BUILTIN_DATASETS or Path(text).is_dir():
        return text
    close = difflib.get_close_matches(text, BUILTIN_DATASETS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ArgumentError(
        f"--dataset {text!r} is neither a dataset folder nor a built-in set{hint}: give one of "
        f"{', '.join(BUILTIN_DATASETS)}, or a folder written by `modality-lens dataset ... --out FOLDER`")


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def output_folder(out: Any, resume: bool) -> Path:
    """The run directory `out`, refused when it is a file, holds something else without `resume`,
    or cannot be written."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ArgumentError(f"--out {path} is a file, not a run directory; choose another --out")
    if path.is_dir() and not resume and any(p.name not in (".lock", ".run.json.tmp") for p in path.iterdir()):
        raise ArgumentError(f"--out {path} is not empty; pass --resume to continue the run in it, or choose "
                            "another --out. Nothing was changed.")
    if path.is_dir() and resume and not (path / "run.json").is_file() and any(path.iterdir()):
        raise ArgumentError(f"--out {path} is not empty but has no run.json, so it is not a run to resume; "
                            "choose another --out. Nothing was changed.")
    base = _nearest_existing(path)
    if not base.is_dir() or not os.access(base, os.W_OK | os.X_OK):
        raise ArgumentError(f"--out {path}: cannot write in {base} (permission denied or read-only); choose "
                            "another --out")
    return path


def check_run_arguments(*, batch_size: Any, limit: Any, seed: Any, n_per_cell: Any, image_size: Any,
                        n_boot: Any, dataset: Any, out: Any, resume: bool, region_width: Any = 0.5,
                        layers: Any = None) -> dict[str, Any]:
    """Every argument of `pipeline.run` that is checked before loading: the values to use."""
    return {
        "region_width": region_width_option(region_width),
        "layers": layers_option(layers),
        "batch_size": positive_int("--batch-size", batch_size),
        "limit": None if limit is None else positive_int("--limit", limit),
        "seed": non_negative_int("--seed", seed),
        "n_per_cell": positive_int("--n-per-cell", n_per_cell),
        "image_size": image_size_option(image_size),
        "n_boot": positive_int("--n-boot", n_boot),
        "dataset": dataset_source(dataset),
        "out": output_folder(out, resume),
    }
