"""Loading a VLM (local directory, hub id, or in-memory pair) and its load-time self-check.

`load_vlm` returns a `VLM`: the model, its processor, its adapter and an nnsight wrapper. Before
it hands the model over it checks that the logit lens of the last layer equals the model's
own logits at the answer position (max |diff| <= 1e-4 in float32; a bound scaled by the
dtype's machine epsilon otherwise), on a left-padded batch with and without an image, so a
wrong adapter (a missing soft-cap, a wrong norm) fails loudly instead of giving wrong lenses.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from nnsight import NNsight

from hooks.adapters import Adapter, adapter_for, get_module
from hooks.prompts import PassBatch, PromptItem, build_passes
from hooks.taps import lens
from interp.errors import ModalityLensError, SelfCheckError, UnsupportedModelError
from interp.vocabulary import PASSES

__all__ = ["VLM", "SelfCheckReport", "ModelSourceError", "load_vlm", "parse_dtype", "sample_items"]


class ModelSourceError(ModalityLensError):
    """The model source (directory, hub id) cannot be loaded as asked."""


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    """None keeps the checkpoint's own loading default; "auto" uses the config's dtype."""
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ModelSourceError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(sorted(_DTYPES))}") from None


@dataclass(frozen=True)
class SelfCheckReport:
    """Outcome of the lens-vs-logits check: the largest |lens[-1] - logits| and the bound it met."""

    max_abs_diff: float
    bound: float
    dtype: str
    passes: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.bound

    def __str__(self) -> str:
        verdict = "ok" if self.ok else "FAILED"
        return (f"self-check {verdict}: max |lens(last layer) - logits| = {self.max_abs_diff:.3g} "
                f"(bound {self.bound:.3g}, {self.dtype}, passes: {', '.join(self.passes)})")


@dataclass
class VLM:
    """A loaded vision-language model with everything the lens needs."""

    model: Any
    processor: Any
    adapter: Adapter
    source: str = "<in-memory>"
    self_check_report: SelfCheckReport | None = None
    nn: NNsight = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.nn = NNsight(self.model)
        self.layers = self.adapter.layers(self.model)
        self.norm = self.adapter.norm(self.model)
        self.unembedding = self.adapter.unembedding(self.model)
        self.softcap = self.adapter.softcap_value(self.model)
        self.image_token_id = self.adapter.image_token_id(self.model)
        tok = self.tokenizer
        if hasattr(tok, "padding_side"):
            tok.padding_side = "left"

    @property
    def n_layers(self) -> int:
        """Number of decoder layers (the lens has one more position: the embedding)."""
        return len(self.layers)

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def envoy_layers(self) -> Any:
        """The decoder layers as nnsight envoys (valid inside `self.nn.trace`)."""
        return get_module(self.nn, self.adapter.layers_path)

    def passes(self, items: Sequence[PromptItem], passes: Iterable[str] = PASSES) -> dict[str, PassBatch]:
        """The requested passes of `items`, encoded and moved to the model's device and dtype."""
        built = build_passes(self.processor, self.adapter, self.image_token_id, items, passes)
        return {k: v.to(self.device, self.dtype) for k, v in built.items()}

    def lens(self, inputs: Any, **kwargs: Any):
        """`hooks.taps.lens` on this model; `inputs` is a PassBatch or a dict of tensors."""
        return lens(self, inputs.inputs if isinstance(inputs, PassBatch) else inputs, **kwargs)

    def self_check(self) -> SelfCheckReport:
        """Compare the last layer's lens with the model's logits on a left-padded sample batch."""
        items = sample_items()
        worst, scale = 0.0, 1.0
        for batch in self.passes(items, ("text", "conflict")).values():
            result = self.lens(batch, keep_logits=True, top_k=1)
            diff = (result.logits[:, -1, :] - result.model_logits).abs().max().item()
            if diff != diff:  # NaN
                diff = float("inf")
            worst = max(worst, diff)
            scale = max(scale, result.model_logits.abs().max().item())
        if self.dtype == torch.float32:
            bound = 1e-4
        else:
            bound = 8 * torch.finfo(self.dtype).eps * scale  # [ours] a few ulps at the logits' magnitude
        return SelfCheckReport(worst, bound, str(self.dtype).removeprefix("torch."), ("text", "conflict"))


def sample_items() -> list[PromptItem]:
    """Two sample conflict items of different lengths (so the batch needs left padding)."""
    from PIL import Image, ImageDraw

    items = []
    for colour, size in (((220, 30, 30), (48, 32)), ((30, 60, 220), (32, 32))):
        image = Image.new("RGB", size, (255, 255, 255))
        ImageDraw.Draw(image).rectangle([6, 6, size[0] - 7, size[1] - 7], fill=colour)
        items.append(image)
    return [
        PromptItem("What colour is the square ? Please use one word to answer this question .",
                   "The square is blue .", items[0]),
        PromptItem("What colour is the square ?", "The square 's colour is the same as a ripe tomato .", items[1]),
    ]


