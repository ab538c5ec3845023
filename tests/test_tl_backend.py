"""The TransformerBridge lens (hooks.tl_backend) against our nnsight lens (hooks.taps), on tiny models.

The two lenses are independent computations: the nnsight one traces `vlm.model` (SDPA attention) and
projects with its norm and `lm_head`; the bridge one runs a deep copy of the model under
TransformerLens (eager attention, its own hook points and bridge components). They must agree to
1e-4 at every layer.
"""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch

from hooks.loading import load_vlm
from hooks.tiny import FAMILIES, tiny_model
from hooks.tl_backend import LAYER0_HOOK, bridge_for, lens_hook_names, tl_lens, tl_stock_support
from interp.errors import UnsupportedModelError

LM_ONLY_WARNING = "ignore:.*bridging only its language model"
TOL = 1e-4


@functools.cache
def _vlm(family: str):
    return load_vlm(tiny_model(family))


@functools.cache
def _bridge(family: str, mode: str = "auto"):
    return bridge_for(_vlm(family), mode=mode)


def _split(inputs):
    rest = dict(inputs)
    return rest.pop("input_ids"), rest


# Every family with the default mode (stock adapter where TransformerLens can boot it), plus two
# stock families forced through our language-model-only adapter.
CASES = [(f, "auto") for f in FAMILIES] + [("llava", "lm_only"), ("gemma3", "lm_only")]


@pytest.mark.filterwarnings(LM_ONLY_WARNING)
@pytest.mark.parametrize("family,mode", CASES, ids=[f"{f}-{m}" for f, m in CASES])
def test_bridge_lens_equals_nnsight_lens_at_every_layer(family, mode, items):
    vlm, bridge = _vlm(family), _bridge(family, mode)
    for pass_name in ("conflict", "text"):
        batch = vlm.passes(items[:3], (pass_name,))[pass_name]
        assert any(g.n_pad > 0 for g in batch.geometry), "the batch must exercise left padding"
        ours = vlm.lens(batch).logits
        theirs = tl_lens(vlm, batch, bridge)
        assert theirs.shape == ours.shape == (3, vlm.n_layers + 1, ours.shape[-1])
        assert torch.isfinite(theirs).all()
        per_layer = (theirs - ours).abs().amax(dim=(0, 2))
        assert per_layer.max().item() <= TOL, f"{pass_name}: max |diff| per layer {per_layer.tolist()}"
        # the layers really differ from one another, so agreement at every layer is not agreement on one value
        assert (ours[:, 0] - ours[:, -1]).abs().max().item() > 100 * TOL


@pytest.mark.parametrize("family", ["llava", "gemma3", "paligemma2"])
@pytest.mark.filterwarnings(LM_ONLY_WARNING)
def test_bridge_logits_equal_hf_logits(family, items):
    vlm, bridge = _vlm(family), _bridge(family)
    batch = vlm.passes(items[:3], ("conflict",))["conflict"]
    ids, rest = _split(batch.inputs)
    with torch.no_grad():
        hf = vlm.model(**batch.inputs).logits
        vlm.adapter.reset_state(bridge.original_model)
        theirs = bridge(ids, **rest)
    attended = batch.inputs["attention_mask"].bool()  # padded slots have no defined logits
    assert theirs.shape == hf.shape
    assert (theirs - hf)[attended].abs().max().item() <= TOL
    # and the bridge lens of the last layer is the bridge's own logits at the answer position
    assert (tl_lens(vlm, batch, bridge)[:, -1] - theirs[:, -1]).abs().max().item() <= TOL


@pytest.mark.parametrize("family", ["llava", "gemma3"])
def test_booting_leaves_the_vlm_untouched(family, items):
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

    vlm = load_vlm(tiny_model(family))  # a fresh one: nothing else has booted a bridge from it
    batch = vlm.passes(items[:2], ("conflict",))["conflict"]
    before = vlm.lens(batch).logits
    attn_before = vlm.model.config._attn_implementation
    layers_before = list(vlm.layers)
    params_before = {id(p) for p in vlm.model.parameters()}

    bridge = bridge_for(vlm)

    # the bridge really does rewrite the model it is given (the reason bridge_for copies) ...
    assert any(isinstance(m, GeneralizedComponent) for m in bridge.original_model.modules())
    assert bridge.original_model.config._attn_implementation == "eager" != attn_before
    # ... and that model is not ours: no module, parameter or config change leaked into the VLM
    assert bridge.original_model is not vlm.model
    assert not any(isinstance(m, GeneralizedComponent) for m in vlm.model.modules())
    assert vlm.model.config._attn_implementation == attn_before
    assert all(a is b for a, b in zip(vlm.adapter.layers(vlm.model), layers_before, strict=True))
    assert params_before.isdisjoint(id(p) for p in bridge.original_model.parameters())
    after = vlm.lens(batch).logits
    assert torch.equal(before, after)


def test_layer0_hook_is_the_decoder_input_not_the_token_embedding(items, layer0_input):
    vlm, bridge = _vlm("llava"), _bridge("llava")
    batch = vlm.passes(items[:2], ("conflict",))["conflict"]
    ids, rest = _split(batch.inputs)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(ids, names_filter=[LAYER0_HOOK, "hook_embed"], **rest)
    ours = layer0_input(vlm, batch.inputs)
    attended = batch.inputs["attention_mask"].bool()
    assert (cache[LAYER0_HOOK] - ours)[attended].abs().max().item() <= TOL
    # hook_embed is taken before the image features are merged: it differs exactly at image tokens
    image = ids == vlm.image_token_id
    assert image.any()
    diff = (cache["hook_embed"] - ours).abs().amax(-1)
    assert diff[image].min().item() > TOL
    assert diff[attended & ~image].max().item() <= TOL


def test_lens_hook_names_cover_every_layer():
    assert lens_hook_names(3) == [LAYER0_HOOK, "blocks.0.hook_resid_post", "blocks.1.hook_resid_post",
                                  "blocks.2.hook_resid_post"]


def test_stock_mode_refuses_a_class_transformer_lens_does_not_support():
    vlm = _vlm("qwen2_vl")
    assert vlm.adapter.model_class not in tl_stock_support()
    with pytest.raises(UnsupportedModelError, match="mode='lm_only'"):
        bridge_for(vlm, mode="stock")
    with pytest.raises(ValueError, match="mode must be one of"):
        bridge_for(vlm, mode="fast")


def test_auto_mode_says_when_it_bridges_only_the_language_model():
    vlm = _vlm("qwen2_vl")
    with pytest.warns(UserWarning, match="bridging only its language model"):
        bridge = bridge_for(vlm)
    assert type(bridge.adapter).__name__ == "LanguageModelOnlyAdapter[Qwen2VLForConditionalGeneration]"


def test_lm_only_adapter_does_not_replace_the_stock_one():
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES

    stock = SUPPORTED_ARCHITECTURES["LlavaForConditionalGeneration"]
    assert type(_bridge("llava", "lm_only").adapter).__name__.startswith("LanguageModelOnlyAdapter")
    assert SUPPORTED_ARCHITECTURES["LlavaForConditionalGeneration"] is stock
    assert type(bridge_for(_vlm("llava")).adapter) is stock


def test_a_boot_failure_is_an_unsupported_model_error():
    vlm = load_vlm(tiny_model("llava"))
    vlm.adapter = dataclasses.replace(vlm.adapter, unembed="model.no_such_head")
    with pytest.raises(UnsupportedModelError, match="could not boot"):
        bridge_for(vlm, mode="lm_only")
