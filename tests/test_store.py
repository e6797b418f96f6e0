"""The SQLite store: migrations, WAL, resume, atomic and idempotent saves, round trips, kill -9."""

from __future__ import annotations

import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from itertools import count

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reglab import store as store_module
from reglab.store import MIGRATIONS, SCHEMA_VERSION, Store, StoreError

SPEC = {"name": "moons", "epochs": 4000, "variants": {"none": {}, "l2": {"lam": [1e-3, 1e-2]}}}


def record(key="l2/lam=0.001", seed=0, **changes):
    out = {"variant": key.split("/")[0], "config_key": key, "params": {"lam": 1e-3}, "seed": seed,
           "metrics": {"train_accuracy": 1.0, "test_accuracy": 0.943, "train_loss": 0.01, "test_loss": 0.2},
           "epochs_run": 4000, "diverged": False, "history": {"loss": [0.7, 0.3], "val_loss": [0.7, 0.4]},
           "extra": {"weight_norms": {"0.weight": 3.5}}}
    out.update(changes)
    return out


def raw(path):
    return sqlite3.connect(path, isolation_level=None)


# -- opening, migrations, WAL --------------------------------------------------------------------

def test_migrations_are_recorded_and_reopening_applies_nothing(tmp_path):
    path = tmp_path / "reglab.db"
    with Store(path):
        pass
    con = raw(path)
    first = con.execute("SELECT name, applied_at FROM migrations ORDER BY rowid").fetchall()
    assert [name for name, _ in first] == [name for name, _ in MIGRATIONS]
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == len(MIGRATIONS)
    con.close()
    with Store(path) as store:
        sid = store.open_study("s", SPEC)
    with Store(path) as store:
        assert store.study("s")["id"] == sid
    con = raw(path)
    assert con.execute("SELECT name, applied_at FROM migrations ORDER BY rowid").fetchall() == first
    con.close()


def test_new_migration_applies_once_and_a_failing_one_applies_nothing(tmp_path, monkeypatch):
    path = tmp_path / "reglab.db"
    with Store(path) as store:
        store.save(store.open_study("s", SPEC), [record()])
    added = MIGRATIONS + [("0002_test_table", ("CREATE TABLE test_table (x)", "INSERT INTO test_table VALUES (1)"))]
    monkeypatch.setattr(store_module, "MIGRATIONS", added)
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", len(added))
    for _ in range(2):
        with Store(path) as store:
            assert len(store.results(store.study("s")["id"])) == 1   # data kept across the upgrade
    con = raw(path)
    assert con.execute("SELECT count(*) FROM test_table").fetchone()[0] == 1
    assert con.execute("PRAGMA user_version").fetchone()[0] == len(added)
    con.close()

    broken = added + [("0003_broken", ("CREATE TABLE half_done (x)", "THIS IS NOT SQL"))]
    monkeypatch.setattr(store_module, "MIGRATIONS", broken)
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", len(broken))
    with pytest.raises(StoreError, match="syntax error"):
        Store(path)
    con = raw(path)
    tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "half_done" not in tables
    assert "0003_broken" not in {row[0] for row in con.execute("SELECT name FROM migrations")}
    assert con.execute("PRAGMA user_version").fetchone()[0] == len(added)
    con.close()


def test_wal_mode_and_busy_timeout(tmp_path):
    path = tmp_path / "reglab.db"
    with Store(path) as store:
        assert store._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    con = raw(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"   # persistent, seen by a fresh connection
    con.close()


def test_a_file_that_is_not_sqlite_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "notes.db"
    content = b"these are my notes, not a database\n" * 50
    path.write_bytes(content)
    with pytest.raises(StoreError, match=r"notes\.db is not a reglab database \(not SQLite\)"):
        Store(path)
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]


def test_another_applications_sqlite_database_is_refused(tmp_path):
    path = tmp_path / "other.db"
    con = raw(path)
    con.execute("CREATE TABLE customers (name TEXT)")
    con.close()
    with pytest.raises(StoreError, match="is not a reglab database .*customers"):
        Store(path)


@pytest.mark.parametrize("how", ["user_version", "migration_name"])
def test_a_database_from_a_newer_reglab_is_refused_unchanged(tmp_path, how):
    path = tmp_path / "reglab.db"
    with Store(path) as store:
        store.open_study("s", SPEC)
    con = raw(path)
    if how == "user_version":
        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    else:
        con.execute("INSERT INTO migrations VALUES ('9999_from_the_future', '2030-01-01')")
    con.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match=r"reglab\.db was written by a newer reglab.*upgrade reglab"):
        Store(path)
    assert path.read_bytes() == before


