import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from sklearn.datasets import make_circles, make_moons

from reglab.data import DataError, Dataset, load


def write(tmp_path, text, name="data.csv"):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def csv_spec(path, **extra):
    return {"name": "csv", "path": str(path), "label": "y", **extra}


def fails(spec, *fragments, base_dir=None):
    """Assert load(spec) raises a one-line DataError whose message holds every fragment."""
    with pytest.raises(DataError) as caught:
        load(spec, base_dir=base_dir)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def two_class_csv(tmp_path, n=20, name="data.csv"):
    rows = "".join(f"{i},{i * 0.5},{i % 2}\n" for i in range(n))
    return write(tmp_path, "x1,x2,y\n" + rows, name)


# ------------------------------------------------------------------------------------------ built-ins


# train_shape: the training part before the validation part (20 % of it, the default for every
# dataset but the seeds' generators) is carved from it; val_rows: None when the test part validates
@pytest.mark.parametrize("spec, task, train_shape, val_rows, test_shape", [
    ({"name": "moons"}, "binary", (30, 2), None, (70, 2)),
    ({"name": "circles"}, "binary", (30, 2), None, (70, 2)),
    ({"name": "breast_cancer"}, "binary", (398, 30), 80, (171, 30)),
    ({"name": "wine"}, "multiclass", (124, 13), 25, (54, 13)),
    ({"name": "iris"}, "multiclass", (105, 4), 21, (45, 4)),
    ({"name": "digits"}, "multiclass", (1257, 64), 252, (540, 64)),
    ({"name": "digits", "shape": "image"}, "multiclass", (1257, 1, 8, 8), 252, (540, 1, 8, 8)),
    ({"name": "digits", "shape": "sequence"}, "multiclass", (1257, 8, 8), 252, (540, 8, 8)),
    ({"name": "diabetes"}, "regression", (309, 10), 62, (133, 10)),
])
def test_builtin_datasets_load_with_their_shapes_and_task(spec, task, train_shape, val_rows, test_shape):
    ds = load(spec)
    assert isinstance(ds, Dataset) and ds.task == task
    trained = train_shape[0] - (val_rows or 0)
    assert ds.X_train.shape == (trained, *train_shape[1:]) and ds.X_test.shape == test_shape
    assert ds.X_train.dtype == np.float32 and ds.X_test.dtype == np.float32
    assert ds.y_train.dtype == (np.float32 if task == "regression" else np.int64)
    assert len(ds.y_train) == trained and len(ds.y_test) == test_shape[0]
    assert np.isfinite(ds.X_train).all() and np.isfinite(ds.X_test).all()
    if val_rows is None:
        assert ds.X_val is None and ds.validation()[0] is ds.X_test and ds.validation()[1] is ds.y_test
        assert ds.optimistic and ds.info["validation_part"] == "test" and ds.info["optimistic"] is True
    else:
        assert ds.X_val.shape == (val_rows, *train_shape[1:]) and len(ds.y_val) == val_rows
        assert ds.validation()[0] is ds.X_val and ds.validation()[1] is ds.y_val
        assert not ds.optimistic and ds.info["validation_part"] == "carved" and ds.info["optimistic"] is False
    assert json.loads(json.dumps(ds.info)) == ds.info
    if task != "regression":
        assert set(np.unique(ds.y_train)) == set(range(len(ds.info["classes"])))


@pytest.mark.parametrize("name, make, params", [
    ("moons", make_moons, {"n_samples": 100, "noise": 0.2, "random_state": 1}),
    ("circles", make_circles, {"n_samples": 100, "noise": 0.1, "random_state": 1, "factor": 0.8}),
])
def test_generators_default_to_the_seeds_first_30_rows(name, make, params):
    X, y = make(**params)
    ds = load({"name": name})
    np.testing.assert_array_equal(ds.X_train, X[:30].astype(np.float32))
    np.testing.assert_array_equal(ds.y_train, y[:30])
    np.testing.assert_array_equal(ds.X_test, X[30:].astype(np.float32))
    np.testing.assert_array_equal(ds.y_test, y[30:])
    assert ds.info["standardized"] is False


def test_generator_parameters_are_passed_through():
    X, y = make_moons(n_samples=60, noise=0.3, random_state=7)
    ds = load({"name": "moons", "n_samples": 60, "noise": 0.3, "random_state": 7, "train": 40})
    np.testing.assert_array_equal(ds.X_train, X[:40].astype(np.float32))
    np.testing.assert_array_equal(ds.y_test, y[40:])
    X, _ = make_circles(n_samples=100, noise=0.1, random_state=1, factor=0.5)
    np.testing.assert_array_equal(load({"name": "circles", "factor": 0.5}).X_train, X[:30].astype(np.float32))


def test_digits_are_scaled_by_16_unless_standardized():
    flat = load({"name": "digits"})
    assert flat.X_train.min() == 0.0 and flat.X_train.max() == 1.0
    image = load({"name": "digits", "shape": "image"})
    np.testing.assert_array_equal(image.X_train.reshape(len(image.X_train), 64), flat.X_train)
    sequence = load({"name": "digits", "shape": "sequence"})
    np.testing.assert_array_equal(sequence.X_train[:, 2, :], flat.X_train[:, 16:24])   # step 2 = image row 2
    standardized = load({"name": "digits", "standardize": True})
    assert standardized.X_train.max() > 1.5 and np.isfinite(standardized.X_train).all()


