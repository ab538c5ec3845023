"""Will the model fit? A memory estimate made before any weights are read, and the refusal.

`load_vlm` calls `check_memory` before it loads a model directory or a hub id (skip it with
``memory_check=False``, ``--skip-memory-check``):

- **Parameters.** A local directory: every tensor in its safetensors headers (`checkpoint_count`;
  only the headers are read, so a 70 B model costs milliseconds). A hub id: the model built from
  its config on the meta device, which allocates nothing (`config_count`), each shared
  parameter once.
- **Bytes.** parameters x the bytes of the dtype the weights will have: the requested one, or
  for none / ``auto`` the checkpoint's (config.json ``dtype``, else the stored tensors', else
  float32, as transformers does); then plus :data:`MARGIN` **[ours]** for a batch's
  activations, the lens's float32 logits at the answer position and the allocator's slack. Long
  prompts in big batches can need more (the keys and values of every layer; `docs/zoo.md`
  estimates them for the papers' models): the check refuses what cannot fit, it does not
  promise that what passes will.
- **Available.** ``device_map="auto"``: the free memory of every visible CUDA device, summed
  (where there is none, the machine's available RAM, which is where accelerate then puts the
  model); a CUDA device: its free memory; the CPU (or MPS, which shares it): the available RAM
  (a container's memory limit is not read: there the check can pass a model that will not fit).

A model whose estimate exceeds what is available is refused with `ModelSourceError` (one line:
the estimate, the memory available, and the fixes) before anything is loaded or written.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

import torch

from interp.errors import ModelSourceError

__all__ = ["MARGIN", "checkpoint_count", "config_count", "weight_dtype", "estimate_bytes", "available_bytes",
           "check_memory"]

MARGIN = 0.20
"""The estimate's margin over the weights, a fraction **[ours]** (the module docstring)."""

_STORED = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_GiB = 1 << 30


def _header(file: Path) -> dict[str, Any]:
    """A safetensors file's header: {tensor name: {"dtype", "shape", "data_offsets"}, "__metadata__": ...}."""
    with open(file, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length))


def _config_dtype(value: Any) -> torch.dtype | None:
    if isinstance(value, torch.dtype):
        return value
    return getattr(torch, value, None) if isinstance(value, str) else None


def checkpoint_count(path: str | os.PathLike[str]) -> tuple[int, torch.dtype | None]:
    """(parameters, the checkpoint's weight dtype) of a saved model directory, from its config.json
    and the headers of its safetensors files (no tensor is read). The dtype is config.json's
    ``dtype`` (or ``torch_dtype``), else that of most stored floating-point values, else None."""
    counts: dict[torch.dtype, int] = {}
    n = 0
    for file in sorted(Path(path).glob("*.safetensors")):
        for name, entry in _header(file).items():
            if name == "__metadata__":
                continue
            size = math.prod(entry["shape"])
            n += size
            if entry["dtype"] in _STORED:
                counts[_STORED[entry["dtype"]]] = counts.get(_STORED[entry["dtype"]], 0) + size
    config = json.loads((Path(path) / "config.json").read_text())
    stored = max(counts, key=counts.get) if counts else None
    return n, _config_dtype(config.get("dtype") or config.get("torch_dtype")) or stored


def config_count(config: Any, model_cls: Any) -> tuple[int, torch.dtype | None]:
    """(parameters, the config's dtype) of `model_cls` built from `config` on the meta device
    (nothing allocated; a parameter shared by two modules, as tied embeddings are, counts once)."""
    with torch.device("meta"):
        model = model_cls.from_config(config) if hasattr(model_cls, "from_config") else model_cls._from_config(config)
    return sum(p.numel() for p in model.parameters()), _config_dtype(getattr(config, "dtype", None))


def weight_dtype(requested: torch.dtype | str | None, checkpoint: torch.dtype | None) -> torch.dtype:
    """The dtype the weights will be loaded in: the requested one; for None or "auto" the checkpoint's,
    else float32."""
    if isinstance(requested, torch.dtype):
        return requested
    return checkpoint or torch.float32


def estimate_bytes(n_parameters: int, dtype: torch.dtype) -> tuple[int, int]:
    """(the weights' bytes, the estimate with :data:`MARGIN`)."""
    weights = n_parameters * torch.empty((), dtype=dtype).element_size()
    return weights, math.ceil(weights * (1 + MARGIN))


def _system_available() -> int:
    """Available RAM: psutil's (the kernel's MemAvailable, page cache that can be dropped included),
    else free pages x page size."""
    try:
        import psutil
    except ImportError:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(psutil.virtual_memory().available)


def available_bytes(device: torch.device | None, device_map: str | None) -> tuple[int, str]:
    """(bytes available, what they are) for a model placed on `device` or by `device_map`."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device_map is not None:
        if gpus:
            return sum(torch.cuda.mem_get_info(i)[0] for i in range(gpus)), f"the {gpus} visible GPU(s) together"
        return _system_available(), "this machine's RAM (no GPU is visible)"
    chosen = device or torch.device("cuda" if gpus else "cpu")
    if chosen.type == "cuda":
        index = chosen.index if chosen.index is not None else torch.cuda.current_device()
        return torch.cuda.mem_get_info(index)[0], f"cuda:{index} (free memory)"
    return _system_available(), "this machine's available RAM"


def _size(n: int) -> str:
    for unit, scale in (("GiB", _GiB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} bytes"


def check_memory(location: str, n_parameters: int, dtype: torch.dtype, device: torch.device | None,
                 device_map: str | None) -> None:
    """Refuse (`ModelSourceError`, one line naming the estimate, the memory available and the fixes)
    a model whose estimate exceeds the available memory of where it will be placed."""
    weights, total = estimate_bytes(n_parameters, dtype)
    free, where = available_bytes(device, device_map)
    if total <= free:
        return
    name = str(dtype).removeprefix("torch.")
    raise ModelSourceError(
        f"{location} needs about {_size(total)} ({n_parameters:,} parameters in {name}: {_size(weights)} of weights, "
        f"plus {MARGIN:.0%}), but {where} has {_size(free)} available; use a smaller dtype (--dtype bfloat16 halves "
        "float32), --device-map auto with more GPUs visible, or a smaller model, or pass --skip-memory-check to load "
        "it anyway. Nothing was loaded or written")