def test_unusable_paths_get_one_clear_error(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        Store(tmp_path / "no" / "such" / "dir" / "reglab.db")
    with pytest.raises(StoreError, match="is a directory"):
        Store(tmp_path)
    store = Store(tmp_path / "reglab.db")
    store.close()
    store.close()   # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.studies()


# -- studies and resume ----------------------------------------------------------------------------

def test_same_spec_resumes_the_same_study_in_any_key_order(tmp_path):
    path = tmp_path / "reglab.db"
    with Store(path) as store:
        sid = store.open_study("moons", SPEC)
        other = store.open_study("circles", {"epochs": 10})
        assert other != sid
    reordered = {"variants": {"l2": {"lam": [1e-3, 1e-2]}, "none": {}}, "epochs": 4000, "name": "moons"}
    with Store(path) as store:
        assert store.open_study("moons", reordered) == sid


def test_changed_spec_under_the_same_name_is_refused(tmp_path):
    path = tmp_path / "reglab.db"
    with Store(path) as store:
        sid = store.open_study("moons", SPEC)
        store.save(sid, [record()])
        changed = {**SPEC, "epochs": 100}
        with pytest.raises(StoreError) as info:
            store.open_study("moons", changed)
        before = SPEC.get("epochs", None)
        assert str(info.value) == ("study 'moons' already exists in reglab.db with a different definition "
                                   f"(epochs: stored {'nothing' if before is None else repr(before)}, now 100); "
                                   "rename the study (name = \"moons-2\") or use another --db")
        assert store.study("moons")["spec"] == SPEC          # the stored study is untouched
        assert len(store.studies()) == 1
        assert store.open_study("moons-2", changed) != sid   # the suggested fix works


def test_studies_and_study_describe_what_is_stored(tmp_path):
    with Store(tmp_path / "reglab.db") as store:
        a = store.open_study("a", {"x": 1})
        b = store.open_study("b", {"x": 2})
        store.save(a, [record(seed=s) for s in range(3)])
        listed = store.studies()
        assert [(s["name"], s["id"], s["n_results"]) for s in listed] == [("a", a, 3), ("b", b, 0)]
        assert all(len(s["spec_hash"]) == 64 and s["created"].endswith("+00:00") for s in listed)
        assert listed[0]["spec_hash"] != listed[1]["spec_hash"]
        assert store.study("b") == {**listed[1], "spec": {"x": 2}}
        assert store.study("missing") is None


def test_bad_study_arguments(tmp_path):
    with Store(tmp_path / "reglab.db") as store:
        with pytest.raises(TypeError, match="'name'"):
            store.open_study(3, {})
        with pytest.raises(ValueError, match="'name'"):
            store.open_study("  ", {})
        with pytest.raises(TypeError, match="'spec'"):
            store.open_study("s", [1, 2])
        with pytest.raises(TypeError, match="spec of study 's' cannot be stored as JSON"):
            store.open_study("s", {"model": object()})
        assert store.studies() == []


def test_progress_counts_configurations_seeds_and_diverged_members(tmp_path):
    with Store(tmp_path / "reglab.db") as store:
        sid, other = store.open_study("s", SPEC), store.open_study("other", {})
        assert store.progress(sid) == {"configs": [], "seeds": {}}
        store.save(sid, [record("none", 0, params={}), record("l2/lam=0.01", 0, params={"lam": 0.01}),
                         record("none", 1, params={}, diverged=True)])
        store.save(sid, [record("l2/lam=0.01", 2, params={"lam": 0.01}, diverged=True), record("none", 2, params={})])
        store.save(other, [record("none", s) for s in range(5)])
        assert store.progress(sid) == {
            "configs": [{"config_key": "none", "variant": "none", "params": {}, "finished": 3, "diverged": 1},
                        {"config_key": "l2/lam=0.01", "variant": "l2", "params": {"lam": 0.01}, "finished": 2,
                         "diverged": 1}],
            "seeds": {0: 2, 1: 1, 2: 2}}
        assert store.progress(sid, seeds=[2, 7]) == {   # seed 2 of l2 was saved before seed 2 of none
            "configs": [{"config_key": "l2/lam=0.01", "variant": "l2", "params": {"lam": 0.01}, "finished": 1,
                         "diverged": 1},
                        {"config_key": "none", "variant": "none", "params": {}, "finished": 1, "diverged": 0}],
            "seeds": {2: 2}}
        assert store.progress(sid, seeds=[]) == {"configs": [], "seeds": {}}
        assert not store._conn.in_transaction   # the read snapshot is closed


def test_progress_reads_indexes_only(tmp_path):
    """Status on a big store must not touch the records: every aggregate is answered from an index."""
    with Store(tmp_path / "reglab.db") as store:
        sid = store.open_study("s", SPEC)
        plans = []
        for where, args in (("study_id = ?", (sid,)),
                            ("study_id = ? AND seed IN (SELECT value FROM json_each(?))", (sid, "[1]"))):
            for query in (f"SELECT config_key, count(*), min(id) FROM results WHERE {where} GROUP BY config_key",
                          f"SELECT seed, count(*) FROM results WHERE {where} GROUP BY seed"):
                plans.append(" ".join(row[3] for row in store._conn.execute("EXPLAIN QUERY PLAN " + query, args)))
            query = f"SELECT config_key, count(*) FROM results WHERE {where} AND diverged = 1 GROUP BY config_key"
            plans.append(" ".join(row[3] for row in store._conn.execute("EXPLAIN QUERY PLAN " + query, args)))
    for plan in plans:
        assert "USING COVERING INDEX" in plan or "USING INDEX results_diverged" in plan, plan
        assert "SCAN results" not in plan, plan


def test_an_older_database_gains_the_progress_indexes_and_keeps_its_results(tmp_path, monkeypatch):
    path = tmp_path / "reglab.db"
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS[:2])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", 2)
    with Store(path) as store:
        sid = store.open_study("s", SPEC)
    con = raw(path)   # rows as that schema's reglab wrote them (today's save writes a split column too)
    con.executemany("INSERT INTO results (study_id, config_key, seed, variant, params, metrics, epochs_run, diverged, "
                    "history, extra, saved) VALUES (?, 'none', ?, 'none', '{}', '{}', 3, ?, '{}', '{}', 'then')",
                    [(sid, s, int(s == 1)) for s in range(3)])
    con.close()
    monkeypatch.undo()
    with Store(path) as store:
        assert store.progress(sid)["configs"] == [{"config_key": "none", "variant": "none", "params": {},
                                                   "finished": 3, "diverged": 1}]
    con = raw(path)
    indexes = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"results_seeds", "results_diverged"} <= indexes
    applied = [row[0] for row in con.execute("SELECT name FROM migrations ORDER BY rowid")]
    assert applied == [name for name, _ in MIGRATIONS] and "0003_progress_indexes" in applied
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == len(MIGRATIONS)
    con.close()


