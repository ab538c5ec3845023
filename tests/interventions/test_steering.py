"""Steering: adding a direction equals a plain hook that adds it, and `steering_effect` counts what
hooked forwards answer, in one batch or in chunks and windows."""

from __future__ import annotations

import numpy as np
import pytest

import hooks.interventions as P
from hooks.loading import load_vlm
from hooks.tiny import tiny_model
from interp.candidates import candidate_pair
from interp.uncertainty import dh_rel, entropy


def test_steering_with_alpha_zero_is_the_identity(vlm, cases, ref):
    target, pairs = cases.conflict(vlm, cases.TARGET), cases.pairs(vlm)
    direction = P.instruction_direction(vlm, cases.TARGET)
    assert direction.norms.max() > 0  # (Gemma-3's sliding-window layers may not see the instruction)
    for where in ("answer", "all"):
        result = P.steer(vlm, target, pairs, direction, alpha=0.0, where=where, keep_logits=True)
        assert (result.intervened.logits - ref.plain(vlm, target.inputs)).abs().max().item() <= 1e-6


def test_steering_matches_a_plain_hook_that_adds_the_direction(vlm, cases, ref):
    target, pairs = cases.conflict(vlm, cases.TARGET), cases.pairs(vlm)
    direction = P.instruction_direction(vlm, cases.TARGET)
    alpha, layers = 3.0, (1, 2)

    def add(layer, out):
        out[:, -1] += alpha * direction.vectors[layer]  # the answer position of a left-padded batch

    want = ref.plain_adding(vlm, target.inputs, layers, add)
    got = P.steer(vlm, target, pairs, direction, alpha=alpha, layers=layers, keep_logits=True)
    assert (got.intervened.logits - want).abs().max().item() <= 1e-5
    assert got.effect.abs().max().item() > 1e-4


def test_steering_over_the_last_positions_matches_a_plain_hook(vlm, cases, ref):
    k, alpha, layers = 4, 2.0, (0, 2)
    batch = cases.conflict(vlm, cases.UNEVEN)
    pairs = cases.pairs(vlm) + [candidate_pair(vlm.tokenizer, "green", "red")]
    direction = P.instruction_direction(vlm, cases.UNEVEN, positions=k)

    def add(layer, out):
        out[:, -k:] += alpha * direction.vectors[layer]  # slot j at the j-th of the last k positions

    want = ref.plain_adding(vlm, batch.inputs, layers, add)
    got = P.steer(vlm, batch, pairs, direction, alpha=alpha, layers=layers, keep_logits=True)
    assert (got.intervened.logits - want).abs().max().item() <= 1e-5
    assert got.effect.abs().max().item() > 1e-4
    zero = P.steer(vlm, batch, pairs, direction, alpha=0.0, keep_logits=True)
    assert (zero.intervened.logits - ref.plain(vlm, batch.inputs)).abs().max().item() <= 1e-6
    with pytest.raises(P.PatchingError, match="where='answer'"):
        P.steer(vlm, batch, pairs, direction, alpha=1.0, where="all")


def _steering_setup(cases):
    """Tiny llava, four items with their pairs, and an instruction direction scaled to norm 5
    (strong enough to move some answers of a random model)."""
    vlm = load_vlm(tiny_model("llava"))
    items = cases.TARGET + cases.SOURCE
    pairs = [candidate_pair(vlm.tokenizer, t, v) for t, v in cases.ANSWERS + [("blue", "red"), ("green", "purple")]]
    direction = P.instruction_direction(vlm, items)
    direction = P.SteeringDirection(direction.vectors / direction.norms[:, None] * 5.0, "text", "image", 4, 4)
    return vlm, items, pairs, direction


def test_steering_effect_counts_what_a_hooked_forward_answers(cases, ref):
    vlm, items, pairs, direction = _steering_setup(cases)
    report = P.steering_effect(vlm, items, pairs, direction, alphas=(-2.0, 2.0), layers=[2, 3],
                               correct_only=False, n_boot=0)
    assert [r.alpha for r in report.rows] == [-2.0, 0.0, 2.0]
    batches = vlm.passes(items, ("vision", "text", "conflict"))
    h_v = entropy(ref.plain(vlm, batches["vision"].inputs))
    h_t = entropy(ref.plain(vlm, batches["text"].inputs))
    assert np.allclose(report.dh_rel, dh_rel(h_t.numpy(), h_v.numpy()), atol=1e-5)
    for row in report.rows:
        handles = []
        for layer in (2, 3):
            def hook(mod, args, out, layer=layer, alpha=row.alpha):
                out[:, -1] += alpha * direction.vectors[layer]
            handles.append(vlm.layers[layer].register_forward_hook(hook))
        try:
            top1 = ref.plain(vlm, batches["conflict"].inputs).argmax(-1)
        finally:
            for h in handles:
                h.remove()
        want = [{"text": "text", "vision": "vision"}.get(p.classify(int(t)), "other") for p, t in zip(pairs, top1)]
        assert list(row.labels) == want
        assert row.ratios.n_text == want.count("text") and row.ratios.n_vision == want.count("vision")
        assert row.curve.status == "too_few_cases"
    means = [r.mean_logit_diff for r in report.rows]
    assert len(set(np.round(means, 6))) == 3  # the alphas move the logit difference
    assert report.to_dict()["rows"][1]["tfr_shift"] in (0.0, None)


def test_steering_in_chunks_and_windows_equals_one_batch_per_window(cases):
    vlm, items, pairs, direction = _steering_setup(cases)
    kw = dict(alphas=(-2.0, 2.0), correct_only=False, n_boot=0)
    whole = [P.steering_effect(vlm, items, pairs, direction, layers=w, **kw) for w in ([2, 3], [0])]
    chunked = P.steering_effects(vlm, items, pairs, direction, windows=([2, 3], [0]), batch_size=3, **kw)
    for a, b in zip(whole, chunked):
        assert a.layers == b.layers and a.kept == b.kept
        assert np.allclose(a.dh_rel, b.dh_rel, atol=1e-5)
        for ra, rb in zip(a.rows, b.rows):
            assert ra.alpha == rb.alpha and ra.labels == rb.labels
            assert ra.mean_logit_diff == pytest.approx(rb.mean_logit_diff, abs=1e-4)
    assert whole[0].rows[0].labels != whole[1].rows[0].labels or \
        whole[0].rows[0].mean_logit_diff != pytest.approx(whole[1].rows[0].mean_logit_diff)  # windows differ
    with pytest.raises(P.PatchingError, match="batch_size"):
        P.steering_effects(vlm, items, pairs, direction, batch_size=0)
