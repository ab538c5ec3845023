"""Representation similarity of rendered text and the same text as tokens, per layer (METHOD §2).

For an item asked in the mixed format (its context rendered into the image) and in the text
format (the context as tokens), `span_means` takes, in one nnsight trace per pass, the mean
residual stream over a set of positions per row at every layer: the image tokens of the
rendered pass, the context tokens of the text pass. Then

- `cosine_by_layer(a, b)`: the cosine of the two means per row and layer (REST's similarity);
- `retrieval_accuracy(a, b)`: per layer, the share of rows whose own partner is the most
  similar among the batch, image -> text and text -> image (REST's bidirectional retrieval).

Layer index convention as `hooks.taps`: 0 is the embedding output (image features merged),
`l` the output of decoder layer `l - 1`; a layer the forward skips repeats the previous one.

**[ours]**: the means are plain (unweighted) means over the positions; the image side is every
image token of the row (wrapper tokens excluded, `Geometry.image_positions`), the text side the
context span (`Geometry.context_span`); ties in retrieval go to the lowest index.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from hooks.prompts import PassBatch
from hooks.taps import check_required_inputs

VLM = Any
"""A `hooks.loading.VLM`."""

__all__ = ["span_means", "group_means", "cosine_by_layer", "retrieval_accuracy"]


def _weights(batch: PassBatch, positions: Sequence[Sequence[int]], device: Any) -> Float[Tensor, "batch seq"]:
    B, L = batch.inputs["input_ids"].shape
    w = torch.zeros(B, L, dtype=torch.float32)
    for b, pos in enumerate(positions):
        if not len(pos):
            raise ValueError(f"row {b} has no positions to average over (no image tokens or no context span?)")
        w[b, list(pos)] = 1.0 / len(pos)
    return w.to(device)


def _trace(vlm: VLM, inputs: dict, w: Tensor):
    """The nnsight trace (a plain function body: nnsight compiles it from source)."""
    skipped = vlm.adapter.skipped_layers(vlm.model, "pixel_values" in inputs)
    means = []
    with torch.no_grad(), vlm.nn.trace(**inputs):
        layers = vlm.envoy_layers()
        for i in range(vlm.n_layers + 1):
            if i == 0:
                h = layers[0].input
            elif i - 1 not in skipped:
                h = layers[i - 1].output
            means.append((h.float() * w[:, :, None]).sum(dim=1).save())
    return means


def span_means(vlm: VLM, batch: PassBatch, positions: Sequence[Sequence[int]]) -> Float[Tensor, "batch layer d_model"]:
    """Mean residual over `positions[b]` of row b at every layer (float32, on the CPU)."""
    check_required_inputs(vlm, batch.inputs)
    vlm.adapter.reset_state(vlm.model)
    means = _trace(vlm, batch.inputs, _weights(batch, positions, vlm.device))
    return torch.stack([m.detach().cpu() for m in means], dim=1)


def group_means(vlm: VLM, batch: PassBatch, group: str) -> Float[Tensor, "batch layer d_model"]:
    """`span_means` over a named position group of every row ("image", "context", "question")."""
    return span_means(vlm, batch, [g.positions(group) for g in batch.geometry])


def cosine_by_layer(a: Float[Tensor, "batch layer d"], b: Float[Tensor, "batch layer d"]) -> Float[Tensor, "batch layer"]:
    """Cosine of a[row, layer] and b[row, layer]."""
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).float()


def retrieval_accuracy(a: Float[Tensor, "batch layer d"], b: Float[Tensor, "batch layer d"]) -> dict[str, Tensor]:
    """Per layer: the share of rows i whose most similar partner (cosine) is row i itself,
    ranking b for each a (``"a_to_b"``) and a for each b (``"b_to_a"``); shape (layer,)."""
    an = torch.nn.functional.normalize(a.double(), dim=-1)
    bn = torch.nn.functional.normalize(b.double(), dim=-1)
    sim = torch.einsum("ild,jld->lij", an, bn)  # (layer, a row, b row)
    own = torch.arange(a.shape[0])
    return {"a_to_b": (sim.argmax(dim=2) == own).float().mean(dim=1),
            "b_to_a": (sim.argmax(dim=1) == own).float().mean(dim=1)}
