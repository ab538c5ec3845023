"""Loading a VLM (local directory, hub id, or in-memory pair) and its load-time self-check.

`load_vlm` returns a `VLM`: the model, its processor, its adapter and an nnsight wrapper. Before
it hands the model over it checks that the logit lens of the last layer equals the model's
own logits at the answer position (max |diff| <= 1e-4 in float32; a bound scaled by the
dtype's machine epsilon otherwise), on a left-padded batch with and without an image, so a
wrong adapter (a missing soft-cap, a wrong norm) fails loudly instead of giving wrong lenses.
"""

from __future__ import annotations

import importlib
import json
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from nnsight import NNsight

from hooks.adapters import Adapter, adapter_for, get_module
from hooks.hub import hub_class
from hooks.memory import check_memory, checkpoint_count, config_count, weight_dtype
from hooks.processors import load_processor
from hooks.prompts import PassBatch, PromptItem, build_passes
from hooks.taps import lens
from interp.errors import ArgumentError, ModelSourceError, SelfCheckError
from interp.vocabulary import PASSES

__all__ = ["VLM", "SelfCheckReport", "ModelSourceError", "LoadNote", "load_vlm", "parse_device", "parse_dtype",
           "parse_device_map", "sample_items"]


class LoadNote(UserWarning):
    """Something a user should know about how a model was loaded (e.g. a processor built for images only)."""


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
    notes: tuple[str, ...] = ()
    device_map: str | None = None
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
    def placement(self) -> str:
        """Where the model is, as run.json records it: its device, or for a model placed by a device
        map, e.g. "auto: cuda:0, cuda:1" (the devices accelerate put its modules on)."""
        if self.device_map is None:
            return str(self.device)
        used = {f"cuda:{d}" if isinstance(d, int) else str(d) for d in (getattr(self.model, "hf_device_map", None)
                                                                        or {"": self.device}).values()}
        return f"{self.device_map}: {', '.join(sorted(used))}"

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

    @property
    def vocab_size(self) -> int:
        """Width of the lens (the unembedding's output size)."""
        weight = getattr(self.unembedding, "weight", None)
        if weight is not None:
            return int(weight.shape[0])
        return int(self.model.config.get_text_config().vocab_size)

    def lens(self, inputs: Any, **kwargs: Any):
        """`hooks.taps.lens` on this model; `inputs` is a PassBatch or a dict of tensors.

        Raises:
            ArgumentError: `candidate_ids` outside the vocabulary, or `top_k` not in 1..vocab.
        """
        self._check_lens_arguments(kwargs.get("candidate_ids"), kwargs.get("top_k", 1))
        return lens(self, inputs.inputs if isinstance(inputs, PassBatch) else inputs, **kwargs)

    def _check_lens_arguments(self, candidate_ids: Any, top_k: Any) -> None:
        vocab = self.vocab_size
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= vocab:
            raise ArgumentError(f"top_k={top_k!r}: give an integer from 1 to the vocabulary size, {vocab}")
        if candidate_ids is None:
            return
        ids = torch.as_tensor(candidate_ids).flatten()
        if ids.is_floating_point() or ids.dtype == torch.bool:
            raise ArgumentError(f"candidate_ids must be integer token ids, got {ids.dtype}")
        bad = ids[(ids < 0) | (ids >= vocab)]
        if bad.numel():
            raise ArgumentError(f"candidate_ids {bad[:5].tolist()} are outside the vocabulary (ids 0-{vocab - 1}); "
                             "take them from this model's tokenizer")

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


def parse_device(device: str | torch.device | None) -> torch.device | None:
    """None (CUDA when available, else the CPU), or a device this machine has.

    Raises:
        ModelSourceError: an unknown device name, or CUDA / MPS asked for where there is none.
    """
    if device is None:
        return None
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ModelSourceError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps "
                               "(or leave --device out: CUDA when available, else the CPU)") from None
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise ModelSourceError(f"device {device!r}: CUDA is not available on this machine (torch "
                                   f"{torch.__version__} is {build}); use --device cpu, or leave --device out")
        if chosen.index is not None and chosen.index >= count:
            raise ModelSourceError(f"device {device!r}: this machine has {count} CUDA device(s), numbered "
                                   f"0-{count - 1}; choose one of them")
    elif chosen.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ModelSourceError(f"device {device!r}: MPS is not available on this machine; use --device cpu")
    elif chosen.type not in ("cpu", "cuda", "mps"):
        raise ModelSourceError(f"device {device!r} is not supported here; use cpu, cuda, cuda:N or mps")
    return chosen


def parse_device_map(device_map: str | None, device: str | torch.device | None) -> str | None:
    """None, or "auto" (accelerate spreads the model over the visible GPUs, then the CPU) when
    accelerate is installed and no device is given as well."""
    if device_map is None:
        return None
    if device_map != "auto":
        raise ArgumentError(f"device map {device_map!r} is not supported; use auto, or leave --device-map out")
    if device is not None:
        raise ArgumentError(f"give --device ({device}) or --device-map auto, not both: auto chooses the devices")
    try:
        importlib.import_module("accelerate")  # transformers needs it for a device map
    except ImportError:
        raise ModelSourceError("--device-map auto needs accelerate, which is not installed here; pip install "
                               "'accelerate>=1.0' (a dependency of modality-lens: bash scripts/setup.sh installs "
                               "it), or leave --device-map out") from None
    return device_map


