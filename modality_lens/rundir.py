"""The run directory: provenance, append-only Parquet chunks, resume, and the final tables.

Layout of a run directory::

    run.json              provenance (see :meth:`RunDir.create`)
    cases/part-000000.parquet    one chunk of case rows      } written by append(),
    layers/part-000000.parquet   the same chunk's layer rows } one chunk per call
    cases.parquet         consolidated case rows, with ``region``        } written by
    layers.parquet        consolidated layer rows                        } write_final(),
    summary.json          :func:`interp.summary.summarise` of the cases  } from finalize()
    figures/*.png, report.html   drawn by modality_lens.plots / modality_lens.report

The row types and their schemas are `modality_lens.rows`; the summary is computed by
`modality_lens.finalize.finalize`, which hands the final tables to :meth:`RunDir.write_final`.

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
``dtype``, ``limit`` and ``batch_size`` (left padding to another batch's length moves float32
values by a few ulps: an entropy of 5.5 nats by 3e-6, measured on the tiny LLaVA, so a resume
with another batch size would not reproduce the uninterrupted run to 1e-6). Everything else
(device, output path, library versions, the toolkit's commit) may differ between the first start
and a resume; each resume is logged in run.json's ``resumes`` list.

Only one process may write a run directory: :meth:`RunDir.create` takes an exclusive lock on
``.lock`` (released by :meth:`RunDir.close`, or by the OS when the process dies).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from interp import __version__
from interp.errors import RunDirError
from interp.vocabulary import LABELS, LAYER_CLASSES, PASSES
from modality_lens.atomic import atomic_write_bytes, atomic_write_table, json_text, parquet_rows, read_parquet
from modality_lens.provenance import git_commit, library_versions, now
from modality_lens.rows import CASE_INDEX_COLUMNS, CASE_SCHEMA, LAYER_SCHEMA, refuse_older_chunks

__all__ = ["IDENTITY", "RunDir"]

IDENTITY: tuple[str, ...] = ("model", "dataset.hash", "seed", "arguments.dtype", "arguments.limit",
                             "arguments.batch_size")
"""Fields of run.json that must be equal for a resume **[ours]**. ``model`` compares
``model.weights_hash`` when either run recorded one, else ``model.source``."""

_PART = re.compile(r"^part-(\d{6})\.parquet$")


def _unserialisable(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON")


def _dig(info: Mapping[str, Any], dotted: str) -> Any:
    value: Any = info
    for key in dotted.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _table(rows: Sequence[Mapping[str, Any]], schema: pa.Schema, what: str, optional: Iterable[str] = ()) -> pa.Table:
    """Rows -> a table with ``schema``'s columns first (typed), extra columns after; ``optional`` ones may be absent."""
    names = set(schema.names)
    missing = sorted({n for n in schema.names for r in rows if n not in r and n not in optional})
    if missing:
        raise ValueError(f"{what} rows lack the column(s) {missing}; every row needs all of {schema.names}")
    extra = list(dict.fromkeys(k for r in rows for k in r if k not in names))  # first-seen order
    columns = {}
    for field in schema:
        try:
            columns[field.name] = pa.array([r.get(field.name) for r in rows], type=field.type)
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
    return pa.concat_tables(tables, promote_options="permissive") if tables else schema.empty_table()


