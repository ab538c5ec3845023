"""The lens on a cached prefix equals the full forward's, class by class; which classes reuse it."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

from hooks.loading import load_vlm
from hooks.prefix import PrefixCache, PrefixUnavailable, prefix_boundary, prefix_lens, prefix_support
from hooks.prompts import PromptItem, append_tokens
from hooks.tiny import FAMILIES, tiny_model
from interp.vocabulary import PASSES

REUSE = {"llava", "llava_next", "llava_onevision", "gemma3", "idefics3", "internvl", "mistral3"}
"""Classes that reuse a prefix cache; the others fall back to full forwards (hooks.prefix says why)."""


@pytest.fixture(scope="module")
def mixed(items):
    """The four prompts of `items` (mixed lengths and image sizes) plus one sharing the first's image."""
    return [*items, PromptItem("What colour ?", items[2].context, items[0].image)]


def test_which_classes_reuse_a_prefix_cache():
    reuse = set()
    for family in FAMILIES:
        vlm = load_vlm(tiny_model(family), self_check=False)
        ok, why = prefix_support(vlm)
        assert ok == vlm.adapter.prefix_cache and (ok or vlm.adapter.model_class in why)
        if ok:
            reuse.add(family)
    assert reuse == REUSE


def _assert_same(got, want, tol=1e-4):
    assert (got.logits - want.logits).abs().max().item() <= tol
    assert (got.model_logits - want.model_logits).abs().max().item() <= tol
    assert torch.equal(got.top_ids, want.top_ids)
    assert (got.entropy - want.entropy).abs().max().item() <= tol


@pytest.mark.parametrize("family", sorted(REUSE))
def test_cached_lens_equals_uncached_on_every_reusing_class(family, mixed):
    """Every pass, batched with mixed suffix (and, for LLaVA-NeXT, prefix) lengths, then again with
    teacher-forced answer prefixes of different lengths; the second pass of each hits the cache."""
    vlm = load_vlm(tiny_model(family))
    cache = PrefixCache()
    tok = vlm.tokenizer
    forced = [tok.encode(w, add_special_tokens=False) for w in ("the ripe", "a", "", "red", "blue green")]
    for name in PASSES:
        batch = vlm.passes(mixed, (name,))[name]
        _assert_same(prefix_lens(vlm, batch, cache, keep_logits=True), vlm.lens(batch, keep_logits=True))
        longer = append_tokens(batch, forced)
        _assert_same(prefix_lens(vlm, longer, cache, keep_logits=True), vlm.lens(longer, keep_logits=True))
    # one prefix per distinct (image, tokens before the text): the vision and conflict passes share them
    assert cache.image_rows == len({id(it.image) for it in mixed})
    assert cache.hits > 0


@pytest.mark.parametrize("family", sorted(set(FAMILIES) - REUSE))
def test_classes_that_cannot_reuse_refuse(family, mixed):
    vlm = load_vlm(tiny_model(family), self_check=False)
    batch = vlm.passes(mixed[:2], ("conflict",))["conflict"]
    with pytest.raises(PrefixUnavailable, match="full forwards"):
        prefix_lens(vlm, batch, PrefixCache())


@pytest.mark.parametrize("family", ["llava", "gemma3"])  # gemma3: an 8-token sliding window in every layer
def test_against_a_hand_built_forward_with_past_key_values(family, items):
    """One row: prefix through the HF model with a cache, then the suffix on that cache; the
    model's own logits must match the cached lens, and both the full forward's."""
    vlm = load_vlm(tiny_model(family))
    batch = vlm.passes(items[:1], ("conflict",))["conflict"]
    ids, g = batch.inputs["input_ids"], batch.geometry[0]
    cut = prefix_boundary(g)
    extra = {k: v for k, v in batch.inputs.items() if k not in ("input_ids", "attention_mask", "token_type_ids")}
    name = "cache" if "cache" in inspect.signature(type(vlm.model).forward).parameters else "past_key_values"
    kv = DynamicCache()
    with torch.no_grad():
        vlm.model(input_ids=ids[:, :cut], **extra, **{name: kv}, use_cache=True)
        n = ids.shape[1] - cut
        second = vlm.model(input_ids=ids[:, cut:], **{name: kv},
                           attention_mask=torch.ones_like(ids), position_ids=torch.arange(cut, cut + n)[None],
                           cache_position=torch.arange(cut, cut + n))
        full = vlm.model(**batch.inputs).logits[0, -1]
    got = prefix_lens(vlm, batch, PrefixCache(), keep_logits=True)
    assert (second.logits[0, -1] - full).abs().max().item() <= 1e-4
    assert (got.model_logits[0] - second.logits[0, -1]).abs().max().item() <= 1e-4
    assert (got.logits[0, -1] - full).abs().max().item() <= 1e-4


def test_a_small_store_evicts_and_stays_exact(mixed):
    vlm = load_vlm(tiny_model("llava"))
    cache = PrefixCache(max_bytes=1)  # keeps one prefix at a time
    for name in ("vision", "conflict", "vision"):
        batch = vlm.passes(mixed, (name,))[name]
        _assert_same(prefix_lens(vlm, batch, cache, keep_logits=True), vlm.lens(batch, keep_logits=True))
    assert len(cache) == 1


def test_the_shipped_model_cached_equals_uncached():
    """Real cases of the default set (their answer prefixes forced), on whatever data/tiny_vlm holds."""
    from interp.datasets.colour import colour_cases
    from modality_lens.cases import case_item, case_pairs
    from modality_lens.pipeline import default_model

    if not Path(default_model(), "config.json").is_file():
        pytest.skip("no shipped model in this checkout")
    vlm = load_vlm(default_model())
    cases = list(colour_cases(1, 0, image_size=64))[::7][:12]
    pairs = case_pairs(vlm.tokenizer, cases)
    cache = PrefixCache()
    for name in PASSES:
        batch = vlm.passes([case_item(c) for c in cases], (name,))[name]
        batch = append_tokens(batch, [p.prefix for p in pairs])
        _assert_same(prefix_lens(vlm, batch, cache, keep_logits=True), vlm.lens(batch, keep_logits=True))
