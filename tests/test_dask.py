"""The Dask executor on real clusters: the same records as the local executor, a worker killed in the
middle of a task, the scheduler killed in the middle of a run, the dataset shipped once per worker,
and the command line.

Workers fork from a server that has imported torch and reglab once (spawned workers would each
import torch, 5-15 s apiece on a busy 2-core machine), so the whole file runs in well under a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
import torch
from click.testing import CliRunner

from reglab import study as st
from reglab.cli import main
from reglab.store import Store
from reglab.study import jobs, train

try:
    import dask
    import distributed
except ImportError:   # pragma: no cover - the extra is not installed
    distributed = None

needs_dask = pytest.mark.skipif(distributed is None, reason="dask[distributed] is not installed: pip install 'reglab[dask]'")

# The seeds' shape (fused kernel) and a Dropout variant (generic engine), in two training groups:
# with 4 seeds and 2 workers that plans 4 tasks.
TINY = """
name = "{name}"
seeds = 4
[data]
name = "moons"
[model]
layers = ["Dense(16, input_dim=2, activation='relu')", "Dense(1, activation='sigmoid')"]
[training]
epochs = 10
[variants.none]
[variants.l2]
layers = {{ 0 = {{ kernel_regularizer = "l2(0.001)" }} }}
[variants.dropout]
insert = {{ 0 = "Dropout(0.2)" }}
training = {{ batch_size = 8 }}
{more}
"""
# A third training group (6 tasks on 2 workers) for the run that loses its scheduler.
MORE = """
[variants.l1]
layers = { 0 = { kernel_regularizer = "l1(0.001)" } }
training = { batch_size = 16 }
"""
# Tasks of about a second each, so that a worker can be killed while one runs.
SLOW = """
name = "slow"
seeds = 4
[data]
name = "digits"
[model]
layers = ["Dense(16, input_dim=64, activation='relu')", "Dense(10, activation='softmax')"]
[training]
epochs = 8
batch_size = 128
[variants.none]
[variants.l2]
layers = { 0 = { kernel_regularizer = "l2(0.001)" } }
"""


@pytest.fixture(autouse=True)
def one_thread():
    """One thread here, as on every worker (numba's thread pool costs more than it saves on tiny studies)."""
    import numba

    threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    numba.set_num_threads(1)   # first: starting numba's OpenMP pool resets torch's thread count
    torch.set_num_threads(1)
    yield
    numba.set_num_threads(numba_threads)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def forkserver():
    if distributed is None:
        pytest.skip("dask[distributed] is not installed: pip install 'reglab[dask]'")
    from distributed.utils import get_mp_context

    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver",
                          "distributed.scheduler.allowed-failures": 3}):
        get_mp_context()   # dask sets its preload list once; then we extend it
        multiprocessing.get_context("forkserver").set_forkserver_preload(
            ["distributed", "numpy", "torch", "reglab.study.dask", "reglab.study.runner"])
        yield


def _cluster(workers=2):
    return distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0")


@pytest.fixture(scope="module")
def cluster(forkserver):
    with _cluster() as c:
        yield c


def write(path, text):
    path.write_text(text)
    return path


def by_pair(records):
    return {(r["variant"], r["seed"]): json.dumps({k: r[k] for k in ("metrics", "history", "extra", "epochs_run",
                                                                     "diverged", "config_key", "params")},
                                                  sort_keys=True) for r in records}


def stored(db, name):
    with Store(db) as store:
        return store.results(store.study(name)["id"])


@pytest.fixture(scope="module")
def dask_run(cluster, tmp_path_factory):
    """The tiny study run once on the 2-worker cluster, with what reached the workers meanwhile."""
    tmp = tmp_path_factory.mktemp("dask_run")
    study = st.load(write(tmp / "tiny.toml", TINY.format(name="tiny", more="")))
    dataset = st.prepare(study)
    from reglab.study.dask import DaskExecutor, arrivals

    with distributed.Client(cluster) as client:
        before = client.run(arrivals)
        with Store(tmp / "dask.db") as store, DaskExecutor(cluster.scheduler_address) as ex:
            tasks = len(jobs.plan(study, study.variants, set(), ex.chunks))
            run_ = st.run(study, store, dataset=dataset, executor=ex)
        after = client.run(arrivals)
    delta = {w: {k: after[w][k] - before[w][k] for k in after[w]} for w in after}
    return {"run": run_, "db": tmp / "dask.db", "tasks": tasks, "arrivals": delta, "dir": tmp}


