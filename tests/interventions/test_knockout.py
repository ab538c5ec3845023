"""Attention knockout with sdpa and eager attention: the identity when nothing is blocked, and a
blocked context cannot change the answer."""

from __future__ import annotations

import pytest

import hooks.interventions as P
import hooks.interventions.attention as attention_module
from hooks.loading import load_vlm
from hooks.prompts import PromptItem
from hooks.tiny import tiny_model


@pytest.fixture(params=["sdpa", "eager"])
def attention(request, vlm):
    before = P.attention_implementation(vlm)
    try:
        vlm.model.set_attn_implementation(request.param)
    except ValueError as err:  # Gemma 2 (PaliGemma 2) has no sdpa attention
        pytest.skip(str(err)[:80])
    assert P.attention_implementation(vlm) == request.param
    yield request.param
    vlm.model.set_attn_implementation(before)


def test_knockout_of_an_empty_span_is_the_identity(vlm, attention, cases, ref):
    pairs = cases.pairs(vlm)
    padded = cases.conflict(vlm, [cases.TARGET[0], PromptItem(cases.QUESTION, "It is red .", cases.image(cases.GREEN))])
    assert any(g.n_pad for g in padded.geometry)
    single = cases.conflict(vlm, cases.TARGET[:1])  # no padding: sdpa gets no mask and the causal one is built
    for batch, rows in ((padded, pairs), (single, pairs[:1])):
        result = P.knockout(vlm, batch, rows, queries="all", keys=[[]] * len(batch), keep_logits=True)
        assert (result.intervened.logits - ref.plain(vlm, batch.inputs)).abs().max().item() <= 1e-6


def _all_but_context(batch):
    return [sorted(set(a) - set(c)) for a, c in zip(P.positions(batch, "all"), P.positions(batch, "context"))]


def test_knocked_out_context_cannot_change_the_answer(vlm, attention, cases):
    """With every other position blocked from the context in every layer, two contexts of the same
    length must give the same answer distribution; without the knockout they do not."""
    pairs = cases.pairs(vlm)
    a = cases.conflict(vlm, [PromptItem(cases.QUESTION, "The circle is blue .", cases.image(cases.RED))] * 2)
    b = cases.conflict(vlm, [PromptItem(cases.QUESTION, "The circle is green .", cases.image(cases.RED)),
                        PromptItem(cases.QUESTION, "It is a green .", cases.image(cases.RED))])
    ka = P.knockout(vlm, a, pairs, queries=_all_but_context(a), keys="context", keep_logits=True)
    kb = P.knockout(vlm, b, pairs, queries=_all_but_context(b), keys="context", keep_logits=True)
    assert (ka.clean.logits - kb.clean.logits).abs().max().item() > 1e-3
    assert (ka.intervened.logits - kb.intervened.logits).abs().max().item() <= 1e-5
    assert (ka.intervened.logits - ka.clean.logits).abs().max().item() > 1e-3


def test_knockout_gives_the_same_result_with_eager_and_sdpa(vlm, cases):
    pairs = cases.pairs(vlm)
    batch = cases.conflict(vlm, [cases.TARGET[0], PromptItem(cases.QUESTION, "It is red .", cases.image(cases.GREEN))])
    before = P.attention_implementation(vlm)
    out = {}
    try:
        for impl in ("eager", "sdpa"):
            try:
                vlm.model.set_attn_implementation(impl)
            except ValueError:
                pytest.skip(f"{vlm.adapter.family} has no {impl} attention")
            out[impl] = P.knockout(vlm, batch, pairs, queries="after:context", keys="context", layers=[1, 2],
                                   keep_logits=True)
    finally:
        vlm.model.set_attn_implementation(before)
    assert (out["eager"].intervened.logits - out["sdpa"].intervened.logits).abs().max().item() <= 1e-5
    assert (out["eager"].intervened.logits - out["eager"].clean.logits).abs().max().item() > 1e-4


def test_knockout_refuses_other_attention_implementations(monkeypatch, cases):
    vlm = load_vlm(tiny_model("llava"))
    monkeypatch.setattr(attention_module, "attention_implementation", lambda _: "flash_attention_2")
    with pytest.raises(P.PatchingError, match="set_attn_implementation"):
        P.knockout(vlm, cases.conflict(vlm, cases.TARGET), cases.pairs(vlm))
