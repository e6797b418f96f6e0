"""Interruption and concurrency of real `reglab run` processes: Ctrl-C and SIGTERM stop cleanly after
saving the finished tasks; `kill -9` at random moments never corrupts the store and the resumed
study ends with every (variant, seed) exactly once, with the same numbers as an uninterrupted run;
a second run of a study that is running is refused with one line; status and report of a running
study show what has finished."""

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from reglab.cli import main
from reglab.store import Store, StudyBusy
from reglab.study import runner

from report_helpers import none_vs_l2_study

pytestmark = pytest.mark.usefixtures("one_thread")

# 2 variants x 8 seeds; with --task-size 1 that is 16 populations, each saved in its own transaction.
STUDY = none_vs_l2_study("interrupted", 8)
MEMBERS = 16
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}


def write_study(tmp_path, epochs=150, name="study.toml"):
    path = tmp_path / name
    path.write_text(STUDY.format(epochs=epochs))
    return path


def spawn(tmp_path, *args, log="child.log"):
    """`reglab ARGS` as a real process in its own session (so a signal can go to its whole group,
    as Ctrl-C in a terminal does)."""
    out = open(tmp_path / log, "w")
    child = subprocess.Popen([sys.executable, "-m", "reglab.cli", *map(str, args)], stdout=out, stderr=subprocess.PIPE,
                             env=ENV, cwd=tmp_path, start_new_session=True, text=True)
    child.log = out
    return child


def finish(child, timeout=120):
    try:
        _, err = child.communicate(timeout=timeout)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        child.log.close()
    return child.returncode, err


def rows(db, table="results"):
    """Row count, or -1 while the file or the table does not exist yet."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:
        return -1


def wait_for(child, condition, what, timeout=240):
    deadline = time.monotonic() + timeout
    while not condition():
        assert child.poll() is None, f"the run ended before {what}: {child.stderr.read() if child.stderr else ''}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def check_store(db):
    """The file is intact and no (variant, seed) is saved twice; returns the saved pairs."""
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        pairs = con.execute("SELECT variant, seed, count(*) FROM results GROUP BY study_id, variant, seed").fetchall()
    finally:
        con.close()
    assert all(n == 1 for _, _, n in pairs), pairs
    return {(v, s) for v, s, _ in pairs}


def metrics(db, name="interrupted"):
    with Store(db) as store:
        return {(r["variant"], r["seed"]): r["metrics"] for r in store.results(store.study(name)["id"])}


def complete(db):
    return {(v, s) for v in ("none", "l2") for s in range(8)} == check_store(db)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The study run without interruption, in one population (its numbers are what resumed runs must give)."""
    tmp = tmp_path_factory.mktemp("reference")
    result = CliRunner().invoke(main, ["run", str(write_study(tmp)), "--db", str(tmp / "ref.db")])
    assert result.exit_code == 0, result.output
    return metrics(tmp / "ref.db")


def same_numbers(got, reference):
    assert got.keys() == reference.keys()
    for key, m in reference.items():
        for name, value in m.items():
            assert got[key][name] == pytest.approx(value, rel=1e-5, abs=1e-6), (key, name)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_stops_the_run_cleanly_and_the_study_resumes(sig, tmp_path, reference):
    study, db = write_study(tmp_path), tmp_path / "s.db"
    child = spawn(tmp_path, "run", study, "--db", db, "--task-size", 1)
    wait_for(child, lambda: rows(db) >= 2, "two tasks were saved")
    if sig == signal.SIGINT:
        os.killpg(child.pid, sig)   # Ctrl-C in a terminal signals the whole foreground group
    else:
        os.kill(child.pid, sig)
    code, err = finish(child)
    assert code == 130, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted: ") and "run the same command again" in lines[0], err
    saved = check_store(db)
    assert 2 <= len(saved) < MEMBERS and f"{len(saved)} results of study 'interrupted'" in lines[0]
    assert rows(db, "runs") == 0                      # the run's lease is gone

    result = CliRunner().invoke(main, ["run", str(study), "--db", str(db), "--task-size", 4])
    assert result.exit_code == 0, result.output
    assert f"{MEMBERS - len(saved)} members trained, {len(saved)} from" in result.output
    assert complete(db)
    same_numbers(metrics(db), reference)


