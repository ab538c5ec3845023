"""Head knockout, mean-ablation, patching and sweeps (hooks.interventions.heads) on tiny models, against
plain forwards and plain PyTorch hooks on the attention output projection (no nnsight)."""

from __future__ import annotations


import pytest
import torch

import hooks.interventions as P
from hooks.interventions.heads import head_means
from interp.candidates import candidate_pair
from tests.conftest import HEAD_ANSWERS, HEAD_ITEMS, cached_vlm

FAMILIES = ("llava", "qwen2_5_vl", "gemma3", "paligemma2")  # every tiny text model has 4 query / 2 kv heads
ANSWERS = HEAD_ANSWERS
ITEMS = HEAD_ITEMS


_vlm = cached_vlm


@pytest.fixture(params=FAMILIES)
def vlm(request):
    return _vlm(request.param)


def _pairs(vlm, k=len(ANSWERS)):
    return [candidate_pair(vlm.tokenizer, t, v) for t, v in ANSWERS[:k]]


def _conflict(vlm, items=ITEMS):
    return vlm.passes(items, ("conflict",))["conflict"]


def _plain(vlm, inputs, hooks=()):
    """Last-position logits of a plain forward with `hooks` = [(module, pre_hook | None, hook | None)]."""
    handles = []
    for module, pre, post in hooks:
        if pre is not None:
            handles.append(module.register_forward_pre_hook(pre))
        if post is not None:
            handles.append(module.register_forward_hook(post))
    vlm.adapter.reset_state(vlm.model)
    try:
        with torch.no_grad():
            return vlm.model(**inputs).logits[:, -1, :].float()
    finally:
        for h in handles:
            h.remove()


def _o_proj(vlm, layer):
    return vlm.layers[layer].self_attn.o_proj


def _width(vlm):
    cfg = vlm.model.config.get_text_config()
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def _edit_z(vlm, layer, edit):
    """A pre-hook on layer's o_proj that edits its input (the heads' concatenated outputs) in place."""
    def pre(module, args):
        edit(args[0])
    return (_o_proj(vlm, layer), pre, None)


def test_head_shape_is_read_from_the_config(vlm):
    assert P.head_shape(vlm) == (4, 2, 16)
    assert P.layer_heads(vlm, -1) == [(3, 0), (3, 1), (3, 2), (3, 3)]


def test_knocking_out_no_head_is_the_identity(vlm):
    batch, pairs = _conflict(vlm), _pairs(vlm)
    assert any(g.n_pad for g in batch.geometry)
    want = _plain(vlm, batch.inputs)
    for heads, where in (([], "all"), ([(1, 2)], [[], [], []])):
        r = P.knockout_heads(vlm, batch, pairs, heads, where=where, keep_logits=True)
        assert (r.intervened.logits - want).abs().max().item() <= 1e-6
        assert (r.clean.logits - want).abs().max().item() <= 1e-6


def test_every_head_of_a_layer_equals_zeroing_the_attention_output(vlm):
    batch, pairs = _conflict(vlm), _pairs(vlm)
    for layer in (0, 2):
        def zero(module, args, out):
            out[0].zero_()
        want = _plain(vlm, batch.inputs, [(vlm.layers[layer].self_attn, None, zero)])
        r = P.knockout_heads(vlm, batch, pairs, P.layer_heads(vlm, layer), keep_logits=True)
        assert (r.intervened.logits - want).abs().max().item() <= 1e-5
        assert (r.intervened.logits - r.clean.logits).abs().max().item() > 1e-3  # it does something


def test_single_head_knockout_and_mean_ablation_match_a_plain_hook(vlm):
    batch, pairs = _conflict(vlm), _pairs(vlm)
    w, layer, head = _width(vlm), 1, 3
    cols = slice(head * w, (head + 1) * w)

    def zero(z):
        z[:, :, cols] = 0  # padding positions too: they are never attended to
    want = _plain(vlm, batch.inputs, [_edit_z(vlm, layer, zero)])
    got = P.knockout_heads(vlm, batch, pairs, [(layer, head)], keep_logits=True)
    assert (got.intervened.logits - want).abs().max().item() <= 1e-5
    assert got.effect.abs().max().item() > 1e-5
    # the mean over every non-padding position, captured by a plain hook
    store = []
    _plain(vlm, batch.inputs, [_edit_z(vlm, layer, lambda z: store.append(z.detach().clone()))])
    mask = batch.inputs["attention_mask"].bool()
    mean = store[0][mask][:, cols].mean(0)
    assert torch.allclose(head_means(vlm, batch, [(layer, head)])[(layer, head)], mean, atol=1e-6)

    def ablate(z):
        z[:, :, cols] = torch.where(mask[..., None], mean.to(z.dtype), z[:, :, cols])
    want = _plain(vlm, batch.inputs, [_edit_z(vlm, layer, ablate)])
    got = P.mean_ablate_heads(vlm, batch, pairs, [(layer, head)], keep_logits=True)
    assert (got.intervened.logits - want).abs().max().item() <= 1e-5


def test_patching_a_head_from_another_pass_matches_a_plain_hook(vlm):
    pairs = _pairs(vlm)
    target = _conflict(vlm)
    source = vlm.passes(ITEMS, ("text",))["text"]  # another layout: the answer position maps one to one
    w, layer, head = _width(vlm), 2, 1
    cols = slice(head * w, (head + 1) * w)
    store = []
    _plain(vlm, source.inputs, [_edit_z(vlm, layer, lambda z: store.append(z[:, -1, cols].clone()))])

    def write(z):
        z[:, -1, cols] = store[0]
    want = _plain(vlm, target.inputs, [_edit_z(vlm, layer, write)])
    got = P.patch_heads(vlm, source, target, pairs, [(layer, head)], keep_logits=True)
    assert (got.intervened.logits - want).abs().max().item() <= 1e-5
    assert (got.intervened.logits - got.clean.logits).abs().max().item() > 1e-5
    assert torch.allclose(got.source.logits, _plain(vlm, source.inputs), atol=1e-5)


