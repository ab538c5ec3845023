"""Steering directions: the instruction direction is the mean difference of hidden states (one
position or the last K), instructions are placed where asked, and the optimised vector is what
`steer` applies within its bound."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hooks.interventions as P
from hooks.loading import load_vlm
from hooks.tiny import tiny_model
from interp.errors import CaseError


def test_instruction_direction_is_the_mean_difference_of_hidden_states(vlm, cases, ref):
    direction = P.instruction_direction(vlm, cases.TARGET, text_instruction="use the text .",
                                        image_instruction="use the image .")
    states = []
    for instruction in ("use the text .", "use the image ."):
        batch = cases.conflict(vlm, P.with_instruction(cases.TARGET, instruction))
        assert all(instruction in p for p in batch.prompts)
        vlm.adapter.reset_state(vlm.model)
        with torch.no_grad():
            hidden = vlm.model(**batch.inputs, output_hidden_states=True).hidden_states
        # hidden_states[-1] is taken after the final norm: read the last layer's output by a hook
        last = ref.captured(vlm, batch.inputs, vlm.n_layers - 1, "resid_post")
        states.append(torch.stack([h[:, -1] for h in hidden[1:-1]] + [last[:, -1]], dim=1))  # (batch, layer, d)
    want = states[0].mean(0) - states[1].mean(0)
    assert torch.allclose(direction.vectors, want, atol=1e-5)
    assert torch.allclose(direction.state_norms, torch.cat(states).norm(dim=-1).mean(0), atol=1e-5)
    relative, moved = direction.relative(), direction.norms > 0
    assert torch.allclose(relative.norms[moved], direction.state_norms[moved], rtol=1e-5)
    assert (relative.norms[~moved] == 0).all()
    cosine = torch.nn.functional.cosine_similarity(relative.vectors[moved], direction.vectors[moved], dim=-1)
    assert torch.allclose(cosine, torch.ones_like(cosine), atol=1e-5)
    assert direction.n_plus == direction.n_minus == len(cases.TARGET)


def test_a_last_positions_direction_is_the_end_aligned_mean_difference(vlm, cases, ref):
    k = 5
    kwargs = dict(text_instruction="use the text .", image_instruction="use the image .")
    direction = P.instruction_direction(vlm, cases.UNEVEN, positions=k, **kwargs)
    assert direction.positions == k and direction.vectors.shape == (vlm.n_layers, k, direction.vectors.shape[-1])
    states = [ref.end_states(vlm, cases.conflict(vlm, P.with_instruction(cases.UNEVEN, text)), k)
              for text in kwargs.values()]
    assert torch.allclose(direction.vectors, states[0].mean(0) - states[1].mean(0), atol=1e-5)
    assert torch.allclose(direction.state_norms, torch.cat(states).norm(dim=-1).mean((0, 2)), atol=1e-5)
    one = P.instruction_direction(vlm, cases.UNEVEN, **kwargs)  # the answer position alone is the last slot
    assert torch.allclose(direction.vectors[:, -1], one.vectors, atol=1e-6)
    relative, moved = direction.relative(), direction.norms > 0
    assert torch.allclose(relative.norms[moved], direction.state_norms[moved], rtol=1e-5)
    scale = relative.state_norms / direction.norms  # one scale for all k positions of a layer
    for layer in torch.nonzero(moved).flatten():
        assert torch.allclose(relative.vectors[layer], direction.vectors[layer] * scale[layer], rtol=1e-4, atol=1e-6)
    with pytest.raises(P.PatchingError, match="at least 1"):
        P.instruction_direction(vlm, cases.UNEVEN, positions=0, **kwargs)
    with pytest.raises(P.PatchingError, match="fewer than"):
        P.instruction_direction(vlm, cases.UNEVEN, positions=10_000, **kwargs)


def test_instructions_with_unknown_words_are_refused(cases):
    vlm = load_vlm(tiny_model("llava"))
    with pytest.raises(CaseError, match="zebra"):
        P.instruction_direction(vlm, cases.TARGET, text_instruction="use the zebra .")


def test_with_instruction_places_the_instruction_where_asked():
    from hooks.prompts import PromptItem

    items = [PromptItem("what colour ?", "it is red .", None), PromptItem("what shape ?", None, None, "be brief .")]
    start = P.with_instruction(items, " use the text . ", placement="start")
    assert [it.preamble for it in start] == ["use the text .", "be brief . use the text ."]
    assert [(it.question, it.context) for it in start] == [(it.question, it.context) for it in items]
    question = P.with_instruction(items, "use the text .", placement="question")
    assert [it.question for it in question] == ["use the text . what colour ?", "use the text . what shape ?"]
    assert [it.preamble for it in question] == [None, "be brief ."]
    end = P.with_instruction(items, "use the text .")  # the default: where data/tiny_vlm was trained with it
    assert [it.question for it in end] == ["what colour ? use the text .", "what shape ? use the text ."]
    assert [it.preamble for it in end] == [None, "be brief ."]
    with pytest.raises(ValueError, match="placement"):
        P.with_instruction(items, "use the text .", placement="middle")


def test_optimized_direction_is_what_steer_applies_and_respects_its_bound(vlm, cases, ref):
    target, pairs = cases.conflict(vlm, cases.TARGET), cases.pairs(vlm)
    layer = 1
    got = P.optimize_direction(vlm, target, pairs, layer=layer, max_norm=0.5, steps=8)
    # the state norm it scales by: the mean norm of resid_post at the answer position (plain hook)
    seen = []
    handle = vlm.layers[layer].register_forward_hook(lambda mod, args, out: seen.append(
        (out[0] if isinstance(out, tuple) else out)[:, -1].norm(dim=-1).mean().item()))
    try:
        ref.plain(vlm, target.inputs)
    finally:
        handle.remove()
    assert got.direction.state_norms[layer].item() == pytest.approx(seen[0], rel=1e-5)
    assert got.direction.norms[layer].item() <= 0.5 * seen[0] * (1 + 1e-5)
    others = [l for l in range(vlm.n_layers) if l != layer]
    assert (got.direction.vectors[others] == 0).all()
    # its objective values are those of the nnsight steering path with alpha 1 (and 0)
    steered = P.steer(vlm, target, pairs, got.direction, alpha=1.0, layers=[layer])
    assert got.history[0] == pytest.approx(steered.clean.logit_diff.mean().item(), abs=1e-4)
    assert got.final == pytest.approx(steered.intervened.logit_diff.mean().item(), abs=1e-4)
    assert len(got.history) == 8 and got.final > got.history[0]


def test_optimized_direction_first_step_follows_the_finite_difference_gradient(cases):
    """Adam's first step moves each coordinate by lr in the sign of the gradient: compare the
    signs with central differences of the objective taken through `steer` (no autograd)."""
    vlm = load_vlm(tiny_model("llava"))
    target, pairs = cases.conflict(vlm, cases.TARGET), cases.pairs(vlm)
    got = P.optimize_direction(vlm, target, pairs, layer=0, max_norm=100.0, steps=1, lr=0.01)
    v = got.direction.vectors[0].float()
    assert torch.allclose(v.abs(), torch.full_like(v, 0.01), rtol=1e-3)
    eps, checked = 1e-2, 0
    for i in torch.randperm(v.numel(), generator=torch.Generator().manual_seed(0))[:12].tolist():
        basis = torch.zeros_like(got.direction.vectors)
        basis[0, i] = 1.0
        e = P.SteeringDirection(basis, "e", "0", 1, 1)
        up = P.steer(vlm, target, pairs, e, alpha=eps, layers=[0]).intervened.logit_diff.mean().item()
        down = P.steer(vlm, target, pairs, e, alpha=-eps, layers=[0]).intervened.logit_diff.mean().item()
        fd = (up - down) / (2 * eps)
        if abs(fd) > 1e-4:
            checked += 1
            assert np.sign(fd) == np.sign(v[i].item()), (i, fd, v[i].item())
    assert checked >= 6


def test_optimize_direction_refuses_bad_arguments(cases):
    vlm = load_vlm(tiny_model("llava"))
    target, pairs = cases.conflict(vlm, cases.TARGET), cases.pairs(vlm)
    with pytest.raises(P.PatchingError, match="steps"):
        P.optimize_direction(vlm, target, pairs, layer=0, steps=0)
    with pytest.raises(P.PatchingError, match="max_norm"):
        P.optimize_direction(vlm, target, pairs, layer=0, max_norm=0)