# -- saving ------------------------------------------------------------------------------------------

def test_save_is_idempotent_and_done_keys_lists_finished_tasks(tmp_path):
    with Store(tmp_path / "reglab.db") as store:
        sid = store.open_study("s", SPEC)
        batch = [record("none", 0), record("none", 1), record("l2/lam=0.001", 0)]
        assert store.save(sid, batch) == 3
        assert store.save(sid, batch) == 0
        changed = record("none", 1, metrics={"test_accuracy": 0.0})
        assert store.save(sid, [changed, record("none", 2)]) == 1   # the first save of a task wins
        assert store.done_keys(sid) == {("none", 0), ("none", 1), ("l2/lam=0.001", 0), ("none", 2)}
        results = store.results(sid)
        assert [(r["config_key"], r["seed"]) for r in results] == [("none", 0), ("none", 1), ("l2/lam=0.001", 0),
                                                                  ("none", 2)]
        assert results[1]["metrics"]["test_accuracy"] == 0.943
        assert store.save(sid, []) == 0
        other = store.open_study("other", {})
        assert store.done_keys(other) == set() and store.results(other) == []
        assert store.save(other, batch) == 3   # the key includes the study


def test_a_bad_record_in_a_batch_saves_nothing_of_it(tmp_path):
    path = tmp_path / "reglab.db"
    with Store(path) as store, Store(path) as neighbour:
        sid = store.open_study("s", SPEC)
        store.save(sid, [record("none", 0)])
        batch = [record("none", 1), record("none", 2), record("none", 3, metrics={"x": object()}),
                 record("none", 4)]
        with pytest.raises(TypeError, match=r"metrics of record 2 \('none', seed 3\) cannot be stored as JSON"):
            store.save(sid, batch)
        assert store.done_keys(sid) == {("none", 0)}
        assert not store._conn.in_transaction
        assert neighbour.save(sid, [record("none", 9)]) == 1   # the write lock was released
        assert store.save(sid, batch[:2]) == 2