# ------------------------------------------------------------------------------------------ splits


def imbalanced_csv(tmp_path, n=100, positives=20):
    rows = "".join(f"{i},{int(i < positives)}\n" for i in range(n))
    return write(tmp_path, "x,y\n" + rows)


def test_stratified_split_keeps_class_ratios(tmp_path):
    ds = load(csv_spec(imbalanced_csv(tmp_path), validation="test"))  # default test_fraction 0.3, stratified
    assert np.bincount(ds.y_train).tolist() == [56, 14]
    assert np.bincount(ds.y_test).tolist() == [24, 6]


def test_split_seed_reproduces_and_changes_the_split(tmp_path):
    path = imbalanced_csv(tmp_path)
    a, b = load(csv_spec(path, split_seed=3)), load(csv_spec(path, split_seed=3))
    c = load(csv_spec(path, split_seed=4))
    np.testing.assert_array_equal(a.X_train, b.X_train)
    assert not np.array_equal(a.X_train, c.X_train)


def test_first_n_split_keeps_file_order(tmp_path):
    ds = load(csv_spec(two_class_csv(tmp_path), train=12, standardize=False, validation="test"))
    np.testing.assert_array_equal(ds.X_train[:, 0], np.arange(12))
    np.testing.assert_array_equal(ds.X_test[:, 0], np.arange(12, 20))


def test_validation_is_carved_from_training_rows_stratified():
    full = load({"name": "iris", "standardize": False, "validation": "test"})
    ds = load({"name": "iris", "validation": 0.2, "standardize": False})
    np.testing.assert_array_equal(ds.X_test, full.X_test)
    assert len(ds.X_val) == 21 and len(ds.X_train) == 84
    assert np.bincount(ds.y_val).tolist() == [7, 7, 7]
    rows = lambda X: {tuple(r) for r in X}
    assert rows(ds.X_val) | rows(ds.X_train) == rows(full.X_train)
    X_val, y_val = ds.validation()
    assert X_val is ds.X_val and y_val is ds.y_val
    assert ds.info["shapes"]["val"] == [21, 4]


def test_validation_carving_works_after_a_first_n_split():
    ds = load({"name": "moons", "validation": 0.2})
    assert len(ds.X_train) == 24 and len(ds.X_val) == 6 and len(ds.X_test) == 70
    X, _ = make_moons(n_samples=100, noise=0.2, random_state=1)
    rows = lambda X: {tuple(r) for r in X}
    assert rows(ds.X_train) | rows(ds.X_val) == rows(X[:30].astype(np.float32))


# ------------------------------------------------------------------------------------------ standardisation