class LocalInChunks(train.LocalExecutor):
    chunks = 2      # the populations the 2-worker cluster trains, one after another in this process


@needs_dask
def test_dask_gives_the_same_records_as_the_local_executor_bit_for_bit(dask_run):
    study = st.load(dask_run["dir"] / "tiny.toml")
    with Store(dask_run["dir"] / "local.db") as store:
        local = st.run(study, store)
    with Store(dask_run["dir"] / "chunked.db") as store:
        chunked = st.run(st.load(dask_run["dir"] / "tiny.toml"), store, executor=LocalInChunks())
    assert dask_run["tasks"] == 4                       # two training groups x two seed chunks
    on_dask = by_pair(stored(dask_run["db"], "tiny"))
    here = by_pair(stored(dask_run["dir"] / "local.db", "tiny"))
    same_plan = by_pair(stored(dask_run["dir"] / "chunked.db", "tiny"))
    assert len(on_dask) == 3 * 4 and on_dask.keys() == here.keys() == same_plan.keys()
    for pair in here:
        # metrics, histories, weight norms, sparsity, probabilities: every bit. The seeds' shape runs in
        # the fused kernel, where a member's numbers do not depend on the population it trains in; the
        # generic engine's batched matmuls round differently with the population size, so the Dropout
        # variant is compared with the local executor training the same populations.
        assert on_dask[pair] == same_plan[pair], pair
        if pair[0] != "dropout":
            assert on_dask[pair] == here[pair], pair
    assert json.dumps(dask_run["run"].summary, sort_keys=True) == json.dumps(chunked.summary, sort_keys=True)


@needs_dask
def test_the_dataset_reaches_each_worker_once_not_once_per_task(dask_run):
    arrived = dask_run["arrivals"]
    assert len(arrived) == 2
    assert sum(a["tasks"] for a in arrived.values()) == dask_run["tasks"] == 4
    # sent to each worker when the run starts, then kept there: exactly once per worker, whoever
    # trains what (a fast worker may take every task), never once per task
    assert [a["datasets"] for a in arrived.values()] == [1, 1]


def _fingerprint(key):
    """On a worker: the dataset it trains on for ``key``, as bytes to compare with the driver's."""
    from reglab.study.dask import _dataset

    d = _dataset(key)
    return d.X_train.tobytes() + d.y_train.tobytes() + d.X_test.tobytes() + d.y_test.tobytes()


@needs_dask
def test_a_worker_that_joins_later_fetches_the_dataset_once_from_a_peer(cluster, tmp_path):
    from reglab.study.dask import ClusterError, DaskExecutor, _forget, arrivals

    study = st.load(write(tmp_path / "tiny.toml", TINY.format(name="tiny", more="")))
    dataset = st.prepare(study)
    expected = (dataset.X_train.tobytes() + dataset.y_train.tobytes() + dataset.X_test.tobytes()
                + dataset.y_test.tobytes())
    with distributed.Client(cluster) as client, DaskExecutor(cluster.scheduler_address) as ex:
        key = ex._ship(dataset)
        assert ex._ship(dataset) == key                       # shipped once per dataset and executor
        old, new = sorted(client.scheduler_info()["workers"])
        client.run(_forget, key, workers=[new])                # as a worker that joined after the ship
        before = client.run(arrivals)
        for _ in range(3):                                     # three tasks there: one fetch
            got = client.submit(_fingerprint, key, workers=[new], pure=False).result()
            assert got == expected
        after = client.run(arrivals)
        assert {w: after[w]["datasets"] - before[w]["datasets"] for w in after} == {old: 0, new: 1}
        # nobody holds it any more: the task fails with one line that says what to do
        client.run(_forget, key)
        with pytest.raises(ClusterError, match="no worker holds the study's dataset .* run `reglab run` again"):
            client.submit(_fingerprint, key, workers=[new], pure=False).result()


GRID = """
name = "grid"
protocol = "grid"
seeds = 4
[data]
name = "moons"
[model]
layers = ["Dense(16, input_dim=2, activation='relu')", "Dense(1, activation='sigmoid')"]
[training]
epochs = 10
[grid]
variant = { layers = { 0 = { kernel_regularizer = "l2({value})" } } }
values = [1e-1, 1e-2, 1e-3]
refine_points = 3
"""


