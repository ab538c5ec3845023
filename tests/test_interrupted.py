"""Interrupted work: Ctrl-C during a run, a resume with another batch size, a killed dataset write."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

HANG_GUARD_S = 1800  # only a guard against a hung child; nothing here is timed


def _default_sigint() -> None:
    """In the child: SIGINT back to its default, so Python turns it into KeyboardInterrupt. A test
    run started in the background by a non-interactive shell (`bash .ci/run &`) inherits SIGINT
    ignored, and Python then never raises KeyboardInterrupt at all."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "modality_lens.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, preexec_fn=_default_sigint)


CTRL_C_ARGS = ["--model", "tiny:llava", "--batch-size", "1", "--no-reuse", "--n-per-cell", "1", "--seed", "3"]
"""All 168 cases one chunk at a time (each chunk a fsync'ed commit), full forwards: seconds of work
after the first chunk, so the signal sent when that chunk appears lands during the run."""


def test_ctrl_c_during_run_says_how_to_continue(tmp_path):
    out = tmp_path / "r"
    proc = _cli("run", *CTRL_C_ARGS, "--out", str(out))
    deadline = time.monotonic() + HANG_GUARD_S
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "cases").is_dir() and list((out / "cases").glob("part-*.parquet")):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "interrupted" in err and "--resume" in err

    resumed = _cli("run", *CTRL_C_ARGS, "--out", str(out), "--resume")
    _, err = resumed.communicate(timeout=HANG_GUARD_S)
    assert resumed.returncode == 0, err[-3000:]
    ids = pq.read_table(out / "cases.parquet").column("case_id").to_pylist()
    assert len(ids) == len(set(ids)) == 168


def _run(out, batch_size, **kwargs):
    from modality_lens.pipeline import run

    return run(model="tiny:llava", limit=20, batch_size=batch_size, n_per_cell=1, seed=1, out=str(out),
               progress=False, figures=False, n_boot=50, **kwargs)


def _kill_after_first_chunks(run_dir, keep: int) -> None:
    """What a run killed after `keep` committed chunks leaves: those chunks and run.json."""
    for kind in ("cases", "layers"):
        for part in sorted((run_dir / kind).glob("part-*.parquet"))[keep:]:
            part.unlink()
    for name in ("cases.parquet", "layers.parquet", "summary.json"):
        (run_dir / name).unlink(missing_ok=True)


def _tree(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def _agree(whole, resumed) -> None:
    """The same cases with values within 1e-6 and identical labels, answers, classes and counts."""
    a = {r["case_id"]: r for r in pq.read_table(whole.cases_path).to_pylist()}
    b = {r["case_id"]: r for r in pq.read_table(resumed.cases_path).to_pylist()}
    assert sorted(a) == sorted(b) and len(a) == 20
    for case_id, row in a.items():
        for key, value in row.items():
            if isinstance(value, float) and not math.isnan(value):
                assert b[case_id][key] == pytest.approx(value, abs=1e-6), (case_id, key)
            elif not isinstance(value, float):
                assert b[case_id][key] == value, (case_id, key)
    order = [("case_id", "ascending"), ("pass", "ascending"), ("layer", "ascending")]
    la, lb = (pq.read_table(r.layers_path).sort_by(order).to_pylist() for r in (whole, resumed))
    assert len(la) == len(lb) == 20 * 3 * 5
    for x, y in zip(la, lb):
        assert x["class"] == y["class"]
        assert all(y[k] == pytest.approx(v, abs=1e-6) for k, v in x.items() if isinstance(v, float))


def test_resume_with_another_batch_size_is_refused_and_with_the_same_agrees(tmp_path):
    """Left padding to another batch's length moves float32 values by a few ulps (3e-6 on an
    entropy of 5.5 nats), so a resume with another batch size is refused; with the same one it
    gives the uninterrupted run's values."""
    from interp.errors import RunDirError

    whole = _run(tmp_path / "whole", batch_size=3)
    _run(tmp_path / "cut", batch_size=3)
    _kill_after_first_chunks(tmp_path / "cut", keep=2)  # 6 of 20 cases committed
    before = _tree(tmp_path / "cut")
    with pytest.raises(RunDirError, match="batch size 3 != requested 5"):
        _run(tmp_path / "cut", batch_size=5, resume=True)
    assert _tree(tmp_path / "cut") == before
    _agree(whole, _run(tmp_path / "cut", batch_size=3, resume=True))


def test_a_killed_dataset_write_is_cleaned_up_by_the_next(tmp_path):
    from interp.datasets.colour import colour_cases
    from interp.datasets.storage import load_dataset, save_dataset

    meta = {"generator": "colour", "parameters": {}, "seed": 0}
    small = dict(image_size=32, visual_tiers=[0], text_tiers=[0], controls=False)
    folder = tmp_path / "ds"
    save_dataset(colour_cases(1, 0, **small), folder, meta, progress=False)
    for leftover in (".ds.partial-abc123", ".ds.partial-def456"):  # what SIGKILL mid-write leaves
        (tmp_path / leftover / "images").mkdir(parents=True)
        (tmp_path / leftover / "cases.jsonl").write_text("{}\n")
    save_dataset(colour_cases(1, 1, **small), folder, meta, overwrite=True, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    assert load_dataset(folder)[0].seed == next(iter(colour_cases(1, 1, **small))).seed


def test_a_dataset_killed_while_being_swapped_in_is_put_back(tmp_path):
    """Killed between moving the old dataset aside and renaming the new one into place: the next
    write puts the old one back before deciding what to do."""
    from interp.datasets.colour import colour_cases
    from interp.datasets.storage import save_dataset

    meta = {"generator": "colour", "parameters": {}, "seed": 0}
    small = dict(image_size=32, visual_tiers=[0], text_tiers=[0], controls=False)
    save_dataset(colour_cases(1, 0, **small), tmp_path / "ds", meta, progress=False)
    (tmp_path / "ds").rename(tmp_path / ".ds.old-xyz")
    from interp.errors import DatasetError

    with pytest.raises(DatasetError, match="not empty"):  # the old dataset is back, and protected
        save_dataset(colour_cases(1, 1, **small), tmp_path / "ds", meta, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


@pytest.mark.parametrize("fail_at", [1, 2])
def test_a_new_run_that_fails_before_its_first_case_leaves_no_folder(tmp_path, monkeypatch, fail_at):
    """A failed write at the first chunk (nothing committed): the folder this run created is
    removed, so the same command runs again as it is. At the second chunk one chunk is
    committed: the folder stays for --resume."""
    from modality_lens.rundir import RunDir

    real_append, calls = RunDir.append, []

    def append(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == fail_at:
            raise OSError(28, "No space left on device")
        return real_append(self, *args, **kwargs)

    monkeypatch.setattr(RunDir, "append", append)
    out = tmp_path / "r"
    with pytest.raises(OSError):
        _run(out, 4)
    assert out.exists() == (fail_at == 2)
    monkeypatch.setattr(RunDir, "append", real_append)
    done = _run(out, 4, resume=fail_at == 2)
    assert len(pq.read_table(done.cases_path).column("case_id")) == 20
