"""Typographic conflict: the context sentence written into the scene as a sign (issue #21 item 7).

The bridge from the consistency study to the main one: the text that contradicts the scene is
not a text context but pixels of the same image. Every case of a colour (or shape) set gets the
three passes of the main job with images only (`interp.datasets.formats.sign_images`):

- ``vision``: the question with the clean scene (on the signed canvas size, the sign area blank);
- ``text``: the question with the sign alone (the scene left white);
- ``conflict``: the question with the scene and its sign.

No pass has a text context. The rows are the main job's (`modality_lens.rows`), so the
correct-in-both filter, the labels, TFR / VFR, the following curve and balance point, the
oscillations and the report are the main job's too (`modality_lens.finalize`,
`modality_lens.plots`, `modality_lens.report`): `run_typographic` writes a main-job run
directory whose run.json says ``"job": "typographic"``. **[ours]**: the clean scene is drawn on
the signed canvas (white below) so that the three images have one size and the image tokens
one layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from hooks.loading import VLM
from hooks.processors import square_input_side
from hooks.prompts import PromptItem, append_tokens
from interp.datasets.formats import SIGN_FRACTION, pad_square, sign_images
from interp.following import correct_in_both
from interp.logit_lens import trajectories
from interp.vocabulary import PASSES
from modality_lens.cases import BUILTIN_N_PER_CELL, case_item, case_pairs, load_cases
from modality_lens.engine import EngineOptions
from modality_lens.rows import case_row, layer_rows
from modality_lens.rundir import RunDir
from modality_lens.shipped import auto_image_size

__all__ = ["typographic_items", "typographic_rows", "run_typographic"]


def typographic_items(case: Any, fraction: float = SIGN_FRACTION, square: bool = False) -> dict[str, PromptItem]:
    """The three passes' PromptItems of a case (no text context in any of them); `square`: each
    image centred on a white square (`pad_square`), for a processor that makes every image one
    square (`hooks.processors.square_input_side`): a centre crop would cut the scene's top and
    the sign's bottom off the taller-than-wide signed canvas."""
    scene = case.open_image()
    signed, alone = sign_images(scene, case.context, fraction=fraction)
    top = signed.size[1] - (alone.size[1] - _sign_top(alone))
    clean = signed.copy()
    clean.paste((255, 255, 255), (0, top, *clean.size))  # the sign area blank: the scene alone
    if square:
        clean, alone, signed = pad_square(clean), pad_square(alone), pad_square(signed)
    question = case_item(case, image=scene).question
    return {"vision": PromptItem(question, None, clean), "text": PromptItem(question, None, alone),
            "conflict": PromptItem(question, None, signed)}


def _sign_top(alone: Any) -> int:
    """The first row of the sign (its black frame) in a sign-alone image."""
    grey = alone.convert("L")
    w, h = grey.size
    return next(y for y in range(h) if grey.getpixel((0, y)) == 0)


def _pass(vlm: VLM, items: Sequence[PromptItem], pairs: Sequence[Any]) -> list[Any]:
    batch = vlm.passes(list(items), ["vision"])["vision"]
    if any(p.prefix for p in pairs):
        batch = append_tokens(batch.to("cpu"), [p.prefix for p in pairs]).to(vlm.device)
    ids = sorted({t for p in pairs for t in p.ids})
    return trajectories(pairs, vlm.lens(batch, keep_logits=False, candidate_ids=ids, top_k=1))


def _answer(traj: Any, pair: Any, tokenizer: Any) -> tuple[str, str]:
    cls = traj.classes[-1]
    if cls in ("text", "vision"):
        return (pair.text if cls == "text" else pair.vision).answer, cls
    return tokenizer.decode([int(traj.top1[-1])]).strip(), "other"


