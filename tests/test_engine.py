"""`--engine ray`: on a local Ray cluster of 2 CPU workers, the shipped model's rows and summary
equal the local engine's (the main job, perturbation, consistency); a worker SIGKILLed mid-run is
retried and counted; a driver (the command's process) SIGKILLed mid-run resumes to the same
records and leaves no Ray process behind the test; without Ray installed the engine is refused
with the fix."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

import ray  # the dev extra installs it (scripts/setup.sh), so these tests run in CI

from modality_lens import pipeline
from interp.errors import ModalityLensError, ModelSourceError
from modality_lens.engine import EngineOptions, RayPool
from modality_lens.rundir import RunDir

# 48 cases of the shipped model in 6 batches (so 6 shards): a few seconds per engine
ARGS = dict(limit=48, batch_size=8, n_per_cell=1, seed=0, n_boot=50, progress=False, figures=False, threads=1)
RAY = EngineOptions(name="ray", workers=2, max_restarts=2, max_task_retries=2)
ENGINE_FIELDS = {"engine"}  # run.json arguments that name the engine; summary.json has none
CLI_ARGS = ["--limit", "48", "--batch-size", "8", "--n-per-cell", "1", "--seed", "0", "--n-boot", "50",
            "--threads", "1"]  # ARGS on the command line (figures are drawn there; the records do not change)
HANG_GUARD_S = 900  # only a guard against a hung child; nothing here is timed


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


class RefuseToLoad:
    """A worker setup that fails as a load does (here: as the memory check refuses a model)."""

    def __call__(self, payload):
        raise ModelSourceError("needs about 9 GiB, but cuda:0 has 1 GiB available")


def test_a_worker_whose_setup_fails_stops_the_job_naming_its_error():
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with pytest.raises(ModalityLensError, match=r"ModelSourceError: needs about 9 GiB, but cuda:0 .*--resume"):
        with RayPool(RAY, RefuseToLoad(), [0]):
            pass


def _session(sid: int) -> list[psutil.Process]:
    """The live processes of session `sid` (Ray's workers change their process group, not their session)."""
    found = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (psutil.Error, OSError):  # gone meanwhile
            pass
    return found


def _kill_session(sid: int) -> list[psutil.Process]:
    """SIGKILL every process of session `sid` until none is left (or the guard runs out); returns
    those still alive. The Ray driver leaves its dashboard and runtime-env agents
    running for about a minute after it is SIGKILLed; the test does not wait for them."""
    deadline = time.monotonic() + HANG_GUARD_S
    while time.monotonic() < deadline:
        alive = _session(sid)
        if not alive:
            return []
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=5)
    return alive


def _commits(out: Path) -> int:
    return len(list((out / "cases").glob("part-*.parquet"))) if (out / "cases").is_dir() else 0


def test_a_driver_killed_mid_run_resumes_to_the_same_records(local_run, tmp_path):
    """`modality-lens run --engine ray` in a session of its own, SIGKILLed as soon as its first
    shard is committed; its Ray processes are killed with the session, and --resume (on Ray,
    in this process) gives the local engine's records, every case once."""
    out = tmp_path / "ray"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    with open(tmp_path / "driver.err", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "modality_lens.cli", "run", "--engine", "ray", "--workers", "2",
                                 *CLI_ARGS, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=err, env=env,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        while proc.poll() is None and not _commits(out) and time.monotonic() < deadline:
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=HANG_GUARD_S)
    finally:
        left = _kill_session(proc.pid)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "driver.err").read_text()[-3000:]
    assert not left, f"Ray processes left running: {[p.pid for p in left]}"
    committed = _commits(out)
    assert 1 <= committed < 6, "the kill must land mid-run"
    assert not (out / "summary.json").exists() and "engine_runs" not in RunDir(out).read_run_info()

    run_dir = pipeline.run(out=str(out), engine=RAY, resume=True, **ARGS)
    _same_records(local_run, run_dir)
    assert len(set(pq.read_table(run_dir.cases_path).column("case_id").to_pylist())) == 48
    runs = run_dir.read_run_info()["engine_runs"]  # the killed driver recorded nothing
    assert [r["shards"] for r in runs] == [6 - committed]


