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

import collections
import contextlib
import functools
import json
import math
import signal
import sys
import threading
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .. import data as data_mod
from .. import diagnose, stats
from ..callbacks import EarlyStopping
from ..tasks import get as get_task
from ..training import as_tensors, wants_integers
from ..population import check_population, train_population
from . import spec as S
from .snippet import variant_snippet

HISTORY_POINTS = 500   # histories are kept at up to this many evenly spaced epochs


@dataclass
class StudyRun:
    study: S.Study
    dataset: object
    records: list
    summary: dict = field(default_factory=dict)
    trained: int = 0          # members trained by this call (the rest came from the store)


# Training settings that may differ between the members of one population (one value per member).
PER_MEMBER = ("lr", "label_smoothing", "class_weight")


def group_key(training: dict) -> str:
    """Variants whose training settings agree but for the per-member ones (``PER_MEMBER``) train as
    one population: this key groups them."""
    shared = {k: v for k, v in training.items() if k not in PER_MEMBER}
    return json.dumps(shared, sort_keys=True)


def population_options(vs) -> dict:
    """The keyword arguments of ``train_population`` for variants ``vs`` of one group (same
    :func:`group_key`): the shared settings of the first, the per-member ones of each."""
    training = vs[0].training
    return dict(epochs=training.get("epochs", 100), batch_size=training.get("batch_size"),
                optimizer=training.get("optimizer"), lr=[v.training.get("lr") for v in vs],
                weight_decay=training.get("weight_decay"), momentum=training.get("momentum", 0.0),
                label_smoothing=[v.training.get("label_smoothing", 0.0) for v in vs],
                class_weight=[v.training.get("class_weight") for v in vs],
                clipnorm=training.get("clipnorm"), clipvalue=training.get("clipvalue"),
                global_clipnorm=training.get("global_clipnorm"), schedule=training.get("schedule"),
                mixup=training.get("mixup"), ema=training.get("ema"), swa=training.get("swa"),
                preset=training.get("preset", "keras"), early_stopping=_early_stopping(training),
                device=training.get("device", "auto"))


def _early_stopping(training):
    es = training.get("early_stopping")
    return EarlyStopping(**es) if es else None


def prepare(study: S.Study):
    """Load the data and build every variant's model once, so that a study that cannot run is
    rejected before anything is written. With several splits the dataset returned is split 0 and
    ``dataset.splits`` holds every split's (:meth:`reglab.data.Dataset.for_split`)."""
    dataset = data_mod.load(study.data, base_dir=study.base_dir, splits=study.splits)
    classes = len(dataset.info["classes"]) if dataset.task == "multiclass" else None
    build = S.builder(study, tuple(dataset.X_train.shape[1:]), dataset.task, classes=classes)
    task = get_task(dataset.task)
    metric = "accuracy" if dataset.task != "regression" else "mae"
    logged = [p + k for p in ("", "val_") for k in ("loss", "data_loss", "penalty", metric)]
    for v in study.variants:
        monitor = (v.training.get("early_stopping") or {}).get("monitor", "val_loss")
        if monitor not in logged:
            raise S.StudyError(f"variants.{v.name}: early_stopping monitors {monitor!r}, which a {dataset.task} "
                               f"study does not log; choose one of {', '.join(logged)}.")
        schedule = v.training.get("schedule") or {}
        if schedule.get("kind") == "plateau" and schedule.get("monitor", "val_loss") not in logged:
            raise S.StudyError(f"variants.{v.name}: the plateau schedule monitors {schedule['monitor']!r}, which a "
                               f"{dataset.task} study does not log; choose one of {', '.join(logged)}.")
        _check_objective(v, dataset, task)
        model = build(v.name)
        integers = wants_integers(model)
        if integers and dataset.info.get("integer_inputs"):
            _check_token_ids(model, dataset, f"variants.{v.name}")
        try:
            with torch.no_grad():
                sample = as_tensors((dataset.X_train[:2], dataset.y_train[:2]), "train", dataset.task, integers)[0]
                out = model.eval()(sample)
                task.check_output(out, task.targets(dataset.y_train[:2]))
                if classes is not None and out.shape[-1] != classes:
                    raise ValueError(f"it gives {out.shape[-1]} outputs per sample, but the data has {classes} classes")
        except (RuntimeError, ValueError, IndexError, KeyError, TypeError) as exc:
            if integers and not dataset.info.get("integer_inputs"):
                raise S.StudyError(f"variants.{v.name}: the model has an nn.Embedding, which needs integer token ids, but "
                                   "the study's inputs are floats; give integer columns and set [data] standardize = false") from None
            raise S.StudyError(f"variants.{v.name}: the model does not fit the data: "
                               f"{(str(exc).splitlines() or [type(exc).__name__])[0]}") from None
        if v.training.get("mixup"):   # mixup needs float inputs, CutMix images: said before anything trains
            from .. import mixup as _mixup

            try:
                _mixup.Mixing(_mixup.get(v.training["mixup"]), [0], owner=f"variants.{v.name}")._check(sample)
            except (ValueError, TypeError) as exc:
                raise S.StudyError(S.one_line(str(exc))) from None
        # A model the population engine cannot train (not an nn.Sequential, an unsupported layer,
        # a rule it cannot place) is refused here too: before the store is touched.
        try:
            check_population(build(v.name), sample)
        except (ValueError, TypeError, RuntimeError) as exc:
            if isinstance(exc, S.StudyError):
                raise
            where = f"model.factory {study.model['factory']!r}" if "factory" in study.model else f"variants.{v.name}"
            raise S.StudyError(f"{where}: {str(exc).splitlines()[0]}") from None
    return dataset


