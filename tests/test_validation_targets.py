"""Issue 14, parts 4 and 5, through a study run: early stopping and the grid look at a validation part
carved from the training rows (not the test part), and regression targets are standardised on the
training part, so a penalty means the same on every dataset, with MAE back in the target's units."""

import numpy as np
import pytest
import torch

from reglab.data import load as load_data
from reglab.study import records, runner, train
from reglab.study import spec as S
from reglab.training import evaluate

pytestmark = pytest.mark.usefixtures("one_thread")

L2 = {"layers": {"0": {"kernel_regularizer": "l2(0.01)"}, "1": {"kernel_regularizer": "l2(0.01)"}}}


def diabetes_study(**data):
    return S.from_dict({"name": "diabetes", "seeds": 2, "data": {"name": "diabetes", **data},
                        "model": {"layers": ["Dense(32, activation='relu')", "Dense(1)"]},
                        "training": {"epochs": 60, "lr": 0.01}, "variants": {"none": {}, "l2": L2}})


def kernel_norm(run_, variant, seed):
    record = next(r for r in run_.records if r["variant"] == variant and r["seed"] == seed)
    return record["extra"]["weight_norms"]["0"]["l2"]


def test_a_strong_l2_changes_the_fit_on_diabetes_now_that_targets_are_standardized():
    # Raw targets (MSE in the thousands): l2(0.01) is lost beside the data loss and changes nothing.
    raw = runner.run(diabetes_study(standardize_target=False))
    # Standardised targets (MSE about 1): the same penalty shrinks the hidden kernel to well under half.
    scaled = runner.run(diabetes_study())
    for seed in (0, 1):
        unchanged = kernel_norm(raw, "l2", seed) / kernel_norm(raw, "none", seed)
        shrunk = kernel_norm(scaled, "l2", seed) / kernel_norm(scaled, "none", seed)
        assert 0.97 < unchanged < 1.03, unchanged
        assert shrunk < 0.6, shrunk
    assert scaled.dataset.target_scale is not None and raw.dataset.target_scale is None


def trained_models(monkeypatch, study, dataset):
    """Run ``study`` and return its records and the trained model of every record."""
    models, record = {}, records.record

    def spy(variant, seed, i, result, ds, *rest):
        models[(variant.name, int(seed))] = result.models[i]
        return record(variant, seed, i, result, ds, *rest)

    monkeypatch.setattr(records, "record", spy)
    return runner.run(study, dataset=dataset).records, models


def by_hand(model, dataset, raw, part="test"):
    """MAE and MSE of ``model`` on a part, in the target's units, from its predictions."""
    mean, std = dataset.target_scale
    with torch.no_grad():
        out = model.eval()(torch.as_tensor(getattr(dataset, f"X_{part}"))).numpy()
    pred = out[:, 0].astype(np.float64) * std + mean
    error = pred - getattr(raw, f"y_{part}").astype(np.float64)
    return float(np.abs(error).mean()), float((error ** 2).mean()), pred


@pytest.fixture(scope="module")
def diabetes_trained():
    """The diabetes study trained once for the tests below: (dataset, raw targets, records, models)."""
    study = diabetes_study()
    dataset = load_data(study.data)
    raw = load_data({**study.data, "standardize_target": False})
    with pytest.MonkeyPatch.context() as patch:
        records, models = trained_models(patch, study, dataset)
    return dataset, raw, records, models


def test_mae_in_original_units_matches_a_hand_computation(diabetes_trained):
    dataset, raw, records, models = diabetes_trained
    for r in records:
        model = models[(r["variant"], r["seed"])]
        mae, mse, _ = by_hand(model, dataset, raw)
        assert 35 < mae < 80                                                   # diabetes progression units
        scaled = evaluate(model, (dataset.X_test, dataset.y_test), task="regression")
        assert dataset.to_original_units(scaled["mae"], "error") == pytest.approx(mae, rel=1e-4)
        assert dataset.to_original_units(scaled["data_loss"], "squared") == pytest.approx(mse, rel=1e-4)
        converted = dataset.metrics_in_original_units({"test_mae": scaled["mae"], "test_data_loss": scaled["data_loss"]})
        assert converted == {"test_mae": pytest.approx(mae, rel=1e-4), "test_data_loss": pytest.approx(mse, rel=1e-4)}


def test_the_records_report_mae_in_original_units(diabetes_trained):
    dataset, raw, records, models = diabetes_trained
    for r in records:
        model = models[(r["variant"], r["seed"])]
        mae, mse, pred = by_hand(model, dataset, raw)
        assert r["metrics"]["test_mae"] == pytest.approx(mae, rel=1e-4)
        assert r["metrics"]["test_data_loss"] == pytest.approx(mse, rel=1e-4)
        assert r["metrics"]["train_mae"] == pytest.approx(by_hand(model, dataset, raw, "train")[0], rel=1e-4)
        assert r["metrics"]["val_mae"] == pytest.approx(by_hand(model, dataset, raw, "val")[0], rel=1e-4)
        np.testing.assert_allclose(np.asarray(r["extra"]["test_proba"], dtype=float).reshape(-1), pred, atol=1e-3)


def csv_study(tmp_path, validation=None):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 2))
    y = (X[:, 0] + 0.5 * rng.normal(size=120) > 0).astype(int)
    (tmp_path / "d.csv").write_text("a,b,y\n" + "".join(f"{a:.4f},{b:.4f},{c}\n" for (a, b), c in zip(X, y)))
    data = {"name": "csv", "path": "d.csv", "label": "y", **({"validation": validation} if validation else {})}
    return S.from_dict({"name": "es", "seeds": 2, "data": data,
                        "model": {"layers": ["Dense(8, activation='relu')", "Dense(1, activation='sigmoid')"]},
                        "training": {"epochs": 30, "early_stopping": {"monitor": "val_loss", "patience": 3}},
                        "variants": {"none": {}}}, base_dir=tmp_path)


@pytest.mark.parametrize("validation", [None, "test"])
def test_early_stopping_watches_the_carved_part_unless_the_study_says_test(tmp_path, monkeypatch, validation):
    seen, train_population = [], train.train_population

    def spy(*args, **kwargs):
        seen.append((kwargs["train"], kwargs["validation"]))
        return train_population(*args, **kwargs)

    monkeypatch.setattr(train, "train_population", spy)
    study = csv_study(tmp_path, validation)
    result = runner.run(study)
    ds = result.dataset
    (fit_on, watched), = seen
    assert fit_on[0] is ds.X_train
    if validation is None:                                                     # the default: a carved part
        assert watched[0] is ds.X_val and len(ds.X_val) == 17 and len(ds.X_train) == 67
        rows = lambda X: {tuple(r) for r in X.tolist()}
        assert not rows(ds.X_val) & rows(ds.X_train) and not rows(ds.X_val) & rows(ds.X_test)
        assert S.optimism_note(study, ds) is None
    else:                                                                      # the study asked for the test part
        assert watched[0] is ds.X_test and ds.X_val is None and ds.optimistic
        assert "stopped training" in S.optimism_note(study, ds)
    assert all(r["epochs_run"] <= 30 for r in result.records)
