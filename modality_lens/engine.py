"""Where a job's rows are computed: in this process (the default) or on the workers of a Ray cluster.

Every job that writes a run directory (the main study, perturbation, consistency, typographic)
hands `commit_shards` a `ShardJob`: its units (the payload), the shards still to do (lists of
unit indices, one batch each, cut where the local loop cuts its batches), how one shard is
computed into (rows, layer rows) from a state (`work(state, shard)`), that state on this process
(the driver's loaded model: the local engine), and how a worker builds its own
(`setup(payload)`: load the model once; the main study also plans the whole case list,
`pipeline.ShardSetup`; the others, `pipeline.UnitSetup`). Either engine commits one atomic
chunk per shard (`RunDir.append`), **in shard order**, from this process, so resume, merge and
summary are the same: the rows of a shard do not depend on which process computed them, nor on
the shards around it.

`RayPool` is the Ray engine: N Ray actors, each built once by `setup(payload)`, fed shards;
`RayPool.map` yields the shards' results in shard order.

Faults: each actor is created with bounded `max_restarts` and `max_task_retries`; a worker
killed mid-run (even by SIGKILL) is restarted by Ray, which reruns `setup` and resubmits the
shards it held. The driver sees which process answered each shard: a shard answered by a process
other than the one its actor had when it was submitted was retried (`PoolStats`). A worker
that fails beyond its restarts stops the job with a `ModalityLensError`; what was committed stays,
and `--resume` continues it. Without an address, `RayPool` starts a local cluster of exactly the
CPUs (and GPUs) its workers need, with no dashboard, and stops it when done.

Ray is an optional dependency (`pip install 'modality-lens[ray]'`); it is imported only here, and
only when a Ray engine is used.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from interp.errors import ArgumentError, ModalityLensError

__all__ = ["EngineOptions", "PoolStats", "RayPool", "ShardJob", "commit_shards", "import_ray", "RAY_EXTRA_HINT"]

RAY_EXTRA_HINT = "pip install 'modality-lens[ray]' (or pip install 'ray>=2.40')"
IN_FLIGHT_PER_WORKER = 2  # one shard computing, one queued: a worker never waits for the driver


@dataclass(frozen=True)
class EngineOptions:
    """How rows are computed: ``name`` "local" (this process) or "ray" (Ray actors).

    ``address``: an existing Ray cluster (None: start a local one); ``workers``: actors, one model
    replica each; ``gpus_per_worker``: GPUs reserved per actor (0: CPU workers, which also get
    ``cpus_per_worker`` CPUs and that many torch threads); ``max_restarts`` / ``max_task_retries``:
    Ray's bounds on restarting a dead worker and resubmitting its shards.
    """

    name: str = "local"
    address: str | None = None
    workers: int = 2
    gpus_per_worker: float = 0.0
    cpus_per_worker: int = 1
    max_restarts: int = 3
    max_task_retries: int = 3

    def __post_init__(self) -> None:
        if self.name not in ("local", "ray"):
            raise ArgumentError(f"engine {self.name!r} is unknown; choose local or ray")
        if self.workers < 1 or self.cpus_per_worker < 1 or self.gpus_per_worker < 0:
            raise ArgumentError("--workers and CPUs per worker must be >= 1 and --gpus-per-worker >= 0")
        if self.name == "local" and (self.address is not None or self.gpus_per_worker):
            raise ArgumentError("--address and --gpus-per-worker apply to --engine ray only; add --engine ray")

    @staticmethod
    def ready(engine: "EngineOptions | None") -> "EngineOptions":
        """`engine` (None: the local one), after checking that its library is installed: a missing
        Ray stops a job with the extra to install, before a model is loaded."""
        engine = engine or EngineOptions()
        if engine.name == "ray":
            import_ray()
        return engine

    def arguments(self) -> dict[str, Any]:
        """What a run.json's ``arguments`` get: nothing for the local engine (its run.json is as
        before engines existed), else ``{"engine": describe()}``."""
        return {} if self.name == "local" else {"engine": self.describe()}

    def describe(self) -> dict[str, Any]:
        """What run.json records of the engine (beside the run's arguments)."""
        if self.name == "local":
            return {"name": "local"}
        return {"name": "ray", "address": self.address or "local", "workers": self.workers,
                "gpus_per_worker": self.gpus_per_worker, "cpus_per_worker": self.cpus_per_worker,
                "max_restarts": self.max_restarts, "max_task_retries": self.max_task_retries}


@dataclass
class PoolStats:
    """What a pool saw: shards taken by its caller, worker processes that replaced a dead one, shards retried."""

    shards: int = 0
    restarts: int = 0
    retried_shards: int = 0
    worker_pids: list[list[int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"shards": self.shards, "restarts": self.restarts, "retried_shards": self.retried_shards}


def import_ray() -> Any:
    """The ray module, or a `ModalityLensError` naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise ModalityLensError(f"--engine ray needs Ray, which is not installed here; {RAY_EXTRA_HINT}, "
                                "or run without --engine ray (the local engine)") from None
    return ray


class _Worker:
    """One Ray actor: the state `setup(payload)` builds once (a model replica), then shards."""

    def __init__(self, setup: Callable[[Any], Any], payload: Any) -> None:
        self.state = setup(payload)

    def pid(self) -> int:
        return os.getpid()

    def work(self, work: Callable[[Any, Any], Any], shard: Any) -> tuple[int, Any]:
        return os.getpid(), work(self.state, shard)

    def call(self, method: str) -> Any:
        return getattr(self.state, method)()


def _reason(err: BaseException) -> str:
    """What made a Ray call fail: the worker's own exception where Ray carries it (a task's), else
    the last exception line of Ray's text (a worker whose setup raised), else Ray's first line."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    raised = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b[^:]*: ", ln)]
    return raised[-1] if raised else f"{type(err).__name__}: {lines[0] if lines else ''}"


