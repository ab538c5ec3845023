"""The three passes of a conflict case, built through the model's own processor and chat template.

For a case (image I, text context T, question Q) the model is run three times (METHOD §1.1):

- ``vision``: Q with I, no context;
- ``text``: T + Q with no image at all (no pixel values, no image tokens);
- ``conflict``: T + Q with I.

The image comes first in the user turn, then the context, then the question (an item's optional
`preamble`, e.g. an instruction naming the modality to answer from, comes before all three; a
template-less processor such as PaliGemma's puts its image tokens first anyway); the prompt ends
with the chat template's generation prompt, so the last prompt token is the position that
predicts the first answer token. Batches are left-padded, so that position is `-1` in every row.

Each row also gets a `Geometry`: the positions of the image tokens, the context span, the
question span and the answer position, in padded coordinates. Spans are found by aligning the
tokens of the rendered prompt's text part (everything from the context on, which image-token
expansion never touches) with the processor's ids; a mismatch raises `PromptGeometryError`
rather than guessing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from hooks.adapters import Adapter
from interp.errors import ModalityLensError
from interp.vocabulary import PASSES

__all__ = [
    "PASSES",
    "PromptItem",
    "Geometry",
    "PassBatch",
    "PromptGeometryError",
    "render_prompt",
    "build_pass",
    "build_passes",
    "append_tokens",
]

POSITION_GROUPS: tuple[str, ...] = ("image", "context", "question", "answer")


class PromptGeometryError(ModalityLensError):
    """The prompt's text could not be located in the processor's token ids."""


@dataclass(frozen=True)
class PromptItem:
    """One case as the model sees it: `question` includes any answer-format instruction;
    `preamble` is text put at the start of the user turn, before the image and the context
    (and kept in every pass)."""

    question: str
    context: str | None = None
    image: Any = None  # a PIL image
    preamble: str | None = None


@dataclass(frozen=True)
class Geometry:
    """Token coordinates of one row of a left-padded batch (all indices into the padded row).

    Spans are half-open `[start, end)`. `image_positions` lists every position whose id is the
    model's image token (after the processor's expansion); wrapper tokens such as
    `<start_of_image>` or `[IMG_BREAK]` are not included.
    """

    length: int
    n_pad: int
    image_positions: tuple[int, ...]
    context_span: tuple[int, int] | None
    question_span: tuple[int, int]
    answer_position: int

    @property
    def image_span(self) -> tuple[int, int] | None:
        """`[first image token, last image token + 1)`, or None for a pass without an image."""
        if not self.image_positions:
            return None
        return self.image_positions[0], self.image_positions[-1] + 1

    def positions(self, group: str) -> list[int]:
        """Positions of a named group: "image", "context", "question" or "answer"."""
        if group == "image":
            return list(self.image_positions)
        if group == "context":
            return list(range(*self.context_span)) if self.context_span else []
        if group == "question":
            return list(range(*self.question_span))
        if group == "answer":
            return [self.answer_position]
        raise ValueError(f"unknown position group {group!r}; choose one of {', '.join(POSITION_GROUPS)}")

    def shifted(self, by: int, length: int) -> "Geometry":
        """The same coordinates after `by` more tokens of left padding and a new row length."""
        move = lambda span: (span[0] + by, span[1] + by) if span else None  # noqa: E731
        return Geometry(length, self.n_pad + by, tuple(p + by for p in self.image_positions),
                        move(self.context_span), move(self.question_span), length - 1)


@dataclass
class PassBatch:
    """A batch of one pass: the model inputs, each row's geometry and its rendered prompt."""

    name: str
    inputs: dict[str, Tensor]
    geometry: list[Geometry]
    prompts: list[str]
    has_image: bool = field(default=False)

    def __len__(self) -> int:
        return len(self.geometry)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "PassBatch":
        moved = {}
        for key, value in self.inputs.items():
            if isinstance(value, Tensor):
                value = value.to(device)
                if dtype is not None and value.is_floating_point():
                    value = value.to(dtype)
            moved[key] = value
        return PassBatch(self.name, moved, self.geometry, self.prompts, self.has_image)


