"""Every supported VLM family on its tiny random model: self-check, lens, batching, geometry."""

from __future__ import annotations

import pytest
import torch

from hooks.adapters import ADAPTERS, Adapter
from hooks.loading import load_vlm
from hooks.tiny import FAMILIES, tiny_model
from interp.errors import SelfCheckError

@pytest.fixture(scope="module", params=FAMILIES)
def vlm(request):
    return load_vlm(tiny_model(request.param))


def test_every_requested_class_has_an_adapter():
    wanted = {"LlavaForConditionalGeneration", "LlavaNextForConditionalGeneration",
              "LlavaOnevisionForConditionalGeneration", "Qwen2VLForConditionalGeneration",
              "Qwen2_5_VLForConditionalGeneration", "Qwen3VLForConditionalGeneration",
              "Gemma3ForConditionalGeneration", "PaliGemmaForConditionalGeneration",
              "Idefics3ForConditionalGeneration", "MllamaForConditionalGeneration",
              "InternVLForConditionalGeneration", "Mistral3ForConditionalGeneration"}
    assert wanted <= set(ADAPTERS)
    built = {type(tiny_model(f)[0]).__name__ for f in FAMILIES}
    assert wanted <= built


def test_self_check_passes(vlm):
    report = vlm.self_check_report
    assert report is not None and report.ok
    assert report.max_abs_diff <= 1e-4


@pytest.mark.parametrize("pass_name", ["vision", "text", "conflict"])
def test_final_layer_lens_equals_plain_forward_logits(vlm, pass_name, items):
    batch = vlm.passes(items, (pass_name,))[pass_name]
    result = vlm.lens(batch)
    assert result.logits.shape == (len(items), vlm.n_layers + 1, result.model_logits.shape[-1])
    vlm.adapter.reset_state(vlm.model)
    with torch.no_grad():  # an independent forward, no nnsight, full logits
        plain = vlm.model(**batch.inputs).logits[:, -1, :]
    assert torch.isfinite(result.logits).all()
    assert (result.logits[:, -1, :] - plain).abs().max().item() <= 1e-4


def test_left_padded_batch_equals_unbatched_rows(vlm, items):
    batch = vlm.passes(items, ("conflict",))["conflict"]
    assert any(g.n_pad > 0 for g in batch.geometry), "the sample must exercise left padding"
    batched = vlm.lens(batch).logits
    for b, item in enumerate(items):
        single = vlm.lens(vlm.passes([item], ("conflict",))["conflict"]).logits[0]
        assert (batched[b] - single).abs().max().item() <= 1e-4, f"row {b}"


def test_text_only_pass_has_no_image(vlm, items):
    batch = vlm.passes(items, ("text",))["text"]
    assert not any(k.startswith("pixel") for k in batch.inputs)
    assert not (batch.inputs["input_ids"] == vlm.image_token_id).any()
    assert all(g.image_span is None and g.image_positions == () for g in batch.geometry)


def test_spans_decode_to_their_text(vlm, items):
    batch = vlm.passes(items, ("conflict",))["conflict"]
    tok = vlm.tokenizer
    for b, (g, item) in enumerate(zip(batch.geometry, items)):
        ids = batch.inputs["input_ids"][b]
        alone = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        assert ids[slice(*g.context_span)].tolist() == alone(item.context)
        assert ids[slice(*g.question_span)].tolist() == alone(item.question)
        assert g.context_span[1] <= g.question_span[0]
        assert g.image_span[1] <= g.context_span[0]
        # the answer position is the last prompt token: the last token of the rendered prompt
        assert g.answer_position == ids.shape[0] - 1
        assert batch.inputs["attention_mask"][b, g.answer_position] == 1
        assert g.n_pad == int((batch.inputs["attention_mask"][b] == 0).sum())


def test_image_span_holds_only_image_tokens(vlm, circle_item, layer0_input):
    """Positions whose embedding changes with the image are image-token positions, and no others."""
    red = vlm.passes([circle_item((220, 30, 30))], ("vision",))["vision"]
    blue = vlm.passes([circle_item((30, 60, 220))], ("vision",))["vision"]
    geometry = red.geometry[0]
    ids = red.inputs["input_ids"][0]
    assert geometry.image_positions, "a vision pass must have image tokens"
    assert all(int(ids[p]) == vlm.image_token_id for p in geometry.image_positions)
    assert int((ids == vlm.image_token_id).sum()) == len(geometry.image_positions)
    changed = ((layer0_input(vlm, red.inputs) - layer0_input(vlm, blue.inputs)).abs().amax(-1) > 0)[0]
    changed = set(torch.nonzero(changed).flatten().tolist())
    if vlm.adapter.family == "mllama":
        assert changed == set()  # the image enters through cross-attention, not the embeddings
        assert len(geometry.image_positions) == 1
    else:
        assert changed and changed <= set(geometry.image_positions)