def _check_objective(variant, dataset, task) -> None:
    """A variant's label smoothing and class weights fit the study's task and classes (a regression
    study has no classes to weigh or smooth), said before anything trains."""
    from ..tasks import Objective, class_weights

    training = variant.training
    if training.get("label_smoothing") is None and training.get("class_weight") is None:
        return
    try:
        weights = class_weights(training.get("class_weight"), torch.as_tensor(dataset.y_train), task, "[training]")
        Objective(task, None, training.get("label_smoothing") or 0.0, weights)
    except (ValueError, TypeError) as exc:
        raise S.StudyError(f"variants.{variant.name}: {S.one_line(str(exc))}") from None


def _check_token_ids(model, dataset, where):
    """A layer-line model's first layer, an Embedding, takes every token id of the data (an id out of
    its vocabulary would fail in training, or in the first evaluation of the test part)."""
    first = model[0] if isinstance(model, nn.Sequential) and len(model) else None
    if not isinstance(first, nn.Embedding):
        return
    parts = [a for a in (dataset.X_train, dataset.X_val, dataset.X_test) if a is not None and a.size]
    low, high = min(int(a.min()) for a in parts), max(int(a.max()) for a in parts)
    n = first.num_embeddings
    if low < 0:
        raise S.StudyError(f"{where}: the data holds token id {low}, but an Embedding takes ids 0 to {n - 1}; "
                           f"map the tokens to ids >= 0.")
    if high >= n:
        raise S.StudyError(f"{where}: the data holds token id {high}, but Embedding(input_dim={n}) takes ids 0 to "
                           f"{n - 1}; raise input_dim to at least {high + 1}.")


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
        slim = _slim if store is not None and not keep_histories else None
        records = store.results(study_id) if store is not None else []
        run_ = StudyRun(study, dataset, [slim(r) for r in records] if slim else records)
        _train(study, study.variants, dataset, store, study_id, run_, tracker, echo, executor, task_size, slim)
        if study.protocol == "grid" and study.grid.get("refine", True) and len(S.values(study.grid)) == 1:
            coarse = {v.key for v in study.variants}   # decide from the coarse grid alone, as on the first run
            refined = _refined_variants(study, [r for r in run_.records if r["config_key"] in coarse], dataset.task)
            if refined:
                study.variants = sorted(study.variants + refined, key=lambda v: v.params.get("value", -1.0))
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


def pairs(study) -> list[tuple[int, int]]:
    """The study's (split, seed) pairs, split by split: what the statistics pair variants on."""
    return [(k, s) for k in range(study.splits) for s in study.seeds]


def _unclear(study, run_, dataset) -> list[str]:
    summary = summarize(study, _current(study, run_.records), dataset)
    return [r["variant"] for r in summary["rows"] if r.get("verdict") == "no clear difference"]


@dataclass(frozen=True)
class Task:
    """One population to train: some variants (sharing training settings) × some seeds, on the
    data of one train/test split."""

    variants: tuple
    seeds: tuple
    split: int = 0


