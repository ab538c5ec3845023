"""A vision-tower pretraining stage, before the VLM is trained: form first, then language.

Measured (docs/datasets.md, "The tower alone"): trained end to end through the answer token,
the tower's image tokens carry colour but hardly form, and binding a colour to the asked shape
among distractors stays near chance. Trained alone, with a small reader in place of the
language model and freshly drawn scenes every step, the same tower learns it, slowly.
**[ours]** `pretrain_steps > 0` runs that stage first:

- the **reader** (`Reader`, used here only and then dropped): one attention layer whose query is
  a learnt embedding of what is asked (a shape: "what colour is it?"; a colour: "what shape is
  the object of this colour?"; `READ`: "what word is written?") over the projected tower states
  that the VLM's projector will read (`vision_feature_layer` = -2), then an MLP and a classifier
  over the 13 answer words (6 colours, 7 shapes);
- each step samples colour scenes from the VLM stage's pool (the asked shape is the target; of
  visual tiers <= `pretrain_max_tier`, all 14 by default), shape-set scenes of its 4 tiers from
  the shape pool (the asked colour is the target's), and renders colour words afresh
  (`reading.word_image`), in the shares `pretrain_shares` (`PRETRAIN_SHARES` by default; drawing
  scenes afresh every step costs as much as the step itself). Measured (docs/datasets.md, "The
  ceiling was the pretraining mix's"): the tower alone on the colour task of tiers 0-6 reads them
  at 0.83 after 4,000 steps, where this stage's default mix leaves 0.63-0.67;
- plus, with `pretrain_aux > 0`, the patch loss of `modality_lens.tiny_vlm.aux` on the scenes
  (shape and colour of the object covering each patch), and with `pretrain_word_aux > 0` its
  word loss on the rendered words (the word on each patch with ink: `aux.WordPatchHead`);
- AdamW at `pretrain_lr`, the warm-up and cosine decay of the main stage, gradients clipped to 1.

Deterministic for a seed (each step's draws come from a generator seeded by (seed, step)). The
saved model is a stock `LlavaForConditionalGeneration`: only the tower's weights come out of this
stage, and with `projector_from_reader` the projector's, copied from the reader's input MLP
(`copy_reader_projector`; the reader's width is the language model's, so its Linear-GELU-Linear
has the projector's shape). Measured (docs/datasets.md): the projector that the VLM stage trains
from scratch keeps the colour and drops the binding of colour to shape that the tower carries;
the reader's, which was trained to read that binding, keeps it. The reader's attention and the
patch heads are discarded.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from interp.datasets.drawing import COLOURS, SHAPES
from modality_lens.tiny_vlm.aux import PatchHead, WordPatchHead, word_patch_labels
from modality_lens.tiny_vlm.mix import ScenePool
from modality_lens.tiny_vlm.reading import ShapePool, word_image
from modality_lens.tiny_vlm.recipe import TinyVLMConfig

__all__ = ["Reader", "pretrain_tower", "cosine_lr", "copy_reader_projector", "PRETRAIN_SHARES", "ANSWERS", "READ"]

ANSWERS: tuple[str, ...] = COLOURS + SHAPES
"""The reader's answer words, in this order."""
READ = len(SHAPES) + len(COLOURS)
"""The query index of "what word is written?" (queries: the shapes, then the colours, then READ)."""
PRETRAIN_SHARES = TinyVLMConfig.pretrain_shares
"""Shares of a pretraining batch by default (`TinyVLMConfig.pretrain_shares`): colour scenes,
shape-set scenes, rendered words **[ours]**."""
_STREAM = 23