def test_standardization_uses_training_statistics_only(tmp_path):
    rows = "".join(f"{i},{i * i},7,{i % 2}\n" for i in range(40))
    ds = load(csv_spec(write(tmp_path, "a,b,const,y\n" + rows), train=20, validation="test"))
    np.testing.assert_allclose(ds.X_train[:, :2].mean(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(ds.X_train[:, :2].std(axis=0), 1, atol=1e-5)
    assert ds.X_test[:, 0].mean() > 2                                   # test rows 20..39 lie beyond train's range
    a = np.arange(40.0)
    np.testing.assert_allclose(ds.X_test[:, 0], (a[20:] - a[:20].mean()) / a[:20].std(), rtol=1e-5)
    assert np.isfinite(ds.X_train).all() and np.isfinite(ds.X_test).all()
    assert (ds.X_train[:, 2] == 0).all() and (ds.X_test[:, 2] == 0).all()   # constant column: std 0 -> divide by 1


def test_standardization_after_carving_fits_on_the_remaining_training_rows(tmp_path):
    ds = load(csv_spec(imbalanced_csv(tmp_path), validation=0.25))
    assert abs(float(ds.X_train.mean())) < 1e-5
    assert abs(float(ds.X_val.mean())) > 1e-3


def test_standardize_defaults_and_override():
    assert load({"name": "moons"}).info["standardized"] is False
    assert load({"name": "wine"}).info["standardized"] is True
    raw = load({"name": "wine", "standardize": False})
    assert raw.X_train.max() > 100                                       # proline is in the hundreds
    ds = load({"name": "moons", "standardize": True})
    np.testing.assert_allclose(ds.X_train.mean(axis=0), 0, atol=1e-6)


# ------------------------------------------------------------------------------------------ validation part
# Issue 14, part 4: user data validates on a part carved from the training rows, never on the test part,
# unless the study says validation = "test"; the seeds' generators keep validating on the test part.


def id_csv(tmp_path, n=100, classes=2, name="ids.csv", regression=False):
    """Rows whose first feature is the row id (to tell rows apart) and a label i % classes (or a float)."""
    label = (lambda i: f"{(i * 37 % 101) * 0.5 + 3:.1f}") if regression else (lambda i: str(i % classes))
    return write(tmp_path, "id,x,y\n" + "".join(f"{i},{(i * 7) % 13},{label(i)}\n" for i in range(n)), name)


def ids(X):
    return sorted(int(round(v)) for v in X[:, 0])


@pytest.mark.parametrize("classes, n", [(2, 100), (3, 90), (4, 57)])
def test_default_validation_is_a_stratified_fifth_of_the_training_part(tmp_path, classes, n):
    path = id_csv(tmp_path, n, classes)
    whole = load(csv_spec(path, standardize=False, validation="test"))          # the training part before carving
    ds = load(csv_spec(path, standardize=False))
    n_train = len(whole.X_train)
    assert len(ds.X_val) == math.ceil(0.2 * n_train) and len(ds.X_train) == n_train - len(ds.X_val)
    np.testing.assert_array_equal(ds.X_test, whole.X_test)                     # the test part is untouched
    train_counts, val_counts = np.bincount(whole.y_train), np.bincount(ds.y_val, minlength=classes)
    assert (np.abs(val_counts - 0.2 * train_counts) <= 1).all()                 # stratified
    assert ds.info["validation_part"] == "carved" and ds.info["optimistic"] is False and not ds.optimistic
    assert f"{len(ds.X_val)} rows carved from the training part (0.2, stratified, split_seed 0)" in ds.info["validation"]
    assert ds.info["shapes"]["val"] == [len(ds.X_val), 2]


def test_default_validation_of_a_regression_file_is_a_random_fifth(tmp_path):
    path = id_csv(tmp_path, 80, regression=True)
    whole = load(csv_spec(path, standardize=False, validation="test"))
    ds = load(csv_spec(path, standardize=False))
    assert ds.task == "regression" and len(whole.X_train) == 56
    assert len(ds.X_val) == 12 and len(ds.X_train) == 44
    assert "stratified" not in ds.info["validation"] and "12 rows carved" in ds.info["validation"]
    assert ids(ds.X_val) != list(range(min(ids(ds.X_val)), min(ids(ds.X_val)) + 12))   # shuffled, not a block


@pytest.mark.parametrize("spec", [{"test_fraction": 0.3}, {"train": 40}, {"test_fraction": 0.5, "stratify": False}])
def test_validation_rows_are_training_rows_that_are_not_trained_on(tmp_path, spec):
    path = id_csv(tmp_path, 100, 3)
    whole = load(csv_spec(path, standardize=False, validation="test", **spec))
    ds = load(csv_spec(path, standardize=False, **spec))
    train, val, test = set(ids(ds.X_train)), set(ids(ds.X_val)), set(ids(ds.X_test))
    assert not train & val and not val & test and not train & test
    assert train | val == set(ids(whole.X_train)) and test == set(ids(whole.X_test))
    assert len(train) + len(val) + len(test) == 100
    by_id = {int(round(x[0])): int(y) for x, y in zip(ds.X_val, ds.y_val)}     # labels travel with their rows
    assert all(label == i % 3 for i, label in by_id.items())


def test_validation_part_is_deterministic_for_a_split_seed(tmp_path):
    path = id_csv(tmp_path, 100, 2)
    a, b = load(csv_spec(path, split_seed=5)), load(csv_spec(path, split_seed=5))
    for part in ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, part), getattr(b, part))
    assert a.info == b.info
    c = load(csv_spec(path, split_seed=6))
    assert ids(c.X_val) != ids(a.X_val)
    iris = [load({"name": "iris"}) for _ in range(2)]                           # built-in sets too
    np.testing.assert_array_equal(iris[0].X_val, iris[1].X_val)


def test_validation_test_keeps_the_old_behaviour(tmp_path):
    for spec in ({"name": "iris"}, {"name": "diabetes", "standardize_target": False},
                 csv_spec(id_csv(tmp_path, 60, 2))):
        ds = load({**spec, "validation": "test"})
        fraction = load({**spec, "validation": "test", "test_fraction": 0.3})   # the test split is the same
        np.testing.assert_array_equal(ds.X_train, fraction.X_train)
        assert ds.X_val is None and ds.y_val is None and ds.optimistic
        X, y = ds.validation()
        assert X is ds.X_test and y is ds.y_test
        assert ds.info["validation_part"] == "test" and ds.info["optimistic"] is True
        assert ds.info["validation"].startswith('the test part (validation = "test")')
        assert "optimistic" in ds.info["validation"] and "val" not in ds.info["shapes"]


@pytest.mark.parametrize("name", ["moons", "circles"])
def test_the_seeds_generators_keep_validating_on_the_test_part(name):
    ds = load({"name": name})
    assert ds.X_val is None and ds.optimistic and ds.X_train.shape == (30, 2) and ds.X_test.shape == (70, 2)
    assert ds.info["validation"].startswith(f"the test part (the default for {name!r}, the seeds' protocol)")
    carved = load({"name": name, "validation": 0.2})                             # a carve is asked for explicitly
    assert len(carved.X_train) == 24 and len(carved.X_val) == 6 and not carved.optimistic


def test_too_small_training_parts_fall_back_and_say_so(tmp_path):
    # a class with a single training row: the default carve is not stratified (and says so)
    rows = "".join(f"{i},{0 if i < 8 else 1}\n" for i in range(8)) + "8,1\n9,1\n"
    ds = load(csv_spec(write(tmp_path, "x,y\n" + rows), train=9))
    assert len(ds.X_val) == 2 and len(ds.X_train) == 7
    assert "not stratified: a class has too few training rows" in ds.info["validation"]
    # a training part of one row: nothing to carve, the test part validates and the score is optimistic
    ds = load(csv_spec(write(tmp_path, "x,y\n0,0\n1,1\n2,0\n3,1\n"), train=1))
    assert ds.X_val is None and ds.optimistic and len(ds.X_train) == 1
    assert "too small to carve a validation part of 0.2" in ds.info["validation"]
    # asked for explicitly, a carve that cannot be made is refused (tests above: "training part of 4 rows")
    fails(csv_spec(write(tmp_path, "x,y\n0,0\n1,1\n2,0\n3,1\n"), train=1, validation=0.2),
          "training part of 1 rows", "validation = 0.2")