class RunDir:
    """A run directory (see the module docstring for its layout and guarantees).

    Typical use by the pipeline::

        run = RunDir(out)
        run.create(run_info, resume=args.resume)      # refuses a foreign or non-empty dir
        todo = [c for c in cases if c.id not in run.done_case_ids()]
        for batch in batches(todo):
            run.append(case_rows, layer_rows)         # one atomic chunk
        summary = finalize(run, n_boot=1000); run.close()   # modality_lens.finalize: final tables, summary
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
        """The consolidated cases.parquet (written by :meth:`write_final`)."""
        return self.path / "cases.parquet"

    @property
    def layers_path(self) -> Path:
        """The consolidated layers.parquet (written by :meth:`write_final`)."""
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
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunDirError(f"cannot create the run directory {self.path} ({err.strerror or err}); choose another "
                              "--out") from None
        self._take_lock()
        if existing:
            info = self._resume(run_info)
        else:
            info = {
                **{k: v for k, v in run_info.items()},
                "toolkit": {"version": __version__, "git": git_commit()},
                "libraries": library_versions(),
                "created": now(),
                "resumes": [],
            }
            atomic_write_bytes(self.run_json, json_text(info).encode())
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
                + ". Resume it with the same model, dataset, seed, dtype, limit and batch size, or choose another "
                "--out. Nothing was changed."
            )
        try:  # a damaged part stops the resume before anything is changed
            self._done = None
            self.done_case_ids()
            for _, layers in self._committed():
                parquet_rows(layers)
            refuse_older_chunks(self.path, self.RESUME_COLUMNS, [pq.read_schema(c).names for c, _ in self._committed()])
        except RunDirError:
            self.close()
            raise
        self._remove_debris()
        info.setdefault("resumes", []).append(
            {"at": now(), "arguments": run_info.get("arguments"), "device": run_info.get("device"),
             "toolkit": {"version": __version__, "git": git_commit()}}
        )
        atomic_write_bytes(self.run_json, json_text(info).encode())
        return info

    RESUME_COLUMNS: tuple[str, ...] = CASE_INDEX_COLUMNS  # case columns newer than the first release

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
                name = {"dataset.hash": "dataset hash", "arguments.dtype": "dtype", "arguments.limit": "limit",
                        "arguments.batch_size": "batch size"}.get(field, field)
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
        try:
            fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise RunDirError(f"cannot write in {self.path} ({err.strerror or err}); choose another --out") from None
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
                done.update(read_parquet(cases, columns=["case_id"]).column("case_id").to_pylist())
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
            raise ValueError("region is computed when the run is finalized, from its balance point; do not append it")
        cases = _table([{k: v for k, v in r.items() if k != "region"} for r in cases_rows], CASE_SCHEMA, "case",
                       optional=CASE_INDEX_COLUMNS)
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
        atomic_write_table(self.path / "layers" / name, layers)
        atomic_write_table(self.path / "cases" / name, cases)  # the commit point
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
        table = _concat([read_parquet(c) for c, _ in self._committed()], CASE_SCHEMA)
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
            t = read_parquet(layers)
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
        return summary.get("n_cases") == n and parquet_rows(self.cases_path) == n

    def write_final(self, cases: pa.Table, layers: pa.Table, summary: Mapping[str, Any]) -> None:
        """Write the consolidated layers.parquet, cases.parquet and summary.json, each atomically,
        summary.json last (so :meth:`is_finalized` is true only once all three are in place).

        `modality_lens.finalize.finalize` computes them from the committed chunks.
        """
        atomic_write_table(self.layers_path, layers)
        atomic_write_table(self.cases_path, cases)
        atomic_write_bytes(self.summary_path, json_text(summary).encode())

    def read_summary(self) -> dict[str, Any]:
        """summary.json (RunDirError when missing: finalize the run first)."""
        try:
            return json.loads(self.summary_path.read_text())
        except FileNotFoundError:
            raise RunDirError(f"{self.path} has no summary.json yet; finalize the run (modality-lens report)") from None

    def read_final_cases(self) -> pa.Table:
        """The consolidated cases.parquet (with ``region``)."""
        if not self.cases_path.exists():
            raise RunDirError(f"{self.path} has no cases.parquet yet; finalize the run (modality-lens report)")
        return read_parquet(self.cases_path)


def _no_repeated_layers(layers: pa.Table, where: str) -> None:
    if layers.num_rows == 0:
        return
    counts = layers.group_by(["case_id", "pass", "layer"]).aggregate([([], "count_all")])
    rep = counts.filter(pc.greater(counts.column("count_all"), 1))
    if rep.num_rows:
        first = rep.slice(0, 3).select(["case_id", "pass", "layer"]).to_pylist()
        raise ValueError(f"{where}: case x pass x layer rows repeat: {first}")