class Reader(nn.Module):
    """What is asked (a query index) attends over tower states; returns logits over `ANSWERS`."""

    def __init__(self, width: int, dim: int = 128, heads: int = 4) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(width, dim), nn.GELU(), nn.Linear(dim, dim))
        self.query = nn.Embedding(READ + 1, dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.out = nn.Linear(dim, len(ANSWERS))

    def forward(self, states: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        keys = self.proj(states)
        q = self.query(query)[:, None]
        z = q + self.attn(q, keys, keys, need_weights=False)[0]
        return self.out((z + self.mlp(z))[:, 0])


def _tower_states(tower: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """The tower states the VLM's projector reads: hidden_states[-2] without the class token."""
    return tower(pixel_values=pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]


def _batch(cfg: TinyVLMConfig, step: int, n: int, pool: ScenePool, shapes: ShapePool, patch: bool):
    """(images, query indices, answer indices, patch labels or None per image, keys) of one step:
    scenes sampled from the pools (as the VLM stage samples them), words drawn afresh. `keys`
    names each pooled image (("colour", i) or ("shape", j)) and is None for a fresh word, so that
    `_pixels` processes a pooled image once."""
    n_colour, n_shape = round(n * cfg.pretrain_shares[0]), round(n * cfg.pretrain_shares[1])
    n_word = n - n_colour - n_shape
    rng = np.random.default_rng([cfg.seed, _STREAM, step])
    allowed = np.flatnonzero(pool.visual_tier <= cfg.pretrain_max_tier)
    i, j = allowed[rng.integers(len(allowed), size=n_colour)], rng.integers(len(shapes), size=n_shape)
    words = rng.integers(len(COLOURS), size=n_word)
    images = ([pool.images[k] for k in i] + [shapes.images[k] for k in j]
              + [word_image(COLOURS[w], cfg.image_size, rng) for w in words])
    query = np.concatenate([pool.target_shape[i], len(SHAPES) + shapes.target_colour[j], np.full(n_word, READ)])
    answer = np.concatenate([pool.target_colour[i], len(COLOURS) + shapes.target_shape[j], words])
    labels: list[np.ndarray | None] = ([pool.patches[k] for k in i] + [shapes.patches[k] for k in j] if patch
                                       else [None] * (n_colour + n_shape))
    keys = [("colour", int(k)) for k in i] + [("shape", int(k)) for k in j] + [None] * n_word
    return images, torch.as_tensor(query), torch.as_tensor(answer), labels + [None] * n_word, keys


def _pixels(image_processor: Any, images: list[Any], keys: list[Any], cache: dict[Any, torch.Tensor]) -> torch.Tensor:
    """The processor's pixel_values of `images`, each pooled one (a key not None) processed once
    and kept in `cache`. The processor treats each image on its own (resize, rescale, normalise),
    so the stack is the tensor it returns for the whole list, to the last bit (tested)."""
    fresh = [k for k, key in enumerate(keys) if key is None or key not in cache]
    done = dict(zip(fresh, image_processor(images=[images[k] for k in fresh], return_tensors="pt")["pixel_values"]
                    if fresh else ()))
    cache.update({keys[k]: value for k, value in done.items() if keys[k] is not None})
    return torch.stack([done[k] if k in done else cache[key] for k, key in enumerate(keys)])


def cosine_lr(step: int, peak: float, warmup: int, total: int) -> float:
    """A linear warm-up to `peak` over `warmup` steps, then a cosine decay to 5% of it at `total`
    (every training stage's schedule)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def _lr(step: int, cfg: TinyVLMConfig) -> float:
    return cosine_lr(step, cfg.pretrain_lr, min(cfg.warmup, max(1, cfg.pretrain_steps // 10)), cfg.pretrain_steps)


def pretrain_tower(model: Any, processor: Any, cfg: TinyVLMConfig, pool: ScenePool, shapes: ShapePool, *,
                   log_every: int = 100, progress: Any = None) -> dict[str, Any]:
    """Train `model`'s vision tower in place for `cfg.pretrain_steps` steps on scenes of `pool`
    and `shapes` (with patch labels when `cfg.pretrain_aux > 0`) and fresh rendered words (with
    the word loss when `cfg.pretrain_word_aux > 0`);
    returns the log (losses and the reader's accuracy on each logged stretch's batches, wall time);
    with `cfg.projector_from_reader` the model's projector is the reader's input MLP afterwards."""
    if shapes is None:
        raise ValueError("the pretraining stage needs shape-set scenes: set n_shape_scenes > 0")
    if not (pool.visual_tier <= cfg.pretrain_max_tier).any():
        raise ValueError(f"the scene pool has no colour scene of visual tier <= pretrain_max_tier "
                         f"({cfg.pretrain_max_tier}); raise pretrain_max_tier or draw those tiers")
    if cfg.pretrain_aux > 0 and (pool.patches is None or shapes.patches is None):
        raise ValueError("pretrain_aux > 0 needs pools drawn with patch labels (`patch=cfg.patch_size`)")
    tower = model.model.vision_tower
    reader = Reader(cfg.vision_hidden, dim=cfg.text_hidden)
    head = PatchHead(cfg.vision_hidden) if cfg.pretrain_aux > 0 else None
    word_head = WordPatchHead(cfg.vision_hidden) if cfg.pretrain_word_aux > 0 else None
    params = [*tower.parameters(), *reader.parameters(), *(head.parameters() if head else ()),
              *(word_head.parameters() if word_head else ())]
    opt = torch.optim.AdamW(params, lr=cfg.pretrain_lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    start, history, running, cache = time.time(), [], [], {}
    tower.train()
    for step in range(cfg.pretrain_steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg)
        images, query, answer, labels, keys = _batch(cfg, step, cfg.pretrain_batch, pool, shapes, head is not None)
        pixels = _pixels(processor.image_processor, images, keys, cache)
        states = _tower_states(tower, pixels)
        logits = reader(states, query)
        loss = nn.functional.cross_entropy(logits, answer)
        if head is not None:
            loss = loss + cfg.pretrain_aux * head.loss(states, labels)
        if word_head is not None:
            words = [word_patch_labels(image, cfg.patch_size, int(a)) if q == READ else None
                     for image, q, a in zip(images, query.tolist(), answer.tolist())]
            loss = loss + cfg.pretrain_word_aux * word_head.loss(states, words)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        running.append((float(loss.detach()), float((logits.argmax(-1) == answer).float().mean())))
        if (step + 1) % log_every == 0 or step + 1 == cfg.pretrain_steps:
            loss_mean, acc = np.mean(running, axis=0)
            history.append({"step": step + 1, "loss": float(loss_mean), "batch_accuracy": float(acc),
                            "elapsed_s": time.time() - start})
            running = []
            if progress is not None:
                progress(history[-1])
    if cfg.projector_from_reader:
        copy_reader_projector(reader, model)
    return {"history": history, "wall_s": time.time() - start}


def copy_reader_projector(reader: Reader, model: Any) -> None:
    """Set `model`'s projector (linear_1, GELU, linear_2) to `reader`'s input MLP (the same shape)."""
    projector = model.model.multi_modal_projector
    act = getattr(model.config, "projector_hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(f"the reader's MLP uses an exact GELU; the projector's activation is {act!r}")
    with torch.no_grad():
        for mine, theirs in ((projector.linear_1, reader.proj[0]), (projector.linear_2, reader.proj[2])):
            if mine.weight.shape != theirs.weight.shape:
                raise ValueError(f"the projector's {tuple(mine.weight.shape)} and the reader's "
                                 f"{tuple(theirs.weight.shape)} differ: the reader's width must be the text width")
            mine.weight.copy_(theirs.weight)
            mine.bias.copy_(theirs.bias)