def test_unsupported_class_raises_with_the_list():
    from interp.errors import UnsupportedModelError

    class Strange(torch.nn.Module):
        pass

    with pytest.raises(UnsupportedModelError) as err:
        load_vlm((Strange(), None))
    assert "LlavaForConditionalGeneration" in str(err.value) and "adapter" in str(err.value)


def _scaled(family: str):
    model, processor = tiny_model(family)
    with torch.no_grad():
        model.lm_head.weight.mul_(200.0)  # logits far beyond the cap of 30
    return model, processor


def test_softcap_is_applied_where_the_class_applies_it(items):
    vlm = load_vlm(_scaled("paligemma2"))
    assert vlm.softcap == 30.0
    result = vlm.lens(vlm.passes(items[:2], ("conflict",))["conflict"])
    assert result.model_logits.abs().max() <= 30.0 + 1e-4
    assert result.logits.abs().max() <= 30.0 + 1e-4
    # Without the cap the lens no longer reproduces the model: the self-check must refuse it.
    with pytest.raises(SelfCheckError):
        load_vlm(_scaled("paligemma2"), adapter=Adapter("PaliGemmaForConditionalGeneration", "paligemma",
                                                        text_only_format="{bos}{text}\n"))


def test_gemma3_class_does_not_cap_even_when_configured(items):
    vlm = load_vlm(_scaled("gemma3"))
    assert vlm.model.config.get_text_config().final_logit_softcapping == 30.0
    assert vlm.softcap is None
    result = vlm.lens(vlm.passes(items[:2], ("conflict",))["conflict"])
    assert result.model_logits.abs().max() > 30.0
    with pytest.raises(SelfCheckError):
        load_vlm(_scaled("gemma3"), adapter=Adapter("Gemma3ForConditionalGeneration", "gemma3", softcap=True))


def test_qwen_without_mm_token_type_ids_is_refused(items):
    vlm = load_vlm(tiny_model("qwen2_5_vl"))
    batch = vlm.passes(items[:1], ("vision",))["vision"]
    inputs = {k: v for k, v in batch.inputs.items() if k != "mm_token_type_ids"}
    with pytest.raises(ValueError, match="mm_token_type_ids"):
        vlm.lens(inputs)


def test_preamble_comes_first_and_leaves_the_spans_alone(vlm, items):
    """An instruction placed at the start of the user turn precedes the image and the context
    in every pass; the context and question spans still decode to their own text."""
    from hooks.interventions import TEXT_INSTRUCTION, with_instruction

    instructed = with_instruction(items, TEXT_INSTRUCTION, placement="start")
    assert all(it.preamble == TEXT_INSTRUCTION and it.question == orig.question for it, orig in zip(instructed, items))
    tok = vlm.tokenizer
    alone = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    want = alone(TEXT_INSTRUCTION)
    templated = bool(getattr(vlm.processor, "chat_template", None))
    for name, batch in vlm.passes(instructed, ("vision", "text", "conflict")).items():
        plain = vlm.passes(items, (name,))[name]
        for b, (g, item) in enumerate(zip(batch.geometry, instructed)):
            ids = batch.inputs["input_ids"][b].tolist()
            starts = [s for s in range(g.n_pad, len(ids) - len(want) + 1) if ids[s:s + len(want)] == want]
            assert len(starts) == 1, f"{name} row {b}: the instruction's tokens appear {len(starts)} times"
            end = starts[0] + len(want)
            if g.context_span:
                assert end <= g.context_span[0]
                assert ids[slice(*g.context_span)] == alone(item.context)
            if g.image_span and templated:  # a template-less processor puts its image tokens first
                assert end <= g.image_span[0]
            assert ids[slice(*g.question_span)] == alone(item.question)
            # the preamble adds exactly its own tokens (and at most a separator) to the row
            unpadded = len(ids) - g.n_pad
            base = plain.geometry[b]
            assert 0 <= unpadded - (base.length - base.n_pad) - len(want) <= 1
            assert len(g.image_positions) == len(base.image_positions)
