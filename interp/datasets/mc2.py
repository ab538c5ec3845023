"""Import MC²-format conflict items (Zhang et al., arXiv 2505.20977) with a user's images.

An item holds ``image_id`` (a COCO 2014 id), ``task``, ``question``, ``answer_vision``,
``answer_text``, ``context`` and, optionally, ``answer_img_candidate_list`` /
``answer_text_candidate_list`` synonym lists. The file may be a JSON list of items, a JSON
object mapping ids to items, or JSON lines (one item per line).

**[ours]** choices:

- Image lookup in the user's folder, in this order: a file named exactly ``image_id``; a
  file whose name without extension is ``image_id``; for a numeric id, a file whose name
  ends in that number (``COCO_val2014_000000391895.jpg`` for 391895). A number matching
  several files is reported as ambiguous, never guessed.
- Every image is decoded at import; missing, ambiguous or undecodable images raise one
  ``DatasetError`` listing the item ids, or with ``skip_missing=True`` those items are left
  out and recorded in ``Mc2Import.skipped`` (written to dataset.json as ``skipped``).
- ``Case.task`` is ``"mc2:<task>"``; the id is the item's ``id`` if it has one, else
  ``mc2-<position>``; items of one image share the group ``mc2-img-<image_id>``.
- Candidate lists start with the answer; a synonym that is in both lists is dropped from
  both (it cannot tell the two answers apart). Tiers, control, target box and seed are None.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from interp.datasets.case import Case
from interp.datasets.validate import validate
from interp.errors import CaseError, DatasetError
from interp.vocabulary import normalise_answer

REQUIRED_KEYS = ("image_id", "task", "question", "answer_vision", "answer_text", "context")
IMAGE_CANDIDATE_KEYS = ("answer_img_candidate_list", "answer_vision_candidate_list",
                        "answer_image_candidate_list")
TEXT_CANDIDATE_KEYS = ("answer_text_candidate_list",)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class Mc2Import:
    """The imported cases and, per item left out, ``{"id", "image_id", "reason"}``."""

    cases: list[Case]
    skipped: list[dict[str, Any]] = field(default_factory=list)


def _read_items(json_path: Path) -> list[dict[str, Any]]:
    if not json_path.is_file():
        raise DatasetError(f"no MC² file at {json_path}")
    text = json_path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except ValueError:
        try:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as err:
            raise DatasetError(f"{json_path} is neither JSON nor JSON lines: {err}") from err
    if isinstance(data, dict):
        data = [dict(item, id=item.get("id", key)) if isinstance(item, dict) else item
                for key, item in data.items()]
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise DatasetError(f"{json_path}: expected a list of items (JSON objects)")
    return data


def _index_images(image_dir: Path) -> tuple[dict[str, Path], dict[str, list[Path]], dict[int, list[Path]]]:
    if not image_dir.is_dir():
        raise DatasetError(f"image folder {image_dir} does not exist")
    by_name: dict[str, Path] = {}
    by_stem: dict[str, list[Path]] = {}
    by_number: dict[int, list[Path]] = {}
    for path in sorted(image_dir.iterdir()):
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        by_name[path.name] = path
        by_stem.setdefault(path.stem, []).append(path)
        match = re.search(r"(\d+)$", path.stem)
        if match:
            by_number.setdefault(int(match.group(1)), []).append(path)
    return by_name, by_stem, by_number


def _find_image(image_id: Any, index) -> tuple[Path | None, str]:
    by_name, by_stem, by_number = index
    key = str(image_id).strip()
    if key in by_name:
        return by_name[key], ""
    if len(by_stem.get(key, ())) == 1:
        return by_stem[key][0], ""
    if len(by_stem.get(key, ())) > 1:
        return None, f"ambiguous: {[p.name for p in by_stem[key]]}"
    if key.isdigit():
        found = by_number.get(int(key), [])
        if len(found) == 1:
            return found[0], ""
        if len(found) > 1:
            return None, f"ambiguous: {[p.name for p in found]}"
    return None, "missing: no file for this image_id"


def _candidates(answer: str, extra: Any, other: set[str]) -> tuple[str, ...]:
    out = [answer]
    seen = {normalise_answer(answer)}
    for cand in extra or ():
        norm = normalise_answer(str(cand))
        if norm and norm not in seen and norm not in other:
            out.append(str(cand))
            seen.add(norm)
    return tuple(out)


def load_mc2(json_path: str | Path, image_dir: str | Path, skip_missing: bool = False) -> Mc2Import:
    """Read an MC²-format file and resolve its images in ``image_dir``; see the module doc."""
    json_path, image_dir = Path(json_path), Path(image_dir)
    items = _read_items(json_path)
    index = _index_images(image_dir)
    cases: list[Case] = []
    skipped: list[dict[str, Any]] = []
    unusable: list[str] = []
    invalid: list[str] = []
    decoded: dict[Path, str] = {}
    stem_count = Counter(p.stem for p in index[0].values())
    for position, item in enumerate(items):
        case_id = str(item.get("id", f"mc2-{position:05d}"))
        missing_keys = [k for k in REQUIRED_KEYS if k not in item]
        if missing_keys:
            invalid.append(f"{case_id} (missing keys {missing_keys})")
            continue
        path, reason = _find_image(item["image_id"], index)
        if path is not None and path not in decoded:
            try:
                with Image.open(path) as img:
                    img.load()
                decoded[path] = ""
            except (OSError, ValueError) as err:
                decoded[path] = f"undecodable: {path.name} ({err})"
        if path is not None and decoded[path]:
            path, reason = None, decoded[path]
        if path is None:
            if skip_missing:
                skipped.append({"id": case_id, "image_id": item["image_id"], "reason": reason})
            else:
                unusable.append(f"{case_id} (image_id {item['image_id']!r}: {reason})")
            continue
        image_cands = next((item[k] for k in IMAGE_CANDIDATE_KEYS if k in item), None)
        text_cands = next((item[k] for k in TEXT_CANDIDATE_KEYS if k in item), None)
        answer_vision, answer_text = str(item["answer_vision"]), str(item["answer_text"])
        image_set = {normalise_answer(answer_vision)} | {normalise_answer(str(c)) for c in image_cands or ()}
        text_set = {normalise_answer(answer_text)} | {normalise_answer(str(c)) for c in text_cands or ()}
        name = path.stem if stem_count[path.stem] == 1 else f"{path.stem}-{path.suffix.lstrip('.')}"
        case = Case(
            id=case_id,
            group_id=f"mc2-img-{item['image_id']}",
            image=path,
            question=str(item["question"]).strip(),
            context=str(item["context"]).strip(),
            image_answer=answer_vision,
            text_answer=answer_text,
            image_candidates=_candidates(answer_vision, image_cands, text_set),
            text_candidates=_candidates(answer_text, text_cands, image_set),
            visual_tier=None,
            text_tier=None,
            control=None,
            target_box=None,
            seed=None,
            task=f"mc2:{item['task']}",
            image_name=f"{name}.png",
        )
        try:
            validate(case, check_image=False)
        except CaseError as err:
            invalid.append(f"{case_id} ({getattr(err, 'rule', 'rule')})")
            continue
        cases.append(case)
    if unusable:
        raise DatasetError(
            f"{len(unusable)} item(s) of {json_path} have no usable image in {image_dir}: "
            + "; ".join(unusable[:20]) + (" ..." if len(unusable) > 20 else "")
            + ". Add the images, or pass --skip-missing (skip_missing=True) to leave them out."
        )
    if invalid:
        raise DatasetError(
            f"{len(invalid)} item(s) of {json_path} are not valid conflict cases: "
            + "; ".join(invalid[:20]) + (" ..." if len(invalid) > 20 else "")
        )
    ids = [c.id for c in cases]
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{json_path}: item ids repeat; give each item a unique 'id'")
    return Mc2Import(cases, skipped)