@needs_dask
def test_a_refined_grid_runs_its_added_points_on_the_workers(cluster, tmp_path):
    from reglab.study.dask import DaskExecutor

    path = write(tmp_path / "grid.toml", GRID)
    with Store(tmp_path / "dask.db") as store, DaskExecutor(cluster.scheduler_address) as ex:
        on_dask = st.run(st.load(path), store, executor=ex)
    with Store(tmp_path / "local.db") as store:
        local = st.run(st.load(path), store)
    refined = [v.name for v in local.study.variants if v.name not in {"none", "0.1", "0.01", "0.001"}]
    assert refined and [v.name for v in on_dask.study.variants] == [v.name for v in local.study.variants]
    assert by_pair(stored(tmp_path / "dask.db", "grid")) == by_pair(stored(tmp_path / "local.db", "grid"))
    assert {r["variant"] for r in stored(tmp_path / "dask.db", "grid")} >= set(refined)


def _executing(dask_worker):
    return [str(ts.key) for ts in dask_worker.state.tasks.values() if ts.state == "executing"]


@needs_dask
@pytest.mark.timeout(120)
def test_a_worker_killed_in_the_middle_of_a_task_is_replaced_and_nothing_is_lost(forkserver, tmp_path):
    from reglab.study.dask import DaskExecutor

    study = st.load(write(tmp_path / "slow.toml", SLOW))
    dataset = st.prepare(study)
    killed = {}

    def killer(client):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            running = {w: keys for w, keys in client.run(_executing).items() if keys}
            if running:
                worker, keys = next(iter(running.items()))
                pid = client.run(os.getpid, workers=[worker])[worker]
                os.kill(pid, signal.SIGKILL)
                killed.update(worker=worker, key=keys[0], pid=pid)
            time.sleep(0.02)

    with _cluster() as cluster, distributed.Client(cluster) as client:
        thread = threading.Thread(target=killer, args=(client,))
        with Store(tmp_path / "slow.db") as store, DaskExecutor(cluster.scheduler_address) as ex:
            thread.start()
            run_ = st.run(study, store, dataset=dataset, executor=ex)
        thread.join()
        story = client.run_on_scheduler(lambda dask_scheduler, key=killed["key"]: dask_scheduler.story(key))

    assert killed, "no task was seen running"
    processing = [t for t in story if t[2] == "processing"]
    assert len(processing) >= 2, story                 # the killed task ran again
    assert not any(t[2] == "erred" for t in story)
    expected = {(v, s) for v in ("none", "l2") for s in range(4)}
    assert Counter((r["variant"], r["seed"]) for r in run_.records) == Counter(expected)
    assert run_.trained == 8
    assert Counter((r["variant"], r["seed"]) for r in stored(tmp_path / "slow.db", "slow")) == Counter(expected)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def killable_scheduler(workers=2):
    """A real `dask scheduler` process (to kill -9) with worker nannies run from this process."""
    from distributed.utils import LoopRunner, sync

    port = _free_port()
    scheduler = subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port",
                                  str(port), "--no-dashboard"], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"tcp://127.0.0.1:{port}"
    loop = LoopRunner(asynchronous=False)
    loop.start()

    async def start():
        return await asyncio.gather(*(distributed.Nanny(address, nthreads=1, dashboard_address=None)
                                      for _ in range(workers)))

    async def close(nannies):
        await asyncio.gather(*(n.close(timeout=5) for n in nannies), return_exceptions=True)

    nannies = []
    try:
        nannies = sync(loop.loop, start)
        yield scheduler, address
    finally:
        if scheduler.poll() is None:
            scheduler.kill()
        scheduler.wait()
        if nannies:
            sync(loop.loop, close, nannies)
        loop.stop()


class KillAfterFirstSave:
    """A store that kills the scheduler right after the driver saves the first finished task."""

    def __init__(self, store, process):
        self.store, self.process, self.saves = store, process, 0

    def save(self, study_id, records):
        n = self.store.save(study_id, records)
        self.saves += 1
        if self.saves == 1:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        return n

    def __getattr__(self, name):
        return getattr(self.store, name)


