"""The one trace every intervention runs: a plan of writes, saves and attention blocks per layer.

Sites and layers (TransformerLens' hook names, decoder-layer indices `0..L-1`):

- ``resid_pre``: the input of decoder layer `l` (layer 0: the embedding output, image
  features merged); ``resid_post``: the output of decoder layer `l` (= lens index `l + 1` of
  `hooks.taps`); ``attn_out``: the attention sublayer's output (the output[0] of the module
  the adapter names `attention`, before any post-attention norm and the residual add);
  ``mlp_out``: the MLP's output (likewise, the adapter's `mlp`).

The helpers here (underscored: the package's internal contract, not re-exported) are shared
by every intervention module; nothing here imports them back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from hooks.prompts import PassBatch, append_tokens
from hooks.taps import accepts_logits_to_keep, check_required_inputs
from interp.candidates import CandidatePair
from interp.errors import ModalityLensError

if TYPE_CHECKING:
    from hooks.loading import VLM

__all__ = ["SITES", "PatchingError"]

SITES: tuple[str, ...] = ("resid_pre", "attn_out", "mlp_out", "resid_post")
"""Patchable sites, in the order a decoder layer computes them."""


class PatchingError(ModalityLensError, ValueError):
    """An intervention cannot be made as asked (positions, layers, sites, attention kind)."""


@dataclass
class _Write:
    """Rows, positions and values (N, d_model) written (or added) at one site."""

    rows: Tensor
    pos: Tensor
    values: Tensor
    add: bool = False


@dataclass
class _Plan:
    """Everything one trace does, keyed by decoder layer."""

    writes: dict[tuple[int, str], list[_Write]] = field(default_factory=dict)
    blocks: dict[int, tuple[Tensor, Tensor, Tensor]] = field(default_factory=dict)  # rows, queries, keys
    saves: set[tuple[int, str]] = field(default_factory=set)

    def write(self, layer: int, site: str, w: _Write) -> None:
        self.writes.setdefault((layer, site), []).append(w)

    def touches(self, layer: int, site: str) -> bool:
        return (layer, site) in self.writes or (layer, site) in self.saves

    @property
    def layers(self) -> list[int]:
        return sorted({l for l, _ in self.writes} | set(self.blocks) | {l for l, _ in self.saves})


def _apply(h: Tensor, writes: list[_Write] | None) -> None:
    """Write into `h` (batch, seq, d) in place: assignments first, then additions."""
    if not writes:
        return
    for w in writes:
        if not w.add and len(w.rows):
            h[w.rows, w.pos] = w.values.to(h.dtype)
    for w in writes:
        if w.add and len(w.rows):
            h[w.rows, w.pos] = h[w.rows, w.pos] + w.values.to(h.dtype)


def _blocked_mask(mask: Any, hidden: Tensor, block: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """A copy of a decoder layer's 4-D attention mask with (row, query, key) entries blocked
    (see `hooks.interventions.attention`)."""
    batch, length = hidden.shape[:2]
    if mask is None:  # sdpa without padding: causal via is_causal; make the causal mask explicit
        mask = torch.ones(length, length, dtype=torch.bool, device=hidden.device).tril()[None, None]
    if not isinstance(mask, Tensor) or mask.dim() != 4 or tuple(mask.shape[-2:]) != (length, length):
        raise PatchingError(
            f"the decoder layer's attention_mask is {type(mask).__name__} "
            f"{tuple(mask.shape) if isinstance(mask, Tensor) else ''}, not a 4-D (batch, 1, query, key) mask; "
            "knockout needs sdpa or eager attention: vlm.model.set_attn_implementation('sdpa')")
    new = mask.expand(batch, -1, -1, -1).clone()
    rows, queries, keys = block
    if new.dtype == torch.bool:
        new[rows, :, queries, keys] = False
    else:
        new[rows, :, queries, keys] = torch.finfo(new.dtype).min
    return new


def _sublayer(vlm: "VLM", layer: int, site: str) -> str:
    """The attribute name of a decoder layer's attention or MLP module, as the adapter names it."""
    module = vlm.layers[layer]
    adapter = vlm.adapter
    if site == "attn_out":
        names = (adapter.attention,) + ((adapter.cross_attention,) if adapter.cross_attention else ())
    else:
        names = (adapter.mlp,)
    for name in names:
        if hasattr(module, name):
            return name
    raise PatchingError(f"decoder layer {layer} ({type(module).__name__}) has none of {names}; "
                        f"site {site!r} is not available for {vlm.adapter.model_class}")


