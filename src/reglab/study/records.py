"""What the store keeps of a trained member: its scores on the train, validation and test parts,
its learning curves (at most ``HISTORY_POINTS`` epochs), weight norms, activation sparsity, test
predictions and the code that rebuilds it."""

from __future__ import annotations

import numpy as np

from .. import diagnose
from . import spec as S
from .snippet import variant_snippet

HISTORY_POINTS = 500   # histories are kept at up to this many evenly spaced epochs
SUMMARY_HISTORY = ("val_loss", "epoch")   # all that summarize() reads of a learning curve


def slim(record: dict) -> dict:
    """``record`` with only the curves the summary reads (the store keeps the whole record)."""
    return {**record, "history": {k: v for k, v in record["history"].items() if k in SUMMARY_HISTORY}}


def _downsample(values: np.ndarray, epochs_run: int):
    values = values[:epochs_run]
    if epochs_run <= HISTORY_POINTS:
        idx = np.arange(epochs_run)
    else:
        idx = np.unique(np.linspace(0, epochs_run - 1, HISTORY_POINTS).round().astype(int))
    return idx, values[idx]


def scores_of(result, dataset) -> dict:
    """Every member's scores on the train, validation and test parts, evaluated as populations
    (:meth:`reglab.population.PopulationResult.evaluate_parts`), with the test outputs: part -> key -> (P,)."""
    parts = {"train": (dataset.X_train, dataset.y_train), "test": (dataset.X_test, dataset.y_test)}
    if dataset.X_val is not None:
        parts["val"] = dataset.validation()
    scores = result.evaluate_parts(parts, outputs=("test",))
    scores.setdefault("val", scores["test"])
    return scores


def record(variant: S.Variant, seed: int, i: int, result, dataset, study: S.Study, scores: dict) -> dict:
    """Member ``i`` of ``result`` as the store keeps it; ``scores``: :func:`scores_of` the result."""
    model = result.models[i]
    task = result.task
    metric = task.metric
    train_eval, val_eval, test_eval = ({k: float(v[i]) for k, v in scores[part].items() if k != "outputs"}
                                       for part in ("train", "val", "test"))
    epochs_run = int(result.epochs_run[i])
    history, idx = {}, None
    for key, values in result.history.items():
        idx, kept = _downsample(values[i], epochs_run)
        history[key] = [float(v) for v in kept]
    history["epoch"] = [int(e) for e in (idx if idx is not None else [])]
    out = scores["test"]["outputs"][i]
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


def records_of(result, variants, dataset, study: S.Study) -> list[dict]:
    """The records of a trained population ``result`` of ``variants`` (by config index)."""
    scores = scores_of(result, dataset)
    return [record(variants[m["config_index"]], m["seed"], i, result, dataset, study, scores)
            for i, m in enumerate(result.members)]


def in_split(record: dict, split: int) -> dict:
    """``record`` of train/test split ``split`` > 0, as the store gives it back (split 0 has no key)."""
    out = {}
    for key, value in record.items():
        out[key] = value
        if key == "seed":
            out["split"] = int(split)
    return out
