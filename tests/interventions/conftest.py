"""What the intervention tests share: the tiny models, the cases, and the plain-PyTorch references.

Every reference is computed independently of `hooks.interventions`: plain forwards of the model
(no nnsight), plain PyTorch forward hooks for the patched and steered runs. Tests reach the
cases through the `cases` fixture and the references through `ref` (no test module imports
another, this one included).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from hooks.loading import load_vlm
from hooks.prompts import PromptItem
from hooks.tiny import tiny_model
from interp.candidates import candidate_pair
from tests.conftest import QUESTION
from tests.conftest import circle as _image

FAMILIES = ("llava", "qwen2_5_vl", "gemma3", "paligemma2")

RED, BLUE, GREEN, PURPLE = (220, 30, 30), (30, 60, 220), (30, 200, 30), (150, 30, 200)
# Source and target rows share their layout (same question, contexts of 5 words, same image size).
SOURCE = [PromptItem(QUESTION, "The circle is blue .", _image(RED)),
          PromptItem(QUESTION, "The circle is green .", _image(PURPLE))]
TARGET = [PromptItem(QUESTION, "The circle is purple .", _image(BLUE)),
          PromptItem(QUESTION, "The circle is red .", _image(GREEN))]
ANSWERS = [("purple", "blue"), ("red", "green")]  # (text, vision) answers of the target rows
# rows of different lengths (left padding), so end-aligned positions differ in padded index
UNEVEN = TARGET + [PromptItem(QUESTION, "The small circle is green and round .", _image(RED))]


# Scoped to the folder: one model per family for every intervention test, as when they were one module.
@pytest.fixture(scope="package", params=FAMILIES)
def vlm(request):
    return load_vlm(tiny_model(request.param))


def _pairs(vlm):
    return [candidate_pair(vlm.tokenizer, t, v) for t, v in ANSWERS]


def _conflict(vlm, items):
    return vlm.passes(items, ("conflict",))["conflict"]


@pytest.fixture(scope="session")
def cases() -> SimpleNamespace:
    """The prompts and answers: `QUESTION`, `SOURCE`, `TARGET`, `ANSWERS`, `UNEVEN`, the colours,
    `image(colour)`, `pairs(vlm)` (the target rows' candidate pairs) and `conflict(vlm, items)`
    (the conflict pass of `items`)."""
    return SimpleNamespace(QUESTION=QUESTION, SOURCE=SOURCE, TARGET=TARGET, ANSWERS=ANSWERS, UNEVEN=UNEVEN,
                           RED=RED, BLUE=BLUE, GREEN=GREEN, PURPLE=PURPLE, image=_image, pairs=_pairs,
                           conflict=_conflict)


def _plain(vlm, inputs) -> torch.Tensor:
    """Last-position logits of a plain forward (no nnsight), full vocabulary."""
    vlm.adapter.reset_state(vlm.model)
    with torch.no_grad():
        return vlm.model(**inputs).logits[:, -1, :].float()


def _module(vlm, layer: int, site: str):
    block = vlm.layers[layer]
    return {"resid_pre": block, "resid_post": block, "attn_out": block.self_attn, "mlp_out": block.mlp}[site]


def _hooked(vlm, inputs, layer: int, site: str, edit) -> torch.Tensor:
    """A plain forward where `edit(tensor)` changes the site's value in place (PyTorch hooks)."""
    module = _module(vlm, layer, site)
    if site == "resid_pre":
        handle = module.register_forward_pre_hook(lambda mod, args: edit(args[0]))
    else:
        handle = module.register_forward_hook(lambda mod, args, out: edit(out[0] if isinstance(out, tuple) else out))
    try:
        return _plain(vlm, inputs)
    finally:
        handle.remove()


def _plain_adding(vlm, inputs, layers, add) -> torch.Tensor:
    """Plain-forward logits with `add(layer, output)` editing each listed layer's output in place."""
    handles = [vlm.layers[layer].register_forward_hook(
        lambda mod, args, out, layer=layer: add(layer, out[0] if isinstance(out, tuple) else out)) for layer in layers]
    try:
        return _plain(vlm, inputs)
    finally:
        for h in handles:
            h.remove()


def _captured(vlm, inputs, layer: int, site: str) -> torch.Tensor:
    store = []
    _hooked(vlm, inputs, layer, site, lambda t: store.append(t.detach().clone()))
    return store[0]


def _reference_patch(vlm, source, target, layer, site, src_pos, tgt_pos) -> torch.Tensor:
    """Target logits with source values written at the given per-row positions, by plain hooks."""
    values = _captured(vlm, source.inputs, layer, site)

    def write(t):
        for b, (s, p) in enumerate(zip(src_pos, tgt_pos)):
            t[b, list(p)] = values[b, list(s)]

    return _hooked(vlm, target.inputs, layer, site, write)


def _end_states(vlm, batch, k):
    """(batch, layer, k, d): each layer's output at the last k positions (hidden_states; the
    last layer's by a hook, since hidden_states[-1] is taken after the final norm)."""
    vlm.adapter.reset_state(vlm.model)
    with torch.no_grad():
        hidden = vlm.model(**batch.inputs, output_hidden_states=True).hidden_states
    last = _captured(vlm, batch.inputs, vlm.n_layers - 1, "resid_post")
    return torch.stack([h[:, -k:] for h in hidden[1:-1]] + [last[:, -k:]], dim=1)


@pytest.fixture(scope="session")
def ref() -> SimpleNamespace:
    """The plain-PyTorch references: `plain(vlm, inputs)`, `hooked(vlm, inputs, layer, site, edit)`,
    `plain_adding(vlm, inputs, layers, add)`, `captured(vlm, inputs, layer, site)` and
    `reference_patch(vlm, source, target, layer, site, src_pos, tgt_pos)` and
    `end_states(vlm, batch, k)`."""
    return SimpleNamespace(plain=_plain, hooked=_hooked, plain_adding=_plain_adding, captured=_captured,
                           reference_patch=_reference_patch, end_states=_end_states)
