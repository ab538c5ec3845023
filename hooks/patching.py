"""Causal interventions across modalities: activation patching, attention knockout, steering.

Everything runs as one nnsight trace per forward on the VLM's wrapper (`vlm.nn`), batched,
with positions named through the prompt geometry (`hooks.prompts.Geometry`), never counted by
hand. The measured quantity is the one of the logit lens (METHOD §1.5) at the answer position:
`logit(text) - logit(vision)`, where the logit of an answer is the log-sum-exp of its
candidate ids' logits (`interp.logit_lens`), plus the log-probabilities of the candidates.

Sites and layers (TransformerLens' hook names, decoder-layer indices `0..L-1`):

- ``resid_pre``: the input of decoder layer `l` (layer 0: the embedding output, image
  features merged); ``resid_post``: the output of decoder layer `l` (= lens index `l + 1` of
  `hooks.taps`); ``attn_out``: the attention sublayer's output (`self_attn` output[0], before
  any post-attention norm and the residual add); ``mlp_out``: the MLP's output (likewise).

Position groups: the geometry's "image", "context", "question", "answer", plus "all" (every
non-padding position) and "after:<group>" (every position after the group's last one, e.g.
"after:context": the question, the chat template's tokens and the answer position); or
explicit per-row lists of padded positions.

1. **Activation patching** (`patch`, `patching_sweep`): values of a site in a *source* batch
   are written into a *target* batch, row b of the source into row b of the target. When the
   two layouts differ, a named group maps by order within the group (the k-th image token to
   the k-th image token) **[ours]**; groups of different sizes are refused (`PatchingError`)
   unless an explicit `PositionMap` says what goes where. A sweep tiles the target batch once
   per (group, layer) configuration, so a whole sweep costs a few forwards.
2. **Attention knockout** (`knockout`): the 4-D attention mask that each decoder layer in the
   window receives as its `attention_mask` keyword is replaced by a copy in which the chosen
   query positions cannot attend to the chosen key positions. With ``sdpa`` attention the mask
   is boolean (True = attend) and blocked entries become False; with ``eager`` it is additive
   (0 or the dtype's minimum) and blocked entries get the minimum, which is what a padding key
   gets, so a blocked key has exactly zero weight after the softmax in both. When sdpa
   receives no mask at all (no padding: it uses `is_causal`), the causal mask is built
   explicitly first. **[ours]** A position's attention to itself is never blocked, so no
   query row is ever fully masked (sdpa would return NaN). Other implementations (flash,
   flex) pass other mask types and are refused.
3. **Steering** (`mean_difference`, `instruction_direction`, `steer`, `steering_effect`;
   MC², METHOD §4): a per-layer direction is the mean difference of the `resid_post` states
   at the answer position under a "follow the text" and a "follow the image" instruction
   (prepended to the question); `alpha x direction[l]` is added to `resid_post` of every layer
   `l` in a window, at the answer position by default **[ours: that is where the direction
   was measured and where the one-word answer is read; "all" adds it at every non-padding
   position instead]**. Added at consecutive layers, the additions accumulate downstream.

Candidate pairs with a teacher-forced prefix (`CandidatePair.prefix`) are handled by
appending the prefix to both batches (`hooks.prompts.append_tokens`); the "answer" group then
names the last forced token.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from hooks.prompts import PassBatch, PromptItem, append_tokens
from hooks.taps import accepts_logits_to_keep, check_required_inputs
from interp.candidates import CandidatePair
from interp.errors import CaseError, ModalityLensError
from interp.uncertainty import entropy as full_entropy

if TYPE_CHECKING:
    from hooks.loading import VLM
    from interp.results import FollowingCurve, FollowingRatios

__all__ = [
    "SITES",
    "GROUPS",
    "TEXT_INSTRUCTION",
    "IMAGE_INSTRUCTION",
    "PatchingError",
    "PositionMap",
    "AnswerReadout",
    "InterventionResult",
    "PatchingSweep",
    "SteeringDirection",
    "SteeringRow",
    "SteeringReport",
    "positions",
    "map_positions",
    "readout",
    "read_answer",
    "patch",
    "patching_sweep",
    "plot_patching",
    "attention_implementation",
    "knockout",
    "with_instruction",
    "INSTRUCTION_PLACEMENTS",
    "DEFAULT_PLACEMENT",
    "mean_difference",
    "instruction_direction",
    "steer",
    "optimize_direction",
    "OptimizedDirection",
    "steering_effect",
    "steering_effects",
]

SITES: tuple[str, ...] = ("resid_pre", "attn_out", "mlp_out", "resid_post")
"""Patchable sites, in the order a decoder layer computes them."""

GROUPS: tuple[str, ...] = ("image", "context", "question", "answer")
"""The position groups a sweep uses by default."""

TEXT_INSTRUCTION = "use the text to answer ."
IMAGE_INSTRUCTION = "use the image to answer ."
"""Default steering instructions **[ours]**: every word is one token of both the tiny models'
vocabulary (`hooks.tiny.TINY_WORDS`) and the trained model's (`data/tiny_vlm`)."""

_KNOCKOUT_IMPLEMENTATIONS = ("sdpa", "eager")


class PatchingError(ModalityLensError, ValueError):
    """An intervention cannot be made as asked (positions, layers, sites, attention kind)."""


# --------------------------------------------------------------------------- positions
PositionSpec = str | Sequence[Sequence[int]]


def _named_positions(batch: PassBatch, b: int, name: str) -> list[int]:
    g = batch.geometry[b]
    if name == "all":
        return list(range(g.n_pad, g.length))
    if name.startswith("after:"):
        inner = g.positions(name.removeprefix("after:"))
        if not inner:
            raise PatchingError(f"row {b} of the {batch.name} pass has no {name.removeprefix('after:')!r} "
                                f"positions, so {name!r} is undefined there")
        return list(range(max(inner) + 1, g.length))
    try:
        return g.positions(name)
    except ValueError as err:
        raise PatchingError(f"{err}; or 'all', 'after:<group>', or explicit per-row position lists") from None