def test_standardization_fits_on_the_rows_trained_on_only(tmp_path):
    rows = "".join(f"{i},{(i * i) % 17},{i % 2}\n" for i in range(60))
    path = write(tmp_path, "a,b,y\n" + rows)
    raw = load(csv_spec(path, standardize=False))
    ds = load(csv_spec(path))
    mean, std = raw.X_train.astype(np.float64).mean(axis=0), raw.X_train.astype(np.float64).std(axis=0)
    for part in ("X_train", "X_val", "X_test"):
        np.testing.assert_allclose(getattr(ds, part), (getattr(raw, part) - mean) / std, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ds.X_train.mean(axis=0), 0, atol=1e-6)
    assert np.abs(ds.X_val.mean(axis=0)).max() > 1e-3                            # the validation rows did not fit it


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 80), classes=st.integers(0, 4), seed=st.integers(0, 5), first=st.one_of(st.none(), st.integers(1, 79)))
def test_the_default_carve_partitions_the_training_part(n, classes, seed, first):
    """Any file, any size: train, validation and test rows are disjoint and cover the file, the test
    part is the one validation = "test" gives, and what cannot be carved validates on the test part."""
    with tempfile.TemporaryDirectory() as folder:
        label = (lambda i: f"{i * 0.37:.2f}") if classes == 0 else (lambda i: str(i % max(classes, 2)))
        path = write(Path(folder), "id,y\n" + "".join(f"{i},{label(i)}\n" for i in range(n)))
        extra = {"split_seed": seed, "standardize": False, **({"train": first} if first is not None else {})}
        if classes == 0:
            extra["task"] = "regression"
        try:
            whole = load(csv_spec(path, validation="test", **extra))
        except DataError:
            return                                                               # too few rows for the split itself
        ds = load(csv_spec(path, **extra))
    train, test = set(ids(ds.X_train)), set(ids(ds.X_test))
    val = set() if ds.X_val is None else set(ids(ds.X_val))
    assert not train & val and not (train | val) & test and len(train) + len(val) + len(test) == n
    assert train | val == set(ids(whole.X_train)) and test == set(ids(whole.X_test))
    assert ds.optimistic == (ds.X_val is None) == (len(whole.X_train) < 2)
    if ds.task == "regression":
        raw_train = np.array(sorted(train), dtype=np.float64) * 0.37
        assert ds.target_scale[0] == pytest.approx(raw_train.mean(), abs=1e-2)


# ------------------------------------------------------------------------------------------ regression targets
# Issue 14, part 5: regression targets are standardised on the training part; metrics go back to their units.


def test_regression_targets_are_standardized_on_the_training_part():
    from sklearn.datasets import load_diabetes

    raw = load({"name": "diabetes", "standardize_target": False})
    ds = load({"name": "diabetes"})
    target = load_diabetes().target
    assert set(np.round(raw.y_train).astype(int)) <= set(np.round(target).astype(int))     # raw: original units
    mean, std = raw.y_train.astype(np.float64).mean(), raw.y_train.astype(np.float64).std()
    assert ds.target_scale == pytest.approx((mean, std)) and ds.info["target_scale"] == pytest.approx([mean, std])
    assert 140 < mean < 160 and 70 < std < 85                                    # diabetes progression scores
    assert ds.info["target_standardized"] is True and "original units" in ds.info["target_scaling"]
    assert raw.info["target_standardized"] is False and raw.target_scale is None and "target_scale" not in raw.info
    for part in ("y_train", "y_val", "y_test"):
        assert getattr(ds, part).dtype == np.float32
        np.testing.assert_allclose(getattr(ds, part), (getattr(raw, part) - mean) / std, rtol=1e-5, atol=1e-6)
    assert abs(float(ds.y_train.mean())) < 1e-5 and float(ds.y_train.std()) == pytest.approx(1, abs=1e-5)
    assert abs(float(ds.y_val.mean())) > 1e-3                                    # fitted without the validation rows
    np.testing.assert_allclose(ds.X_train, raw.X_train)                          # features: as before
    assert json.loads(json.dumps(ds.info)) == ds.info


