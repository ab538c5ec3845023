"""The cross-modal consistency study (METHOD §2, issue #21): same content, different answers?

`run_consistency` (``modality-lens consistency``) asks every item (`interp.datasets.formats`)
in the text, image and mixed formats, for each rendering variant, by free generation with the
lens at every step (`hooks.generate`), parses the answers, has the model transcribe each
rendered image (the OCR gate), measures per layer how close the rendered text's image tokens are
to the same text's tokens (`hooks.similarity`), and writes a run directory like the main job's::

    run.json                  provenance (model weights hash, items hash, seed, arguments)
    cases/part-*.parquet      one row per item x variant x format       } atomic chunks,
    layers/part-*.parquet     ... and per lens layer                    } resumed after kill -9
    rows.parquet, row_layers.parquet, summary.json, figures/, report.html   (at the end)

A *unit* is one item in one variant (its three formats are one chunk's rows together, so a
resume never splits an item). Per row: the generated text, the parsed answer (None: invalid),
``correct``, and for the rendered formats the transcription and its character error rate.
Per layer: the lens top-1 at the first generated step, whether it equals the text format's,
the lens log-probability of the answer's first token, and (rendered formats) the cosine of the
image tokens' mean and the text format's matching tokens' mean, and whether that pair ranks
first among the chunk's items both ways (retrieval).

**[ours]**: the matching text tokens of the mixed format are the text format's context span,
those of the image format the context and the question spans; an item without a context is
asked in the text format as its question alone put where the context goes, before
:data:`TEXT_PROMPT` (`hooks.prompts`' text pass needs a context), and has no mixed row.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from hooks.generate import generate
from hooks.loading import VLM
from hooks.processors import square_input_side
from hooks.prompts import PromptItem
from hooks.similarity import cosine_by_layer, group_means, span_means
from interp.consistency import character_error_rate
from interp.datasets.formats import ConsistencyItem, FormattedItem, Variant, item_formats
from modality_lens.consistency_args import ConsistencyArguments, check_consistency_arguments
from modality_lens.engine import EngineOptions
from modality_lens.unitdir import UnitRunDir

__all__ = ["run_consistency", "ConsistencyRunDir", "ROW_SCHEMA", "ROW_LAYER_SCHEMA", "consistency_rows",
           "OCR_PROMPT", "TEXT_PROMPT", "report_consistency_main"]

OCR_PROMPT = "Write out the text in the image exactly."
"""The OCR gate's question **[ours]**."""
TEXT_PROMPT = "Answer the question above."
"""The text format's question when an item has no context **[ours]**."""

ROW_SCHEMA = pa.schema([
    pa.field("row_id", pa.string(), nullable=False), pa.field("unit_id", pa.string(), nullable=False),
    pa.field("item_id", pa.string(), nullable=False), pa.field("variant", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False), pa.field("format", pa.string(), nullable=False),
    pa.field("text_tier", pa.int32()), pa.field("truth", pa.string(), nullable=False),
    pa.field("generated", pa.string(), nullable=False), pa.field("answer", pa.string()),
    pa.field("valid", pa.bool_(), nullable=False), pa.field("correct", pa.bool_(), nullable=False),
    pa.field("stop", pa.string(), nullable=False), pa.field("n_tokens", pa.int32(), nullable=False),
    pa.field("rendered", pa.string()), pa.field("ocr_text", pa.string()), pa.field("cer", pa.float64()),
])
"""One row per item x variant x format (answer None: the parser matched nothing, counted invalid)."""
ROW_LAYER_SCHEMA = pa.schema([
    pa.field("row_id", pa.string(), nullable=False), pa.field("unit_id", pa.string(), nullable=False),
    pa.field("format", pa.string(), nullable=False), pa.field("variant", pa.string(), nullable=False),
    pa.field("layer", pa.int32(), nullable=False), pa.field("top1", pa.int64(), nullable=False),
    pa.field("agrees_text", pa.bool_(), nullable=False), pa.field("log_p_answer", pa.float64(), nullable=False),
    pa.field("cosine", pa.float64()), pa.field("retrieved_i2t", pa.bool_()), pa.field("retrieved_t2i", pa.bool_()),
])
"""One row per item x variant x format x lens layer (0 = embedding, L = last layer)."""


class ConsistencyRunDir(UnitRunDir):
    """A `modality_lens.unitdir.UnitRunDir` of consistency rows (`ROW_SCHEMA`, per layer
    `ROW_LAYER_SCHEMA`); a chunk's units are its ``unit_id``s."""

    ROW_SCHEMA, LAYER_SCHEMA = ROW_SCHEMA, ROW_LAYER_SCHEMA
    IDENTITY_ARGUMENTS = ("items_source", "n_items", "variants", "max_new_tokens", "ocr", "ocr_max_new_tokens",
                          "canvas_px")

    @property
    def rows_path(self) -> Path:
        return self.path / "rows.parquet"

    @property
    def row_layers_path(self) -> Path:
        return self.path / "row_layers.parquet"