def positions(batch: PassBatch, spec: PositionSpec) -> list[list[int]]:
    """Padded positions of every row of `batch`: a named group or explicit per-row lists.

    Names: "image", "context", "question", "answer" (the geometry's groups), "all" (every
    non-padding position) and "after:<group>" (from the group's last position + 1 to the end).
    Explicit lists need one list per row, each inside the row's non-padding part.
    """
    if isinstance(spec, str):
        return [_named_positions(batch, b, spec) for b in range(len(batch))]
    rows = [list(int(p) for p in row) for row in spec]
    if len(rows) != len(batch):
        raise PatchingError(f"explicit positions need one list per row: got {len(rows)} for a batch of {len(batch)}")
    for b, row in enumerate(rows):
        g = batch.geometry[b]
        bad = [p for p in row if not g.n_pad <= p < g.length]
        if bad:
            raise PatchingError(f"row {b}: positions {bad} are outside the prompt [{g.n_pad}, {g.length}) "
                                "(padding or past the end); positions are padded coordinates")
    return rows


@dataclass(frozen=True)
class PositionMap:
    """What goes where: `source[b][k]` of source row b is written to `target[b][k]` of target row b."""

    source: tuple[tuple[int, ...], ...]
    target: tuple[tuple[int, ...], ...]
    name: str = "explicit"

    def __post_init__(self) -> None:
        if len(self.source) != len(self.target):
            raise PatchingError(f"a PositionMap needs as many source rows as target rows "
                                f"({len(self.source)} != {len(self.target)})")
        for b, (s, t) in enumerate(zip(self.source, self.target)):
            if len(s) != len(t):
                raise PatchingError(f"PositionMap row {b}: {len(s)} source positions but {len(t)} target positions")

    @classmethod
    def same(cls, rows: Sequence[Sequence[int]], name: str = "explicit") -> "PositionMap":
        """The same positions on both sides (source and target share their layout)."""
        frozen = tuple(tuple(int(p) for p in row) for row in rows)
        return cls(frozen, frozen, name)

    @property
    def size(self) -> int:
        return sum(len(t) for t in self.target)


def map_positions(source: PassBatch, target: PassBatch, group: str | PositionMap) -> PositionMap:
    """Source -> target positions of `group` for every row; a named group maps by order within it.

    Raises `PatchingError` when the group has a different number of positions in a source row
    than in its target row (e.g. contexts of different lengths): by-order mapping would then
    be a guess; pass an explicit `PositionMap` instead.
    """
    if len(source) != len(target):
        raise PatchingError(f"source and target need one row each per case: {len(source)} != {len(target)}")
    if isinstance(group, PositionMap):
        positions(source, group.source)
        positions(target, group.target)
        return group
    src, tgt = positions(source, group), positions(target, group)
    for b, (s, t) in enumerate(zip(src, tgt)):
        if len(s) != len(t):
            raise PatchingError(
                f"row {b}: group {group!r} has {len(s)} positions in the source ({source.name} pass) and {len(t)} "
                f"in the target ({target.name} pass); a group maps by order only when the sizes agree. Pass an "
                "explicit PositionMap(source=..., target=...) to say which position goes where")
    return PositionMap(tuple(map(tuple, src)), tuple(map(tuple, tgt)), group)


# --------------------------------------------------------------------------- readout
@dataclass
class AnswerReadout:
    """The next-token distribution at the answer position, reduced to what interventions measure.

    Leading axes `*rows` are the batch (and, in a sweep, group x layer). `logit_diff` is
    `logit(text) - logit(vision)`, each side the log-sum-exp of its candidate ids' logits
    (= log(p_text / p_vision)); `log_p_text` / `log_p_vision` are the log-probabilities of the
    two answers (summed over their ids), `candidate_log_probs` those of every id in the pairs
    (`candidate_ids`, sorted), `top1` the argmax token, `entropy` the full-vocabulary entropy
    in nats. `logits` (the full last-position logits) only when asked for.
    """

    logit_diff: Float[Tensor, "*rows"]
    log_p_text: Float[Tensor, "*rows"]
    log_p_vision: Float[Tensor, "*rows"]
    candidate_ids: Int[Tensor, " n_cand"]
    candidate_log_probs: Float[Tensor, "*rows n_cand"]
    top1: Int[Tensor, "*rows"]
    entropy: Float[Tensor, "*rows"]
    logits: Float[Tensor, "*rows vocab"] | None = None

    def reshape(self, *shape: int) -> "AnswerReadout":
        """The same readout with the row axis reshaped (e.g. to batch x group x layer)."""
        r = lambda t: t.reshape(*shape, *t.shape[1:])  # noqa: E731
        return AnswerReadout(r(self.logit_diff), r(self.log_p_text), r(self.log_p_vision), self.candidate_ids,
                             r(self.candidate_log_probs), r(self.top1), r(self.entropy),
                             None if self.logits is None else r(self.logits))

    def labels(self, pairs: Sequence[CandidatePair]) -> list[Any]:
        """"text", "vision" or "other": the top-1 token classified by the row's pair.

        One row axis: a flat list, row r read with `pairs[r % len(pairs)]` (tiled copies).
        More axes (a sweep's batch x group x layer): the first is the batch, read with
        `pairs[b]`, and row b's list holds the other axes flattened.
        **[ours]** The greedy first answer token stands for the answer: for one-token answers
        (the colour set) this is `interp.following.label_following` on the generated word.
        """
        def label(pair: CandidatePair, token: int) -> str:
            cls = pair.classify(token)
            return cls if cls in ("text", "vision") else "other"

        if self.top1.dim() == 1:
            return [label(pairs[r % len(pairs)], int(t)) for r, t in enumerate(self.top1.tolist())]
        if self.top1.shape[0] != len(pairs):
            raise ValueError(f"{self.top1.shape[0]} batch rows but {len(pairs)} pairs")
        return [[label(pair, int(t)) for t in self.top1[b].flatten().tolist()] for b, pair in enumerate(pairs)]


