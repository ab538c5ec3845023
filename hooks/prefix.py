"""The lens with a shared prompt prefix computed once: a KV cache per (prefix tokens, image).

The vision-only and conflict passes of a case begin with the same tokens: the chat template's
start, any preamble and the image tokens, up to the first token of the context (conflict) or
the question (vision-only). The text-only passes of all cases share their template start too.
`prefix_lens` runs that prefix once per distinct (token ids, image inputs) through the whole
model (vision tower included; one unpadded forward per prefix, so its keys and values do not
depend on what else a batch holds), keeps its key/value tensors in a `PrefixCache`, and then
runs only each row's suffix (context, question, generation prompt, any teacher-forced answer
prefix) through the model with the cached keys and values.

Exactness: the model is causal and the prefix holds every image token, so the prefix's keys
and values are those of the full forward. Suffixes of a batch are **right**-padded, so no real
token ever attends to padding (left padding after a cached prefix would put pad tokens inside a
sliding window, which is why the shipped model's 8-token first layer needs this), and each row's
lens is read at its own last real position (`hooks.taps.lens(positions=...)`). Positions
continue from the prefix length (1-D rope). The cache keeps the full prefix in every layer; a
sliding-window layer's mask limits what it attends to, as in the full forward.

Classes whose adapter does not set `prefix_cache` run full forwards (`prefix_support` says
why): Qwen2-VL / 2.5-VL / 3-VL (3-D M-RoPE positions and `rope_deltas` derived from the whole
sequence), PaliGemma 1 and 2 (the prompt is a prefix-LM block: image tokens attend to the text
after them), Mllama (the text cross-attends to the image in layers the suffix runs).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor
from transformers import DynamicCache

from hooks.prompts import Geometry, PassBatch
from hooks.taps import LensResult, lens

VLM = Any
"""A `hooks.loading.VLM` (prefix sits below loading's callers; the type is not imported)."""

__all__ = ["PrefixCache", "PrefixUnavailable", "prefix_support", "prefix_lens", "prefix_boundary"]

_WHY_NOT = {
    "qwen2_vl": "M-RoPE positions are 3-D and depend on the whole sequence (rope_deltas)",
    "qwen2_5_vl": "M-RoPE positions are 3-D and depend on the whole sequence (rope_deltas)",
    "qwen3_vl": "M-RoPE positions are 3-D and depend on the whole sequence (rope_deltas)",
    "paligemma": "the prompt is one prefix-LM block: image tokens attend to the text after them",
    "mllama": "the text cross-attends to the image in decoder layers the suffix runs",
}
_PER_TOKEN = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")
"""Inputs with one entry per token; every other tensor input is an image input of the prefix."""


class PrefixUnavailable(Exception):
    """This batch cannot use a cached prefix (the caller runs the full forward instead)."""


def prefix_support(vlm: VLM) -> tuple[bool, str]:
    """(whether `vlm`'s class reuses a prefix cache exactly, the reason when it does not)."""
    if vlm.adapter.prefix_cache:
        return True, ""
    why = _WHY_NOT.get(vlm.adapter.family, "its adapter does not declare prefix_cache=True")
    return False, f"{vlm.adapter.model_class} runs full forwards, no prefix cache: {why}"


def prefix_boundary(geometry: Geometry) -> int:
    """First position after the shared prefix: the context's first token, else the question's."""
    return geometry.context_span[0] if geometry.context_span else geometry.question_span[0]


@dataclass
class PrefixCache:
    """Least-recently-used store of prefix keys / values, bounded by `max_bytes` **[ours: 2 GiB]**.

    Counters (tokens are real, unpadded positions through the language model):
    prefix_rows / prefix_tokens: prefixes computed and their tokens; image_rows: those with an
    image (vision-tower runs); suffix_rows / suffix_tokens: suffix rows run on a cached prefix;
    hits: suffix rows whose prefix was already cached when the batch arrived.
    """

    max_bytes: int = 2 * 2**30
    prefix_rows: int = 0
    prefix_tokens: int = 0
    image_rows: int = 0
    suffix_rows: int = 0
    suffix_tokens: int = 0
    hits: int = 0
    _store: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _bytes: int = 0

    def get(self, key: bytes) -> list[tuple[Tensor, Tensor]] | None:
        kv = self._store.get(key)
        if kv is not None:
            self._store.move_to_end(key)
        return kv

    @staticmethod
    def _size(kv: list[tuple[Tensor, Tensor]]) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)

    def put(self, key: bytes, kv: list[tuple[Tensor, Tensor]]) -> None:
        self._store[key] = kv
        self._bytes += self._size(kv)
        while self._bytes > self.max_bytes and len(self._store) > 1:
            _, old = self._store.popitem(last=False)
            self._bytes -= self._size(old)

    def __len__(self) -> int:
        return len(self._store)

    def counts(self) -> dict[str, int]:
        return {"prefix_rows": self.prefix_rows, "prefix_tokens": self.prefix_tokens, "image_rows": self.image_rows,
                "suffix_rows": self.suffix_rows, "suffix_tokens": self.suffix_tokens, "hits": self.hits}


