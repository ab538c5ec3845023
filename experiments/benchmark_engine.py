"""Throughput of `run --engine ray` with 2 workers against 1, in one process (docs/scaling.md).

One local Ray cluster of 2 CPUs; for each worker count, a pool is built (model loaded, whole case
list planned; not timed) and then every case's rows are computed through it, shard by shard, as
`run --engine ray` computes them (no run directory). Prints cases per second for each and the
ratio. Paired rounds (1, 2, 1, 2, ...) so a neighbour's load hits both alike; on a machine with 2
cores shared with other jobs, expect well under 2x.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/benchmark_engine.py --limit 192 --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import ray

from modality_lens.cases import auto_image_size, load_cases
from modality_lens.engine import EngineOptions, RayPool
from modality_lens.pipeline import ModelSpec, ShardSetup, batches, default_model, shard_rows


def _throughput(workers: int, setup: ShardSetup, cases: list, shards: list) -> float:
    with RayPool(EngineOptions(name="ray", workers=workers), setup, cases) as pool:
        start = time.perf_counter()
        n = sum(len(case_rows) for case_rows, _ in pool.map(shard_rows, shards))
        return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=192, help="cases (default 192)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="paired rounds of 1 and 2 workers")
    args = parser.parse_args()
    from hooks.loading import load_vlm

    source = default_model()
    size = auto_image_size(load_vlm(source).processor)
    cases, _ = load_cases(None, seed=0, n_per_cell=16, image_size=size, limit=args.limit)
    setup = ShardSetup(ModelSpec(source, device="cpu", threads=1), batch_size=args.batch_size, reuse=True)
    shards = batches(range(len(cases)), args.batch_size)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        rates: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(args.rounds):
            for workers in (1, 2):
                rates[workers].append(_throughput(workers, setup, cases, shards))
    finally:
        ray.shutdown()
    ratios = [b / a for a, b in zip(rates[1], rates[2])]
    for workers, r in rates.items():
        print(f"{workers} worker(s): {statistics.median(r):.1f} cases/s (rounds: {', '.join(f'{x:.1f}' for x in r)})")
    print(f"2 workers / 1 worker throughput: {statistics.median(ratios):.2f}x "
          f"(per round: {', '.join(f'{x:.2f}' for x in ratios)}; {len(cases)} cases, batch {args.batch_size})")


if __name__ == "__main__":
    main()