def _id_masks(pairs: Sequence[CandidatePair], vocab: int, device: torch.device) -> tuple[Tensor, Tensor]:
    text = torch.zeros(len(pairs), vocab, dtype=torch.bool, device=device)
    vision = torch.zeros_like(text)
    for b, pair in enumerate(pairs):
        if not pair.text_ids or not pair.vision_ids:
            raise CaseError(f"candidate pair {b} has no id on one side; build it with interp.candidates.candidate_pair")
        text[b, sorted(pair.text_ids)] = True
        vision[b, sorted(pair.vision_ids)] = True
    return text, vision


def readout(
    logits: Float[Tensor, "rows vocab"], pairs: Sequence[CandidatePair], keep_logits: bool = False,
) -> AnswerReadout:
    """Reduce last-position logits to an `AnswerReadout`; row r is read with `pairs[r % len(pairs)]`.

    (Rows beyond the pairs are tiled copies of the batch, as in a sweep.)
    """
    z = logits.float()
    rows, vocab = z.shape
    text_mask, vision_mask = _id_masks(pairs, vocab, z.device)
    which = torch.arange(rows, device=z.device) % len(pairs)
    neg = torch.tensor(float("-inf"), device=z.device)
    z_text = torch.where(text_mask[which], z, neg).logsumexp(-1)
    z_vision = torch.where(vision_mask[which], z, neg).logsumexp(-1)
    lse = z.logsumexp(-1)
    ids = sorted(set().union(*(p.text_ids | p.vision_ids for p in pairs)))
    cand = torch.tensor(ids, dtype=torch.long, device=z.device)
    return AnswerReadout(
        logit_diff=z_text - z_vision,
        log_p_text=z_text - lse,
        log_p_vision=z_vision - lse,
        candidate_ids=cand,
        candidate_log_probs=z[:, cand] - lse[:, None],
        top1=z.argmax(-1),
        entropy=full_entropy(z),
        logits=z if keep_logits else None,
    )


def read_answer(vlm: "VLM", batch: PassBatch, pairs: Sequence[CandidatePair], *,
                keep_logits: bool = False) -> AnswerReadout:
    """The readout of a plain forward (no intervention) of `batch`, after any pair prefixes."""
    batch = _with_prefix(batch, pairs)
    logits, _ = _trace(vlm, batch.inputs, _Plan())
    return readout(logits, pairs, keep_logits)


@dataclass
class InterventionResult:
    """One intervention on a batch: the readout without it (`clean`), with it (`intervened`),
    and, for patching, the source batch's own readout (read with the target's pairs)."""

    clean: AnswerReadout
    intervened: AnswerReadout
    source: AnswerReadout | None = None

    @property
    def effect(self) -> Float[Tensor, " batch"]:
        """Change of logit(text) - logit(vision) at the answer position."""
        return self.intervened.logit_diff - self.clean.logit_diff

    @property
    def recovered(self) -> Float[Tensor, " batch"]:
        """Share of the source-target gap the patch moves: effect / (source - clean) (NaN at a 0 gap)."""
        if self.source is None:
            raise ValueError("only a patching result has a source")
        return self.effect / (self.source.logit_diff - self.clean.logit_diff)


# --------------------------------------------------------------------------- the trace
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
    """A copy of a decoder layer's 4-D attention mask with (row, query, key) entries blocked."""
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
    """The attribute name of a decoder layer's attention or MLP module."""
    module = vlm.layers[layer]
    names = ("self_attn", "cross_attn") if site == "attn_out" else ("mlp",)
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


def _patch_write(mapping: PositionMap, values: Tensor, row_offset: int, device: torch.device) -> _Write:
    """The write that copies `values[b, source[b][k]]` to `(row_offset + b, target[b][k])`."""
    src_rows, src_pos, tgt_rows, tgt_pos = [], [], [], []
    for b, (s, t) in enumerate(zip(mapping.source, mapping.target)):
        src_rows += [b] * len(s)
        src_pos += list(s)
        tgt_rows += [row_offset + b] * len(t)
        tgt_pos += list(t)
    sr, sp = _index(src_rows, src_pos, values.device)
    tr, tp = _index(tgt_rows, tgt_pos, device)
    return _Write(tr, tp, values[sr, sp].to(device))


# --------------------------------------------------------------------------- patching
def patch(
    vlm: "VLM",
    source: PassBatch,
    target: PassBatch,
    pairs: Sequence[CandidatePair],
    *,
    layers: int | Iterable[int],
    group: str | PositionMap = "all",
    site: str = "resid_post",
    keep_logits: bool = False,
) -> InterventionResult:
    """Copy `site` at `layers` and `group`'s positions from `source` into `target`, row by row.

    Args:
        source, target: batches with one row per case (e.g. `vlm.passes(...)`); row b of the
            source is patched into row b of the target.
        pairs: one candidate pair per row, read at the target's answer position.
        layers: decoder layer(s); several layers are patched in the same forward.
        group: a named group (mapped by order, sizes must agree), "all", "after:<group>", or a
            `PositionMap`.
        site: "resid_pre", "resid_post" (default), "attn_out" or "mlp_out".

    Returns:
        `InterventionResult` with the clean target, the patched target and the source readouts.
    """
    site = _site(site)
    source, target = _with_prefix(source, pairs), _with_prefix(target, pairs)
    mapping = map_positions(source, target, group)
    chosen = _layers(vlm, layers)
    src_logits, saved = _trace(vlm, source.inputs, _Plan(saves={(l, site) for l in chosen}))
    clean_logits, _ = _trace(vlm, target.inputs, _Plan())
    plan = _Plan()
    for l in chosen:
        plan.write(l, site, _patch_write(mapping, saved[(l, site)], 0, vlm.device))
    logits, _ = _trace(vlm, target.inputs, plan)
    return InterventionResult(readout(clean_logits, pairs, keep_logits), readout(logits, pairs, keep_logits),
                              readout(src_logits, pairs, keep_logits))


