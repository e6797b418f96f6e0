"""Check a study against its data before anything trains: load the data, build every variant's
model once, and refuse (one :class:`reglab.study.spec.StudyError` line) what cannot run -- a monitor
the task does not log, labels the objective cannot take, token ids outside an Embedding, a model
the data does not fit or the population engine cannot train -- before the store is touched."""

from __future__ import annotations

import torch
from torch import nn

from .. import data as data_mod
from ..tasks import get as get_task
from ..training import as_tensors, check_dtype, wants_integers
from ..population import check_population
from . import spec as S


def prepare(study: S.Study):
    """Load the data and build every variant's model once, so that a study that cannot run is
    rejected before anything is written. With several splits the dataset returned is split 0 and
    ``dataset.splits`` holds every split's (:meth:`reglab.data.Dataset.for_split`)."""
    dataset = data_mod.load(study.data, base_dir=study.base_dir, splits=study.splits)
    classes = len(dataset.info["classes"]) if dataset.task == "multiclass" else None
    build = S.builder(study, tuple(dataset.X_train.shape[1:]), dataset.task, classes=classes)
    task = get_task(dataset.task)
    metric = task.metric
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
        try:
            check_dtype(model, f"variants.{v.name}: the model")
        except TypeError as exc:
            raise S.StudyError(str(exc)) from None
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
            check_population(model, sample)   # the model built above: stacked copies, it is not changed
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
