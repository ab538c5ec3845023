"""Answer words -> candidate token ids, with hand-built tokenizers whose outputs we know."""

from __future__ import annotations

import pytest

from interp.candidates import answer_tokens, candidate_pair, spelling_variants
from interp.errors import CaseError


class TableTokenizer:
    """encode() from a fixed table; anything else is the unknown token 0."""

    unk_token_id = 0

    def __init__(self, table: dict[str, list[int]]):
        self.table = table

    def encode(self, text, add_special_tokens=False):
        return list(self.table.get(text, [0]))


TOK = TableTokenizer({
    "red": [5], " red": [7], "Red": [6], " Red": [8],
    "blue": [9], " blue": [13], "Blue": [14],
    "purple": [10, 11], " purple": [20, 11],
    "pink": [10, 12], " pink": [21, 12],
    "rose": [10, 30], "ro": [10], "R": [6], "ruby": [6, 40],
    "crimson": [50],
})


def test_spelling_variants():
    assert spelling_variants("red") == ["red", " red", "Red", " Red"]
    assert spelling_variants("Blue") == ["Blue", " Blue", "blue", " blue"]


def test_first_ids_cover_variants_and_synonyms_and_skip_unknown():
    tokens = answer_tokens(TOK, "red", synonyms=["crimson", "scarlet"])  # "scarlet" is unknown
    assert tokens.primary == (5,)
    assert tokens.first_ids == {5, 6, 7, 8, 50}


def test_disjoint_first_tokens_need_no_prefix():
    pair = candidate_pair(TOK, "red", "blue")
    assert pair.prefix == ()
    assert pair.text_ids == {5, 6, 7, 8} and pair.vision_ids == {9, 13, 14}
    assert pair.classify(7) == "text" and pair.classify(14) == "vision" and pair.classify(99) == "irrelevant"


def test_shared_first_token_teacher_forces_the_common_prefix():
    pair = candidate_pair(TOK, "purple", "pink")
    assert pair.prefix == (10,)
    assert pair.divergence_position == 1
    assert pair.text_ids == {11} and pair.vision_ids == {12}


def test_ambiguous_variant_ids_are_dropped_when_primaries_differ():
    # "ruby" (synonym of the vision answer) starts with 6, the id of "Red": 6 is ambiguous.
    pair = candidate_pair(TOK, "red", "blue", vision_synonyms=["ruby"])
    assert pair.prefix == ()
    assert 6 not in pair.text_ids and 6 not in pair.vision_ids
    assert pair.text_ids == {5, 7, 8}


def test_identical_answers_are_refused():
    with pytest.raises(CaseError, match="identical"):
        candidate_pair(TOK, "red", "Red ".strip().lower())


def test_prefix_answers_are_refused():
    with pytest.raises(CaseError, match="prefix"):
        candidate_pair(TOK, "rose", "ro")


def test_answer_that_tokenises_to_nothing_is_refused():
    with pytest.raises(CaseError, match="tokenises to nothing"):
        candidate_pair(TOK, "scarlet", "blue")
    with pytest.raises(CaseError, match="tokenises to nothing"):
        answer_tokens(TOK, "   ")


def test_real_word_level_tokenizer():
    from hooks.tiny import tiny_model

    _, processor = tiny_model("llava")
    tok = processor.tokenizer
    pair = candidate_pair(tok, "blue", "red")
    assert pair.text_ids == {tok.convert_tokens_to_ids("blue")}
    assert pair.vision_ids == {tok.convert_tokens_to_ids("red")}
