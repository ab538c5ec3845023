"""The answer readout: the logit lens's quantities at the answer position, a forced prefix, and the
correct-in-both filter on two unimodal readouts."""

from __future__ import annotations

import pytest
import torch

import hooks.interventions as P
from hooks.loading import load_vlm
from hooks.prompts import append_tokens
from hooks.tiny import tiny_model
from interp.candidates import CandidatePair, answer_tokens, candidate_pair
from interp.logit_lens import trajectory_from_logits
from interp.uncertainty import entropy


def test_readout_agrees_with_the_logit_lens_trajectory(vlm, cases, ref):
    target = cases.conflict(vlm, cases.TARGET)
    tok = vlm.tokenizer
    # several ids per side (synonyms) exercise the log-sum-exp
    pairs = [candidate_pair(tok, "purple", "blue", text_synonyms=["grape"], vision_synonyms=["sky", "sea"]),
             candidate_pair(tok, "red", "green", text_synonyms=["tomato"])]
    logits = ref.plain(vlm, target.inputs)
    got = P.readout(logits, pairs)
    for b, pair in enumerate(pairs):
        traj = trajectory_from_logits(pair, logits[b:b + 1].numpy())
        assert got.logit_diff[b].item() == pytest.approx(traj.logit_diff[0], abs=1e-5)
        assert got.log_p_text[b].exp().item() == pytest.approx(traj.p_text[0], abs=1e-6)
        assert got.log_p_vision[b].exp().item() == pytest.approx(traj.p_vision[0], abs=1e-6)
    assert torch.allclose(got.entropy, entropy(logits), atol=1e-6)


def test_a_prefix_pair_is_read_after_the_forced_prefix(cases, ref):
    vlm = load_vlm(tiny_model("llava"))
    tok = vlm.tokenizer
    the = tok.convert_tokens_to_ids("the")
    text, vision = answer_tokens(tok, "purple"), answer_tokens(tok, "blue")
    prefixed = [CandidatePair(text, vision, (the,), text.first_ids, vision.first_ids)] * 2
    target = cases.conflict(vlm, cases.TARGET)
    forced = append_tokens(target, [[the], [the]])
    result = P.knockout(vlm, target, prefixed, keys=[[], []], keep_logits=True)
    assert (result.clean.logits - ref.plain(vlm, forced.inputs)).abs().max().item() <= 1e-5


def test_answers_and_kept_in_both_follow_the_label_rule():
    """`AnswerReadout.answers` names the answer each top-1 token stands for ("" for neither), and
    `kept_in_both` keeps exactly the cases labelled "vision" in the vision-only pass and "text"
    in the text-only pass, the rule it replaced."""
    tok = load_vlm(tiny_model("llava")).tokenizer
    pairs = [candidate_pair(tok, "red", "blue"), candidate_pair(tok, "green", "purple", text_synonyms=["grass"]),
             candidate_pair(tok, "yellow", "pink"), candidate_pair(tok, "white", "black"),
             candidate_pair(tok, "orange", "brown")]

    def hand_built(words):
        z = torch.zeros(len(words))
        top1 = torch.tensor([tok.convert_tokens_to_ids(w) for w in words])
        return P.AnswerReadout(z, z, z, torch.tensor([0]), z[:, None], top1, z)

    vision = hand_built(["blue", "purple", "yellow", "black", "the"])
    text = hand_built(["red", "grass", "yellow", "circle", "orange"])
    assert vision.labels(pairs) == ["vision", "vision", "text", "vision", "other"]
    assert text.labels(pairs) == ["text", "text", "text", "other", "text"]
    assert vision.answers(pairs) == ["blue", "purple", "yellow", "black", ""]
    assert text.answers(pairs) == ["red", "green", "yellow", "", "orange"]
    assert hand_built(["blue", "purple", "yellow", "black", "the"] * 2).answers(pairs) == vision.answers(pairs) * 2
    rule = [v == "vision" and t == "text" for v, t in zip(vision.labels(pairs), text.labels(pairs))]
    assert P.kept_in_both(vision, text, pairs) == rule == [True, True, False, False, False]
