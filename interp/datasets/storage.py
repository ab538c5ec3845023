"""A dataset folder on disk: ``images/*.png`` + ``cases.jsonl`` + ``dataset.json``.

``dataset.json`` holds ``generator``, ``parameters``, ``seed`` and ``content_hash`` (plus
``n_cases``, ``n_images``, ``format_version`` and whatever else the caller's ``meta`` holds,
e.g. the MC² import's ``skipped`` record). It has no timestamp, so the same seed gives a
byte-identical folder.

``content_hash`` = sha256 over the bytes of ``cases.jsonl`` followed by one line
``"<image path> <sha256 of its bytes>\\n"`` per image, in order of first use.

Writing is all-or-nothing: everything goes to a hidden sibling folder first, which is
renamed into place only when complete, so a crash never leaves a folder that looks like a
finished dataset (and never touches what was there before). The hidden folders a killed write
leaves behind are cleaned up by the next write to the same place.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

from PIL import Image
from tqdm.auto import tqdm

from interp.datasets.case import JSONL_KEYS, Case
from interp.errors import DatasetError

FORMAT_VERSION = 1
IMAGES_DIR = "images"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    (image if image.mode == "RGB" else image.convert("RGB")).save(buffer, format="PNG")
    return buffer.getvalue()


def _image_name(case: Case) -> str:
    name = case.image_name or f"{case.id}.png"
    name = _SAFE_NAME.sub("_", Path(name).stem) + ".png"
    return name


def is_dataset_folder(folder: Path) -> bool:
    return (folder / "dataset.json").is_file() or (folder / "cases.jsonl").is_file()


def check_output_folder(folder: str | Path, overwrite: bool) -> Path:
    """Refuse a non-empty ``folder`` unless ``overwrite``; even then, only a dataset folder
    (one with dataset.json or cases.jsonl) is replaced, never an unrelated one."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DatasetError(f"{folder} exists and is not a folder; choose another --out")
    if folder.is_dir() and any(folder.iterdir()):
        if not overwrite:
            raise DatasetError(
                f"{folder} is not empty; choose another --out, or pass --force to replace "
                "the dataset in it"
            )
        if not is_dataset_folder(folder):
            raise DatasetError(
                f"{folder} is not empty and holds no dataset (no dataset.json or cases.jsonl); "
                "refusing to replace it even with --force: choose another --out"
            )
    return folder


