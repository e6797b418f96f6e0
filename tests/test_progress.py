"""Progress and partial results of a running study (issue 15, part 5): plain progress lines when the
output is not a terminal, one bar when it is, the populations in training in `reglab status` (stale
once the run stops reporting; a killed run named), tasks cut by time with the same records, and a
Ctrl-C in the middle of a cut population keeping the pieces that finished."""

from __future__ import annotations

import re
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from reglab.callbacks import Callback
from reglab.cli import main
from reglab.store import Store
from reglab.study import load, progress, runner, sizing, train
from reglab.study.jobs import Job

from report_helpers import none_vs_l2_study

pytestmark = pytest.mark.usefixtures("one_thread")

# 2 variants x 3 seeds: one population of 6 members (the seeds' MLP runs in the fused kernel)
STUDY = none_vs_l2_study("progress", 3)
MEMBERS = 6


def write_study(tmp_path, epochs=30):
    path = tmp_path / "study.toml"
    path.write_text(STUDY.format(epochs=epochs))
    return path


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def stored(db, name="progress"):
    with Store(db) as store:
        return {(r["variant"], r["seed"]): r for r in store.results(store.study(name)["id"])}


class At(Callback):
    """Calls ``action(task)`` at the end of epoch ``epoch`` (only on_epoch_end: the fused kernel still runs)."""

    def __init__(self, epoch, action):
        self.epoch, self.action = epoch, action

    def on_epoch_end(self, trainer, epoch, logs, **kwargs):
        if epoch == self.epoch:
            self.action()


def with_callback(monkeypatch, which, callback):
    """``train.execute`` with ``callback`` added to its ``which``-th call (0: the first)."""
    real, calls = train.execute, []

    def execute(study, dataset, task, progress=None, threads=None, save_models=None, callbacks=()):
        calls.append(task)
        extra = [callback] if len(calls) == which + 1 else []
        return real(study, dataset, task, progress, threads, save_models, list(callbacks) + extra)

    monkeypatch.setattr(train, "execute", execute)
    return calls


# -- output while it runs ------------------------------------------------------------------------


def test_a_run_whose_output_is_not_a_terminal_prints_progress_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(progress, "LINE_SECONDS", 0.05)
    pause = threading.Event()
    # hold the population at epoch 10 long enough for a few lines, whatever the machine's speed
    with_callback(monkeypatch, 0, At(10, lambda: pause.wait(0.5)))
    result = invoke("run", write_study(tmp_path, epochs=40), "--db", tmp_path / "s.db")
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stderr == ""                       # the lines go to stdout, with the rest of the output
    lines = [line for line in result.stdout.splitlines() if line.startswith("reglab: ")]
    assert len(lines) >= 3, result.stdout
    pattern = re.compile(r"reglab: (\d+)/6 members finished, ([\d,]+)/240 member-epochs(, ETA \d+ (s|min))?$")
    done = []
    for line in lines:
        match = pattern.match(line)
        assert match, line
        done.append(int(match[2].replace(",", "")))
    assert done == sorted(done) and 0 < max(done) <= 240
    assert any(d == 6 * 11 for d in done)            # at the pause: 6 members × 11 epochs


def test_a_terminal_gets_one_bar_for_the_run_and_quiet_gets_nothing(monkeypatch):
    class Terminal:
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stderr", Terminal())
    on_terminal = runner._progress(None, print, None, None)
    monkeypatch.undo()
    assert on_terminal.show_bar and not on_terminal.lines
    piped = runner._progress(None, print, None, None)
    assert not piped.show_bar and piped.lines
    quiet = runner._progress(False, print, None, None)
    assert not quiet.show_bar and not quiet.lines

    task = Job(("none", "l2"), (0, 1))
    with progress.RunProgress(bar=True) as run:
        run.plan([task], lambda t: 10)
        follow = run.callback(task, 10)
        trainer = SimpleNamespace(members=[0, 1, 2, 3], epochs=10, active=np.array([True, True, False, True]))
        follow.on_epoch_end(trainer, 2, {"loss": np.array([0.5, 0.4, np.nan, 0.3])})
        assert run.bar.n == 3 * 3 + 10 and run.bar.total == 40      # a stopped member's epochs count as done
        assert run.member_epochs == [19, 40] and run.trained == 3
        run.finished(task, 10)
        assert run.bar.n == 40 and run.bar.desc == "4/4 members" and run.members == [4, 4]


