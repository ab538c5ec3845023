"""Finish a run: the summary of its committed cases, the regions, and the final tables.

The run directory (`modality_lens.rundir`) stores; this module decides what the final files
hold: summary.json is `interp.summary.summarise` of the committed case rows with the seed of
run.json, so it depends on the set of cases only, not on how the run was interrupted, and
cases.parquet gets each case's ``region`` from that summary's balance point.
"""

from __future__ import annotations

from typing import Any

from interp.summary import AMBIGUOUS_WIDTH, summarise, with_regions
from modality_lens.rundir import RunDir

__all__ = ["finalize"]


def finalize(run: RunDir, *, n_boot: int = 1000, region_width: float | None = None) -> dict[str, Any]:
    """Write layers.parquet, cases.parquet (with ``region``) and summary.json of `run`; return the summary."""
    width = AMBIGUOUS_WIDTH if region_width is None else region_width
    seed = run.read_run_info().get("seed") or 0
    cases = run.read_cases()
    layers = run.read_layers()
    summary = summarise(cases, seed=int(seed), n_boot=n_boot, region_width=width)
    run.write_final(with_regions(cases, summary), layers, summary)
    return summary