class RayPool:
    """N Ray actors built by `setup(payload)`; `map(work, shards)` yields each shard's result in order.

    Use as a context manager: entering connects to ``options.address`` (or starts a local cluster)
    and builds the actors; leaving kills them and stops a cluster this pool started.
    """

    def __init__(self, options: EngineOptions, setup: Callable[[Any], Any], payload: Any) -> None:
        self.options, self.setup, self.payload = options, setup, payload
        self.ray = import_ray()
        self.stats = PoolStats()
        self._started = False
        self._actors: list[Any] = []
        self._payload_ref: Any = None

    def __enter__(self) -> "RayPool":
        ray, o = self.ray, self.options
        if not ray.is_initialized():
            try:
                if o.address is None:
                    ray.init(num_cpus=o.workers * o.cpus_per_worker, num_gpus=o.workers * o.gpus_per_worker or None,
                             include_dashboard=False, log_to_driver=False, configure_logging=False)
                else:
                    ray.init(address=o.address, log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise ModalityLensError(f"cannot start or reach the Ray cluster ({o.address or 'local'}): {err}; "
                                        "check --address (ray status on the head node) or drop it") from None
            self._started = True
        try:
            actor = ray.remote(_Worker).options(num_cpus=o.cpus_per_worker, num_gpus=o.gpus_per_worker,
                                                max_restarts=o.max_restarts, max_task_retries=o.max_task_retries)
            self._payload_ref = ray.put(self.payload)  # held while the pool lives: a restart reads it again
            self._actors = [actor.remote(self.setup, self._payload_ref) for _ in range(o.workers)]
            pids = self._get([a.pid.remote() for a in self._actors])
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self.stats.worker_pids = [[p] for p in pids]
        return self

    def __exit__(self, *exc: Any) -> None:
        for a in self._actors:
            self.ray.kill(a)
        self._actors, self._payload_ref = [], None
        if self._started:
            self.ray.shutdown()
            self._started = False

    def _get(self, refs: Any) -> Any:
        try:
            return self.ray.get(refs)
        except self.ray.exceptions.RayError as err:
            raise ModalityLensError(
                f"a Ray worker failed ({_reason(err)}; a dead worker is restarted up to "
                f"{self.options.max_restarts} times and its shards retried up to {self.options.max_task_retries}); "
                "what was committed is kept: fix the cause and run the same command with --resume") from None

    def map(self, work: Callable[[Any, Any], Any], shards: Sequence[Any]) -> Iterator[Any]:
        """`work(state, shard)` of every shard on the actors (at most two in flight each), in shard order."""
        pending: dict[Any, tuple[int, int, int]] = {}  # ref -> (shard, actor, pid the actor had)
        done: dict[int, Any] = {}
        queue, after = list(range(len(shards))), 0

        def submit(a: int) -> None:
            if queue:
                s = queue.pop(0)
                pending[self._actors[a].work.remote(work, shards[s])] = (s, a, self.stats.worker_pids[a][-1])

        for a in range(len(self._actors)):
            for _ in range(IN_FLIGHT_PER_WORKER):
                submit(a)
        while pending:
            ready, _ = self.ray.wait(list(pending), num_returns=1)
            s, a, pid_then = pending.pop(ready[0])
            pid, result = self._get(ready[0])
            self._note(a, pid, pid_then)
            done[s] = result
            submit(a)
            while after in done:
                yield done.pop(after)
                self.stats.shards += 1  # counted once the caller has taken (committed) it
                after += 1

    def _note(self, actor: int, pid: int, pid_then: int) -> None:
        seen = self.stats.worker_pids[actor]
        if pid != pid_then:
            self.stats.retried_shards += 1
        if pid not in seen:
            seen.append(pid)
            self.stats.restarts += 1

    def call(self, method: str) -> list[Any]:
        """`state.<method>()` on every actor (e.g. its reuse statistics)."""
        return self._get([a.call.remote(method) for a in self._actors])


@dataclass(frozen=True)
class ShardJob:
    """What a job gives an engine (the module docstring): `work(state, shard)` -> (rows, layer rows)
    of the units at the indices `shard` of `payload`; `local`, the state on this process; `setup`,
    how a Ray worker builds its state from `payload`. `work` and `setup` must pickle (module-level
    functions and frozen dataclasses do)."""

    work: Callable[[Any, Sequence[int]], tuple[Sequence[Any], Sequence[Any]]]
    setup: Callable[[Any], Any]
    payload: Sequence[Any]
    local: Any


def commit_shards(run_dir: Any, job: ShardJob, shards: Sequence[Sequence[int]], options: EngineOptions, *,
                  progress: bool, unit: str) -> list[Any]:
    """Every shard's rows, committed as one chunk each (`run_dir.append`) in shard order, computed on
    this process (``options.name`` "local") or on Ray workers. Returns the states' ``stats()`` (one;
    on Ray, one per worker). On Ray the pool's counts (shards, restarts, retried shards) are added
    to run.json ``engine_runs``, also when the job stops early."""
    from tqdm import tqdm

    from modality_lens.atomic import atomic_write_bytes, json_text

    bar = tqdm(total=sum(len(s) for s in shards), desc=f"{unit}s", unit=unit, disable=not progress, mininterval=1)
    try:
        if options.name == "local":
            for shard in shards:
                run_dir.append(*job.work(job.local, shard))
                bar.update(len(shard))
            return [job.local.stats()]
        with RayPool(options, job.setup, list(job.payload)) as pool:
            try:
                # the pool first: after the last commit, zip resumes it, and it counts that shard
                for (rows, layer_rows), shard in zip(pool.map(job.work, shards), shards):
                    run_dir.append(rows, layer_rows)
                    bar.update(len(shard))
            finally:
                info = run_dir.read_run_info()
                info.setdefault("engine_runs", []).append({**options.describe(), **pool.stats.to_dict()})
                atomic_write_bytes(run_dir.run_json, json_text(info).encode())
            return pool.call("stats")
    finally:
        bar.close()
