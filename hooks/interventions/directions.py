"""Steering directions (MC², METHOD §4): instructions, mean differences, an optimised bound.

A per-layer direction is the mean difference of the `resid_post` states at the answer
position under a "follow the text" and a "follow the image" instruction (`with_instruction`
places it; after the question by default), `mean_difference` / `instruction_direction`; or,
with `positions=K`, one vector per each of the last K prompt positions, matched from the end.
`optimize_direction` fits the single vector that most raises the text answer at one layer:
a bound on what any additive direction of that size can do there. `hooks.interventions.steering`
adds a direction to the residual stream.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from hooks.interventions.groups import PositionSpec, positions
from hooks.interventions.readouts import readout
from hooks.interventions.trace import PatchingError, _index, _layers, _Plan, _trace, _with_prefix
from hooks.prompts import PassBatch, PromptItem
from hooks.taps import accepts_logits_to_keep, check_required_inputs
from interp.candidates import CandidatePair
from interp.errors import CaseError

if TYPE_CHECKING:
    from hooks.loading import VLM

__all__ = [
    "TEXT_INSTRUCTION",
    "IMAGE_INSTRUCTION",
    "INSTRUCTION_PLACEMENTS",
    "DEFAULT_PLACEMENT",
    "SteeringDirection",
    "OptimizedDirection",
    "with_instruction",
    "mean_difference",
    "instruction_direction",
    "optimize_direction",
]

TEXT_INSTRUCTION = "use the text to answer ."
IMAGE_INSTRUCTION = "use the image to answer ."
"""Default steering instructions **[ours]**: every word is one token of both the tiny models'
vocabulary (`hooks.tiny.TINY_WORDS`) and the trained model's (`data/tiny_vlm`)."""


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