@dataclass
class PatchingSweep:
    """A layer x position-group patching sweep (`patched` has rows batch x group x layer)."""

    site: str
    groups: tuple[str, ...]
    layers: tuple[int, ...]
    clean: AnswerReadout
    source: AnswerReadout
    patched: AnswerReadout
    group_sizes: Int[Tensor, "batch group"]

    @property
    def effect(self) -> Float[Tensor, "batch group layer"]:
        """Change of logit(text) - logit(vision) at the answer position, per case."""
        return self.patched.logit_diff - self.clean.logit_diff[:, None, None]

    @property
    def recovered(self) -> Float[Tensor, "batch group layer"]:
        """effect / (source - clean): 1 where the patch moves the target all the way to the source."""
        gap = (self.source.logit_diff - self.clean.logit_diff)[:, None, None]
        return self.effect / gap

    def mean(self, value: str = "effect") -> Float[Tensor, "group layer"]:
        """Over cases: the mean "effect" or "logit_diff", or "recovered" as mean effect / mean gap.

        **[ours]** The aggregate share of the gap is a ratio of means: per-case ratios explode
        for cases whose source and target barely differ.
        """
        if value == "recovered":
            gap = (self.source.logit_diff - self.clean.logit_diff).mean()
            return self.effect.mean(0) / gap
        if value not in ("effect", "logit_diff"):
            raise ValueError(f"unknown value {value!r}; choose effect, recovered or logit_diff")
        return (self.effect if value == "effect" else self.patched.logit_diff).mean(0)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists for JSON: per-case arrays are batch x group x layer."""
        t = lambda x: x.detach().cpu().tolist()  # noqa: E731
        return {
            "site": self.site, "groups": list(self.groups), "layers": list(self.layers),
            "layer_convention": f"decoder layer index; site {self.site}",
            "mean_effect": t(self.mean("effect")), "mean_recovered": t(self.mean("recovered")),
            "effect": t(self.effect), "patched_logit_diff": t(self.patched.logit_diff),
            "clean_logit_diff": t(self.clean.logit_diff), "source_logit_diff": t(self.source.logit_diff),
            "patched_log_p_text": t(self.patched.log_p_text), "patched_log_p_vision": t(self.patched.log_p_vision),
            "group_sizes": t(self.group_sizes),
        }


def patching_sweep(
    vlm: "VLM",
    source: PassBatch,
    target: PassBatch,
    pairs: Sequence[CandidatePair],
    *,
    groups: Sequence[str | PositionMap] = GROUPS,
    layers: Iterable[int] | None = None,
    site: str = "resid_post",
    max_rows: int = 256,
    progress: bool = False,
) -> PatchingSweep:
    """Patch each group at each layer separately (one configuration at a time) and read the answer.

    The target batch is tiled so that one forward holds up to `max_rows` rows (whole copies
    of the batch, one per configuration); the source is run once. `layers=None`: every
    decoder layer that runs for both batches. A group must map in every row (see
    `map_positions`); an empty group (e.g. "image" in two text-only passes) leaves the target
    unchanged.
    """
    from tqdm import tqdm

    site = _site(site)
    source, target = _with_prefix(source, pairs), _with_prefix(target, pairs)
    maps = [map_positions(source, target, g) for g in groups]
    chosen = _layers(vlm, layers, source, target)
    if not chosen:
        raise PatchingError("no layer to sweep")
    src_logits, saved = _trace(vlm, source.inputs, _Plan(saves={(l, site) for l in chosen}))
    clean_logits, _ = _trace(vlm, target.inputs, _Plan())
    B = len(target)
    configs = [(g, l) for g in range(len(maps)) for l in chosen]
    per_forward = max(1, max_rows // B)
    chunks = [configs[i:i + per_forward] for i in range(0, len(configs), per_forward)]
    logits = []
    for chunk in tqdm(chunks, desc=f"patching {site}", unit="forward", disable=not progress):
        plan = _Plan()
        for c, (g, l) in enumerate(chunk):
            plan.write(l, site, _patch_write(maps[g], saved[(l, site)], c * B, vlm.device))
        z, _ = _trace(vlm, _tile(target.inputs, len(chunk)), plan)
        logits.append(z.reshape(len(chunk), B, -1))
    stacked = torch.cat(logits, 0).reshape(len(maps), len(chosen), B, -1).permute(2, 0, 1, 3)
    patched = readout(stacked.reshape(B * len(maps) * len(chosen), -1),
                      _repeat_pairs(pairs, len(maps) * len(chosen))).reshape(B, len(maps), len(chosen))
    sizes = torch.tensor([[len(m.target[b]) for m in maps] for b in range(B)])
    names = tuple(m.name for m in maps)
    return PatchingSweep(site, names, chosen, readout(clean_logits, pairs), readout(src_logits, pairs), patched, sizes)


def _repeat_pairs(pairs: Sequence[CandidatePair], k: int) -> list[CandidatePair]:
    """Each pair k times in a row (rows ordered batch-major, as after the sweep's permute)."""
    out: list[CandidatePair] = []
    for p in pairs:
        out.extend([p] * k)
    return out


def plot_patching(sweep: PatchingSweep, *, value: str = "effect", ax: Any = None, title: str | None = None,
                  annotate: bool = True) -> Any:
    """Heatmap of the mean over cases (group rows x layer columns); returns the figure.

    `value`: "effect" (change of logit(text) - logit(vision)), "recovered" (share of the
    source-target gap) or "logit_diff" (the patched value). Colours are centred on 0.
    """
    import matplotlib.pyplot as plt

    data = sweep.mean(value).detach().cpu().numpy()
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.1 + 0.55 * len(sweep.layers), 0.9 + 0.5 * len(sweep.groups)))
    else:
        fig = ax.figure
    finite = np.abs(data[np.isfinite(data)])
    lim = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    im = ax.imshow(data, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(sweep.layers)), [str(l) for l in sweep.layers])
    ax.set_yticks(range(len(sweep.groups)), list(sweep.groups))
    ax.set_xlabel(f"decoder layer ({sweep.site})")
    ax.set_ylabel("patched positions")
    labels = {"effect": "Δ logit(text) − logit(vision)", "recovered": "share of source−target gap",
              "logit_diff": "patched logit(text) − logit(vision)"}
    fig.colorbar(im, ax=ax, label=labels[value])
    if annotate and data.size <= 400:
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                if np.isfinite(data[i, j]):
                    ax.text(j, i, f"{data[i, j]:.2g}", ha="center", va="center", fontsize=7,
                            color="white" if abs(data[i, j]) > 0.6 * lim else "black")
    ax.set_title(title or f"activation patching, n = {sweep.effect.shape[0]} cases")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- knockout
