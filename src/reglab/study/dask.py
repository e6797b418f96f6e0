"""Run a study's populations on a Dask cluster (``pip install 'reglab[dask]'``).

:class:`DaskExecutor` is an executor for :func:`reglab.study.run`: the study is planned into one
task per population chunk (``chunks`` = the cluster's worker threads, so each group of seeds is cut
into pieces that keep every worker busy), each task is one Dask future, and the records come back
to the driver as each task finishes -- the driver is the only writer to the store, so the store
stays the record of what has run. At most a few tasks per worker thread are in flight at a time
(``IN_FLIGHT_PER_THREAD``; each result lets the next task go), so a study of many thousand tasks
does not hold all of them in the driver and the scheduler at once.

- The dataset is read by the driver (user files included) and sent once to each worker, which keeps
  it (``client.run``, outside Dask's data store); tasks carry only its key, so workers need no shared
  file system. A worker that joins later (or is restarted) fetches it once, from a peer. (A
  scattered future as the tasks' dependency would not do: Dask's active memory manager drops the
  replicas no queued task needs, and each later task on that worker would fetch the dataset again.)
  A factory model (``model.factory``) that is a single ``.py`` file next to the study
  file is uploaded to the workers too; a factory in a package must be installed on the workers.
- The study travels as its raw dict and folder; each worker rebuilds it with ``spec.from_dict``
  and trains with ``train.execute`` on one thread per task, so a task gives the same records, bit
  for bit on CPU, as the local executor training the same population. For the fused kernel a
  member's numbers depend neither on its population, nor on the thread count, nor on the CPU's
  vector width (tests/test_fused_determinism.py); the generic engine's batched matmuls round
  differently in the last bit with the population size (and PyTorch's kernels with the CPU).
- A worker that dies in the middle of a task: Dask runs the task again on another worker
  (``retries=2`` covers tasks that fail there for other reasons). The scheduler gone: the run
  stops with :class:`SchedulerLost`; the tasks that finished are already in the store and
  ``reglab run`` again resumes from there.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import time
import uuid
from pathlib import Path

from tqdm.auto import tqdm

from ..threads import set_threads
from .jobs import Job, with_grid_points
from .train import execute
from . import spec as S

__all__ = ["ClusterError", "DaskExecutor", "SchedulerLost"]

# Tasks in flight per worker thread (see DaskExecutor.window): a study of any size holds this many
# tasks in the driver, the scheduler and the workers' queues, not all of them at once.
IN_FLIGHT_PER_THREAD = 4
MIN_IN_FLIGHT = 8

INSTALL_HINT = "Dask is not installed; pip install 'reglab[dask]' (or: pip install 'dask[distributed]')"


class ClusterError(ValueError):
    """The Dask cluster cannot be used (not installed, unreachable, no workers); one line with the fix."""


class SchedulerLost(ClusterError):
    """The connection to the scheduler broke in the middle of a run."""


def _distributed():
    try:
        import distributed
    except ImportError:
        raise ClusterError(INSTALL_HINT) from None
    return distributed


# ------------------------------------------------------------------------------------- worker side

# What reached this process as a worker: datasets deserialised, tasks run and their seconds (client.run).
_ARRIVALS = {"datasets": 0, "tasks": 0, "seconds": 0.0}


def arrivals() -> dict:
    """How many datasets arrived in this worker process, how many tasks it ran and in how many seconds."""
    return dict(_ARRIVALS)


class Shipped:
    """The dataset on its way to a worker; each worker process keeps what arrives (:data:`_DATASETS`)."""

    def __init__(self, dataset, key: str):
        self.dataset, self.key = dataset, key

    def __getstate__(self):
        return {"dataset": self.dataset, "key": self.key}

    def __setstate__(self, state):
        self.dataset, self.key = state["dataset"], state["key"]
        _ARRIVALS["datasets"] += 1
        _keep(self.key, self.dataset)


# Datasets that arrived in this worker process, by key, most recent last. They live here, not in Dask's
# data store: Dask's active memory manager (on by default) drops replicas that no queued task needs,
# and every later task on that worker would fetch the whole dataset again.
_DATASETS: dict[str, object] = {}
_DATASETS_KEPT = 2


def _keep(key: str, dataset) -> None:
    _DATASETS.pop(key, None)
    _DATASETS[key] = dataset
    while len(_DATASETS) > _DATASETS_KEPT:
        _DATASETS.pop(next(iter(_DATASETS)))


def _receive(shipped: Shipped) -> None:
    """Run on every worker by the driver (``client.run``): the argument's arrival keeps the dataset."""


