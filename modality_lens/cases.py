"""Dataset cases as the model side sees them, and where a run's cases come from.

`case_item` turns an `interp.datasets.Case` into the `hooks.prompts.PromptItem` the three passes
are built from (question + the one-word instruction, context, image); `case_pairs` turns cases
into the `interp.candidates.CandidatePair` of first-token ids that the lens reads. Both are the
one place this is done: the pipeline, the training recipe, the interventions experiment and the
tests call them.

`load_cases` gives a run's cases with their run.json record: a built-in generator drawn at the
model's input size (`auto_image_size`) or a dataset folder.
"""

from __future__ import annotations

import hashlib
import itertools
from typing import Any, Sequence

from hooks.prompts import PromptItem
from interp.candidates import CandidatePair, candidate_pair
from interp.datasets.cli import DEFAULT_N_PER_CELL
from interp.datasets.colour import colour_cases
from interp.datasets.shapes import shape_cases
from interp.datasets.storage import dataset_info, load_dataset
from interp.datasets.text import INSTRUCTION
from interp.datasets.validate import validate
from interp.errors import CaseError, DatasetError
from modality_lens.arguments import BUILTIN_DATASETS
from modality_lens.shipped import auto_image_size

__all__ = ["case_item", "case_pair", "case_pairs", "auto_image_size", "builtin_cases", "load_cases",
           "BUILTIN_DATASETS", "BUILTIN_N_PER_CELL"]

BUILTIN_N_PER_CELL = DEFAULT_N_PER_CELL
"""Groups per (visual tier, text tier) cell of the built-in sets in a default run **[ours]**:
16 x 14 x 4 x 3 = 2,688 colour cases (896 conflict + both controls), enough kept cases for a
balance point inside the data (measured: docs/datasets.md, "The default run's size")."""


def case_item(case: Any, image: Any = None) -> PromptItem:
    """The `PromptItem` of a dataset case: question + instruction, context, and its image (or `image`)."""
    return PromptItem(question=f"{case.question} {INSTRUCTION}", context=case.context,
                      image=image if image is not None else case.open_image())


def case_pair(tokenizer: Any, case: Any) -> CandidatePair:
    """The candidate pair of a case: its text and image answers, each with its synonyms.

    Raises:
        CaseError: an answer tokenises to nothing or both answers share their ids; the message
            names the case.
    """
    try:
        return candidate_pair(tokenizer, case.text_answer, case.image_answer,
                              tuple(case.text_candidates)[1:], tuple(case.image_candidates)[1:])
    except CaseError as err:
        raise CaseError(f"case {case.id}: {err}") from None


def case_pairs(tokenizer: Any, cases: Sequence[Any]) -> list[CandidatePair]:
    """`case_pair` of every case, in order."""
    return [case_pair(tokenizer, case) for case in cases]


def builtin_cases(name: str, *, seed: int, n_per_cell: int, image_size: int | None,
                  limit: int | None = None) -> tuple[list[Any], dict]:
    """(cases, dataset record for run.json) of a built-in set; with `limit`, its first `limit`
    cases only, and only their scenes are drawn and hashed (the generators are lazy)."""
    generate = {"colour": colour_cases, "shapes": shape_cases}[name]
    cases = list(itertools.islice(generate(n_per_cell, seed, image_size=image_size), limit))
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
    if limit is not None:  # the hash and the count are of the cases used
        parameters["limit"] = int(limit)
    return cases, {"source": f"builtin:{name}", "parameters": parameters, "seed": seed,
                   "hash": "sha256:" + digest.hexdigest(), "n_cases": len(cases)}


def load_cases(dataset: str | None, *, seed: int, n_per_cell: int, image_size: int | None,
               limit: int | None = None) -> tuple[list[Any], dict]:
    """Cases and their run.json record: a built-in name ("colour", "shapes") or a dataset folder;
    `limit` keeps the first `limit` cases (of a built-in set, only those are generated).

    Every case of a folder is held to every rule of `interp.datasets.validate` (as `modality-lens
    dataset check` does), so a broken case stops the run before anything is written.

    Raises:
        DatasetError: the folder is unreadable, holds no cases, or a case breaks a rule.
    """
    if dataset is None or dataset in BUILTIN_DATASETS:
        return builtin_cases(dataset or "colour", seed=seed, n_per_cell=n_per_cell, image_size=image_size,
                             limit=limit)
    cases = load_dataset(dataset)
    if not cases:
        raise DatasetError(f"{dataset} holds no cases (its cases.jsonl is empty): nothing to run; write the "
                           "dataset again with `modality-lens dataset ... --out FOLDER --force`")
    for case in cases:
        try:
            validate(case)
        except CaseError as err:
            raise DatasetError(f"{dataset}: {err}. Fix that line of cases.jsonl or write the dataset again; "
                               f"`modality-lens dataset check {dataset}` lists the rules") from None
    info = dataset_info(dataset)
    cases = cases[:limit] if limit is not None else cases
    return cases, {"source": str(dataset), "parameters": info.get("parameters"), "seed": info.get("seed"),
                   "hash": info.get("content_hash"), "n_cases": len(cases)}