def test_to_original_units_values_errors_and_squared_errors():
    ds = load({"name": "diabetes"})
    mean, std = ds.target_scale
    np.testing.assert_allclose(ds.to_original_units(ds.y_test), load({"name": "diabetes", "standardize_target": False}).y_test,
                               rtol=1e-5)
    assert ds.to_original_units(1.0) == pytest.approx(mean + std) and isinstance(ds.to_original_units(1.0), float)
    assert ds.to_original_units(0.5, "error") == pytest.approx(0.5 * std)
    assert ds.to_original_units(0.5, "squared") == pytest.approx(0.5 * std ** 2)
    assert ds.to_original_units([0.0, 2.0]).tolist() == pytest.approx([mean, mean + 2 * std])
    with pytest.raises(ValueError, match="'kind'"):
        ds.to_original_units(1.0, "abs")
    metrics = {"train_mae": 0.5, "test_mae": float("nan"), "test_loss": 0.25, "train_data_loss": 0.2, "penalty": 0.01,
               "train_accuracy": 0.9, "epochs": 3}
    out = ds.metrics_in_original_units(metrics)
    assert out["train_mae"] == pytest.approx(0.5 * std) and math.isnan(out["test_mae"])
    assert out["test_loss"] == pytest.approx(0.25 * std ** 2) and out["train_data_loss"] == pytest.approx(0.2 * std ** 2)
    assert out["penalty"] == pytest.approx(0.01 * std ** 2)
    assert out["train_accuracy"] == 0.9 and out["epochs"] == 3 and metrics["train_mae"] == 0.5   # a copy
    history = ds.metrics_in_original_units({"val_mae": [1.0, 0.5], "loss": [2.0], "epoch": [0, 1]})
    assert history == {"val_mae": pytest.approx([std, 0.5 * std]), "loss": pytest.approx([2 * std ** 2]), "epoch": [0, 1]}


def test_unscaled_targets_and_classes_are_left_in_their_units(tmp_path):
    iris = load({"name": "iris"})
    assert iris.target_scale is None and "target_scale" not in iris.info and "target_standardized" not in iris.info
    assert iris.to_original_units(0.25, "error") == 0.25 and iris.metrics_in_original_units({"test_mae": 2.0}) == {"test_mae": 2.0}
    assert load({"name": "iris", "standardize_target": True}).target_scale is None   # no target to scale: a no-op
    raw = load({"name": "diabetes", "standardize_target": False})
    assert raw.to_original_units(3.0) == 3.0 and raw.metrics_in_original_units({"test_mae": 2.0}) == {"test_mae": 2.0}
    const = load(csv_spec(write(tmp_path, "x,y\n" + "".join(f"{i},2.5\n" for i in range(20))), task="regression"))
    assert const.target_scale == (2.5, 1.0) and (const.y_train == 0).all()       # a constant target: std 0 -> 1
    fails({"name": "diabetes", "standardize_target": 1}, "'standardize_target'", "true or false")


def test_unit_kind_names_how_a_metric_scales():
    from reglab.data import unit_kind

    assert [unit_kind(k) for k in ("test_mae", "val_mae", "mae")] == ["error"] * 3
    assert [unit_kind(k) for k in ("loss", "val_loss", "test_data_loss", "penalty", "val_penalty")] == ["squared"] * 5
    assert [unit_kind(k) for k in ("test_accuracy", "epoch", "val_accuracy")] == [None] * 3


# ------------------------------------------------------------------------------------------ CSV


def test_csv_string_labels_map_in_sorted_order_and_features_subset(tmp_path):
    rows = "".join(f"{i},{-i},{i * 2},{['emu', 'cat', 'dog'][i % 3]}\n" for i in range(30))
    path = write(tmp_path, "a,b,c,y\n" + rows)
    ds = load(csv_spec(path, features=["c", "a"], train=21, standardize=False, validation="test"))
    assert ds.task == "multiclass" and ds.info["classes"] == ["cat", "dog", "emu"]
    assert ds.feature_names == ["c", "a"]
    np.testing.assert_array_equal(ds.X_train[:3], [[0, 0], [2, 1], [4, 2]])
    assert ds.y_train[:3].tolist() == [2, 0, 1]                          # emu, cat, dog


def test_csv_binary_labels_map_to_0_1_and_task_can_be_forced(tmp_path):
    rows = "".join(f"{i},{[3, 7][i % 2]}\n" for i in range(20))
    path = write(tmp_path, "x,y\n" + rows)
    ds = load(csv_spec(path, train=10, validation="test"))
    assert ds.task == "binary" and ds.info["classes"] == [3, 7]
    assert ds.y_train.tolist() == [0, 1] * 5
    assert load(csv_spec(path, task="multiclass")).task == "multiclass"


def test_csv_regression_delimiter_quotes_blank_lines_and_base_dir(tmp_path):
    text = 'x;"note";y\n\n' + "".join(f'{i};"a;b";{i * 0.25 + 0.1}\n' for i in range(20))
    write(tmp_path, text, "r.csv")
    ds = load({"name": "csv", "path": "r.csv", "label": "y", "features": ["x"], "delimiter": ";",
               "validation": "test", "standardize_target": False}, base_dir=tmp_path)
    assert ds.task == "regression" and ds.y_train.dtype == np.float32
    assert "classes" not in ds.info and ds.info["rows"] == 20
    np.testing.assert_allclose(np.sort(np.concatenate([ds.y_train, ds.y_test])), np.arange(20) * 0.25 + 0.1, rtol=1e-6)