def attention_implementation(vlm: "VLM") -> str:
    """The attention implementation the decoder layers use ("sdpa", "eager", ...)."""
    module = getattr(vlm.layers[0], "self_attn", None)
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


# --------------------------------------------------------------------------- steering
@dataclass(frozen=True)
class SteeringDirection:
    """Per decoder layer, mean(resid_post | plus) - mean(resid_post | minus) at the answer
    position (`vectors`: layer x d_model), or at each of the last K prompt positions
    (`vectors`: layer x K x d_model, `[:, -1]` the answer position's; `positions == K`)."""

    vectors: Float[Tensor, "layer *k d_model"]
    plus: str
    minus: str
    n_plus: int
    n_minus: int
    state_norms: Float[Tensor, " layer"] | None = None
    """Mean norm of the states the difference was taken from (both sides, all its positions), per layer."""

    @property
    def positions(self) -> int:
        """How many last prompt positions the direction spans (1: the answer position only)."""
        return 1 if self.vectors.dim() == 2 else self.vectors.shape[1]

    @property
    def norms(self) -> Float[Tensor, " layer"]:
        """Per layer: the vector's norm (a K-position direction: the mean over its positions)."""
        norms = self.vectors.norm(dim=-1)
        return norms if norms.dim() == 1 else norms.mean(-1)

    def relative(self) -> "SteeringDirection":
        """The direction rescaled to the states' mean norm at each layer, so that `alpha` is a
        fraction of a typical residual state **[ours]**: the raw mean difference can be tiny (an
        instruction the model was never trained on) or large, and alpha would not carry over
        between layers or models. A zero vector stays zero."""
        if self.state_norms is None:
            raise ValueError("this direction has no state norms; build it with mean_difference")
        scale = torch.where(self.norms > 0, self.state_norms.to(self.vectors) / self.norms.clamp_min(1e-30),
                            torch.zeros_like(self.norms))
        scale = scale.reshape(-1, *[1] * (self.vectors.dim() - 1))
        return SteeringDirection(self.vectors * scale, self.plus, self.minus, self.n_plus, self.n_minus,
                                 self.state_norms)


def _check_words(tokenizer: Any, text: str) -> None:
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return
    unknown = [w for w in text.split() if unk in tokenizer.encode(w, add_special_tokens=False)]
    if unknown:
        raise CaseError(f"the instruction {text!r} has words this tokenizer does not know: {unknown}; "
                        "choose an instruction made of words in the model's vocabulary")


INSTRUCTION_PLACEMENTS: tuple[str, ...] = ("start", "question", "end")
DEFAULT_PLACEMENT = "end"
"""Where `data/tiny_vlm` saw its instructed examples in training: after the question."""


def with_instruction(items: Sequence[PromptItem], instruction: str, *,
                     placement: str = DEFAULT_PLACEMENT) -> list[PromptItem]:
    """`items` with `instruction` added: `"end"` (default) appends it to the question, the last
    words of the user turn; `"question"` prepends it to the question, so it sits between the
    context and the question; `"start"` puts it at the start of the user turn, before the image
    and the context (the item's `preamble`, after any preamble it has).

    The default is where `data/tiny_vlm` saw its instructed examples in training. The place
    changes what an instruction can do: after the context, the instruction's own tokens can
    attend to the colour the text states and hand it on; at the start, no token that knows the
    instruction sees the content before the tokens that follow it; at the end it lies inside the
    answer position's first-layer window in `data/tiny_vlm`, while the context does not
    (docs/interventions.md has what each placement gave on trained models).
    """
    if placement not in INSTRUCTION_PLACEMENTS:
        raise ValueError(f"unknown instruction placement {placement!r}; choose one of {INSTRUCTION_PLACEMENTS}")
    text = instruction.strip()
    if placement == "question":
        return [replace(it, question=f"{text} {it.question}") for it in items]
    if placement == "end":
        return [replace(it, question=f"{it.question} {text}") for it in items]
    return [replace(it, preamble=f"{it.preamble.strip()} {text}" if it.preamble else text) for it in items]


def _last_positions(batch: PassBatch, k: int) -> list[list[int]]:
    """Per row, the padded indices of its last `k` prompt positions (the answer position last);
    refused when a row has fewer than `k` positions."""
    rows = positions(batch, "all")
    short = [b for b, ps in enumerate(rows) if len(ps) < k]
    if short:
        raise PatchingError(f"rows {short[:5]} have fewer than {k} positions; choose a smaller `positions`")
    return [list(ps[-k:]) for ps in rows]


def _last_states(vlm: "VLM", batch: PassBatch, k: int = 1) -> Float[Tensor, "batch layer k d_model"]:
    plan = _Plan(saves={(l, "resid_post") for l in _layers(vlm, None, batch)})
    _, saved = _trace(vlm, batch.inputs, plan)
    n, first = vlm.n_layers, next(iter(saved.values()))
    pos = torch.tensor(_last_positions(batch, k), dtype=torch.long, device=first.device)  # batch x k
    rows = torch.arange(first.shape[0], device=first.device)[:, None]
    out = torch.zeros(first.shape[0], n, k, first.shape[-1], dtype=torch.float32, device=first.device)
    carry = None
    for l in range(n):  # a skipped layer passes its input through: repeat the previous state
        if (l, "resid_post") in saved:
            carry = saved[(l, "resid_post")][rows, pos].float()
        if carry is not None:
            out[:, l] = carry
    return out