def plan(study: S.Study, variants, done: set, chunks: int = 1, task_size: int | None = None) -> list[Task]:
    """The populations still to train: variants grouped by training settings, by train/test split
    and by the seeds they miss (``done`` holds finished (config_key, split, seed) triples, or
    (config_key, seed) pairs of split 0); each split into ``chunks`` seed chunks, and further so that
    no task has more than ``task_size`` members."""
    done = {d if len(d) == 3 else (d[0], 0, d[1]) for d in done}
    groups: dict[str, list] = {}
    for v in variants:
        groups.setdefault(group_key(v.training), []).append(v)
    tasks = []
    for members in groups.values():
        for split in range(study.splits):
            by_missing: dict[tuple, list] = {}
            for v in members:
                missing = tuple(s for s in study.seeds if (v.key, split, s) not in done)
                if missing:
                    by_missing.setdefault(missing, []).append(v.name)
            for seeds, names in by_missing.items():
                size = -(-len(seeds) // max(1, chunks))
                for i in range(0, len(seeds), size):
                    tasks += _split(Task(tuple(names), seeds[i:i + size], split), task_size)
    return tasks


def _split(task: Task, task_size: int | None) -> list[Task]:
    """``task`` cut into tasks of at most ``task_size`` members (variants × seeds)."""
    if task_size is None or len(task.variants) * len(task.seeds) <= task_size:
        return [task]
    if len(task.variants) > task_size:   # one seed at a time, variants in groups of task_size
        return [Task(task.variants[i:i + task_size], (seed,), task.split)
                for seed in task.seeds for i in range(0, len(task.variants), task_size)]
    step = task_size // len(task.variants)
    return [Task(task.variants, task.seeds[i:i + step], task.split) for i in range(0, len(task.seeds), step)]


def execute(study: S.Study, dataset, task: Task, progress=None, threads: int | None = None,
            save_models=None, callbacks=()) -> list[dict]:
    """Train one task's population and return its records (what the store keeps).

    ``threads``: None lets reglab.threads choose (REGLAB_THREADS, else the governor); an int pins it.
    The population trains on the data of the task's split (``dataset.for_split(task.split)``).
    ``save_models``: a folder to write every member into (:mod:`reglab.study.saved`).
    ``callbacks``: :class:`reglab.Callback` objects for ``train_population`` (progress, timing)."""
    dataset = dataset.for_split(task.split)
    by_name = {v.name: v for v in study.variants}
    vs = [by_name[name] for name in task.variants]
    result = train_group(study, dataset, vs, task.seeds, progress=progress, threads=threads, callbacks=callbacks)
    records = [_record(vs[m["config_index"]], m["seed"], i, result, dataset, study)
               for i, m in enumerate(result.members)]
    if save_models is not None:
        from .saved import save_members

        save_members(save_models, study, dataset, task.split, vs, result, records)
    return [_in_split(r, task.split) for r in records] if task.split else records


def train_group(study: S.Study, dataset, variants: list, seeds, *, progress=None, threads: int | None = None,
                callbacks=()):
    """Train ``variants`` (one :func:`group_key`) × ``seeds`` on ``dataset`` as one population call:
    the one way a study trains, used by :func:`execute` (so the local and Dask executors) and the
    report's decision-boundary figure (which retrains a seed's members)."""
    build = S.builder(study, tuple(dataset.X_train.shape[1:]), dataset.task)
    return train_population(
        build, [{"variant": v.name} for v in variants], list(seeds), train=(dataset.X_train, dataset.y_train),
        validation=dataset.validation(), task=dataset.task, progress=progress, threads=threads,
        sample_weight=dataset.w_train, callbacks=list(callbacks), **population_options(variants))


def _in_split(record: dict, split: int) -> dict:
    """``record`` of train/test split ``split`` > 0, as the store gives it back (split 0 has no key)."""
    out = {}
    for key, value in record.items():
        out[key] = value
        if key == "seed":
            out["split"] = int(split)
    return out


class LocalExecutor:
    """Runs tasks one after another in this process; ``save_models``: a folder to write every
    member into as its task finishes (:mod:`reglab.study.saved`).

    A task that would train longer than :data:`reglab.study.sizing.MAX_TASK_SECONDS` is cut into
    shorter ones (:mod:`reglab.study.sizing`), each yielded, hence saved, when it finishes: the
    records are the same, an interruption loses less."""

    chunks = 1

    def __init__(self, save_models=None):
        self.save_models = save_models

    def map(self, study, dataset, tasks, progress=None, tracker=None):
        """Yield ``(task, records)`` for each task trained (the pieces of a task that was cut);
        ``tracker``: a :class:`reglab.study.progress.RunProgress` that follows every epoch."""
        from . import sizing
        from .progress import duration

        budget = sizing.TimeBudget(sizing.MAX_TASK_SECONDS)
        queue = collections.deque(tasks)
        while queue:
            task = queue.popleft()
            epochs = _epochs(study, task)
            pieces = budget.pieces(task, epochs)   # cut before it starts, at the rate measured on its variants
            if len(pieces) > 1:
                queue.extendleft(reversed(pieces))
                continue
            callbacks = [budget.clock(task, epochs)] + ([tracker.callback(task, epochs)] if tracker else [])
            try:
                records = execute(study, dataset, task, progress, save_models=self.save_models, callbacks=callbacks)
            except sizing.TaskTooLong as long:
                pieces = budget.split(task, long.seconds)
                if tracker is not None:
                    tracker.dropped(task)
                    tracker.note(f"a population of {sizing.members(task)} members would train about "
                                 f"{duration(long.seconds)}: cut into {len(pieces)}, each saved when it finishes")
                queue.extendleft(reversed(pieces))
                continue
            yield task, records


def _epochs(study, task: Task) -> int:
    """The epochs ``task`` trains (its variants share them)."""
    variant = next(v for v in study.variants if v.name == task.variants[0])
    return population_options([variant])["epochs"]


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
    done = {_done(r) for r in run_.records}
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
    tracker.plan(tasks, functools.partial(_epochs, study))
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
        tracker.finished(task, _epochs(study, task))


SUMMARY_HISTORY = ("val_loss", "epoch")   # all that summarize() reads of a learning curve


def _slim(record: dict) -> dict:
    """``record`` with only the curves the summary reads (the store keeps the whole record)."""
    return {**record, "history": {k: v for k, v in record["history"].items() if k in SUMMARY_HISTORY}}


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


def _downsample(values: np.ndarray, epochs_run: int):
    values = values[:epochs_run]
    if epochs_run <= HISTORY_POINTS:
        idx = np.arange(epochs_run)
    else:
        idx = np.unique(np.linspace(0, epochs_run - 1, HISTORY_POINTS).round().astype(int))
    return idx, values[idx]


def _record(variant: S.Variant, seed: int, i: int, result, dataset, study: S.Study | None = None) -> dict:
    model = result.models[i]
    task = result.task
    metric = task.metric
    from ..training import evaluate

    train_eval = evaluate(model, (dataset.X_train, dataset.y_train), task=task, batch_size=result.batch_size)
    test_eval = evaluate(model, (dataset.X_test, dataset.y_test), task=task, batch_size=result.batch_size)
    val_eval = evaluate(model, dataset.validation(), task=task, batch_size=result.batch_size) \
        if dataset.X_val is not None else test_eval
    epochs_run = int(result.epochs_run[i])
    history, idx = {}, None
    for key, values in result.history.items():
        idx, kept = _downsample(values[i], epochs_run)
        history[key] = [float(v) for v in kept]
    history["epoch"] = [int(e) for e in (idx if idx is not None else [])]
    with torch.no_grad():
        # integer columns stay ids for an Embedding and become floats for any other model, as in training
        out = model(as_tensors((dataset.X_test, dataset.y_test), "test", dataset.task, wants_integers(model))[0])
        proba = np.asarray(dataset.to_original_units(task.predict(out).numpy())).round(5).tolist()
    metrics = {f"train_{metric}": train_eval[metric], f"test_{metric}": test_eval[metric],
               "train_loss": train_eval["loss"], "test_loss": test_eval["loss"],
               "train_data_loss": train_eval["data_loss"], "test_data_loss": test_eval["data_loss"],
               f"val_{metric}": val_eval[metric]}
    metrics = dataset.metrics_in_original_units(metrics)   # MAE in the target's units, losses x std**2
    history = dataset.metrics_in_original_units(history)
    if result.diverged[i]:   # the frozen weights made the loss NaN/inf: they have no score to report
        metrics = {k: float("nan") for k in metrics}
    return {
        "variant": variant.name, "config_key": variant.key, "params": variant.params, "seed": int(seed),
        "metrics": metrics, "epochs_run": epochs_run, "diverged": bool(result.diverged[i]), "history": history,
        "extra": {"weight_norms": diagnose.weight_norms(model),
                  "sparsity": diagnose.activation_sparsity(model, dataset.X_test),
                  "test_proba": proba, "best_epoch": int(result.best_epoch[i]),
                  "stopped_epoch": int(result.stopped_epoch[i]),
                  "snippet": variant_snippet(study, variant, model, task=task.name, seed=seed)},
    }


def _refined_variants(study, records, task):
    metric = "accuracy" if task != "regression" else "mae"
    strengths, scores = _grid_scores(study, records, metric)
    if len(strengths) < 2 or not np.isfinite(scores).any():   # every strength diverged: nothing to refine
        return []
    low, high = stats.choose_decade(strengths, scores, higher_is_better=metric == "accuracy")
    tried = set(strengths)
    points = [v for v in stats.refine_grid(low, high, study.grid.get("refine_points", 5)) if v not in tried]
    if not points:
        return []
    return S.grid_variants(study, {"value": points}, only=[{"value": v} for v in points])


def _grid_scores(study, records, metric, on="val"):
    """Strengths and their per-seed scores on the validation part (``on="val"``: what chooses and
    refines λ) or the test part. A record from before validation scores were kept uses its test score."""
    by_value: dict[float, dict] = {}
    for r in records:
        if "value" in r["params"]:
            key = f"{on}_{metric}" if f"{on}_{metric}" in r["metrics"] else f"test_{metric}"
            by_value.setdefault(r["params"]["value"], {})[(r.get("split", 0), r["seed"])] = _score(r, key)
    strengths = sorted(by_value)
    scores = np.array([[by_value[v].get(pair, np.nan) for pair in pairs(study)] for v in strengths], dtype=float)
    return strengths, scores


def summarize(study: S.Study, records: list, dataset) -> dict:
    """Per-variant statistics, paired comparisons to the baseline (Holm), diagnosis and the winner.

    A diverged member has no score: its metrics count as missing (``n`` counts the others), its
    variant's ``diverged`` says on how many of its ``runs`` seeds, and a variant that diverged on
    every seed gets the verdict and the diagnosis ``"diverged"``. The winner is the best variant
    that never diverged (if every scored variant diverged somewhere: the best of those).

    Several train/test splits (``study.splits = K > 1``): the runs are paired by (split, seed), so
    ``n`` counts K × seeds, and the test score's interval and every paired comparison use the
    corrected resampled t-test with ``n_test / n_train`` the mean ratio of the splits' test rows to
    the rows trained on (:func:`reglab.stats.paired`); the summary then holds ``splits``, ``cv``,
    ``significance_test`` and ``test_train_ratio``."""
    metric = "accuracy" if dataset.task != "regression" else "mae"
    higher = metric == "accuracy"
    names = [v.name for v in study.variants]
    # the same numbers whatever order the tasks finished in
    records = sorted(records, key=lambda r: (r.get("split", 0), r["seed"]))
    by_variant = {n: {(r.get("split", 0), r["seed"]): r for r in records if r["variant"] == n} for n in names}
    seeds = study.seeds
    runs = pairs(study)
    ratio = rows_ratio(dataset) if study.splits > 1 else None
    faults = _data_faults(dataset)
    reference = _reference(dataset, metric) if not faults else None
    rows = []
    base = by_variant[study.baseline]
    base_test = _per_pair(base, runs, f"test_{metric}")
    for name in names:
        recs = by_variant[name]
        test = _per_pair(recs, runs, f"test_{metric}")
        train = _per_pair(recs, runs, f"train_{metric}")
        row = {"variant": name, "params": next(iter(recs.values()))["params"] if recs else {},
               "n": int(np.isfinite(test).sum()), "train": stats.describe(train),
               "test": stats.describe(test, test_train_ratio=ratio),
               "diverged": int(sum(bool(r["diverged"]) for r in recs.values())), "runs": len(recs),
               "epochs_run": float(np.mean([r["epochs_run"] for r in recs.values()])) if recs else float("nan")}
        if name != study.baseline:
            row["paired"] = stats.paired(test, base_test, higher_is_better=higher, test_train_ratio=ratio)
        row["diagnosis"] = _diagnosis(list(recs.values()), metric, dataset, faults, reference)
        rows.append(row)
    base_row = next(r for r in rows if r["variant"] == study.baseline)
    compared = [r for r in rows if "paired" in r]
    adjusted = stats.holm([r["paired"]["p_value"] for r in compared]) if compared else []
    for r, p in zip(compared, adjusted):
        r["p_holm"] = float(p)
        if _all_diverged(r):
            r["verdict"] = "diverged"
        elif _all_diverged(base_row):
            r["verdict"] = "no comparison: baseline diverged"
        else:
            r["verdict"] = stats.verdict(r["paired"], p, higher_is_better=higher)
    summary = {"study": study.name, "question": study.question, "protocol": study.protocol, "metric": metric,
               "baseline": study.baseline, "seeds": len(seeds), "task": dataset.task, "rows": rows}
    if study.splits > 1:
        summary.update(splits=study.splits, cv=study.data.get("cv", "shuffle"),
                       significance_test=CORRECTED_TEST, test_train_ratio=ratio)
    warnings = _warnings(faults, rows, dataset)
    if warnings:
        summary["warnings"] = warnings
    optimistic = S.optimism_note(study, dataset)
    if optimistic:
        summary["optimistic"] = optimistic
    grid = None
    if study.protocol == "grid" and len(S.values(study.grid)) == 1:
        strengths, scores = _grid_scores(study, records, metric)
        if len(strengths) >= 2:
            grid = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in
                    stats.one_se_rule(np.array(strengths), scores, higher_is_better=higher).items()}
            grid["strengths"] = strengths
            grid["chosen_on"] = "validation" if dataset.X_val is not None else "test"
            summary["grid"] = grid
    finite = [r for r in rows if r["n"]]
    steady = [r for r in finite if not r["diverged"]] or finite
    best = _best(steady, grid, higher)
    _too_much_regularization(rows, best, base_row, grid, higher)
    if best is not None:
        summary["best"] = best["variant"]
    if faults:
        summary["no_winner"] = "the training data cannot be learned (see the warning)"
    elif not steady:
        summary["no_winner"] = "every member diverged" if any(r["diverged"] for r in rows) else "no variant has a score"
    else:
        # A winner is a variant better than the baseline after Holm.
        better = [r for r in steady if r.get("verdict") == "better"]
        if better:
            # the study's one best when it is among them (a grid's chosen strength), else the best mean
            winner = best if best in better else (max if higher else min)(better, key=lambda r: r["test"]["mean"])
            summary["winner"] = winner["variant"]
            first = next((r for r in by_variant[winner["variant"]].values() if not r["diverged"]), None)
            summary["snippet"] = first["extra"]["snippet"] if first else ""
        else:
            summary["no_winner"] = f"no variant beats the baseline {study.baseline!r} after the Holm correction"
    return summary