def test_csv_categorical_columns_are_one_hot_in_place_and_not_standardized(tmp_path):
    cities = ["rome", "oslo", "paris", "oslo"]
    rows = "".join(f"{i},{cities[i % 4]},{i * 2.5},{i % 2}\n" for i in range(40))
    path = write(tmp_path, "age,city,income,y\n" + rows)
    ds = load(csv_spec(path, categorical=["city"], train=30, validation="test"))
    assert ds.feature_names == ["age", "city=oslo", "city=paris", "city=rome", "income"]   # sorted, where city stood
    onehot = ds.X_train[:, 1:4]
    expected = [[c == name for name in ("oslo", "paris", "rome")] for c in (cities[i % 4] for i in range(30))]
    np.testing.assert_array_equal(onehot, np.array(expected, dtype=np.float32))     # 0/1, one per row
    np.testing.assert_allclose(ds.X_train[:, [0, 4]].mean(axis=0), 0, atol=1e-6)   # the numeric ones standardized
    assert "one-hot columns kept 0/1" in ds.info["scaling"]
    raw = load(csv_spec(path, categorical=["city"], features=["city"], standardize=False, train=30, validation="test"))
    assert raw.feature_names == ["city=oslo", "city=paris", "city=rome"] and raw.X_train.dtype == np.int64


def test_csv_categorical_errors(tmp_path):
    rows = [f"{i},{['a', 'b'][i % 2]},{i % 2}" for i in range(20)]
    path = write(tmp_path, "x,c,y\n" + "\n".join(rows) + "\n")
    fails(csv_spec(path), "row 1", "column 'c'", "'a' is not a number", "list the column in `categorical`")
    fails(csv_spec(path, categorical=["k"]), "`categorical` lists 'k', which is not a feature column", "'x', 'c'")
    fails(csv_spec(path, categorical=["c", "c"]), "`categorical` lists 'c' twice")
    fails(csv_spec(path, categorical="c"), "'categorical'", "a non-empty list of column names")
    rows[3] = "3,,1"
    fails(csv_spec(write(tmp_path, "x,c,y\n" + "\n".join(rows) + "\n"), categorical=["c"]),
          "row 4", "column 'c'", "the cell is empty", "a category of its own")


def test_npz_happy_paths(tmp_path):
    X = np.arange(120, dtype=np.float64).reshape(20, 2, 3)
    np.savez(tmp_path / "a.npz", X=X, y=np.array(["no", "yes"] * 10))
    ds = load({"name": "npz", "path": "a.npz", "train": 10, "standardize": False, "validation": "test"},
              base_dir=tmp_path)
    assert ds.task == "binary" and ds.info["classes"] == ["no", "yes"] and ds.X_train.shape == (10, 2, 3)
    np.testing.assert_array_equal(ds.X_train, X[:10].astype(np.float32))
    np.savez(tmp_path / "b.npz", X=np.random.default_rng(0).normal(size=(30, 4)), y=np.linspace(0, 1, 30)[:, None])
    reg = load({"name": "npz", "path": str(tmp_path / "b.npz")})
    assert reg.task == "regression" and reg.y_train.shape == (16,) and reg.y_val.shape == (5,)   # 21 - 20 %
    np.testing.assert_allclose(reg.X_train.mean(axis=0), 0, atol=1e-6)


# ------------------------------------------------------------------------------------------ malformed input


def test_missing_file(tmp_path):
    fails({"name": "csv", "path": "nope.csv", "label": "y"}, "nope.csv", "not found", str(tmp_path), base_dir=tmp_path)
    fails({"name": "npz", "path": str(tmp_path)}, "not a file")


def test_unknown_dataset_name_and_keys():
    fails({"name": "breast-cancer"}, "'breast-cancer'", "did you mean 'breast_cancer'")
    fails({"name": "moons", "test_fracton": 0.2}, "'test_fracton'", "did you mean 'test_fraction'")
    fails({"name": "moons", "shape": "image"}, "'shape'", "digits")
    fails({"name": "wine", "noise": 0.1}, "'noise'", "moons, circles")
    fails({"name": "moons", "train": "30"}, "'train'", "an int >= 1", "'30'")
    fails({"name": "moons", "train": 20, "test_fraction": 0.3}, "'train'", "'test_fraction'")
    fails({"name": "digits", "shape": "images"}, "'images'", "did you mean 'image'")
    fails({"name": "iris", "task": "multi"}, "'multi'", "multiclass")
    fails({"name": "iris", "validation": 1.5}, "'validation'")
    fails({"task": "binary"}, "needs name")
    fails({"name": "csv", "label": "y"}, "needs path")


def test_missing_label_key_and_column(tmp_path):
    path = two_class_csv(tmp_path)
    fails({"name": "csv", "path": str(path)}, "data.csv", "label", "'x1', 'x2', 'y'")
    fails(csv_spec(path, label="Y"), "data.csv", "'Y'", "did you mean 'y'", "'x1', 'x2', 'y'")


def test_requested_feature_missing_or_the_label(tmp_path):
    path = two_class_csv(tmp_path)
    fails(csv_spec(path, features=["x1", "x3"]), "data.csv", "'x3'", "`features`")
    fails(csv_spec(path, features=["x1", "y"]), "data.csv", "'y'", "label")


@pytest.mark.parametrize("cell, words", [
    ("abc", ["'abc' is not a number"]),
    ("", ["empty"]),
    ("nan", ["NaN"]),
    ("inf", ["infinite"]),
    ("-1e300", ["float32"]),
])
def test_bad_cells_name_row_and_column(tmp_path, cell, words):
    rows = [f"{i},{i},{i % 2}" for i in range(20)]
    rows[6] = f"6,{cell},0"
    path = write(tmp_path, "x1,x2,y\n" + "\n".join(rows) + "\n")
    fails(csv_spec(path), "data.csv", "row 7", "line 8", "column 'x2'", *words)


