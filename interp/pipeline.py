"""Cases -> the three passes -> per-layer trajectories, uncertainties and labels -> rows.

`process_batch(vlm, cases)` runs the vision-only, text-only and conflict passes of a batch of
cases (one lens trace each) and returns one row per case and one row per case x layer x pass;
`iter_rows` does it batch by batch over a whole case list. The run directory, resume and
summary live in `interp.records` / `interp.summary`; `run` joins them.

Answers **[ours]**: a pass's answer is read from the top-1 token at the answer position (after
any teacher-forced common prefix of the two answers, see `interp.candidates`): a text-answer
id gives the text answer, a vision-answer id the image answer, anything else "other" (the
decoded token). This is the same rule the logit lens applies at every layer, so the last
layer's class is the model's answer. `H_v` / `H_t` are the full-vocabulary entropies (nats) of
the vision-only / text-only pass at that position.

This module does not import transformers or nnsight; it drives a `hooks.loading.VLM`.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

from interp.candidates import CandidatePair, candidate_pair
from interp.errors import CaseError
from interp.following import correct_in_both
from interp.logit_lens import Trajectory, trajectories
from interp.oscillation import count_switches
from interp.uncertainty import dh_rel

__all__ = ["run", "process_batch", "iter_rows", "case_item", "load_cases", "default_model"]

PASS_NAMES = ("vision", "text", "conflict")  # hooks.prompts.PASSES, without importing torch here
# The row schemas are interp.records.CASE_SCHEMA and LAYER_SCHEMA.


def case_item(case: Any) -> Any:
    """The `hooks.prompts.PromptItem` of a dataset case: question + instruction, context, image."""
    from hooks.prompts import PromptItem
    from interp.datasets.text import INSTRUCTION

    return PromptItem(question=f"{case.question} {INSTRUCTION}", context=case.context, image=case.open_image())


def _pairs(tokenizer: Any, cases: Sequence[Any]) -> list[CandidatePair]:
    pairs = []
    for case in cases:
        try:
            pairs.append(candidate_pair(tokenizer, case.text_answer, case.image_answer,
                                        tuple(case.text_candidates)[1:], tuple(case.image_candidates)[1:]))
        except CaseError as err:
            raise CaseError(f"case {case.id}: {err}") from None
    return pairs


def _answer(traj: Trajectory, pair: CandidatePair, tokenizer: Any) -> tuple[str, str]:
    """(answer word, class) from the last layer of a trajectory."""
    cls = traj.classes[-1]
    if cls == "text":
        return pair.text.answer, cls
    if cls == "vision":
        return pair.vision.answer, cls
    return tokenizer.decode([int(traj.top1[-1])]).strip(), "other"


def _run_pass(vlm: Any, batch: Any, pairs: Sequence[CandidatePair]) -> list[Trajectory]:
    from hooks.prompts import append_tokens

    if any(p.prefix for p in pairs):
        batch = append_tokens(batch, [p.prefix for p in pairs])
    ids = sorted({t for p in pairs for t in p.ids})
    result = vlm.lens(batch, keep_logits=False, candidate_ids=ids, top_k=1)
    return trajectories(pairs, result)


def process_batch(vlm: Any, cases: Sequence[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The three passes of `cases` (one batch each) -> (case rows, layer rows)."""
    tok = vlm.tokenizer
    pairs = _pairs(tok, cases)
    items = [case_item(c) for c in cases]
    batches = vlm.passes(items, PASS_NAMES)
    trajs = {name: _run_pass(vlm, batches[name], pairs) for name in PASS_NAMES}
    answers = {name: [_answer(t, p, tok) for t, p in zip(trajs[name], pairs)] for name in PASS_NAMES}
    filtered = correct_in_both([a for a, _ in answers["vision"]], [a for a, _ in answers["text"]],
                               [c.image_candidates for c in cases], [c.text_candidates for c in cases])
    case_rows, layer_rows = [], []
    for b, (case, pair) in enumerate(zip(cases, pairs)):
        tv, tt, tm = trajs["vision"][b], trajs["text"][b], trajs["conflict"][b]
        (y_v, class_v), (y_t, class_t), (y_m, class_m) = (answers[n][b] for n in PASS_NAMES)
        vision_correct, text_correct = class_v == "vision", class_t == "text"
        h_v, h_t = float(tv.entropy[-1]), float(tt.entropy[-1])
        # controls are never kept: their text or question is about another shape by design
        reason = "control" if case.control else filtered.reasons[b]
        case_rows.append({
            "case_id": case.id, "group_id": case.group_id, "task": case.task,
            "visual_tier": case.visual_tier, "text_tier": case.text_tier, "control": case.control,
            "image_answer": case.image_answer, "text_answer": case.text_answer,
            "y_v": y_v, "y_t": y_t, "y_m": y_m, "class_v": class_v, "class_t": class_t, "class_m": class_m,
            "vision_correct": vision_correct, "text_correct": text_correct,
            "h_v": h_v, "h_t": h_t, "dh_rel": float(dh_rel(h_t, h_v)),
            "label": {"text": "text", "vision": "vision"}.get(class_m, "other"),
            "kept": reason is None, "drop_reason": reason,
            "oscillations": count_switches(tm.classes, has_embedding=True),
            "p_text_m": float(tm.p_text[-1]), "p_vision_m": float(tm.p_vision[-1]),
            "logit_diff_m": float(tm.logit_diff[-1]), "divergence_position": pair.divergence_position,
        })
        for name, traj in (("vision", tv), ("text", tt), ("conflict", tm)):
            for row in traj.to_rows():
                layer_rows.append({"case_id": case.id, "pass": name, **row})
    return case_rows, layer_rows


