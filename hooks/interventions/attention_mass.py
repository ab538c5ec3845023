"""Where each head looks (`attention_mass`): the attention from the answer position and from the
question tokens to the image, the context, the question and the rest of the prompt.

For decoder layer l, head h and a query set Q, `mass[span] = mean_{q in Q} sum_{k in span} A[h, q, k]`
with `A` the attention probabilities (softmax over keys, padding keys at zero weight). The
spans partition every non-padding key: "image" (the image-token positions), "context",
"question" (the geometry's spans, `hooks.prompts.Geometry`) and "rest" (everything else: the
chat template, BOS, image wrapper tokens, the answer position itself), so the four sum to 1
for every head. Query sets: "answer" (the answer position) and "question" (**[ours]** the
mean over the question's tokens, each weighted alike).

Two ways to the probabilities, which agree to float rounding:

- "eager": the attention module's second output inside the nnsight trace (HF returns the
  probabilities there under eager attention);
- "recomputed": under sdpa (which never forms them), the queries and keys the attention
  function receives (after RoPE and any q/k norm) are read by wrapping the registered sdpa
  function for the duration of one forward, and `softmax(q k^T * scaling + mask)` is
  recomputed from them in float32 (grouped-query keys repeated per query head, Gemma-2's
  attention soft-cap applied when the layer passes one, a missing mask made causal).

Only self-attention decoder layers are covered (Mllama's cross-attention layers attend to the
image features, not the prompt, and are left out of `layers`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from hooks.interventions.attention import attention_implementation
from hooks.interventions.trace import PatchingError, _layers
from hooks.prompts import PassBatch
from hooks.taps import accepts_logits_to_keep, check_required_inputs

if TYPE_CHECKING:
    from hooks.loading import VLM

__all__ = ["SPANS", "QUERY_SETS", "METHODS", "AttentionMass", "attention_mass", "span_membership", "query_weights"]

SPANS: tuple[str, ...] = ("image", "context", "question", "rest")
QUERY_SETS: tuple[str, ...] = ("answer", "question")
METHODS: tuple[str, ...] = ("auto", "eager", "recomputed")


@dataclass
class AttentionMass:
    """`mass[b, q, l, h, s]`: attention of query set `queries[q]` of row b, at layer `layers[l]` and
    head h, to span `spans[s]`; sums to 1 over spans. `method`: "eager" or "recomputed"."""

    mass: Float[Tensor, "batch query layer head span"]
    queries: tuple[str, ...]
    layers: tuple[int, ...]
    method: str
    spans: tuple[str, ...] = SPANS

    def of(self, query: str, span: str) -> Float[Tensor, "batch layer head"]:
        """The mass of one query set on one span."""
        if query not in self.queries or span not in self.spans:
            raise KeyError(f"query {query!r} / span {span!r}: queries {self.queries}, spans {self.spans}")
        return self.mass[:, self.queries.index(query), :, :, self.spans.index(span)]

    def to_dict(self) -> dict[str, Any]:
        return {"queries": list(self.queries), "spans": list(self.spans), "layers": list(self.layers),
                "method": self.method, "axes": "batch x query x layer x head x span",
                "mass": self.mass.detach().cpu().tolist()}


def span_membership(batch: PassBatch) -> Float[Tensor, "batch seq span"]:
    """One-hot span of every key position (padding: all zero)."""
    B, T = len(batch), batch.geometry[0].length
    out = torch.zeros(B, T, len(SPANS))
    for b, g in enumerate(batch.geometry):
        out[b, g.n_pad:, SPANS.index("rest")] = 1.0
        for s, name in enumerate(SPANS[:3]):
            idx = g.positions(name)
            out[b, idx] = 0.0
            out[b, idx, s] = 1.0
    return out


def query_weights(batch: PassBatch, queries: Sequence[str]) -> Float[Tensor, "batch query seq"]:
    """Weights of the query positions of each set: one at the answer position, 1/n over the n
    question tokens."""
    B, T = len(batch), batch.geometry[0].length
    out = torch.zeros(B, len(queries), T)
    for q, name in enumerate(queries):
        if name not in QUERY_SETS:
            raise PatchingError(f"unknown query set {name!r}; choose from {', '.join(QUERY_SETS)}")
        for b, g in enumerate(batch.geometry):
            idx = g.positions(name)
            out[b, q, idx] = 1.0 / len(idx)
    return out


def _reduce(probs: Tensor, weights: Tensor, members: Tensor) -> Tensor:
    """(batch, head, q_len, k_len) probabilities -> (batch, query set, head, span) mass."""
    per_query = torch.einsum("bqt,bhtk->bqhk", weights.to(probs.device), probs.float())
    return torch.einsum("bqhk,bks->bqhs", per_query, members.to(probs.device))


def _self_attention_layers(vlm: "VLM", layers: Iterable[int] | int | None, batch: PassBatch) -> tuple[int, ...]:
    chosen = _layers(vlm, layers, batch)
    plain = tuple(l for l in chosen if hasattr(vlm.layers[l], vlm.adapter.attention))
    if layers is not None and len(plain) != len(chosen):
        bad = sorted(set(chosen) - set(plain))
        raise PatchingError(f"layers {bad} have no self-attention ({vlm.adapter.family}'s cross-attention layers "
                            "attend to image features); leave them out")
    return plain


def _kwargs(vlm: "VLM", batch: PassBatch) -> dict[str, Any]:
    kwargs = dict(batch.inputs)
    if accepts_logits_to_keep(vlm.model):
        kwargs["logits_to_keep"] = 1
    check_required_inputs(vlm, kwargs)
    vlm.adapter.reset_state(vlm.model)
    return kwargs


def _eager_mass(vlm: "VLM", batch: PassBatch, layers: tuple[int, ...], weights: Tensor, members: Tensor):
    """The probabilities HF returns under eager attention, reduced inside the trace (nnsight body)."""
    kwargs = _kwargs(vlm, batch)
    name = vlm.adapter.attention
    out = []
    with torch.no_grad(), vlm.nn.trace(**kwargs):
        envoys = vlm.envoy_layers()
        for l in layers:
            out.append(_reduce(getattr(envoys[l], name).output[1], weights, members).save())
    return out


def _recompute(query: Tensor, key: Tensor, mask: Tensor | None, scaling: float | None, softcap: float | None
               ) -> Tensor:
    """softmax(q k^T * scaling (+ soft-cap) + mask) in float32, keys repeated for grouped queries."""
    q, k = query.float(), key.float()
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scores = q @ k.transpose(-1, -2) * (scaling if scaling is not None else q.shape[-1] ** -0.5)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    q_len, k_len = scores.shape[-2:]
    low = torch.finfo(scores.dtype).min
    if mask is None:
        allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=q.device).tril(k_len - q_len)
        scores = scores.masked_fill(~allowed, low)
    elif mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask[..., :k_len], low)
    else:
        scores = (scores + mask[..., :k_len].float()).clamp_min(low)
    return scores.softmax(-1)


@contextlib.contextmanager
def _recording_sdpa(modules: dict[int, int], record) -> Iterator[None]:
    """Wrap the registered sdpa attention function so `record(layer, probabilities)` sees the
    recomputed probabilities of the listed attention modules (id -> layer); the others pass."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    original = ALL_ATTENTION_FUNCTIONS["sdpa"]
    had_local = "sdpa" in ALL_ATTENTION_FUNCTIONS._local_mapping

    def wrapped(module, query, key, value, attention_mask, *args, **kwargs):
        if id(module) in modules:
            record(modules[id(module)], _recompute(query, key, attention_mask, kwargs.get("scaling"),
                                                   kwargs.get("softcap")))
        return original(module, query, key, value, attention_mask, *args, **kwargs)

    ALL_ATTENTION_FUNCTIONS["sdpa"] = wrapped
    try:
        yield
    finally:
        if had_local:
            ALL_ATTENTION_FUNCTIONS["sdpa"] = original
        else:
            del ALL_ATTENTION_FUNCTIONS["sdpa"]


