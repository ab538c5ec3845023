"""Finish a run: the summary of its committed cases, the regions, and the final tables.

The run directory (`modality_lens.rundir`) stores; this module decides what the final files
hold: summary.json is `interp.summary.summarise` of the committed case rows with the seed of
run.json, so it depends on the set of cases only, not on how the run was interrupted, and
cases.parquet gets each case's ``region`` from that summary's balance point.

When most cases are answered in a unimodal pass with a word that is no answer of any case in
the run (the model does not speak the dataset's answers, so almost nothing passes the
correct-in-both filter), the summary's ``warnings`` say so; `modality_lens.report.format_summary` prints them.
"""

from __future__ import annotations

from typing import Any, Callable

from interp.summary import AMBIGUOUS_WIDTH, summarise, with_regions
from interp.vocabulary import normalise_answer
from modality_lens.rundir import RunDir

__all__ = ["finalize", "OUTSIDE_SHARE"]

OUTSIDE_SHARE = 0.5
"""**[ours]** Warn when more than this share of the cases gets, in the vision-only or the
text-only pass, an answer that is no answer word of any case in the run."""


def _outside_warning(cases: Any) -> list[str]:
    """A case is *outside* when its vision-only or text-only answer is none of the answer words
    of any case in the run (a colour model asked for shapes answers colours); a wrong answer
    that is another case's answer (a wrong colour) is a mistake, not a sign of the wrong task."""
    rows = cases.select(["class_v", "class_t", "y_v", "y_t", "image_answer", "text_answer"]).to_pylist()
    vocabulary = {normalise_answer(r[k]) for r in rows for k in ("image_answer", "text_answer") if r[k]}

    def foreign(r: dict, answer: str, cls: str) -> bool:
        return r[cls] == "other" and normalise_answer(r[answer] or "") not in vocabulary

    outside = [r for r in rows if foreign(r, "y_v", "class_v") or foreign(r, "y_t", "class_t")]
    if not rows or len(outside) <= OUTSIDE_SHARE * len(rows):
        return []
    words = sorted({r[k] for r in outside for k, c in (("y_v", "class_v"), ("y_t", "class_t"))
                    if foreign(r, k, c) and r[k]})[:5]
    return [f"{len(outside)} of {len(rows)} cases were answered outside the dataset's answer words in the "
            f"vision-only or text-only pass (e.g. {', '.join(map(repr, words)) or 'empty answers'}), so few cases "
            "pass the correct-in-both filter: this model does not answer this dataset's questions with its words. "
            "Use a model trained or instructed for this task (the shipped model knows the colour set only)"]


def _known_tokens(run: RunDir) -> dict[int, str]:
    """Token texts an earlier summary.json of the run recorded (a redraw has no tokenizer)."""
    try:
        rows = run.read_summary()["oscillation_depth"]["constant_layers"]["layers"]
        return {r["top1"]: r["token"] for r in rows if r.get("token") is not None}
    except (Exception,):  # no summary yet, or one without the diagnostic
        return {}


def finalize(run: RunDir, *, n_boot: int | None = None, region_width: float | None = None,
             layers: list[int] | None = None, decode: Callable[[int], str] | None = None) -> dict[str, Any]:
    """Write layers.parquet, cases.parquet (with ``region`` and the recounted oscillations) and
    summary.json of `run`; return the summary.

    ``n_boot``, ``region_width`` and ``layers`` (the counted lens positions) default to what
    run.json's arguments recorded (else 1000, 0.5 and every decoder layer); ``decode`` (token id
    -> text) names the token of each constant layer, which a run directory alone cannot.
    """
    info = run.read_run_info()
    args = info.get("arguments") or {}
    n_boot = int(args.get("n_boot") or 1000) if n_boot is None else n_boot
    width = region_width if region_width is not None else args.get("region_width", AMBIGUOUS_WIDTH)
    counted = layers if layers is not None else args.get("layers")
    seed = info.get("seed") or 0
    cases = run.read_cases()
    all_layers = run.read_layers()
    summary = summarise(cases, seed=int(seed), n_boot=n_boot, region_width=width, layers=all_layers,
                        counted_layers=counted)
    summary["n_layers_model"] = (info.get("model") or {}).get("n_layers")
    constant = (summary.get("oscillation_depth") or {}).get("constant_layers") or {}
    known = _known_tokens(run) if decode is None else {}
    for row in constant.get("layers", []):
        row["token"] = decode(row["top1"]) if decode is not None else known.get(row["top1"])
    summary["warnings"] = _outside_warning(cases)
    run.write_final(with_regions(cases, summary, all_layers), all_layers, summary)
    return summary