def _trace(vlm: "VLM", inputs: Mapping[str, Any], plan: _Plan):
    """One forward with the plan's masks, writes and saves; kept a plain function body (nnsight
    compiles it from source). Returns the last-position logits and the saved site values."""
    kwargs = dict(inputs)
    if accepts_logits_to_keep(vlm.model):
        kwargs["logits_to_keep"] = 1
    skipped = vlm.adapter.skipped_layers(vlm.model, "pixel_values" in inputs)
    for layer in plan.layers:
        if layer in skipped:
            raise PatchingError(f"decoder layer {layer} does not run for this input ({vlm.adapter.family} skips it "
                                "without an image); choose another layer")
    attn_names = {l: _sublayer(vlm, l, "attn_out") for l in plan.layers if plan.touches(l, "attn_out")}
    mlp_names = {l: _sublayer(vlm, l, "mlp_out") for l in plan.layers if plan.touches(l, "mlp_out")}
    check_required_inputs(vlm, inputs)
    vlm.adapter.reset_state(vlm.model)
    saved: dict[tuple[int, str], Any] = {}
    out = []
    with torch.no_grad(), vlm.nn.trace(**kwargs):
        layers = vlm.envoy_layers()
        for l in plan.layers:
            layer = layers[l]
            if l in plan.blocks or plan.touches(l, "resid_pre"):
                args, kw = layer.inputs
                _apply(args[0], plan.writes.get((l, "resid_pre")))
                if (l, "resid_pre") in plan.saves:
                    saved[(l, "resid_pre")] = args[0].clone().save()
                if l in plan.blocks:
                    if "attention_mask" not in kw:
                        raise PatchingError(f"decoder layer {l} receives no attention_mask keyword; knockout "
                                            "cannot edit its attention")
                    kw = dict(kw)
                    kw["attention_mask"] = _blocked_mask(kw["attention_mask"], args[0], plan.blocks[l])
                    layer.inputs = (args, kw)
            if l in attn_names:
                a = getattr(layer, attn_names[l]).output[0]
                _apply(a, plan.writes.get((l, "attn_out")))
                if (l, "attn_out") in plan.saves:
                    saved[(l, "attn_out")] = a.clone().save()
            if l in mlp_names:
                m = getattr(layer, mlp_names[l]).output
                _apply(m, plan.writes.get((l, "mlp_out")))
                if (l, "mlp_out") in plan.saves:
                    saved[(l, "mlp_out")] = m.clone().save()
            if plan.touches(l, "resid_post"):
                o = layer.output
                _apply(o, plan.writes.get((l, "resid_post")))
                if (l, "resid_post") in plan.saves:
                    saved[(l, "resid_post")] = o.clone().save()
        out.append(vlm.nn.output.logits[:, -1, :].float().save())
    return out[0], saved


# --------------------------------------------------------------------------- helpers
def _layers(vlm: "VLM", layers: int | Iterable[int] | None, *batches: PassBatch) -> tuple[int, ...]:
    """Validated decoder-layer indices; None: every layer that runs for all `batches`."""
    n = vlm.n_layers
    skipped: set[int] = set()
    for batch in batches:
        skipped |= set(vlm.adapter.skipped_layers(vlm.model, batch.has_image))
    if layers is None:
        return tuple(l for l in range(n) if l not in skipped)
    chosen = (layers,) if isinstance(layers, (int, np.integer)) else tuple(layers)
    out = []
    for l in chosen:
        l = int(l)
        if not -n <= l < n:
            raise PatchingError(f"layer {l} is out of range for {n} decoder layers (indices 0..{n - 1})")
        out.append(l % n)
    return tuple(out)


def _site(site: str) -> str:
    if site == "resid":
        return "resid_post"
    if site not in SITES:
        raise PatchingError(f"unknown site {site!r}; choose one of {', '.join(SITES)}")
    return site


def _with_prefix(batch: PassBatch, pairs: Sequence[CandidatePair]) -> PassBatch:
    if len(pairs) != len(batch):
        raise PatchingError(f"need one candidate pair per row: got {len(pairs)} for a batch of {len(batch)}")
    if not any(p.prefix for p in pairs):
        return batch
    return append_tokens(batch, [list(p.prefix) for p in pairs])


def _tile(inputs: Mapping[str, Any], k: int) -> dict[str, Any]:
    """`k` copies of a batch stacked along the batch axis (copy c holds rows c*B .. c*B+B-1).

    Every processor output is either per row (batch first) or a per-image concatenation in
    row order (Qwen's flattened `pixel_values` and `image_grid_thw`), so concatenating along
    dim 0 builds the tiled batch for every family.
    """
    if k == 1:
        return dict(inputs)
    out: dict[str, Any] = {}
    for key, value in inputs.items():
        if isinstance(value, Tensor) and value.dim() >= 1:
            out[key] = torch.cat([value] * k, dim=0)
        elif isinstance(value, list):
            out[key] = value * k
        else:
            out[key] = value
    return out


def _index(rows: list[int], pos: list[int], device: torch.device) -> tuple[Tensor, Tensor]:
    return (torch.tensor(rows, dtype=torch.long, device=device), torch.tensor(pos, dtype=torch.long, device=device))
