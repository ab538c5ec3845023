"""Benchmark: our per-layer lens vs a plain forward, hidden states, and TransformerLens.

Run:  python experiments/benchmark_lens.py            (same as `modality-lens bench`)
      python experiments/benchmark_lens.py --repeats 7 --batch-size 8

Prints a table (median time, peak memory, agreement of the lens logits) and, as its last
line, the JSON ratios to the plain forward. Edit `run_benchmark`'s arguments to try another
family (`--family qwen2_5_vl --size tiny`) or device (`--device cuda`).
"""

import sys

from modality_lens.bench import main

if __name__ == "__main__":
    sys.exit(main())
