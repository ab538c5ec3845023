"""Benchmark: our per-layer lens and a case's three passes vs a forward with logits_to_keep=1,
full logits, hidden states, and TransformerLens.

Run:  python experiments/benchmark_lens.py            (same as `modality-lens bench`)
      python experiments/benchmark_lens.py --repeats 7 --batch-size 8 --threads 2
      python experiments/benchmark_lens.py --model data/tiny_vlm --batch-size 16   (the shipped model)

Prints a table (per-round time and memory ratios: median [min-max], agreement of the lens) and
the language-model tokens of the three passes, then, as its last line, the JSON of
`three_pass_ratio`, `lens_ratio` and `memory_ratio`. Try another family (`--family qwen2_5_vl
--size tiny`) or device (`--device cuda`); docs/performance.md explains the methods.
"""

import sys

from modality_lens.bench import main

if __name__ == "__main__":
    sys.exit(main())
