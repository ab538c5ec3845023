"""Direct logit attribution (hooks.interventions.attribution): the terms sum to the model's own logit
difference (from a plain forward, no nnsight), agree with TransformerLens' decomposition, and are the
same batched with left padding as one case at a time."""

from __future__ import annotations


import pytest
import torch

import hooks.interventions as P
from hooks.loading import load_vlm
from hooks.tiny import tiny_model
from interp.candidates import candidate_pair
from interp.errors import UnsupportedModelError
from tests.conftest import HEAD_ANSWERS, HEAD_ITEMS, cached_vlm

# GQA everywhere (4 query heads, 2 key/value heads); gemma3 and paligemma2 have sandwich norms,
# paligemma2 soft-caps its logits, qwen3_vl has q/k norms and deepstack.
FAMILIES = ("llava", "qwen2_5_vl", "qwen3_vl", "gemma3", "paligemma2", "mistral3", "internvl", "idefics3")
ITEMS = HEAD_ITEMS
ANSWERS = HEAD_ANSWERS


_vlm = cached_vlm


def _pairs(vlm):
    return [candidate_pair(vlm.tokenizer, t, v) for t, v in ANSWERS]


def _pre_cap_logits(vlm, inputs):
    """Last-position logits of a plain forward; for a soft-capping class, lm_head(norm(last layer
    output)) from a plain hook on the last decoder layer (the cap is not additive)."""
    store = []
    handle = vlm.layers[-1].register_forward_hook(lambda m, a, out: store.append(out[0] if isinstance(out, tuple)
                                                                                  else out))
    vlm.adapter.reset_state(vlm.model)
    try:
        with torch.no_grad():
            logits = vlm.model(**inputs).logits[:, -1, :].float()
            if vlm.softcap:
                logits = vlm.model.lm_head(vlm.norm(store[0][:, -1])).float()
    finally:
        handle.remove()
    return logits


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("pass_name", ["conflict", "text", "vision"])
def test_terms_sum_to_the_models_logit_difference(family, pass_name):
    vlm = _vlm(family)
    batch, pairs = vlm.passes(ITEMS, (pass_name,))[pass_name], _pairs(vlm)
    dla = P.direct_logit_attribution(vlm, batch, pairs)
    logits = _pre_cap_logits(vlm, batch.inputs)
    rows = torch.arange(len(ITEMS))
    want = logits[rows, dla.text_ids] - logits[rows, dla.vision_ids]
    assert (dla.total - want).abs().max().item() <= 1e-4
    assert (dla.logit_diff - want).abs().max().item() <= 1e-4
    assert dla.heads.shape == (3, vlm.n_layers, 4)
    # no single term carries it all: the sum is over terms that really differ
    assert dla.heads.abs().max().item() > 1e-3 and dla.mlp.abs().max().item() > 1e-3
    for b, pair in enumerate(pairs):  # each side's id is the pair's candidate with the highest logit
        assert int(dla.text_ids[b]) == max(pair.text_ids, key=lambda i: logits[b, i])
        assert int(dla.vision_ids[b]) == max(pair.vision_ids, key=lambda i: logits[b, i])
    if not vlm.softcap:  # one id per side here, so the readout's log-sum-exp difference is the same number
        assert torch.allclose(dla.clean.logit_diff, want, atol=1e-4)


@pytest.mark.parametrize("family", ["llava", "mistral3"])
def test_agrees_with_transformer_lens(family):
    """TransformerLens' own stack_head_results / decompose_resid + logit_attrs on its bridge (a deep copy
    of the model, eager attention, its own hooks and W_O / W_U), with the final norm's scale frozen."""
    from hooks.tl_backend import bridge_for

    vlm = _vlm(family)
    bridge = bridge_for(vlm, mode="stock")
    batch, pairs = vlm.passes(ITEMS, ("conflict",))["conflict"], _pairs(vlm)
    dla = P.direct_logit_attribution(vlm, batch, pairs)
    rest = dict(batch.inputs)
    ids = rest.pop("input_ids")
    with torch.no_grad():
        _, cache = bridge.run_with_cache(ids, **rest)
        stack, labels = cache.stack_head_results(layer=-1, pos_slice=-1, apply_ln=False, return_labels=True)
        theirs = cache.logit_attrs(stack, tokens=dla.text_ids, incorrect_tokens=dla.vision_ids, pos_slice=-1)
        parts, part_labels = cache.decompose_resid(layer=-1, pos_slice=-1, apply_ln=False, return_labels=True)
        their_parts = cache.logit_attrs(parts, tokens=dla.text_ids, incorrect_tokens=dla.vision_ids, pos_slice=-1)
    assert labels[5] == "L1H1"
    ours = dla.heads.permute(1, 2, 0).reshape(-1, len(ITEMS))  # (layer*head, batch), TransformerLens' order
    assert (theirs - ours).abs().max().item() <= 1e-4
    assert part_labels[0] == "embed" and part_labels[2] == "0_mlp_out"
    assert (their_parts[0] - dla.embed).abs().max().item() <= 1e-4
    assert (their_parts[1::2] - dla.attention.T).abs().max().item() <= 1e-4
    assert (their_parts[2::2] - dla.mlp.T).abs().max().item() <= 1e-4