def _best(rows, grid, higher):
    """The one best variant of the study: in a grid the strength chosen on validation (ties: the
    stronger), else the best mean test score (ties: the first)."""
    if not rows:
        return None
    if grid is not None and math.isfinite(grid.get("best", math.nan)):
        chosen = [r for r in rows if r["params"].get("value") == grid["best"]]
        if chosen:
            return chosen[0]
    return (max if higher else min)(rows, key=lambda r: r["test"]["mean"])


def _too_much_regularization(rows, best, base_row, grid, higher: bool, margin: float = 0.02) -> None:
    """Underfit by comparison: a stronger penalty that lowers both the training and the test score
    past the peak. In a grid: a strength above the chosen one whose train mean is ``margin`` below
    the chosen one's and whose test mean is more than one SE below it. Elsewhere: a variant
    significantly worse than the baseline (after Holm) whose train mean is ``margin`` below the
    baseline's. The best variant is never underfit by comparison."""
    if not higher or best is None:
        return
    for r in rows:
        d = r.get("diagnosis") or {}
        if r is best or not r["n"] or d.get("verdict") in (None, "diverged", "underfit", ONE_CLASS):
            continue
        if grid is not None and "value" in r["params"] and "value" in best["params"]:
            past_peak = r["params"]["value"] > best["params"]["value"]
            ref = best
            test_lower = r["test"]["mean"] < best["test"]["mean"] - (best["test"]["sem"] if
                                                                      math.isfinite(best["test"]["sem"]) else 0.0)
        else:
            past_peak, ref = r.get("verdict") == "worse", base_row
            test_lower = True
        if past_peak and test_lower and r["train"]["mean"] < ref["train"]["mean"] - margin:
            d["verdict"] = "underfit"
            d["reason"] = (f"too much regularization: train {r['train']['mean']:.3f} and test {r['test']['mean']:.3f} "
                           f"both below {ref['variant']}'s {ref['train']['mean']:.3f} / {ref['test']['mean']:.3f}")
            d["train_below_best_variant"] = float(ref["train"]["mean"] - r["train"]["mean"])