def _user_text(context: str | None, question: str) -> str:
    return f"{context} {question}" if context else question


def render_prompt(processor: Any, *, question: str, context: str | None = None, with_image: bool = False,
                  preamble: str | None = None) -> str:
    """The prompt string for one pass, through the processor's chat template when it has one.

    The user turn is `preamble`, the image, `context`, `question`, in that order. Without a
    chat template (PaliGemma) the user text itself is the prompt, and the processor adds the
    image tokens (before all of it) and BOS.
    """
    text = _user_text(context, question)
    lead = f"{preamble.strip()} " if preamble and preamble.strip() else ""
    if not getattr(processor, "chat_template", None):
        return lead + text
    content = ([{"type": "text", "text": lead}] if lead else []) + ([{"type": "image"}] if with_image else []) + \
        [{"type": "text", "text": text}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)


def _tokenizer(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


def _encode(processor: Any, adapter: Adapter, prompts: list[str], images: list[Any] | None) -> dict[str, Tensor]:
    tok = _tokenizer(processor)
    tok.padding_side = "left"
    if images is not None:
        out = processor(text=prompts, images=[[im] for im in images], return_tensors="pt", padding=True)
    elif adapter.text_only_format is not None:
        bos = tok.bos_token or ""
        texts = [adapter.text_only_format.format(bos=bos, text=p) for p in prompts]
        out = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        out["token_type_ids"] = torch.zeros_like(out["input_ids"])
    else:
        out = processor(text=prompts, return_tensors="pt", padding=True)
    out = dict(out)
    out.pop("labels", None)
    return out


def _find_last(haystack: list[int], needle: list[int]) -> int:
    for start in range(len(haystack) - len(needle), -1, -1):
        if haystack[start:start + len(needle)] == needle:
            return start
    return -1


def _row_geometry(
    processor: Any, adapter: Adapter, prompt: str, item: PromptItem, context: str | None,
    ids: Int[Tensor, " seq"], mask: Int[Tensor, " seq"], image_token_id: int,
) -> Geometry:
    tok = _tokenizer(processor)
    text = prompt
    if adapter.text_only_format is not None and item.image is None and not getattr(processor, "chat_template", None):
        text = adapter.text_only_format.format(bos=tok.bos_token or "", text=prompt)
    q_start = text.rfind(item.question)
    if q_start < 0:
        raise PromptGeometryError(f"the question {item.question!r} does not appear verbatim in the rendered prompt")
    q_span_chars = (q_start, q_start + len(item.question))
    c_span_chars = None
    if context:
        c_start = text.rfind(context, 0, q_start)
        if c_start < 0:
            raise PromptGeometryError(f"the context {context!r} does not appear before the question in the prompt")
        c_span_chars = (c_start, c_start + len(context))
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets, tail_ids = enc["offset_mapping"], enc["input_ids"]

    def covering(span: tuple[int, int]) -> list[int]:
        return [k for k, (s, e) in enumerate(offsets) if e > s and s < span[1] and e > span[0]]

    q_tok = covering(q_span_chars)
    c_tok = covering(c_span_chars) if c_span_chars else []
    first = (c_tok or q_tok)[0]
    tail = tail_ids[first:]
    row = ids.tolist()
    n_pad = int((mask == 0).sum())
    start = _find_last(row[n_pad:], tail)
    if not q_tok or start < 0:
        raise PromptGeometryError(
            "the prompt's text tokens were not found in the processor's input ids (the tokenizer merges text "
            "across the image placeholder?); pass explicit positions instead")
    base = n_pad + start - first
    image_positions = tuple(int(p) for p in torch.nonzero(ids == image_token_id).flatten())
    return Geometry(
        length=len(row),
        n_pad=n_pad,
        image_positions=image_positions,
        context_span=(base + c_tok[0], base + c_tok[-1] + 1) if c_tok else None,
        question_span=(base + q_tok[0], base + q_tok[-1] + 1),
        answer_position=len(row) - 1,
    )


def build_pass(
    processor: Any, adapter: Adapter, image_token_id: int, items: Sequence[PromptItem], name: str,
) -> PassBatch:
    """Encode one pass ("vision", "text" or "conflict") of `items` as a left-padded batch."""
    if name not in PASSES:
        raise ValueError(f"unknown pass {name!r}; choose one of {', '.join(PASSES)}")
    if not items:
        raise ValueError(f"no prompt items to build the {name} pass from; pass at least one PromptItem")
    with_image = name in ("vision", "conflict")
    with_context = name in ("text", "conflict")
    if with_image and any(it.image is None for it in items):
        raise ValueError(f"the {name} pass needs an image for every item")
    if with_context and any(not it.context for it in items):
        raise ValueError(f"the {name} pass needs a text context for every item")
    contexts = [it.context if with_context else None for it in items]
    prompts = [render_prompt(processor, question=it.question, context=c, with_image=with_image, preamble=it.preamble)
               for it, c in zip(items, contexts)]
    inputs = _encode(processor, adapter, prompts, [it.image for it in items] if with_image else None)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    geometry = [
        _row_geometry(processor, adapter, p, PromptItem(it.question, c, it.image if with_image else None), c,
                      ids[b], mask[b], image_token_id)
        for b, (p, it, c) in enumerate(zip(prompts, items, contexts))
    ]
    return PassBatch(name, inputs, geometry, prompts, has_image=with_image)


def build_passes(
    processor: Any, adapter: Adapter, image_token_id: int, items: Sequence[PromptItem],
    passes: Iterable[str] = PASSES,
) -> dict[str, PassBatch]:
    """All requested passes of `items`, each a left-padded batch."""
    return {name: build_pass(processor, adapter, image_token_id, items, name) for name in passes}


_TEXT_TYPE_KEYS = ("token_type_ids", "mm_token_type_ids")


def append_tokens(batch: PassBatch, tokens: Sequence[Sequence[int]]) -> PassBatch:
    """Teacher-force `tokens[b]` after row b's prompt and re-left-pad the batch.

    Per-token inputs are extended consistently: attention 1, token types 0 (text), Mllama's
    `cross_attention_mask` repeats the row's last entry. The answer position becomes the last
    appended token, so the lens reads the next-token distribution after the forced prefix.
    """
    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    B, L = ids.shape
    if len(tokens) != B:
        raise ValueError(f"need one token list per row: got {len(tokens)} for a batch of {B}")
    per_token = {k: v for k, v in batch.inputs.items() if isinstance(v, Tensor) and v.dim() >= 2 and v.shape[:2] == (B, L)}
    rows: dict[str, list[Tensor]] = {k: [] for k in per_token}
    for b in range(B):
        n_pad = batch.geometry[b].n_pad
        extra = torch.tensor(list(tokens[b]), dtype=ids.dtype)
        for key, value in per_token.items():
            kept = value[b, n_pad:]
            if key == "input_ids":
                add = extra
            elif key == "attention_mask":
                add = torch.ones(len(extra), dtype=value.dtype)
            elif key in _TEXT_TYPE_KEYS:
                add = torch.zeros(len(extra), dtype=value.dtype)
            else:
                add = kept[-1:].expand(len(extra), *kept.shape[1:])
            rows[key].append(torch.cat([kept, add]))
    new_len = max(len(r) for r in rows["input_ids"])
    pad_id = int(ids[0, 0]) if batch.geometry[0].n_pad else 0
    out = dict(batch.inputs)
    for key, seqs in rows.items():
        fill = pad_id if key == "input_ids" else 0
        padded = []
        for seq in seqs:
            pad = seq.new_full((new_len - len(seq), *seq.shape[1:]), fill)
            padded.append(torch.cat([pad, seq]))
        out[key] = torch.stack(padded)
    geometry = []
    for b, g in enumerate(batch.geometry):
        kept_len = L - g.n_pad + len(tokens[b])
        geometry.append(g.shifted(new_len - kept_len - g.n_pad, new_len))
    return PassBatch(batch.name, out, geometry, batch.prompts, batch.has_image)
