"""Attention knockout (`knockout`): blocking chosen query positions from chosen key positions.

The 4-D attention mask that each decoder layer in the window receives as its `attention_mask`
keyword is replaced by a copy in which the chosen query positions cannot attend to the chosen
key positions. With ``sdpa`` attention the mask is boolean (True = attend) and blocked entries
become False; with ``eager`` it is additive (0 or the dtype's minimum) and blocked entries get
the minimum, which is what a padding key gets, so a blocked key has exactly zero weight after
the softmax in both. When sdpa receives no mask at all (no padding: it uses `is_causal`), the
causal mask is built explicitly first. **[ours]** A position's attention to itself is never
blocked, so no query row is ever fully masked (sdpa would return NaN). Other implementations
(flash, flex) pass other mask types and are refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Sequence

import torch

from hooks.interventions.groups import PositionSpec, positions
from hooks.interventions.readouts import InterventionResult, readout
from hooks.interventions.trace import PatchingError, _layers, _Plan, _trace, _with_prefix
from hooks.prompts import PassBatch
from interp.candidates import CandidatePair

if TYPE_CHECKING:
    from hooks.loading import VLM

__all__ = ["attention_implementation", "knockout"]

_KNOCKOUT_IMPLEMENTATIONS = ("sdpa", "eager")


def attention_implementation(vlm: "VLM") -> str:
    """The attention implementation the decoder layers use ("sdpa", "eager", ...)."""
    module = getattr(vlm.layers[0], vlm.adapter.attention, None)
    config = getattr(module, "config", None) or vlm.model.config.get_text_config()
    return str(getattr(config, "_attn_implementation", None) or "eager")


def _block_index(q_rows: list[list[int]], k_rows: list[list[int]], device: torch.device):
    rows, qs, ks = [], [], []
    for b, (qr, kr) in enumerate(zip(q_rows, k_rows)):
        for q in qr:
            for k in kr:
                if k != q:
                    rows.append(b)
                    qs.append(q)
                    ks.append(k)
    as_t = lambda xs: torch.tensor(xs, dtype=torch.long, device=device)  # noqa: E731
    return as_t(rows), as_t(qs), as_t(ks)


def knockout(
    vlm: "VLM",
    batch: PassBatch,
    pairs: Sequence[CandidatePair],
    *,
    queries: PositionSpec = "answer",
    keys: PositionSpec = "context",
    layers: Iterable[int] | int | None = None,
    keep_logits: bool = False,
) -> InterventionResult:
    """Block attention from `queries` to `keys` in every decoder layer of `layers` (None: all).

    Implemented by editing the 4-D attention mask each layer receives (see the module
    docstring): works with sdpa and eager attention, refuses others. A position's attention
    to itself is kept. The mask is rebuilt in every layer of the window even when nothing is
    blocked, so an empty knockout exercises the same path and must equal the plain forward.
    """
    impl = attention_implementation(vlm)
    if impl not in _KNOCKOUT_IMPLEMENTATIONS:
        raise PatchingError(f"knockout edits the 4-D attention mask of sdpa or eager attention; this model uses "
                            f"{impl!r}. Switch with vlm.model.set_attn_implementation('sdpa') (or 'eager')")
    batch = _with_prefix(batch, pairs)
    q_rows, k_rows = positions(batch, queries), positions(batch, keys)
    block = _block_index(q_rows, k_rows, vlm.device)
    plan = _Plan()
    for l in _layers(vlm, layers, batch):
        plan.blocks[l] = block
    clean, _ = _trace(vlm, batch.inputs, _Plan())
    knocked, _ = _trace(vlm, batch.inputs, plan)
    return InterventionResult(readout(clean, pairs, keep_logits), readout(knocked, pairs, keep_logits))
