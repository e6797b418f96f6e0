"""The SQLite record of a study: what has run, with its metrics and learning curves.

One file (``reglab.db`` by default) holds any number of studies. The rules, after sqlite-utils:

- WAL journal, switched on outside any transaction, and a 30 s busy timeout, so that readers never
  block the writer and two writers wait for each other instead of failing.
- Every write is one ``BEGIN IMMEDIATE`` transaction: a batch of results is saved whole or not at
  all, so ``kill -9`` at any moment loses at most the batch in flight and never corrupts the file.
  ``synchronous = NORMAL``: a commit survives the process being killed; a power cut may drop the
  last few commits (never corrupting the file), and a resumed study simply re-runs those tasks.
- The schema is a list of named migrations (``MIGRATIONS``), each applied in its own transaction
  and recorded in the ``migrations`` table; ``PRAGMA user_version`` holds the schema version.
  A database from a newer reglab is refused rather than guessed at.
- One stable key per task, ``UNIQUE (study_id, config_key, split, seed)``. Saving a finished task
  again is a no-op (``INSERT OR IGNORE``, the first save wins), so a resumed study never duplicates a
  row. ``split`` is the train/test split of a study with several (``splits = K``); a study of one
  split, and every row saved before splits existed, is split 0 (migration ``0004_results_split``).
  A record carries ``"split"`` only when it is not 0, so records of one-split studies are as before.

Resuming: ``open_study(name, spec)`` stores the study spec as canonical JSON with its sha256. The
same name with the same spec resumes the study (same id). The same name with a *different* spec is
refused with a ``StoreError`` that says to rename the study or pick another database -- we refuse
rather than save a silent new version, because results of two different study files under one
name would be pooled by every later report.

Dicts (params, metrics, histories, extra) are stored as JSON text. NaN and +-inf are written as the
JSON5 tokens ``NaN``, ``Infinity`` and ``-Infinity`` (Python's ``json`` and SQLite >= 3.42 read
them), so a diverged run's ``nan`` loss comes back as ``nan``. As in any JSON, tuples come back as
lists and dict keys as strings; NumPy arrays and scalars (anything with ``.tolist()``) are stored as
plain lists and numbers.

>>> with Store(":memory:") as store:
...     study = store.open_study("moons", {"epochs": 4000})
...     store.save(study, [{"variant": "l2", "config_key": "l2/lam=0.001", "params": {"lam": 1e-3},
...                         "seed": 0, "metrics": {"test_accuracy": 0.943, "test_loss": float("nan")},
...                         "epochs_run": 4000, "diverged": False, "history": {"loss": [0.7, 0.1]}}])
...     store.done_keys(study)
...     store.results(study)[0]["metrics"]
1
{('l2/lam=0.001', 0)}
{'test_accuracy': 0.943, 'test_loss': nan}
"""

from __future__ import annotations

import hashlib
import json
import numbers
import operator
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

try:   # POSIX record locks: released by the OS when the holder exits, even on kill -9
    import fcntl
except ImportError:   # pragma: no cover - Windows: no run lock, concurrent runs are not detected
    fcntl = None

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Store", "StoreError", "StudyBusy", "holder"]


class StoreError(ValueError):
    """A problem with the database a user pointed at, in one line that suggests the fix."""


class StudyBusy(StoreError):
    """The study is being run by another process (see :meth:`Store.lease`)."""


def holder(run: Mapping | None) -> str:
    """How a run from :meth:`Store.running` is named in messages: ' (pid 123 on HOST, started T)',
    or '' when nothing is known about it."""
    if not run or not run.get("pid"):
        return ""
    return f" (pid {run['pid']} on {run['host']}, started {run['started']})"


