"""Measure the colour set's visual tiers against METHOD §1.6, and time the generator.

For each visual tier, 50 scenes (one per group; the text tiers share a scene) are measured
from the PNG pixels of the case, not from what the generator reports:

- target size: the side of ``target_box`` in px at the 800x600 reference (tiers 0-4), or the
  box's area as a share of the image (tiers 5-13);
- occlusion: 1 - (pixels of the target's colour) / (area of the unoccluded target shape of
  that size); the target's colour appears on no other object, so this is exact;
- distractors: the scene is redrawn from ``case.seed`` (and checked to give the same image)
  to count the distractors drawn and those with at least one visible pixel.

Then it times 10,000 colour cases (generation and validation in memory, no PNG saving), with
and without controls, and the same 10,000 without controls written to a folder with PNGs.

Usage: python experiments/measure_tiers.py [--n 50] [--seed 0] [--image-size 64] [--no-timing]
"""

from __future__ import annotations

import argparse
import itertools
import re
import tempfile
import time

import numpy as np

from interp.datasets import COLOUR_RGB, COLOUR_TIERS, colour_cases, draw_colour_scene, save_dataset, shape_mask
from interp.datasets.colour import colour_group

TOLERANCE = 0.10


def measure(n: int, seed: int, image_size) -> bool:
    cases = [c for c in colour_cases(n, seed, image_size, text_tiers=[0], controls=False)]
    print(f"{n} scenes per visual tier, seed {seed}, image size {image_size or 'paper default'}")
    header = (f"{'tier':>4} | {'target size spec':>16} | {'measured min-max (mean)':>26} | "
              f"{'distr.':>6} | {'drawn':>7} | {'visible (mean)':>14} | {'occl. spec':>10} | "
              f"{'measured min-max (mean)':>24} | ok")
    print(header)
    print("-" * len(header))
    all_ok = True
    for spec in COLOUR_TIERS:
        sizes, occlusions, drawn, visible = [], [], [], []
        for case in (c for c in cases if c.visual_tier == spec.tier):
            pixels = np.asarray(case.open_image())
            shape = re.match(r"What colour is the (\w+)\?", case.question).group(1)
            x0, y0, x1, y1 = case.target_box
            sizes.append(spec.measured_size(case.target_box, case.image_size()))
            is_target = (pixels == np.array(COLOUR_RGB[case.image_answer], np.uint8)).all(-1)
            full = int(shape_mask(shape, x1 - x0).sum())
            occlusions.append(1.0 - is_target.sum() / full)
            group = colour_group(seed, int(case.group_id.rsplit("g", 1)[1]))
            scene = draw_colour_scene(spec.tier, shape, case.image_answer, case.text_answer,
                                      np.random.default_rng(case.seed), image_size,
                                      absent_shapes=(group.absent_shape,))
            assert np.array_equal(np.asarray(scene.image), pixels), "redrawn scene differs"
            drawn.append(scene.n_distractors)
            visible.append(scene.visible_distractors)
        lo, hi = spec.size_range
        size_ok = all(lo - 1e-9 <= s <= hi + 1e-9 for s in sizes)
        occ_ok = all(abs(o - spec.occlusion) <= TOLERANCE for o in occlusions)
        count_ok = all(d == spec.n_distractors for d in drawn)
        ok = size_ok and occ_ok and count_ok
        all_ok &= ok
        unit = (lambda v: f"{v:.0f}px") if spec.size_unit == "px" else (lambda v: f"{v:.1%}")
        print(f"{spec.tier:>4} | {unit(lo) + '-' + unit(hi):>16} | "
              f"{unit(min(sizes)) + '-' + unit(max(sizes)) + ' (' + unit(np.mean(sizes)) + ')':>26} | "
              f"{spec.n_distractors:>6} | {str(min(drawn)) + '-' + str(max(drawn)):>7} | "
              f"{np.mean(visible):>14.1f} | {spec.occlusion:>10.0%} | "
              f"{f'{min(occlusions):.1%}-{max(occlusions):.1%} ({np.mean(occlusions):.1%})':>24} | "
              f"{'yes' if ok else 'NO'}")
    print("every tier within spec" if all_ok else "SOME TIER OUT OF SPEC")
    return all_ok


def time_generation(seed: int) -> None:
    for controls, n_groups in ((True, 60), (False, 179)):
        start = time.perf_counter()
        count = sum(1 for _ in itertools.islice(colour_cases(n_groups, seed, controls=controls), 10_000))
        seconds = time.perf_counter() - start
        scenes = -(-count // (14 * 4 * (3 if controls else 1))) * 14
        print(f"{count} colour cases ({'with' if controls else 'without'} controls, ~{scenes} scenes) "
              f"generated and validated in memory in {seconds:.1f} s (PNGs not saved)")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        info = save_dataset(itertools.islice(colour_cases(179, seed, controls=False), 10_000),
                            f"{tmp}/ds", {"generator": "colour", "parameters": {}, "seed": seed},
                            progress=False)
        seconds = time.perf_counter() - start
        print(f"{info['n_cases']} colour cases ({info['n_images']} PNGs) generated and saved in "
              f"{seconds:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description="measure the colour set's tiers; time it")
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--no-timing", action="store_true")
    args = parser.parse_args()
    ok = measure(args.n, args.seed, args.image_size)
    if not args.no_timing:
        time_generation(args.seed)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