def _place(model: Any, device: str | torch.device | None, dtype: torch.dtype | str | None) -> Any:
    chosen = parse_device(device)
    if chosen is None:
        chosen = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(chosen)
    if isinstance(dtype, torch.dtype):
        model = model.to(dtype)
    return model.eval()


def _class_name_from_config(config: dict, where: str) -> str:
    names = config.get("architectures") or []
    if not names:
        raise ModelSourceError(f"{where}: config.json names no architectures; cannot tell which model class to load")
    return names[0]


def _check_weights(path: Path) -> None:
    """Every safetensors file of a directory must open: a header that parses, tensors it covers.

    safetensors' own reader checks the header and that the file is as long as the header says,
    without reading the tensors.
    """
    from safetensors import SafetensorError, safe_open

    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as weights:
                weights.keys()
        except (SafetensorError, OSError, ValueError) as err:
            size = file.stat().st_size
            raise ModelSourceError(
                f"{file} is not a readable safetensors file ({size:,} bytes; {err}): it is truncated, empty or "
                "damaged. Download it again, or save the model again with model.save_pretrained(dir)") from None


def _load_weights(model_cls: Any, location: str, kwargs: dict) -> Any:
    from transformers import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hf_logging.set_verbosity_error()  # the load report is worded below instead
            return model_cls.from_pretrained(location, **kwargs)
    except (OSError, EnvironmentError) as err:
        raise ModelSourceError(f"could not load model weights from {location}: {err}") from None
    except (RuntimeError, ValueError) as err:
        text = str(err)
        if "mismatch" in text or "size" in text:
            raise ModelSourceError(
                f"the weights in {location} do not have the shapes its config.json asks for (the config and the "
                "weights come from different models, or config.json was edited): put the config.json saved with "
                "these weights back, or download the model again") from None
        raise ModelSourceError(f"could not load model weights from {location} ({type(err).__name__}: "
                               f"{text.splitlines()[0] if text else ''}); download or save the model again") from None
    finally:
        hf_logging.set_verbosity(verbosity)


def _processor(location: str, model_type: str | None, trust_remote_code: bool, hub: dict) -> tuple[Any, tuple]:
    from transformers.processing_utils import ProcessorMixin

    try:
        processor, notes = load_processor(location, model_type, trust_remote_code=trust_remote_code, **hub)
    except Exception as err:  # transformers raises many kinds here
        raise ModelSourceError(
            f"{location} has no usable processor ({type(err).__name__}: {err}); save the processor next to the "
            "model with processor.save_pretrained(dir)") from None
    if not isinstance(processor, ProcessorMixin) or getattr(processor, "image_processor", None) is None:
        raise ModelSourceError(
            f"{location}: the saved processor gave a {type(processor).__name__}, which handles no images (its "
            "processor_config.json is missing or names a class this transformers does not have); save the "
            "processor next to the model with processor.save_pretrained(dir)")
    return processor, notes


def _model_class(class_name: str, trust_remote_code: bool) -> Any:
    import transformers

    model_cls = getattr(transformers, class_name, None)
    if model_cls is None:
        if not trust_remote_code:
            raise ModelSourceError(
                f"{class_name} is not a transformers class; if the checkpoint ships its own code, pass "
                "trust_remote_code=True (--trust-remote-code) after reading that code")
        model_cls = transformers.AutoModelForImageTextToText
    return model_cls


def _load_pretrained(location: str, class_name: str, adapter: Adapter | None, dtype: Any,
                     trust_remote_code: bool, hub: dict,
                     device_map: str | None = None) -> tuple[Any, Any, Adapter, tuple[str, ...]]:
    chosen = adapter_for(class_name, adapter)
    model_cls = _model_class(class_name, trust_remote_code)
    kwargs: dict[str, Any] = dict(use_safetensors=True, trust_remote_code=trust_remote_code, **hub)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if device_map is not None:
        kwargs["device_map"] = device_map
    model = _load_weights(model_cls, location, kwargs)
    processor, notes = _processor(location, getattr(model.config, "model_type", None), trust_remote_code, hub)
    return model, processor, chosen, notes


def _directory_class(path: Path, adapter: Adapter | None) -> str:
    """The model class a saved directory names, after checking it holds readable safetensors."""
    if not path.is_dir():
        raise ModelSourceError(f"{path} is a file; give the directory that holds config.json and the weights")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelSourceError(
            f"{path} has no config.json: not a model saved with save_pretrained (or a wrong directory)")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelSourceError(f"{config_file} is not valid JSON ({err}); save the model again") from None
    if not isinstance(config, dict):
        raise ModelSourceError(f"{config_file} holds no JSON object; save the model again")
    class_name = _class_name_from_config(config, str(path))
    adapter_for(class_name, adapter)  # refuse an unsupported class before reading any weights
    if not any(path.glob("*.safetensors")):
        found = ", ".join(sorted(p.name for p in path.glob("*.bin"))) or "none"
        raise ModelSourceError(
            f"{path} holds no .safetensors weights (found: {found}); only safetensors are loaded. Convert with "
            "model.save_pretrained(dir, safe_serialization=True) in a trusted environment")
    _check_weights(path)
    return class_name


