"""Attention mass per head and span (hooks.interventions.attention_mass): sums to 1, eager and recomputed
agree, both equal a hand reduction of HF's own `output_attentions` (a plain forward, no nnsight), and
batching with left padding changes nothing."""

from __future__ import annotations


import pytest
import torch

import hooks.interventions as P
from hooks.interventions.attention_mass import _recompute
from tests.conftest import HEAD_ITEMS, cached_vlm

FAMILIES = ("llava", "qwen2_5_vl", "qwen3_vl", "gemma3", "paligemma", "mistral3", "mllama")
ITEMS = HEAD_ITEMS


_vlm = cached_vlm


def _with(vlm, impl):
    before = P.attention_implementation(vlm)
    vlm.model.set_attn_implementation(impl)
    return before


def _reference(vlm, batch):
    """(batch, query set, layer, head, span) from HF's output_attentions under eager, reduced by hand
    with the geometry's positions (span order image, context, question, rest)."""
    vlm.adapter.reset_state(vlm.model)
    with torch.no_grad():
        attentions = vlm.model(**batch.inputs, output_attentions=True).attentions
    per_layer = [a for a in attentions if a is not None and a.shape[-1] == a.shape[-2]]
    out = torch.zeros(len(batch), 2, len(per_layer), per_layer[0].shape[1], 4)
    for b, g in enumerate(batch.geometry):
        spans = [g.positions("image"), g.positions("context"), g.positions("question")]
        taken = set().union(*spans)
        spans.append([p for p in range(g.n_pad, g.length) if p not in taken])
        for q, rows in enumerate(([g.answer_position], g.positions("question"))):
            for l, a in enumerate(per_layer):
                for s, keys in enumerate(spans):
                    out[b, q, l, :, s] = a[b][:, rows][:, :, keys].sum(-1).mean(-1) if keys else 0.0
    return out


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("pass_name", ["conflict", "text"])
def test_eager_and_recomputed_agree_with_hfs_attentions_and_sum_to_one(family, pass_name):
    vlm = _vlm(family)
    batch = vlm.passes(ITEMS, (pass_name,))[pass_name]
    before = _with(vlm, "sdpa")
    try:
        recomputed = P.attention_mass(vlm, batch)
        _with(vlm, "eager")
        eager = P.attention_mass(vlm, batch)
        reference = _reference(vlm, batch)
    finally:
        vlm.model.set_attn_implementation(before)
    assert (recomputed.method, eager.method) == ("recomputed", "eager")
    assert recomputed.layers == eager.layers
    assert (recomputed.mass - eager.mass).abs().max().item() <= 1e-5
    assert (eager.mass - reference).abs().max().item() <= 1e-5
    assert (eager.mass.sum(-1) - 1).abs().max().item() <= 1e-5
    if family == "gemma3":  # its tiny layers all attend within a sliding window of 8 tokens
        far = [b for b, g in enumerate(batch.geometry) if g.answer_position - 8 >= max(g.image_positions or [-1])]
        assert far and eager.of("answer", "image")[far].abs().max().item() == 0.0
    elif pass_name == "conflict":  # every span is looked at by some head
        assert (eager.of("answer", "image").amax() > 1e-3) and (eager.of("answer", "context").amax() > 1e-3)
    else:
        assert eager.of("answer", "image").abs().max().item() == 0.0


def test_gemma2s_soft_capped_eager_attention_matches_hf():
    vlm = _vlm("paligemma2")  # Gemma 2 has no sdpa attention in transformers 5 and soft-caps its scores
    batch = vlm.passes(ITEMS, ("conflict",))["conflict"]
    before = _with(vlm, "eager")
    try:
        mass = P.attention_mass(vlm, batch)
        assert (mass.mass - _reference(vlm, batch)).abs().max().item() <= 1e-5
        # the recomputation by hand: 2 query heads sharing 1 key head, scores past the cap, no mask (causal)
        q, k = torch.randn(1, 2, 3, 4) * 20, torch.randn(1, 1, 3, 4) * 20
        probs = _recompute(q, k, None, 0.5, 50.0)
        scores = torch.stack([q[0, h] @ k[0, 0].T * 0.5 for h in range(2)])[None]
        capped = (torch.tanh(scores / 50.0) * 50.0).masked_fill(~torch.ones(3, 3, dtype=torch.bool).tril(), -1e30)
        assert scores.abs().max() > 50.0
        assert torch.allclose(probs, capped.softmax(-1), atol=1e-6)
    finally:
        vlm.model.set_attn_implementation(before)


def test_batched_with_left_padding_equals_one_case_at_a_time():
    vlm = _vlm("qwen2_5_vl")
    batch = vlm.passes(ITEMS, ("conflict",))["conflict"]
    assert len({g.length - g.n_pad for g in batch.geometry}) > 1
    together = P.attention_mass(vlm, batch)
    for b, item in enumerate(ITEMS):
        alone = P.attention_mass(vlm, vlm.passes([item], ("conflict",))["conflict"])
        assert torch.allclose(together.mass[b], alone.mass[0], atol=1e-5)


def test_spans_partition_the_prompt_by_its_geometry():
    vlm = _vlm("llava")
    batch = vlm.passes(ITEMS, ("conflict",))["conflict"]
    members = P.span_membership(batch)
    for b, g in enumerate(batch.geometry):
        assert members[b, :g.n_pad].sum() == 0
        assert torch.equal(members[b, g.n_pad:].sum(-1), torch.ones(g.length - g.n_pad))
        assert members[b, :, 0].sum() == len(g.image_positions) == 16
        assert members[b, :, 1].sum() == g.context_span[1] - g.context_span[0]
        assert members[b, :, 2].sum() == g.question_span[1] - g.question_span[0]
    weights = P.query_weights(batch, ("question",))
    assert torch.allclose(weights.sum(-1), torch.ones(3, 1))


def test_bad_requests_name_the_fix():
    vlm = _vlm("llava")
    batch = vlm.passes(ITEMS[:1], ("conflict",))["conflict"]
    with pytest.raises(P.PatchingError, match="set_attn_implementation"):
        P.attention_mass(vlm, batch, method="eager")  # the model runs sdpa
    with pytest.raises(P.PatchingError, match="unknown query set"):
        P.attention_mass(vlm, batch, queries=("context",))
    with pytest.raises(P.PatchingError, match="unknown method"):
        P.attention_mass(vlm, batch, method="flash")
    with pytest.raises(P.PatchingError, match="out of range"):
        P.attention_mass(vlm, batch, layers=[7])


def test_mass_equals_transformer_lens_attention_patterns():
    """TransformerLens' own `hook_pattern` on its bridge (a deep copy, eager), reduced with the same spans."""
    from hooks.tl_backend import bridge_for

    vlm = _vlm("llava")
    bridge = bridge_for(vlm, mode="stock")
    batch = vlm.passes(ITEMS, ("conflict",))["conflict"]
    rest = dict(batch.inputs)
    ids = rest.pop("input_ids")
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(vlm.n_layers)]
    with torch.no_grad():
        _, cache = bridge.run_with_cache(ids, names_filter=lambda n: n in names, **rest)
    weights, members = P.query_weights(batch, P.QUERY_SETS), P.span_membership(batch)
    theirs = torch.stack([torch.einsum("bqt,bhtk,bks->bqhs", weights, cache[n].float(), members) for n in names], 2)
    ours = P.attention_mass(vlm, batch)
    assert (ours.mass - theirs).abs().max().item() <= 1e-4
