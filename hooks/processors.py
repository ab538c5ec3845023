"""Processors where torchvision is missing: images only, built and loaded the same way.

The stock video processors (LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL, Qwen3-VL, InternVL) and
transformers' PixtralProcessor (Mistral 3) need torchvision, which the CPU torch build of the
documented install does not have. Without it, `images_only(cls)` is the stock processor class
with `video_processor=None` (the image path is the stock code, untouched), and
`PixtralProcessorPil` is the Pixtral token layout on the PIL image processor. With torchvision
both fall back to the stock classes.

`load_processor(location)` loads the processor of a saved model directory or hub id: the stock
`AutoProcessor` where it works, else the images-only stand-in built from the saved image
processor, tokenizer and processor settings, with a note saying so. Both stand-ins save in the
stock layout (`processor_class` is the stock name; the video processor's settings, when known,
are kept), so a directory they write loads with the stock classes on a machine with torchvision.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from transformers.processing_utils import ProcessorMixin

__all__ = ["HAS_TORCHVISION", "PixtralProcessorPil", "images_only", "load_processor", "square_input_side"]

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None

IMAGES_ONLY_NOTE = ("images only: {cls}'s video processor needs torchvision, which is not installed; the "
                    "processor was built without it (image prompts are unchanged; videos are not supported)")


class _VideoSettings(dict):
    """The saved settings of a video processor that cannot be built here (a plain dict to the
    processor's serialiser, so `save_pretrained` writes them back in the stock layout)."""

    _auto_class = None


def images_only(cls: type) -> type:
    """`cls` that accepts `video_processor=None` (images only) when torchvision is missing.

    `video_settings` on an instance (a dict, e.g. `{"video_processor_type": ..., ...}`) is
    written as the `video_processor` entry of processor_config.json by `save_pretrained`.
    """
    if HAS_TORCHVISION:
        return cls

    class ImagesOnly(cls):
        video_settings: dict | None = None

        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and (argument is None or isinstance(argument, _VideoSettings)):
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

        def save_pretrained(self, save_directory, *args, **kwargs):
            video, self.video_processor = self.video_processor, _VideoSettings(self.video_settings or {})
            try:
                return super().save_pretrained(save_directory, *args, **kwargs)
            finally:
                self.video_processor = video

    ImagesOnly.__name__ = ImagesOnly.__qualname__ = cls.__name__
    return ImagesOnly


class PixtralProcessorPil(ProcessorMixin):
    """The Pixtral/Mistral-3 token layout without torchvision (stock PixtralProcessor imports it).

    An image of (H, W) after resizing becomes H/(patch*merge) rows of W/(patch*merge) `[IMG]`
    tokens, each row closed by `[IMG_BREAK]` and the last by `[IMG_END]`, as in transformers'
    PixtralProcessor. It saves as a `PixtralProcessor`. Used only when torchvision is missing.
    """

    def __init__(self, image_processor=None, tokenizer=None, patch_size: int = 16, spatial_merge_size: int = 1,
                 chat_template=None, image_token="[IMG]", image_break_token="[IMG_BREAK]",
                 image_end_token="[IMG_END]", **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        self.patch_size, self.spatial_merge_size = patch_size, spatial_merge_size
        self.image_token, self.image_break_token, self.image_end_token = image_token, image_break_token, image_end_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)

    def _process_images(self, images, **images_kwargs):
        images_kwargs["patch_size"] = self.patch_size * self.spatial_merge_size
        return super()._process_images(images, **images_kwargs)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        step = self.patch_size * self.spatial_merge_size
        height, width = image_inputs["image_sizes"][image_idx]
        rows = [[self.image_token] * (int(width) // step) + [self.image_break_token]] * (int(height) // step)
        tokens = [t for row in rows for t in row]
        tokens[-1] = self.image_end_token
        return "".join(tokens)

    @property
    def model_input_names(self):
        return self.tokenizer.model_input_names + self.image_processor.model_input_names + ["image_sizes"]

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "processor_class": "PixtralProcessor"}


def _stand_in(name: str | None) -> type | None:
    """The images-only class for processor class `name`, or None when the stock one works here."""
    import transformers

    if HAS_TORCHVISION or not name:
        return None
    if name == "PixtralProcessor":
        return PixtralProcessorPil
    cls = getattr(transformers, name, None)
    if cls is None or not isinstance(cls, type) or "video_processor" not in cls.get_attributes():
        return None
    return images_only(cls)


def _processor_class_name(location: str, model_type: str | None, hub: dict) -> tuple[str | None, dict, dict]:
    """(processor class name, processor settings, instantiation kwargs) of a saved processor."""
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    settings, extra = ProcessorMixin.get_processor_dict(location, **hub)
    name = settings.get("processor_class")
    if not name:  # older layouts name it in the image processor's or the tokenizer's config
        for file in ("preprocessor_config.json", "tokenizer_config.json"):
            name = _json(location, file, hub).get("processor_class")
            if name:
                break
    return name or PROCESSOR_MAPPING_NAMES.get(model_type or ""), settings, extra


def _json(location: str, file: str, hub: dict) -> dict:
    from transformers.utils import cached_file

    path = cached_file(location, file, _raise_exceptions_for_missing_entries=False, **hub)
    if not path:
        return {}
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def load_processor(location: str, model_type: str | None = None, *, trust_remote_code: bool = False,
                   **hub: Any) -> tuple[Any, tuple[str, ...]]:
    """(processor, notes) of the model saved at `location` (a directory or hub id).

    `hub` is passed to the hub file lookups (e.g. `local_files_only=True`). Raises what
    transformers raises when the processor cannot be built (the caller words the error).
    """
    import transformers

    name, settings, extra = _processor_class_name(location, model_type, hub)
    cls = None if trust_remote_code else _stand_in(name)
    if cls is None:
        return transformers.AutoProcessor.from_pretrained(location, trust_remote_code=trust_remote_code, **hub), ()
    args = []
    for attribute in cls.get_attributes():
        if attribute == "video_processor":
            args.append(None)
        elif attribute == "tokenizer":
            args.append(transformers.AutoTokenizer.from_pretrained(location, **hub))
        else:
            args.append(transformers.AutoImageProcessor.from_pretrained(location, **hub))
    processor = cls.from_args_and_dict(args, settings, **extra)
    if "video_processor" in cls.get_attributes():
        video = settings.get("video_processor") or _json(location, "video_preprocessor_config.json", hub)
        processor.video_settings = dict(video) if isinstance(video, dict) else None
        return processor, (IMAGES_ONLY_NOTE.format(cls=name),)
    return processor, (f"images only: {name} needs torchvision, which is not installed; using the same token "
                       "layout on the PIL image processor",)


def square_input_side(image_processor: Any) -> int | None:
    """The side in pixels of the square every image becomes, when the image processor makes one
    image a fixed square: a centre crop to a square (CLIP-style: a wide strip of rendered text
    loses both ends) or a resize to a fixed square size (SigLIP-style: the strip is squashed).
    None when it keeps the aspect ratio or tiles the image (dynamic resolution, any-res grids,
    image splitting, tiles), where a rendering of any shape reaches the model whole."""
    if any(getattr(image_processor, name, None) for name in
           ("image_grid_pinpoints", "do_image_splitting", "crop_to_patches", "max_image_tiles", "max_pixels")):
        return None
    if getattr(image_processor, "do_center_crop", False):
        side = _square(getattr(image_processor, "crop_size", None))
        if side:
            return side
    return _square(getattr(image_processor, "size", None)) if getattr(image_processor, "do_resize", True) else None


def _square(size: Any) -> int | None:
    """The side of a {height, width} size (a dict or transformers' SizeDict) when they are equal."""
    get = size.get if isinstance(size, dict) else (lambda k: getattr(size, k, None))
    height, width = get("height"), get("width")
    return int(height) if height is not None and height == width else None
