"""Activation patching (`patch`, `patching_sweep`, `modality_lens.plots.plot_patching`) on tiny
models of several families, against plain forwards and plain PyTorch hooks (see conftest)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hooks.interventions as P
from hooks.loading import load_vlm
from hooks.prompts import PromptItem
from hooks.tiny import tiny_model
from interp.candidates import candidate_pair
from modality_lens.plots import plot_patching


@pytest.mark.parametrize("site", ["resid_pre", "resid_post"])
def test_patching_every_position_reproduces_the_source(vlm, site, cases, ref):
    source, target, pairs = cases.conflict(vlm, cases.SOURCE), cases.conflict(vlm, cases.TARGET), cases.pairs(vlm)
    assert [g.length for g in source.geometry] == [g.length for g in target.geometry]
    want_source, want_target = ref.plain(vlm, source.inputs), ref.plain(vlm, target.inputs)
    assert (want_source - want_target).abs().max() > 1e-3, "source and target must differ"
    for layer in range(vlm.n_layers):
        result = P.patch(vlm, source, target, pairs, layers=layer, group="all", site=site, keep_logits=True)
        assert (result.intervened.logits - want_source).abs().max().item() <= 1e-4, f"layer {layer}"
        assert (result.clean.logits - want_target).abs().max().item() <= 1e-5
        assert (result.source.logits - want_source).abs().max().item() <= 1e-5


def test_patching_nothing_leaves_the_target_unchanged(vlm, cases, ref):
    source, target, pairs = cases.conflict(vlm, cases.SOURCE), cases.conflict(vlm, cases.TARGET), cases.pairs(vlm)
    want = ref.plain(vlm, target.inputs)
    nothing = P.PositionMap(((), ()), ((), ()))
    for site in P.SITES:
        result = P.patch(vlm, source, target, pairs, layers=range(vlm.n_layers), group=nothing, site=site,
                         keep_logits=True)
        assert (result.intervened.logits - want).abs().max().item() <= 1e-6, site
    # "context" is empty in both vision-only passes: a sweep row that patches nothing
    vision_src = vlm.passes(cases.SOURCE, ("vision",))["vision"]
    vision_tgt = vlm.passes(cases.TARGET, ("vision",))["vision"]
    sweep = P.patching_sweep(vlm, vision_src, vision_tgt, pairs, groups=("context", "image"))
    assert (sweep.group_sizes[:, 0] == 0).all() and (sweep.group_sizes[:, 1] > 0).all()
    assert sweep.effect[:, 0].abs().max().item() <= 1e-6
    assert sweep.effect[:, 1].abs().max().item() > 1e-4  # the image group does something


def test_image_patch_at_the_embeddings_equals_swapping_the_image(vlm, cases, ref):
    """Target rows have contexts of other lengths than the source: the image group maps by order."""
    source = cases.conflict(vlm, cases.SOURCE)
    target_items = [PromptItem(cases.QUESTION, "It is red .", cases.image(cases.BLUE)),
                    PromptItem(cases.QUESTION, "The circle 's colour is the same as a ripe tomato .",
                               cases.image(cases.GREEN))]
    target = cases.conflict(vlm, target_items)
    assert [g.length for g in source.geometry] != [g.length for g in target.geometry]
    swapped = cases.conflict(vlm, [PromptItem(cases.QUESTION, t.context, s.image)
                                   for s, t in zip(cases.SOURCE, target_items)])
    pairs = [candidate_pair(vlm.tokenizer, "red", "blue"), candidate_pair(vlm.tokenizer, "purple", "green")]
    result = P.patch(vlm, source, target, pairs, layers=0, group="image", site="resid_pre", keep_logits=True)
    want = ref.plain(vlm, swapped.inputs)
    assert (result.intervened.logits - want).abs().max().item() <= 1e-4
    assert (result.intervened.logits - result.clean.logits).abs().max().item() > 1e-3
    assert result.effect.abs().max().item() > 0


def test_group_sizes_must_agree_unless_mapped_explicitly(vlm, cases, ref):
    source = cases.conflict(vlm, cases.SOURCE)
    target = cases.conflict(vlm, [PromptItem(cases.QUESTION, "It is red .", cases.image(cases.BLUE)),
                             PromptItem(cases.QUESTION, "It is purple .", cases.image(cases.GREEN))])
    pairs = cases.pairs(vlm)
    with pytest.raises(P.PatchingError, match="PositionMap"):
        P.patch(vlm, source, target, pairs, layers=1, group="context")
    # an explicit map: the last 4 context tokens of the source onto the 4 of the target
    src = [tuple(P.positions(source, "context")[b][-4:]) for b in range(2)]
    tgt = [tuple(P.positions(target, "context")[b]) for b in range(2)]
    result = P.patch(vlm, source, target, pairs, layers=1, group=P.PositionMap(tuple(src), tuple(tgt)),
                     keep_logits=True)
    want = ref.reference_patch(vlm, source, target, 1, "resid_post", src, tgt)
    assert (result.intervened.logits - want).abs().max().item() <= 1e-5


@pytest.mark.parametrize("site", ["attn_out", "mlp_out", "resid_post"])
def test_patching_a_site_matches_plain_pytorch_hooks(vlm, site, cases, ref):
    source, target, pairs = cases.conflict(vlm, cases.SOURCE), cases.conflict(vlm, cases.TARGET), cases.pairs(vlm)
    layer = 1
    for group in ("image", "context", "question"):
        pos = P.positions(target, group)
        want = ref.reference_patch(vlm, source, target, layer, site, pos, pos)
        got = P.patch(vlm, source, target, pairs, layers=layer, group=group, site=site, keep_logits=True)
        assert (got.intervened.logits - want).abs().max().item() <= 1e-5, group
    assert (got.intervened.logits - got.clean.logits).abs().max().item() > 1e-5


def test_sweep_matches_the_hook_reference_in_every_cell(vlm, cases, ref):
    source, target, pairs = cases.conflict(vlm, cases.SOURCE), cases.conflict(vlm, cases.TARGET), cases.pairs(vlm)
    sweep = P.patching_sweep(vlm, source, target, pairs, max_rows=6)  # 3 configurations per forward
    assert sweep.effect.shape == (2, len(P.GROUPS), vlm.n_layers)
    assert sweep.layers == tuple(range(vlm.n_layers))
    for g, group in enumerate(P.GROUPS):
        pos = P.positions(target, group)
        for layer in sweep.layers:
            want = P.readout(ref.reference_patch(vlm, source, target, layer, "resid_post", pos, pos), pairs)
            assert torch.allclose(sweep.patched.logit_diff[:, g, layer], want.logit_diff, atol=1e-4)
            assert torch.allclose(sweep.patched.log_p_text[:, g, layer], want.log_p_text, atol=1e-4)
    clean = P.readout(ref.plain(vlm, target.inputs), pairs)
    assert torch.allclose(sweep.clean.logit_diff, clean.logit_diff, atol=1e-5)
    labels = sweep.patched.labels(pairs)  # batch rows, each over group x layer
    assert len(labels) == 2 and len(labels[1]) == len(P.GROUPS) * vlm.n_layers
    top = int(sweep.patched.top1[1, 2, 1])
    assert labels[1][2 * vlm.n_layers + 1] == {"text": "text", "vision": "vision"}.get(pairs[1].classify(top), "other")
    # at the last layer only the answer position reaches the logits (PaliGemma's prompt ends with
    # the question, so there the question group holds the answer position)
    for g, group in enumerate(P.GROUPS[:3]):
        for b, pos in enumerate(P.positions(target, group)):
            if target.geometry[b].answer_position not in pos:
                assert abs(sweep.effect[b, g, -1].item()) <= 1e-5, (group, b)
    assert torch.allclose(sweep.effect[:, 3, -1], sweep.source.logit_diff - sweep.clean.logit_diff, atol=1e-4)


def test_plot_patching_draws_the_group_by_layer_grid(cases):
    import matplotlib

    matplotlib.use("Agg")
    vlm = load_vlm(tiny_model("llava"))
    sweep = P.patching_sweep(vlm, cases.conflict(vlm, cases.SOURCE), cases.conflict(vlm, cases.TARGET),
                             cases.pairs(vlm), layers=[0, 2])
    fig = plot_patching(sweep)
    image = fig.axes[0].images[0].get_array()
    assert image.shape == (len(P.GROUPS), 2)
    assert np.allclose(np.asarray(image), sweep.mean("effect").numpy(), atol=1e-6)
    assert sweep.to_dict()["layers"] == [0, 2]
