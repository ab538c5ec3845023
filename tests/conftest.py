"""Fixtures shared by the test modules (no test module imports another)."""

from __future__ import annotations

import functools

import pytest
import torch
from PIL import Image, ImageDraw

from hooks.prompts import PromptItem

QUESTION = "What colour is the circle ? Please use one word to answer this question ."
CONTEXTS = ["The circle is blue .", "The circle 's colour is the same as a ripe tomato .", "The circle is green .",
            "It is purple ."]


def circle(colour, size=(48, 32)) -> Image.Image:
    """A filled circle of `colour` on white (the prompts' images; also built into module constants)."""
    im = Image.new("RGB", size, (255, 255, 255))
    ImageDraw.Draw(im).ellipse([4, 4, size[0] - 5, size[1] - 5], fill=colour)
    return im


HEAD_ITEMS = [PromptItem(QUESTION, "The circle is purple .", circle((30, 60, 220))),
              PromptItem(QUESTION, "It is red .", circle((30, 200, 30))),
              PromptItem("What colour is the circle ?", "The small circle is green and round .", circle((220, 30, 30)))]
"""Three conflict items of different lengths (left padding in a batch): the head-level tests' set."""
HEAD_ANSWERS = [("purple", "blue"), ("red", "green"), ("green", "red")]
"""(text answer, image answer) of each of `HEAD_ITEMS`."""


@functools.cache
def cached_vlm(family: str):
    """`load_vlm(tiny_model(family))`, loaded once per test session."""
    from hooks.loading import load_vlm
    from hooks.tiny import tiny_model

    return load_vlm(tiny_model(family))


@pytest.fixture(scope="session")
def items() -> list[PromptItem]:
    """Four prompts of different lengths, image sizes and contexts (batching, padding, geometry)."""
    return [
        PromptItem(QUESTION, CONTEXTS[0], circle((220, 30, 30))),
        PromptItem("What colour is the circle ?", CONTEXTS[1], circle((30, 60, 220), (32, 32))),
        PromptItem(QUESTION, CONTEXTS[2], circle((30, 200, 30), (40, 40))),
        PromptItem("What colour ?", CONTEXTS[3], circle((150, 30, 200), (32, 48))),
    ]


@pytest.fixture(scope="session")
def circle_item():
    """`circle_item(rgb)`: the first prompt of `items` with a circle of another colour."""
    return lambda colour: PromptItem(QUESTION, CONTEXTS[0], circle(colour))


def _layer0_input(vlm, inputs):
    out = []
    vlm.adapter.reset_state(vlm.model)
    with torch.no_grad(), vlm.nn.trace(**inputs):
        out.append(vlm.envoy_layers()[0].input.save())
    return out[0]


@pytest.fixture(scope="session")
def layer0_input():
    """`layer0_input(vlm, inputs)`: the input of decoder layer 0 (the embeddings, image features merged)."""
    return _layer0_input
