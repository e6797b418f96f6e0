"""Train one job: a group of variants × seeds as one ``train_population`` call.

:class:`TrainingSettings` turns a group's ``[training]`` tables into ``train_population``'s keyword
arguments; :func:`train_group` is the one way a study trains (the local and Dask executors, through
:func:`execute`, and the report's decision-boundary figure call it); :class:`LocalExecutor` runs
jobs in this process, cut by time (:mod:`reglab.study.sizing`).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, fields

from ..callbacks import EarlyStopping
from ..population import train_population
from . import spec as S
from .jobs import Job
from .records import in_split, records_of


@dataclass(frozen=True)
class TrainingSettings:
    """A group's ``[training]`` settings as ``train_population`` takes them: the shared ones from the
    group's first variant, the per-member ones (:data:`reglab.study.jobs.PER_MEMBER`) one per variant.
    Defaults are a study's: 100 epochs, the Keras preset, the device ``"auto"``."""

    epochs: int = 100
    batch_size: int | None = None
    optimizer: str | None = None
    lr: tuple = ()
    weight_decay: float | None = None
    momentum: float = 0.0
    label_smoothing: tuple = ()
    class_weight: tuple = ()
    clipnorm: float | None = None
    clipvalue: float | None = None
    global_clipnorm: float | None = None
    schedule: dict | None = None
    mixup: dict | None = None
    ema: dict | None = None
    swa: dict | None = None
    preset: str | None = "keras"
    early_stopping: dict | None = None
    device: str = "auto"

    @classmethod
    def of(cls, variants) -> "TrainingSettings":
        """The settings of ``variants``, one group (same :func:`reglab.study.jobs.group_key`)."""
        training = variants[0].training
        shared = {f.name: training[f.name] for f in fields(cls) if f.name in training}
        return cls(**{**shared, "lr": tuple(v.training.get("lr") for v in variants),
                      "label_smoothing": tuple(v.training.get("label_smoothing", 0.0) for v in variants),
                      "class_weight": tuple(v.training.get("class_weight") for v in variants)})

    def population_options(self) -> dict:
        """The keyword arguments of ``train_population``."""
        options = {f.name: getattr(self, f.name) for f in fields(self)}
        options.update(lr=list(self.lr), label_smoothing=list(self.label_smoothing),
                       class_weight=list(self.class_weight),
                       early_stopping=EarlyStopping(**self.early_stopping) if self.early_stopping else None)
        return options


def execute(study: S.Study, dataset, task: Job, progress=None, threads: int | None = None,
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
    records = records_of(result, vs, dataset, study)
    if save_models is not None:
        from .saved import save_members

        save_members(save_models, study, dataset, task.split, vs, result, records)
    return [in_split(r, task.split) for r in records] if task.split else records


def train_group(study: S.Study, dataset, variants: list, seeds, *, progress=None, threads: int | None = None,
                callbacks=()):
    """Train ``variants`` (one :func:`group_key`) × ``seeds`` on ``dataset`` as one population call:
    the one way a study trains, used by :func:`execute` (so the local and Dask executors) and the
    report's decision-boundary figure (which retrains a seed's members)."""
    build = S.builder(study, tuple(dataset.X_train.shape[1:]), dataset.task)
    return train_population(
        build, [{"variant": v.name} for v in variants], list(seeds), train=(dataset.X_train, dataset.y_train),
        validation=dataset.validation(), task=dataset.task, progress=progress, threads=threads,
        sample_weight=dataset.w_train, callbacks=list(callbacks), **TrainingSettings.of(variants).population_options())


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
            epochs = epochs_of(study, task)
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


def epochs_of(study, job: Job) -> int:
    """The epochs ``job`` trains (its variants share them)."""
    variant = next(v for v in study.variants if v.name == job.variants[0])
    return TrainingSettings.of([variant]).epochs
