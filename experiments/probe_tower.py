"""Can a vision tower alone bind a colour to the asked shape? A probe of the tiny VLM's tower.

Trains a CLIP tower of the tiny VLM's recipe (no language model) with the pretraining stage's
reader (`modality_lens.tiny_vlm.pretrain.Reader`) on one task: asked a shape, the colour of the
target in a colour scene of visual tiers 0-6. Every step draws new scenes unless `--pool N`
(then N scenes are drawn once and sampled, as the VLM stage's pool is). `--aux W` adds the patch
loss of `modality_lens.tiny_vlm.aux`. `--image-size` and `--patch-size` set the scenes'
resolution and the new tower's patches (the recipe's 64 and 8 by default). Prints the held-out
accuracy per visual tier (700 scenes of another seed, distractors never in the target's colour,
as in the evaluation set) every `--every` steps. docs/datasets.md, "The tower alone", has what
it measured.

`--frozen DIR` probes the tower of a trained model instead: the tower is frozen and only a fresh
reader learns, on the states of `--pool` scenes computed once, both tasks: the colour of the
asked shape (colour scenes of tiers 0-6) and the shape of the asked colour (shape-set scenes of
tiers 0-3). What the reader gets is what the tower's image tokens make available to whatever
reads them; the gap to the model's own answers is the language model's.

    python experiments/probe_tower.py --steps 2000 --aux 1.0
    python experiments/probe_tower.py --frozen data/tiny_vlm --steps 1000 --pool 6000
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np
import torch

from modality_lens.tiny_vlm.aux import PatchHead
from modality_lens.tiny_vlm.mix import ScenePool
from modality_lens.tiny_vlm.pretrain import Reader, _tower_states
from modality_lens.tiny_vlm.recipe import TinyVLMConfig, build_model, build_processor

TIERS = range(7)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--aux", type=float, default=0.0, help="weight of the patch loss (0: off)")
    parser.add_argument("--pool", type=int, default=0, help="draw N scenes once and sample them (0: new every step)")
    parser.add_argument("--vision-hidden", type=int, default=128)
    parser.add_argument("--vision-layers", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=None,
                        help=f"pixels per side of the scenes (default {TinyVLMConfig.image_size}; not with --frozen)")
    parser.add_argument("--patch-size", type=int, default=None,
                        help=f"pixels per side of a patch: (image / patch)^2 image tokens (default "
                             f"{TinyVLMConfig.patch_size}; not with --frozen)")
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--frozen", default=None, metavar="DIR", help="probe the frozen tower of the model in DIR")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.frozen:
        if args.image_size is not None or args.patch_size is not None:
            parser.error("--image-size and --patch-size build a new tower; with --frozen the model's own tower sets "
                         "both: drop them")
        return probe_frozen(args)
    sizes = {k: v for k, v in (("image_size", args.image_size), ("patch_size", args.patch_size)) if v is not None}
    cfg = TinyVLMConfig(vision_hidden=args.vision_hidden, vision_layers=args.vision_layers, text_layers=2, **sizes)
    processor = build_processor(cfg)
    try:
        tower = build_model(cfg, len(processor.tokenizer)).model.vision_tower
    except ValueError as err:  # e.g. a patch size that does not divide the image size
        parser.error(str(err))
    torch.manual_seed(0)
    reader, head = Reader(cfg.vision_hidden), PatchHead(cfg.vision_hidden)
    params = [*tower.parameters(), *reader.parameters(), *(head.parameters() if args.aux else ())]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    pixels = lambda images: processor.image_processor(images=images, return_tensors="pt")["pixel_values"]  # noqa
    test = ScenePool.draw(700, 999, cfg.image_size, tiers=TIERS)
    patch = cfg.patch_size if args.aux else None
    pool = ScenePool.draw(args.pool, 0, cfg.image_size, tiers=TIERS, same_colour_share=0.8, patch=patch) \
        if args.pool else None
    rng, start, result = np.random.default_rng(0), time.time(), {}
    for step in range(args.steps):
        lr = args.lr * min(1.0, (step + 1) / 100) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        if pool is None:
            batch = ScenePool.draw(args.batch, 10_000 + step, cfg.image_size, tiers=TIERS, same_colour_share=0.8,
                                   patch=patch)
            idx = np.arange(args.batch)
        else:
            batch, idx = pool, rng.integers(len(pool), size=args.batch)
        states = _tower_states(tower, pixels([batch.images[i] for i in idx]))
        loss = torch.nn.functional.cross_entropy(reader(states, torch.as_tensor(batch.target_shape[idx])),
                                                 torch.as_tensor(batch.target_colour[idx]))
        if args.aux:
            loss = loss + args.aux * head.loss(states, [batch.patches[i] for i in idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if (step + 1) % args.every == 0 or step + 1 == args.steps:
            with torch.no_grad():
                guess = torch.cat([reader(_tower_states(tower, pixels(test.images[i:i + 100])),
                                          torch.as_tensor(test.target_shape[i:i + 100])).argmax(-1)
                                   for i in range(0, len(test), 100)]).numpy()
            ok = guess == test.target_colour
            result = {int(t): round(float(ok[test.visual_tier == t].mean()), 3) for t in TIERS}
            mean = float(np.mean([result[t] for t in TIERS if t > 0]))
            print(f"step {step + 1} ({(time.time() - start) / 60:.1f} min): {result}, mean of tiers 1-6 {mean:.3f}",
                  flush=True)
    print(json.dumps({"steps": args.steps, "aux": args.aux, "pool": args.pool, "image_size": cfg.image_size,
                      "patch_size": cfg.patch_size, "accuracy": result}))
    return 0


def probe_frozen(args: argparse.Namespace) -> int:
    """A fresh reader on the frozen tower of `args.frozen`: held-out accuracy per tier of both tasks."""
    from hooks.loading import load_vlm
    from interp.datasets.drawing import COLOURS, SHAPES
    from modality_lens.tiny_vlm.reading import ShapePool

    vlm = load_vlm(args.frozen)
    tower, size = vlm.model.model.vision_tower.eval(), vlm.model.config.vision_config.image_size
    torch.manual_seed(0)
    n = args.pool or 6000

    def states(images):
        with torch.no_grad():
            return torch.cat([_tower_states(tower, vlm.processor.image_processor(
                images=images[i:i + 200], return_tensors="pt")["pixel_values"]) for i in range(0, len(images), 200)])

    def task(colour_pool, shape_pool):  # (states, query, answer, tier, task) over both tasks
        q = np.concatenate([colour_pool.target_shape, len(SHAPES) + shape_pool.target_colour])
        a = np.concatenate([colour_pool.target_colour, len(COLOURS) + shape_pool.target_shape])
        return (torch.cat([states(colour_pool.images), states(shape_pool.images)]), torch.as_tensor(q),
                torch.as_tensor(a), np.concatenate([colour_pool.visual_tier, shape_pool.visual_tier]),
                np.repeat(["colour", "shape"], [len(colour_pool), len(shape_pool)]))

    start = time.time()
    train = task(ScenePool.draw(n, 5, size, tiers=TIERS, same_colour_share=0.8), ShapePool.draw(n // 2, 5, size))
    test = task(ScenePool.draw(700, 999, size, tiers=TIERS), ShapePool.draw(400, 999, size))
    reader = Reader(tower.config.hidden_size)
    opt = torch.optim.AdamW(reader.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    rng, result = np.random.default_rng(0), {}
    for step in range(args.steps):
        idx = rng.integers(len(train[1]), size=args.batch)
        loss = torch.nn.functional.cross_entropy(reader(train[0][idx], train[1][idx]), train[2][idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % args.every == 0 or step + 1 == args.steps:
            with torch.no_grad():
                ok = (reader(test[0], test[1]).argmax(-1) == test[2]).numpy()
            result = {name: {int(t): round(float(ok[(test[4] == name) & (test[3] == t)].mean()), 3)
                             for t in sorted(set(test[3][test[4] == name]))} for name in ("colour", "shape")}
            mean = float(np.mean([result["colour"][t] for t in TIERS if t > 0]))
            print(f"step {step + 1} ({(time.time() - start) / 60:.1f} min): {result}, colour mean of tiers 1-6 "
                  f"{mean:.3f}", flush=True)
    print(json.dumps({"frozen": str(args.frozen), "steps": args.steps, "pool": n, "accuracy": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