def _forget(key: str) -> None:
    """Run on every worker when the executor closes: its dataset is no longer needed there."""
    _DATASETS.pop(key, None)


def _kept(key: str) -> Shipped | None:
    """Run on a peer by a worker that lacks the dataset: the peer's copy, if it has one."""
    dataset = _DATASETS.get(key)
    return None if dataset is None else Shipped(dataset, key)


def _workers(client) -> dict:
    """The cluster's workers by address, with what the scheduler knows of each."""
    try:
        return client.scheduler_info(n_workers=-1)["workers"]
    except TypeError:   # pragma: no cover - older distributed without n_workers
        return client.scheduler_info()["workers"]


def _dataset(key: str):
    """The dataset on this worker: kept since the driver shipped it or, on a worker that joined (or was
    restarted) since, fetched once from a peer that has it."""
    dataset = _DATASETS.get(key)
    if dataset is not None:
        return dataset
    distributed = _distributed()
    me = distributed.get_worker().address
    with distributed.worker_client() as client:
        for peer in _workers(client):
            if peer != me:
                shipped = client.run(_kept, key, workers=[peer], on_error="return").get(peer)
                if isinstance(shipped, Shipped):   # its arrival here kept it (Shipped.__setstate__)
                    return shipped.dataset
    raise ClusterError(f"no worker holds the study's dataset {key} any more (every worker that received it "
                       f"has left the cluster); run `reglab run` again to resume from the store")


def _rebuild(payload: dict) -> S.Study:
    """The study from its raw dict, plus the grid points the run added while refining."""
    study = S.from_dict(payload["raw"], base_dir=payload["base_dir"])
    with_grid_points(study, [p["value"] for p in payload["refined"]])
    return study


# Studies rebuilt in this worker process, by payload key, most recent last: rebuilding costs
# O(variants) (50 ms for a 200-point grid), which every task of a study would otherwise pay again.
_STUDIES: dict[str, S.Study] = {}
_STUDIES_KEPT = 4


def _study(payload: dict) -> S.Study:
    key = payload.get("key")
    if key is None:
        return _rebuild(payload)
    study = _STUDIES.pop(key, None)
    if study is None:
        study = _rebuild(payload)
    _STUDIES[key] = study
    while len(_STUDIES) > _STUDIES_KEPT:
        _STUDIES.pop(next(iter(_STUDIES)))
    return study


def run_task(payload: dict, shipped: str, task: Job) -> list[dict]:
    """On a worker: train one task's population (on the dataset the driver sent as key ``shipped``)
    and return its records."""
    start = time.perf_counter()
    set_threads(1)   # one thread per task: a worker is one of several on the machine
    records = execute(_study(payload), _dataset(shipped), task, progress=False, threads=1)
    _ARRIVALS["tasks"] += 1
    _ARRIVALS["seconds"] += time.perf_counter() - start
    return records


# -------------------------------------------------------------------------------------- driver side


def _address(scheduler: str) -> str:
    scheduler = scheduler.strip()
    return scheduler if "://" in scheduler else f"tcp://{scheduler}"