def test_bad_labels_name_the_row(tmp_path):
    rows = [f"{i},{i % 2}" for i in range(20)]
    rows[4] = "4,"
    fails(csv_spec(write(tmp_path, "x,y\n" + "\n".join(rows))), "row 5", "column 'y'", "label is empty")
    rows[4] = "4,nan"
    fails(csv_spec(write(tmp_path, "x,y\n" + "\n".join(rows))), "row 5", "column 'y'", "NaN")


def test_single_class(tmp_path):
    path = write(tmp_path, "x,y\n" + "".join(f"{i},1\n" for i in range(20)))
    fails(csv_spec(path), "data.csv", "column 'y'", "single class")
    np.savez(tmp_path / "one.npz", X=np.zeros((10, 2)), y=np.zeros(10, dtype=int))
    fails({"name": "npz", "path": str(tmp_path / "one.npz")}, "one.npz", "single class")


def test_training_part_with_a_single_class_loads(tmp_path):
    # not refused: the study trains and its summary says "one class in training" (tests/test_faults.py)
    rows = "".join(f"{i},{int(i >= 10)}\n" for i in range(20))
    ds = load(csv_spec(write(tmp_path, "x,y\n" + rows), train=10, validation="test"))
    assert ds.task == "binary" and ds.y_train.tolist() == [0] * 10 and sorted(set(ds.y_test.tolist())) == [1]
    carved = load(csv_spec(write(tmp_path, "x,y\n" + rows), train=10))      # the default carves 2 of the 10
    assert carved.y_train.tolist() == [0] * 8 and carved.y_val.tolist() == [0] * 2


def test_too_few_rows_for_the_split(tmp_path):
    path = write(tmp_path, "x,y\n" + "".join(f"{i},{i % 3}\n" for i in range(6)))
    fails(csv_spec(path), "data.csv", "stratified over 3 classes", "needs at least 7 rows", "there are 6")
    assert len(load(csv_spec(write(tmp_path, "x,y\n" + "".join(f"{i},{i % 3}\n" for i in range(7))))).X_test) == 3
    fails(csv_spec(write(tmp_path, "x,y\n1,0.5\n")), "data.csv", "needs at least 2 rows", "there are 1")
    fails({"name": "moons", "n_samples": 20}, "train = 30", "at least 31 rows", "there are 20")
    fails(csv_spec(two_class_csv(tmp_path, n=20), train=30), "data.csv", "at least 31 rows")
    fails(csv_spec(two_class_csv(tmp_path, n=10), train=4, validation=0.9), "training part of 4 rows",
          "validation = 0.9", "at least 20 rows")


def test_class_with_one_row_cannot_be_stratified(tmp_path):
    rows = "".join(f"{i},{'a' if i else 'b'}\n" for i in range(20))
    path = write(tmp_path, "x,y\n" + rows)
    fails(csv_spec(path), "data.csv", "class 'b' has only 1 row", "stratify = false")
    assert len(load(csv_spec(path, stratify=False, split_seed=1)).X_test) == 6


def test_label_that_does_not_fit_the_task(tmp_path):
    rows = [f"{i},{i % 3}" for i in range(20)]
    rows[8] = "8,0.5"
    fails(csv_spec(write(tmp_path, "x,y\n" + "\n".join(rows)), task="multiclass"),
          "row 9", "column 'y'", "0.5 is not an integer class label", "regression")
    rows[8] = "8,cat"
    fails(csv_spec(write(tmp_path, "x,y\n" + "\n".join(rows)), task="regression"),
          "row 9", "'cat' is not a number", "regression")
    rows[8] = "8,2"
    fails(csv_spec(write(tmp_path, "x,y\n" + "\n".join(rows)), task="binary"), "exactly 2 classes", "3")
    fails({"name": "iris", "task": "binary"}, "dataset 'iris'", "exactly 2 classes")
    fails(csv_spec(write(tmp_path, "x,y\n" + "".join(f"{i},{i * 0.1}\n" for i in range(20))), stratify=True),
          "stratify", "regression")


def test_many_integer_labels_are_ambiguous(tmp_path):
    path = write(tmp_path, "x,y\n" + "".join(f"{i},{i * 3}\n" for i in range(100)))
    fails(csv_spec(path), "data.csv", "100 distinct integer values", 'task = "regression"')
    assert load(csv_spec(path, task="regression")).task == "regression"


def test_empty_header_only_and_garbage_files(tmp_path):
    fails(csv_spec(write(tmp_path, "", "empty.csv")), "empty.csv", "empty")
    fails(csv_spec(write(tmp_path, "  \n\n", "blank.csv")), "blank.csv", "empty")
    fails(csv_spec(write(tmp_path, "x,y\n", "head.csv")), "head.csv", "no data rows")
    fails(csv_spec(write(tmp_path, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "img.csv")), "img.csv", "binary")
    latin = write(tmp_path, "x,y\n1,caf\xe9\n".encode("latin-1"), "latin.csv")
    fails(csv_spec(latin), "latin.csv", "UTF-8", "line 2", "offset 9")


