"""Answer words -> the token ids that stand for them at the answer position (METHOD §1.5).

An answer is a word (plus synonyms). Its **first tokens** are the first token ids of its
spelling variants: the word as given, lower-cased and capitalised, each with and without a
leading space **[ours]**. A variant whose tokens include the tokenizer's unknown token is
dropped (it would match every unknown word).

When the text answer and the vision answer cannot be told apart by their first token, they
are compared where their token sequences first differ **[ours]**:

- if their *primary* spellings (the word as given, no leading space) start with different
  tokens, first tokens that both answers share through other variants are dropped from both
  sets (they would be ambiguous) and no prefix is needed;
- if the primary spellings share their first token(s), the common prefix is teacher-forced
  (`CandidatePair.prefix`, appended to the prompt by `hooks.prompts.append_tokens`) and the
  two answers are told apart by the token that follows it.

Two answers with identical primary token sequences, or an answer that tokenises to nothing,
raise `CaseError`. Tokenizers are duck-typed: anything with
`encode(text, add_special_tokens=False)` (a Hugging Face tokenizer) works.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Literal

from interp.errors import CaseError

__all__ = ["AnswerTokens", "CandidatePair", "spelling_variants", "answer_tokens", "candidate_pair"]

LayerClass = Literal["text", "vision", "irrelevant"]


def spelling_variants(word: str) -> list[str]:
    """`word`, lower-cased and capitalised, each with and without a leading space; no duplicates."""
    word = word.strip()
    forms = [word, word.lower(), word[:1].upper() + word[1:].lower()]
    out: list[str] = []
    for form in forms:
        for variant in (form, " " + form):
            if variant not in out:
                out.append(variant)
    return out


def _encode(tokenizer: Any, text: str) -> tuple[int, ...]:
    if hasattr(tokenizer, "encode"):
        ids = tokenizer.encode(text, add_special_tokens=False)
    else:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return tuple(int(i) for i in ids)


@dataclass(frozen=True)
class AnswerTokens:
    """One answer's token sequences over its variants (and synonyms), and their first tokens."""

    answer: str
    primary: tuple[int, ...]
    sequences: tuple[tuple[int, ...], ...]

    @property
    def first_ids(self) -> frozenset[int]:
        return frozenset(seq[0] for seq in self.sequences)


def answer_tokens(tokenizer: Any, answer: str, synonyms: Iterable[str] = ()) -> AnswerTokens:
    """Tokenise `answer` and its synonyms in every spelling variant.

    Raises `CaseError` when the answer itself has no variant that tokenises to known tokens.
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    words = [answer, *[s for s in synonyms if s and s.strip().lower() != answer.strip().lower()]]
    sequences: list[tuple[int, ...]] = []
    primary: tuple[int, ...] | None = None
    for n, word in enumerate(words):
        for variant in spelling_variants(word):
            seq = _encode(tokenizer, variant)
            if not seq or (unk is not None and unk in seq):
                continue
            if n == 0 and primary is None:
                primary = seq
            if seq not in sequences:
                sequences.append(seq)
    if not answer.strip() or primary is None:
        raise CaseError(
            f"answer {answer!r} tokenises to nothing usable (empty, or only unknown tokens) with this tokenizer; "
            "use a word in the model's vocabulary")
    return AnswerTokens(answer, primary, tuple(sequences))


@dataclass(frozen=True)
class CandidatePair:
    """The text and vision answers of one case, as token ids at the (possibly shifted) answer position.

    prefix: token ids to teacher-force after the prompt before reading the lens (empty when
        the first tokens already tell the answers apart).
    text_ids / vision_ids: the ids that count as the text / vision answer at that position.
    """

    text: AnswerTokens
    vision: AnswerTokens
    prefix: tuple[int, ...]
    text_ids: frozenset[int]
    vision_ids: frozenset[int]

    @property
    def divergence_position(self) -> int:
        """Index, in the answer's tokens, of the token that separates the two answers."""
        return len(self.prefix)

    def classify(self, token_id: int) -> LayerClass:
        """"text", "vision" or "irrelevant" for a top-1 token id."""
        if token_id in self.text_ids:
            return "text"
        if token_id in self.vision_ids:
            return "vision"
        return "irrelevant"

    @property
    def ids(self) -> tuple[int, ...]:
        """All candidate ids (text first), sorted within each side."""
        return tuple(sorted(self.text_ids)) + tuple(sorted(self.vision_ids))


def candidate_pair(
    tokenizer: Any,
    text_answer: str,
    vision_answer: str,
    text_synonyms: Iterable[str] = (),
    vision_synonyms: Iterable[str] = (),
) -> CandidatePair:
    """Token-id sets for the text and vision answers of a case (see the module docstring)."""
    text = answer_tokens(tokenizer, text_answer, text_synonyms)
    vision = answer_tokens(tokenizer, vision_answer, vision_synonyms)
    if text.primary == vision.primary:
        raise CaseError(
            f"the text answer {text_answer!r} and the vision answer {vision_answer!r} have identical tokens "
            f"{list(text.primary)}; a conflict case needs two answers the model can tell apart")
    t_first, v_first = text.first_ids, vision.first_ids
    if text.primary[0] != vision.primary[0]:
        shared = t_first & v_first
        return CandidatePair(text, vision, (), t_first - shared, v_first - shared)
    k = 0
    while k < min(len(text.primary), len(vision.primary)) and text.primary[k] == vision.primary[k]:
        k += 1
    if k == min(len(text.primary), len(vision.primary)):
        longer, shorter = (text_answer, vision_answer) if len(text.primary) > len(vision.primary) else (
            vision_answer, text_answer)
        raise CaseError(
            f"the tokens of {shorter!r} are a prefix of those of {longer!r}; no single position tells them apart")
    return CandidatePair(text, vision, text.primary[:k], frozenset({text.primary[k]}), frozenset({vision.primary[k]}))
