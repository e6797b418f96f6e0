"""Variance from the data split (issue 14, part 6): `splits = K` runs every (variant, split, seed),
pairs the runs by (split, seed) and tests with Nadeau and Bengio's corrected resampled t-test.

The statistics against a NumPy/SciPy computation of the formula and a small Monte-Carlo of its
type-I error; the data splits (shuffle and K-fold, each split standardised on its own training
rows); a tiny study through reglab.study.run and through the CLI, resumed after an interruption;
user errors (exit 2, one line, nothing written); one-split studies and older databases unchanged.
"""

from __future__ import annotations

import csv
import io
import math
import sqlite3

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats as sp

from reglab import data, stats
from reglab import store as store_module
from reglab.cli import main
from reglab.store import MIGRATIONS, Store
from reglab.study import load, run
from reglab.study import runner, train
from reglab.study import spec as S

pytestmark = pytest.mark.usefixtures("one_thread")

STUDY = """\
name = "{name}"
seeds = 2
{top}
[data]
name = "moons"
test_fraction = 0.7
{data}
[model]
layers = ["Dense(8, input_dim=2, activation='relu')", "Dense(1, activation='sigmoid')"]

[training]
epochs = 4

[variants.none]

[variants.l2]
layers = {{ 0 = {{ kernel_regularizer = "l2(0.1)" }} }}
"""


def study_text(name="tiny", top="", data_lines=""):
    return STUDY.format(name=name, top=top, data=data_lines)


def write(folder, text, file="study.toml"):
    path = folder / file
    path.write_text(text, encoding="utf-8")
    return path


