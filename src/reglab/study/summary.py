"""Summarise a study's records: per-variant statistics, paired comparisons to the baseline (Holm),
a diagnosis per variant, the grid's one-standard-error choice and the winner."""

from __future__ import annotations

from typing import TypedDict

import contextlib
import math

import numpy as np

from .. import diagnose, stats
from ..tasks import get as get_task
from . import spec as S
from .jobs import pairs


class Row(TypedDict, total=False):
    """One variant's line of a :class:`Summary`."""

    variant: str
    params: dict             # the grid point or the variant's table
    n: int                   # runs with a score (not diverged)
    train: dict              # stats.describe of the train scores: mean, sd, sem, ci_low, ci_high, ...
    test: dict               # the same of the test scores
    diverged: int            # runs whose loss became NaN/inf
    runs: int                # runs recorded
    epochs_run: float        # mean epochs trained (early stopping stops some sooner)
    paired: dict             # stats.paired against the baseline (every variant but the baseline)
    p_holm: float            # its p-value after the Holm correction
    verdict: str             # "better", "worse", "no clear difference", "diverged", ...
    diagnosis: dict          # diagnose.fit_verdict, weight norms, sparsity, ensemble accuracy


class Summary(TypedDict, total=False):
    """What :func:`summarize` returns, and the console, the HTML report, ``reglab show --json`` and
    the notebook read. A dict (it is written as JSON as it is) whose keys are all named here."""

    study: str
    question: str
    protocol: str            # "compare" or "grid"
    metric: str              # "accuracy" or "mae" (the task's metric)
    baseline: str
    seeds: int
    task: str                # "binary", "multiclass" or "regression"
    rows: list[Row]
    splits: int              # with several train/test splits only, with the next three
    cv: str
    significance_test: str
    test_train_ratio: float
    warnings: list[str]      # faults every verdict shares (one class, constant features, all diverged)
    optimistic: str          # why the test scores may be optimistic (chosen on the test part)
    grid: dict               # a one-parameter grid: stats.one_se_rule, strengths, chosen_on
    best: str                # the study's one best variant
    winner: str              # a variant better than the baseline after Holm, or else
    no_winner: str           # why there is none
    snippet: str             # the code of the winner


def summarize(study: S.Study, records: list, dataset) -> Summary:
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
    metric = get_task(dataset.task).metric
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


def refined_points(study, records, task) -> list[float]:
    """The strengths a one-parameter grid refines with: points spread over the decade around the best
    coarse strength (:func:`reglab.stats.choose_decade`) that the grid has not tried."""
    metric = get_task(task).metric
    strengths, scores = _grid_scores(study, records, metric)
    if len(strengths) < 2 or not np.isfinite(scores).any():   # every strength diverged: nothing to refine
        return []
    low, high = stats.choose_decade(strengths, scores, higher_is_better=metric == "accuracy")
    tried = set(strengths)
    return [v for v in stats.refine_grid(low, high, study.grid.get("refine_points", 5)) if v not in tried]


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
