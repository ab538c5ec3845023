"""What an intervention measures: the next-token distribution at the answer position.

The measured quantity is the one of the logit lens (METHOD §1.5) at the answer position:
`logit(text) - logit(vision)`, where the logit of an answer is the log-sum-exp of its
candidate ids' logits (`interp.logit_lens`), plus the log-probabilities of the candidates.
`kept_in_both` is the correct-in-both filter (METHOD §1.1, `interp.following.correct_in_both`)
applied to the readouts of the two unimodal passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from hooks.interventions.trace import _Plan, _trace, _with_prefix
from hooks.prompts import PassBatch
from interp.candidates import CandidatePair
from interp.errors import CaseError
from interp.following import correct_in_both
from interp.uncertainty import entropy as full_entropy

if TYPE_CHECKING:
    from hooks.loading import VLM

__all__ = ["AnswerReadout", "InterventionResult", "readout", "read_answer", "kept_in_both"]


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

    def answers(self, pairs: Sequence[CandidatePair]) -> list[Any]:
        """The answer word the top-1 token stands for, laid out as `labels`: the pair's text
        answer where the label is "text", its vision answer where "vision", else "" (which
        matches no candidate list), so the words can go through `interp.following`."""
        def word(pair: CandidatePair, label: str) -> str:
            return pair.text.answer if label == "text" else pair.vision.answer if label == "vision" else ""

        labels = self.labels(pairs)
        if self.top1.dim() == 1:
            return [word(pairs[r % len(pairs)], lab) for r, lab in enumerate(labels)]
        return [[word(pair, lab) for lab in row] for pair, row in zip(pairs, labels)]


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


def kept_in_both(vision: AnswerReadout, text: AnswerReadout, pairs: Sequence[CandidatePair]) -> list[bool]:
    """Per case, whether the vision-only pass (`vision`) gives the image's answer and the
    text-only pass (`text`) the text's (METHOD §1.1): `interp.following.correct_in_both` on
    the readouts' `answers`, one row per pair. For pairs whose two answers differ after
    `normalise_answer` (every conflict case) this is "vision labelled vision and text labelled
    text"; a pair whose answers normalise alike is no conflict and is dropped."""
    return list(correct_in_both(vision.answers(pairs), text.answers(pairs), [p.vision.answer for p in pairs],
                                [p.text.answer for p in pairs]).kept)


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
