"""The model side of the perturbation study (METHOD §3, issue #20): confidence per lens layer.

`confidence_lens(vlm, items, pairs, pass_name)` runs one lens trace (`hooks.taps.lens`) over a
batch of prompts, whose images the caller has perturbed (`interp.datasets.perturb`), and
returns, at the answer position and for every lens layer (index 0 = the embedding, L = the
last layer, whose lens is the model's own distribution), the confidence measures of METHOD §3.1:

- ``p_answer``: probability of the image answer (the sum over its first-token ids),
  ``p_text``: of the text answer (both read after any teacher-forced common prefix);
- ``entropy`` (nats, full vocabulary), ``one_minus_max_p``, ``margin`` (``p_(1) - p_(2)``);
- ``nmlp``: ``-(1/k) sum_{i<=k} log p_(i)`` over the top k = 20 tokens, **higher = more
  confident** (as `interp.uncertainty.nmlp_confidence`, computed here from the lens's top-k
  logits and its log-normaliser, so no full-vocabulary tensor leaves the trace);
- ``classes``: per layer, "vision" / "text" / "irrelevant" (the lens's top-1 token,
  `interp.logit_lens`); the last layer's class is the model's answer.

``final_log_probs`` are the model's own next-token log-probabilities (for sampling answers).
With ``keep_log_probs=True`` the full per-layer log-probabilities come back too (for visual
contrastive decoding, `interp.calibration.vcd_scores`, per layer: a contrastive lens).
Everything is returned as numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int

from hooks.prompts import PromptItem, append_tokens
from interp.candidates import CandidatePair
from interp.logit_lens import trajectories
from interp.uncertainty import NMLP_TOP_K

if TYPE_CHECKING:
    from hooks.loading import VLM

__all__ = ["ConfidenceLens", "confidence_lens", "MEASURES"]

MEASURES = ("p_answer", "nmlp", "entropy", "one_minus_max_p", "margin")
"""The confidence measures of a row, as stored (entropy and 1 - max p: lower = more confident)."""


@dataclass
class ConfidenceLens:
    """Per-layer confidence of a batch at the answer position (axes: row, layer[, vocab])."""

    p_answer: Float[np.ndarray, "batch layer"]
    p_text: Float[np.ndarray, "batch layer"]
    entropy: Float[np.ndarray, "batch layer"]
    one_minus_max_p: Float[np.ndarray, "batch layer"]
    margin: Float[np.ndarray, "batch layer"]
    nmlp: Float[np.ndarray, "batch layer"]
    top1: Int[np.ndarray, "batch layer"]
    classes: list[tuple[str, ...]]
    final_log_probs: Float[np.ndarray, "batch vocab"]
    log_probs: Float[np.ndarray, "batch layer vocab"] | None = None

    def __len__(self) -> int:
        return len(self.classes)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy().astype(np.float64)


def confidence_lens(vlm: "VLM", items: Sequence[PromptItem], pairs: Sequence[CandidatePair], pass_name: str = "vision",
                    *, keep_log_probs: bool = False, k: int = NMLP_TOP_K) -> ConfidenceLens:
    """One lens trace of ``items`` in pass ``pass_name`` ("vision" or "conflict") -> per-layer confidence.

    ``pairs[b]`` is row b's candidate pair (`modality_lens.cases.case_pair`): its ids give
    ``p_answer`` (the vision ids) and ``p_text``, and its prefix is teacher-forced first. ``k``
    (NMLP's top k) is capped at the vocabulary size.
    """
    if len(items) != len(pairs):
        raise ValueError(f"{len(items)} prompts but {len(pairs)} candidate pairs; need one pair per prompt")
    if pass_name not in ("vision", "conflict"):
        raise ValueError(f"a perturbation changes the image, so the pass must have one: 'vision' or 'conflict', "
                         f"not {pass_name!r}")
    batch = vlm.passes(list(items), (pass_name,))[pass_name]
    if any(p.prefix for p in pairs):
        batch = append_tokens(batch, [p.prefix for p in pairs])
    top_k = max(2, min(int(k), vlm.vocab_size))
    ids = sorted({t for p in pairs for t in p.ids})
    result = vlm.lens(batch, keep_logits=keep_log_probs, candidate_ids=ids, top_k=top_k)
    trajs = trajectories(pairs, result)
    lse = result.logsumexp[..., None]
    top_logp = _numpy(result.top_logits - lse)  # (batch, layer, top_k), descending
    kk = min(int(k), top_logp.shape[-1])
    top_p = np.exp(top_logp[..., :2])
    log_probs = None
    if keep_log_probs:
        log_probs = _numpy(torch.log_softmax(result.logits.float(), dim=-1))
    return ConfidenceLens(
        p_answer=np.stack([t.p_vision for t in trajs]),
        p_text=np.stack([t.p_text for t in trajs]),
        entropy=_numpy(result.entropy),
        one_minus_max_p=-np.expm1(top_logp[..., 0]),
        margin=top_p[..., 0] - top_p[..., 1],
        nmlp=-top_logp[..., :kk].mean(axis=-1),
        top1=result.top1.detach().cpu().numpy(),
        classes=[t.classes for t in trajs],
        final_log_probs=_numpy(torch.log_softmax(result.model_logits.float(), dim=-1)),
        log_probs=log_probs,
    )