@dataclass(frozen=True)
class _Row:
    start: int  # first real token (left padding before it)
    boundary: int  # first suffix token
    key: bytes


def _image_rows(inputs: dict[str, Any], geometry: Sequence[Geometry]) -> dict[str, list[Tensor]]:
    """Every image input split by row: one entry per row, or (InternVL's patches) blocks in
    proportion to each row's image tokens."""
    split: dict[str, list[Tensor]] = {}
    tokens = [len(g.image_positions) for g in geometry]
    for name, value in inputs.items():
        if name in _PER_TOKEN:
            continue
        if not isinstance(value, Tensor) or value.dim() == 0:
            raise PrefixUnavailable(f"input {name} is not a tensor with a batch axis")
        if value.shape[0] == len(geometry):
            split[name] = [value[b:b + 1] for b in range(len(geometry))]
            continue
        per_token = value.shape[0] / max(sum(tokens), 1)
        counts = [n * per_token for n in tokens]
        if any(c != int(c) for c in counts) or sum(tokens) == 0:
            raise PrefixUnavailable(f"{name} ({tuple(value.shape)}) cannot be split by row")
        ends = torch.tensor([0] + counts).cumsum(0).long().tolist()
        split[name] = [value[ends[b]:ends[b + 1]] for b in range(len(geometry))]
    return split


def _plan(vlm: VLM, batch: PassBatch) -> tuple[list[_Row], dict[str, list[Tensor]]]:
    ok, why = prefix_support(vlm)
    if not ok:
        raise PrefixUnavailable(why)
    ids = batch.inputs["input_ids"]
    images = _image_rows(batch.inputs, batch.geometry)
    rows = []
    for b, g in enumerate(batch.geometry):
        boundary = prefix_boundary(g)
        if boundary <= g.n_pad:
            raise PrefixUnavailable("a row has no tokens before its context / question")
        if g.image_positions and g.image_positions[-1] >= boundary:
            raise PrefixUnavailable("image tokens after the prefix")
        digest = hashlib.sha1(ids[b, g.n_pad:boundary].cpu().numpy().tobytes())
        for name in sorted(images):
            row = images[name][b].contiguous().cpu()
            digest.update(f"{name}{tuple(row.shape)}{row.dtype}".encode())
            digest.update((row.view(torch.int16) if row.dtype == torch.bfloat16 else row).numpy().tobytes())
        rows.append(_Row(g.n_pad, boundary, digest.digest()))
    return rows, images


def _cache_kwargs(model: Any, cache: DynamicCache) -> dict[str, Any]:
    """`cache` under the name this class's forward takes (`cache` in transformers >= 5.24)."""
    import inspect

    name = "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
    return {name: cache, "use_cache": True}


def _fill(vlm: VLM, batch: PassBatch, rows: list[_Row], images: dict[str, list[Tensor]],
          cache: PrefixCache) -> dict[bytes, list[tuple[Tensor, Tensor]]]:
    """The prefix keys / values of every row: from `cache`, or computed (one unpadded forward each, so
    they are the same whatever else the batch holds) and stored there."""
    found: dict[bytes, list[tuple[Tensor, Tensor]]] = {}
    need: dict[bytes, int] = {}
    for b, row in enumerate(rows):
        kv = found.get(row.key) or cache.get(row.key)
        if kv is not None:
            found[row.key] = kv
        elif row.key not in need:
            need[row.key] = b
    for key, b in need.items():  # one forward per prefix: its keys / values never depend on the batch
        kwargs = {k: v[b] for k, v in images.items()}
        for name in _PER_TOKEN:
            if name in batch.inputs:
                kwargs[name] = batch.inputs[name][b:b + 1, rows[b].start:rows[b].boundary]
        store = DynamicCache()  # full layers: the suffix's own mask applies any sliding window
        kwargs.update(_cache_kwargs(vlm.model, store))
        vlm.adapter.reset_state(vlm.model)
        with torch.no_grad():
            vlm.model(**kwargs, logits_to_keep=1)
        found[key] = [(layer.keys, layer.values) for layer in store.layers]
        cache.put(key, found[key])
        cache.prefix_rows += 1
        cache.prefix_tokens += rows[b].boundary - rows[b].start
        cache.image_rows += int(batch.has_image)
    return found


