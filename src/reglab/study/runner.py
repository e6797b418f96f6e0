"""Run a study: train every (variant, seed) as populations, keep results in the store, summarise.

Re-running a study resumes it: (configuration, seed) pairs already in the store are not trained
again. Results are saved population by population, each in one transaction, so an interrupted
run loses at most the members in flight; the local executor cuts a population that would train
longer than a few minutes into shorter ones (:mod:`reglab.study.sizing`), so that is at most a few
minutes of training. While it runs, :mod:`reglab.study.progress` shows how far it has got and
writes it to the store for `reglab status`.

A study over several train/test splits (``splits = K``) trains every (variant, split, seed): a
population belongs to one split's data, a record carries its ``split`` (none for split 0, see
:mod:`reglab.store`), and the statistics pair the runs by (split, seed) with Nadeau and Bengio's
corrected resampled t-test (:func:`reglab.stats.paired`), since the splits' training sets overlap.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading
from dataclasses import dataclass, field


from .. import data as data_mod
from . import spec as S
from .checks import prepare
from .jobs import plan, with_grid_points
from .records import slim as slim_record
from .summary import refined_points, summarize
from .train import LocalExecutor, epochs_of


@dataclass
class StudyRun:
    study: S.Study
    dataset: object
    records: list
    summary: dict = field(default_factory=dict)
    trained: int = 0          # members trained by this call (the rest came from the store)


def run(study: S.Study, store=None, *, dataset=None, executor=None, progress=None, echo=None,
        task_size: int | None = None, keep_histories: bool = True, until_clear: int | None = None,
        save_models=None) -> StudyRun:
    """Run (or resume) ``study``; returns every record and the summary. ``executor`` runs the
    populations (default: :class:`LocalExecutor`, in this process). ``progress``: None shows one bar
    for the run when stderr is a terminal and otherwise prints a line through ``echo`` every 30 s
    (:mod:`reglab.study.progress`); True always the bar; False neither. ``task_size`` caps the members
    of one population: smaller tasks are saved more often (an interruption loses less) but train
    less in parallel; default: no cap. ``keep_histories=False`` (with a store) keeps in memory only
    the learning curves the summary reads -- the store has every curve -- so that memory does not
    grow with whole histories over thousands of members (the CLI does this).

    ``until_clear=N``: while some comparison is unclear ("no clear difference") and fewer than N
    seeds ran, double the seeds (at most N) for the baseline and the unclear variants only, and
    compare again; the paired statistics use the seeds both sides have.

    ``save_models``: a folder (created if missing) to write every member this call trains into, with
    the code that builds it and an index (:mod:`reglab.study.saved`); local executor only."""
    if until_clear is not None and (isinstance(until_clear, bool) or not isinstance(until_clear, int) or until_clear < 2):
        raise ValueError(f"until_clear must be an int >= 2 (the most seeds to run) or None. Got {until_clear!r} instead.")
    if task_size is not None and (isinstance(task_size, bool) or not isinstance(task_size, int) or task_size < 1):
        raise ValueError(f"task_size must be a positive int or None. Got {task_size!r} instead.")
    dataset = prepare(study) if dataset is None else dataset
    have = len(dataset.splits) if getattr(dataset, "splits", None) else 1
    if have != study.splits:
        raise ValueError(f"the dataset has {have} train/test split(s) but the study has splits = {study.splits}; "
                         f"pass the dataset of reglab.study.prepare(study), or none")
    if save_models is not None:   # checked before the store is touched
        from .saved import check_folder

        if executor is not None and type(executor) is not LocalExecutor:
            raise ValueError("The 'save_models' parameter of run needs the local executor (executor=None): "
                             f"another executor's tasks may run on other machines. Got {type(executor).__name__}.")
        try:
            executor = LocalExecutor(check_folder(save_models, study))
        except ValueError as exc:
            raise ValueError(f"The 'save_models' parameter of run: {exc}.") from None
    executor = LocalExecutor() if executor is None else executor
    study_id = store.open_study(study.name, study.as_dict()) if store is not None else None
    planned = {"seeds": list(study.seeds), "members": len(study.variants) * len(study.seeds) * study.splits}
    with store.lease(study_id, planned) if store is not None else contextlib.nullcontext(), \
            _progress(progress, echo, store, study_id) as tracker:
        echo = tracker.note if echo is not None else None   # lines printed while a bar shows do not break it
        slim = slim_record if store is not None and not keep_histories else None
        records = store.results(study_id) if store is not None else []
        run_ = StudyRun(study, dataset, [slim(r) for r in records] if slim else records)
        _train(study, study.variants, dataset, store, study_id, run_, tracker, echo, executor, task_size, slim)
        if study.protocol == "grid" and study.grid.get("refine", True) and len(S.values(study.grid)) == 1:
            coarse = {v.key for v in study.variants}   # decide from the coarse grid alone, as on the first run
            points = refined_points(study, [r for r in run_.records if r["config_key"] in coarse], dataset.task)
            refined = with_grid_points(study, points)
            if refined:
                if store is not None:
                    members = len(study.variants) * len(study.seeds) * study.splits
                    store.plan_run(study_id, {**planned, "members": members})
                _train(study, refined, dataset, store, study_id, run_, tracker, echo, executor, task_size, slim)
        while until_clear is not None:
            unclear = _unclear(study, run_, dataset)
            if not unclear or len(study.seeds) >= until_clear:
                break
            more = [max(study.seeds) + 1 + i for i in range(min(until_clear, 2 * len(study.seeds)) - len(study.seeds))]
            if echo is not None:
                over = f"{study.splits} splits × " if study.splits > 1 else ""
                echo(f"until clear: {len(unclear)} comparison(s) unclear over {over}{len(study.seeds)} seeds; "
                     f"adding seeds {more[0]}-{more[-1]} to {study.baseline} and {', '.join(unclear)}"
                     + (" on every split" if study.splits > 1 else ""))
            study.seeds = list(study.seeds) + more
            by_name = {v.name: v for v in study.variants}
            subset = [by_name[study.baseline]] + [by_name[n] for n in unclear]
            if store is not None:
                store.plan_run(study_id, {"seeds": list(study.seeds),
                                          "members": len(study.variants) * len(study.seeds) * study.splits})
            _train(study, subset, dataset, store, study_id, run_, tracker, echo, executor, task_size, slim)
    run_.records = _current(study, run_.records)
    run_.summary = summarize(study, run_.records, dataset)
    return run_


def _current(study, records) -> list[dict]:
    """The records of the study's variants, splits and seeds (the store may hold more)."""
    keys, seeds = {v.key for v in study.variants}, set(study.seeds)
    return [r for r in records
            if r["config_key"] in keys and r["seed"] in seeds and r.get("split", 0) < study.splits]


