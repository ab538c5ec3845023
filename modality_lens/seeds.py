"""``modality-lens run --seeds 0,1,2``: the main job at several dataset seeds, and the balance point's spread.

Layout **[ours]**: ``OUT/`` (default ``runs/run-seeds``) holds one ordinary run directory per
seed, ``OUT/seed-<K>/`` (each resumable, reportable and comparable on its own), and the
comparison of all of them (``modality_lens.compare``): ``OUT/compare.json``, whose ``seeds`` key
is :func:`seed_spread` of the per-seed balance points, ``OUT/figures/`` and ``OUT/report.html``,
which shows the spread across seeds next to each seed's bootstrap CI.

The seed draws the built-in dataset (a dataset folder's cases are fixed: only the bootstraps
change) and seeds every bootstrap. The spread across seeds is the sample standard deviation
(n − 1) of the balance points of the seeds that have one, with their min, max and range;
beside it, the mean half-width of the seeds' bootstrap CIs (the within-seed uncertainty). A
seed without a balance point (no crossing, too few cases) is counted, not invented.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from interp.errors import ArgumentError
from modality_lens.compare import compare_runs, format_table
from modality_lens.report import html_table

__all__ = ["parse_seeds", "run_seeds", "seed_spread"]


def parse_seeds(text: Any) -> list[int]:
    """'0,1,2' -> [0, 1, 2]: two or more distinct integers >= 0."""
    parts = [p.strip() for p in str(text).split(",")]
    if any(not p.isdigit() for p in parts):
        raise ArgumentError(f"--seeds must be comma-separated integers >= 0 like 0,1,2, got {text!r}")
    seeds = [int(p) for p in parts]
    if len(set(seeds)) != len(seeds):
        raise ArgumentError(f"--seeds lists a seed twice ({text!r}); give each seed once")
    if len(seeds) < 2:
        raise ArgumentError(f"--seeds needs at least two seeds for a spread, got {text!r}; for one, use --seed")
    return seeds


def seed_spread(points: Sequence[float | None], cis: Sequence[Sequence[float] | None]) -> dict[str, Any]:
    """The balance points' spread across seeds beside the seeds' bootstrap CIs (module docstring)."""
    values = [float(p) for p in points if p is not None]
    n = len(values)
    mean = sum(values) / n if n else None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n >= 2 else None
    halves = [(c[1] - c[0]) / 2 for p, c in zip(points, cis) if p is not None and c]
    return {"n_seeds": len(points), "n_with_balance_point": n, "mean": mean, "sd": sd,
            "min": min(values) if values else None, "max": max(values) if values else None,
            "range": max(values) - min(values) if values else None,
            "mean_ci_half_width": sum(halves) / len(halves) if halves else None,
            "note": None if n >= 2 else "fewer than two seeds have a balance point: no spread"}


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def spread_html(seeds: Sequence[int], rows: Sequence[dict[str, Any]], spread: dict[str, Any]) -> list[str]:
    """The report's section: each seed's balance point and CI, and the spread across seeds."""
    table = [[str(s), _fmt(r["balance_point"]),
              f"[{r['balance_point_ci'][0]:.3f}, {r['balance_point_ci'][1]:.3f}]" if r["balance_point_ci"] else "n/a",
              str(r["n_kept"])] for s, r in zip(seeds, rows)]
    text = (f"<p>Across {spread['n_seeds']} dataset seeds ({spread['n_with_balance_point']} with a balance point): "
            f"mean {_fmt(spread['mean'])}, SD {_fmt(spread['sd'])} (n − 1), range {_fmt(spread['min'])} to "
            f"{_fmt(spread['max'])}; the seeds' bootstrap 95% CIs have a mean half-width of "
            f"{_fmt(spread['mean_ci_half_width'])}. {spread['note'] or ''}</p>")
    return ["<h2>Seeds</h2>", text, html_table(["seed", "balance point", "bootstrap 95% CI", "kept"], table)]


def run_seeds(seeds: Sequence[int], *, out: str | Path | None = None, resume: bool = False,
              **run_options: Any) -> dict[str, Any]:
    """`modality_lens.pipeline.run` once per seed into OUT/seed-<K>/, then the comparison with the spread.

    A seed whose folder already holds a finished run is resumed (nothing recomputed) when
    `resume`; without it an existing seed folder is refused by the run, as any --out is.
    """
    from modality_lens.pipeline import run

    out = Path(out) if out is not None else Path("runs") / "run-seeds"
    if (out / "run.json").exists():
        raise ArgumentError(f"--out {out} is a run directory; --seeds needs a folder to hold one run per seed")
    dirs = []
    for seed in seeds:
        target = out / f"seed-{seed}"
        run(seed=seed, out=str(target), resume=resume and target.exists(), **run_options)
        dirs.append(target)
    return compare_seed_dirs(seeds, dirs, out)


def compare_seed_dirs(seeds: Sequence[int], dirs: Sequence[Path], out: Path) -> dict[str, Any]:
    """The comparison of the seed runs, with ``seeds`` (the list and :func:`seed_spread`) in compare.json."""
    from modality_lens.compare import compare_rows, load_runs

    rows = compare_rows(load_runs(dirs))
    spread = seed_spread([r["balance_point"] for r in rows], [r["balance_point_ci"] for r in rows])
    return compare_runs(dirs, out=out, extra={"seeds": {"seeds": list(seeds), "balance_point": spread}},
                        extra_html=spread_html(seeds, rows, spread))


def print_seeds(result: dict[str, Any], out: Path) -> None:
    """The terminal view of a seeds study: the per-run table and the spread line."""
    spread = result["seeds"]["balance_point"]
    print(format_table(result["runs"]))
    print(f"balance point across seeds: mean {_fmt(spread['mean'])}, SD {_fmt(spread['sd'])}, range "
          f"{_fmt(spread['min'])} to {_fmt(spread['max'])}; mean bootstrap CI half-width "
          f"{_fmt(spread['mean_ci_half_width'])}" + (f" ({spread['note']})" if spread["note"] else ""))
    print(f"report: {(out / 'report.html').resolve()}")
