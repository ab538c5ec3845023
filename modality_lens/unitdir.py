"""A run directory of unit rows: the records of the studies beside the main job.

The perturbation and consistency studies commit rows of their own schemas, keyed by a
``unit_id`` (what a resume must not redo) and a ``row_id`` (unique per row), with per-layer rows
beside them. `UnitRunDir` is `modality_lens.rundir.RunDir` (the same run.json, lock, atomic
chunks with the layers part written first and the cases part last as the commit, and resume)
with those schemas; a subclass names them and the arguments a resume must repeat.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import pyarrow as pa

from interp.errors import RunDirError
from modality_lens.rundir import RunDir

__all__ = ["UnitRunDir"]


class UnitRunDir(RunDir):
    """A `RunDir` whose chunks hold `ROW_SCHEMA` rows and `LAYER_SCHEMA` layer rows."""

    ROW_SCHEMA: ClassVar[pa.Schema]
    LAYER_SCHEMA: ClassVar[pa.Schema]
    IDENTITY_ARGUMENTS: ClassVar[tuple[str, ...]] = ()
    """Arguments besides `rundir.IDENTITY` that change the numbers, so a resume must repeat them."""
    RESUME_COLUMNS: ClassVar[tuple[str, ...]] = ()  # the studies' rows are not case rows

    @classmethod
    def identity_differences(cls, recorded: Mapping[str, Any], requested: Mapping[str, Any]) -> list[str]:
        out = RunDir.identity_differences(recorded, requested)
        for key in cls.IDENTITY_ARGUMENTS:
            a, b = (recorded.get("arguments") or {}).get(key), (requested.get("arguments") or {}).get(key)
            if a != b:
                out.append(f"{key} {a!r} != requested {b!r}")
        return out

    def done_case_ids(self) -> set[str]:
        """Ids of the units in committed chunks (the ones a resume must not redo)."""
        from modality_lens.atomic import read_parquet

        if self._done is None:
            self._done = {u for cases, _ in self._committed()
                          for u in read_parquet(cases, columns=["unit_id"]).column("unit_id").to_pylist()}
        return set(self._done)

    def append(self, rows: Sequence[Mapping[str, Any]], layer_rows: Sequence[Mapping[str, Any]]) -> int | None:
        """One atomic chunk of rows and their layer rows (layers part first); returns its number."""
        from modality_lens.atomic import atomic_write_table

        if self._lock is None:
            raise RunDirError(f"{self.path}: call create() before append()")
        if not rows:
            return None
        table = pa.Table.from_pylist(list(rows), schema=self.ROW_SCHEMA)
        layers = pa.Table.from_pylist(list(layer_rows), schema=self.LAYER_SCHEMA)
        ids = set(table.column("unit_id").to_pylist())
        if ids & self.done_case_ids():
            raise RunDirError(f"{self.path}: unit(s) already recorded, not appended twice: "
                              f"{sorted(ids & self.done_case_ids())[:5]}")
        numbers = [int(p.stem.split("-")[1]) for k in ("cases", "layers") for p in self._parts(k)]
        number = max(numbers, default=-1) + 1
        name = f"part-{number:06d}.parquet"
        atomic_write_table(self.path / "layers" / name, layers)
        atomic_write_table(self.path / "cases" / name, table)  # the commit point
        self._done = self.done_case_ids() | ids
        return number

    def read_rows(self) -> pa.Table:
        """Rows of every committed chunk (RunDirError when a row id repeats)."""
        from modality_lens.atomic import read_parquet

        tables = [read_parquet(c) for c, _ in self._committed()]
        table = pa.concat_tables(tables) if tables else self.ROW_SCHEMA.empty_table()
        if len(set(table.column("row_id").to_pylist())) != table.num_rows:
            raise RunDirError(f"{self.path}: a row is recorded twice; the records are damaged")
        return table

    def read_layer_rows(self) -> pa.Table:
        """Layer rows of every committed chunk."""
        from modality_lens.atomic import read_parquet

        tables = [read_parquet(lay) for _, lay in self._committed()]
        return pa.concat_tables(tables) if tables else self.LAYER_SCHEMA.empty_table()
