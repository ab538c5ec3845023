"""The arguments and the items of the consistency study, checked before a model is loaded or a file written.

`check_consistency_arguments` returns a `ConsistencyArguments`; `ConsistencyArguments.items()`
builds the study's items (`interp.datasets.formats`): the colour set's conflict cases (their
context sentences), SoEBench systems, or a user JSONL file. Light on purpose: no torch.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from interp.datasets import COLOURS, colour_cases
from interp.datasets.formats import DEFAULT_VARIANT, REST_PLUS, ConsistencyItem, Variant, colour_items, load_items, soe_items
from interp.datasets.soebench import soebench
from interp.errors import ArgumentError, DatasetError
from modality_lens.arguments import check_run_arguments, positive_int

__all__ = ["ConsistencyArguments", "check_consistency_arguments", "variants_option", "items_option", "canvas_option",
           "VARIANT_SETS",
           "ITEM_SOURCES"]

ITEM_SOURCES = ("colour", "soebench")
"""The built-in item sources (anything else must be a .jsonl file)."""
VARIANT_SETS: dict[str, tuple[Variant, ...]] = {"default": (DEFAULT_VARIANT,), "rest+": REST_PLUS}
"""``--variants``: the default rendering only, or the ten REST+ variants."""


def items_option(value: Any) -> str:
    """``colour``, ``soebench`` or the path of an existing .jsonl file."""
    text = str(value)
    if text in ITEM_SOURCES:
        return text
    path = Path(text)
    if path.suffix != ".jsonl" or not path.is_file():
        raise ArgumentError(f"--items must be one of {', '.join(ITEM_SOURCES)} or an existing .jsonl file "
                            f"(question / answer / optional context per line); got {text!r}")
    return text


def variants_option(value: Any) -> str:
    if value not in VARIANT_SETS:
        raise ArgumentError(f"--variants must be one of {', '.join(VARIANT_SETS)}; got {value!r}")
    return str(value)


def canvas_option(value: Any) -> str:
    """``auto``, ``none`` or a canvas side in pixels (>= 8), as a string."""
    text = str(value).strip().lower()
    if text in ("auto", "none") or (text.isdigit() and int(text) >= 8):
        return text
    raise ArgumentError(f"--canvas must be auto (a square of the model's input side when its processor makes every "
                        f"image one square), none (the text at its point size, any shape) or a side in pixels "
                        f">= 8; got {value!r}")


@dataclass(frozen=True)
class ConsistencyArguments:
    """The checked arguments of `modality_lens.consistency.run_consistency`."""

    items_source: str
    n_items: int
    variants: str
    max_new_tokens: int
    ocr: bool
    ocr_max_new_tokens: int
    batch_size: int
    limit: int | None
    seed: int
    n_boot: int
    out: Path
    threads: int | None
    canvas: str = "auto"

    @property
    def variant_list(self) -> tuple[Variant, ...]:
        return VARIANT_SETS[self.variants]

    def canvas_side(self, square_side: int | None) -> int | None:
        """The canvas of the renderings in pixels at 100 DPI: `square_side` (the square the
        model's processor makes of every image, or None) for ``auto``, None for ``none``."""
        return square_side if self.canvas == "auto" else None if self.canvas == "none" else int(self.canvas)

    def variants_on(self, canvas: int | None) -> tuple[Variant, ...]:
        """`variant_list`, each fitted to a square `canvas` (`Variant.canvas`; None: as listed)."""
        return tuple(replace(v, canvas=canvas) for v in self.variant_list)

    def items(self) -> list[ConsistencyItem]:
        """The items: `n_items` of a built-in source (seeded), or the JSONL file's (`limit` of them)."""
        if self.items_source == "colour":
            per_cell = math.ceil(self.n_items / 4)
            cases = colour_cases(per_cell, self.seed, image_size=32, visual_tiers=[0], controls=False)
            items = colour_items(cases, COLOURS)[:self.n_items]
        elif self.items_source == "soebench":
            items = soe_items(soebench(self.n_items, seed=self.seed))
        else:
            items = load_items(self.items_source)
        items = items[:self.limit] if self.limit else items
        if not items:
            raise DatasetError("no items to ask; give --n-items >= 1 or a JSONL file with at least one item")
        return items

    def data_info(self, items: list[ConsistencyItem]) -> dict[str, Any]:
        """run.json's dataset entry: the source and a hash of every item's content."""
        content = [[i.item_id, i.question, i.context, i.answer, i.task, list(i.allowed), list(i.accepted),
                    i.variables, i.pattern] for i in items]
        digest = hashlib.sha256(json.dumps(content).encode()).hexdigest()
        return {"source": self.items_source, "parameters": {"n_items": self.n_items, "seed": self.seed},
                "hash": digest, "n_items": len(items)}

    def run_info(self, vlm: Any, spec: Any, items: list[ConsistencyItem], engine: Any,
                 canvas: int | None = None) -> dict[str, Any]:
        """run.json's fields (`spec`: the `pipeline.ModelSpec`; `canvas`: the renderings' square side
        at 100 DPI, None for none); the engine's settings when it is not the local one."""
        import torch

        arguments = {k: v for k, v in asdict(self).items() if k not in ("out", "seed")}
        arguments.update({"dtype": str(vlm.dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
                          "canvas_px": canvas, **engine.arguments()})
        return {"job": "consistency", "model": spec.model_info(vlm), "dataset": self.data_info(items),
                "seed": self.seed, "arguments": arguments, "device": vlm.placement}


def check_consistency_arguments(*, items: Any, n_items: Any, variants: Any, max_new_tokens: Any, ocr: Any,
                                ocr_max_new_tokens: Any, threads: Any, batch_size: Any, limit: Any, seed: Any,
                                n_boot: Any, out: Any, resume: bool, canvas: Any = "auto") -> ConsistencyArguments:
    """Every argument of the study, checked (ArgumentError naming the option and the fix)."""
    checked = check_run_arguments(batch_size=batch_size, limit=limit, seed=seed, n_per_cell=1, image_size=None,
                                  n_boot=n_boot, dataset=None, out=out, resume=resume)
    return ConsistencyArguments(
        items_source=items_option(items), n_items=positive_int("--n-items", n_items),
        variants=variants_option(variants), max_new_tokens=positive_int("--max-new-tokens", max_new_tokens),
        ocr=bool(ocr), ocr_max_new_tokens=positive_int("--ocr-max-new-tokens", ocr_max_new_tokens),
        batch_size=checked["batch_size"], limit=checked["limit"], seed=checked["seed"], n_boot=checked["n_boot"],
        out=checked["out"], threads=None if threads is None else positive_int("--threads", threads),
        canvas=canvas_option(canvas))