def test_the_progress_callbacks_keep_the_fused_kernel():
    """train_population leaves its fused kernel for a callback that acts before or during an epoch."""
    task = Job(("none",), (0,))
    for callback in (progress.RunProgress().callback(task, 5), sizing.TimeBudget(180).clock(task, 5)):
        for hook in ("on_train_begin", "on_epoch_begin", "on_batch_end"):
            assert getattr(type(callback), hook) is getattr(Callback, hook), (type(callback).__name__, hook)


# -- reglab status -------------------------------------------------------------------------------


def status(db):
    result = invoke("status", "progress", "--db", db)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout.splitlines()


def test_status_shows_the_population_in_training_while_a_study_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(progress, "STATUS_SECONDS", 0.05)
    db, go = tmp_path / "s.db", threading.Event()
    with_callback(monkeypatch, 0, At(139, lambda: go.wait(60)))   # the run waits at epoch 140 until status has looked
    study = load(write_study(tmp_path, epochs=200))
    errors = []

    def run():
        try:
            with Store(db) as store:
                runner.run(study, store, progress=False)
        except BaseException as exc:   # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while True:
            result = invoke("status", "progress", "--db", db)   # exit 2 until the run has opened the study
            lines = result.stdout.splitlines() if result.exit_code == 0 else []
            if any("epoch 140/200" in line for line in lines):
                break
            assert thread.is_alive() and time.monotonic() < deadline, (lines, errors)
            time.sleep(0.05)
    finally:
        go.set()
        thread.join(120)
    assert not errors
    assert lines[0].startswith("progress: running (pid ") and lines[0].endswith(": 0 of 6 members finished")
    assert re.fullmatch(r"  training: 6 members, epoch 140/200, updated \d s ago", lines[1]), lines[1]
    assert re.fullmatch(r"  this run: 0/6 members finished, 840/1,200 member-epochs, ETA \d+ (s|min)", lines[2]), lines[2]
    after = status(db)
    assert after[0] == "progress: 6 of 6 results over the 3 seed(s) run so far"
    assert not any("training" in line or "last run" in line for line in after), after   # removed when it ended


def test_status_calls_old_progress_stale_and_names_a_run_that_was_killed(tmp_path):
    db = tmp_path / "s.db"
    with Store(db) as store:
        sid = store.open_study("progress", {"name": "progress", "variants": {"none": {}, "l2": {}}})
        with store.lease(sid, {"seeds": [0, 1, 2], "members": 6}):
            tracker = progress.RunProgress(store=store, study_id=sid)
            tasks = [Job(("none", "l2"), (0, 1)), Job(("none", "l2"), (2,))]
            tracker.plan(tasks, lambda t: 400)
            follow = tracker.callback(tasks[0], 400)
            follow.on_epoch_end(SimpleNamespace(members=[0, 1, 2, 3], epochs=400, active=np.ones(4, bool)),
                                99, {"loss": np.ones(4)})
            store.report_training(sid, tracker.snapshot())
            lines = status(db)
            assert re.fullmatch(r"  training: 4 members, epoch 100/400, updated \d s ago", lines[1]), lines[1]
            assert lines[2].startswith("  this run: 0/6 members finished, 400/2,400 member-epochs, ETA ")
            store._conn.execute("UPDATE runs SET updated = '2020-01-01T00:00:00+00:00'")
            stale = status(db)[1]
            assert stale.startswith("  training: 4 members, epoch 100/400, updated ") and "(stale: " in stale
            row = store._conn.execute("SELECT * FROM runs").fetchone()
        ended = status(db)
        assert [line.split() for line in ended[1:]] == [["l2", "0/0"], ["none", "0/0"]], ended   # no row left
        # a run that was killed leaves its row behind but no lock: status says so
        store._conn.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?)", row)
    lines = status(db)
    assert lines[1].startswith("  the last run (pid ") and "stopped without finishing, last heard from " in lines[1]
    assert lines[1].endswith(" while training 4 members, epoch 100/400; run the study again to resume"), lines[1]