def _recomputed_mass(vlm: "VLM", batch: PassBatch, layers: tuple[int, ...], weights: Tensor, members: Tensor):
    modules = {id(getattr(vlm.layers[l], vlm.adapter.attention)): l for l in layers}
    got: dict[int, Tensor] = {}
    kwargs = _kwargs(vlm, batch)
    with torch.no_grad(), _recording_sdpa(modules, lambda l, p: got.__setitem__(l, _reduce(p, weights, members))):
        vlm.model(**kwargs)
    missing = [l for l in layers if l not in got]
    if missing:
        raise PatchingError(f"layers {missing} never called the sdpa attention function; their attention cannot "
                            "be recomputed. Use method='eager' after vlm.model.set_attn_implementation('eager')")
    return [got[l] for l in layers]


def attention_mass(vlm: "VLM", batch: PassBatch, *, queries: Sequence[str] = QUERY_SETS, method: str = "auto",
                   layers: Iterable[int] | int | None = None) -> AttentionMass:
    """Attention mass of every head of `layers` (None: every self-attention layer that runs) from
    each query set to each span (see the module docstring). `method`: "eager" reads the
    probabilities (eager attention), "recomputed" rebuilds them from queries and keys (sdpa),
    "auto" picks the one the model's attention implementation allows."""
    impl = attention_implementation(vlm)
    if method not in METHODS:
        raise PatchingError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if method == "auto":
        method = {"eager": "eager", "sdpa": "recomputed"}.get(impl, method)
    need = {"eager": "eager", "recomputed": "sdpa"}.get(method)
    if need != impl:
        raise PatchingError(f"method {method!r} needs {need or 'eager or sdpa'} attention; this model runs {impl!r}. "
                            "Switch with vlm.model.set_attn_implementation('eager') (or 'sdpa')")
    chosen = _self_attention_layers(vlm, layers, batch)
    if not chosen:
        raise PatchingError("no self-attention layer to read; pass layers=[...]")
    weights, members = query_weights(batch, tuple(queries)), span_membership(batch)
    run = _eager_mass if method == "eager" else _recomputed_mass
    per_layer = run(vlm, batch, chosen, weights, members)
    mass = torch.stack([m.cpu() for m in per_layer], dim=2)  # batch, query, layer, head, span
    return AttentionMass(mass, tuple(queries), chosen, method)