class _LockFile:
    """This process's one descriptor on ``<db>.lock``, shared by every lease on that database.

    POSIX record locks belong to the process and are all dropped when *any* descriptor of the file
    is closed, so the file stays open while a lease is held and is only probed through this one fd.
    """

    _open: dict = {}
    _guard = threading.Lock()

    def __init__(self, path: str):
        self.path, self.fd, self.held = path, os.open(path, os.O_RDWR | os.O_CREAT, 0o644), set()

    @classmethod
    def get(cls, db: Path) -> _LockFile:
        path = os.path.realpath(str(db)) + ".lock"
        with cls._guard:
            if path not in cls._open:
                cls._open[path] = cls(path)
            return cls._open[path]

    def _lock(self, study_id: int) -> bool:
        """Take the study's byte of the file if no process holds it (call with ``_guard`` held)."""
        if study_id in self.held:
            return False
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, study_id)
        except OSError:
            return False
        return True

    def acquire(self, study_id: int) -> bool:
        with self._guard:
            if not self._lock(study_id):
                return False
            self.held.add(study_id)
            return True

    def release(self, study_id: int) -> None:
        with self._guard:
            if study_id in self.held:
                fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, study_id)
                self.held.discard(study_id)

    def busy(self, study_id: int) -> bool:
        """Whether some process (this one included) holds the study's lock."""
        with self._guard:
            if not self._lock(study_id):
                return True
            fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, study_id)
            return False


# Append only: never edit or reorder a migration that has shipped. Each is (name, statements).
MIGRATIONS: list[tuple[str, tuple[str, ...]]] = [
    ("0001_studies_and_results", (
        """CREATE TABLE studies (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            spec TEXT NOT NULL,          -- canonical JSON of the study spec
            spec_hash TEXT NOT NULL,     -- sha256 of spec
            created TEXT NOT NULL        -- ISO 8601, UTC
        )""",
        """CREATE TABLE results (
            id INTEGER PRIMARY KEY,      -- insertion order
            study_id INTEGER NOT NULL REFERENCES studies (id),
            config_key TEXT NOT NULL,    -- stable key of the configuration, e.g. 'l2/lam=0.001'
            seed INTEGER NOT NULL,
            variant TEXT NOT NULL,
            params TEXT NOT NULL,        -- JSON
            metrics TEXT NOT NULL,       -- JSON, NaN/Infinity allowed
            epochs_run INTEGER NOT NULL,
            diverged INTEGER NOT NULL,   -- 0 or 1
            history TEXT NOT NULL,       -- JSON: name -> per-epoch list
            extra TEXT NOT NULL,         -- JSON: weight norms, sparsity, ...
            saved TEXT NOT NULL,         -- ISO 8601, UTC
            UNIQUE (study_id, config_key, seed)
        )""",
    )),
    ("0002_runs", (
        """CREATE TABLE runs (
            study_id INTEGER PRIMARY KEY REFERENCES studies (id),
            pid INTEGER NOT NULL,        -- the process running the study
            host TEXT NOT NULL,
            started TEXT NOT NULL,       -- ISO 8601, UTC
            planned TEXT NOT NULL        -- JSON: what the run will train, e.g. {"seeds": [...], "members": 60}
        )""",
    )),
    # For Store.progress (`reglab status`): the seeds of a study, and its diverged members, are read
    # from these small indexes, never from the records (whose histories may be megabytes each).
    ("0003_progress_indexes", (
        "CREATE INDEX results_seeds ON results (study_id, seed)",
        "CREATE INDEX results_diverged ON results (study_id, config_key, seed) WHERE diverged = 1",
    )),
    # Studies over several train/test splits (a study's `splits = K`): a result is one (configuration,
    # split, seed). SQLite cannot change a table's UNIQUE constraint, so the table is rebuilt (ids,
    # hence the saving order, kept) with every existing row as split 0, and the indexes made again.
    ("0004_results_split", (
        """CREATE TABLE results_0004 (
            id INTEGER PRIMARY KEY,      -- insertion order
            study_id INTEGER NOT NULL REFERENCES studies (id),
            config_key TEXT NOT NULL,    -- stable key of the configuration, e.g. 'l2/lam=0.001'
            split INTEGER NOT NULL DEFAULT 0,   -- the train/test split (0 in a study of one split)
            seed INTEGER NOT NULL,
            variant TEXT NOT NULL,
            params TEXT NOT NULL,        -- JSON
            metrics TEXT NOT NULL,       -- JSON, NaN/Infinity allowed
            epochs_run INTEGER NOT NULL,
            diverged INTEGER NOT NULL,   -- 0 or 1
            history TEXT NOT NULL,       -- JSON: name -> per-epoch list
            extra TEXT NOT NULL,         -- JSON: weight norms, sparsity, ...
            saved TEXT NOT NULL,         -- ISO 8601, UTC
            UNIQUE (study_id, config_key, split, seed)
        )""",
        "INSERT INTO results_0004 (id, study_id, config_key, split, seed, variant, params, metrics, epochs_run, "
        "diverged, history, extra, saved) SELECT id, study_id, config_key, 0, seed, variant, params, metrics, "
        "epochs_run, diverged, history, extra, saved FROM results ORDER BY id",
        "DROP TABLE results",
        "ALTER TABLE results_0004 RENAME TO results",
        "CREATE INDEX results_seeds ON results (study_id, seed)",
        "CREATE INDEX results_diverged ON results (study_id, config_key, split, seed) WHERE diverged = 1",
    )),
    # `reglab status` of a running study: what its run is training now (JSON written every few seconds
    # by the running process, see Store.report_training) and when it last wrote it (ISO 8601, UTC).
    ("0005_run_training", (
        "ALTER TABLE runs ADD COLUMN training TEXT",
        "ALTER TABLE runs ADD COLUMN updated TEXT",
    )),
]
SCHEMA_VERSION = len(MIGRATIONS)