# -- partial results -----------------------------------------------------------------------------


def test_cutting_a_population_by_time_gives_the_same_records(tmp_path, monkeypatch):
    study = write_study(tmp_path, epochs=12)
    with Store(tmp_path / "whole.db") as store:
        runner.run(load(study), store, progress=False)
    monkeypatch.setattr(sizing, "MAX_TASK_SECONDS", 1e-6)   # every population is too long: cut after 2 epochs
    monkeypatch.setattr(sizing, "PROBE_SECONDS", 0.0)
    calls, notes = with_callback(monkeypatch, -1, None), []
    with Store(tmp_path / "cut.db") as store:
        run_ = runner.run(load(study), store, echo=notes.append, progress=False)
    assert run_.trained == MEMBERS
    # the population of 6 stopped at its second epoch, then its 6 pieces of one member each
    assert [len(t.variants) * len(t.seeds) for t in calls] == [6] + [1] * 6
    assert any(n.startswith("a population of 6 members would train about ") and n.endswith(
        ": cut into 6, each saved when it finishes") for n in notes), notes
    whole, cut = stored(tmp_path / "whole.db"), stored(tmp_path / "cut.db")
    assert cut.keys() == whole.keys() and len(cut) == MEMBERS
    for pair in whole:
        assert cut[pair] == whole[pair], pair   # every bit: a fused member does not depend on its population


def test_a_measured_rate_cuts_later_populations_before_they_start():
    budget = sizing.TimeBudget(max_seconds=200)   # pieces of about 100 s
    task = Job(("a", "b"), tuple(range(8)), split=1)
    assert budget.pieces(task, epochs=1000) == [task]             # nothing measured yet
    budget.rates[("a", "b")] = 0.05                               # 16 members × 1000 epochs: 800 s
    pieces = budget.pieces(task, epochs=1000)
    assert [p.seeds for p in pieces] == [(0,), (1,), (2,), (3,), (4,), (5,), (6,), (7,)]
    assert all(p.variants == ("a", "b") and p.split == 1 for p in pieces)
    assert budget.pieces(Job(("a", "b"), (0,)), epochs=1000) == [Job(("a", "b"), (0,))]   # 100 s: fits
    assert len(budget.pieces(task, epochs=2000)) == 16            # 1600 s: one member (100 s) per piece
    one = Job(("a",), (0,))
    assert budget.split(one, 1e6) == [one]                        # a single member cannot be cut
    never = sizing.TimeBudget(max_seconds=None)
    never.rates[("a", "b")] = 0.05
    assert never.pieces(task, 10**6) == [task]


def test_ctrl_c_in_a_cut_population_keeps_the_pieces_that_finished(tmp_path, monkeypatch):
    study = write_study(tmp_path, epochs=12)
    with Store(tmp_path / "whole.db") as store:
        runner.run(load(study), store, progress=False)
    monkeypatch.setattr(sizing, "MAX_TASK_SECONDS", 1e-6)
    monkeypatch.setattr(sizing, "PROBE_SECONDS", 0.0)

    def interrupt():
        raise KeyboardInterrupt   # as Ctrl-C would, in the middle of the third piece

    calls = with_callback(monkeypatch, 3, At(5, interrupt))
    db = tmp_path / "cut.db"
    with Store(db) as store, pytest.raises(KeyboardInterrupt):
        runner.run(load(study), store, progress=False)
    assert len(calls) == 4
    kept = stored(db)
    assert len(kept) == 2                                        # the two pieces that finished
    whole = stored(tmp_path / "whole.db")
    assert all(kept[pair] == whole[pair] for pair in kept)
    with Store(db) as store:
        assert store.last_run(store.study("progress")["id"]) is None   # the run ended cleanly
    monkeypatch.undo()
    with Store(db) as store:
        resumed = runner.run(load(study), store, progress=False)
    assert resumed.trained == MEMBERS - 2
    assert stored(db) == whole