def _suffix_inputs(vlm: VLM, batch: PassBatch, rows: list[_Row], group: list[int], cache: PrefixCache,
                   found: dict[bytes, list[tuple[Tensor, Tensor]]]) -> tuple[dict[str, Any], Tensor]:
    """Right-padded suffixes of `group` (one prefix length), their cache, and each row's last position."""
    inputs = batch.inputs
    ids = inputs["input_ids"]
    length = ids.shape[1]
    prefix = rows[group[0]].boundary - rows[group[0]].start
    width = max(length - rows[b].boundary for b in group)
    pad = vlm.tokenizer.pad_token_id or 0
    out: dict[str, Any] = {}
    for name in _PER_TOKEN:
        if name not in inputs:
            continue
        fill = pad if name == "input_ids" else 0
        block = inputs[name].new_full((len(group), width), fill)
        for j, b in enumerate(group):
            tail = inputs[name][b, rows[b].boundary:]
            block[j, :len(tail)] = tail
        out[name] = block
    real = torch.tensor([length - rows[b].boundary for b in group], device=ids.device)
    suffix_mask = (torch.arange(width, device=ids.device)[None, :] < real[:, None]).to(ids.dtype)
    out["attention_mask"] = torch.cat([suffix_mask.new_ones(len(group), prefix), suffix_mask], dim=1)
    out["position_ids"] = (prefix + torch.arange(width, device=ids.device))[None, :].expand(len(group), -1)
    out["cache_position"] = prefix + torch.arange(width, device=ids.device)
    stored = [found[rows[b].key] for b in group]
    kv = [(torch.cat([s[i][0] for s in stored]), torch.cat([s[i][1] for s in stored])) for i in range(len(stored[0]))]
    out.update(_cache_kwargs(vlm.model, DynamicCache(ddp_cache_data=kv)))
    cache.suffix_rows += len(group)
    cache.suffix_tokens += int(real.sum())
    return out, real - 1


def _merge(parts: list[tuple[list[int], LensResult]], size: int) -> LensResult:
    if len(parts) == 1 and parts[0][0] == list(range(size)):
        return parts[0][1]
    order = torch.tensor([b for rows, _ in parts for b in rows])
    where = torch.argsort(order)
    fields = {}
    for name in ("entropy", "logsumexp", "top_ids", "top_logits", "model_logits", "logits", "candidate_logits"):
        values = [getattr(result, name) for _, result in parts]
        fields[name] = None if values[0] is None else torch.cat(values)[where.to(values[0].device)]
    return LensResult(candidate_ids=parts[0][1].candidate_ids, **fields)


def prefix_lens(vlm: VLM, batch: PassBatch, cache: PrefixCache, **lens_kwargs: Any) -> LensResult:
    """`hooks.taps.lens` of `batch` (a left-padded `PassBatch`) with its prefixes from `cache`.

    Computes the prefixes `cache` lacks, then one trace per prefix length over right-padded
    suffixes. Raises `PrefixUnavailable` when the batch cannot use a prefix (no tokens before
    the text, image tokens after it, image inputs not one per row); `prefix_support` tells
    whether the class can at all.
    """
    rows, images = _plan(vlm, batch)
    cache.hits += sum(cache.get(row.key) is not None for row in rows)
    found = _fill(vlm, batch, rows, images, cache)
    groups: dict[int, list[int]] = {}
    for b, row in enumerate(rows):
        groups.setdefault(row.boundary - row.start, []).append(b)
    parts = []
    for group in groups.values():
        inputs, positions = _suffix_inputs(vlm, batch, rows, group, cache, found)
        parts.append((group, lens(vlm, inputs, positions=positions, **lens_kwargs)))
    return _merge(parts, len(rows))