@pytest.mark.parametrize("family", ["llava", "gemma3"])
def test_batched_with_left_padding_equals_one_case_at_a_time(family):
    vlm = _vlm(family)
    pairs = _pairs(vlm)
    batch = vlm.passes(ITEMS, ("conflict",))["conflict"]
    assert len({g.length - g.n_pad for g in batch.geometry}) > 1
    together = P.direct_logit_attribution(vlm, batch, pairs)
    for b, item in enumerate(ITEMS):
        alone = P.direct_logit_attribution(vlm, vlm.passes([item], ("conflict",))["conflict"], pairs[b:b + 1])
        assert torch.allclose(together.heads[b], alone.heads[0], atol=1e-5)
        assert torch.allclose(together.mlp[b], alone.mlp[0], atol=1e-5)
        assert torch.allclose(together.embed[b], alone.embed[0], atol=1e-5)


def test_frozen_norm_scale_reproduces_the_norm_and_is_linear():
    vlm = _vlm("gemma3")  # (1 + w) gain, float32 upcast
    before = vlm.norm.weight.detach().clone()
    with torch.no_grad():
        vlm.norm.weight.add_(torch.linspace(-0.5, 0.5, vlm.norm.weight.numel()))  # a gain that is not 1
        try:
            x = torch.randn(3, vlm.norm.weight.numel())
            s = P.frozen_norm_scale(vlm.norm, x)
            assert torch.allclose(s * x, vlm.norm(x).float(), atol=1e-5)
            # frozen at x, the map is additive over any split of x, unlike the norm itself
            a = torch.randn_like(x)
            assert torch.allclose(s * a + s * (x - a), vlm.norm(x).float(), atol=1e-5)
            assert not torch.allclose(vlm.norm(a) + vlm.norm(x - a), vlm.norm(x), atol=1e-3)
        finally:
            vlm.norm.weight.copy_(before)


def test_layer_norm_and_gated_cross_attention_are_refused():
    with pytest.raises(UnsupportedModelError, match="not an RMSNorm"):
        norm = torch.nn.LayerNorm(8)
        P.frozen_norm_scale(norm, torch.randn(2, 8) + 3)
    vlm = _vlm("mllama")
    with pytest.raises(UnsupportedModelError, match="cross-attention"):
        P.direct_logit_attribution(vlm, vlm.passes(ITEMS[:1], ("text",))["text"], _pairs(vlm)[:1])


def test_wrong_adapter_data_is_caught_not_silently_summed():
    """Gemma 3 without its sandwich-norm entry: the terms no longer rebuild the final residual."""
    import dataclasses

    from hooks.adapters import ADAPTERS

    right = ADAPTERS["Gemma3ForConditionalGeneration"]
    vlm = load_vlm(tiny_model("gemma3"), adapter=dataclasses.replace(right, output_norms=None))
    batch = vlm.passes(ITEMS[:2], ("conflict",))["conflict"]
    with pytest.raises(UnsupportedModelError, match="do not sum to the attention output|rebuild the final"):
        P.direct_logit_attribution(vlm, batch, _pairs(vlm)[:2])


@pytest.mark.parametrize("family", ["llava", "gemma3"])
def test_terms_sum_with_norm_gains_that_are_not_one(family):
    """Random-init norms have gain 1 (Llama's w = 1, Gemma's 1 + w with w = 0); trained ones do not."""
    model, processor = tiny_model(family)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and param.dim() == 1:
                param.add_(0.5 * torch.randn_like(param))
    vlm = load_vlm((model, processor))
    batch, pairs = vlm.passes(ITEMS, ("conflict",))["conflict"], _pairs(vlm)
    dla = P.direct_logit_attribution(vlm, batch, pairs)
    logits = _pre_cap_logits(vlm, batch.inputs)
    rows = torch.arange(len(ITEMS))
    assert (dla.total - (logits[rows, dla.text_ids] - logits[rows, dla.vision_ids])).abs().max().item() <= 1e-4