def test_kill_9_at_random_moments_never_corrupts_and_the_study_ends_exactly_once(tmp_path, reference):
    study, db = write_study(tmp_path), tmp_path / "k.db"
    rng = random.Random(7)
    saved_before = 0
    for trial in range(4):
        child = spawn(tmp_path, "run", study, "--db", db, "--task-size", 1, log=f"trial{trial}.log")
        wait_for(child, lambda: rows(db) >= 0, "the database was created")
        time.sleep(rng.uniform(0.0, 1.5))   # anywhere: opening, training, mid-save, between saves
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        finish(child)
        saved = check_store(db)
        assert len(saved) >= saved_before           # nothing that was saved is ever lost
        saved_before = len(saved)
        if len(saved) == MEMBERS:
            break
    result = CliRunner().invoke(main, ["run", str(study), "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert f"{MEMBERS - saved_before} members trained, {saved_before} from" in result.output
    assert complete(db)
    same_numbers(metrics(db), reference)
    result = CliRunner().invoke(main, ["status", "interrupted", "--db", str(db)])
    assert result.output.startswith("interrupted: 16 of 16 results"), result.output   # a killed run is not "running"


def test_a_second_run_of_a_running_study_is_refused_status_and_report_show_progress(tmp_path):
    study, db = write_study(tmp_path), tmp_path / "c.db"
    first = spawn(tmp_path, "run", study, "--db", db, "--task-size", 1)
    try:
        wait_for(first, lambda: rows(db) >= 1 and rows(db, "runs") == 1, "the first run saved a task")
        os.kill(first.pid, signal.SIGSTOP)   # still running, holding its lease, but leaving the CPU to us

        second = spawn(tmp_path, "run", study, "--db", db, log="second.log")
        code, err = finish(second)
        assert code == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: study 'interrupted' is already being run"), err
        assert f"pid {first.pid}" in lines[0] and "wait for it to finish" in lines[0]

        status = CliRunner().invoke(main, ["status", "interrupted", "--db", str(db)])
        assert status.exit_code == 0, status.output
        assert f"running (pid {first.pid}" in status.output and f"of {MEMBERS} members finished" in status.output

        report = CliRunner().invoke(main, ["report", "interrupted", "--db", str(db), "--out", str(tmp_path / "r")])
        assert report.exit_code == 0, report.output
        assert "is still running" in report.output
        page = (tmp_path / "r" / "index.html").read_text()
        assert "Still running." in page and f"of {MEMBERS} members had finished" in page
        finished = json.loads((tmp_path / "r" / "results.json").read_text())
        assert 1 <= len(finished["records"]) < MEMBERS
    finally:
        os.killpg(first.pid, signal.SIGINT)
        os.kill(first.pid, signal.SIGCONT)
        code, err = finish(first)
    assert code == 130, err
    assert rows(db, "runs") == 0
    status = CliRunner().invoke(main, ["status", "interrupted", "--db", str(db)])
    assert "running" not in status.output, status.output


def test_two_studies_in_one_database_run_at_the_same_time(tmp_path):
    study = write_study(tmp_path, epochs=100)
    other = tmp_path / "other.toml"
    other.write_text(study.read_text().replace('name = "interrupted"', 'name = "other"'))
    db = tmp_path / "two.db"
    a = spawn(tmp_path, "run", study, "--db", db, "--task-size", 2, log="a.log")
    b = spawn(tmp_path, "run", other, "--db", db, "--task-size", 2, log="b.log")
    assert finish(a)[0] == 0 and finish(b)[0] == 0
    with Store(db) as store:
        assert {s["name"]: s["n_results"] for s in store.studies()} == {"interrupted": MEMBERS, "other": MEMBERS}
    check_store(db)


def test_the_lease_is_per_study_and_per_process_and_released_on_error(tmp_path):
    with Store(tmp_path / "l.db") as store, Store(tmp_path / "l.db") as again:
        a, b = store.open_study("a", {"x": 1}), store.open_study("b", {"x": 2})
        with store.lease(a, {"members": 3}):
            assert store.running(a)["pid"] == os.getpid() and store.running(a)["planned"] == {"members": 3}
            assert again.running(a)["pid"] == os.getpid()
            assert store.running(b) is None
            with pytest.raises(StudyBusy, match="study 'a' is already being run by another reglab"):
                with again.lease(a):
                    pass
            with again.lease(b):            # another study is free
                assert store.running(b) is not None
            assert store.running(a) is not None   # releasing b kept a's lock (one descriptor per file)
        assert store.running(a) is None
        with pytest.raises(RuntimeError):
            with store.lease(a):
                raise RuntimeError("boom")
        assert store.running(a) is None
        with store.lease(a):                # and it can be taken again
            pass


def test_a_report_of_a_partly_finished_study_shows_what_has_finished(tmp_path):
    from reglab import study as st
    from reglab.report import write_report

    study = st.load(write_study(tmp_path, epochs=20))
    full = runner.run(study, None)
    with Store(tmp_path / "p.db") as store:
        sid = store.open_study(study.name, study.as_dict())
        store.save(sid, [r for r in full.records if r["variant"] == "none" and r["seed"] < 3]
                   + [r for r in full.records if r["variant"] == "l2" and r["seed"] == 0])
        with store.lease(sid, {"members": MEMBERS}):
            paths = write_report("interrupted", tmp_path / "p.db", tmp_path / "report")
    page = paths[0].read_text()
    assert "Still running." in page and f"4 of {MEMBERS} members had finished" in page


def test_interrupts_are_held_back_while_a_task_is_saved():
    before = signal.getsignal(signal.SIGINT)
    done = []
    with pytest.raises(KeyboardInterrupt):
        with runner._interrupts_deferred():
            signal.raise_signal(signal.SIGINT)
            done.append("saved")          # the interrupt waits for the block to end
    assert done == ["saved"]
    assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_on_a_local_dask_cluster_stops_every_process_quietly(tmp_path):
    pytest.importorskip("distributed")
    study, db = write_study(tmp_path), tmp_path / "d.db"
    child = spawn(tmp_path, "run", study, "--db", db, "--task-size", 1, "--executor", "dask", "--workers", 2)
    wait_for(child, lambda: rows(db) >= 1, "a task was saved")
    os.killpg(child.pid, signal.SIGINT)   # the workers are in the same group, as in a terminal
    code, err = finish(child)
    assert code == 130, err
    assert err.strip().splitlines() == [err.strip().splitlines()[-1]] and "interrupted: " in err, err   # one line
    saved = check_store(db)
    assert 1 <= len(saved) < MEMBERS
    deadline = time.monotonic() + 30
    while True:   # no worker or nanny is left behind
        try:
            os.killpg(child.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "Dask processes outlived the interrupted run"
        time.sleep(0.2)