ONE_CLASS = "one class in training"   # the diagnosis when the training split holds a single class


def _reference(dataset, metric) -> dict | None:
    """Train/test scores of simple models on the same split: the majority class (classification) or
    the mean (regression), and a logistic or linear regression on the flattened inputs. Fitted once
    per dataset (every summary of a run, ``--until-clear`` rounds included, reads the same)."""
    cached = getattr(dataset, "_reference", None)
    if cached is not None and cached[0] == metric:
        return cached[1]
    out = _fit_reference(dataset, metric)
    dataset._reference = (metric, out)
    return out


def _fit_reference(dataset, metric) -> dict | None:
    from sklearn.linear_model import LinearRegression, LogisticRegression

    Xtr = np.asarray(dataset.X_train, dtype=float).reshape(len(dataset.X_train), -1)
    Xte = np.asarray(dataset.X_test, dtype=float).reshape(len(dataset.X_test), -1)
    ytr = np.asarray(dataset.to_original_units(dataset.y_train))
    yte = np.asarray(dataset.to_original_units(dataset.y_test))
    out = {}
    with np.errstate(all="ignore"), contextlib.suppress(ValueError, np.linalg.LinAlgError):
        if metric == "accuracy":
            labels, counts = np.unique(ytr, return_counts=True)
            mode = labels[np.argmax(counts)]
            out["majority"] = {"train": float(np.mean(ytr == mode)), "test": float(np.mean(yte == mode))}
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = LogisticRegression(max_iter=500).fit(Xtr, ytr)
            out["linear"] = {"train": float(model.score(Xtr, ytr)), "test": float(model.score(Xte, yte))}
        else:
            ytr2, yte2 = ytr.reshape(len(ytr), -1).astype(float), yte.reshape(len(yte), -1).astype(float)
            mean = ytr2.mean(0)
            out["mean"] = {"train": float(np.abs(ytr2 - mean).mean()), "test": float(np.abs(yte2 - mean).mean())}
            model = LinearRegression().fit(Xtr, ytr2)
            out["linear"] = {"train": float(np.abs(model.predict(Xtr) - ytr2).mean()),
                             "test": float(np.abs(model.predict(Xte) - yte2).mean())}
            out["majority"] = out["mean"]   # the floor, under the name fit_verdict reads
    return out or None