_RECORD_KEYS = ("variant", "config_key", "params", "seed", "metrics", "epochs_run", "diverged", "history")
_OPTIONAL_KEYS = ("extra", "split")
_SQLITE_HEADER = b"SQLite format 3\x00"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _plain(obj):
    tolist = getattr(obj, "tolist", None)   # NumPy arrays and scalars, torch tensors
    if callable(tolist):
        return tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _dumps(value, what: str, canonical: bool = False) -> str:
    try:
        if canonical:
            return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_plain)
        return json.dumps(value, default=_plain)
    except (TypeError, ValueError) as e:   # ValueError: circular reference
        raise TypeError(f"{what} cannot be stored as JSON: {e}") from e


class Store:
    """A reglab database: studies, and one row per finished (configuration, seed) task.

    ``Store(path)`` opens the file, creating it and applying pending migrations if needed. Use it as
    a context manager or call ``close()``. One ``Store`` may be shared between threads; several
    ``Store`` objects (or processes) may write to one file at once.

    Raises ``StoreError`` when the path cannot be opened or written, is not a SQLite file, is
    another application's SQLite database, or was written by a newer reglab.
    """

    def __init__(self, path: str | Path = "reglab.db"):
        self.path = path if str(path) == ":memory:" else Path(path)
        self._lock = threading.Lock()
        self._conn = None
        self._check_file()
        try:
            # isolation_level=None: no implicit transactions; we issue BEGIN IMMEDIATE ourselves.
            self._conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None,
                                         check_same_thread=False)
            self._conn.execute("PRAGMA busy_timeout = 30000")
            self._check_schema()
            self._wal()
            self._conn.execute("PRAGMA synchronous = NORMAL")  # WAL: commits survive kill -9; power loss may drop the last few
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.DatabaseError as e:
            self.close()
            if "not a database" in str(e):
                raise StoreError(f"{self.path} is not a reglab database (not SQLite)") from None
            raise StoreError(f"cannot use {self.path} as a reglab database: {e}; restore it from a backup or "
                             f"use another --db") from None
        except BaseException:
            self.close()
            raise

    def _wal(self) -> None:
        """Switch on WAL (persistent; outside any transaction). SQLite answers "database is locked" at
        once, without waiting for the busy timeout, when another process is switching it or creating
        the schema at that moment (two `reglab run` on a new database): wait and try again."""
        deadline = time.monotonic() + 30.0
        while True:
            try:
                self._conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def _check_file(self) -> None:
        if self.path == ":memory:":
            return
        if self.path.is_dir():
            raise StoreError(f"{self.path} is a directory; give a database file, "
                             f"e.g. --db {self.path / 'reglab.db'}")
        if not self.path.parent.is_dir():
            raise StoreError(f"cannot create {self.path}: directory {self.path.parent} does not exist")
        if self.path.is_file() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as f:
                if f.read(len(_SQLITE_HEADER)) != _SQLITE_HEADER:
                    raise StoreError(f"{self.path} is not a reglab database (not SQLite)")

    def _check_schema(self) -> None:
        """Refuse, before writing anything, a database that is not ours or is newer than this code."""
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in self._conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
        if tables and "migrations" not in tables:
            raise StoreError(f"{self.path} is not a reglab database (a SQLite file with tables "
                             f"{', '.join(sorted(tables))}); use another --db")
        known = {name for name, _ in MIGRATIONS}
        unknown = set()
        if "migrations" in tables:
            unknown = {row[0] for row in self._conn.execute("SELECT name FROM migrations")} - known
        if version > SCHEMA_VERSION or unknown:
            raise StoreError(f"{self.path} was written by a newer reglab (schema version {version}, this "
                             f"reglab knows up to {SCHEMA_VERSION}); upgrade reglab")

    def _migrate(self) -> None:
        def applied() -> set[str]:
            return {row[0] for row in self._conn.execute("SELECT name FROM migrations")}

        has_table = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'migrations'").fetchone()
        if has_table and applied() >= {name for name, _ in MIGRATIONS}:
            return   # up to date: reopening writes nothing
        for version, (name, statements) in enumerate(MIGRATIONS, start=1):
            with self._transaction():
                self._conn.execute("CREATE TABLE IF NOT EXISTS migrations "
                                   "(name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
                if name in applied():   # re-read inside the lock: another process may have applied it
                    continue
                for statement in statements:
                    self._conn.execute(statement)
                self._conn.execute("INSERT INTO migrations (name, applied_at) VALUES (?, ?)", (name, _now()))
                self._conn.execute(f"PRAGMA user_version = {version}")

    @contextmanager
    def _transaction(self):
        """One write transaction: the write lock is taken at BEGIN, everything is undone on any error."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self._conn.in_transaction:   # SQLite may already have rolled back (e.g. disk full)
                self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    @contextmanager
    def _operation(self, what: str):
        """Serialise threads sharing this Store; turn SQLite failures into one-line StoreErrors."""
        if self._conn is None:
            raise StoreError(f"{self.path} is closed")
        with self._lock:
            try:
                yield
            except sqlite3.Error as e:
                raise StoreError(f"{what} in {self.path} failed: {e}") from e

    # -- studies -------------------------------------------------------------------------------

    def open_study(self, name: str, spec: Mapping) -> int:
        """Register study ``name`` with its ``spec`` and return its id; resume it if it already exists.

        The spec is stored as canonical JSON (sorted keys) with its sha256. An existing study with
        the same hash is resumed (its id is returned); one with a different hash raises StoreError.
        """
        if not isinstance(name, str):
            raise TypeError(f"The 'name' parameter of open_study must be a str. Got {type(name).__name__} instead.")
        if not name.strip():
            raise ValueError("The 'name' parameter of open_study must be a non-empty str. Got '' instead.")
        if not isinstance(spec, Mapping):
            raise TypeError(f"The 'spec' parameter of open_study must be a dict. Got {type(spec).__name__} instead.")
        text = _dumps(dict(spec), f"the spec of study {name!r}", canonical=True)
        digest = hashlib.sha256(text.encode()).hexdigest()
        with self._operation(f"opening study {name!r}"), self._transaction():
            row = self._conn.execute("SELECT id, spec_hash, spec FROM studies WHERE name = ?", (name,)).fetchone()
            if row is None:
                return self._conn.execute("INSERT INTO studies (name, spec, spec_hash, created) VALUES (?, ?, ?, ?)",
                                          (name, text, digest, _now())).lastrowid
        if row[1] != digest:
            db = self.path if self.path == ":memory:" else self.path.name
            where = _first_difference(json.loads(row[2]), json.loads(text))
            raise StoreError(f"study {name!r} already exists in {db} with a different definition"
                             f"{f' ({where})' if where else ''}; rename the study (name = \"{name}-2\") or use another --db")
        return row[0]

    def studies(self) -> list[dict]:
        """All studies, oldest first: ``name``, ``id``, ``created``, ``n_results``, ``spec_hash``."""
        with self._operation("listing studies"):
            rows = self._conn.execute(
                "SELECT s.name, s.id, s.created, (SELECT count(*) FROM results r WHERE r.study_id = s.id), "
                "s.spec_hash FROM studies s ORDER BY s.id").fetchall()
        return [dict(zip(("name", "id", "created", "n_results", "spec_hash"), row)) for row in rows]

    def study(self, name: str) -> dict | None:
        """The entry of ``studies()`` for ``name`` plus its decoded ``spec``, or None if there is none."""
        entry = next((s for s in self.studies() if s["name"] == name), None)
        if entry is not None:
            with self._operation(f"reading study {name!r}"):
                (text,) = self._conn.execute("SELECT spec FROM studies WHERE id = ?", (entry["id"],)).fetchone()
            entry["spec"] = json.loads(text)
        return entry

    # -- runs ----------------------------------------------------------------------------------

    @contextmanager
    def lease(self, study_id: int, planned: Mapping | None = None):
        """Hold study ``study_id`` for one run: a second run of the same study, from this process or
        any other on this machine (or on a shared file system with working locks), gets
        :class:`StudyBusy` naming the holder. The lock is an OS record lock on ``<db>.lock``, so it is
        released when the run ends however it ends -- Ctrl-C, an exception or ``kill -9``.
        ``planned`` (e.g. ``{"seeds": [...], "members": 60}``) is kept for :meth:`running`."""
        if self.path == ":memory:" or fcntl is None:
            yield
            return
        try:
            lock = _LockFile.get(self.path)
        except OSError as e:
            raise StoreError(f"cannot create the lock file {self.path}.lock: {e.strerror}; "
                             f"use a --db in a folder you can write") from None
        if not lock.acquire(study_id):
            who = holder(self.running(study_id))
            raise StudyBusy(f"study {self._name(study_id)!r} is already being run by another reglab{who}; "
                            f"wait for it to finish (`reglab status` shows progress) or stop it, then run again")
        try:
            with self._operation("recording the run"), self._transaction():
                self._conn.execute("INSERT OR REPLACE INTO runs (study_id, pid, host, started, planned) "
                                   "VALUES (?, ?, ?, ?, ?)", (study_id, os.getpid(), socket.gethostname(), _now(),
                                                              _dumps(dict(planned or {}), "the run's plan")))
            yield
        finally:
            try:
                if self._conn is not None:
                    with self._operation("ending the run"), self._transaction():
                        self._conn.execute("DELETE FROM runs WHERE study_id = ? AND pid = ?", (study_id, os.getpid()))
            finally:
                lock.release(study_id)

    def plan_run(self, study_id: int, planned: Mapping) -> None:
        """Update what the current run of ``study_id`` will train (shown by :meth:`running`)."""
        with self._operation("recording the run"), self._transaction():
            self._conn.execute("UPDATE runs SET planned = ? WHERE study_id = ? AND pid = ?",
                               (_dumps(dict(planned), "the run's plan"), study_id, os.getpid()))

    def report_training(self, study_id: int, training: Mapping) -> None:
        """Record what the current run of ``study_id`` is training now (``training``, e.g. its
        populations' members and epochs) with the time; :meth:`running` gives it back. One small
        write, meant every few seconds: `reglab status` tells a live run from a stuck one by it."""
        with self._operation("recording the run's progress"), self._transaction():
            self._conn.execute("UPDATE runs SET training = ?, updated = ? WHERE study_id = ? AND pid = ?",
                               (_dumps(dict(training), "the run's progress"), _now(), study_id, os.getpid()))

    def running(self, study_id: int) -> dict | None:
        """The run holding ``study_id`` -- ``pid``, ``host``, ``started``, ``planned``, and ``training``
        and ``updated`` (what it last reported, see :meth:`report_training`; None before) -- or None.

        A row left by a run that was killed is ignored (:meth:`last_run` gives it): the study's
        lock, not the row, says whether a run is alive."""
        run = self.last_run(study_id)
        return run if run is not None and run.pop("alive") else None

    def last_run(self, study_id: int) -> dict | None:
        """The latest run of ``study_id`` that has not ended cleanly: the one running now, or one that
        was killed (``kill -9``, a crash, a power cut) -- the keys of :meth:`running` and ``alive``
        (whether it holds the study's lock) -- or None."""
        if self.path == ":memory:" or fcntl is None:
            return None
        lock_path = os.path.realpath(str(self.path)) + ".lock"
        if lock_path not in _LockFile._open and not os.path.exists(lock_path):
            return None   # no run ever took a lease here: probe without creating the file
        try:
            busy = _LockFile.get(self.path).busy(study_id)
        except OSError:
            busy = False
        with self._operation("reading the run"):
            row = self._conn.execute("SELECT pid, host, started, planned, training, updated FROM runs "
                                     "WHERE study_id = ?", (study_id,)).fetchone()
        if row is None:
            return {"pid": None, "host": None, "started": None, "planned": {}, "training": None, "updated": None,
                    "alive": True} if busy else None
        return {"pid": row[0], "host": row[1], "started": row[2], "planned": json.loads(row[3]),
                "training": json.loads(row[4]) if row[4] is not None else None, "updated": row[5], "alive": busy}

    def _name(self, study_id: int) -> str:
        with self._operation("reading the study"):
            row = self._conn.execute("SELECT name FROM studies WHERE id = ?", (study_id,)).fetchone()
        return row[0] if row else str(study_id)

    # -- results -------------------------------------------------------------------------------

    def done_keys(self, study_id: int, *, splits: bool = False) -> set[tuple]:
        """The finished (saved) tasks of the study: ``(config_key, seed)`` pairs of split 0 -- every
        task of a study of one split -- or, with ``splits=True``, ``(config_key, split, seed)`` for
        every split."""
        with self._operation("reading finished tasks"):
            if splits:
                rows = self._conn.execute("SELECT config_key, split, seed FROM results WHERE study_id = ?", (study_id,))
                return {(key, split, seed) for key, split, seed in rows}
            rows = self._conn.execute("SELECT config_key, seed FROM results WHERE study_id = ? AND split = 0",
                                      (study_id,))
            return {(key, seed) for key, seed in rows}

    def progress(self, study_id: int, seeds=None) -> dict:
        """How far the study has run, counted by SQLite on its indexes: no record is decoded, so
        this takes milliseconds where :meth:`results` takes seconds (100,000 records).

        - ``configs``: one dict per configuration key saved, in the order they were first saved:
          ``config_key``, ``variant``, ``params`` (of its first saved record), ``finished`` (its
          saved (configuration, seed) pairs) and ``diverged`` (how many of those diverged);
        - ``seeds``: ``{seed: saved pairs}`` for every seed with a saved pair.

        With ``seeds`` (ints), only the pairs of those seeds are counted (and ordered). The counts
        are one snapshot of the database, even while a run is saving.
        """
        where, args = "study_id = ?", [study_id]
        if seeds is not None:
            where += " AND seed IN (SELECT value FROM json_each(?))"
            args.append(json.dumps(sorted({operator.index(s) for s in seeds})))
        with self._operation("reading the study's progress"):
            self._conn.execute("BEGIN")   # one read snapshot (WAL: a writer is not held up)
            try:
                configs = self._conn.execute(
                    f"SELECT config_key, count(*), min(id) FROM results WHERE {where} "
                    f"GROUP BY config_key ORDER BY min(id)", args).fetchall()
                diverged = dict(self._conn.execute(
                    f"SELECT config_key, count(*) FROM results WHERE {where} AND diverged = 1 "
                    f"GROUP BY config_key", args).fetchall())
                per_seed = dict(self._conn.execute(
                    f"SELECT seed, count(*) FROM results WHERE {where} GROUP BY seed ORDER BY seed", args).fetchall())
                first = {row[0]: row[1:] for row in self._conn.execute(
                    "SELECT id, variant, params FROM results WHERE id IN (SELECT value FROM json_each(?))",
                    (json.dumps([first_id for _, _, first_id in configs]),))}
            finally:
                self._conn.execute("COMMIT")
        return {"configs": [{"config_key": key, "variant": first[first_id][0], "params": json.loads(first[first_id][1]),
                             "finished": finished, "diverged": diverged.get(key, 0)}
                            for key, finished, first_id in configs],
                "seeds": per_seed}

    def save(self, study_id: int, records: list[Mapping]) -> int:
        """Save finished tasks, all in one transaction; return how many were new.

        Each record has ``variant`` (str), ``config_key`` (str), ``params`` (dict), ``seed`` (int),
        ``metrics`` (dict), ``epochs_run`` (int), ``diverged`` (bool), ``history`` (dict of lists)
        and optionally ``extra`` (dict) and ``split`` (int >= 0, default 0). A task already saved
        under the same (config_key, split, seed) is left as it is. If any record is malformed
        (TypeError/ValueError) or the write fails (StoreError), nothing of the batch is saved.
        """
        records = list(records)
        if not records:
            return 0
        inserted = 0
        with self._operation("saving results"), self._transaction():
            if self._conn.execute("SELECT 1 FROM studies WHERE id = ?", (study_id,)).fetchone() is None:
                raise StoreError(f"no study with id {study_id} in {self.path}; call open_study first")
            saved = _now()
            for index, record in enumerate(records):
                row = _encode(index, record)
                cursor = self._conn.execute(
                    "INSERT OR IGNORE INTO results (study_id, config_key, seed, variant, params, metrics, "
                    "epochs_run, diverged, history, extra, split, saved) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (study_id, *row, saved))
                inserted += cursor.rowcount
        return inserted

    def results(self, study_id: int) -> list[dict]:
        """The saved records of the study in the order they were saved, dicts decoded; a record of a
        split other than 0 has its ``split``."""
        with self._operation("reading results"):
            rows = self._conn.execute(
                "SELECT variant, config_key, params, seed, metrics, epochs_run, diverged, history, extra, split "
                "FROM results WHERE study_id = ? ORDER BY id", (study_id,)).fetchall()
        return [{"variant": variant, "config_key": key, "params": json.loads(params), "seed": seed,
                 **({"split": split} if split else {}),
                 "metrics": json.loads(metrics), "epochs_run": epochs, "diverged": bool(diverged),
                 "history": json.loads(history), "extra": json.loads(extra)}
                for variant, key, params, seed, metrics, epochs, diverged, history, extra, split in rows]

    # -- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (idempotent). The last connection to close folds the WAL into the file."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"


def _encode(index: int, record: Mapping) -> tuple:
    """A record as the column values (config_key, seed, variant, params, ..., extra, split), checked."""
    if not isinstance(record, Mapping):
        raise TypeError(f"record {index} must be a dict. Got {type(record).__name__} instead.")
    missing = [key for key in _RECORD_KEYS if key not in record]
    unknown = [key for key in record if key not in _RECORD_KEYS + _OPTIONAL_KEYS]
    if missing or unknown:
        raise ValueError(f"record {index} must have the keys {', '.join(_RECORD_KEYS)} (and optionally extra); "
                         f"missing {missing}, unknown {unknown}")
    where = f"record {index} ({record['config_key']!r}, seed {record['seed']!r})"
    for key in ("variant", "config_key"):
        if not isinstance(record[key], str):
            raise TypeError(f"{key} of {where} must be a str. Got {type(record[key]).__name__} instead.")
    extra = record.get("extra", {})
    for key, value in (("params", record["params"]), ("metrics", record["metrics"]),
                       ("history", record["history"]), ("extra", extra)):
        if not isinstance(value, Mapping):
            raise TypeError(f"{key} of {where} must be a dict. Got {type(value).__name__} instead.")
    try:
        seed, epochs_run = operator.index(record["seed"]), operator.index(record["epochs_run"])
    except TypeError as e:
        raise TypeError(f"seed and epochs_run of {where} must be ints: {e}") from None
    split = record.get("split", 0)
    if isinstance(split, bool) or not isinstance(split, numbers.Integral) or split < 0:
        raise TypeError(f"split of {where} must be an int >= 0. Got {split!r} instead.")
    return (record["config_key"], seed, record["variant"],
            _dumps(dict(record["params"]), f"params of {where}"),
            _dumps(dict(record["metrics"]), f"metrics of {where}"),
            epochs_run, int(bool(record["diverged"])),
            _dumps(dict(record["history"]), f"history of {where}"),
            _dumps(dict(extra), f"extra of {where}"), int(split))


def _first_difference(stored, new, path: str = "") -> str:
    """Where two study definitions first differ, e.g. "data.validation: stored 'test', now 0.2"
    (the file changed, or the defaults reglab fills in did: an older reglab stored other ones)."""
    if isinstance(stored, dict) and isinstance(new, dict):
        for key in sorted(set(stored) | set(new), key=str):
            if stored.get(key, _MISSING) != new.get(key, _MISSING):
                return _first_difference(stored.get(key, _MISSING), new.get(key, _MISSING),
                                         f"{path}.{key}" if path else str(key))
        return ""
    show = lambda v: "nothing" if v is _MISSING else repr(v)[:60]  # noqa: E731
    return f"{path or 'the study'}: stored {show(stored)}, now {show(new)}"


_MISSING = object()