def mean_difference(vlm: "VLM", plus: PassBatch, minus: PassBatch, *, plus_name: str = "plus",
                    minus_name: str = "minus", positions: int = 1) -> SteeringDirection:
    """Per-layer mean difference of the `resid_post` states of two batches at the answer
    position, or (`positions=K`) at each of the last K prompt positions, matched from the end:
    the k-th last position of every row with the k-th last of every other. Prompts of one
    template end in the same tokens (the question's tail and the assistant header), so for K
    within that tail the end-aligned positions hold the same tokens in every row."""
    if positions < 1:
        raise PatchingError(f"positions must be at least 1 (the answer position), got {positions}")
    a, b = _last_states(vlm, plus, positions), _last_states(vlm, minus, positions)
    norms = torch.cat([a, b]).norm(dim=-1).mean((0, 2))
    diff = a.mean(0) - b.mean(0)  # layer x k x d_model
    return SteeringDirection((diff[:, 0] if positions == 1 else diff).to(vlm.dtype), plus_name, minus_name,
                             len(plus), len(minus), norms)


def instruction_direction(
    vlm: "VLM",
    items: Sequence[PromptItem],
    *,
    text_instruction: str = TEXT_INSTRUCTION,
    image_instruction: str = IMAGE_INSTRUCTION,
    pass_name: str = "conflict",
    placement: str = DEFAULT_PLACEMENT,
    positions: int = 1,
) -> SteeringDirection:
    """MC²-style direction: "follow the text" minus "follow the image" instruction states.

    Both instructions are added to every item (`with_instruction(..., placement=placement)`)
    and the `pass_name` pass is run (conflict by default, so both modalities are present); the
    direction of layer l is the mean over items of the difference at the answer position
    (`positions=K`: at each of the last K prompt positions, METHOD §4's "last prompt
    positions"; `steer` then adds each at its own position). Instructions whose words the
    tokenizer does not know raise `CaseError`.
    """
    for text in (text_instruction, image_instruction):
        _check_words(vlm.tokenizer, text)
    plus = vlm.passes(with_instruction(items, text_instruction, placement=placement), (pass_name,))[pass_name]
    minus = vlm.passes(with_instruction(items, image_instruction, placement=placement), (pass_name,))[pass_name]
    return mean_difference(vlm, plus, minus, plus_name=text_instruction, minus_name=image_instruction,
                           positions=positions)


def _steer_plan(vlm: "VLM", batch: PassBatch, direction: SteeringDirection, alpha: float,
                layers: tuple[int, ...], where: PositionSpec, copies: int = 1,
                alphas: Sequence[float] | None = None) -> _Plan:
    k = direction.positions
    if k > 1 and where != "answer":
        raise PatchingError(f"a direction over the last {k} prompt positions is added at those positions; "
                            f"leave where='answer' (got {where!r}) or build a one-position direction")
    rows_pos = _last_positions(batch, k) if k > 1 else positions(batch, where)
    B = len(batch)
    plan = _Plan()
    scale = list(alphas) if alphas is not None else [alpha]
    for l in layers:
        rows, pos, vals, slot = [], [], [], []
        for c in range(copies):
            for b, ps in enumerate(rows_pos):
                rows += [c * B + b] * len(ps)
                pos += list(ps)
                vals += [scale[c]] * len(ps)
                slot += list(range(len(ps))) if k > 1 else [0] * len(ps)
        tr, tp = _index(rows, pos, vlm.device)
        a = torch.tensor(vals, dtype=torch.float32, device=vlm.device)[:, None]
        vec = direction.vectors[l].float().to(vlm.device)
        vec = vec[torch.tensor(slot, dtype=torch.long, device=vlm.device)] if k > 1 else vec
        plan.write(l, "resid_post", _Write(tr, tp, a * vec, add=True))
    return plan


def steer(
    vlm: "VLM",
    batch: PassBatch,
    pairs: Sequence[CandidatePair],
    direction: SteeringDirection,
    *,
    alpha: float,
    layers: Iterable[int] | int | None = None,
    where: PositionSpec = "answer",
    keep_logits: bool = False,
) -> InterventionResult:
    """Add `alpha * direction.vectors[l]` to `resid_post` of each layer l in `layers` (None: all)
    at the positions `where` ("answer" by default, "all", a group or explicit lists). A
    direction over the last K prompt positions adds its k-th vector at each row's k-th last
    position (`where` must stay "answer")."""
    batch = _with_prefix(batch, pairs)
    plan = _steer_plan(vlm, batch, direction, alpha, _layers(vlm, layers, batch), where)
    clean, _ = _trace(vlm, batch.inputs, _Plan())
    steered, _ = _trace(vlm, batch.inputs, plan)
    return InterventionResult(readout(clean, pairs, keep_logits), readout(steered, pairs, keep_logits))


@dataclass(frozen=True)
class OptimizedDirection:
    """The result of `optimize_direction`: the vector, and the objective along the way."""

    direction: SteeringDirection
    layer: int
    where: PositionSpec
    history: tuple[float, ...]
    """Mean logit(text) - logit(vision) over the fit rows before each step (index 0: unsteered)."""
    final: float
    """The same with the returned vector added."""