def _in_memory(source: Any, device: Any, dtype: Any, adapter: Adapter | None, self_check: bool) -> VLM:
    if len(source) != 2:
        raise ModelSourceError("an in-memory source is a (model, processor) pair")
    model, processor = source
    chosen = adapter_for(model, adapter)
    vlm = VLM(_place(model, device, dtype), processor, chosen, f"<in-memory {type(model).__name__}>")
    return _finish(vlm, self_check)


def _tiny(text: str, device: Any, dtype: Any, adapter: Adapter | None, self_check: bool) -> VLM:
    from hooks.tiny import tiny_model

    try:
        pair = tiny_model(text.removeprefix("tiny:"))
    except ValueError as err:
        raise ModelSourceError(str(err)) from None
    chosen = adapter_for(pair[0], adapter)
    return _finish(VLM(_place(pair[0], device, dtype), pair[1], chosen, text), self_check)


def _hub_count(text: str, class_name: str, trust_remote_code: bool, hub: dict) -> tuple[int, torch.dtype | None]:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(text, trust_remote_code=trust_remote_code, **hub)
    return config_count(config, _model_class(class_name, trust_remote_code))


def _check_fits(location: str, count: Any, dtype: Any, device: Any, device_map: str | None) -> None:
    """`hooks.memory.check_memory` of the model `count()` counts; a model that cannot be counted
    (a class only its own code builds) is loaded unchecked, with a note."""
    try:
        n, checkpoint_dtype = count()
    except Exception as err:  # the config or the class can fail in many ways; the load itself will say
        warnings.warn(f"{location}: memory check skipped: its parameters could not be counted ({type(err).__name__}: "
                      f"{str(err).splitlines()[0] if str(err) else ''})", LoadNote, stacklevel=3)
        return
    check_memory(location, n, weight_dtype(dtype, checkpoint_dtype), parse_device(device), device_map)


def load_vlm(
    source: str | Path | tuple[Any, Any],
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    adapter: Adapter | None = None,
    trust_remote_code: bool = False,
    self_check: bool = True,
    device_map: str | None = None,
    memory_check: bool = True,
) -> VLM:
    """Load a VLM from a local directory, a hub id, an in-memory `(model, processor)` pair, or
    `"tiny:FAMILY"` (a random-weight tiny model from `hooks.tiny`, for trying things out).

    Weights are read from safetensors only (each file's header is checked first). `device`
    defaults to CUDA when available; `dtype` is "float32", "bfloat16", "float16", "auto" or a
    torch dtype (None keeps the loader's default, float32). Without torchvision, a processor
    with a video processor is built for images only (`hooks.processors`; `VLM.notes` and a
    `LoadNote` warning say so). An unknown class without `adapter` raises
    `UnsupportedModelError` before any weights are read; a failed self-check raises
    `SelfCheckError`; a source that cannot be loaded (a damaged file, a device this machine
    lacks, a hub id with no network) raises `ModelSourceError`.

    A directory or hub id is first checked to fit (`hooks.memory`: its parameters x the dtype's
    bytes plus a margin against the free memory of where it goes; `memory_check=False` skips it).
    `device_map="auto"` (not with `device`) lets accelerate spread it over the visible GPUs.
    """
    dtype = parse_dtype(dtype)
    parse_device(device)
    device_map = parse_device_map(device_map, device)
    text = str(source) if not isinstance(source, (tuple, list)) else ""
    if device_map is not None and (not text or text.startswith("tiny:")):
        raise ArgumentError("--device-map auto applies to a model directory or hub id (it places the weights as "
                            "they are read), not to a model already in memory or tiny:FAMILY; save it first")
    if isinstance(source, (tuple, list)):
        return _in_memory(source, device, dtype, adapter, self_check)
    if text.startswith("tiny:"):
        return _tiny(text, device, dtype, adapter, self_check)
    path = Path(text).expanduser()
    hub: dict[str, Any] = {}
    if path.exists():
        class_name, location = _directory_class(path, adapter), str(path)
        count = partial(checkpoint_count, path)
    else:
        class_name, hub = hub_class(text, trust_remote_code)
        adapter_for(class_name, adapter)
        location = text
        count = partial(_hub_count, text, class_name, trust_remote_code, hub)
    if memory_check:
        _check_fits(location, count, dtype, device, device_map)
    model, processor, chosen, notes = _load_pretrained(location, class_name, adapter, dtype, trust_remote_code, hub,
                                                       device_map)
    for note in notes:
        warnings.warn(f"{location}: {note}", LoadNote, stacklevel=2)
    placed = model.eval() if device_map is not None else _place(model, device, dtype)
    vlm = VLM(placed, processor, chosen, location, notes=notes, device_map=device_map)
    return _finish(vlm, self_check)