class DaskExecutor:
    """Train a study's tasks on Dask: an existing cluster (``scheduler="tcp://HOST:8786"``) or a
    local one started here (``workers=N`` processes with one thread each; 2 when neither is given).

    Use it as a context manager (it connects on entry and closes what it started on exit)::

        with DaskExecutor("tcp://10.0.0.5:8786") as ex:
            reglab.study.run(study, store, executor=ex)
    """

    def __init__(self, scheduler: str | None = None, workers: int | None = None, *,
                 timeout: float | None = None, wait_for_workers: float = 60.0):
        if scheduler is not None and workers is not None:
            raise ClusterError("give a scheduler address (an existing cluster) or a number of workers "
                               "(a local cluster), not both")
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ClusterError(f"workers must be an int >= 1. Got {workers!r}.")
        self.scheduler = _address(scheduler) if scheduler is not None else None
        self.workers = workers if workers is not None or scheduler is not None else 2
        self.timeout = timeout                  # connecting; None: dask's distributed.comm.timeouts.connect
        self.wait_for_workers = wait_for_workers
        self.client = None
        self._cluster = None
        self._shipped = None                    # (dataset, key): shipped once, reused by later map calls
        self._uploaded: set[str] = set()

    # -- lifetime ------------------------------------------------------------------------------

    def start(self):
        """Connect to the scheduler (or start the local cluster); idempotent."""
        if self.client is not None:
            return self
        distributed = _distributed()
        if self.scheduler is None:
            try:
                # The worker processes inherit an ignored SIGINT: Ctrl-C in a terminal signals the whole
                # foreground group, and only this process should answer it (by closing the cluster).
                with _sigint_ignored():
                    self._cluster = distributed.LocalCluster(n_workers=self.workers, threads_per_worker=1,
                                                             processes=True, dashboard_address=":0",
                                                             silence_logs=logging.ERROR)
                self.client = distributed.Client(self._cluster)
            except Exception as exc:
                self.close()
                raise ClusterError(f"cannot start a local Dask cluster of {self.workers} workers: {_line(exc)}") from None
            return self
        try:
            timeout = {} if self.timeout is None else {"timeout": self.timeout}
            self.client = distributed.Client(self.scheduler, **timeout)
        except (OSError, TimeoutError) as exc:
            raise ClusterError(f"cannot reach the Dask scheduler at {self.scheduler} ({_line(exc)}); start one "
                               f"with `dask scheduler` or check --scheduler") from None
        try:
            self.client.wait_for_workers(1, timeout=self.wait_for_workers)
        except (TimeoutError, OSError):
            self.close()
            raise ClusterError(f"no Dask workers joined {self.scheduler} within {self.wait_for_workers:g} s; "
                               f"start some with `dask worker {self.scheduler} --nthreads 1`") from None
        return self

    def close(self):
        """Close the client, and the local cluster if this executor started it."""
        self._forget_shipped()
        client, cluster, self.client, self._cluster = self.client, self._cluster, None, None
        self._uploaded = set()
        lost = client is not None and client.status != "running"
        with _quiet("distributed.client") if lost else contextlib.nullcontext():
            for thing in (client, cluster):
                if thing is not None:
                    try:
                        thing.close(timeout=10) if thing is client else thing.close()
                    except Exception:   # closing after the scheduler is gone may fail; nothing left to do
                        pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    @property
    def address(self) -> str:
        if self.scheduler is not None:
            return self.scheduler
        return self._cluster.scheduler_address if self._cluster is not None else "(local cluster, not started)"

    @property
    def chunks(self) -> int:
        """One population chunk per worker thread (one thread per worker: one per worker)."""
        self.start()
        try:
            workers = _workers(self.client).values()
        except (OSError, TimeoutError) as exc:
            raise self._lost(exc) from None
        return max(1, sum(int(w.get("nthreads", 1)) for w in workers))

    def gpus(self) -> int:
        """GPUs the cluster's workers advertise as Dask resources (``dask worker --resources GPU=1``)."""
        try:
            workers = self.client.scheduler_info().get("workers", {}).values()
        except (OSError, TimeoutError, AttributeError):
            return 0
        return int(sum(float((w.get("resources") or {}).get("GPU", 0)) for w in workers))

    def window(self) -> int:
        """How many tasks :meth:`map` keeps submitted at once: ``IN_FLIGHT_PER_THREAD`` per worker
        thread, at least ``MIN_IN_FLIGHT`` (enough to keep every worker busy while results travel)."""
        return max(MIN_IN_FLIGHT, IN_FLIGHT_PER_THREAD * self.chunks)

    # -- work ----------------------------------------------------------------------------------

    def map(self, study, dataset, tasks, progress=None):
        """Yield ``(task, records)`` as each task finishes, with at most :meth:`window` tasks in flight:
        each result that comes back lets the next task go, so the driver (and the scheduler) hold a
        bounded number of tasks whatever the study's size."""
        tasks = list(tasks)
        if not tasks:
            return
        self.start()
        distributed = _distributed()
        client = self.client
        payload = _payload(study)
        futures: dict = {}
        waiting = iter(tasks)
        done = distributed.as_completed()
        bar = tqdm(total=len(tasks), desc="tasks", unit="task", disable=None if progress is None else not progress)
        # Workers started with --resources GPU=1 (one per GPU, e.g. CUDA_VISIBLE_DEVICES=i) take one task
        # at a time each, which then trains on that worker's GPU (the study's device "auto").
        resources = {"GPU": 1} if self.gpus() else None

        def submit(n):
            try:
                for task in itertools.islice(waiting, max(0, n)):
                    future = client.submit(run_task, payload, data, task, pure=False, retries=2, resources=resources)
                    futures[future] = task
                    done.add(future)
            except (OSError, TimeoutError) as exc:
                raise self._lost(exc) from None

        try:
            try:
                self._upload_factory(study)
                data = self._ship(dataset)
                window = self.window()
            except (OSError, TimeoutError) as exc:
                raise self._lost(exc) from None
            submit(window)
            finished = 0
            for future in done:
                task = futures.pop(future)
                records = self._result(future, task)
                finished += 1
                if finished % window == 0:   # workers may have joined (or left) since: size the window again
                    with contextlib.suppress(OSError, TimeoutError, ClusterError):
                        window = self.window()
                submit(window - len(futures))   # before the yield: the workers train while the driver saves
                bar.update(1)
                yield task, records
        finally:
            bar.close()
            if futures and client.status == "running":
                try:
                    client.cancel(list(futures))
                except Exception:   # pragma: no cover - best effort on the way out
                    pass

    def _result(self, future, task):
        from concurrent.futures import CancelledError

        from distributed.scheduler import KilledWorker

        if future.status == "error":   # the task itself failed (e.g. a StudyError on the worker): say so
            try:
                return future.result()
            except KilledWorker:
                raise ClusterError(f"a task of {len(task.variants)} variant(s) x {len(task.seeds)} seed(s) was "
                                   f"running on each of the workers that died; they may be running out of "
                                   f"memory (lower training.batch_size or the seeds per task)") from None
        if future.status == "cancelled" or self.client.status != "running":
            raise self._lost()
        try:
            return future.result()
        except (CancelledError, OSError, TimeoutError) as exc:
            raise self._lost(exc) from None

    def _lost(self, exc=None) -> SchedulerLost:
        self._shipped = None
        return SchedulerLost(f"lost the Dask scheduler at {self.address}; run `reglab run` again to resume "
                             f"from the store")

    def _ship(self, dataset) -> str:
        """Send the dataset to every worker once (once per dataset and executor); return the key the
        tasks name it by. A worker that joins later fetches it from a peer on its first task."""
        if self._shipped is None or self._shipped[0] is not dataset:
            self._forget_shipped()
            key = f"reglab-dataset-{uuid.uuid4().hex}"
            # client.run pickles the dataset once; the scheduler forwards the bytes to each worker. A
            # worker that fails to take it (it is leaving) is skipped: the peers' copies serve it later.
            self.client.run(_receive, Shipped(dataset, key), on_error="ignore")
            self._shipped = (dataset, key)
        return self._shipped[1]

    def _forget_shipped(self):
        """Let the workers drop the dataset this executor shipped (best effort: they keep two at most)."""
        shipped, self._shipped = self._shipped, None
        if shipped is not None and self.client is not None and self.client.status == "running":
            with contextlib.suppress(Exception):
                self.client.run(_forget, shipped[1], on_error="ignore")

    def _upload_factory(self, study):
        """A factory that is one .py file next to the study file goes to the workers with the study."""
        ref = study.model.get("factory")
        if not ref:
            return
        module = ref.partition(":")[0]
        path = Path(study.base_dir) / f"{module}.py"
        if "." in module or not path.is_file() or str(path) in self._uploaded:
            return
        self.client.upload_file(str(path), load=False)
        self._uploaded.add(str(path))


