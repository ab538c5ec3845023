"""Free generation through nnsight with the logit lens at every generated step (METHOD §2).

`generate(vlm, batch, ...)` decodes greedily (or samples) from a left-padded `PassBatch`. Every
step is one `hooks.taps.lens` trace over the prompt plus the tokens generated so far, so each
step's lens (top-k ids and entropy at every layer, and the log-probabilities of requested candidate ids)
is read at the position that predicts the step's token, and the step's token is the model's own
last-position argmax (or a sample from its softmax).

**[ours]** conventions:

- No key/value cache: each step recomputes the whole sequence (`hooks.prompts.append_tokens`
  re-left-pads the batch), the cost of having the lens at every position for free; the
  generated tokens equal `model.generate(do_sample=False)`'s, batched or not
  (tests/test_generate.py, four families).
- A row stops at an end-of-sequence id (the model's generation config, else the tokenizer's),
  when its decoded text contains a stop string (the text is cut before the stop string; the
  tokens are kept), or after `max_new_tokens`. A finished row keeps being fed its end token so
  the batch stays rectangular; what it generates after stopping is discarded.
- Sampling: `temperature` scales the logits, `top_k` (0: off) keeps the k largest, a seeded
  `torch.Generator` draws the token, so a seed gives the same text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from hooks.prompts import PassBatch, append_tokens
from hooks.taps import lens

VLM = Any
"""A `hooks.loading.VLM` (not imported: loading sits above this module's imports)."""

__all__ = ["Generation", "generate", "end_token_ids"]


@dataclass
class Generation:
    """What `generate` returns for a batch of B rows over S steps (S = the longest row).

    tokens[b]: the ids row b generated (up to and including its end token; stop-string rows keep
    the tokens that produced the stop string). text[b]: their decoding, cut before a stop string.
    stop[b]: "eos", "stop_string" or "max_new_tokens".
    step_top_ids: (B, S, layers, k) lens top-k at every step; step_entropy: (B, S, layers), nats;
    step_candidate_log_probs: (B, S, layers, n_cand) lens log-probabilities of `candidate_ids`, or
    None. Steps after a row stopped are padding (top id -1, entropy NaN).
    """

    tokens: list[list[int]]
    text: list[str]
    stop: list[str]
    step_top_ids: Int[Tensor, "batch step layer k"]
    step_entropy: Float[Tensor, "batch step layer"]
    step_candidate_log_probs: Float[Tensor, "batch step layer n_cand"] | None = None


def end_token_ids(vlm: VLM) -> set[int]:
    """The end-of-sequence ids: the generation config's, else the tokenizer's."""
    cfg = getattr(vlm.model, "generation_config", None)
    eos = getattr(cfg, "eos_token_id", None) if cfg is not None else None
    if eos is None:
        eos = getattr(vlm.tokenizer, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def _choose(logits: Float[Tensor, "batch vocab"], do_sample: bool, temperature: float, top_k: int,
            generator: torch.Generator | None) -> Int[Tensor, " batch"]:
    if not do_sample:
        return logits.argmax(dim=-1)
    z = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(z, min(top_k, z.shape[-1]), dim=-1).values[:, -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    probs = torch.softmax(z, dim=-1).cpu()
    return torch.multinomial(probs, 1, generator=generator).flatten().to(logits.device)


def _check(max_new_tokens: int, temperature: float, top_k: int) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1; got {max_new_tokens!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature!r}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0: off); got {top_k!r}")


def _stop_cut(text: str, stop_strings: Sequence[str]) -> int | None:
    cuts = [text.find(s) for s in stop_strings if s and s in text]
    return min(cuts) if cuts else None


def generate(
    vlm: VLM,
    batch: PassBatch,
    *,
    max_new_tokens: int = 16,
    stop_strings: Sequence[str] = (),
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    lens_top_k: int = 1,
    candidate_ids: Sequence[int] | None = None,
) -> Generation:
    """Generate up to `max_new_tokens` per row of `batch` (on the model's device), with the lens
    at every step. Greedy unless `do_sample`."""
    _check(max_new_tokens, temperature, top_k)
    eos = end_token_ids(vlm)
    B = len(batch)
    generator = torch.Generator().manual_seed(seed) if do_sample else None
    tokens: list[list[int]] = [[] for _ in range(B)]
    stop: list[str | None] = [None] * B
    cut: list[int | None] = [None] * B
    tops, ents, cands = [], [], []
    current = batch
    for step in range(max_new_tokens):
        res = lens(vlm, current.inputs, keep_logits=False, top_k=lens_top_k, candidate_ids=candidate_ids)
        nxt = _choose(res.model_logits, do_sample, temperature, top_k, generator).tolist()
        live = torch.tensor([s is None for s in stop])
        tops.append(torch.where(live[:, None, None], res.top_ids.cpu(), torch.full_like(res.top_ids.cpu(), -1)))
        ents.append(torch.where(live[:, None], res.entropy.cpu(), torch.full_like(res.entropy.cpu(), float("nan"))))
        if res.candidate_logits is not None:
            cands.append(res.candidate_log_probs().cpu())
        feed = []
        for b in range(B):
            if stop[b] is None:
                tokens[b].append(int(nxt[b]))
                text = vlm.tokenizer.decode(tokens[b], skip_special_tokens=True)
                if int(nxt[b]) in eos:
                    stop[b] = "eos"
                elif (c := _stop_cut(text, stop_strings)) is not None:
                    stop[b], cut[b] = "stop_string", c
            feed.append(tokens[b][-1])
        if all(s is not None for s in stop) or step == max_new_tokens - 1:
            break
        current = append_tokens(current.to("cpu"), [[t] for t in feed]).to(vlm.device)
    texts = []
    for b in range(B):
        text = vlm.tokenizer.decode(tokens[b], skip_special_tokens=True)
        texts.append(text[:cut[b]] if cut[b] is not None else text)
    return Generation(
        tokens=tokens, text=texts, stop=[s or "max_new_tokens" for s in stop],
        step_top_ids=torch.stack(tops, dim=1), step_entropy=torch.stack(ents, dim=1),
        step_candidate_log_probs=torch.stack(cands, dim=1) if cands else None,
    )