@pytest.mark.parametrize("change, error, match", [
    ({"seed": "0"}, TypeError, "seed and epochs_run"),
    ({"epochs_run": 1.5}, TypeError, "seed and epochs_run"),
    ({"config_key": 7}, TypeError, "config_key"),
    ({"metrics": [0.9]}, TypeError, "metrics .* must be a dict"),
    ({"extra": None}, TypeError, "extra .* must be a dict"),
    ({"test_acc": 0.9}, ValueError, r"unknown \['test_acc'\]"),
])
def test_malformed_records_are_rejected_with_their_index(tmp_path, change, error, match):
    with Store(tmp_path / "reglab.db") as store:
        sid = store.open_study("s", SPEC)
        with pytest.raises(error, match=match):
            store.save(sid, [record(seed=0), {**record(seed=1), **change}])
        assert store.results(sid) == []


def test_missing_keys_and_unknown_study(tmp_path):
    with Store(tmp_path / "reglab.db") as store:
        sid = store.open_study("s", SPEC)
        bad = record()
        del bad["history"]
        with pytest.raises(ValueError, match=r"record 0 must have the keys.*missing \['history'\]"):
            store.save(sid, [bad])
        with pytest.raises(StoreError, match="no study with id 99"):
            store.save(99, [record()])
        minimal = record()
        del minimal["extra"]
        store.save(sid, [minimal])
        assert store.results(sid)[0]["extra"] == {}


# -- round trips -------------------------------------------------------------------------------------

def same(a, b, ordered=True):
    """Equality that sees NaN == NaN, tells -0.0 from 0.0, and checks types (and dict order if ``ordered``)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, dict):
        keys_match = list(a) == list(b) if ordered else set(a) == set(b)
        return keys_match and all(same(a[k], b[k], ordered) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y, ordered) for x, y in zip(a, b))
    return a == b


floats = st.floats(allow_nan=True, allow_infinity=True)
texts = st.text(max_size=12) | st.sampled_from(["'", '"', "\\", "'); DROP TABLE results; --", "λ=1e-3 ✓", "\x00"])
int64 = st.integers(-(2 ** 63), 2 ** 63 - 1)
scalars = floats | int64 | texts | st.booleans() | st.none()
records = st.fixed_dictionaries({
    "variant": texts, "config_key": texts, "seed": int64,
    "params": st.dictionaries(texts, scalars | st.lists(scalars, max_size=3), max_size=5),
    "metrics": st.dictionaries(texts, floats, max_size=6),
    "epochs_run": st.integers(0, 10 ** 6), "diverged": st.booleans(),
    "history": st.dictionaries(texts, st.lists(floats, max_size=8), max_size=4),
    "extra": st.dictionaries(texts, floats | st.dictionaries(texts, floats, max_size=3), max_size=3),
})


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    with Store(tmp_path_factory.mktemp("roundtrip") / "reglab.db") as store:
        yield store


names = count()


@settings(max_examples=100, deadline=None)
@given(batch=st.lists(records, max_size=4), spec=st.dictionaries(texts, scalars, max_size=4))
def test_values_round_trip(shared_store, batch, spec):
    name = f"study {next(names)} '\"λ"
    batch = [{**r, "config_key": f"{i}{r['config_key']}"} for i, r in enumerate(batch)]   # distinct tasks
    sid = shared_store.open_study(name, spec)
    assert shared_store.save(sid, batch) == len(batch)
    got = shared_store.results(sid)
    assert len(got) == len(batch)
    for saved, original in zip(got, batch):
        assert set(saved) == set(original)
        assert same({key: saved[key] for key in original}, original), (saved, original)
    assert shared_store.done_keys(sid) == {(r["config_key"], r["seed"]) for r in batch}
    assert same(shared_store.study(name)["spec"], spec, ordered=False)   # canonical JSON sorts the keys
    assert shared_store.open_study(name, spec) == sid


def test_nan_and_inf_survive_and_numpy_values_become_plain(tmp_path):
    with Store(tmp_path / "reglab.db") as store:
        sid = store.open_study("s", SPEC)
        store.save(sid, [record(metrics={"test_loss": float("nan"), "train_loss": float("inf"), "gap": -math.inf},
                                history={"loss": np.array([0.5, np.nan], dtype=np.float32)},
                                extra={"sparsity": np.float32(0.25), "units": np.int64(3)}, diverged=np.bool_(True))])
        (saved,) = store.results(sid)
    assert math.isnan(saved["metrics"]["test_loss"])
    assert saved["metrics"]["train_loss"] == math.inf and saved["metrics"]["gap"] == -math.inf
    assert saved["history"]["loss"][0] == 0.5 and math.isnan(saved["history"]["loss"][1])
    assert saved["extra"] == {"sparsity": 0.25, "units": 3} and saved["diverged"] is True
    assert type(saved["extra"]["units"]) is int


# -- concurrency and crashes ---------------------------------------------------------------------------

def test_two_stores_writing_at_once_lose_and_duplicate_nothing(tmp_path):
    path = tmp_path / "reglab.db"   # created, migrated and the study registered by both at once
    start = threading.Barrier(2)
    inserted, ids, errors = [], [], []

    def worker(seeds):
        try:
            start.wait()
            with Store(path) as store:
                sid = store.open_study("shared", SPEC)
                ids.append(sid)
                for i in range(0, len(seeds), 5):
                    done = store.done_keys(sid)
                    inserted.append(store.save(sid, [record("k", s) for s in seeds[i:i + 5]]))
                    assert done <= store.done_keys(sid)
        except BaseException as e:   # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(list(range(0, 100)),)),
               threading.Thread(target=worker, args=(list(range(50, 150)),))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(ids)) == 1
    assert sum(inserted) == 150
    with Store(path) as store:
        seeds = [r["seed"] for r in store.results(ids[0])]
    assert sorted(seeds) == list(range(150))


def test_one_store_shared_by_threads(tmp_path):
    with Store(tmp_path / "reglab.db") as store:
        sid = store.open_study("s", SPEC)
        threads = [threading.Thread(target=lambda k=k: [store.save(sid, [record(f"t{k}", s)]) for s in range(20)])
                   for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(store.done_keys(sid)) == 80


CHILD = r"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("store_under_test", sys.argv[1])
store = importlib.util.module_from_spec(spec)
spec.loader.exec_module(store)
s = store.Store(sys.argv[2])
sid = s.open_study("killed", {"what": "kill -9 test"})
batch = max(len(s.done_keys(sid)) // 5 - 1, 0)   # re-save the last batch first: must change nothing
print("ready", flush=True)
while True:
    s.save(sid, [{"variant": "v", "config_key": f"batch{batch}/record{i}", "params": {"batch": batch, "i": i},
                  "seed": 0, "metrics": {"test_loss": float("nan"), "test_accuracy": 0.5}, "epochs_run": 3,
                  "diverged": False, "history": {"loss": [0.1 * j for j in range(300)]}} for i in range(5)])
    batch += 1
"""