def test_wrong_delimiter_is_detected(tmp_path):
    path = write(tmp_path, "x1;x2;y\n" + "".join(f"{i};{i};{i % 2}\n" for i in range(20)))
    fails(csv_spec(path), "data.csv", "one column", "delimiter = ';'")
    assert load(csv_spec(path, delimiter=";", validation="test")).X_train.shape == (14, 2)


def test_rows_with_wrong_field_count_and_bad_headers(tmp_path):
    rows = [f"{i},{i},{i % 2}" for i in range(20)]
    rows[2] = "2,2"
    fails(csv_spec(write(tmp_path, "x1,x2,y\n" + "\n".join(rows))), "row 3", "2 fields", "header has 3")
    fails(csv_spec(write(tmp_path, "x,x,y\n1,2,0\n")), "column 'x' twice")
    fails(csv_spec(write(tmp_path, "x,,y\n1,2,0\n")), "column 2", "no name")
    fails(csv_spec(write(tmp_path, "1,2,0\n3,4,1\n")), "no label column 'y'", "add a header row")
    fails(csv_spec(write(tmp_path, "y\n1\n0\n")), "no feature columns")


def test_npz_problems(tmp_path):
    np.savez(tmp_path / "noy.npz", X=np.zeros((10, 2)), labels=np.zeros(10))
    fails({"name": "npz", "path": str(tmp_path / "noy.npz")}, "noy.npz", "no array 'y'", "labels")
    np.savez(tmp_path / "len.npz", X=np.zeros((10, 2)), y=np.arange(9) % 2)
    fails({"name": "npz", "path": str(tmp_path / "len.npz")}, "len.npz", "X has 10 rows but y has 9")
    np.save(tmp_path / "one.npy", np.zeros(3))
    fails({"name": "npz", "path": str(tmp_path / "one.npy")}, "one.npy", "single array")
    write(tmp_path, "X,y\n1,2\n", "text.npz")
    fails({"name": "npz", "path": str(tmp_path / "text.npz")}, "text.npz", "not a NumPy .npz")
    np.savez(tmp_path / "obj.npz", X=np.array([[1, "a"]], dtype=object), y=np.zeros(1))
    fails({"name": "npz", "path": str(tmp_path / "obj.npz")}, "obj.npz", "cannot be read")
    X = np.ones((10, 2))
    X[3, 1] = np.nan
    np.savez(tmp_path / "nan.npz", X=X, y=np.arange(10) % 2)
    fails({"name": "npz", "path": str(tmp_path / "nan.npz")}, "nan.npz", "X[3, 1]", "NaN")
    np.savez(tmp_path / "flat.npz", X=np.ones(10), y=np.arange(10) % 2)
    fails({"name": "npz", "path": str(tmp_path / "flat.npz")}, "flat.npz", "reshape(-1, 1)")


# ------------------------------------------------------------------------------------------ fuzzing


_CSV_CHARS = st.sampled_from(list("0123456789.,;-+eExyab \n\"'") + ["nan", "inf", "\r\n", "\t", "é"])
_JUNK = st.tuples(st.sampled_from(["", "x,y\n", "x,a,y\n", "x;y\n"]),
                  st.one_of(st.text(max_size=200), st.lists(_CSV_CHARS, max_size=120).map("".join)))
_NUMBER = st.one_of(st.integers(-3, 3).map(str), st.floats(-1e3, 1e3).map(repr))
_CELL = st.one_of(_NUMBER, _NUMBER, _NUMBER, st.floats().map(repr),
                  st.sampled_from(["", "abc", "nan", " 1 ", '"2"', "1e39", "-inf", "0x1"]))
_LABEL = st.one_of(st.sampled_from(["0", "1", "a", "b"]), st.sampled_from(["2", "1.0", "0.5", "", "nan", "x"]))


def _tables(cell, label):
    """CSV text with header x[,a],y and rows of the given cells."""
    return st.integers(1, 2).flatmap(lambda width: st.lists(
        st.tuples(st.lists(cell, min_size=width, max_size=width), label), min_size=1, max_size=40).map(
        lambda rows: ",".join(["x", "a"][:width] + ["y"]) + "\n" + "".join(",".join([*c, y]) + "\n" for c, y in rows)))


_SPECS = st.fixed_dictionaries({}, optional={
    "train": st.integers(1, 12), "task": st.sampled_from(["binary", "multiclass", "regression"]),
    "validation": st.sampled_from([0.2, 0.5]), "delimiter": st.sampled_from([",", ";"]),
    "features": st.sampled_from([["x"], ["x", "a"]]), "stratify": st.booleans()})


@settings(max_examples=100, deadline=None)
@given(content=st.one_of(_JUNK.map("".join), st.binary(max_size=100), _tables(_CELL, _LABEL),
                         _tables(_NUMBER, st.sampled_from(["0", "1", "a", "b"]))), extra=_SPECS)
def test_fuzzed_csv_loads_or_raises_data_error(content, extra):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.csv"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        try:
            ds = load(csv_spec(path, **extra))
        except DataError as e:
            assert "\n" not in str(e) and str(e)
        else:
            assert np.isfinite(ds.X_train).all() and np.isfinite(ds.X_test).all()
            assert len(ds.X_train) + len(ds.X_test) + (0 if ds.X_val is None else len(ds.X_val)) == ds.info["rows"]
