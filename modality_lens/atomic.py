"""Files written atomically: a temporary name in the same folder, flushed to disk, renamed into
place with ``os.replace`` (atomic on POSIX), and the folder synced, so a reader (or a run killed
with SIGKILL) sees the old file or the new one, never half of one.

A write that fails (a full disk, a read-only folder) removes its temporary file and raises
`interp.errors.RunDirError` naming the file and the fix; a Parquet file that cannot be read
(`read_parquet`) raises it too, instead of pyarrow's error from deep inside the reader.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from interp.errors import RunDirError

__all__ = ["atomic_write_bytes", "atomic_write_table", "json_text", "read_parquet", "parquet_rows"]


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _writing(path: Path, tmp: Path) -> Iterator[None]:
    try:
        yield
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError):
            raise RunDirError(
                f"could not write {path} ({err.strerror or err}): free disk space or fix the folder's permissions, "
                "then run the command again (a run continues with --resume; what it committed is kept)") from None
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with _writing(path, tmp):
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)


def atomic_write_table(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with _writing(path, tmp):
        pq.write_table(table, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)


def _damaged(path: Path, err: Exception) -> RunDirError:
    return RunDirError(
        f"{path} cannot be read ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}): the file is "
        "damaged (it was changed or truncated after it was written). Delete it (for a chunk part: both "
        "cases/ and layers/ parts of that name) and run again with --resume: its cases are redone")


def read_parquet(path: Path, columns: list[str] | None = None) -> pa.Table:
    """`pyarrow.parquet.read_table`, with a damaged file reported as `RunDirError`."""
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as err:
        raise _damaged(Path(path), err) from None


def parquet_rows(path: Path) -> int:
    """The row count of a Parquet file from its footer, with a damaged file reported as `RunDirError`."""
    try:
        return pq.read_metadata(path).num_rows
    except (pa.ArrowException, OSError) as err:
        raise _damaged(Path(path), err) from None


def json_text(obj: Any) -> str:
    return json.dumps(obj, indent=2, allow_nan=False, ensure_ascii=False) + "\n"
