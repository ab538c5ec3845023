"""hooks.similarity: the per-layer means and cosines equal a computation from output_hidden_states
alone to 1e-5; retrieval accuracy on hand-built vectors."""

from __future__ import annotations

import pytest
import torch

from hooks.loading import load_vlm
from hooks.prompts import PromptItem
from hooks.similarity import cosine_by_layer, group_means, retrieval_accuracy
from hooks.tiny import tiny_model
from interp.datasets.formats import ConsistencyItem, Variant, item_formats

ITEMS = [ConsistencyItem("a", "jsonl", "What colour is the circle ?", "blue", context="The circle is blue ."),
         ConsistencyItem("b", "jsonl", "What colour ?", "red", context="It is red .")]


def _passes(vlm):
    mixed = [item_formats(it, Variant("v", dpi=50))["mixed"] for it in ITEMS]
    image = vlm.passes([PromptItem(m.question, None, m.image) for m in mixed], ["vision"])["vision"]
    text = vlm.passes([PromptItem(it.question, it.context) for it in ITEMS], ["text"])["text"]
    return image, text


def _reference(vlm, batch, group):
    with torch.no_grad():
        hs = vlm.model(**batch.inputs, output_hidden_states=True).hidden_states
    rows = []
    for b, g in enumerate(batch.geometry):
        pos = g.positions(group)
        rows.append(torch.stack([h[b, pos].double().mean(0) for h in hs]))
    return torch.stack(rows)  # (batch, layer, d)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "gemma3"])
def test_cosine_equals_output_hidden_states(family):
    vlm = load_vlm(tiny_model(family))
    image, text = _passes(vlm)
    a, b = group_means(vlm, image, "image"), group_means(vlm, text, "context")
    ra, rb = _reference(vlm, image, "image"), _reference(vlm, text, "context")
    # hidden_states' last entry is after the final norm in HF; our last layer is before it
    n = min(ra.shape[1], a.shape[1]) - 1
    assert a.shape[1] == vlm.n_layers + 1
    assert torch.allclose(a[:, :n].double(), ra[:, :n], atol=1e-5)
    assert torch.allclose(b[:, :n].double(), rb[:, :n], atol=1e-5)
    ref_cos = torch.nn.functional.cosine_similarity(ra[:, :n], rb[:, :n], dim=-1)
    assert torch.allclose(cosine_by_layer(a, b)[:, :n].double(), ref_cos, atol=1e-5)


def test_retrieval_accuracy_hand_built():
    a = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 1.0]]])  # (3 rows, 1 layer, 2)
    b = torch.tensor([[[1.0, 0.1]], [[0.1, 1.0]], [[-1.0, 0.0]]])
    # a0 -> b0 (yes), a1 -> b1 (yes), a2 -> b0 or b1 (no): 2/3; b0 -> a0, b1 -> a1, b2 -> a1 (cos 0 > -0.7): 2/3
    acc = retrieval_accuracy(a, b)
    assert acc["a_to_b"].tolist() == pytest.approx([2 / 3])
    assert acc["b_to_a"].tolist() == pytest.approx([2 / 3])
    assert cosine_by_layer(a, a).flatten().tolist() == pytest.approx([1.0, 1.0, 1.0])