# --------------------------------------------------------------------------- rows
def _prompt(item: ConsistencyItem, f: FormattedItem) -> tuple[PromptItem, str]:
    """The PromptItem and pass of one format (text: the "text" pass; rendered: "vision")."""
    if f.format == "text":
        if item.context:
            return PromptItem(item.question, item.context), "text"
        return PromptItem(TEXT_PROMPT, item.question), "text"
    return PromptItem(f.question, None, f.image), "vision"


def _answer_ids(vlm: VLM, items: Sequence[ConsistencyItem]) -> list[int]:
    """The first token of each item's answer (as it follows a space), for the lens's log p."""
    tok = vlm.tokenizer
    out = []
    for it in items:
        ids = tok(" " + it.answer, add_special_tokens=False)["input_ids"] or tok(it.answer, add_special_tokens=False)[
            "input_ids"]
        out.append(int(ids[0]) if ids else 0)
    return out


def _ocr(vlm: VLM, formatted: Sequence[FormattedItem], args: ConsistencyArguments) -> list[str | None]:
    if not args.ocr or not formatted:
        return [None] * len(formatted)
    batch = vlm.passes([PromptItem(OCR_PROMPT, None, f.image) for f in formatted], ["vision"])["vision"]
    return generate(vlm, batch, max_new_tokens=args.ocr_max_new_tokens).text


def _similarity(vlm: VLM, batches: dict, keep: dict[str, list[int]]) -> dict[str, dict[str, Any]]:
    """Per rendered format: cosine (rows, layers) and retrieval flags against the text format,
    over that format's rows (`keep[fmt]`: their units, which index the text batch's rows)."""
    out = {}
    text_batch = batches["text"]
    for fmt in ("image", "mixed"):
        if fmt not in batches:
            continue
        groups = ("context",) if fmt == "mixed" else ("context", "question")
        pos = [[p for g in groups for p in geo.positions(g)] for geo in text_batch.geometry]
        t = span_means(vlm, text_batch, pos)[keep[fmt]]
        v = group_means(vlm, batches[fmt], "image")
        an, bn = (torch.nn.functional.normalize(x.double(), dim=-1) for x in (v, t))
        s = torch.einsum("ild,jld->lij", an, bn)  # (layer, image row, text row)
        own = torch.arange(len(keep[fmt]))
        out[fmt] = {"cosine": cosine_by_layer(v, t), "i2t": (s.argmax(dim=2) == own).T,
                    "t2i": (s.argmax(dim=1) == own).T}
    return out


def consistency_rows(vlm: VLM, units: Sequence[tuple[ConsistencyItem, Variant]],
                     args: ConsistencyArguments) -> tuple[list[dict], list[dict]]:
    """Rows and layer rows of `units` ((item, variant) pairs), all formats, one batch per format."""
    forms = [item_formats(it, var) for it, var in units]
    answer_ids = _answer_ids(vlm, [it for it, _ in units])
    results, batches, keep = {}, {}, {}
    for fmt in ("text", "image", "mixed"):
        idx = [u for u in range(len(units)) if forms[u][fmt] is not None]
        if not idx:
            continue
        prompts = [_prompt(units[u][0], forms[u][fmt]) for u in idx]
        batch = vlm.passes([p for p, _ in prompts], [prompts[0][1]])[prompts[0][1]]
        gen = generate(vlm, batch, max_new_tokens=args.max_new_tokens, candidate_ids=sorted(set(answer_ids)))
        ocr = _ocr(vlm, [forms[u][fmt] for u in idx], args) if fmt != "text" else [None] * len(idx)
        results[fmt], batches[fmt], keep[fmt] = (idx, gen, ocr), batch, idx
    sims = _similarity(vlm, batches, keep)
    return _assemble(units, forms, answer_ids, results, sims)