def _done(record) -> tuple:
    """The task a record finishes: (config_key, split, seed)."""
    return record["config_key"], record.get("split", 0), record["seed"]


def _unclear(study, run_, dataset) -> list[str]:
    summary = summarize(study, _current(study, run_.records), dataset)
    return [r["variant"] for r in summary["rows"] if r.get("verdict") == "no clear difference"]


def _progress(progress, echo, store, study_id):
    """The run's :class:`reglab.study.progress.RunProgress`. ``progress=None``: a bar when stderr is a
    terminal, else a plain line through ``echo`` every ``LINE_SECONDS``; True: a bar; False:
    neither. The store gets the progress in every case (`reglab status`)."""
    from .progress import RunProgress

    try:
        terminal = sys.stderr.isatty()
    except (AttributeError, ValueError):   # replaced or closed
        terminal = False
    return RunProgress(bar=progress is True or (progress is None and terminal), lines=progress is None and not terminal,
                       echo=echo, store=store, study_id=study_id)


def _train(study, variants, dataset, store, study_id, run_, tracker, echo, executor, task_size=None, slim=None):
    # what is finished: the store's keys (it may hold records this run has not read), else this run's
    done = store.done_keys(study_id, splits=True) if store is not None else {_done(r) for r in run_.records}
    tasks = plan(study, variants, done, executor.chunks, task_size)
    if echo and tasks:
        members = sum(len(t.variants) * len(t.seeds) for t in tasks)
        if len(tasks) > 1:
            splits = len({t.split for t in tasks})
            echo(f"training {members} members in {len(tasks)} population(s)"
                 + (f" on {splits} train/test split(s)" if study.splits > 1 else ""))
        else:
            echo(f"training {len(tasks[0].variants)} variant(s) × {len(tasks[0].seeds)} seed(s) = {members} members"
                 + (f" on split {tasks[0].split}" if study.splits > 1 else ""))
    tracker.plan(tasks, functools.partial(epochs_of, study))
    # the run's bar replaces the populations' own; the local executor reports every epoch
    follow = {"tracker": tracker} if isinstance(executor, LocalExecutor) else {}
    for task, new in executor.map(study, dataset, tasks, False, **follow):
        if store is not None:
            with _interrupts_deferred():   # a finished task is saved whole even if Ctrl-C lands now
                store.save(study_id, new)  # the driver is the only writer; one transaction per task
            if slim is not None:
                new = [slim(r) for r in new]
        run_.records.extend(new)
        run_.trained += len(new)
        tracker.finished(task, epochs_of(study, task))


@contextlib.contextmanager
def _interrupts_deferred():
    """Hold SIGINT/SIGTERM back for the duration of the block, then deliver them (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        if caught:   # delivered again now, to whatever handled it before (Ctrl-C: KeyboardInterrupt)
            signal.raise_signal(caught[0])


def from_store(store, name: str) -> StudyRun:
    """Rebuild a study's run from the database alone (for status, export and reports)."""
    row = store.study(name)
    if row is None:
        raise S.StudyError(f"no study {name!r} in the database; `reglab list` shows what is there.")
    study = S.from_dict(row["spec"])
    records = [r for r in store.results(row["id"]) if r.get("split", 0) < study.splits]
    study.seeds = sorted({r["seed"] for r in records}) or study.seeds   # the store keeps no seed count
    if study.protocol == "grid":   # the points refinement added
        with_grid_points(study, [r["params"]["value"] for r in records if "value" in r["params"]])
    dataset = data_mod.load(S.stored_data(study.data), base_dir=study.base_dir, splits=study.splits)
    keys = {v.key for v in study.variants}
    records = [r for r in records if r["config_key"] in keys]
    return StudyRun(study, dataset, records, summarize(study, records, dataset))