def _perturb(**kwargs):
    from modality_lens.perturb import run_perturb

    return run_perturb(n_per_cell=1, limit=2, conflict=True, n_levels=2, n_samples=4, batch_size=3, n_boot=20,
                       progress=False, figures=False, threads=1, **kwargs)


def _consistency(**kwargs):
    from modality_lens.consistency import run_consistency

    return run_consistency(items="colour", n_items=6, batch_size=2, max_new_tokens=3, ocr_max_new_tokens=4,
                           n_boot=20, progress=False, figures=False, threads=1, **kwargs)


STUDIES = {"perturb": (_perturb, ("units.parquet", "unit_layers.parquet"), 3),
           "consistency": (_consistency, ("rows.parquet", "row_layers.parquet"), 2)}
"""Each study beside the main job on the shipped model: how to run it small, its final tables, its batch size."""


@pytest.mark.parametrize("study", sorted(STUDIES))
def test_the_studies_on_ray_give_the_local_engines_records(study, tmp_path):
    run, tables, batch = STUDIES[study]
    local = run(out=str(tmp_path / "local"))
    remote = run(out=str(tmp_path / "ray"), engine=RAY)
    for name in tables:
        assert (remote.path / name).read_bytes() == (local.path / name).read_bytes(), name
    assert remote.read_summary() == local.read_summary()
    units = pq.read_table(local.path / tables[0]).column("unit_id").to_pylist()
    shards = math.ceil(len(set(units)) / batch)  # one shard per local chunk of `batch` units
    assert shards >= 2  # both workers had work
    assert remote.read_run_info()["engine_runs"] == [{**RAY.describe(), "shards": shards, "restarts": 0,
                                                      "retried_shards": 0}]
    args = {k: v for k, v in remote.read_run_info()["arguments"].items() if k not in ENGINE_FIELDS}
    assert args == local.read_run_info()["arguments"]


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


def test_a_ray_job_stopped_by_ctrl_c_still_records_its_engine_run(tmp_path, monkeypatch):
    """Ctrl-C (KeyboardInterrupt) while the driver commits shard rows: the pool's counts so far
    (shards committed, as `RayPool.map` counts them) are appended to run.json ``engine_runs``,
    what run.json held stays, and the interrupt goes on to the caller. The pool is a stand-in
    that counts as `RayPool` does, so no cluster starts."""
    from modality_lens import engine

    class StandInPool:
        def __init__(self, options, setup, payload):
            self.stats = engine.PoolStats()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def map(self, work, shards):
            for shard in shards:
                yield work(None, shard)
                self.stats.shards += 1  # as RayPool.map: once the caller has committed it

    class StandInDir:
        run_json = tmp_path / "run.json"
        committed: list = []

        def read_run_info(self):
            return json.loads(self.run_json.read_text())

        def append(self, rows, layer_rows):
            if len(self.committed) == 2:
                raise KeyboardInterrupt
            self.committed.append(rows)

    StandInDir.run_json.write_text(json.dumps({"arguments": {"seed": 0}}))
    monkeypatch.setattr(engine, "RayPool", StandInPool)
    job = engine.ShardJob(work=lambda state, shard: (list(shard), []), setup=None, payload=[], local=None)
    with pytest.raises(KeyboardInterrupt):
        engine.commit_shards(StandInDir(), job, [[0, 1], [2, 3], [4, 5], [6, 7]], RAY, progress=False, unit="case")
    info = json.loads(StandInDir.run_json.read_text())
    assert StandInDir.committed == [[0, 1], [2, 3]] and info["arguments"] == {"seed": 0}
    assert info["engine_runs"] == [{**RAY.describe(), "shards": 2, "restarts": 0, "retried_shards": 0}]