def _assemble(units, forms, answer_ids, results, sims) -> tuple[list[dict], list[dict]]:
    cand = sorted(set(answer_ids))
    rows, layer_rows = [], []
    text_top = {u: results["text"][1].step_top_ids[k, 0, :, 0] for k, u in enumerate(results["text"][0])}
    for fmt, (idx, gen, ocr) in results.items():
        for k, u in enumerate(idx):
            item, var = units[u]
            f = forms[u][fmt]
            unit_id = f"{item.item_id}/{var.name}"
            row_id = f"{unit_id}/{fmt}"
            parsed = item.parse(gen.text[k])
            rows.append({"row_id": row_id, "unit_id": unit_id, "item_id": item.item_id, "variant": var.name,
                         "source": item.source, "format": fmt, "text_tier": item.meta.get("text_tier"),
                         "truth": item.answer, "generated": gen.text[k], "answer": parsed,
                         "valid": parsed is not None, "correct": item.is_correct(parsed), "stop": gen.stop[k],
                         "n_tokens": len(gen.tokens[k]), "rendered": f.rendered, "ocr_text": ocr[k],
                         "cer": character_error_rate(ocr[k], f.rendered) if ocr[k] is not None else None})
            top = gen.step_top_ids[k, 0, :, 0]
            lp = gen.step_candidate_log_probs[k, 0, :, cand.index(answer_ids[u])]
            sim, j = sims.get(fmt), k  # row k of this format's batch is unit u
            for layer in range(top.shape[0]):
                layer_rows.append({
                    "row_id": row_id, "unit_id": unit_id, "format": fmt, "variant": var.name, "layer": layer,
                    "top1": int(top[layer]), "agrees_text": bool(top[layer] == text_top[u][layer]),
                    "log_p_answer": float(lp[layer]),
                    "cosine": float(sim["cosine"][j, layer]) if sim else None,
                    "retrieved_i2t": bool(sim["i2t"][j, layer]) if sim else None,
                    "retrieved_t2i": bool(sim["t2i"][j, layer]) if sim else None})
    return rows, layer_rows


# --------------------------------------------------------------------------- the job
def run_consistency(*, model: str | None = None, items: str = "colour", n_items: int = 24, variants: str = "default",
                    max_new_tokens: int = 12, ocr: bool = True, ocr_max_new_tokens: int = 48, batch_size: int = 8,
                    device: str | None = None, dtype: str | None = None, limit: int | None = None, seed: int = 0,
                    resume: bool = False, out: str | None = None, n_boot: int = 1000, progress: bool = True,
                    figures: bool = True, threads: int | None = None, engine: EngineOptions | None = None,
                    device_map: str | None = None, memory_check: bool = True, canvas: str | int = "auto"
                    ) -> ConsistencyRunDir:
    """The consistency study: items x variants x formats -> run directory, summary, report.

    Every argument is checked and the items built (a bad JSONL line stops here) before a model is
    loaded or anything written. A killed run continues with ``resume=True`` (same model, items,
    seed, dtype, limit, batch size, variants, token budgets, OCR setting and canvas). ``canvas``:
    ``auto`` fits every rendering to a square of the model's input side when its processor makes
    every image one square (`hooks.processors.square_input_side`: a centre crop would cut a wide
    strip of text, a fixed resize squash it), ``none`` renders at the point size whatever the
    shape, a number is that side in pixels (at 100 DPI; `Variant.canvas`). ``engine``,
    ``device_map`` and ``memory_check`` are the main job's (`modality_lens.pipeline.run`): on Ray
    workers each shard is one chunk of ``batch_size`` units (its generation batches), as here.
    """
    args = check_consistency_arguments(items=items, n_items=n_items, variants=variants,
                                       max_new_tokens=max_new_tokens, ocr=ocr, ocr_max_new_tokens=ocr_max_new_tokens,
                                       threads=threads, batch_size=batch_size, limit=limit, seed=seed, n_boot=n_boot,
                                       out=out or Path("runs") / f"consistency-seed{seed}", resume=resume,
                                       canvas=canvas)
    from modality_lens.consistency_summary import finalize_consistency
    from modality_lens.pipeline import ModelSpec, UnitSetup, fill_chunks

    engine = EngineOptions.ready(engine)
    item_list = args.items()
    spec = ModelSpec.of(model, device=device, dtype=dtype, threads=args.threads, device_map=device_map,
                        memory_check=memory_check)
    vlm = spec.load()
    side = args.canvas_side(square_input_side(vlm.processor.image_processor))
    units = [(it, var) for var in args.variants_on(side) for it in item_list]
    run_dir = ConsistencyRunDir(args.out)
    new_folder = not run_dir.path.exists()
    run_dir.create(args.run_info(vlm, spec, item_list, engine, side), resume=resume)
    fill_chunks(run_dir, new_folder, units, lambda u: f"{u[0].item_id}/{u[1].name}", vlm,
                UnitSetup(spec, consistency_rows, args), batch_size=args.batch_size, progress=progress, engine=engine,
                finish=lambda: finalize_consistency(run_dir, n_boot=args.n_boot, seed=args.seed, figures=figures),
                unit="item")
    return run_dir


def report_consistency_main(run_dir: str) -> int:
    """``modality-lens report RUN_DIR`` of a consistency run: finalize it if it is not (its own
    seed and bootstrap count), draw the figures, write report.html."""
    from modality_lens.consistency_report import draw_consistency_figures, write_consistency_report
    from modality_lens.consistency_summary import finalize_consistency

    run = ConsistencyRunDir(run_dir)
    info = run.read_run_info()
    if not run.summary_path.exists():
        finalize_consistency(run, n_boot=int(info["arguments"].get("n_boot", 1000)), seed=int(info.get("seed", 0)),
                             figures=False)
    draw_consistency_figures(run)
    print(f"report: {write_consistency_report(run)}")
    return 0
