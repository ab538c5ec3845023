"""The perturbation study (METHOD §3, issue #20): does the model know when it cannot see?

`run_perturb` (``modality-lens perturb``) runs the vision-only pass (and, with ``conflict``,
the conflict pass) of a case set at every level of every perturbation
(`interp.datasets.perturb`) through the per-layer lens (`hooks.perturb.confidence_lens`), and
writes a run directory like the main job's::

    run.json                  provenance (model weights hash, dataset hash, seed, arguments)
    cases/part-*.parquet      one row per unit x perturbation x level   } atomic chunks,
    layers/part-*.parquet     ... and per lens layer                    } resumed after kill -9
    units.parquet, unit_layers.parquet, summary.json, figures/, report.html   (at the end)

A *unit* is one pass input before perturbation: for the vision-only pass, one per distinct
image and question (the cases of a group that share a scene under different text tiers share
their vision-only pass, as in the main job), named by its first case; for the conflict pass,
one per conflict case. Control cases are left out (their image answers nothing the text asks).
Level 0 of every perturbation is the original image: computed once per unit, recorded for each
perturbation. Every unit of one image and perturbation uses one seed,
``[seed, crc32(image name), perturbation index]``, at every level (common random numbers).

Per row: the answer (last layer's top-1 token, the main job's rule), ``correct`` (the image
answer), ``follows_text`` (conflict pass), the confidence measures of `hooks.perturb`, and
``n_samples`` answers sampled at temperature 1 from the model's next-token distribution with
each sample's probability as its confidence **[ours]**: the one-token case of a response's
mean token probability; the summary votes over them (`interp.calibration.voting_curve`). For
the noise rows, the visual-contrastive-decoding answer per lens layer: the clean pass against
the noised one (``vcd_class``, `interp.calibration.vcd_scores`).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from hooks.loading import VLM
from hooks.perturb import MEASURES, ConfidenceLens, confidence_lens
from interp.calibration import VCD_ALPHA, VCD_BETA, vcd_scores
from interp.candidates import CandidatePair
from interp.datasets.perturb import PERTURBATIONS, perturb
from modality_lens.cases import case_item, case_pairs
from modality_lens.engine import EngineOptions
from modality_lens.perturb_args import PerturbArguments, check_boxes, check_perturb_arguments, unit_cases
from modality_lens.unitdir import UnitRunDir

__all__ = ["run_perturb", "PerturbRunDir", "UNIT_SCHEMA", "UNIT_LAYER_SCHEMA", "perturb_rows"]

_MEASURE_FIELDS = [pa.field(m, pa.float64(), nullable=False) for m in MEASURES] + [
    pa.field("p_text", pa.float64(), nullable=False)]
UNIT_SCHEMA = pa.schema([
    pa.field("row_id", pa.string(), nullable=False), pa.field("unit_id", pa.string(), nullable=False),
    pa.field("case_id", pa.string(), nullable=False), pa.field("pass", pa.string(), nullable=False),
    pa.field("perturbation", pa.string(), nullable=False), pa.field("level", pa.float64(), nullable=False),
    pa.field("level_index", pa.int32(), nullable=False), pa.field("visual_tier", pa.int32()),
    pa.field("text_tier", pa.int32()), pa.field("image_answer", pa.string(), nullable=False),
    pa.field("text_answer", pa.string(), nullable=False), pa.field("answer", pa.string(), nullable=False),
    pa.field("answer_class", pa.string(), nullable=False), pa.field("correct", pa.bool_(), nullable=False),
    pa.field("follows_text", pa.bool_(), nullable=False), *_MEASURE_FIELDS,
    pa.field("vcd_class", pa.string()), pa.field("samples", pa.list_(pa.string()), nullable=False),
    pa.field("sample_p", pa.list_(pa.float64()), nullable=False),
])
"""One row per unit x perturbation x level (the last lens layer's numbers = the model's)."""
UNIT_LAYER_SCHEMA = pa.schema([
    pa.field("row_id", pa.string(), nullable=False), pa.field("unit_id", pa.string(), nullable=False),
    pa.field("layer", pa.int32(), nullable=False), pa.field("class", pa.string(), nullable=False),
    *_MEASURE_FIELDS, pa.field("vcd_class", pa.string()),
])
"""One row per unit x perturbation x level x lens layer (0 = embedding, L = last layer)."""


# --------------------------------------------------------------------------- run directory
class PerturbRunDir(UnitRunDir):
    """A `modality_lens.unitdir.UnitRunDir` of perturbation rows (`UNIT_SCHEMA`, per layer
    `UNIT_LAYER_SCHEMA`); a chunk's units are its rows' ``unit_id`` values. The final tables are
    units.parquet and unit_layers.parquet beside summary.json."""

    ROW_SCHEMA, LAYER_SCHEMA = UNIT_SCHEMA, UNIT_LAYER_SCHEMA
    IDENTITY_ARGUMENTS = ("perturbations", "levels", "conflict", "n_samples", "vcd_alpha", "vcd_beta")

    @property
    def units_path(self) -> Path:
        return self.path / "units.parquet"

    @property
    def unit_layers_path(self) -> Path:
        return self.path / "unit_layers.parquet"


# --------------------------------------------------------------------------- rows
@dataclass(frozen=True)
class _Pass:
    """One perturbed pass input: a unit at one perturbation level (level 0: the original)."""

    unit: int
    perturbation: str | None  # None: the original image, shared by every perturbation
    level_index: int


def _seed(seed: int, case: Any, perturbation: str) -> list[int]:
    key = str(case.image_name or case.id).encode()
    return [int(seed), zlib.crc32(key), list(PERTURBATIONS).index(perturbation)]


def _image(case: Any, p: _Pass, args: PerturbArguments) -> Any:
    image = case.open_image()
    if p.perturbation is None:
        return image
    return perturb(p.perturbation, image, args.levels[p.level_index], np.random.default_rng(
        _seed(args.seed, case, p.perturbation)), box=case.target_box)


def _samples(row_lp: np.ndarray, pair: CandidatePair, case: Any, tok: Any, n: int,
             rng: np.random.Generator) -> tuple[list[str], list[float]]:
    p = np.exp(row_lp - row_lp.max())
    p /= p.sum()
    ids = rng.choice(p.size, size=n, p=p)
    words = [case.image_answer if int(i) in pair.vision_ids else case.text_answer if int(i) in pair.text_ids
             else tok.decode([int(i)]).strip() for i in ids]
    return words, [float(p[i]) for i in ids]


def _vcd_classes(clean: np.ndarray, noised: np.ndarray, pair: CandidatePair, args: PerturbArguments) -> list[str]:
    top = vcd_scores(clean, noised, alpha=args.vcd_alpha, beta=args.vcd_beta).argmax(axis=-1)
    return [pair.classify(int(t)) for t in top]


def _answer(cls: str, top1: int, case: Any, tok: Any) -> tuple[str, str]:
    if cls == "vision":
        return case.image_answer, "vision"
    if cls == "text":
        return case.text_answer, "text"
    return tok.decode([int(top1)]).strip(), "other"


def _measures(lens: ConfidenceLens, b: int, layer: int) -> dict[str, float]:
    return {m: float(getattr(lens, m)[b, layer]) for m in (*MEASURES, "p_text")}


def _rows_of(unit: tuple[Any, str], pair: CandidatePair, lens: ConfidenceLens, b: int, perturbation: str,
             level_index: int, vcd: list[str] | None, args: PerturbArguments, tok: Any) -> tuple[dict, list[dict]]:
    case, pass_name = unit
    unit_id = f"{pass_name}:{case.id}"
    row_id = f"{unit_id}/{perturbation}/{level_index}"
    classes = lens.classes[b]
    answer, cls = _answer(classes[-1], int(lens.top1[b, -1]), case, tok)
    rng = np.random.default_rng([*_seed(args.seed, case, perturbation), level_index, 1 + (pass_name == "conflict")])
    words, probs = _samples(lens.final_log_probs[b], pair, case, tok, args.n_samples, rng)
    row = {"row_id": row_id, "unit_id": unit_id, "case_id": case.id, "pass": pass_name,
           "perturbation": perturbation, "level": args.levels[level_index], "level_index": level_index,
           "visual_tier": case.visual_tier, "text_tier": case.text_tier, "image_answer": case.image_answer,
           "text_answer": case.text_answer, "answer": answer, "answer_class": cls, "correct": cls == "vision",
           "follows_text": cls == "text", **_measures(lens, b, -1), "vcd_class": vcd[-1] if vcd else None,
           "samples": words, "sample_p": probs}
    layers = [{"row_id": row_id, "unit_id": unit_id, "layer": i, "class": c, **_measures(lens, b, i),
               "vcd_class": vcd[i] if vcd else None} for i, c in enumerate(classes)]
    return row, layers


def perturb_rows(vlm: VLM, units: Sequence[tuple[Any, str]], args: PerturbArguments) -> tuple[list[dict], list[dict]]:
    """Rows of ``units`` ((case, pass) pairs) at every level of every perturbation of ``args``."""
    pairs = case_pairs(vlm.tokenizer, [c for c, _ in units])
    plan = [_Pass(u, None, 0) for u in range(len(units))] + [
        _Pass(u, name, i) for u in range(len(units)) for name in args.perturbations
        for i in range(1, len(args.levels))]
    lenses: dict[_Pass, tuple[ConfidenceLens, int]] = {}
    for pass_name in ("vision", "conflict"):
        mine = [p for p in plan if units[p.unit][1] == pass_name]
        for start in range(0, len(mine), args.batch_size):
            chunk = mine[start:start + args.batch_size]
            items = [case_item(units[p.unit][0], image=_image(units[p.unit][0], p, args)) for p in chunk]
            keep = "noise" in args.perturbations  # the clean and noised lens layers for VCD
            lens = confidence_lens(vlm, items, [pairs[p.unit] for p in chunk], pass_name, keep_log_probs=keep)
            lenses.update({p: (lens, b) for b, p in enumerate(chunk)})
    rows, layer_rows = [], []
    for p in plan:
        targets = args.perturbations if p.perturbation is None else (p.perturbation,)
        lens, b = lenses[p]
        for name in targets:
            vcd = None
            if name == "noise":
                clean, cb = lenses[_Pass(p.unit, None, 0)]
                vcd = _vcd_classes(clean.log_probs[cb], lens.log_probs[b], pairs[p.unit], args)
            row, lay = _rows_of(units[p.unit], pairs[p.unit], lens, b, name, p.level_index, vcd, args, vlm.tokenizer)
            rows.append(row)
            layer_rows += lay
    return rows, layer_rows


# --------------------------------------------------------------------------- the job
def run_perturb(*, model: str | None = None, dataset: str | None = None, out: str | None = None,
                perturbations: Sequence[str] | None = None, levels: Sequence[float] | None = None,
                n_levels: int = 8, conflict: bool = False, n_samples: int = 32, vcd_alpha: float = VCD_ALPHA,
                vcd_beta: float = VCD_BETA, batch_size: int = 16, device: str | None = None,
                dtype: str | None = None, limit: int | None = None, seed: int = 0, resume: bool = False,
                n_per_cell: int | None = None, image_size: int | str | None = "auto", n_boot: int = 1000,
                progress: bool = True, figures: bool = True, threads: int | None = None,
                engine: EngineOptions | None = None, device_map: str | None = None,
                memory_check: bool = True) -> PerturbRunDir:
    """The perturbation study: units -> every perturbation level -> run directory, summary, report.

    Every argument is checked (`modality_lens.perturb_args`) and a dataset folder read and
    validated, every case's box checked when occlusion is asked for, and every answer checked
    against the tokenizer, before anything is written. ``levels`` (each in [0, 1]; 0 is always
    added: the original) default to the diffusion probes ``i / n_levels`` (METHOD §3.2, N = 8),
    used for every perturbation. A killed run continues with ``resume=True`` (same model,
    dataset, seed, dtype, limit, batch size, perturbations, levels, conflict, samples, VCD).
    ``engine``, ``device_map`` and ``memory_check`` are the main job's (`modality_lens.pipeline.run`):
    on Ray workers each shard is one chunk of ``batch_size`` units, as here, so the records are the same.
    """
    args = check_perturb_arguments(perturbations=perturbations, levels=levels, n_levels=n_levels,
                                   conflict=conflict, n_samples=n_samples, vcd_alpha=vcd_alpha,
                                   vcd_beta=vcd_beta, batch_size=batch_size, limit=limit, seed=seed,
                                   n_per_cell=n_per_cell, image_size=image_size, n_boot=n_boot, dataset=dataset,
                                   out=out or Path("runs") / f"perturb-seed{seed}", resume=resume, threads=threads)
    from modality_lens.pipeline import ModelSpec, UnitSetup, fill_chunks

    engine = EngineOptions.ready(engine)
    folder = args.read_folder()
    spec = ModelSpec.of(model, device=device, dtype=dtype, threads=args.threads, device_map=device_map,
                        memory_check=memory_check)
    vlm = spec.load()
    cases, data_info = folder or args.builtin(vlm)
    units = unit_cases(cases, args.conflict, args.limit)
    check_boxes([c for c, _ in units], args.perturbations)
    case_pairs(vlm.tokenizer, [c for c, _ in units])  # an answer the tokenizer cannot spell stops here
    run_dir = PerturbRunDir(args.out)
    new_folder = not run_dir.path.exists()
    run_dir.create(args.run_info(vlm, spec, data_info, len(units), engine), resume=resume)
    from modality_lens.perturb_summary import finalize_perturb

    fill_chunks(run_dir, new_folder, units, lambda u: f"{u[1]}:{u[0].id}", vlm, UnitSetup(spec, perturb_rows, args),
                batch_size=args.batch_size, progress=progress, engine=engine,
                finish=lambda: finalize_perturb(run_dir, n_boot=args.n_boot, seed=args.seed, figures=figures))
    return run_dir


def report_perturb_main(run_dir: str) -> int:
    """``modality-lens report RUN_DIR`` of a perturbation run: finalize it if it is not (with its
    own seed and bootstrap count), draw the figures, write report.html."""
    from modality_lens.perturb_summary import finalize_perturb
    from modality_lens.perturb_report import draw_perturb_figures, write_perturb_report

    run = PerturbRunDir(run_dir)
    info = run.read_run_info()
    if not run.summary_path.exists():
        finalize_perturb(run, n_boot=int(info["arguments"].get("n_boot", 1000)), seed=int(info.get("seed", 0)),
                         figures=False)
    draw_perturb_figures(run)
    print(f"report: {write_perturb_report(run)}")
    return 0