def optimize_direction(
    vlm: "VLM",
    batch: PassBatch,
    pairs: Sequence[CandidatePair],
    *,
    layer: int,
    where: PositionSpec = "answer",
    max_norm: float = 0.3,
    steps: int = 60,
    lr: float = 0.05,
) -> OptimizedDirection:
    """The one vector v that, added to `resid_post` of `layer` at `where`, most raises the mean
    logit(text) - logit(vision) of `batch` at the answer position, with |v| at most `max_norm`
    times the mean state norm there (projected gradient ascent, Adam) **[ours]**.

    A bound, not a method: no additive direction of that size at that layer does more to the
    fit rows. Steering held-out cases with -v and +v (`steering_effect`, alpha -1 / +1) shows
    whether the model has a sign-consistent lever there at all; when even v has none, no
    mean-difference direction can have one. Plain PyTorch hooks on the decoder layer (nnsight
    is not needed for a gradient); the whole batch is one forward per step. The direction
    holds v at `layer` and zeros elsewhere, with state norms, so `relative()` works.
    """
    if steps < 1 or max_norm <= 0:
        raise PatchingError(f"need steps >= 1 and max_norm > 0, got steps={steps}, max_norm={max_norm}")
    (layer,) = _layers(vlm, layer, batch)
    batch = _with_prefix(batch, pairs)
    rows_pos = positions(batch, where)
    rows, pos = _index([b for b, ps in enumerate(rows_pos) for _ in ps], [p for ps in rows_pos for p in ps], vlm.device)
    if rows.numel() == 0:
        raise PatchingError(f"the positions {where!r} are empty in every row; nothing to steer")
    module = vlm.adapter.layers(vlm.model)[layer]
    d_model = vlm.model.get_input_embeddings().weight.shape[-1]
    v = torch.zeros(d_model, dtype=torch.float32, device=vlm.device, requires_grad=True)
    state_norm: list[float] = []

    def add(_module: Any, _inputs: Any, output: Any) -> Any:
        h = output[0] if isinstance(output, tuple) else output
        if not state_norm:
            state_norm.append(float(h[rows, pos].detach().float().norm(dim=-1).mean()))
        h = h.index_put((rows, pos), h[rows, pos] + v.to(h.dtype))
        return (h, *output[1:]) if isinstance(output, tuple) else h

    kwargs = dict(batch.inputs)
    if accepts_logits_to_keep(vlm.model):
        kwargs["logits_to_keep"] = 1
    check_required_inputs(vlm, batch.inputs)

    def objective() -> Tensor:
        vlm.adapter.reset_state(vlm.model)
        logits = vlm.model(**kwargs).logits[:, -1, :]
        return readout(logits, pairs).logit_diff.mean()

    handle = module.register_forward_hook(add)
    history: list[float] = []
    try:
        opt = torch.optim.Adam([v], lr=lr)
        for _ in range(steps):
            value = objective()
            history.append(float(value.detach()))
            (grad,) = torch.autograd.grad(-value, [v])
            v.grad = grad
            opt.step()
            with torch.no_grad():
                bound = max_norm * state_norm[0]
                if v.norm() > bound:
                    v.mul_(bound / v.norm())
        with torch.no_grad():
            final = float(objective())
    finally:
        handle.remove()
    vectors = torch.zeros(vlm.n_layers, d_model, dtype=vlm.dtype, device=vlm.device)
    vectors[layer] = v.detach().to(vlm.dtype)
    norms = torch.zeros(vlm.n_layers, dtype=torch.float32)
    norms[layer] = state_norm[0]
    direction = SteeringDirection(vectors, "optimised toward the text answer", "unsteered", len(batch), len(batch),
                                  norms)
    return OptimizedDirection(direction, layer, where, tuple(history), final)


@dataclass(frozen=True)
class SteeringRow:
    """One alpha: labels of every case, ratios and curve over the kept cases."""

    alpha: float
    labels: tuple[str, ...]
    ratios: "FollowingRatios"
    curve: "FollowingCurve"
    mean_logit_diff: float


@dataclass(frozen=True)
class SteeringReport:
    """Steering's effect on text-following: one row per alpha (0 = unsteered baseline).

    `kept`: cases answered correctly in both unimodal passes (all cases when the filter is
    off); `dh_rel` from the unsteered unimodal passes (steering changes only the conflict
    answer, so the x-axis of the following curve stays put and the curve's shift is the
    balance point's).
    """

    layers: tuple[int, ...]
    where: str
    n_cases: int
    kept: tuple[bool, ...]
    dh_rel: tuple[float, ...]
    rows: tuple[SteeringRow, ...]

    @property
    def n_kept(self) -> int:
        return sum(self.kept)

    def row(self, alpha: float) -> SteeringRow:
        for r in self.rows:
            if r.alpha == alpha:
                return r
        raise KeyError(f"alpha {alpha} was not run; alphas: {[r.alpha for r in self.rows]}")

    def tfr_shift(self, alpha: float) -> float | None:
        """TFR(alpha) - TFR(0), or None when either is undefined."""
        a, b = self.row(alpha).ratios.tfr, self.row(0.0).ratios.tfr
        return None if a is None or b is None else a - b

    def tfr_shift_ci(self, alpha: float, *, level: float = 0.95, n_boot: int = 2000,
                     seed: int = 0) -> tuple[float, float] | None:
        """Paired percentile bootstrap interval of `tfr_shift(alpha)`: the kept cases are
        resampled together for both alphas (each case answers under every alpha). None when the
        shift is undefined or a resample leaves either TFR undefined in more than 5% of draws."""
        from interp.following import tfr_shift_ci

        return tfr_shift_ci(self.row(alpha).labels, self.row(0.0).labels, self.kept, level=level, n_boot=n_boot,
                            seed=seed)

    def balance_shift(self, alpha: float) -> float | None:
        """balance point(alpha) - balance point(0), or None when either has none."""
        a, b = self.row(alpha).curve.balance_point, self.row(0.0).curve.balance_point
        return None if a is None or b is None else a - b

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": list(self.layers), "where": self.where, "n_cases": self.n_cases, "n_kept": self.n_kept,
            "rows": [{"alpha": r.alpha, "tfr": r.ratios.tfr, "tfr_shift": self.tfr_shift(r.alpha),
                      "tfr_shift_ci": self.tfr_shift_ci(r.alpha) if r.alpha != 0 else None,
                      "balance_point": r.curve.balance_point, "balance_shift": self.balance_shift(r.alpha),
                      "curve_status": r.curve.status, "mean_logit_diff": r.mean_logit_diff,
                      "ratios": r.ratios.to_dict(), "labels": list(r.labels)} for r in self.rows],
        }

    def __str__(self) -> str:
        lines = [f"steering at layers {list(self.layers)} ({self.where}); {self.n_kept} of {self.n_cases} cases kept"]
        for r in self.rows:
            tfr = "n/a" if r.ratios.tfr is None else f"{r.ratios.tfr:.3f}"
            bp = "n/a" if r.curve.balance_point is None else f"{r.curve.balance_point:+.3f}"
            if r.alpha != 0:
                shift, ci = self.tfr_shift(r.alpha), self.tfr_shift_ci(r.alpha)
                tfr += " (shift n/a)" if shift is None else f" (shift {shift:+.3f}" + (
                    f", 95% CI {ci[0]:+.3f} to {ci[1]:+.3f})" if ci else ", no CI)")
            lines.append(f"  alpha {r.alpha:+g}: TFR {tfr} (text {r.ratios.n_text}, vision {r.ratios.n_vision}, "
                         f"other {r.ratios.n_other}), balance point {bp} [{r.curve.status}], "
                         f"mean logit diff {r.mean_logit_diff:+.3f}")
        return "\n".join(lines)


