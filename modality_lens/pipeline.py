"""Cases -> the three passes -> per-layer trajectories, uncertainties and labels -> rows -> a run.

`process_batch(vlm, cases)` runs the vision-only, text-only and conflict passes of a batch of
cases (each distinct pass input once per run, on a cached prompt prefix where the class allows:
`modality_lens.dedupe`, docs/performance.md; `reuse=False`: one full lens trace per pass) and returns one `CaseRow` per case and one `LayerRow` per case x
layer x pass (`modality_lens.rows`); `iter_rows` does it batch by batch over a whole case list;
`run` is the main job: cases -> rows -> run directory (`modality_lens.rundir`) -> summary
(`modality_lens.finalize`) -> figures and report.

Answers **[ours]**: a pass's answer is read from the top-1 token at the answer position (after
any teacher-forced common prefix of the two answers, see `interp.candidates`): a text-answer
id gives the text answer, a vision-answer id the image answer, anything else "other" (the
decoded token). This is the same rule the logit lens applies at every layer, so the last
layer's class is the model's answer. `H_v` / `H_t` are the full-vocabulary entropies (nats) of
the vision-only / text-only pass at that position.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from tqdm import tqdm

from hooks.loading import VLM, load_vlm
from hooks.prompts import PassBatch, append_tokens
from interp.candidates import CandidatePair
from interp.following import correct_in_both
from interp.logit_lens import Trajectory, trajectories
from interp.uncertainty import NMLP_TOP_K
from interp.vocabulary import PASSES
from modality_lens.atomic import atomic_write_bytes, json_text
from modality_lens.cases import BUILTIN_N_PER_CELL, auto_image_size, case_item, case_pairs, load_cases
from modality_lens.dedupe import PassMemo
from modality_lens.engine import EngineOptions, ShardJob, commit_shards
from modality_lens.finalize import finalize
from modality_lens.rows import CaseRow, LayerRow, case_row, layer_rows
from modality_lens.provenance import weights_hash
from modality_lens.rundir import RunDir
from modality_lens.shipped import default_model

__all__ = ["run", "process_batch", "iter_rows", "default_model", "ModelSpec", "ShardSetup", "shard_rows", "UnitSetup",
           "unit_rows", "fill_chunks", "batches"]


def _answer(traj: Trajectory, pair: CandidatePair, tokenizer: Any) -> tuple[str, str]:
    """(answer word, class) from the last layer of a trajectory."""
    cls = traj.classes[-1]
    if cls == "text":
        return pair.text.answer, cls
    if cls == "vision":
        return pair.vision.answer, cls
    return tokenizer.decode([int(traj.top1[-1])]).strip(), "other"


def _run_pass(vlm: VLM, batch: PassBatch, pairs: Sequence[CandidatePair]) -> list[Trajectory]:
    if any(p.prefix for p in pairs):
        batch = append_tokens(batch, [p.prefix for p in pairs])
    ids = sorted({t for p in pairs for t in p.ids})
    result = vlm.lens(batch, keep_logits=False, candidate_ids=ids, top_k=min(NMLP_TOP_K, vlm.vocab_size))
    return trajectories(pairs, result)


def process_batch(vlm: VLM, cases: Sequence[Any], *, reuse: bool = True,
                  memo: PassMemo | None = None) -> tuple[list[CaseRow], list[LayerRow]]:
    """The three passes of `cases` -> (case rows, layer rows).

    `reuse=True` computes each distinct pass input once (across calls sharing `memo`) and on a
    cached prefix where the class allows (`modality_lens.dedupe`); `reuse=False` runs the three
    passes as three full batches, the uncached computation the cached one must equal.
    """
    tok = vlm.tokenizer
    if reuse:
        memo = memo if memo is not None else PassMemo(vlm)
        pairs = memo.pairs(cases)
        trajs = {name: trajectories(pairs, memo.lens(name, cases, pairs)) for name in PASSES}
    else:
        pairs = case_pairs(tok, cases)
        batches = vlm.passes([case_item(c) for c in cases], PASSES)
        trajs = {name: _run_pass(vlm, batches[name], pairs) for name in PASSES}
    answers = {name: [_answer(t, p, tok) for t, p in zip(trajs[name], pairs)] for name in PASSES}
    filtered = correct_in_both([a for a, _ in answers["vision"]], [a for a, _ in answers["text"]],
                               [c.image_candidates for c in cases], [c.text_candidates for c in cases])
    case_rows, rows_of_layers = [], []
    for b, (case, pair) in enumerate(zip(cases, pairs)):
        mine = {name: trajs[name][b] for name in PASSES}
        case_rows.append(case_row(case, pair, mine, {name: answers[name][b] for name in PASSES},
                                  filtered.reasons[b]))
        for name in PASSES:
            rows_of_layers += layer_rows(case.id, name, mine[name])
    return case_rows, rows_of_layers


def iter_rows(vlm: VLM, cases: Iterable[Any], *, batch_size: int = 16, progress: bool = True,
              total: int | None = None, reuse: bool = True,
              memo: PassMemo | None = None) -> Iterator[tuple[list[CaseRow], list[LayerRow]]]:
    """`process_batch` over `cases` in batches, with a progress bar; yields each batch's rows.

    With `reuse`, one `PassMemo` (given, or made here over every case's candidate ids) serves
    all batches, so a pass input seen in an earlier batch is not computed again.
    """
    cases = list(cases)
    if reuse and memo is None:
        memo = PassMemo(vlm)
        memo.plan(cases, batch_size)  # every case's candidate ids, and where each row is computed
    bar = tqdm(total=total or len(cases), desc="cases", unit="case", disable=not progress, mininterval=1)
    try:
        for start in range(0, len(cases), batch_size):
            chunk = cases[start:start + batch_size]
            yield process_batch(vlm, chunk, reuse=reuse, memo=memo)
            bar.update(len(chunk))
    finally:
        bar.close()


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
    region_width: float = 0.5,
    layers: str | list[int] | None = None,
    progress: bool = True,
    figures: bool = True,
    reuse: bool = True,
    threads: int | None = None,
    engine: EngineOptions | None = None,
    device_map: str | None = None,
    memory_check: bool = True,
) -> RunDir:
    """The main job: cases -> three passes -> run directory with records, summary, figures, report.

    Returns the `modality_lens.rundir.RunDir`. Every case's candidate tokens are checked before
    anything is written, so a case the model cannot answer stops the run up front; a killed
    run continues with `resume=True` (same model, dataset, seed, dtype and limit). `reuse=False`
    computes every pass of every case as a full forward (`process_batch`); `threads` sets torch's
    CPU threads (None: torch's default); run.json records both, and reuse.json what reuse saved.
    `n_boot`, `region_width` and `layers` (the lens positions whose switches count, "2-4,6" or a
    list; None: every decoder layer) shape the summary only, not the records. `engine` (default:
    this process) can compute the rows on Ray workers (`modality_lens.engine`, docs/scaling.md):
    the same rows, committed in the same order. `device_map="auto"` spreads the model over the
    visible GPUs; `memory_check=False` skips the estimate made before loading (`ModelSpec`).
    """
    from modality_lens.arguments import BUILTIN_DATASETS, check_layers, check_run_arguments  # before loading
    from modality_lens.arguments import positive_int as check_positive

    checked = check_run_arguments(batch_size=batch_size, limit=limit, seed=seed, n_per_cell=n_per_cell,
                                  image_size=image_size, n_boot=n_boot, dataset=dataset,
                                  out=out or Path("runs") / f"run-seed{seed}", resume=resume,
                                  region_width=region_width, layers=layers)
    region_width, layers = checked["region_width"], checked["layers"]
    batch_size, limit, seed, n_per_cell, image_size, n_boot = (
        checked[k] for k in ("batch_size", "limit", "seed", "n_per_cell", "image_size", "n_boot"))
    threads = None if threads is None else check_positive("threads", threads)
    engine = EngineOptions.ready(engine)  # a missing extra stops the run before the model is loaded
    # a dataset folder is read and every case validated before the model is loaded
    folder = None if checked["dataset"] in (None, *BUILTIN_DATASETS) else load_cases(
        checked["dataset"], seed=seed, n_per_cell=n_per_cell, image_size=None, limit=limit)
    spec = ModelSpec.of(model, device=device, dtype=dtype, threads=threads, device_map=device_map,
                        memory_check=memory_check)
    vlm = spec.load()
    check_layers(layers, vlm.n_layers)  # before anything is written
    size = auto_image_size(vlm.processor) if image_size == "auto" else image_size
    cases, data_info = folder or load_cases(dataset, seed=seed, n_per_cell=n_per_cell, image_size=size, limit=limit)
    # refuse untokenisable or identical answers before writing anything (the memo keeps their ids)
    memo = PassMemo(vlm) if reuse else None
    if memo is not None:
        memo.plan(cases, batch_size)  # the whole list, also on --resume: the same batches, the same numbers
    else:
        case_pairs(vlm.tokenizer, cases)
    run_dir = RunDir(out or Path("runs") / f"run-seed{seed}")
    new_folder = not run_dir.path.exists()
    run_dir.create({
        "model": spec.model_info(vlm),
        "dataset": data_info,
        "seed": seed,
        "arguments": {"dtype": str(vlm.dtype).removeprefix("torch."), "limit": limit, "batch_size": batch_size,
                      "n_per_cell": n_per_cell, "image_size": size, "n_boot": n_boot,
                      "region_width": region_width, "layers": layers,
                      "reuse": reuse, "threads": torch.get_num_threads(),
                      **engine.arguments()},
        "device": vlm.placement,
    }, resume=resume)
    setup = ShardSetup(spec, batch_size=batch_size, reuse=reuse)
    try:
        _fill_run(run_dir, _ShardState(vlm, memo, list(cases), batch_size), setup, engine, progress=progress,
                  summary={"n_boot": n_boot, "region_width": region_width, "layers": layers}, figures=figures)
    except BaseException:
        discard_if_empty(run_dir, new_folder)
        raise
    finally:
        run_dir.close()
    return run_dir


def _fill_run(run_dir: RunDir, state: "_ShardState", setup: "ShardSetup", engine: EngineOptions, *, progress: bool,
              summary: dict[str, Any], figures: bool) -> None:
    """The rows of every case not yet committed (one shard, a batch, per chunk, on either engine), then
    reuse.json, the summary, figures and report."""
    done = run_dir.done_case_ids()
    todo = [i for i, c in enumerate(state.cases) if c.id not in done]
    job = ShardJob(work=shard_rows, setup=setup, payload=state.cases, local=state)
    stats = commit_shards(run_dir, job, batches(todo, state.batch_size), engine, progress=progress, unit="case")
    reuse = stats[0] if engine.name == "local" else {"engine": engine.name, "workers": stats}
    atomic_write_bytes(run_dir.path / "reuse.json", json_text({"cases": len(todo), **reuse}).encode())
    finalize(run_dir, **summary, decode=lambda i: state.vlm.tokenizer.decode([int(i)]).strip())
    if figures:
        # imported here: matplotlib costs ~0.3 s of start-up that iter_rows users never need
        from modality_lens.plots import draw_all
        from modality_lens.report import write_report

        draw_all(run_dir)
        write_report(run_dir)


def batches(indices: Sequence[int], size: int) -> list[list[int]]:
    """`indices` cut into consecutive shards of `size` (the last may be shorter): the local loop's batches."""
    return [list(indices[s:s + size]) for s in range(0, len(indices), size)]


@dataclass(frozen=True)
class ModelSpec:
    """How a job loads its model, the same on this process and on every Ray worker: `source` (a
    model directory, resolved to an absolute path, a hub id or tiny:FAMILY) and the load options
    (`hooks.loading.load_vlm`; the memory check runs on every load). `threads`: torch's CPU
    threads (None: torch's default here, 1 on a worker, which has one CPU)."""

    source: str
    device: str | None = None
    dtype: str | None = None
    threads: int | None = None
    device_map: str | None = None
    memory_check: bool = True

    @classmethod
    def of(cls, model: str | None, **options: Any) -> "ModelSpec":
        """`model` (None: the shipped one) with a directory made absolute, so every node finds it."""
        source = model or default_model()
        return cls(str(Path(source).resolve()) if Path(source).is_dir() else str(source), **options)

    def load(self, *, worker: bool = False) -> VLM:
        threads = self.threads or (1 if worker else None)
        if threads is not None:
            torch.set_num_threads(int(threads))
        return load_vlm(self.source, device=self.device, dtype=self.dtype, device_map=self.device_map,
                        memory_check=self.memory_check)

    def model_info(self, vlm: VLM) -> dict[str, Any]:
        """run.json's ``model`` entry (the weights' hash identifies a local directory)."""
        local = Path(self.source).is_dir()
        return {"source": self.source, "weights_hash": weights_hash(self.source) if local else None,
                "class": vlm.adapter.model_class, "n_layers": vlm.n_layers, "self_check": str(vlm.self_check_report)}


@dataclass(frozen=True)
class ShardSetup:
    """The main study's worker: `ShardSetup(spec, ...)(cases)` loads the model and plans the whole
    case list (so a case's rows do not depend on the shards around it); `shard_rows(state,
    indices)` then gives a shard's rows."""

    model: ModelSpec
    batch_size: int = 16
    reuse: bool = True

    def __call__(self, cases: Sequence[Any]) -> "_ShardState":
        vlm = self.model.load(worker=True)
        memo = PassMemo(vlm) if self.reuse else None
        if memo is not None:
            memo.plan(cases, self.batch_size)
        return _ShardState(vlm, memo, list(cases), self.batch_size)


@dataclass
class _ShardState:
    vlm: VLM
    memo: PassMemo | None
    cases: list[Any]
    batch_size: int

    def stats(self) -> dict[str, Any]:
        return self.memo.stats() if self.memo is not None else {"reuse": False}


def shard_rows(state: _ShardState, indices: Sequence[int]) -> tuple[list[CaseRow], list[LayerRow]]:
    """The rows of the cases at `indices` (one shard), batch by batch as `iter_rows` computes them."""
    case_rows: list[CaseRow] = []
    rows_of_layers: list[LayerRow] = []
    for c, lay in iter_rows(state.vlm, [state.cases[i] for i in indices], batch_size=state.batch_size,
                            progress=False, reuse=state.memo is not None, memo=state.memo):
        case_rows += c
        rows_of_layers += lay
    return case_rows, rows_of_layers


@dataclass(frozen=True)
class UnitSetup:
    """A study beside the main one (perturbation, consistency, typographic): `rows(vlm, units, args)`
    gives the (rows, layer rows) of a chunk of units. `UnitSetup(...)(units)` is a Ray worker's
    state (the model loaded once); `state(vlm, units)` the same on this process."""

    model: ModelSpec
    rows: Callable[[VLM, Sequence[Any], Any], tuple[Sequence[Any], Sequence[Any]]]
    args: Any = None

    def state(self, vlm: VLM, units: Sequence[Any]) -> "_UnitState":
        return _UnitState(vlm, list(units), self)

    def __call__(self, units: Sequence[Any]) -> "_UnitState":
        return self.state(self.model.load(worker=True), units)


@dataclass
class _UnitState:
    vlm: VLM
    units: list[Any]
    setup: UnitSetup

    def stats(self) -> dict[str, Any]:
        return {}


def unit_rows(state: _UnitState, indices: Sequence[int]) -> tuple[Sequence[Any], Sequence[Any]]:
    """The rows of the units at `indices` (one shard: one chunk of the local loop)."""
    return state.setup.rows(state.vlm, [state.units[i] for i in indices], state.setup.args)


def discard_if_empty(run_dir: RunDir, new_folder: bool) -> None:
    """A run that this call created and that failed (or was interrupted) before its first case
    was committed leaves nothing to resume: its folder is removed, so that the same command can
    simply be run again. A folder that existed before, or holds committed cases, stays."""
    if not new_folder:
        return
    try:
        if run_dir.done_case_ids():
            return
    except Exception:  # unreadable: leave it for --resume to report
        return
    run_dir.close()
    shutil.rmtree(run_dir.path, ignore_errors=True)


def fill_chunks(run_dir: RunDir, new_folder: bool, units: Sequence[Any], key: Callable[[Any], str], vlm: VLM,
                setup: UnitSetup, *, batch_size: int, progress: bool, finish: Callable[[], Any], unit: str = "unit",
                engine: EngineOptions | None = None) -> None:
    """The loop of the jobs beside the main one (perturbation, consistency, typographic): every
    unit whose `key` is not committed yet, `batch_size` at a time, through `setup.rows` into one
    atomic chunk each, on this process with `vlm` or on Ray workers (`engine`; the same chunks,
    so the same records); then `finish()` (summary, figures, report). A failure before the first
    commit removes a folder this job created (`discard_if_empty`); the run directory is closed
    either way."""
    try:
        done = run_dir.done_case_ids()
        todo = [i for i, u in enumerate(units) if key(u) not in done]
        job = ShardJob(work=unit_rows, setup=setup, payload=list(units), local=setup.state(vlm, units))
        commit_shards(run_dir, job, batches(todo, batch_size), engine or EngineOptions(), progress=progress,
                      unit=unit)
        finish()
    except BaseException:
        discard_if_empty(run_dir, new_folder)
        raise
    finally:
        run_dir.close()