def batches(path):
    """{batch number: rows}, after checking that the file is intact and holds no duplicate key."""
    con = raw(path)
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        keys = con.execute("SELECT study_id, config_key, seed FROM results").fetchall()
        assert len(keys) == len(set(keys))
        counts = {}
        for (key,) in con.execute("SELECT config_key FROM results"):
            n = int(key.split("/")[0].removeprefix("batch"))
            counts[n] = counts.get(n, 0) + 1
        return counts
    finally:
        con.close()


def test_kill_9_at_random_moments_loses_only_the_batch_in_flight(tmp_path):
    path = tmp_path / "reglab.db"
    rng = random.Random()
    seen = []
    deadline = time.monotonic() + 8
    for trial in range(5):
        if trial >= 3 and time.monotonic() > deadline:
            break
        child = subprocess.Popen([sys.executable, "-c", CHILD, store_module.__file__, str(path)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline() == "ready\n", child.stderr.read()
            pause = rng.uniform(0.05, 0.4)
            time.sleep(pause)
            os.kill(child.pid, signal.SIGKILL)
            assert child.wait(timeout=10) == -signal.SIGKILL
        finally:
            if child.poll() is None:   # pragma: no cover - only if an assertion above failed
                child.kill()
                child.wait()
            child.stdout.close()
            child.stderr.close()
        counts = batches(path)
        assert set(counts.values()) <= {5}, f"a partial batch after a kill at {pause:.3f} s: {sorted(counts.items())}"
        assert sorted(counts) == list(range(len(counts))), f"a batch was lost or written out of order: {sorted(counts)}"
        seen.append(len(counts))
    assert seen == sorted(seen) and seen[-1] > len(seen), f"the child wrote too little to test anything: {seen}"
    with Store(path) as store:
        sid = store.open_study("killed", {"what": "kill -9 test"})
        results = store.results(sid)
        assert len(store.done_keys(sid)) == len(results) == 5 * seen[-1]
        assert all(math.isnan(r["metrics"]["test_loss"]) and len(r["history"]["loss"]) == 300 for r in results)
