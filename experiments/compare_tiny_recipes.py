"""Train a small-VLM recipe for a few hundred steps and print quick held-out skill checks.

    python experiments/compare_tiny_recipes.py NAME '{"text_layers": 8, "vision_hidden": 128}' --steps 600

For choosing a recipe by accuracy per training minute before a full training run
(experiments/train_tiny_vlm.py): any `TinyVLMConfig` field can be set in the JSON. Checks, on
held-out scenes (seed 1000): vision-only colour accuracy per visual tier (24 scenes per tier),
shape-task accuracy per shape tier (32 each), a tier-0 rendered colour word (3 fonts) and a
rendered tier-0 context (60). The answer is the argmax over the 13 colour and shape words only
(a quick check; train_tiny_vlm.py's metrics use the whole vocabulary). Prints one JSON line and
writes it to OUT/NAME.json with the model in OUT/NAME_model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from interp.datasets.drawing import COLOURS, SHAPES
from interp.datasets.text import COLOUR_QUESTION, INSTRUCTION, SHAPE_QUESTION, text_context
from modality_lens.tiny_vlm import Example, ScenePool, TinyVLMConfig, train
from modality_lens.tiny_vlm.reading import READ_QUESTION, ShapePool, context_image, word_image_tier0
from modality_lens.tiny_vlm.train import _encode

ANSWERS = COLOURS + SHAPES


def accuracy(model, processor, examples, batch_size: int = 48) -> list[bool]:
    ids = torch.tensor([processor.tokenizer.convert_tokens_to_ids(w) for w in ANSWERS])
    out = []
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            part = examples[start:start + batch_size]
            logits = model(**_encode(processor, part), logits_to_keep=1).logits[:, -1, ids]
            out += [ANSWERS[int(k)] == e.label for k, e in zip(logits.argmax(-1), part)]
    return out


def checks(model, processor, size: int) -> dict:
    model.eval()
    pool = ScenePool.draw(14 * 24, 1000, size)
    vision = [Example("vision", f"{COLOUR_QUESTION.format(shape=SHAPES[pool.target_shape[i]])} {INSTRUCTION}", None,
                      pool.images[i], COLOURS[pool.target_colour[i]]) for i in range(len(pool))]
    acc = np.array(accuracy(model, processor, vision))
    tiers = [float(acc[pool.visual_tier == t].mean()) for t in range(14)]
    shapes = ShapePool.draw(4 * 32, 1000, size)
    shape_ex = [Example("vision", f"{SHAPE_QUESTION.format(colour=COLOURS[shapes.target_colour[i]])} {INSTRUCTION}",
                        None, shapes.images[i], SHAPES[shapes.target_shape[i]]) for i in range(len(shapes))]
    s_acc = np.array(accuracy(model, processor, shape_ex))
    words = [Example("read", f"{READ_QUESTION} {INSTRUCTION}", None, word_image_tier0(w, size, f), w)
             for w in COLOURS for f in ("sans", "serif", "mono")]
    rng = np.random.default_rng(1000)
    contexts = [Example("read", f"{COLOUR_QUESTION.format(shape=SHAPES[k % 7])} {INSTRUCTION}", None,
                        context_image(text_context(0, SHAPES[k % 7], COLOURS[k % 6], rng), size, rng), COLOURS[k % 6])
                for k in range(60)]
    return {"vision_tiers": tiers, "vision_t0": tiers[0], "vision_t1_6": float(np.mean(tiers[1:7])),
            "shape_tiers": [float(s_acc[shapes.visual_tier == t].mean()) for t in range(4)],
            "word_t0": float(np.mean(accuracy(model, processor, words))),
            "context_read": float(np.mean(accuracy(model, processor, contexts)))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name")
    parser.add_argument("config", help="JSON object of TinyVLMConfig fields")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--out", type=Path, default=Path("runs/recipes"))
    args = parser.parse_args(argv)
    cfg = TinyVLMConfig(**{"steps": args.steps, **json.loads(args.config)})
    model, processor, log = train(cfg, progress=False, log_every=100)
    result = {"name": args.name, "config": json.loads(args.config), "steps": cfg.steps, "train_s": log["wall_s"],
              "params": log["params"], "loss": [h["loss"] for h in log["history"]], **checks(model, processor,
                                                                                            cfg.image_size)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result) + "\n")
    model.save_pretrained(args.out / f"{args.name}_model")
    processor.save_pretrained(args.out / f"{args.name}_model")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
