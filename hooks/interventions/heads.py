"""Attention heads as intervention sites: knockout, mean-ablation and patching of single heads.

The per-head site is the input of a decoder layer's attention output projection (the
adapter's `out_proj`, `o_proj` for every class here): the concatenation of the heads'
outputs `z` (TransformerLens' `hook_z`, flattened), head `h` in columns
`h*head_dim .. (h+1)*head_dim`. Head `h`'s contribution to the attention output is
`W_O[:, h] z_h`; the projection's bias (when it has one) belongs to no head.

- `knockout_heads`: `z_h = 0` at the chosen positions ("all" by default **[ours]**: the head
  is silenced for every query, so nothing downstream reads it). Every head of a layer knocked
  out leaves only the projection's bias, i.e. the layer's attention output is zeroed (for a
  bias-free `o_proj`, every class here). No head knocked out runs the plain forward.
- `mean_ablate_heads`: `z_h` replaced by its mean over the (row, position) pairs of a
  reference batch's group `over` ("all" non-padding positions by default **[ours]**: one
  vector per head, so prompts of any length can be ablated alike).
- `patch_heads`: `z_h` copied from a source batch at the positions of `group` (mapped by
  order within the group, as `hooks.interventions.patching` does; "answer" by default).
- `head_sweep`: each (layer, head) alone, knocked out or mean-ablated, tiled like a patching
  sweep; `HeadSweep.effect` is the layer x head map of the change of
  `logit(text) - logit(vision)`, and `labels` feed the TFR shift (`interp.heads`).

Heads are named `(layer, head)` with decoder-layer and query-head indices; in grouped-query
attention (`n_kv_heads < n_heads`) query heads `g*n_heads/n_kv .. ` share key/value head `g`,
but each query head has its own `z_h` and is intervened on alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm import tqdm

from hooks.adapters import get_module
from hooks.interventions.groups import PositionMap, PositionSpec, map_positions, positions
from hooks.interventions.patching import _repeat_pairs
from hooks.interventions.readouts import AnswerReadout, InterventionResult, readout
from hooks.interventions.trace import PatchingError, _layers, _Plan, _sublayer, _tile, _trace, _with_prefix
from hooks.prompts import PassBatch
from hooks.taps import accepts_logits_to_keep, check_required_inputs
from interp.candidates import CandidatePair

if TYPE_CHECKING:
    from hooks.loading import VLM

__all__ = ["Head", "HeadSweep", "head_shape", "layer_heads", "check_heads", "knockout_heads", "head_means",
           "mean_ablate_heads", "patch_heads", "knockout_sets", "head_sweep"]

Head = tuple[int, int]
"""(decoder layer, query head)."""


def head_shape(vlm: "VLM") -> tuple[int, int, int]:
    """(query heads, key/value heads, head width), read from the adapter's config names."""
    return vlm.adapter.head_shape(vlm.model)


def layer_heads(vlm: "VLM", layer: int) -> list[Head]:
    """Every head of one decoder layer, as `(layer, head)` pairs."""
    (layer,) = _layers(vlm, [layer])
    return [(layer, h) for h in range(head_shape(vlm)[0])]


def check_heads(vlm: "VLM", heads: Iterable[Head], *, allow_empty: bool = True) -> tuple[Head, ...]:
    """Validated, de-duplicated `(layer, head)` pairs (negative layers count from the end)."""
    n_heads = head_shape(vlm)[0]
    out: list[Head] = []
    for item in heads:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise PatchingError(f"a head is a (layer, head) pair, got {item!r}; e.g. heads=[(3, 1), (5, 0)] or "
                                "layer_heads(vlm, 3) for every head of layer 3")
        (layer,) = _layers(vlm, [int(item[0])])
        head = int(item[1])
        if not 0 <= head < n_heads:
            raise PatchingError(f"head {head} of layer {layer} is out of range: {vlm.adapter.family} has {n_heads} "
                                f"query heads per layer (indices 0..{n_heads - 1})")
        if (layer, head) not in out:
            out.append((layer, head))
    if not out and not allow_empty:
        raise PatchingError("no head given; pass at least one (layer, head) pair")
    return tuple(sorted(out))


def _out_proj(vlm: "VLM", layer: int) -> str:
    """Dotted path of layer `layer`'s output projection, relative to the decoder layer."""
    attn = _sublayer(vlm, layer, "attn_out")
    if vlm.adapter.cross_attention and attn == vlm.adapter.cross_attention:
        raise PatchingError(f"decoder layer {layer} of {vlm.adapter.family} is a gated cross-attention layer; head "
                            "interventions cover self-attention layers only: choose another layer")
    path = f"{attn}.{vlm.adapter.out_proj}"
    get_module(vlm.layers[layer], path)
    return path