def steering_effect(
    vlm: "VLM",
    items: Sequence[PromptItem],
    pairs: Sequence[CandidatePair],
    direction: SteeringDirection,
    *,
    alphas: Sequence[float] = (-4.0, 4.0),
    layers: Iterable[int] | int | None = None,
    where: PositionSpec = "answer",
    correct_only: bool = True,
    n_boot: int = 200,
    seed: int = 0,
    batch_size: int | None = None,
) -> SteeringReport:
    """TFR and balance point of the conflict pass steered with each alpha, against alpha = 0.

    Per case: the unsteered vision-only and text-only passes give the unimodal answers and
    entropies (dH_rel, METHOD §1.3); the conflict pass is run once per alpha (tiled in one
    forward) and its top-1 answer token is labelled text / vision / other with the case's
    pair. With `correct_only`, only cases whose unimodal answers are right in both passes
    enter TFR and the curve (METHOD §1.1). Alpha 0 is always run. `batch_size`: items per
    forward (each tiled once per alpha); None: all at once.
    """
    return steering_effects(vlm, items, pairs, direction, alphas=alphas, windows=[layers], where=where,
                            correct_only=correct_only, n_boot=n_boot, seed=seed, batch_size=batch_size)[0]


def steering_effects(
    vlm: "VLM",
    items: Sequence[PromptItem],
    pairs: Sequence[CandidatePair],
    direction: SteeringDirection,
    *,
    alphas: Sequence[float] = (-4.0, 4.0),
    windows: Sequence[Iterable[int] | int | None] = (None,),
    where: PositionSpec = "answer",
    correct_only: bool = True,
    n_boot: int = 200,
    seed: int = 0,
    batch_size: int | None = None,
) -> list[SteeringReport]:
    """`steering_effect` for several layer windows at once (one report per window, in order):
    the unsteered unimodal passes are run once and shared."""
    from interp.curves import fit_following
    from interp.following import tfr_vfr
    from interp.uncertainty import dh_rel as relative_uncertainty

    if len(items) != len(pairs):
        raise PatchingError(f"need one candidate pair per item: {len(pairs)} != {len(items)}")
    if batch_size is not None and batch_size < 1:
        raise PatchingError(f"batch_size must be a positive number of items, got {batch_size}")
    run_alphas = [0.0] + [float(a) for a in alphas if float(a) != 0.0]
    n, step = len(items), batch_size or max(1, len(items))
    chunks = [(lo, min(n, lo + step)) for lo in range(0, n, step)]
    uni_labels: dict[str, list[Any]] = {"vision": [], "text": []}
    uni_entropy: dict[str, list[np.ndarray]] = {"vision": [], "text": []}
    conflicts = []
    for lo, hi in chunks:
        batches = vlm.passes(items[lo:hi], ("vision", "text", "conflict"))
        for name in ("vision", "text"):
            r = read_answer(vlm, batches[name], pairs[lo:hi])
            uni_labels[name] += r.labels(pairs[lo:hi])
            uni_entropy[name].append(r.entropy.cpu().numpy())
        conflicts.append(_with_prefix(batches["conflict"], pairs[lo:hi]))
    if correct_only:
        kept = [v == "vision" and t == "text" for v, t in zip(uni_labels["vision"], uni_labels["text"])]
    else:
        kept = [True] * n
    dh = np.asarray(relative_uncertainty(np.concatenate(uni_entropy["text"]), np.concatenate(uni_entropy["vision"])),
                    dtype=np.float64)
    kept_mask = torch.tensor(kept, dtype=torch.bool)
    used = [i for i in range(n) if kept[i]]
    reports = []
    for layers in windows:
        chosen = _layers(vlm, layers, conflicts[0])
        labels: list[list[Any]] = [[] for _ in run_alphas]
        diffs: list[list[Tensor]] = [[] for _ in run_alphas]
        for (lo, hi), conflict in zip(chunks, conflicts):
            plan = _steer_plan(vlm, conflict, direction, 0.0, chosen, where, copies=len(run_alphas),
                               alphas=run_alphas)
            z, _ = _trace(vlm, _tile(conflict.inputs, len(run_alphas)), plan)
            steered = readout(z, pairs[lo:hi])
            flat, m = steered.labels(pairs[lo:hi]), hi - lo
            for c in range(len(run_alphas)):
                labels[c] += flat[c * m:(c + 1) * m]
                diffs[c].append(steered.logit_diff[c * m:(c + 1) * m].cpu())
        rows = []
        for c, alpha in enumerate(run_alphas):
            ratios = tfr_vfr(labels[c][i] for i in used)
            follow = [i for i in used if labels[c][i] in ("text", "vision")]
            curve = fit_following(dh[follow], np.array([labels[c][i] == "text" for i in follow], dtype=bool),
                                  n_boot=n_boot, seed=seed)
            kept_diffs = torch.cat(diffs[c])[kept_mask]
            mean_diff = float(kept_diffs.mean()) if len(kept_diffs) else float("nan")
            rows.append(SteeringRow(alpha, tuple(labels[c]), ratios, curve, mean_diff))
        rows.sort(key=lambda r: r.alpha)
        reports.append(SteeringReport(chosen, where if isinstance(where, str) else "explicit", n, tuple(kept),
                                      tuple(float(x) for x in dh), tuple(rows)))
    return reports
