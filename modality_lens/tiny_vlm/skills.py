"""Held-out checks of the skills beyond the colour task: reading rendered text and the shape task.

`reading_metrics` asks the model what a rendered colour word says (tier 0: black, centred,
each of the three fonts at 1, 3/4 and 1/2 of the largest size that fits; "placed": random
font, size and place as in training; "ink": the word in another palette colour), what colour a
rendered context sentence gives the asked shape, and, on colour scenes with a sign, both what
the sign says and the target's colour. Answers are the model's top-1 token over the whole
vocabulary. `shape_metrics` runs the three passes on the 2-D shape set (conflict cases) and
reports per-tier accuracy and how many cases the correct-in-both filter keeps.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from hooks.prompts import render_prompt
from interp.datasets.drawing import COLOURS, SHAPES
from interp.datasets.render import FONTS
from interp.datasets.shapes import shape_cases
from interp.datasets.text import COLOUR_QUESTION, INSTRUCTION, text_context
from modality_lens.pipeline import iter_rows
from modality_lens.tiny_vlm.reading import (READ_QUESTION, TIER0_SCALES, context_image, sign_scene, word_image,
                                            word_image_tier0)

__all__ = ["answers", "reading_metrics", "shape_metrics"]


def answers(vlm: Any, questions: Sequence[str], images: Sequence[Any], batch_size: int = 32) -> list[str]:
    """The model's top-1 answer word to each (question, image), over the whole vocabulary."""
    out: list[str] = []
    proc = vlm.processor
    for start in range(0, len(questions), batch_size):
        qs, ims = questions[start:start + batch_size], images[start:start + batch_size]
        prompts = [render_prompt(proc, question=q, with_image=True) for q in qs]
        inputs = proc(text=prompts, images=[[im] for im in ims], return_tensors="pt", padding=True)
        with torch.no_grad():
            logits = vlm.model(**{k: v.to(vlm.device) for k, v in inputs.items()}).logits[:, -1, :]
        out += [vlm.tokenizer.decode([int(i)]).strip() for i in logits.argmax(-1)]
    return out


def _share(got: Sequence[str], want: Sequence[str]) -> float:
    return float(np.mean([g == w for g, w in zip(got, want)]))


def reading_metrics(vlm: Any, *, seed: int = 1000, image_size: int = 64, n: int = 120) -> dict[str, Any]:
    rng = np.random.default_rng([seed, 23])
    read = f"{READ_QUESTION} {INSTRUCTION}"
    out: dict[str, Any] = {"seed": seed}
    tier0 = [(w, f, s) for w in COLOURS for f in sorted(FONTS) for s in TIER0_SCALES]
    got = answers(vlm, [read] * len(tier0), [word_image_tier0(w, image_size, f, s) for w, f, s in tier0])
    out["word_tier0"] = {"n": len(tier0), "accuracy": _share(got, [w for w, _, _ in tier0]),
                         "by_scale": {str(s): _share([g for g, t in zip(got, tier0) if t[2] == s],
                                                     [t[0] for t in tier0 if t[2] == s]) for s in TIER0_SCALES}}
    words = [COLOURS[int(rng.integers(len(COLOURS)))] for _ in range(n)]
    got = answers(vlm, [read] * n, [word_image(w, image_size, rng, coloured_share=0.0) for w in words])
    out["word_placed"] = {"n": n, "accuracy": _share(got, words)}
    ink = [(w, c) for w in COLOURS for c in COLOURS if c != w]
    got = answers(vlm, [read] * len(ink), [word_image_tier0(w, image_size, colour=c) for w, c in ink])
    out["word_ink"] = {"n": len(ink), "accuracy": _share(got, [w for w, _ in ink]),
                       "answered_ink": _share(got, [c for _, c in ink])}
    for tier in (0, 1):
        shapes = [SHAPES[int(rng.integers(len(SHAPES)))] for _ in range(n)]
        colours = [COLOURS[int(rng.integers(len(COLOURS)))] for _ in range(n)]
        images = [context_image(text_context(tier, s, c, rng), image_size, rng) for s, c in zip(shapes, colours)]
        got = answers(vlm, [f"{COLOUR_QUESTION.format(shape=s)} {INSTRUCTION}" for s in shapes], images)
        out[f"context_tier{tier}"] = {"n": n, "accuracy": _share(got, colours)}
    out["sign"] = _sign_metrics(vlm, rng, image_size, n)
    return out


def _sign_metrics(vlm: Any, rng: np.random.Generator, image_size: int, n: int) -> dict[str, Any]:
    """Colour scenes of visual tiers 0-4 with a sign naming a colour absent from the scene."""
    rows = []
    for k in range(n):
        shape, colour = SHAPES[int(rng.integers(len(SHAPES)))], COLOURS[int(rng.integers(len(COLOURS)))]
        word = COLOURS[int(rng.choice([i for i, c in enumerate(COLOURS) if c != colour]))]
        image, _ = sign_scene(k % 5, shape, colour, word, image_size, rng,
                              distractor_shapes=[s for s in SHAPES if s != shape],
                              distractor_colours=[c for c in COLOURS if c not in (colour, word)])
        rows.append((shape, colour, word, image))
    read = answers(vlm, [f"{READ_QUESTION} {INSTRUCTION}"] * n, [r[3] for r in rows])
    asked = answers(vlm, [f"{COLOUR_QUESTION.format(shape=r[0])} {INSTRUCTION}" for r in rows], [r[3] for r in rows])
    return {"n": n, "read_accuracy": _share(read, [r[2] for r in rows]),
            "colour_accuracy": _share(asked, [r[1] for r in rows]),
            "colour_answered_sign": _share(asked, [r[2] for r in rows])}


def shape_metrics(vlm: Any, *, n_per_cell: int = 16, seed: int = 1000, image_size: int = 64,
                  batch_size: int = 32, progress: bool = False) -> dict[str, Any]:
    cases = list(shape_cases(n_per_cell, seed, image_size=image_size, controls=False))
    rows = [r for rs, _ in iter_rows(vlm, cases, batch_size=batch_size, progress=progress) for r in rs]
    kept = [r for r in rows if r["kept"]]
    tiers = sorted({r["visual_tier"] for r in rows})
    return {"n_cases": len(rows), "n_kept": len(kept), "kept_share": len(kept) / max(1, len(rows)),
            "labels_kept": {k: sum(r["label"] == k for r in kept) for k in ("text", "vision", "other")},
            "vision_accuracy": [float(np.mean([r["vision_correct"] for r in rows if r["visual_tier"] == t]))
                                for t in tiers],
            "text_accuracy": [float(np.mean([r["text_correct"] for r in rows if r["text_tier"] == t]))
                              for t in sorted({r["text_tier"] for r in rows})]}
