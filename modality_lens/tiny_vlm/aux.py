"""An auxiliary objective that teaches the vision tower form, used in training only.

Measured (docs/datasets.md): with the answer-token loss alone, the tower's image tokens carry
an object's colour but hardly its shape, and binding a colour to an asked shape, the shape task
and reading all need form. **[ours]** `aux_weight > 0` adds, per image token, a linear
classifier (`PatchHead`, on the tower states the projector reads) of the shape and the colour of
the object that covers most of that patch, or background (a patch less than a quarter covered
by any object is background); the drawn scenes know their objects, so the labels are exact.
Images without labels add nothing. For rendered words the pretraining stage can add a second
head (`WordPatchHead`, `pretrain_word_aux > 0`): per image token, the word that is written, on
every patch with ink (`word_patch_labels`), or background. The heads are dropped after training:
the saved model is a stock `LlavaForConditionalGeneration`. The shipped recipe uses both in its
pretraining stage (`pretrain_aux`, `pretrain_word_aux`) and neither in the VLM stage
(`aux_weight` 0); what one 600-step VLM-stage run with the patch loss measured is in
docs/datasets.md (it did not buy accuracy at that length).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from interp.datasets.drawing import COLOURS, SHAPES, shape_mask

__all__ = ["patch_labels", "word_patch_labels", "PatchHead", "WordPatchHead", "IGNORE", "INK_LEVEL"]

IGNORE = -100
"""Label of a patch (or a whole image) that adds no auxiliary loss (torch's ignore_index)."""
INK_LEVEL = 200
"""A pixel of a rendered word is ink where its darkest channel is below this (the canvas is
white; every palette colour has a channel at 0, and anti-aliased edges fade towards 255)."""


def object_map(scene: Any) -> np.ndarray:
    """Which object (index into `scene.objects`) covers each pixel, -1 for background, painted
    in drawing order as the scene was."""
    width, height = scene.image.size
    labels = np.full((height, width), -1, dtype=np.int16)
    for k, obj in enumerate(scene.objects):
        x0, y0, x1, _ = obj.box
        mask = shape_mask(obj.shape, x1 - x0)
        cy0, cx0 = max(y0, 0), max(x0, 0)
        cy1, cx1 = min(y0 + mask.shape[0], height), min(x0 + mask.shape[1], width)
        if cy0 >= cy1 or cx0 >= cx1:
            continue
        sub = mask[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
        labels[cy0:cy1, cx0:cx1][sub] = k
    return labels


def patch_labels(scene: Any, patch: int) -> np.ndarray:
    """(n_patches, 2): shape index and colour index of the object covering most of each patch
    (row-major, as the tower orders its tokens), background `len(SHAPES)` / `len(COLOURS)`. A
    patch less than a quarter covered by any object is background; among objects covering it
    equally, the one drawn first wins. Counted for all patches at once (one count per object)."""
    owner = object_map(scene)
    height, width = owner.shape
    gy, gx = height // patch, width // patch
    blocks = owner[:gy * patch, :gx * patch].reshape(gy, patch, gx, patch).transpose(0, 2, 1, 3)
    blocks = blocks.reshape(gy * gx, patch * patch)
    ids = np.arange(max(len(scene.objects), 1), dtype=blocks.dtype)  # one column even for an empty scene
    counts = (blocks[:, :, None] == ids).sum(axis=1)
    best = counts.argmax(axis=1)  # the first of the maxima: the lowest object index
    covered = counts.max(axis=1) >= patch * patch / 4
    table = np.asarray([(SHAPES.index(o.shape), COLOURS.index(o.colour)) for o in scene.objects] or [(0, 0)],
                       dtype=np.int64)
    return np.where(covered[:, None], table[best], [len(SHAPES), len(COLOURS)]).astype(np.int64)


def word_patch_labels(image: Any, patch: int, word: int) -> np.ndarray:
    """(n_patches,): `word` (its index in `COLOURS`) on each patch of `image` with a pixel of ink
    (`INK_LEVEL`), `len(COLOURS)` elsewhere; row-major, as the tower orders its tokens."""
    ink = np.asarray(image.convert("RGB")).min(axis=-1) < INK_LEVEL
    height, width = ink.shape
    gy, gx = height // patch, width // patch
    covered = ink[:gy * patch, :gx * patch].reshape(gy, patch, gx, patch).any(axis=(1, 3)).ravel()
    return np.where(covered, word, len(COLOURS)).astype(np.int64)


def _targets(labels: Sequence[np.ndarray | None], n: int, k: int) -> torch.Tensor:
    """(batch, n, k) long targets, `IGNORE` for images without labels (or of another patch count)."""
    target = torch.full((len(labels), n, k), IGNORE, dtype=torch.long)
    for b, lab in enumerate(labels):
        if lab is not None and len(lab) == n:
            target[b] = torch.as_tensor(lab).reshape(n, k)
    return target


class PatchHead(nn.Module):
    """Linear shape and colour classifiers over tower states (background included)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.shape = nn.Linear(width, len(SHAPES) + 1)
        self.colour = nn.Linear(width, len(COLOURS) + 1)

    def loss(self, states: torch.Tensor, labels: Sequence[np.ndarray | None]) -> torch.Tensor:
        """Mean cross-entropy over labelled patches of `states` (batch, patches, width)."""
        target = _targets(labels, states.shape[1], 2)
        if (target[..., 0] == IGNORE).all():
            return states.sum() * 0.0
        ce = nn.functional.cross_entropy
        return 0.5 * (ce(self.shape(states).flatten(0, 1), target[..., 0].flatten(), ignore_index=IGNORE)
                      + ce(self.colour(states).flatten(0, 1), target[..., 1].flatten(), ignore_index=IGNORE))


class WordPatchHead(nn.Module):
    """A linear classifier over tower states of the word written on a patch (background included)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.word = nn.Linear(width, len(COLOURS) + 1)

    def loss(self, states: torch.Tensor, labels: Sequence[np.ndarray | None]) -> torch.Tensor:
        """Mean cross-entropy over the patches of the images with labels (`word_patch_labels`)."""
        target = _targets(labels, states.shape[1], 1)[..., 0]
        if (target == IGNORE).all():
            return states.sum() * 0.0
        return nn.functional.cross_entropy(self.word(states).flatten(0, 1), target.flatten(), ignore_index=IGNORE)
