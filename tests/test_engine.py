"""`run --engine ray`: on a local Ray cluster of 2 CPU workers, the shipped model's rows and summary
equal the local engine's; a worker SIGKILLed mid-run is retried and counted; a driver killed
mid-run resumes to the same records; without Ray installed the engine is refused with the fix."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import ray  # the dev extra installs it (scripts/setup.sh), so these tests run in CI

from modality_lens import pipeline
from modality_lens.engine import EngineOptions
from modality_lens.rundir import RunDir

# 48 cases of the shipped model in 6 batches (so 6 shards): a few seconds per engine
ARGS = dict(limit=48, batch_size=8, n_per_cell=1, seed=0, n_boot=50, progress=False, figures=False, threads=1)
RAY = EngineOptions(name="ray", workers=2, max_restarts=2, max_task_retries=2)
ENGINE_FIELDS = {"engine"}  # run.json arguments that name the engine; summary.json has none


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    return pipeline.run(out=str(tmp_path_factory.mktemp("local") / "run"), **ARGS)


def _same_records(a: RunDir, b: RunDir) -> None:
    """cases.parquet and layers.parquet equal row for row, value for value; summary.json equal."""
    assert pq.read_table(b.cases_path).to_pylist() == pq.read_table(a.cases_path).to_pylist()
    assert pq.read_table(b.layers_path).equals(pq.read_table(a.layers_path))
    assert b.read_summary() == a.read_summary()
    assert b.read_summary()["n_cases"] == 48


class KillOnce:
    """`shard_rows`, except that the first time shard `first` (its first case index) reaches a
    worker, the worker SIGKILLs itself (a marker file remembers it across restarts)."""

    def __init__(self, work, marker: Path, first: int) -> None:
        self.work, self.marker, self.first = work, str(marker), first

    def __call__(self, state, indices):
        if indices[0] == self.first and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return self.work(state, indices)


def test_ray_engine_gives_the_local_engines_records(local_run, tmp_path):
    run_dir = pipeline.run(out=str(tmp_path / "ray"), engine=RAY, **ARGS)
    _same_records(local_run, run_dir)
    info = run_dir.read_run_info()
    local_info = local_run.read_run_info()
    assert {k: v for k, v in info["arguments"].items() if k not in ENGINE_FIELDS} == local_info["arguments"]
    assert info["arguments"]["engine"]["workers"] == 2 and "engine_runs" not in local_info
    assert info["engine_runs"] == [{**RAY.describe(), "shards": 6, "restarts": 0, "retried_shards": 0}]
    assert len(list((run_dir.path / "cases").glob("part-*.parquet"))) == 6  # one committed part per shard
    reuse = json.loads((run_dir.path / "reuse.json").read_text())
    assert reuse["engine"] == "ray" and len(reuse["workers"]) == 2


def test_a_worker_killed_mid_run_is_retried_and_counted(local_run, tmp_path, monkeypatch):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    marker = tmp_path / "killed"
    monkeypatch.setattr(pipeline, "shard_rows", KillOnce(pipeline.shard_rows, marker, first=16))  # the 3rd shard
    run_dir = pipeline.run(out=str(tmp_path / "ray"), engine=RAY, **ARGS)
    assert marker.exists()  # the worker did die
    _same_records(local_run, run_dir)  # every case exactly once, the same values
    runs = run_dir.read_run_info()["engine_runs"]
    assert len(runs) == 1 and runs[0]["restarts"] == 1 and runs[0]["shards"] == 6
    assert 1 <= runs[0]["retried_shards"] <= 2  # the killed shard, and the one queued behind it


def test_a_killed_driver_resumes_to_the_same_records(local_run, tmp_path, monkeypatch):
    commits = []
    append = RunDir.append

    def append_then_die(self, *args, **kwargs):
        if len(commits) == 2:
            raise KeyboardInterrupt  # the driver stops after two committed shards
        commits.append(append(self, *args, **kwargs))
        return commits[-1]

    monkeypatch.setattr(RunDir, "append", append_then_die)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(out=str(tmp_path / "ray"), engine=RAY, **ARGS)
    monkeypatch.setattr(RunDir, "append", append)
    cut = RunDir(tmp_path / "ray")
    assert len(cut.done_case_ids()) == 16 and not cut.summary_path.exists()
    run_dir = pipeline.run(out=str(tmp_path / "ray"), engine=RAY, resume=True, **ARGS)
    _same_records(local_run, run_dir)
    runs = run_dir.read_run_info()["engine_runs"]
    assert [r["shards"] for r in runs] == [2, 4]


def test_engine_ray_without_ray_installed_exits_2_naming_the_extra(tmp_path, monkeypatch, capsys):
    from modality_lens.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    out = tmp_path / "run"
    assert main(["run", "--engine", "ray", "--limit", "8", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "modality-lens[ray]" in err and err.startswith("modality-lens run: error:")
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["--address", "auto"], "--engine ray only"),
    (["--gpus-per-worker", "-1"], "--gpus-per-worker must be a finite number >= 0"),
    (["--engine", "ray", "--workers", "0"], "--workers must be at least 1"),
])
def test_engine_options_are_checked_before_anything_runs(tmp_path, capsys, argv, message):
    from modality_lens.cli import main

    out = tmp_path / "run"
    try:
        code = main(["run", *argv, "--limit", "8", "--out", str(out)])
    except SystemExit as parse_error:  # refused while parsing
        code = parse_error.code
    assert code == 2 and message in capsys.readouterr().err and not out.exists()