def _payload(study: S.Study) -> dict:
    """What a worker needs to rebuild ``study``: its raw dict, its folder, the grid points added by
    refinement; checked here so that workers and driver agree on every configuration key."""
    payload = {"raw": study.raw, "base_dir": os.fspath(Path(study.base_dir).resolve()), "refined": []}
    rebuilt = _rebuild(payload)   # the study as its file gives it; the grid points refinement added
    payload["refined"] = [{"value": v.params["value"]} for v in with_grid_points(rebuilt, [
        v.params["value"] for v in study.variants if "value" in v.params])]
    rebuilt = {v.name: v.key for v in rebuilt.variants}
    mine = {v.name: v.key for v in study.variants}
    if any(rebuilt.get(name) != key for name, key in mine.items()):
        raise S.StudyError("the study's variants cannot be rebuilt from its file on the workers; "
                           "run it with --executor local")
    # Workers rebuild the study once per key (see _study): the key names everything it is built from.
    text = json.dumps([payload["raw"], payload["base_dir"], payload["refined"]], sort_keys=True, default=repr)
    payload["key"] = hashlib.sha256(text.encode()).hexdigest()
    return payload


@contextlib.contextmanager
def _sigint_ignored():
    """SIGINT ignored while the block runs (processes started meanwhile keep ignoring it); main thread only."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)


@contextlib.contextmanager
def _quiet(name):
    """Hold back a logger's tracebacks (a client that lost its scheduler logs its cancelled reconnect)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _line(exc) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
