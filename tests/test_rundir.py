"""modality_lens.rundir: run.json, atomic chunks, resume (foreign runs refused, interrupted chunks redone), finalize.

The simulated runs come from `tests.simulated`.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import interp
from interp.errors import RunDirError
from modality_lens.finalize import finalize
from modality_lens.rows import CASE_SCHEMA, LAYER_SCHEMA
from modality_lens.provenance import weights_hash
from modality_lens.rundir import RunDir
from tests.simulated import N_LAYERS, run_info, synthetic_rows, write_run

@pytest.fixture(scope="module")
def small():
    return synthetic_rows(n_conflict=30, n_controls=3, seed=1)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- round trip
def test_append_read_round_trip(tmp_path, small):
    cases, layers = small
    with write_run(tmp_path / "run", cases, layers, size=7):
        pass
    run = RunDir(tmp_path / "run")
    assert run.read_cases().to_pylist() == cases  # every value, in order, types included
    got = run.read_layers().to_pylist()
    assert got == layers
    assert run.done_case_ids() == {c["case_id"] for c in cases}
    assert len(list((tmp_path / "run" / "cases").glob("part-*.parquet"))) == math.ceil(len(cases) / 7)
    conflict = run.read_layers(passes=["conflict"])
    assert conflict.num_rows == len(cases) * (N_LAYERS + 1)
    assert set(conflict.column("pass").to_pylist()) == {"conflict"}


def test_schemas_hold_the_documented_columns():
    assert CASE_SCHEMA.names[:3] == ["case_id", "group_id", "visual_tier"]
    for name in ("control", "y_v", "y_t", "y_m", "h_v", "h_t", "dh_rel", "label", "kept", "drop_reason",
                 "oscillations"):
        assert name in CASE_SCHEMA.names
    assert LAYER_SCHEMA.names == ["case_id", "pass", "layer", "class", "top1", "p_text", "p_vision",
                                  "logit_diff", "entropy"]


def test_run_json_provenance(tmp_path):
    torch_before = "torch" in sys.modules
    with RunDir(tmp_path / "run") as run:
        run.create(run_info(), resume=False)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["model"] == {"source": "data/tiny_vlm", "weights_hash": "sha256:aaa"}
    assert info["dataset"]["hash"] == "sha256:ddd" and info["seed"] == 0
    assert info["arguments"]["dtype"] == "float32" and info["device"] == "cpu"
    assert info["toolkit"]["version"] == interp.__version__
    assert info["libraries"]["numpy"] == np.__version__
    assert info["libraries"]["pyarrow"] == pa.__version__
    assert "torch" in info["libraries"] and info["resumes"] == []
    assert info["created"].endswith("+00:00")
    assert ("torch" in sys.modules) == torch_before  # versions come from metadata, not imports
    if (Path(interp.__file__).parent.parent / ".git").exists():
        assert len(info["toolkit"]["git"]["commit"]) == 40


def test_extra_columns_are_kept(tmp_path, small):
    cases, layers = small
    first = [{**c, "variance_v": 1.5} for c in cases[:5]]
    with RunDir(tmp_path / "run") as run:
        run.create(run_info(), resume=False)
        run.append(first, [])
        run.append(cases[5:10], [])  # no extra column in this chunk: null there
    got = RunDir(tmp_path / "run").read_cases()
    assert got.column("variance_v").to_pylist() == [1.5] * 5 + [None] * 5


# --------------------------------------------------------------------------- refusing
def test_new_run_refuses_a_non_empty_directory(tmp_path, small):
    cases, layers = small
    write_run(tmp_path / "run", cases[:10], layers).close()
    before = _snapshot(tmp_path / "run")
    with pytest.raises(RunDirError, match="--resume"):
        RunDir(tmp_path / "run").create(run_info(), resume=False)
    assert _snapshot(tmp_path / "run") == before

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    for resume in (False, True):
        with pytest.raises(RunDirError, match="not"):
            RunDir(other).create(run_info(), resume=resume)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"model__weights_hash": "sha256:bbb"}, "model weights hash"),
        ({"dataset__hash": "sha256:eee"}, "dataset hash"),
        ({"seed": 1}, "seed"),
        ({"arguments__dtype": "bfloat16"}, "dtype"),
        ({"arguments__limit": 50}, "limit"),
    ],
)
def test_resume_refuses_a_foreign_run(tmp_path, small, change, words):
    cases, layers = small
    write_run(tmp_path / "run", cases[:10], layers).close()
    before = _snapshot(tmp_path / "run")
    run = RunDir(tmp_path / "run")
    with pytest.raises(RunDirError, match=words) as err:
        run.create(run_info(**change), resume=True)
    assert "refused" in str(err.value)
    assert _snapshot(tmp_path / "run") == before
    # the refusal released the lock: the right run can still be resumed
    with RunDir(tmp_path / "run") as again:
        again.create(run_info(), resume=True)


def test_resume_without_weights_hash_compares_the_source(tmp_path):
    info = run_info(model__weights_hash=None)
    RunDir(tmp_path / "run").create(info, resume=False)
    with pytest.raises(RunDirError, match="model source"):
        RunDir(tmp_path / "run").create(run_info(model__weights_hash=None, model__source="other/model"), resume=True)


def test_resume_accepts_its_own_run(tmp_path, small):
    cases, layers = small
    write_run(tmp_path / "run", cases[:10], layers, size=5).close()
    # a moved model directory with the same weights, another device: the same run
    info = run_info(model__source="/elsewhere/tiny_vlm", device="cuda")
    with RunDir(tmp_path / "run") as run:
        kept = run.create(info, resume=True)
        assert run.done_case_ids() == {c["case_id"] for c in cases[:10]}
        run.append(cases[10:], [r for r in layers if r["case_id"] in {c["case_id"] for c in cases[10:]}])
    assert kept["model"]["source"] == "data/tiny_vlm"  # the original provenance stays
    assert len(kept["resumes"]) == 1 and kept["resumes"][0]["device"] == "cuda"
    assert RunDir(tmp_path / "run").read_cases().to_pylist() == cases


def test_resume_of_nothing_starts_a_run(tmp_path):
    with RunDir(tmp_path / "fresh") as run:
        info = run.create(run_info(), resume=True)
    assert info["resumes"] == [] and (tmp_path / "fresh" / "run.json").exists()


def test_one_writer_at_a_time(tmp_path):
    first = RunDir(tmp_path / "run")
    first.create(run_info(), resume=False)
    with pytest.raises(RunDirError, match="another process"):
        RunDir(tmp_path / "run").create(run_info(), resume=True)
    first.close()
    with RunDir(tmp_path / "run") as second:
        second.create(run_info(), resume=True)


def test_append_refuses_bad_rows(tmp_path, small):
    cases, layers = small
    mine = [r for r in layers if r["case_id"] == cases[0]["case_id"]]
    with RunDir(tmp_path / "run") as run:
        with pytest.raises(RunDirError, match="create"):
            run.append(cases[:1], mine)
        run.create(run_info(), resume=False)
        with pytest.raises(ValueError, match="label"):
            run.append([{**cases[0], "label": "both"}], mine)
        with pytest.raises(ValueError, match="h_v"):
            run.append([{k: v for k, v in cases[0].items() if k != "h_v"}], mine)
        with pytest.raises(ValueError, match="not in this chunk"):
            run.append(cases[1:2], mine)
        with pytest.raises(ValueError, match="region"):
            run.append([{**cases[0], "region": "clear"}], mine)
        with pytest.raises(ValueError, match="repeat"):
            run.append(cases[:1], mine + mine[:1])
        with pytest.raises(ValueError, match="pass"):
            run.append(cases[:1], [{**mine[0], "pass": "both"}])
        assert run.done_case_ids() == set()  # nothing of the refused chunks was written
        run.append(cases[:1], mine)
        with pytest.raises(RunDirError, match="already recorded"):
            run.append(cases[:1], mine)
    assert RunDir(tmp_path / "run").read_cases().num_rows == 1


def test_duplicated_case_on_read_raises(tmp_path, small):
    cases, layers = small
    write_run(tmp_path / "run", cases[:5], layers).close()
    # a second chunk with a case id that is already recorded, written behind append's back
    pq.write_table(pa.Table.from_pylist(cases[4:6], schema=CASE_SCHEMA), tmp_path / "run/cases/part-000009.parquet")
    pq.write_table(LAYER_SCHEMA.empty_table(), tmp_path / "run/layers/part-000009.parquet")
    with pytest.raises(RunDirError, match=cases[4]["case_id"]):
        RunDir(tmp_path / "run").read_cases()


def test_cases_part_without_layers_part_is_damage(tmp_path, small):
    cases, layers = small
    write_run(tmp_path / "run", cases[:5], layers).close()
    (tmp_path / "run/layers/part-000000.parquet").unlink()
    with pytest.raises(RunDirError, match="no layers part"):
        RunDir(tmp_path / "run").read_cases()


# --------------------------------------------------------------------------- interruption
def _layers_of(layers, part):
    ids = {c["case_id"] for c in part}
    return [r for r in layers if r["case_id"] in ids]


def _check_consistent(path: Path, cases, layers, expect_done: set[str]) -> None:
    run = RunDir(path)
    assert run.done_case_ids() == expect_done
    got = run.read_layers()
    assert set(got.column("case_id").to_pylist()) == expect_done
    assert got.num_rows == len(_layers_of(layers, [c for c in cases if c["case_id"] in expect_done]))


def test_orphan_layers_part_and_temp_file_are_ignored_and_the_case_redone(tmp_path, small):
    cases, layers = small
    a, x = cases[:5], cases[5:7]
    write_run(tmp_path / "run", a, layers).close()
    # an interrupted chunk 1: its layers part committed, its cases part only a torn temp file
    pq.write_table(pa.Table.from_pylist(_layers_of(layers, x), schema=LAYER_SCHEMA),
                   tmp_path / "run/layers/part-000001.parquet")
    (tmp_path / "run/cases/.part-000001.parquet.tmp").write_bytes(b"PAR1 torn")
    _check_consistent(tmp_path / "run", cases, layers, {c["case_id"] for c in a})

    with RunDir(tmp_path / "run") as run:
        run.create(run_info(), resume=True)
        assert not (tmp_path / "run/layers/part-000001.parquet").exists()
        assert not (tmp_path / "run/cases/.part-000001.parquet.tmp").exists()
        todo = [c for c in cases[:7] if c["case_id"] not in run.done_case_ids()]
        assert todo == x
        run.append(todo, _layers_of(layers, todo))
    _check_consistent(tmp_path / "run", cases, layers, {c["case_id"] for c in cases[:7]})
    assert RunDir(tmp_path / "run").read_cases().to_pylist() == cases[:7]


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after the raise runs, no except clause catches it."""