def save_dataset(
    cases: Iterable[Case],
    folder: str | Path,
    meta: dict[str, Any],
    *,
    overwrite: bool = False,
    total: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``cases`` as a dataset folder and return what was written to dataset.json.

    ``meta`` must hold ``generator``, ``parameters`` and ``seed`` (``None`` for imports);
    other keys are kept. Cases that share ``image_name`` share one PNG. ``cases`` may be a
    generator: it is consumed once, with a progress bar (``total`` cases, if known).
    """
    for key in ("generator", "parameters", "seed"):
        if key not in meta:
            raise ValueError(f"meta needs {key!r}")
    _remove_leftovers(Path(folder).absolute())
    folder = check_output_folder(folder, overwrite).absolute()
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        info = _write(cases, partial, meta, total, progress)
        _swap_into_place(partial, folder)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return info


def _remove_leftovers(folder: Path) -> None:
    """Clean up after a write that was killed: remove the hidden ``.NAME.partial-*`` folders left
    beside ``folder``; a ``.NAME.old-*`` folder (the previous dataset, moved aside just before
    the new one was renamed into place) is put back when ``folder`` is missing, else removed."""
    if not folder.parent.is_dir():
        return
    for leftover in sorted(folder.parent.glob(f".{folder.name}.old-*")):
        if leftover.is_dir() and not leftover.is_symlink():
            if not folder.exists():
                leftover.rename(folder)
            else:
                shutil.rmtree(leftover, ignore_errors=True)
    for leftover in folder.parent.glob(f".{folder.name}.partial-*"):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)


def _write(cases, partial: Path, meta, total, progress) -> dict[str, Any]:
    (partial / IMAGES_DIR).mkdir()
    image_digests: dict[str, str] = {}
    image_order: list[str] = []
    seen_ids: set[str] = set()
    path_sources: dict[str, str] = {}  # image path in the folder -> the file it came from
    last_image: tuple[str, Any] | None = None
    cases_hash = hashlib.sha256()
    n_cases = 0
    with open(partial / "cases.jsonl", "wb") as out:
        for case in tqdm(cases, total=total, desc="writing cases", unit="case", disable=not progress):
            if case.id in seen_ids:
                raise DatasetError(f"two cases have the id {case.id!r}; ids must be unique")
            seen_ids.add(case.id)
            rel = f"{IMAGES_DIR}/{_image_name(case)}"
            from_file = not isinstance(case.image, Image.Image)
            if from_file and path_sources.get(rel) == str(case.image):
                pass  # this file was converted already
            elif last_image is None or last_image[0] != rel or last_image[1] is not case.image:
                data = _png_bytes(case.open_image())
                digest = hashlib.sha256(data).hexdigest()
                if rel in image_digests:
                    if image_digests[rel] != digest:
                        raise DatasetError(f"two different images are both named {rel!r}")
                else:
                    (partial / rel).write_bytes(data)
                    image_digests[rel] = digest
                    image_order.append(rel)
                    if from_file:
                        path_sources[rel] = str(case.image)
                last_image = (rel, case.image)
            line = (json.dumps(case.to_record(rel), ensure_ascii=False) + "\n").encode("utf-8")
            cases_hash.update(line)
            out.write(line)
            n_cases += 1
        out.flush()
        os.fsync(out.fileno())
    if n_cases == 0:
        raise DatasetError("no cases to write (check --n-per-cell and the tier lists)")
    info = {
        "generator": meta["generator"],
        "parameters": meta["parameters"],
        "seed": meta["seed"],
        "content_hash": _content_hash(cases_hash, ((r, image_digests[r]) for r in image_order)),
        "n_cases": n_cases,
        "n_images": len(image_order),
        "format_version": FORMAT_VERSION,
        **{k: v for k, v in meta.items() if k not in ("generator", "parameters", "seed")},
    }
    with open(partial / "dataset.json", "w", encoding="utf-8", newline="\n") as out:
        json.dump(info, out, indent=2, ensure_ascii=False)
        out.write("\n")
        out.flush()
        os.fsync(out.fileno())
    return info


def _content_hash(cases_hash, images: Iterable[tuple[str, str]]) -> str:
    total = cases_hash.copy()
    for rel, digest in images:
        total.update(f"{rel} {digest}\n".encode("utf-8"))
    return "sha256:" + total.hexdigest()


def _swap_into_place(partial: Path, folder: Path) -> None:
    """Rename ``partial`` to ``folder``; an old ``folder`` is moved aside first and deleted
    only after the new one is in place."""
    old = None
    if folder.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
        old.rmdir()
        folder.rename(old)
    try:
        partial.rename(folder)
    except BaseException:
        if old is not None:
            old.rename(folder)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def dataset_info(folder: str | Path) -> dict[str, Any]:
    """The parsed dataset.json of a dataset folder."""
    folder = Path(folder)
    path = folder / "dataset.json"
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder")
    if not path.is_file():
        raise DatasetError(
            f"{folder} has no dataset.json: not a dataset folder, or its writing did not finish; "
            "generate it again with `modality-lens dataset ...`"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DatasetError(f"{path} is not valid JSON ({err}); regenerate the dataset") from err


def _list_ids(ids: list[str], limit: int = 20) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


# key -> (test, what it must be) for each cases.jsonl value
_RECORD_TYPES: dict[str, tuple[Any, str]] = {
    "id": (_is_text, "a non-empty string"),
    "group_id": (_is_text, "a non-empty string"),
    "image": (_is_text, "the image's path inside the dataset folder (a non-empty string)"),
    "question": (_is_text, "a non-empty string"),
    "context": (_is_text, "a non-empty string"),
    "image_answer": (_is_text, "a non-empty string"),
    "text_answer": (_is_text, "a non-empty string"),
    "image_candidates": (lambda v: isinstance(v, list) and bool(v) and all(_is_text(c) for c in v),
                         "a non-empty list of strings"),
    "text_candidates": (lambda v: isinstance(v, list) and bool(v) and all(_is_text(c) for c in v),
                        "a non-empty list of strings"),
    "visual_tier": (lambda v: v is None or _is_int(v), "an integer or null"),
    "text_tier": (lambda v: v is None or _is_int(v), "an integer or null"),
    "control": (lambda v: v is None or isinstance(v, str), "null, \"text_irrelevant\" or \"image_irrelevant\""),
    "target_box": (lambda v: v is None or (isinstance(v, list) and len(v) == 4 and all(_is_int(x) for x in v)),
                   "null or [x0, y0, x1, y1] integers"),
    "seed": (lambda v: v is None or _is_int(v), "an integer or null"),
    "task": (lambda v: isinstance(v, str), "a string"),
}


def _record_problem(record: dict[str, Any]) -> str | None:
    """What is wrong with the types of a cases.jsonl line (None: nothing)."""
    for key, (test, what) in _RECORD_TYPES.items():
        if key in record and not test(record[key]):
            return f"{key} must be {what}, not {json.dumps(record[key])}"
    return None


def _image_outside(image: str, folder: Path) -> str | None:
    """Why an image path does not stay inside the dataset folder (None: it does).

    The path must be relative and, with every symlink resolved, lie inside the folder, so a
    dataset can never make a run read a file outside its own folder.
    """
    if Path(image).is_absolute() or Path(image).drive:
        return f"image {image!r} is an absolute path; image paths are relative to the dataset folder"
    root = folder.resolve()
    target = (root / image).resolve()
    if not target.is_relative_to(root):
        return (f"image {image!r} resolves to {target}, outside the dataset folder {root} (through '..' or a "
                "symlink); images must lie inside the folder")
    return None


def load_dataset(folder: str | Path, check_images: bool = True) -> list[Case]:
    """Read a dataset folder; each ``Case.image`` is the ``Path`` of its PNG.

    Raises ``DatasetError`` when dataset.json or cases.jsonl is missing or malformed, a line
    lacks a key or has a value of the wrong type, ids repeat, an image path leads outside the
    folder (``..``, an absolute path or a symlink), an image is missing, or (``check_images``) an image does not
    decode or the content hash differs from dataset.json's (the folder changed since it was
    written).
    """
    folder = Path(folder)
    info = dataset_info(folder)
    path = folder / "cases.jsonl"
    if not path.is_file():
        raise DatasetError(f"{folder} has dataset.json but no cases.jsonl; regenerate the dataset")
    raw = path.read_bytes()
    cases: list[Case] = []
    seen: set[str] = set()
    required = [k for k in JSONL_KEYS if k != "task"]
    for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            raise DatasetError(f"{path}, line {number}: not JSON ({err})") from err
        if not isinstance(record, dict):
            raise DatasetError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}")
        missing = [k for k in required if k not in record]
        if missing:
            raise DatasetError(f"{path}, line {number}: missing keys {missing}")
        problem = _record_problem(record) or _image_outside(record["image"], folder)
        if problem:
            raise DatasetError(f"{path}, line {number}: {problem}; fix that line or write the dataset again")
        if record["id"] in seen:
            raise DatasetError(f"{path}, line {number}: the id {record['id']!r} repeats")
        seen.add(record["id"])
        cases.append(Case.from_record(record, folder))
    if "n_cases" in info and info["n_cases"] != len(cases):
        raise DatasetError(
            f"{path} has {len(cases)} cases but dataset.json says {info['n_cases']}; regenerate it"
        )

    missing_ids = [c.id for c in cases if not Path(c.image).is_file()]
    if missing_ids:
        raise DatasetError(f"{folder}: images missing for cases {_list_ids(missing_ids)}")
    if check_images:
        digests: dict[str, str] = {}
        broken: dict[str, str] = {}
        for case in cases:
            rel = Path(case.image).relative_to(folder).as_posix()
            if rel in digests or rel in broken:
                continue
            data = Path(case.image).read_bytes()
            try:
                with Image.open(io.BytesIO(data)) as img:
                    img.load()
                digests[rel] = hashlib.sha256(data).hexdigest()
            except (OSError, ValueError) as err:
                broken[rel] = str(err)
        if broken:
            bad = [c.id for c in cases if Path(c.image).relative_to(folder).as_posix() in broken]
            raise DatasetError(f"{folder}: images that do not decode for cases {_list_ids(bad)}")
        expected = info.get("content_hash")
        actual = _content_hash(hashlib.sha256(raw), digests.items())
        if expected is not None and actual != expected:
            raise DatasetError(
                f"{folder}: content hash {actual} differs from dataset.json's {expected}; "
                "the folder was changed after it was written: regenerate it"
            )
    return cases