def close(a, b):
    """Deep equality where floats may differ by rounding and NaN equals NaN."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (sorted(a), sorted(b))
        for key in a:
            close(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            close(x, y)
    elif isinstance(a, float) or isinstance(b, float):
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-9, abs=1e-12), (a, b)
    else:
        assert a == b, (a, b)


def tasks_of(records):
    return sorted((r["variant"], r.get("split", 0), r["seed"]) for r in records)


# --------------------------------------------------------------------------------------- statistics


def corrected(d, ratio):
    """Nadeau & Bengio's corrected resampled t-test, written out from the paper's formula."""
    d = np.asarray(d, dtype=float)
    J = d.size
    sem = math.sqrt((1 / J + ratio) * d.var(ddof=1))
    t = d.mean() / sem
    q = sp.t.ppf(0.975, J - 1)
    return {"t": t, "sem": sem, "p": 2 * sp.t.sf(abs(t), J - 1), "ci": (d.mean() - q * sem, d.mean() + q * sem),
            "p_better": sp.t.cdf(t, J - 1), "mde": (q + sp.t.ppf(0.8, J - 1)) * sem}


def test_the_corrected_test_is_nadeau_and_bengios_formula():
    variant = np.array([0.81, 0.79, 0.86, 0.84, 0.80, 0.83, 0.88, 0.78, 0.82])   # 3 splits x 3 seeds
    baseline = np.array([0.80, 0.77, 0.82, 0.83, 0.80, 0.79, 0.85, 0.79, 0.80])
    ratio = 45 / 84
    got = stats.paired(variant, baseline, test_train_ratio=ratio)
    want = corrected(variant - baseline, ratio)
    assert got["n"] == 9 and got["test_train_ratio"] == ratio
    assert got["mean_diff"] == pytest.approx(np.mean(variant - baseline), rel=1e-12)
    assert got["p_value"] == pytest.approx(want["p"], rel=1e-10)
    assert (got["ci_low"], got["ci_high"]) == pytest.approx(want["ci"], rel=1e-10)
    assert got["p_better"] == pytest.approx(want["p_better"], rel=1e-10)
    assert got["mde"] == pytest.approx(want["mde"], rel=1e-10)
    # lower is better: P(better) flips, the test does not
    lower = stats.paired(variant, baseline, higher_is_better=False, test_train_ratio=ratio)
    assert lower["p_better"] == pytest.approx(1 - want["p_better"], rel=1e-10)
    assert lower["p_value"] == got["p_value"]
    # the correction only widens: larger p, wider interval than the plain paired t-test
    plain = stats.paired(variant, baseline)
    assert plain["p_value"] == pytest.approx(sp.ttest_rel(variant, baseline).pvalue, rel=1e-10)
    assert got["p_value"] > plain["p_value"] and got["ci_high"] - got["ci_low"] > plain["ci_high"] - plain["ci_low"]
    # the per-variant interval of the test score: the same corrected standard error
    d = stats.describe(variant, test_train_ratio=ratio)
    sem = math.sqrt((1 / 9 + ratio) * variant.var(ddof=1))
    assert d["sem"] == pytest.approx(sem, rel=1e-12)
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((variant.mean() - sp.t.ppf(0.975, 8) * sem,
                                                         variant.mean() + sp.t.ppf(0.975, 8) * sem), rel=1e-12)


def test_without_a_ratio_everything_is_the_plain_paired_t_test():
    v, b = [0.90, 0.88, 0.93, 0.91, 0.92], [0.85, 0.86, 0.88, 0.90, 0.87]
    assert stats.paired(v, b, test_train_ratio=None) == stats.paired(v, b)
    assert stats.describe(v, test_train_ratio=None) == stats.describe(v)
    assert "test_train_ratio" not in stats.paired(v, b)
    zero = stats.paired(v, b, test_train_ratio=0.0)   # no overlap correction: the same numbers
    for key in ("ci_low", "ci_high", "p_value", "p_better", "mde"):
        assert zero[key] == pytest.approx(stats.paired(v, b)[key], rel=1e-12)
    # no spread: the exact sign-flip p-value, over the independent pairs the correction implies
    assert stats.paired([0.9, 0.9, 0.9], [0.8, 0.8, 0.8], test_train_ratio=0.0)["p_value"] == 2 / 2**3
    same = stats.paired([0.9, 0.9, 0.9], [0.8, 0.8, 0.8], test_train_ratio=0.5)
    assert same["p_value"] == pytest.approx(2.0 ** (1 - 1 / (1 / 3 + 0.5)))      # 1.2 independent pairs: 0.87
    assert same["p_better"] == 1.0 and same["mde"] == 0.0


@pytest.mark.parametrize("ratio, error", [(-0.1, ValueError), (math.inf, ValueError), (math.nan, ValueError),
                                          ("0.5", TypeError), (True, TypeError)])
def test_a_bad_ratio_is_refused(ratio, error):
    with pytest.raises(error, match="test_train_ratio"):
        stats.paired([1.0, 2.0], [0.0, 0.5], test_train_ratio=ratio)
    with pytest.raises(error, match="test_train_ratio"):
        stats.describe([1.0, 2.0], test_train_ratio=ratio)


def test_overlapping_training_sets_inflate_the_plain_tests_type_one_error_but_not_the_corrected_one():
    """Two learners with the same true error (least squares on x1 or on x2 alone, y = x1 + x2 +
    noise: symmetric), compared over K = 10 random splits of one data set of 60 rows: the
    differences share the data set, so the plain paired t-test rejects the true null far more than
    5% of the time; the corrected resampled t-test stays near 5%."""
    rng = np.random.default_rng(0)
    repeats, rows, splits, n_test = 300, 60, 10, 18
    rejected = {"plain": 0, "corrected": 0}
    for _ in range(repeats):
        X = rng.normal(size=(rows, 2))
        y = X[:, 0] + X[:, 1] + rng.normal(size=rows)
        d = np.empty(splits)
        for k in range(splits):
            order = rng.permutation(rows)
            test, train = order[:n_test], order[n_test:]
            errors = []
            for j in (0, 1):
                slope = X[train, j] @ y[train] / (X[train, j] @ X[train, j])
                errors.append(np.mean((y[test] - slope * X[test, j]) ** 2))
            d[k] = errors[0] - errors[1]
        zeros = np.zeros(splits)
        rejected["plain"] += stats.paired(d, zeros)["p_value"] < 0.05
        rejected["corrected"] += stats.paired(d, zeros, test_train_ratio=n_test / (rows - n_test))["p_value"] < 0.05
    plain, fixed = rejected["plain"] / repeats, rejected["corrected"] / repeats
    assert plain > 0.2, plain                 # measured 0.37 (0.35-0.37 over other seeds)
    assert 0.02 <= fixed <= 0.09, fixed       # measured 0.05 (0.047-0.067 over other seeds)


# --------------------------------------------------------------------------------------------- data


def test_shuffled_splits_are_the_one_split_drawn_with_split_seed_plus_k():
    one = data.load({"name": "iris"})
    three = data.load({"name": "iris"}, splits=3)
    assert three.splits[0] is three and len(three.splits) == 3 and three.for_split(2) is three.splits[2]
    for k, part in enumerate(three.splits):
        alone = data.load({"name": "iris", "split_seed": k})
        for a, b in ((part.X_train, alone.X_train), (part.X_val, alone.X_val), (part.X_test, alone.X_test),
                     (part.y_train, alone.y_train), (part.y_test, alone.y_test)):
            np.testing.assert_array_equal(a, b)
        assert part.info["split_index"] == k and part.info["splits"] == 3 and part.info["cv"] == "shuffle"
        assert part.info["split"].startswith(f"split {k} of 3: shuffled (split_seed {k}), stratified")
        # standardised on its own training rows
        np.testing.assert_allclose(part.X_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_array_equal(one.X_test, three.X_test)
    assert "splits" not in one.info and one.splits is None and one.for_split(0) is one
    with pytest.raises(ValueError, match="no split 1"):
        one.for_split(1)
    assert not np.array_equal(three.splits[0].X_test, three.splits[1].X_test)


def test_kfold_tests_every_row_once_and_carves_validation_per_fold():
    spec = {"name": "wine", "cv": "kfold", "standardize": False}
    folds = data.load(spec, splits=4)
    raw = data.load({"name": "wine", "standardize": False})
    everything = np.concatenate([raw.X_train, raw.X_val, raw.X_test])
    tested = np.concatenate([f.X_test for f in folds.splits])
    assert len(tested) == len(everything) == 178
    assert sorted(map(tuple, tested)) == sorted(map(tuple, everything))   # each row tests exactly once
    for k, fold in enumerate(folds.splits):
        assert len(fold.X_train) + len(fold.X_val) + len(fold.X_test) == 178
        assert fold.X_val is not None and not fold.optimistic
        assert fold.info["split"].startswith(f"split {k} of 4: fold {k} of a 4-fold partition tests")
        # stratified: every class in every fold's test part
        assert set(np.unique(fold.y_test)) == {0, 1, 2}


def test_the_first_n_protocol_draws_n_training_rows_per_split():
    one = data.load({"name": "moons"})
    three = data.load({"name": "moons"}, splits=3)
    assert one.info["split"] == "first 30 rows train, remaining 70 test"
    for k, part in enumerate(three.splits):
        assert part.X_train.shape == (30, 2) and part.X_test.shape == (70, 2)
        assert np.bincount(part.y_train).tolist() == [15, 15]     # stratified
        assert part.info["split"].startswith(f"split {k} of 3: 30 rows drawn to train (split_seed {k}")
        assert part.optimistic          # the generators' protocol: the test part validates
    assert not np.array_equal(three.splits[0].X_train, three.splits[1].X_train)


@pytest.mark.parametrize("spec, splits, match", [
    ({"name": "iris", "cv": "kfold"}, 51, "class 0 has only 50 rows; lower splits to at most 50"),
    ({"name": "iris", "cv": "kfold"}, 1, "needs at least 2 splits"),
    ({"name": "iris", "cv": "kfold", "test_fraction": 0.2}, 3, "remove 'test_fraction'"),
    ({"name": "moons", "cv": "kfold", "train": 30}, 3, "remove 'train'"),
    ({"name": "iris", "cv": "loo"}, 3, "is not a known cv"),
    ({"name": "iris"}, 0, "splits must be an int from 1 to 1000"),
    ({"name": "iris"}, True, "splits must be an int from 1 to 1000"),
])
def test_data_errors_are_one_line(spec, splits, match):
    with pytest.raises(data.DataError, match=match) as info:
        data.load(spec, splits=splits)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """The tiny study with one split and with three, run through reglab.study.run into one database."""
    folder = tmp_path_factory.mktemp("splits")
    db = folder / "reglab.db"
    one = write(folder, study_text("one"), "one.toml")
    three = write(folder, study_text("three", top="splits = 3"), "three.toml")
    with Store(db) as store:
        first = run(load(one), store)
        second = run(load(three), store)
    return {"folder": folder, "db": db, "one": one, "three": three, "run1": first, "run3": second}


def test_a_study_of_three_splits_trains_every_variant_split_and_seed_once(studies):
    result = studies["run3"]
    assert result.study.splits == 3 and result.trained == 12
    assert tasks_of(result.records) == [(v, k, s) for v in ("l2", "none") for k in range(3) for s in range(2)]
    assert all(("split" in r) == (r.get("split", 0) != 0) for r in result.records)   # split 0 has no key
    with Store(studies["db"]) as store:
        sid = store.study("three")["id"]
        saved = store.results(sid)
        assert tasks_of(saved) == tasks_of(result.records)
        assert len(store.done_keys(sid, splits=True)) == 12
        assert store.done_keys(sid) == {(r["config_key"], r["seed"]) for r in saved if not r.get("split")}
        assert store.study("three")["spec"]["splits"] == 3 and store.study("three")["spec"]["data"]["cv"] == "shuffle"
    # split 0 is the one split: its members are the one-split study's members
    one = {(r["variant"], r["seed"]): r["metrics"] for r in studies["run1"].records}
    for r in result.records:
        if not r.get("split"):
            close(r["metrics"], one[(r["variant"], r["seed"])])


def test_the_summary_pairs_by_split_and_seed_with_the_corrected_test(studies):
    result = studies["run3"]
    s = result.summary
    ratio = 70 / 30   # moons with test_fraction = 0.7: 30 rows train, 70 test (validation: the test part)
    assert s["splits"] == 3 and s["seeds"] == 2 and s["cv"] == "shuffle"
    assert s["test_train_ratio"] == pytest.approx(ratio)
    assert s["significance_test"].startswith("corrected resampled t-test")
    pairs = [(k, seed) for k in range(3) for seed in range(2)]

    def scores(variant, key="test_accuracy"):
        by = {(r.get("split", 0), r["seed"]): r["metrics"][key] for r in result.records if r["variant"] == variant}
        return np.array([by[p] for p in pairs])

    none, l2 = (next(r for r in s["rows"] if r["variant"] == n) for n in ("none", "l2"))
    assert none["n"] == l2["n"] == 6 and none["runs"] == 6
    close(none["test"], stats.describe(scores("none"), test_train_ratio=s["test_train_ratio"]))
    close(none["train"], stats.describe(scores("none", "train_accuracy")))
    close(l2["paired"], stats.paired(scores("l2"), scores("none"), test_train_ratio=s["test_train_ratio"]))
    want = corrected(scores("l2") - scores("none"), ratio)
    if math.isfinite(want["p"]):
        assert l2["paired"]["p_value"] == pytest.approx(want["p"], rel=1e-9)
    assert l2["p_holm"] == l2["paired"]["p_value"] and l2["verdict"] == stats.verdict(l2["paired"], l2["p_holm"])
    # the one-split study's summary is as before: no split keys, the plain paired t-test
    s1 = studies["run1"].summary
    assert not {"splits", "cv", "significance_test", "test_train_ratio"} & set(s1)
    assert "test_train_ratio" not in next(r for r in s1["rows"] if r["variant"] == "l2")["paired"]
    # the console text says what is counted and which test
    from reglab.study import text

    out = text.console(s)
    assert out.splitlines()[0] == "== three (compare, 3 splits × 2 seeds, metric: accuracy) =="
    assert "note: runs paired by (split, seed) over 3 splits × 2 seeds (cv = \"shuffle\")" in out
    assert "corrected resampled t-test (Nadeau & Bengio 2003), n_test/n_train = 2.33" in out
    assert "split" not in text.console(s1)


def test_from_store_rebuilds_the_same_summary(studies):
    with Store(studies["db"]) as store:
        rebuilt = runner.from_store(store, "three")
    assert rebuilt.study.splits == 3 and len(rebuilt.dataset.splits) == 3
    close(rebuilt.summary, studies["run3"].summary)


def test_a_dataset_of_another_split_count_is_refused(studies):
    one_split = data.load({"name": "moons", "test_fraction": 0.7})
    with pytest.raises(ValueError, match="the dataset has 1 train/test split.s. but the study has splits = 3"):
        run(load(studies["three"]), dataset=one_split)


class StopAfter:
    """An executor that trains ``n`` tasks, then is interrupted (as Ctrl-C would)."""

    chunks = 1

    def __init__(self, n):
        self.n = n

    def map(self, study, dataset, tasks, progress=None):
        for i, task in enumerate(tasks):
            if i == self.n:
                raise KeyboardInterrupt
            yield task, train.execute(study, dataset, task, progress)


def test_an_interrupted_study_resumes_without_training_a_saved_split_and_seed_again(studies, tmp_path):
    db = tmp_path / "resume.db"
    path = studies["three"]
    with Store(db) as store, pytest.raises(KeyboardInterrupt):
        run(load(path), store, executor=StopAfter(2), task_size=2)
    with Store(db) as store:
        before = store.results(store.study("three")["id"])
    assert len(before) == 4 and len(set(tasks_of(before))) == 4
    with Store(db) as store:
        resumed = run(load(path), store, task_size=2)
        after = store.results(store.study("three")["id"])
    assert resumed.trained == 8 and len(after) == 12
    assert after[:4] == before                              # the saved ones were not trained again
    assert tasks_of(after) == tasks_of(studies["run3"].records)   # every (variant, split, seed) once
    uninterrupted = {(r["variant"], r.get("split", 0), r["seed"]): r["metrics"] for r in studies["run3"].records}
    for r in after:
        close(r["metrics"], uninterrupted[(r["variant"], r.get("split", 0), r["seed"])])
    close(resumed.summary, studies["run3"].summary)


def test_a_one_split_study_keeps_its_definition_and_keys(studies, tmp_path):
    text = study_text("one")
    plain = load(write(tmp_path, text, "a.toml"))
    explicit = load(write(tmp_path, text.replace("seeds = 2\n", "seeds = 2\nsplits = 1\n")
                          .replace("test_fraction = 0.7\n", "test_fraction = 0.7\ncv = \"shuffle\"\n"), "b.toml"))
    assert explicit.splits == 1 and explicit.data["cv"] == "shuffle"
    assert explicit.as_dict() == plain.as_dict() and "splits" not in plain.as_dict()
    assert [v.key for v in explicit.variants] == [v.key for v in plain.variants]
    assert all("split" not in r for r in studies["run1"].records)
    with Store(studies["db"]) as store:
        again = run(explicit, store)          # the same stored study: resumed, nothing trained
    assert again.trained == 0
    close(again.summary, studies["run1"].summary)


def test_a_database_from_before_splits_is_migrated_and_resumed(studies, tmp_path, monkeypatch):
    """A database written before the split column (schema 3) gains it, every row as split 0; its
    one-split study resumes without training and gives the same numbers."""
    old = tmp_path / "old.db"
    source = sqlite3.connect(studies["db"])
    (sid, spec), = source.execute("SELECT id, spec FROM studies WHERE name = 'one'").fetchall()
    columns = "config_key, seed, variant, params, metrics, epochs_run, diverged, history, extra, saved"
    rows = source.execute(f"SELECT {columns} FROM results WHERE study_id = ? ORDER BY id", (sid,)).fetchall()
    source.close()
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS[:3])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", 3)
    import json

    with Store(old) as store:
        old_id = store.open_study("one", json.loads(spec))
    con = sqlite3.connect(old, isolation_level=None)
    assert "split" not in {row[1] for row in con.execute("PRAGMA table_info(results)")}
    con.executemany(f"INSERT INTO results (study_id, {columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(old_id, *row) for row in rows])
    con.close()
    monkeypatch.undo()
    with Store(old) as store:
        assert store.done_keys(old_id) == {(r["config_key"], r["seed"]) for r in studies["run1"].records}
        resumed = run(load(studies["one"]), store)
        assert store.results(old_id) == runner_results(studies["db"], "one")
    assert resumed.trained == 0
    close(resumed.summary, studies["run1"].summary)
    con = sqlite3.connect(old)
    assert con.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert con.execute("SELECT DISTINCT split FROM results").fetchall() == [(0,)]
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    con.close()
    with Store(old) as store:   # the key now includes the split: (key, split 1, seed 0) is a new task
        record = {**store.results(old_id)[0], "split": 1}
        assert store.save(old_id, [record]) == 1 and store.save(old_id, [record]) == 0
        assert (record["config_key"], 1, record["seed"]) in store.done_keys(old_id, splits=True)


def runner_results(db, name):
    with Store(db) as store:
        return store.results(store.study(name)["id"])


def test_kfold_on_iris_runs_each_fold_once(tmp_path):
    text = """\
