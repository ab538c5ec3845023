"""Benchmark: drawing rendered colour words (`reading.word_image`, as the pretraining stage and
the training mix draw them) with the font cache of `interp.datasets.render` against a cache too
small to hold the sizes `fit_pixels` tries (the 64 fonts it held until 2026-12-04).

Run:  python experiments/benchmark_render.py                (300 words a round, 5 rounds)
      python experiments/benchmark_render.py --words 1000 --rounds 7

`fit_pixels` tries every pixel size from the canvas height down, in each of three fonts, so a
64 px canvas asks for up to 3 x 59 fonts: a 64-entry cache evicts them before they come round
again and every call opens the font file afresh. Each round draws the same words with the same
seed under both caches (cleared first, so both start cold), alternating which goes first; the
drawn images are compared so that the two are known to draw the same pixels. Prints per-round
times, then the JSON of `speedup` (median of baseline / ours) as the last line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from functools import lru_cache

import numpy as np

from interp.datasets import render
from interp.datasets.drawing import COLOURS
from modality_lens.tiny_vlm.reading import word_image


def _draw(n: int, seed: int) -> tuple[float, list[bytes]]:
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    images = [word_image(COLOURS[int(rng.integers(len(COLOURS)))], 64, rng) for _ in range(n)]
    return time.perf_counter() - start, [im.tobytes() for im in images]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--words", type=int, default=300, help="words drawn per round and cache")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    ours = render._font
    baseline = lru_cache(maxsize=64)(ours.__wrapped__)
    ratios = []
    try:
        for r in range(args.rounds):
            times: dict[str, float] = {}
            drawn: dict[str, list[bytes]] = {}
            for name in (("ours", "baseline") if r % 2 == 0 else ("baseline", "ours")):
                render._font = ours if name == "ours" else baseline
                render._font.cache_clear()
                times[name], drawn[name] = _draw(args.words, seed=r)
            if drawn["ours"] != drawn["baseline"]:
                raise SystemExit("the two caches drew different pixels: the benchmark compares nothing")
            ratios.append(times["baseline"] / times["ours"])
            print(f"round {r + 1}: ours {1000 * times['ours'] / args.words:.2f} ms a word, baseline "
                  f"{1000 * times['baseline'] / args.words:.2f} ms a word, ratio {ratios[-1]:.2f}")
    finally:
        render._font = ours
    print(json.dumps({"speedup": round(statistics.median(ratios), 2), "min": round(min(ratios), 2),
                      "max": round(max(ratios), 2), "words": args.words, "rounds": args.rounds}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