@dataclass
class _HeadWrite:
    """Values (N, head_dim) written into z's columns `cols` at (rows, pos)."""

    rows: Tensor
    pos: Tensor
    cols: slice
    values: Tensor


def _head_trace(vlm: "VLM", inputs: dict[str, Any], writes: dict[int, list[_HeadWrite]], saves: Iterable[int] = ()):
    """One forward with z written per layer; returns last-position logits and the saved z of
    `saves` (batch, seq, n_heads*head_dim). A plain function body (nnsight compiles it)."""
    kwargs = dict(inputs)
    if accepts_logits_to_keep(vlm.model):
        kwargs["logits_to_keep"] = 1
    saves = set(saves)
    touched = sorted(set(writes) | saves)
    skipped = vlm.adapter.skipped_layers(vlm.model, "pixel_values" in inputs)
    for layer in touched:
        if layer in skipped:
            raise PatchingError(f"decoder layer {layer} does not run for this input ({vlm.adapter.family} skips it "
                                "without an image); choose another layer")
    paths = {l: _out_proj(vlm, l) for l in touched}
    check_required_inputs(vlm, inputs)
    vlm.adapter.reset_state(vlm.model)
    saved: dict[int, Any] = {}
    out = []
    with torch.no_grad(), vlm.nn.trace(**kwargs):
        layers = vlm.envoy_layers()
        for l in touched:
            z = get_module(layers[l], paths[l]).input
            for w in writes.get(l, ()):
                if len(w.rows):
                    z[w.rows, w.pos, w.cols] = w.values.to(z.dtype)
            if l in saves:
                saved[l] = z.clone().save()
        out.append(vlm.nn.output.logits[:, -1, :].float().save())
    return out[0], saved


def _cols(vlm: "VLM", head: int) -> slice:
    width = head_shape(vlm)[2]
    return slice(head * width, (head + 1) * width)


def _flat(rows_pos: Sequence[Sequence[int]], offset: int, device: torch.device) -> tuple[Tensor, Tensor]:
    rows = [offset + b for b, ps in enumerate(rows_pos) for _ in ps]
    pos = [p for ps in rows_pos for p in ps]
    return (torch.tensor(rows, dtype=torch.long, device=device), torch.tensor(pos, dtype=torch.long, device=device))


def _const_writes(vlm: "VLM", heads: Sequence[Head], rows_pos: Sequence[Sequence[int]], value: Any,
                  offset: int = 0) -> dict[int, list[_HeadWrite]]:
    """Writes of one vector per head (zeros, or `value[(layer, head)]`) at every listed position."""
    rows, pos = _flat(rows_pos, offset, vlm.device)
    width = head_shape(vlm)[2]
    writes: dict[int, list[_HeadWrite]] = {}
    for layer, head in heads:
        vec = torch.zeros(width, device=vlm.device) if value is None else value[(layer, head)].to(vlm.device)
        writes.setdefault(layer, []).append(_HeadWrite(rows, pos, _cols(vlm, head), vec.expand(len(rows), width)))
    return writes


def _run(vlm: "VLM", batch: PassBatch, pairs: Sequence[CandidatePair], writes, keep_logits: bool,
         source: AnswerReadout | None = None) -> InterventionResult:
    clean, _ = _trace(vlm, batch.inputs, _Plan())
    hit, _ = _head_trace(vlm, batch.inputs, writes)
    return InterventionResult(readout(clean, pairs, keep_logits), readout(hit, pairs, keep_logits), source)


def knockout_heads(vlm: "VLM", batch: PassBatch, pairs: Sequence[CandidatePair], heads: Iterable[Head], *,
                   where: PositionSpec = "all", keep_logits: bool = False) -> InterventionResult:
    """Zero the outputs `z_h` of `heads` at `where` (default: every non-padding position).

    An empty `heads` runs the plain forward (the identity); `layer_heads(vlm, l)` knocks out
    all of layer l, which zeroes its attention output (bias-free `o_proj`).
    """
    batch = _with_prefix(batch, pairs)
    chosen = check_heads(vlm, heads)
    return _run(vlm, batch, pairs, _const_writes(vlm, chosen, positions(batch, where), None), keep_logits)


def head_means(vlm: "VLM", reference: PassBatch, heads: Iterable[Head], *,
               over: PositionSpec = "all") -> dict[Head, Float[Tensor, " head_dim"]]:
    """Mean `z_h` of each head over every (row, position) of `over` in `reference`."""
    chosen = check_heads(vlm, heads)
    rows, pos = _flat(positions(reference, over), 0, vlm.device)
    if not len(rows):
        raise PatchingError(f"the reference batch has no {over!r} positions to average head outputs over")
    _, saved = _head_trace(vlm, reference.inputs, {}, {l for l, _ in chosen})
    return {(l, h): saved[l][rows, pos][:, _cols(vlm, h)].float().mean(0) for l, h in chosen}


