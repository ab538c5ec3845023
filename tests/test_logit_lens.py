"""Layer trajectories: hand-worked values, and the reduced path against the full-logits path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hooks.loading import load_vlm
from hooks.prompts import append_tokens
from hooks.tiny import tiny_model
from interp.candidates import CandidatePair, answer_tokens, candidate_pair
from interp.logit_lens import trajectories, trajectory_from_logits



def _pair(text_ids, vision_ids):
    dummy = answer_tokens(type("T", (), {"encode": lambda self, s, add_special_tokens=False: [1]})(), "x")
    return CandidatePair(dummy, dummy, (), frozenset(text_ids), frozenset(vision_ids))


def test_hand_worked_trajectory():
    # vocab of 4: ids 0 (text), 1 and 2 (vision variants), 3 (other)
    logits = np.array([
        [0.0, 0.0, 0.0, 0.0],                  # uniform: top-1 is id 0 (argmax takes the first)
        [math.log(6), math.log(2), math.log(1), math.log(1)],
        [0.0, math.log(3), math.log(3), math.log(5)],
    ])
    traj = trajectory_from_logits(_pair({0}, {1, 2}), logits)
    assert traj.classes == ("text", "text", "irrelevant")
    # layer 1: probabilities 6/10, 2/10, 1/10, 1/10
    assert traj.p_text[1] == pytest.approx(0.6) and traj.p_vision[1] == pytest.approx(0.3)
    assert traj.logit_diff[1] == pytest.approx(math.log(6) - math.log(3))  # log(6) - log(2 + 1)
    assert traj.entropy[0] == pytest.approx(math.log(4))
    h1 = -(0.6 * math.log(0.6) + 0.2 * math.log(0.2) + 2 * 0.1 * math.log(0.1))
    assert traj.entropy[1] == pytest.approx(h1)
    # layer 2: probabilities 1/12, 3/12, 3/12, 5/12; vision = 1/2; top-1 is id 3
    assert traj.p_vision[2] == pytest.approx(0.5) and traj.p_text[2] == pytest.approx(1 / 12)
    assert traj.logit_diff[2] == pytest.approx(-math.log(6))


def test_reduced_lens_equals_full_logits_path(items):
    vlm = load_vlm(tiny_model("qwen2_5_vl"))
    tok = vlm.tokenizer
    pairs = [candidate_pair(tok, "blue", "red"), candidate_pair(tok, "tomato", "red"),
             candidate_pair(tok, "green", "purple", text_synonyms=["grass"]), candidate_pair(tok, "purple", "red")]
    batch = vlm.passes(items, ("conflict",))["conflict"]
    ids = sorted({t for p in pairs for t in p.ids})
    full = vlm.lens(batch, keep_logits=True)
    reduced = vlm.lens(batch, keep_logits=False, candidate_ids=ids)
    assert reduced.logits is None
    for b, (pair, traj) in enumerate(zip(pairs, trajectories(pairs, reduced))):
        ref = trajectory_from_logits(pair, full.logits[b].numpy())
        assert traj.classes == ref.classes
        np.testing.assert_allclose(traj.p_text, ref.p_text, atol=1e-6)
        np.testing.assert_allclose(traj.logit_diff, ref.logit_diff, atol=1e-5)
        np.testing.assert_allclose(traj.entropy, ref.entropy, atol=1e-5)


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl", "mllama", "paligemma", "gemma3"])
def test_teacher_forced_prefix_equals_prompt_with_the_prefix(family, items):
    """append_tokens(batch, prefix) gives the same lens as encoding prompt + prefix directly."""
    vlm = load_vlm(tiny_model(family))
    tok = vlm.tokenizer
    items = [items[0], items[3]]
    prefixes = [tok.encode("the ripe", add_special_tokens=False), tok.encode("a", add_special_tokens=False)]
    forced = append_tokens(vlm.passes(items, ("conflict",))["conflict"], prefixes)
    got = vlm.lens(forced).logits
    for b, (item, prefix) in enumerate(zip(items, prefixes)):
        base = vlm.passes([item], ("conflict",))["conflict"]
        direct = append_tokens(base, [prefix])  # single row: no re-padding involved
        assert direct.inputs["input_ids"][0, -len(prefix):].tolist() == prefix
        want = vlm.lens(direct).logits[0]
        assert (got[b] - want).abs().max().item() <= 1e-4
        g = forced.geometry[b]
        assert g.answer_position == forced.inputs["input_ids"].shape[1] - 1
        assert forced.inputs["input_ids"][b, g.question_span[0]:g.question_span[1]].tolist() == \
            tok(item.question, add_special_tokens=False)["input_ids"]
    # an independent reference: the prompt text with the prefix words appended, through the processor
    if vlm.processor.chat_template:
        prompt = forced.prompts[0] + " the ripe"
        enc = vlm.processor(text=[prompt], images=[[items[0].image]], return_tensors="pt")
        enc.pop("labels", None)
        vlm.adapter.reset_state(vlm.model)
        with torch.no_grad():
            ref = vlm.model(**enc).logits[0, -1]
        assert (got[0, -1] - ref).abs().max().item() <= 1e-4


def test_the_row_logsumexp_equals_scipys_including_minus_infinity():
    from scipy.special import logsumexp

    from interp.logit_lens import _logsumexp_rows

    rng = np.random.default_rng(0)
    z = rng.normal(scale=30, size=(9, 5))
    z[2, 1:] = -np.inf  # one finite entry
    z[4, :] = -np.inf  # nothing finite: -inf, as scipy gives
    z[6, 0] = 700.0  # exp would overflow without the shift
    np.testing.assert_allclose(_logsumexp_rows(z), logsumexp(z, axis=-1), rtol=1e-12, atol=0)
    assert _logsumexp_rows(z)[4] == -np.inf