def _diagnosis(recs, metric, dataset, faults=None, reference=None) -> dict:
    if not recs:
        return {}
    faults = faults or {}
    diverged = sum(bool(r["diverged"]) for r in recs)
    counts = {"diverged": diverged, "runs": len(recs)} if diverged else {}
    recs = [r for r in recs if not r["diverged"]]   # a diverged member has no score, norms of ~inf
    if not recs:
        return {"verdict": "diverged", **counts}
    with np.errstate(all="ignore"):
        train = [r["metrics"][f"train_{metric}"] for r in recs]
        test = [r["metrics"][f"test_{metric}"] for r in recs]
        length = min(len(r["history"].get("val_loss", [])) for r in recs)
        curve = np.array([r["history"]["val_loss"][:length] for r in recs], dtype=float) if length else None
        mean_curve = {"val_loss": _column_means(curve)} if length else {}
    out = diagnose.fit_verdict(train, test, mean_curve.get("val_loss"), metric, reference)
    test = _mean(test)
    if "best_val_epoch" in out and length:
        # fit_verdict counts only the finite points of the curve: map its index back to an epoch
        finite = np.flatnonzero(np.isfinite(mean_curve["val_loss"]))
        out["best_val_epoch"] = int(recs[0]["history"]["epoch"][finite[out["best_val_epoch"]]])
    if faults.get("one_class") is not None:
        out["verdict"] = ONE_CLASS
    elif faults.get("constant_features"):
        out["verdict"] = "underfit"
        out["constant_features"] = True
    out.update(counts)
    out["weight_norms"] = _mean_per_layer(r["extra"]["weight_norms"] for r in recs)
    out["sparsity"] = _mean_per_layer(r["extra"]["sparsity"] for r in recs)
    if dataset.task != "regression":
        # each split has its own test part: the ensemble of a split's members, averaged over the splits
        by_split: dict[int, list] = {}
        for r in recs:
            by_split.setdefault(r.get("split", 0), []).append(r["extra"]["test_proba"])
        scores = []
        for k in sorted(by_split):
            proba = np.array(by_split[k], dtype=float)
            if not (len(proba) and np.isfinite(proba).all()):
                break
            scores.append(float(stats.ensemble_accuracy(proba, dataset.for_split(k).y_test)))
        else:
            if scores:
                out["ensemble_accuracy"] = scores[0] if len(scores) == 1 else float(np.mean(scores))
                out["mean_member_accuracy"] = test
    return out