def test_a_sweep_equals_one_knockout_per_head(vlm):
    batch, pairs = _conflict(vlm), _pairs(vlm)
    sweep = P.head_sweep(vlm, batch, pairs, layers=[1, 3], max_rows=7)  # two heads per forward
    assert sweep.effect.shape == (3, 2, 4)
    for i, layer in enumerate((1, 3)):
        for head in range(4):
            one = P.knockout_heads(vlm, batch, pairs, [(layer, head)])
            assert torch.allclose(sweep.intervened.logit_diff[:, i, head], one.intervened.logit_diff, atol=1e-5)
    assert sweep.effect.abs().max().item() > 1e-4
    labels = sweep.labels(pairs)
    assert len(labels) == 3 and len(labels[0]) == 2 and len(labels[0][1]) == 4
    mean = P.head_sweep(vlm, batch, pairs, kind="mean", layers=[2])
    one = P.mean_ablate_heads(vlm, batch, pairs, [(2, 0)])
    assert torch.allclose(mean.intervened.logit_diff[:, 0, 0], one.intervened.logit_diff, atol=1e-5)


def test_a_patching_sweep_equals_one_patch_per_head(vlm):
    pairs, target = _pairs(vlm), _conflict(vlm)
    source = vlm.passes(ITEMS, ("text",))["text"]
    sweep = P.head_sweep(vlm, target, pairs, kind="patch", reference=source, layers=[0, 3], max_rows=9)
    assert sweep.effect.shape == (3, 2, 4)
    for i, layer in enumerate((0, 3)):
        for head in range(4):
            one = P.patch_heads(vlm, source, target, pairs, [(layer, head)])
            assert torch.allclose(sweep.intervened.logit_diff[:, i, head], one.intervened.logit_diff, atol=1e-5)
    assert sweep.effect.abs().max().item() > 1e-5


def test_head_sets_in_one_tiled_forward_equal_separate_knockouts(vlm):
    batch, pairs = _conflict(vlm), _pairs(vlm)
    sets = [[], [(0, 1), (3, 2)], P.layer_heads(vlm, 2)]
    tiled = P.knockout_sets(vlm, batch, pairs, sets, max_rows=6)  # two sets per forward
    assert tiled.intervened.logit_diff.shape == (3, 3)
    assert torch.allclose(tiled.intervened.logit_diff[:, 0], tiled.clean.logit_diff, atol=1e-6)
    for s, heads in enumerate(sets):
        one = P.knockout_heads(vlm, batch, pairs, heads)
        assert torch.allclose(tiled.intervened.logit_diff[:, s], one.intervened.logit_diff, atol=1e-5)
    mean = P.knockout_sets(vlm, batch, pairs, sets[1:2], kind="mean")
    one = P.mean_ablate_heads(vlm, batch, pairs, sets[1])
    assert torch.allclose(mean.intervened.logit_diff[:, 0], one.intervened.logit_diff, atol=1e-5)
    assert [len(row) for row in tiled.intervened.labels(pairs)] == [3, 3, 3]


def test_batched_with_left_padding_equals_one_case_at_a_time(vlm):
    batch, pairs = _conflict(vlm), _pairs(vlm)
    assert len({g.length - g.n_pad for g in batch.geometry}) > 1
    heads = [(0, 1), (2, 3)]
    together = P.knockout_heads(vlm, batch, pairs, heads)
    sweep = P.head_sweep(vlm, batch, pairs, layers=[2])
    for b, item in enumerate(ITEMS):
        alone = _conflict(vlm, [item])
        one = P.knockout_heads(vlm, alone, pairs[b:b + 1], heads)
        assert torch.allclose(together.intervened.logit_diff[b], one.intervened.logit_diff[0], atol=1e-4)
        one_sweep = P.head_sweep(vlm, alone, pairs[b:b + 1], layers=[2])
        assert torch.allclose(sweep.effect[b], one_sweep.effect[0], atol=1e-4)


def test_bad_heads_are_refused_with_the_fix():
    vlm = _vlm("llava")
    batch, pairs = _conflict(vlm), _pairs(vlm)
    with pytest.raises(P.PatchingError, match=r"head 4 of layer 1 is out of range.*0\.\.3"):
        P.knockout_heads(vlm, batch, pairs, [(1, 4)])
    with pytest.raises(P.PatchingError, match="layer 9 is out of range"):
        P.knockout_heads(vlm, batch, pairs, [(9, 0)])
    with pytest.raises(P.PatchingError, match=r"\(layer, head\) pair"):
        P.knockout_heads(vlm, batch, pairs, [3])
    with pytest.raises(P.PatchingError, match="at least one"):
        P.check_heads(vlm, [], allow_empty=False)
    with pytest.raises(P.PatchingError, match="no layer to sweep"):
        P.head_sweep(vlm, batch, pairs, layers=[])
    with pytest.raises(P.PatchingError, match="'knockout', 'mean' or 'patch'"):
        P.head_sweep(vlm, batch, pairs, kind="zero")
    with pytest.raises(P.PatchingError, match="reference=<source PassBatch>"):
        P.head_sweep(vlm, batch, pairs, kind="patch")
