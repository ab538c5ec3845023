"""hooks.generate: greedy decoding through nnsight equals model.generate(do_sample=False) token for
token, batched (left-padded) and unbatched, on tiny configs of five families; the stop rules;
the per-step lens; seeded sampling."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from hooks.generate import generate
from hooks.loading import load_vlm
from hooks.prompts import PromptItem
from hooks.tiny import tiny_model

STEPS = 6
ITEMS = [PromptItem("What colour is the circle ?", "The circle is blue .", Image.new("RGB", (32, 32), (200, 30, 30))),
         PromptItem("What colour ?", "It is red .", Image.new("RGB", (48, 32), (30, 30, 200)))]


@pytest.fixture(scope="module", params=["llava", "qwen2_vl", "gemma3", "idefics3", "mllama"])
def vlm(request):
    return load_vlm(tiny_model(request.param))


def _hf(vlm, batch, steps=STEPS):
    """model.generate's new tokens per row, cut after the first end token (what it pads after)."""
    with torch.no_grad():
        out = vlm.model.generate(**batch.inputs, do_sample=False, max_new_tokens=steps, pad_token_id=0)
    eos = vlm.model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    rows = []
    for row in out[:, batch.inputs["input_ids"].shape[1]:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        rows.append(row[:cut])
    return rows


@pytest.mark.parametrize("pass_name", ["conflict", "text"])
def test_greedy_equals_model_generate_batched_and_unbatched(vlm, pass_name):
    batch = vlm.passes(ITEMS, [pass_name])[pass_name]
    ours = generate(vlm, batch, max_new_tokens=STEPS)
    assert ours.tokens == _hf(vlm, batch)
    for b, item in enumerate(ITEMS):
        single = vlm.passes([item], [pass_name])[pass_name]
        assert generate(vlm, single, max_new_tokens=STEPS).tokens == [ours.tokens[b]]


def test_per_step_lens_last_layer_is_the_generated_token(vlm):
    batch = vlm.passes(ITEMS, ["conflict"])["conflict"]
    g = generate(vlm, batch, max_new_tokens=4, lens_top_k=3)
    assert g.step_top_ids.shape[:2] == (2, len(max(g.tokens, key=len)))
    assert g.step_top_ids.shape[2] == vlm.n_layers + 1
    for b, toks in enumerate(g.tokens):
        assert g.step_top_ids[b, :len(toks), -1, 0].tolist() == toks  # lens of the last layer = logits


def test_stop_string_and_budget():
    vlm = load_vlm(tiny_model("llava"))
    batch = vlm.passes(ITEMS[1:], ["conflict"])["conflict"]
    free = generate(vlm, batch, max_new_tokens=STEPS)
    assert free.stop == ["max_new_tokens"] and len(free.tokens[0]) == STEPS
    # stop at the text of the second generated token: the text is cut before it, the tokens kept
    second = vlm.tokenizer.decode(free.tokens[0][1:2], skip_special_tokens=True).strip()
    stopped = generate(vlm, batch, max_new_tokens=STEPS, stop_strings=[second])
    assert stopped.stop == ["stop_string"] and second not in stopped.text[0]
    assert stopped.tokens[0] == free.tokens[0][:len(stopped.tokens[0])] and len(stopped.tokens[0]) <= 2
    assert generate(vlm, batch, max_new_tokens=2).tokens[0] == free.tokens[0][:2]
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(vlm, batch, max_new_tokens=0)


def test_eos_ends_a_row_and_sampling_is_seeded():
    vlm = load_vlm(tiny_model("llava"))
    batch = vlm.passes(ITEMS, ["conflict"])["conflict"]
    greedy = generate(vlm, batch, max_new_tokens=STEPS)
    # top_k=1 sampling is greedy whatever the seed (an independent route to the same tokens)
    assert generate(vlm, batch, max_new_tokens=STEPS, do_sample=True, top_k=1, seed=9).tokens == greedy.tokens
    a = generate(vlm, batch, max_new_tokens=STEPS, do_sample=True, temperature=5.0, seed=3)
    b = generate(vlm, batch, max_new_tokens=STEPS, do_sample=True, temperature=5.0, seed=3)
    assert a.tokens == b.tokens
    for toks, stop in zip(a.tokens, a.stop):
        assert (stop == "eos") == (toks[-1] == 2) and (stop == "eos" or len(toks) == STEPS)