@pytest.mark.parametrize("kill_before_step", [1, 2, 3, 4, 5, 6, 7])
def test_kill_at_every_step_of_an_append(tmp_path, small, monkeypatch, kill_before_step):
    """Steps of one append: (1) write layers temp, (2) rename it, (3) write cases temp, (4) rename it;
    1 and 3 are torn halfway, 5 kills after the commit, 6-7 during the next append."""
    import modality_lens.atomic as records  # where the chunk files are written

    cases, layers = small
    a, b, c = cases[:5], cases[5:9], cases[9:12]
    run = write_run(tmp_path / "run", a, layers)
    step = {"n": 0}
    real_write, real_replace = records.pq.write_table, records.os.replace

    def write_table(table, where, **kw):
        step["n"] += 1
        if step["n"] == kill_before_step:
            real_write(table, where, **kw)
            data = Path(where).read_bytes()
            Path(where).write_bytes(data[: len(data) // 2])  # torn write
            raise _Killed
        real_write(table, where, **kw)

    def replace(src, dst):
        step["n"] += 1
        if step["n"] == kill_before_step:
            raise _Killed
        real_replace(src, dst)

    monkeypatch.setattr(records.pq, "write_table", write_table)
    monkeypatch.setattr(records.os, "replace", replace)
    with pytest.raises(_Killed):
        run.append(b, _layers_of(layers, b))
        step["n"] = 4  # b committed; the next kill points fall in the append of c
        run.append(c, _layers_of(layers, c))
        raise _Killed
    monkeypatch.undo()
    run.close()  # the OS releases the lock of a killed process

    ids = lambda rows: {r["case_id"] for r in rows}  # noqa: E731
    committed = ids(a) | (ids(b) if kill_before_step >= 5 else set())
    _check_consistent(tmp_path / "run", cases, layers, committed)
    with RunDir(tmp_path / "run") as resumed:
        resumed.create(run_info(), resume=True)
        todo = [r for r in cases[:12] if r["case_id"] not in resumed.done_case_ids()]
        resumed.append(todo, _layers_of(layers, todo))
    _check_consistent(tmp_path / "run", cases, layers, ids(cases[:12]))
    leftovers = [p.name for p in (tmp_path / "run").rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


_CHILD = textwrap.dedent("""
    import sys
    from modality_lens.rundir import RunDir
    run = RunDir(sys.argv[1])
    run.create({"model": {"source": "m", "weights_hash": "h"}, "dataset": {"hash": "d"}, "seed": 0,
                "arguments": {"dtype": "float32", "limit": None}}, resume=False)
    def case(i):
        return {"case_id": f"k{i:05d}", "group_id": "g", "visual_tier": 0, "text_tier": 0, "control": None,
                "image_answer": "red", "text_answer": "blue", "y_v": "red", "y_t": "blue", "y_m": "red",
                "vision_correct": True, "text_correct": True, "h_v": 1.0, "h_t": 1.0, "dh_rel": 0.0,
                "label": "vision", "kept": True, "drop_reason": None, "oscillations": 0, "task": "colour",
                "class_v": "vision", "class_t": "text", "class_m": "vision", "p_text_m": 0.1, "p_vision_m": 0.8,
                "logit_diff_m": -2.0, "divergence_position": 0}
    def lay(i):
        return [{"case_id": f"k{i:05d}", "pass": p, "layer": l, "class": "vision", "top1": 1, "p_text": 0.1,
                 "p_vision": 0.8, "logit_diff": -2.0, "entropy": 1.0} for p in ("vision", "text", "conflict")
                for l in range(5)]
    for start in range(0, 100000, 3):
        run.append([case(i) for i in range(start, start + 3)], [r for i in range(start, start + 3) for r in lay(i)])
""")


def test_sigkill_mid_run_then_resume(tmp_path):
    """A real writer killed with SIGKILL: every committed chunk is whole, the rest is redone once."""
    path = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)])
    try:
        deadline = time.monotonic() + 60
        while len(list((path / "cases").glob("part-*"))) < 4:
            assert child.poll() is None and time.monotonic() < deadline, "the writer did not start"
            time.sleep(0.02)
        time.sleep(0.137)  # somewhere inside a later append
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    run = RunDir(path)
    done = run.done_case_ids()
    n_chunks = len(list((path / "cases").glob("part-*.parquet")))
    assert len(done) == 3 * n_chunks and n_chunks >= 4
    assert run.read_layers().num_rows == 15 * len(done)
    total = 3 * n_chunks + 5
    with RunDir(path) as resumed:
        resumed.create({"model": {"source": "m", "weights_hash": "h"}, "dataset": {"hash": "d"}, "seed": 0,
                        "arguments": {"dtype": "float32", "limit": None}}, resume=True)
        row = resumed.read_cases().to_pylist()[0]
        todo = [f"k{i:05d}" for i in range(total) if f"k{i:05d}" not in resumed.done_case_ids()]
        assert len(todo) == 5
        resumed.append([{**row, "case_id": cid} for cid in todo], [])
    ids = RunDir(path).read_cases().column("case_id").to_pylist()
    assert sorted(ids) == [f"k{i:05d}" for i in range(total)]