def mean_ablate_heads(vlm: "VLM", batch: PassBatch, pairs: Sequence[CandidatePair], heads: Iterable[Head], *,
                      reference: PassBatch | None = None, over: PositionSpec = "all", where: PositionSpec = "all",
                      keep_logits: bool = False) -> InterventionResult:
    """Replace `z_h` of `heads` at `where` by its mean over `reference`'s `over` positions
    (`reference`: `batch` itself when None; see `head_means`)."""
    batch = _with_prefix(batch, pairs)
    chosen = check_heads(vlm, heads)
    means = head_means(vlm, batch if reference is None else reference, chosen, over=over) if chosen else {}
    return _run(vlm, batch, pairs, _const_writes(vlm, chosen, positions(batch, where), means), keep_logits)


def patch_heads(vlm: "VLM", source: PassBatch, target: PassBatch, pairs: Sequence[CandidatePair],
                heads: Iterable[Head], *, group: str | PositionMap = "answer",
                keep_logits: bool = False) -> InterventionResult:
    """Copy `z_h` of `heads` from `source` into `target` at `group`'s positions, row b into row b
    (a named group maps by order and must have the same size in both; see `map_positions`)."""
    source, target = _with_prefix(source, pairs), _with_prefix(target, pairs)
    chosen = check_heads(vlm, heads)
    mapping = map_positions(source, target, group)
    src_logits, saved = _head_trace(vlm, source.inputs, {}, {l for l, _ in chosen})
    writes = _patch_writes(vlm, chosen, mapping, saved, 0)
    return _run(vlm, target, pairs, writes, keep_logits, readout(src_logits, pairs, keep_logits))


def _patch_writes(vlm: "VLM", heads: Sequence[Head], mapping: PositionMap, saved: dict[int, Tensor],
                  offset: int) -> dict[int, list[_HeadWrite]]:
    """Writes copying source z_h at `mapping.source` to target rows `offset + b` at `mapping.target`."""
    src_rows, src_pos = _flat(mapping.source, 0, vlm.device)
    tgt_rows, tgt_pos = _flat(mapping.target, offset, vlm.device)
    writes: dict[int, list[_HeadWrite]] = {}
    for layer, head in heads:
        cols = _cols(vlm, head)
        values = saved[layer][src_rows, src_pos][:, cols]
        writes.setdefault(layer, []).append(_HeadWrite(tgt_rows, tgt_pos, cols, values))
    return writes


@dataclass
class HeadSweep:
    """Each head alone knocked out, mean-ablated or patched: `intervened` has rows batch x layer x head."""

    kind: str
    layers: tuple[int, ...]
    n_heads: int
    clean: AnswerReadout
    intervened: AnswerReadout

    @property
    def effect(self) -> Float[Tensor, "batch layer head"]:
        """Change of logit(text) - logit(vision) at the answer position, per case."""
        return self.intervened.logit_diff - self.clean.logit_diff[:, None, None]

    def labels(self, pairs: Sequence[CandidatePair]) -> list[list[list[str]]]:
        """Per case, per layer, per head: "text" / "vision" / "other" after the intervention."""
        flat = self.intervened.labels(pairs)
        H = self.n_heads
        return [[row[i * H:(i + 1) * H] for i in range(len(self.layers))] for row in flat]

    def to_dict(self) -> dict[str, Any]:
        t = lambda x: x.detach().cpu().tolist()  # noqa: E731
        return {"kind": self.kind, "layers": list(self.layers), "n_heads": self.n_heads,
                "layer_convention": "decoder layer index x query head index; site: o_proj input (z)",
                "mean_effect": t(self.effect.mean(0)), "effect": t(self.effect),
                "clean_logit_diff": t(self.clean.logit_diff)}