def _finish(vlm: VLM, self_check: bool) -> VLM:
    if self_check:
        report = vlm.self_check()
        vlm.self_check_report = report
        if not report.ok:
            raise SelfCheckError(
                f"{vlm.adapter.model_class} from {vlm.source}: the lens of the last layer does not reproduce the "
                f"model's logits ({report}). The adapter's norm, unembedding or soft-cap does not match what this "
                "class computes; pass a corrected adapter to load_vlm(adapter=...).")
    return vlm


def _place(model: Any, device: str | torch.device | None, dtype: torch.dtype | str | None) -> Any:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device)
    if isinstance(dtype, torch.dtype):
        model = model.to(dtype)
    return model.eval()


def _class_name_from_config(config: dict, where: str) -> str:
    names = config.get("architectures") or []
    if not names:
        raise ModelSourceError(f"{where}: config.json names no architectures; cannot tell which model class to load")
    return names[0]


def _load_pretrained(location: str, class_name: str, adapter: Adapter | None, dtype: Any,
                     trust_remote_code: bool) -> tuple[Any, Any, Adapter]:
    import transformers

    chosen = adapter_for(class_name, adapter)
    model_cls = getattr(transformers, class_name, None)
    if model_cls is None:
        if not trust_remote_code:
            raise ModelSourceError(
                f"{class_name} is not a transformers class; if the checkpoint ships its own code, pass "
                "trust_remote_code=True (--trust-remote-code) after reading that code")
        model_cls = transformers.AutoModelForImageTextToText
    kwargs: dict[str, Any] = dict(use_safetensors=True, trust_remote_code=trust_remote_code)
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = model_cls.from_pretrained(location, **kwargs)
    except (OSError, EnvironmentError) as err:
        raise ModelSourceError(f"could not load model weights from {location}: {err}") from None
    try:
        processor = transformers.AutoProcessor.from_pretrained(location, trust_remote_code=trust_remote_code)
    except Exception as err:  # transformers raises many kinds here
        raise ModelSourceError(
            f"{location} has no usable processor ({type(err).__name__}: {err}); save the processor next to the "
            "model with processor.save_pretrained(dir)") from None
    return model, processor, chosen


def load_vlm(
    source: str | Path | tuple[Any, Any],
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    adapter: Adapter | None = None,
    trust_remote_code: bool = False,
    self_check: bool = True,
) -> VLM:
    """Load a VLM from a local directory, a hub id, an in-memory `(model, processor)` pair, or
    `"tiny:FAMILY"` (a random-weight tiny model from `hooks.tiny`, for trying things out).

    Weights are read from safetensors only. `device` defaults to CUDA when available;
    `dtype` is "float32", "bfloat16", "float16", "auto" or a torch dtype (None keeps the
    loader's default, float32). An unknown class without `adapter` raises
    `UnsupportedModelError` before any weights are read; a failed self-check raises
    `SelfCheckError`.
    """
    dtype = parse_dtype(dtype)
    if isinstance(source, (tuple, list)):
        if len(source) != 2:
            raise ModelSourceError("an in-memory source is a (model, processor) pair")
        model, processor = source
        chosen = adapter_for(model, adapter)
        vlm = VLM(_place(model, device, dtype), processor, chosen, f"<in-memory {type(model).__name__}>")
        return _finish(vlm, self_check)

    text = str(source)
    if text.startswith("tiny:"):
        from hooks.tiny import tiny_model

        family = text.removeprefix("tiny:")
        try:
            pair = tiny_model(family)
        except ValueError as err:
            raise ModelSourceError(str(err)) from None
        chosen = adapter_for(pair[0], adapter)
        return _finish(VLM(_place(pair[0], device, dtype), pair[1], chosen, text), self_check)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelSourceError(f"{path} is a file; give the directory that holds config.json and the weights")
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ModelSourceError(
                f"{path} has no config.json: not a model saved with save_pretrained (or a wrong directory)")
        try:
            config = json.loads(config_file.read_text())
        except json.JSONDecodeError as err:
            raise ModelSourceError(f"{config_file} is not valid JSON ({err})") from None
        class_name = _class_name_from_config(config, str(path))
        adapter_for(class_name, adapter)  # refuse an unsupported class before reading any weights
        if not any(path.glob("*.safetensors")):
            found = ", ".join(sorted(p.name for p in path.glob("*.bin"))) or "none"
            raise ModelSourceError(
                f"{path} holds no .safetensors weights (found: {found}); only safetensors are loaded. Convert with "
                "model.save_pretrained(dir, safe_serialization=True) in a trusted environment")
        location = str(path)
    else:
        if text.count("/") != 1 or text.startswith((".", "/", "~")):
            raise ModelSourceError(f"{text!r} is neither an existing directory nor a hub id of the form org/name")
        try:
            from transformers import AutoConfig

            class_name = (AutoConfig.from_pretrained(text, trust_remote_code=trust_remote_code).architectures or [""])[0]
        except Exception as err:
            raise ModelSourceError(
                f"could not fetch the config of hub model {text!r} ({type(err).__name__}: {err}); check the id, the "
                "network, or download it and pass the local directory") from None
        adapter_for(class_name, adapter)
        location = text
    model, processor, chosen = _load_pretrained(location, class_name, adapter, dtype, trust_remote_code)
    vlm = VLM(_place(model, device, dtype), processor, chosen, location)
    return _finish(vlm, self_check)