# --------------------------------------------------------------------------- finalize
def test_finalize_writes_tables_with_regions_and_summary(tmp_path):
    cases, layers = synthetic_rows(n_conflict=200, n_controls=5, seed=2)
    run = write_run(tmp_path / "run", cases, layers, size=40)
    assert not run.is_finalized()
    summary = finalize(run, n_boot=200)
    assert run.is_finalized()
    on_disk = json.loads((tmp_path / "run/summary.json").read_text())
    assert on_disk == summary
    final = pq.read_table(tmp_path / "run/cases.parquet").to_pylist()
    assert [r["case_id"] for r in final] == [c["case_id"] for c in cases]
    bp, width = summary["balance_point"], summary["parameters"]["region_width"]
    assert bp is not None
    for row in final:
        if row["control"] is None and row["kept"]:
            expected = "ambiguous" if abs(row["dh_rel"] - bp) <= width else "clear"
        else:
            expected = None
        assert row["region"] == expected
    assert pq.read_table(tmp_path / "run/layers.parquet").num_rows == len(layers)
    # one more chunk makes the consolidated files stale
    run.append([{**cases[0], "case_id": "late"}], [])
    assert not run.is_finalized()
    run.close()


def test_summary_does_not_depend_on_how_the_run_was_chunked(tmp_path):
    cases, layers = synthetic_rows(n_conflict=120, n_controls=4, seed=3)
    one = write_run(tmp_path / "one", cases, layers, size=len(cases))
    order = np.random.default_rng(0).permutation(len(cases))
    shuffled = [cases[i] for i in order]
    other = write_run(tmp_path / "other", shuffled, layers, size=11)
    assert finalize(one, n_boot=100) == finalize(other, n_boot=100)


def test_weights_hash(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"\x00\x01weights")
    assert weights_hash(tmp_path / "a") == weights_hash(tmp_path / "b")
    assert weights_hash(tmp_path / "a").startswith("sha256:")
    (tmp_path / "b" / "model.safetensors").write_bytes(b"\x00\x02weights")
    assert weights_hash(tmp_path / "a") != weights_hash(tmp_path / "b")
    (tmp_path / "c").mkdir()
    with pytest.raises(RunDirError, match="no"):
        weights_hash(tmp_path / "c")


def test_run_info_is_normalised_to_json(tmp_path):
    info = run_info(model__source=tmp_path / "model", arguments__limit=(1, 2))
    with RunDir(tmp_path / "run") as run:
        written = run.create(info, resume=False)
    assert written["model"]["source"] == str(tmp_path / "model") and written["arguments"]["limit"] == [1, 2]
    with RunDir(tmp_path / "run") as run:  # the same Path and tuple compare equal on resume
        run.create(run_info(model__source=tmp_path / "model", arguments__limit=(1, 2)), resume=True)
    with pytest.raises(ValueError, match="JSON"):
        RunDir(tmp_path / "other").create(run_info(seed=object()), resume=False)
    assert not (tmp_path / "other").exists()
