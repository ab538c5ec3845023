"""The run directory: provenance, append-only Parquet chunks, resume, and the final tables.

Layout of a run directory::

    run.json              provenance (see :meth:`RunDir.create`)
    cases/part-000000.parquet    one chunk of case rows      } written by append(),
    layers/part-000000.parquet   the same chunk's layer rows } one chunk per call
    cases.parquet         consolidated case rows, with ``region``        } written by
    layers.parquet        consolidated layer rows                        } finalize()
    summary.json          :func:`interp.summary.summarise` of the cases  }
    figures/*.png, report.html   drawn by interp.plots / interp.report

**Atomic chunks.** :meth:`RunDir.append` writes each file to a hidden temporary name in the
same folder, flushes it to disk, and renames it into place with ``os.replace`` (atomic on
POSIX): the layers part first, the cases part **last**. A chunk exists exactly when its cases
part exists; readers look only at ``part-*.parquet`` names and ignore a layers part whose
cases part is missing. So a ``kill -9`` at any moment leaves either the whole chunk or none of
it: before the cases rename nothing of the chunk counts (a leftover temporary file or an
orphan layers part is ignored, and removed on resume), after it the chunk is complete. Its
cases are redone on resume, never duplicated: :meth:`RunDir.append` refuses a case id that a
committed chunk already holds, and reading raises :class:`~interp.errors.RunDirError` if a
case id (or a case x pass x layer) ever appears twice.

**Identity of a run** (:data:`IDENTITY`): what must be equal for ``--resume`` to continue a
run, because it changes the numbers: the model weights (their hash; the source path or hub id
only when no hash was recorded), the dataset's content hash, the seed, and the arguments
``dtype`` and ``limit``. Everything else (batch size, device, output path, library versions,
the toolkit's commit) may differ between the first start and a resume; each resume is logged
in run.json's ``resumes`` list.

Only one process may write a run directory: :meth:`RunDir.create` takes an exclusive lock on
``.lock`` (released by :meth:`RunDir.close`, or by the OS when the process dies).
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import interp
from interp.errors import RunDirError

__all__ = [
    "CASE_SCHEMA",
    "IDENTITY",
    "LAYER_SCHEMA",
    "RunDir",
    "weights_hash",
]

CASE_SCHEMA = pa.schema(
    [
        pa.field("case_id", pa.string(), nullable=False),
        pa.field("group_id", pa.string()),
        pa.field("visual_tier", pa.int64()),
        pa.field("text_tier", pa.int64()),
        pa.field("control", pa.string()),
        pa.field("image_answer", pa.string()),
        pa.field("text_answer", pa.string()),
        pa.field("y_v", pa.string()),
        pa.field("y_t", pa.string()),
        pa.field("y_m", pa.string()),
        pa.field("vision_correct", pa.bool_()),
        pa.field("text_correct", pa.bool_()),
        pa.field("h_v", pa.float64()),
        pa.field("h_t", pa.float64()),
        pa.field("dh_rel", pa.float64()),
        pa.field("label", pa.string()),
        pa.field("kept", pa.bool_()),
        pa.field("drop_reason", pa.string()),
        pa.field("oscillations", pa.int64()),
    ]
)
"""Columns of every appended case row (one row per case). ``h_v``/``h_t`` in nats; ``label`` in
{"text", "vision", "other"}; ``control`` None for a conflict case, else "text_irrelevant" /
"image_irrelevant"; ``kept``: the case passed the correct-in-both filter; ``drop_reason`` None
for a kept case, else one of ``interp.following.DROP_REASONS`` or "control" (the summary reads
``kept`` only for conflict cases: controls enter the controls' summary whatever the filter
said); ``oscillations``: switches along the conflict pass (embedding output excluded), None
when not computed. ``region`` is *not* appended: it depends on the balance point of the whole
run and is added by :meth:`RunDir.finalize`. Extra columns are allowed (e.g. other
uncertainty indices) and kept as given."""

FINAL_CASE_SCHEMA = CASE_SCHEMA.append(pa.field("region", pa.string()))
"""Columns of the consolidated cases.parquet: :data:`CASE_SCHEMA` plus ``region``
("ambiguous" / "clear", None outside the oscillation analysis or without a balance point)."""

LAYER_SCHEMA = pa.schema(
    [
        pa.field("case_id", pa.string(), nullable=False),
        pa.field("pass", pa.string(), nullable=False),
        pa.field("layer", pa.int64(), nullable=False),
        pa.field("class", pa.string()),
        pa.field("top1", pa.int64()),
        pa.field("p_text", pa.float64()),
        pa.field("p_vision", pa.float64()),
        pa.field("logit_diff", pa.float64()),
        pa.field("entropy", pa.float64()),
    ]
)
"""Columns of every layer row (one row per case x pass x lens layer). ``pass`` in {"vision",
"text", "conflict"}; ``layer`` 0 is the embedding output, 1.. the decoder layers (as
``interp.logit_lens.Trajectory.to_rows``); ``class`` in {"text", "vision", "irrelevant"};
``logit_diff`` = logit(text answer) - logit(image answer); ``entropy`` in nats."""

LABELS = ("text", "vision", "other")
PASSES = ("vision", "text", "conflict")
LAYER_CLASSES = ("text", "vision", "irrelevant")

IDENTITY: tuple[str, ...] = ("model", "dataset.hash", "seed", "arguments.dtype", "arguments.limit")
"""Fields of run.json that must be equal for a resume **[ours]**. ``model`` compares
``model.weights_hash`` when either run recorded one, else ``model.source``."""

_PART = re.compile(r"^part-(\d{6})\.parquet$")
_LIBRARIES = ("torch", "transformers", "nnsight", "transformer-lens", "numpy", "scipy", "pyarrow",
              "matplotlib", "pillow")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _atomic_write_table(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _json_text(obj: Any) -> str:
    return json.dumps(obj, indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def _unserialisable(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON")


def _dig(info: Mapping[str, Any], dotted: str) -> Any:
    value: Any = info
    for key in dotted.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _git_commit() -> dict[str, Any] | None:
    """Commit and dirty flag of the toolkit's own checkout, or None (installed from a wheel, no git)."""
    root = Path(interp.__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(dirty)}