@needs_dask
@pytest.mark.timeout(120)
def test_the_scheduler_killed_mid_run_stops_with_a_clear_error_and_a_rerun_resumes(forkserver, tmp_path):
    from reglab.study.dask import DaskExecutor, SchedulerLost

    path = write(tmp_path / "tiny.toml", TINY.format(name="tiny", more=MORE))
    dataset = st.prepare(st.load(path))
    db = tmp_path / "lost.db"
    with killable_scheduler() as (scheduler, address):
        with Store(db) as store, DaskExecutor(address) as ex:
            assert ex.chunks == 2
            hooked = KillAfterFirstSave(store, scheduler)
            with pytest.raises(SchedulerLost) as info:
                st.run(st.load(path), hooked, dataset=dataset, executor=ex)
    assert str(info.value) == (f"lost the Dask scheduler at {address}; run `reglab run` again to resume "
                               f"from the store")
    first = stored(db, "tiny")
    assert hooked.saves >= 1 and 0 < len(first) < 16, len(first)   # some tasks saved, not all

    with Store(db) as store:
        again = st.run(st.load(path), store, dataset=dataset)
    expected = Counter((v, s) for v in ("none", "l2", "dropout", "l1") for s in range(4))
    assert again.trained == 16 - len(first)
    assert Counter((r["variant"], r["seed"]) for r in stored(db, "tiny")) == expected
    assert Counter((r["variant"], r["seed"]) for r in again.records) == expected


# ------------------------------------------------------------------------------------------- CLI


@needs_dask
def test_cli_runs_on_a_scheduler_and_on_its_own_local_cluster(cluster, tmp_path):
    path = write(tmp_path / "tiny.toml", TINY.format(name="tiny", more=""))
    db = str(tmp_path / "cli.db")
    result = CliRunner().invoke(main, ["run", str(path), "--db", db, "--executor", "dask",
                                       "--scheduler", cluster.scheduler_address])
    assert result.exit_code == 0, result.output
    assert "12 members trained, 0 from" in result.output
    again = CliRunner().invoke(main, ["run", str(path), "--db", db, "--executor", "dask", "--workers", "1",
                                      "--seeds", "5"])
    assert again.exit_code == 0, again.output
    assert "3 members trained, 12 from" in again.output       # resumed: only seed 4 was trained
    assert Counter((r["variant"], r["seed"]) for r in stored(db, "tiny")) == Counter(
        (v, s) for v in ("none", "l2", "dropout") for s in range(5))


@needs_dask
def test_cli_unreachable_scheduler_is_one_line_exit_2(forkserver, tmp_path):
    path = write(tmp_path / "tiny.toml", TINY.format(name="tiny", more=""))
    address = f"tcp://127.0.0.1:{_free_port()}"
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        result = CliRunner().invoke(main, ["run", str(path), "--db", str(tmp_path / "x.db"), "--executor", "dask",
                                           "--scheduler", address])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: cannot reach the Dask scheduler at {address} (")
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "x.db").exists()            # refused before the database is touched


@needs_dask
def test_a_scheduler_without_workers_is_a_clear_error(forkserver):
    from reglab.study.dask import ClusterError, DaskExecutor

    with distributed.LocalCluster(n_workers=0, processes=True, dashboard_address=":0") as empty:
        ex = DaskExecutor(empty.scheduler_address, wait_for_workers=0.5)
        with pytest.raises(ClusterError, match=r"^no Dask workers joined tcp://127\.0\.0\.1:\d+ within 0\.5 s; "
                                               r"start some with `dask worker tcp://"):
            ex.start()
        assert ex.client is None


@pytest.mark.parametrize("args, message", [
    (["--executor", "local", "--workers", "2"], "error: --scheduler and --workers need --executor dask"),
    (["--scheduler", "tcp://127.0.0.1:8786"], "error: --scheduler and --workers need --executor dask"),
    (["--executor", "dask", "--workers", "2", "--scheduler", "tcp://127.0.0.1:8786"],
     "error: give a scheduler address (an existing cluster) or a number of workers (a local cluster), not both"),
])
def test_cli_rejects_mismatched_options(tmp_path, args, message):
    path = write(tmp_path / "tiny.toml", TINY.format(name="tiny", more=""))
    result = CliRunner().invoke(main, ["run", str(path), "--db", str(tmp_path / "x.db"), *args])
    assert result.exit_code == 2 and result.output.strip() == message, result.output


def test_cli_without_dask_installed_says_how_to_install_it(tmp_path, monkeypatch):
    path = write(tmp_path / "tiny.toml", TINY.format(name="tiny", more=""))
    monkeypatch.setitem(sys.modules, "distributed", None)    # `import distributed` now raises ImportError
    result = CliRunner().invoke(main, ["run", str(path), "--db", str(tmp_path / "x.db"), "--executor", "dask"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == "error: Dask is not installed; pip install 'reglab[dask]' (or: pip install 'dask[distributed]')"
    assert not (tmp_path / "x.db").exists()
