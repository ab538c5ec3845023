"""The shipped small model: where it is, and the input size the built-in sets are drawn at.

Light on purpose (no torch, no transformers): `modality-lens dataset` reads the shipped model's
input size from its processor_config.json to draw its images at the size the model sees.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

__all__ = ["default_model", "auto_image_size", "shipped_image_size"]


def default_model() -> str:
    """The shipped small trained VLM: data/tiny_vlm of a checkout, else the installed copy."""
    checkout = Path(__file__).resolve().parent.parent / "data" / "tiny_vlm"
    if (checkout / "config.json").is_file():
        return str(checkout)
    try:
        from importlib.resources import files

        installed = files("modality_lens_data") / "tiny_vlm"
        if installed.joinpath("config.json").is_file():
            return str(installed)
    except (ModuleNotFoundError, NotADirectoryError, OSError):
        pass
    return str(checkout)


def auto_image_size(processor: Any) -> int | None:
    """**[ours]** Draw built-in scenes at the model's own input size when it is square and at most
    224 px (small models would otherwise see a centre crop of an 800x600 scene), else at the
    paper's sizes (None)."""
    ip = getattr(processor, "image_processor", None)

    def field(size: Any, key: str) -> Any:  # a dict, or transformers' SizeDict (attributes)
        return size.get(key) if isinstance(size, dict) else getattr(size, key, None)

    for size in (getattr(ip, "crop_size", None), getattr(ip, "size", None)):
        if size is None:
            continue
        h, w = field(size, "height"), field(size, "width")
        if h is None and w is None and field(size, "shortest_edge"):
            h = w = field(size, "shortest_edge")
        if h and w:
            return int(h) if h == w and h <= 224 else None
    return None


def shipped_image_size() -> int | None:
    """`auto_image_size` of the shipped model, read from its processor_config.json (None if unreadable)."""
    try:
        settings = json.loads((Path(default_model()) / "processor_config.json").read_text())["image_processor"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(settings, dict):
        return None
    return auto_image_size(SimpleNamespace(image_processor=SimpleNamespace(**settings)))