def _score(record, key) -> float:
    """A record's metric; NaN for a diverged member (no score) or one that is missing."""
    if record["diverged"]:
        return float("nan")
    value = record["metrics"].get(key)
    return float("nan") if value is None else float(value)


def _per_pair(recs: dict, runs, key) -> np.ndarray:
    """``key`` of the records ``recs`` (by (split, seed)) for each (split, seed) of ``runs``; NaN where missing."""
    return np.array([_score(recs[pair], key) if pair in recs else np.nan for pair in runs], dtype=float)


CORRECTED_TEST = "corrected resampled t-test (Nadeau & Bengio 2003)"


def rows_ratio(dataset) -> float:
    """``n_test / n_train`` of the corrected resampled t-test: the mean over the dataset's splits of
    its test rows over the rows the models train on (the validation part carved from the training
    part is not trained on)."""
    parts = dataset.splits or [dataset]
    return float(np.mean([len(d.X_test) / len(d.X_train) for d in parts]))


def _all_diverged(row) -> bool:
    return bool(row.get("runs")) and row.get("diverged", 0) == row["runs"]


def _mean(values) -> float:
    """The mean of the finite values, NaN (and no warning) when there are none."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")


def _column_means(matrix: np.ndarray) -> np.ndarray:
    """Per column, the mean of its finite values; NaN (and no warning) for a column with none."""
    ok = np.isfinite(matrix)
    count = ok.sum(axis=0)
    total = np.where(ok, matrix, 0.0).sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _mean_per_layer(dicts) -> dict:
    values: dict = {}
    for d in dicts:
        for layer, entries in d.items():
            for k, v in entries.items():
                values.setdefault(layer, {}).setdefault(k, []).append(v)
    return {layer: {k: _mean_keeping_inf(v) for k, v in d.items()} for layer, d in values.items()}


def _mean_keeping_inf(values) -> float:
    """The mean without the NaN values: a norm that overflowed float32 shows as inf, not as missing."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def _data_faults(dataset) -> dict:
    """What about the training data keeps every model from learning: every feature constant, or a
    single class (classification)."""
    faults = {}
    X = np.asarray(dataset.X_train)
    flat = X.reshape(len(X), -1)
    if len(flat) > 1 and flat.shape[1] and bool(np.all(flat == flat[:1])):
        faults["constant_features"] = True
    if dataset.task != "regression" and len(dataset.y_train):
        present = np.unique(np.asarray(dataset.y_train))
        if present.size == 1:
            faults["one_class"] = int(present[0])
    return faults