def _library_versions() -> dict[str, str | None]:
    """Installed versions, read from package metadata: nothing is imported."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def weights_hash(model_dir: str | os.PathLike[str]) -> str:
    """``"sha256:<hex>"`` over the weight files of a model directory, for run.json's ``model.weights_hash``.

    Hashes, in name order, each ``*.safetensors`` (else ``*.bin``) file's name and bytes, so a
    renamed or moved directory keeps its hash and any changed weight changes it.

    Raises:
        RunDirError: the directory holds no weight file.
    """
    folder = Path(model_dir)
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        raise RunDirError(f"{folder}: no *.safetensors or *.bin weight file to hash")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\n")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


def _table(rows: Sequence[Mapping[str, Any]], schema: pa.Schema, what: str) -> pa.Table:
    """Rows -> a table with ``schema``'s columns first (typed) and any extra columns after."""
    names = set(schema.names)
    missing = sorted({n for n in schema.names for r in rows if n not in r})
    if missing:
        raise ValueError(f"{what} rows lack the column(s) {missing}; every row needs all of {schema.names}")
    extra = list(dict.fromkeys(k for r in rows for k in r if k not in names))  # first-seen order
    columns = {}
    for field in schema:
        try:
            columns[field.name] = pa.array([r[field.name] for r in rows], type=field.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as err:
            raise ValueError(f"{what} column {field.name!r} must be {field.type}: {err}") from err
        if not field.nullable and columns[field.name].null_count:
            raise ValueError(f"{what} column {field.name!r} must not be null")
    for name in extra:
        columns[name] = pa.array([r.get(name) for r in rows])
    return pa.table(columns)


def _check_values(column: pa.Array, allowed: Iterable[str], what: str) -> None:
    bad = sorted(set(pc.unique(column.drop_null()).to_pylist()) - set(allowed))
    if bad:
        raise ValueError(f"{what} must be one of {tuple(allowed)}; got {bad}")


def _concat(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables, promote_options="permissive")


class RunDir:
    """A run directory (see the module docstring for its layout and guarantees).

    Typical use by the pipeline::

        run = RunDir(out)
        run.create(run_info, resume=args.resume)      # refuses a foreign or non-empty dir
        todo = [c for c in cases if c.id not in run.done_case_ids()]
        for batch in batches(todo):
            run.append(case_rows, layer_rows)         # one atomic chunk
        summary = run.finalize(n_boot=1000)          # cases.parquet, layers.parquet, summary.json
        run.close()
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock: int | None = None
        self._done: set[str] | None = None

    # ------------------------------------------------------------------ paths
    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    @property
    def cases_path(self) -> Path:
        """The consolidated cases.parquet (written by :meth:`finalize`)."""
        return self.path / "cases.parquet"

    @property
    def layers_path(self) -> Path:
        """The consolidated layers.parquet (written by :meth:`finalize`)."""
        return self.path / "layers.parquet"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def figures_dir(self) -> Path:
        return self.path / "figures"

    @property
    def report_path(self) -> Path:
        return self.path / "report.html"

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    # ------------------------------------------------------------------ create / resume
    def create(self, run_info: Mapping[str, Any], *, resume: bool) -> dict[str, Any]:
        """Start a new run here, or continue the run already here when ``resume`` is True.

        ``run_info`` is what the caller knows about the run; these keys are expected::

            {"model": {"source": str, "weights_hash": str | None, ...},
             "dataset": {"source": str, "parameters": {...}, "hash": str, ...},
             "seed": int,
             "arguments": {"dtype": ..., "limit": ..., "batch_size": ..., ...},
             "device": str}

        run.json gets them plus ``toolkit`` (version, git commit and dirty flag when run from
        a checkout), ``libraries`` (versions from package metadata; torch, transformers,
        nnsight are never imported, and are None when absent), ``created`` (UTC, ISO 8601)
        and ``resumes`` (a list of {"at", "arguments", "device", "toolkit"}).

        - A missing or empty directory: a new run (also with ``resume=True``: nothing to resume).
        - A non-empty directory without ``resume``: refused, nothing touched.
        - ``resume`` on a run directory: its run.json must agree on every :data:`IDENTITY`
          field, else refused with every difference named; then leftover temporary files and
          orphan layer parts of an interrupted chunk are removed, and the resume is logged.

        Returns:
            The run.json now in force (for a resume: the original one, plus the new entry).

        Raises:
            RunDirError: as above; also when ``path`` is a file, a non-empty directory has no
                run.json, or another process holds the run.
            ValueError: ``run_info`` lacks ``model.source``, ``dataset.hash`` or ``seed``, or is
                not JSON (paths are written as strings, tuples as lists).
        """
        try:
            run_info = json.loads(json.dumps(run_info, default=lambda v: str(v) if isinstance(v, os.PathLike) else
                                             _unserialisable(v), allow_nan=False))
        except (TypeError, ValueError) as err:
            raise ValueError(f"run_info must be JSON (no NaN): {err}") from None
        for key in ("model.source", "dataset.hash", "seed"):
            head, _, tail = key.partition(".")
            if head not in run_info or (tail and tail not in (run_info.get(head) or {})):
                raise ValueError(f"run_info needs {key!r} (None if unknown)")
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"{self.path} is a file, not a run directory; choose another --out")
        # A run killed between taking the lock and writing run.json leaves only these behind.
        existing = self.path.is_dir() and any(
            p.name not in (".lock", ".run.json.tmp") for p in self.path.iterdir())
        if existing and not resume:
            raise RunDirError(
                f"{self.path} is not empty (it holds {'a run' if self.run_json.exists() else 'other files'}); "
                "pass --resume to continue that run, or choose another --out. Nothing was changed."
            )
        if existing and not self.run_json.exists():
            raise RunDirError(
                f"{self.path} is not empty but has no run.json, so it is not a run directory to resume; "
                "choose another --out. Nothing was changed."
            )
        self.path.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        if existing:
            info = self._resume(run_info)
        else:
            info = {
                **{k: v for k, v in run_info.items()},
                "toolkit": {"version": interp.__version__, "git": _git_commit()},
                "libraries": _library_versions(),
                "created": _now(),
                "resumes": [],
            }
            _atomic_write_bytes(self.run_json, _json_text(info).encode())
        (self.path / "cases").mkdir(exist_ok=True)
        (self.path / "layers").mkdir(exist_ok=True)
        self._done = None
        return info

    def _resume(self, run_info: Mapping[str, Any]) -> dict[str, Any]:
        info = self.read_run_info()
        differences = self.identity_differences(info, run_info)
        if differences:
            self.close()
            raise RunDirError(
                f"--resume refused: {self.path} holds another run: " + "; ".join(differences)
                + ". Resume it with the same model, dataset, seed, dtype and limit, or choose another --out. "
                "Nothing was changed."
            )
        self._remove_debris()
        info.setdefault("resumes", []).append(
            {"at": _now(), "arguments": run_info.get("arguments"), "device": run_info.get("device"),
             "toolkit": {"version": interp.__version__, "git": _git_commit()}}
        )
        _atomic_write_bytes(self.run_json, _json_text(info).encode())
        return info

    @staticmethod
    def identity_differences(recorded: Mapping[str, Any], requested: Mapping[str, Any]) -> list[str]:
        """Human-readable differences between two run infos on the :data:`IDENTITY` fields (empty: same run)."""
        out = []
        for field in IDENTITY:
            if field == "model":
                a, b = recorded.get("model") or {}, requested.get("model") or {}
                if a.get("weights_hash") is not None or b.get("weights_hash") is not None:
                    if a.get("weights_hash") != b.get("weights_hash"):
                        out.append(f"model weights hash {a.get('weights_hash')} (source {a.get('source')}) "
                                   f"!= requested {b.get('weights_hash')} (source {b.get('source')})")
                elif a.get("source") != b.get("source"):
                    out.append(f"model source {a.get('source')!r} != requested {b.get('source')!r}")
                continue
            a, b = _dig(recorded, field), _dig(requested, field)
            if a != b:
                name = {"dataset.hash": "dataset hash", "arguments.dtype": "dtype",
                        "arguments.limit": "limit"}.get(field, field)
                out.append(f"{name} {a!r} != requested {b!r}")
        return out

    def read_run_info(self) -> dict[str, Any]:
        """run.json as a dict. Raises RunDirError when it is missing or not valid JSON."""
        try:
            return json.loads(self.run_json.read_text())
        except FileNotFoundError:
            raise RunDirError(f"{self.path} has no run.json: not a run directory") from None
        except json.JSONDecodeError as err:
            raise RunDirError(f"{self.run_json} is not valid JSON ({err}); the run directory is damaged") from None

    def _take_lock(self) -> None:
        if self._lock is not None:
            return
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirError(
                f"{self.path} is being written by another process; wait for it or kill it first"
            ) from None
        self._lock = fd

    def close(self) -> None:
        """Release the write lock (a no-op when not held)."""
        fd, self._lock = getattr(self, "_lock", None), None
        if fd is not None:
            os.close(fd)

    def _remove_debris(self) -> None:
        """Remove temporary files and orphan layer parts left by an interrupted chunk."""
        committed = {m.group(1) for p in self._parts("cases") if (m := _PART.match(p.name))}
        for sub in ("cases", "layers", "."):
            folder = self.path / sub
            if not folder.is_dir():
                continue
            for p in folder.iterdir():
                if p.name.startswith(".") and p.name.endswith(".tmp"):
                    p.unlink()
        for p in self._parts("layers"):
            m = _PART.match(p.name)
            if m and m.group(1) not in committed:
                p.unlink()

    # ------------------------------------------------------------------ chunks
    def _parts(self, kind: str) -> list[Path]:
        folder = self.path / kind
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if _PART.match(p.name))

    def _committed(self) -> list[tuple[Path, Path]]:
        """(cases part, layers part) of each committed chunk, in chunk order."""
        out = []
        for cases in self._parts("cases"):
            layers = self.path / "layers" / cases.name
            if not layers.exists():
                raise RunDirError(
                    f"{cases} has no layers part {layers}: the run directory was changed by hand; "
                    "remove that cases part to redo its cases"
                )
            out.append((cases, layers))
        return out

    def done_case_ids(self) -> set[str]:
        """Ids of the cases in committed chunks (the ones a resume must not redo)."""
        if self._done is None:
            done: set[str] = set()
            for cases, _ in self._committed():
                done.update(pq.read_table(cases, columns=["case_id"]).column("case_id").to_pylist())
            self._done = done
        return set(self._done)

    def append(self, cases_rows: Sequence[Mapping[str, Any]], layer_rows: Sequence[Mapping[str, Any]]) -> int | None:
        """Append one atomic chunk: ``cases_rows`` (:data:`CASE_SCHEMA`) and their ``layer_rows``
        (:data:`LAYER_SCHEMA`).

        Returns:
            The chunk's number, or None when ``cases_rows`` is empty (nothing is written).

        Raises:
            RunDirError: :meth:`create` was not called, or a case id is already recorded.
            ValueError: a required column is missing or mistyped, a label/pass/class value is
                unknown, a case id repeats within the chunk, or a layer row belongs to no case
                of the chunk (or repeats a case x pass x layer).
        """
        if self._lock is None:
            raise RunDirError(f"{self.path}: call create() before append()")
        if not cases_rows:
            if layer_rows:
                raise ValueError("layer rows without case rows: a chunk is a set of cases and their layers")
            return None
        if any(r.get("region") is not None for r in cases_rows):
            raise ValueError("region is computed by finalize() from the run's balance point; do not append it")
        cases = _table([{k: v for k, v in r.items() if k != "region"} for r in cases_rows], CASE_SCHEMA, "case")
        layers = _table(layer_rows, LAYER_SCHEMA, "layer") if layer_rows else LAYER_SCHEMA.empty_table()
        _check_values(cases.column("label").combine_chunks(), LABELS, "label")
        _check_values(layers.column("pass").combine_chunks(), PASSES, "pass")
        _check_values(layers.column("class").combine_chunks(), LAYER_CLASSES, "class")
        ids = cases.column("case_id").to_pylist()
        if len(set(ids)) != len(ids):
            raise ValueError(f"case ids repeat within the chunk: {sorted({i for i in ids if ids.count(i) > 1})}")
        already = self.done_case_ids() & set(ids)
        if already:
            raise RunDirError(f"{self.path}: case(s) already recorded, not appended twice: {sorted(already)[:5]}")
        strangers = set(layers.column("case_id").to_pylist()) - set(ids)
        if strangers:
            raise ValueError(f"layer rows of case(s) not in this chunk: {sorted(strangers)[:5]}")
        _no_repeated_layers(layers, "the chunk")

        numbers = [int(_PART.match(p.name).group(1)) for k in ("cases", "layers") for p in self._parts(k)]
        number = max(numbers, default=-1) + 1
        name = f"part-{number:06d}.parquet"
        _atomic_write_table(self.path / "layers" / name, layers)
        _atomic_write_table(self.path / "cases" / name, cases)  # the commit point
        assert self._done is not None
        self._done.update(ids)
        return number

    # ------------------------------------------------------------------ reading
    def read_cases(self) -> pa.Table:
        """Case rows of all committed chunks, in chunk order.

        Raises:
            RunDirError: a case id appears twice (the directory was written by two runs at
                once, or changed by hand).
        """
        table = _concat([pq.read_table(c) for c, _ in self._committed()], CASE_SCHEMA)
        ids = table.column("case_id").to_pylist()
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            dup = sorted({i for i in ids if i in seen or seen.add(i)})
            raise RunDirError(f"{self.path}: case id(s) recorded twice: {dup[:5]}; the records are damaged")
        return table

    def read_layers(self, *, passes: Sequence[str] | None = None) -> pa.Table:
        """Layer rows of all committed chunks (orphan layer parts are ignored); optionally only ``passes``.

        Raises:
            RunDirError: a case x pass x layer appears twice.
        """
        tables = []
        for _, layers in self._committed():
            t = pq.read_table(layers)
            if passes is not None:
                t = t.filter(pc.is_in(t.column("pass"), pa.array(list(passes))))
            tables.append(t)
        table = _concat(tables, LAYER_SCHEMA)
        try:
            _no_repeated_layers(table, str(self.path))
        except ValueError as err:
            raise RunDirError(f"{err}; the records are damaged") from None
        return table

    # ------------------------------------------------------------------ finalize
    def is_finalized(self) -> bool:
        """True when cases.parquet, layers.parquet and summary.json exist and cover every committed case."""
        if not (self.cases_path.exists() and self.layers_path.exists() and self.summary_path.exists()):
            return False
        try:
            summary = json.loads(self.summary_path.read_text())
        except json.JSONDecodeError:
            return False
        n = len(self.done_case_ids())
        return summary.get("n_cases") == n and pq.read_metadata(self.cases_path).num_rows == n

    def finalize(self, *, n_boot: int = 1000, region_width: float | None = None) -> dict[str, Any]:
        """Write layers.parquet, cases.parquet (with ``region``) and summary.json; return the summary.

        The summary is :func:`interp.summary.summarise` of the committed case rows with the
        seed of run.json, so it depends on the set of cases only, not on how the run was
        interrupted. Each file is written atomically; summary.json last.
        """
        from interp.summary import AMBIGUOUS_WIDTH, summarise, with_regions

        width = AMBIGUOUS_WIDTH if region_width is None else region_width
        seed = self.read_run_info().get("seed") or 0
        cases = self.read_cases()
        layers = self.read_layers()
        summary = summarise(cases, seed=int(seed), n_boot=n_boot, region_width=width)
        _atomic_write_table(self.layers_path, layers)
        _atomic_write_table(self.cases_path, with_regions(cases, summary))
        _atomic_write_bytes(self.summary_path, _json_text(summary).encode())
        return summary

    def read_summary(self) -> dict[str, Any]:
        """summary.json (RunDirError when missing: run :meth:`finalize` first)."""
        try:
            return json.loads(self.summary_path.read_text())
        except FileNotFoundError:
            raise RunDirError(f"{self.path} has no summary.json yet; finalize the run (modality-lens report)") from None

    def read_final_cases(self) -> pa.Table:
        """The consolidated cases.parquet (with ``region``)."""
        if not self.cases_path.exists():
            raise RunDirError(f"{self.path} has no cases.parquet yet; finalize the run (modality-lens report)")
        return pq.read_table(self.cases_path)


def _no_repeated_layers(layers: pa.Table, where: str) -> None:
    if layers.num_rows == 0:
        return
    counts = layers.group_by(["case_id", "pass", "layer"]).aggregate([([], "count_all")])
    rep = counts.filter(pc.greater(counts.column("count_all"), 1))
    if rep.num_rows:
        first = rep.slice(0, 3).select(["case_id", "pass", "layer"]).to_pylist()
        raise ValueError(f"{where}: case x pass x layer rows repeat: {first}")