def _tiled(vlm: "VLM", batch: PassBatch, pairs: Sequence[CandidatePair], sets: Sequence[Sequence[Head]],
           make_writes, max_rows: int, progress: bool, desc: str) -> AnswerReadout:
    """Each head set intervened on alone, the batch tiled once per set (`make_writes(heads, row
    offset)` gives a set's writes): flat rows, batch-major (row b * n_sets + s)."""
    B, per_forward = len(batch), max(1, max_rows // len(batch))
    chunks = [list(range(i, min(len(sets), i + per_forward))) for i in range(0, len(sets), per_forward)]
    logits = []
    for chunk in tqdm(chunks, desc=desc, unit="forward", disable=not progress):
        writes: dict[int, list[_HeadWrite]] = {}
        for c, s in enumerate(chunk):
            for layer, ws in make_writes(sets[s], c * B).items():
                writes.setdefault(layer, []).extend(ws)
        z, _ = _head_trace(vlm, _tile(batch.inputs, len(chunk)), writes)
        logits.append(z.reshape(len(chunk), B, -1))
    stacked = torch.cat(logits, 0).permute(1, 0, 2)  # batch, set, vocab
    return readout(stacked.reshape(B * len(sets), -1), _repeat_pairs(pairs, len(sets)))


_KINDS = ("knockout", "mean", "patch")


def _writer(vlm: "VLM", batch: PassBatch, pairs: Sequence[CandidatePair], sets: Sequence[Sequence[Head]], kind: str,
            where: PositionSpec, reference: PassBatch | None, group: str | PositionMap):
    """Validated sets and the write maker of one kind: "knockout", "mean" (reference: the mean's
    batch, default `batch`) or "patch" (reference: the source batch, `group` its positions)."""
    if kind not in _KINDS:
        raise PatchingError(f"unknown intervention kind {kind!r}; choose 'knockout', 'mean' or 'patch'")
    if not sets:
        raise PatchingError("no head set to run; pass at least one set of (layer, head) pairs")
    sets = [check_heads(vlm, heads) for heads in sets]
    every = sorted({h for heads in sets for h in heads})
    if kind == "patch":
        if reference is None:
            raise PatchingError("a head patching sweep needs the source batch: pass reference=<source PassBatch>")
        source = _with_prefix(reference, pairs)
        mapping = map_positions(source, batch, group)
        _, saved = _head_trace(vlm, source.inputs, {}, {l for l, _ in every})
        return sets, lambda heads, offset: _patch_writes(vlm, heads, mapping, saved, offset)
    means = head_means(vlm, batch if reference is None else reference, every) if kind == "mean" and every else None
    where_rows = positions(batch, where)
    return sets, lambda heads, offset: _const_writes(vlm, heads, where_rows, means, offset)


def knockout_sets(vlm: "VLM", batch: PassBatch, pairs: Sequence[CandidatePair], sets: Sequence[Sequence[Head]], *,
                  kind: str = "knockout", where: PositionSpec = "all", reference: PassBatch | None = None,
                  group: str | PositionMap = "answer", max_rows: int = 256) -> InterventionResult:
    """Several head sets, each intervened on alone, in as few forwards as `max_rows` allows:
    `intervened` has rows batch x set (an empty set is the plain forward). `kind`: "knockout",
    "mean" (`mean_ablate_heads`; `reference`: the batch the means come from) or "patch"
    (`patch_heads`; `reference`: the source batch, `group` the patched positions)."""
    batch = _with_prefix(batch, pairs)
    sets, make = _writer(vlm, batch, pairs, sets, kind, where, reference, group)
    hit = _tiled(vlm, batch, pairs, sets, make, max_rows, False, f"head {kind}")
    clean, _ = _trace(vlm, batch.inputs, _Plan())
    return InterventionResult(readout(clean, pairs), hit.reshape(len(batch), len(sets)))


def head_sweep(vlm: "VLM", batch: PassBatch, pairs: Sequence[CandidatePair], *, kind: str = "knockout",
               layers: Iterable[int] | None = None, where: PositionSpec = "all", reference: PassBatch | None = None,
               group: str | PositionMap = "answer", max_rows: int = 256, progress: bool = False) -> HeadSweep:
    """Every head of `layers` (None: all that run) intervened on alone; `kind`, `reference`,
    `where` and `group` as for `knockout_sets` ("patch": each head's z copied from the source
    batch `reference` at `group`). The batch is tiled so one forward holds up to `max_rows`
    rows (whole copies of the batch, one per head)."""
    batch = _with_prefix(batch, pairs)
    chosen = _layers(vlm, layers, batch)
    if not chosen:
        raise PatchingError("no layer to sweep; pass layers=[...] with at least one decoder layer")
    n_heads = head_shape(vlm)[0]
    configs, make = _writer(vlm, batch, pairs, [[(l, h)] for l in chosen for h in range(n_heads)], kind, where,
                            reference, group)
    hit = _tiled(vlm, batch, pairs, configs, make, max_rows, progress, f"head {kind}")
    clean, _ = _trace(vlm, batch.inputs, _Plan())
    return HeadSweep(kind, chosen, n_heads, readout(clean, pairs), hit.reshape(len(batch), len(chosen), n_heads))