def typographic_rows(vlm: VLM, cases: Sequence[Any], fraction: float = SIGN_FRACTION) -> tuple[list, list]:
    """The main job's case rows and layer rows of `cases` under the typographic passes."""
    pairs = case_pairs(vlm.tokenizer, cases)
    square = square_input_side(vlm.processor.image_processor) is not None
    items = [typographic_items(c, fraction, square) for c in cases]
    trajs = {name: _pass(vlm, [it[name] for it in items], pairs) for name in PASSES}
    answers = {name: [_answer(t, p, vlm.tokenizer) for t, p in zip(trajs[name], pairs)] for name in PASSES}
    filtered = correct_in_both([a for a, _ in answers["vision"]], [a for a, _ in answers["text"]],
                               [c.image_candidates for c in cases], [c.text_candidates for c in cases])
    rows, lay = [], []
    for b, (case, pair) in enumerate(zip(cases, pairs)):
        mine = {name: trajs[name][b] for name in PASSES}
        rows.append(case_row(case, pair, mine, {name: answers[name][b] for name in PASSES}, filtered.reasons[b]))
        for name in PASSES:
            lay += layer_rows(case.id, name, mine[name])
    return rows, lay


def run_typographic(*, model: str | None = None, dataset: str = "colour", n_per_cell: int | None = None,
                    limit: int | None = None, batch_size: int = 16, seed: int = 0, out: str | None = None,
                    resume: bool = False, n_boot: int = 1000, device: str | None = None, dtype: str | None = None,
                    progress: bool = True, figures: bool = True, threads: int | None = None,
                    engine: EngineOptions | None = None, device_map: str | None = None,
                    memory_check: bool = True) -> RunDir:
    """The typographic conflict as a main-job run directory (resumable, finalized, reported); ``engine``,
    ``device_map`` and ``memory_check`` are the main job's."""
    from modality_lens.arguments import check_run_arguments
    from modality_lens.finalize import finalize
    from modality_lens.pipeline import ModelSpec, UnitSetup, fill_chunks

    checked = check_run_arguments(batch_size=batch_size, limit=limit, seed=seed, image_size="auto", n_boot=n_boot,
                                  n_per_cell=BUILTIN_N_PER_CELL if n_per_cell is None else n_per_cell,
                                  dataset=dataset, out=out or Path("runs") / f"typographic-seed{seed}", resume=resume)
    engine = EngineOptions.ready(engine)
    spec = ModelSpec.of(model, device=device, dtype=dtype, threads=threads, device_map=device_map,
                        memory_check=memory_check)
    vlm = spec.load()
    cases, data_info = load_cases(checked["dataset"], seed=checked["seed"], n_per_cell=checked["n_per_cell"],
                                  image_size=auto_image_size(vlm.processor), limit=checked["limit"])
    case_pairs(vlm.tokenizer, cases)  # an answer the tokenizer cannot spell stops here
    run_dir = RunDir(checked["out"])
    new_folder = not run_dir.path.exists()
    run_dir.create({"job": "typographic", "model": spec.model_info(vlm), "dataset": data_info, "seed": checked["seed"],
                    "arguments": {"dtype": str(vlm.dtype).removeprefix("torch."), "limit": checked["limit"],
                                  "batch_size": checked["batch_size"], "n_per_cell": checked["n_per_cell"],
                                  "n_boot": checked["n_boot"], "sign_fraction": SIGN_FRACTION,
                                  "sign_square": square_input_side(vlm.processor.image_processor) is not None,
                                  "threads": torch.get_num_threads(), **engine.arguments()},
                    "device": vlm.placement}, resume=resume)

    def finish() -> None:
        finalize(run_dir, n_boot=checked["n_boot"])
        if figures:
            from modality_lens.plots import draw_all
            from modality_lens.report import write_report

            draw_all(run_dir)
            write_report(run_dir)

    fill_chunks(run_dir, new_folder, cases, lambda c: c.id, vlm, UnitSetup(spec, typographic_rows, SIGN_FRACTION),
                batch_size=checked["batch_size"], progress=progress, finish=finish, unit="case", engine=engine)
    return run_dir