name = "folds"
seeds = 1
splits = 3
[data]
name = "iris"
cv = "kfold"
[model]
layers = ["Dense(8, input_dim=4, activation='relu')", "Dense(3, activation='softmax')"]
[training]
epochs = 2
"""
    result = run(load(write(tmp_path, text)))
    assert tasks_of(result.records) == [("none", k, 0) for k in range(3)]
    folds = result.dataset.splits
    assert result.summary["test_train_ratio"] == pytest.approx(np.mean([len(f.X_test) / len(f.X_train) for f in folds]))
    assert result.summary["cv"] == "kfold" and result.summary["rows"][0]["n"] == 3
    assert {len(f.X_test) for f in folds} == {50}


def test_until_clear_adds_seeds_on_every_split(tmp_path):
    text = study_text("clear", top="splits = 2").replace("l2(0.1)", "l2(1e-12)").replace("epochs = 4", "epochs = 2")
    said = []
    with Store(tmp_path / "c.db") as store:
        result = run(load(write(tmp_path, text)), store, until_clear=4, echo=said.append)
    assert any(line.startswith("until clear: 1 comparison(s) unclear over 2 splits × 2 seeds") for line in said)
    assert tasks_of(result.records) == [(v, k, s) for v in ("l2", "none") for k in range(2) for s in range(4)]
    assert result.summary["seeds"] == 4 and result.summary["rows"][1]["n"] == 8


# ---------------------------------------------------------------------------------------------- CLI


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_the_cli_runs_resumes_reports_and_exports_a_study_of_splits(tmp_path):
    study, db = write(tmp_path, study_text("cli", top="splits = 3")), tmp_path / "s.db"
    result = invoke("run", study, "--db", db)
    assert result.exit_code == 0, (result.output, result.exception)
    assert "== cli (compare, 3 splits × 2 seeds, metric: accuracy) ==" in result.stdout
    assert "corrected resampled t-test (Nadeau & Bengio 2003)" in result.stdout
    assert "12 members trained, 0 from" in result.stdout
    again = invoke("run", study, "--db", db)
    assert again.exit_code == 0 and "0 members trained, 12 from" in again.stdout
    status = invoke("status", "cli", "--db", db)
    assert status.exit_code == 0
    assert status.stdout.splitlines()[0] == "cli: 12 of 12 results over the 3 splits × 2 seed(s) run so far"
    assert [line.split()[-1] for line in status.stdout.splitlines()[1:]] == ["6/6", "6/6"]
    exported = invoke("export", "cli", "--db", db, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert len(rows) == 12 and list(rows[0])[:4] == ["variant", "params", "split", "seed"]
    assert sorted((r["variant"], int(r["split"]), int(r["seed"])) for r in rows) == \
        [(v, k, s) for v in ("l2", "none") for k in range(3) for s in range(2)]
    report = invoke("report", "cli", "--db", db, "--out", tmp_path / "report")
    assert report.exit_code == 0, (report.output, report.exception)
    page = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
    assert "3 splits × 2 seeds" in page and "Nadeau and Bengio" in page
    assert "3 splits × 2 seeds" in (tmp_path / "report" / "summary.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("top, data_lines, message", [
    ("splits = 0", "", "study: 'splits' must be an int from 1 to 1000 (the number of train/test splits; 1 = one "
                       "split). Got 0."),
    ("splits = \"3\"", "", "study: 'splits' must be an int from 1 to 1000"),
    ("splits = 2.5", "", "study: 'splits' must be an int from 1 to 1000"),
    ("splits = true", "", "study: 'splits' must be an int from 1 to 1000"),
    ("splits = 1001", "", "study: 'splits' must be an int from 1 to 1000"),
    ("splits = 3", "cv = \"loo\"", "data.cv must be \"shuffle\" (K stratified random splits) or \"kfold\""),
    ("", "cv = \"kfold\"", "data.cv = \"kfold\" needs splits >= 2 (the number of folds)"),
    ("splits = 3", "cv = \"kfold\"", "data.test_fraction does not apply with cv = \"kfold\""),
    ("splits = 51", "cv = \"kfold\"", "class 0 has only 50 rows; lower splits to at most 50"),
])
def test_user_errors_are_one_line_exit_2_and_write_nothing(tmp_path, top, data_lines, message):
    text = study_text("bad", top=top, data_lines=data_lines)
    if "kfold" in data_lines and "51" in top:
        text = text.replace("test_fraction = 0.7\n", "")
    study, db = write(tmp_path, text), tmp_path / "bad.db"
    result = invoke("run", study, "--db", db)
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert not db.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["study.toml"]
    if "kfold" not in data_lines or "51" not in top:
        with pytest.raises(S.StudyError, match="splits|cv"):
            load(study)