def iter_rows(vlm: Any, cases: Iterable[Any], *, batch_size: int = 16, progress: bool = True,
              total: int | None = None) -> Iterator[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """`process_batch` over `cases` in batches, with a progress bar; yields each batch's rows."""
    from tqdm import tqdm

    cases = list(cases)
    bar = tqdm(total=total or len(cases), desc="cases", unit="case", disable=not progress, mininterval=1)
    try:
        for start in range(0, len(cases), batch_size):
            chunk = cases[start:start + batch_size]
            yield process_batch(vlm, chunk)
            bar.update(len(chunk))
    finally:
        bar.close()


# ----------------------------------------------------------------------------- a whole run
BUILTIN_DATASETS = ("colour", "shapes")
BUILTIN_N_PER_CELL = 16
"""Groups per (visual tier, text tier) cell of the built-in sets in a default run **[ours]**:
16 x 14 x 4 x 3 = 2,688 colour cases (896 conflict + both controls), about a minute on 2 cores
with the shipped model. Measured: with 6 groups per cell only ~70 conflict cases pass the
correct-in-both filter and the logistic crossing is not always inside the observed range."""


def default_model() -> str:
    """The shipped small trained VLM: data/tiny_vlm of a checkout, else the installed copy."""
    from pathlib import Path

    checkout = Path(__file__).resolve().parent.parent / "data" / "tiny_vlm"
    if (checkout / "config.json").is_file():
        return str(checkout)
    try:
        from importlib.resources import files

        installed = files("modality_lens_data") / "tiny_vlm"
        if installed.joinpath("config.json").is_file():
            return str(installed)
    except (ModuleNotFoundError, NotADirectoryError, OSError):
        pass
    return str(checkout)


def auto_image_size(processor: Any) -> int | None:
    """**[ours]** Draw built-in scenes at the model's own input size when it is square and at most
    224 px (small models would otherwise see a centre crop of an 800x600 scene), else at the
    paper's sizes (None)."""
    ip = getattr(processor, "image_processor", None)

    def field(size: Any, key: str) -> Any:  # a dict, or transformers' SizeDict (attributes)
        return size.get(key) if isinstance(size, dict) else getattr(size, key, None)

    for size in (getattr(ip, "crop_size", None), getattr(ip, "size", None)):
        if size is None:
            continue
        h, w = field(size, "height"), field(size, "width")
        if h is None and w is None and field(size, "shortest_edge"):
            h = w = field(size, "shortest_edge")
        if h and w:
            return int(h) if h == w and h <= 224 else None
    return None


def builtin_cases(name: str, *, seed: int, n_per_cell: int, image_size: int | None) -> tuple[list[Any], dict]:
    """(cases, dataset record for run.json) of a built-in set."""
    import hashlib

    from interp.datasets.colour import colour_cases
    from interp.datasets.shapes import shape_cases

    generate = {"colour": colour_cases, "shapes": shape_cases}[name]
    cases = list(generate(n_per_cell, seed, image_size=image_size))
    digest = hashlib.sha256()
    seen: set[str] = set()
    for case in cases:
        record = [case.id, case.question, case.context, case.image_answer, case.text_answer,
                  list(case.image_candidates), list(case.text_candidates), case.control]
        digest.update(repr(record).encode())
        if case.image_name not in seen:
            seen.add(case.image_name)
            digest.update(case.open_image().tobytes())
    parameters = {"n_per_cell": n_per_cell, "image_size": image_size, "generator": name}
    return cases, {"source": f"builtin:{name}", "parameters": parameters, "seed": seed,
                   "hash": "sha256:" + digest.hexdigest(), "n_cases": len(cases)}


def load_cases(dataset: str | None, *, seed: int, n_per_cell: int, image_size: int | None) -> tuple[list[Any], dict]:
    """Cases and their run.json record: a built-in name ("colour", "shapes") or a dataset folder."""
    from interp.datasets.storage import dataset_info, load_dataset

    if dataset is None or dataset in BUILTIN_DATASETS:
        return builtin_cases(dataset or "colour", seed=seed, n_per_cell=n_per_cell, image_size=image_size)
    cases = load_dataset(dataset)
    info = dataset_info(dataset)
    return cases, {"source": str(dataset), "parameters": info.get("parameters"), "seed": info.get("seed"),
                   "hash": info.get("content_hash"), "n_cases": len(cases)}


def run(
    *,
    model: str | None = None,
    dataset: str | None = None,
    out: str | None = None,
    batch_size: int = 16,
    device: str | None = None,
    dtype: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    resume: bool = False,
    n_per_cell: int = BUILTIN_N_PER_CELL,
    image_size: int | str | None = "auto",
    n_boot: int = 1000,
    progress: bool = True,
    figures: bool = True,
) -> Any:
    """The main job: cases -> three passes -> run directory with records, summary, figures, report.

    Returns the `interp.records.RunDir`. Every case's candidate tokens are checked before
    anything is written, so a case the model cannot answer stops the run up front; a killed
    run continues with `resume=True` (same model, dataset, seed, dtype and limit).
    """
    from pathlib import Path

    from hooks.loading import load_vlm
    from interp.records import RunDir, weights_hash

    source = model or default_model()
    vlm = load_vlm(source, device=device, dtype=dtype)
    size = auto_image_size(vlm.processor) if image_size == "auto" else image_size
    cases, data_info = load_cases(dataset, seed=seed, n_per_cell=n_per_cell, image_size=size)
    if limit is not None:
        cases = cases[: int(limit)]
    _pairs(vlm.tokenizer, cases)  # refuse untokenisable or identical answers before writing anything
    local = Path(source).is_dir()
    run_dir = RunDir(out or Path("runs") / f"run-seed{seed}")
    run_dir.create({
        "model": {"source": str(Path(source).resolve()) if local else source,
                  "weights_hash": weights_hash(source) if local else None,
                  "class": vlm.adapter.model_class, "n_layers": vlm.n_layers,
                  "self_check": str(vlm.self_check_report)},
        "dataset": data_info,
        "seed": seed,
        "arguments": {"dtype": str(vlm.dtype).removeprefix("torch."), "limit": limit, "batch_size": batch_size,
                      "n_per_cell": n_per_cell, "image_size": size, "n_boot": n_boot},
        "device": str(vlm.device),
    }, resume=resume)
    try:
        done = run_dir.done_case_ids()
        todo = [c for c in cases if c.id not in done]
        for case_rows, layer_rows in iter_rows(vlm, todo, batch_size=batch_size, progress=progress,
                                               total=len(todo)):
            run_dir.append(case_rows, layer_rows)
        run_dir.finalize(n_boot=n_boot)
        if figures:
            from interp.plots import draw_all
            from interp.report import write_report

            draw_all(run_dir)
            write_report(run_dir)
    finally:
        run_dir.close()
    return run_dir