def _warnings(faults, rows, dataset) -> list[str]:
    """One line per fault the whole study shares: the reader sees why every verdict looks the way it does."""
    info = dataset.info or {}
    split = info.get("split")
    where = f"the training split ({split})" if split else "the training split"
    out = []
    if "one_class" in faults:
        classes = info.get("class_names") or info.get("classes")
        label = classes[faults["one_class"]] if classes and faults["one_class"] < len(classes) else faults["one_class"]
        out.append(f"{where} holds a single class ({label!r}): every model learns to predict that class, so no "
                   f"variant can be judged; shuffle the rows or use test_fraction instead of train")
    if faults.get("constant_features"):
        prior = "the mean target" if dataset.task == "regression" else "the class prior"
        out.append(f"every feature is constant in {where}: the models can learn only {prior} (underfit); "
                   f"check the feature columns")
    total = sum(r.get("runs", 0) for r in rows)
    diverged = sum(r.get("diverged", 0) for r in rows)
    if total and diverged == total:
        out.append(f"every member diverged ({diverged}/{total}): the loss became NaN or infinite; lower the "
                   f"learning rate or the penalty strengths")
    return out


def from_store(store, name: str) -> StudyRun:
    """Rebuild a study's run from the database alone (for status, export and reports)."""
    row = store.study(name)
    if row is None:
        raise S.StudyError(f"no study {name!r} in the database; `reglab list` shows what is there.")
    study = S.from_dict(row["spec"])
    records = [r for r in store.results(row["id"]) if r.get("split", 0) < study.splits]
    study.seeds = sorted({r["seed"] for r in records}) or study.seeds   # the store keeps no seed count
    if study.protocol == "grid":
        known = {v.key for v in study.variants}
        extra = sorted({r["params"]["value"] for r in records if r["config_key"] not in known and "value" in r["params"]})
        if extra:
            study.variants += S.grid_variants(study, {"value": extra}, only=[{"value": v} for v in extra])
            study.variants.sort(key=lambda v: v.params.get("value", -1.0))
    dataset = data_mod.load(S.stored_data(study.data), base_dir=study.base_dir, splits=study.splits)
    keys = {v.key for v in study.variants}
    records = [r for r in records if r["config_key"] in keys]
    return StudyRun(study, dataset, records, summarize(study, records, dataset))
