"""reglab.Study: a study from a file, a dict or keyword arguments; its results, summary, diagnosis,
winner and snippet equal what `reglab run` computes; HTML display escapes user text; figures are
matplotlib Figures; resuming says so; user errors raise one StudyError."""

import math
import tomllib

import pandas as pd
import pytest
from click.testing import CliRunner
from matplotlib.figure import Figure

import reglab
from reglab.cli import main
from reglab.store import Store
from reglab.study import StudyError
from reglab.study import runner

pytestmark = pytest.mark.usefixtures("one_thread")

WEIRD = "<b>x</b>"   # a variant name is free text: the HTML must show it, escaped

STUDY = f"""\
name = "api-study"
question = "Does L2 help? <script>alert(1)</script>"
seeds = 3
baseline = "none"

[data]
name = "moons"
validation = "test"

[model]
layers = ["Dense(32, input_dim=2, activation='relu')", "Dense(1, activation='sigmoid')"]

[training]
epochs = 60

[variants.none]

[variants.l2]
layers = {{ 0 = {{ kernel_regularizer = "l2(0.001)" }} }}

[variants."{WEIRD}"]
layers = {{ 0 = {{ kernel_regularizer = "l2(1.0)" }} }}
"""

GRID = {"name": "api-grid", "protocol": "grid", "seeds": 3, "data": {"name": "moons", "validation": "test"},
        "model": {"layers": ["Dense(32, input_dim=2, activation='relu')", "Dense(1, activation='sigmoid')"]},
        "training": {"epochs": 40},
        "grid": {"variant": {"layers": {"0": {"kernel_regularizer": "l2({value})"}}}, "values": [1e-1, 1e-3],
                 "refine": False}}


@pytest.fixture(scope="module")
def study_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("study") / "api.toml"
    path.write_text(STUDY)
    return path


@pytest.fixture(scope="module")
def study(study_file):
    return reglab.Study(study_file).run()


@pytest.fixture(scope="module")
def grid():
    return reglab.Study(GRID).run()


def same(a, b) -> bool:
    """Equal, NaN equal to NaN, through nested dicts and lists."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def test_a_file_a_dict_and_keywords_give_the_same_study(study, study_file):
    raw = tomllib.loads(STUDY)
    from_dict = reglab.Study(raw).run()
    from_keywords = reglab.Study(**raw).run()
    for other in (from_dict, from_keywords):
        pd.testing.assert_frame_equal(other.results, study.results)
        pd.testing.assert_frame_equal(pd.DataFrame(other.summary), pd.DataFrame(study.summary))
        assert same(other.study_run.summary, study.study_run.summary)
    # keywords override a file: a scalar replaces, a table changes only the keys it names
    cut = reglab.Study(study_file, seeds=2, training={"batch_size": 16}, epochs=5)
    assert cut.definition.seeds == [0, 1]
    assert cut.definition.training == {"epochs": 5, "batch_size": 16}
    assert [v.name for v in cut.definition.variants] == ["none", "l2", WEIRD]


def test_the_frames_hold_what_reglab_run_computes(study, study_file, tmp_path):
    with Store(tmp_path / "cli.db") as store:
        run_ = runner.run(reglab.study.load(study_file), store)   # what `reglab run` calls
    assert same(study.study_run.summary, run_.summary)

    results = study.results
    assert results.shape == (3 * 3, 13)   # a compare study: no strength column
    assert list(results.columns[:2]) == ["variant", "seed"]
    assert {"train_accuracy", "val_accuracy", "test_accuracy", "train_loss", "test_loss", "epochs_run", "best_epoch",
            "stopped_epoch", "diverged"} <= set(results.columns)
    assert list(results["variant"]) == ["none"] * 3 + ["l2"] * 3 + [WEIRD] * 3
    by_key = {(r["variant"], r["seed"]): r for r in run_.records}
    for row in results.itertuples(index=False):
        record = by_key[(row.variant, row.seed)]
        assert row.test_accuracy == record["metrics"]["test_accuracy"]
        assert row.train_loss == record["metrics"]["train_loss"]
        assert row.epochs_run == record["epochs_run"] == 60

    summary = study.summary
    assert isinstance(summary, pd.DataFrame) and summary.shape[0] == 3
    assert list(summary.index) == ["none", "l2", WEIRD] and summary.index.name == "variant"
    assert {"n", "train_accuracy", "test_accuracy", "test_accuracy_std", "test_accuracy_ci_low",
            "test_accuracy_ci_high", "delta", "delta_ci_low", "delta_ci_high", "p_better", "p_holm", "verdict",
            "detectable", "fit"} <= set(summary.columns)
    for row in run_.summary["rows"]:
        line = summary.loc[row["variant"]]
        assert line["n"] == row["n"] == 3
        assert line["test_accuracy"] == row["test"]["mean"]
        assert same(float(line["test_accuracy_ci_low"]), row["test"]["ci_low"])
        assert line["fit"] == row["diagnosis"]["verdict"]
        if "paired" in row:
            assert same(float(line["delta"]), row["paired"]["mean_diff"])
            assert same(float(line["p_holm"]), row["p_holm"])
            assert line["verdict"].startswith(row["verdict"])
        else:
            assert line["verdict"] == "(baseline)" and math.isnan(line["delta"])
    assert summary.attrs["metric"] == "accuracy" and summary.attrs["baseline"] == "none"

    diagnosis = study.diagnosis
    assert list(diagnosis.index) == ["none", "l2", WEIRD]
    assert list(diagnosis["fit"]) == [r["diagnosis"]["verdict"] for r in run_.summary["rows"]]
    assert set(diagnosis.loc["none", "kernel_l2"]) == {"0", "2"}
    assert study.text.startswith("== api-study (compare, 3 seeds, metric: accuracy) ==")


def test_winner_and_snippet_are_the_clis(study, grid):
    for s in (study, grid):
        summary = s.study_run.summary
        assert s.winner == summary.get("winner")
        assert s.no_winner == summary.get("no_winner")
        assert s.best == summary.get("best")
        assert (s.winner is None) == (s.no_winner is not None)
        if s.winner is None:
            assert s.snippet is None
        else:
            assert s.snippet == summary["snippet"]
            assert "reglab.regularize(" in s.snippet and "reglab.fit(" in s.snippet


def test_a_winning_study_gives_the_winning_code():
    # a baseline that barely learns (lr 1e-5) against the same model at Adam's default rate with L2
    raw = tomllib.loads(STUDY)
    raw["variants"] = {"slow": {"training": {"lr": 1e-5}}, "l2": raw["variants"]["l2"]}
    study = reglab.Study(raw, name="api-winner", seeds=4, baseline="slow").run()
    assert study.winner == "l2", study.text
    assert study.summary.loc["l2", "verdict"] == "better"
    assert "kernel=reglab.L2(l2=0.001)" in study.snippet and "epochs=60" in study.snippet
    assert study.snippet in study.text
    html = study._repr_html_()
    assert "Winning configuration (l2), as PyTorch code" in html and "Winner: <b>l2</b>" in html


def test_html_display_escapes_user_text(study, study_file):
    pages = {"before": reglab.Study(study_file)._repr_html_(), "after": study._repr_html_(),
             "summary": study.summary._repr_html_()}
    for when, html in pages.items():
        assert WEIRD not in html and "<script>" not in html, when
        assert "&lt;b&gt;x&lt;/b&gt;" in html, when
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages["before"]
    assert "not run yet" in pages["before"] and "class=\"answer\"" not in pages["before"]
    for when in ("after", "summary"):
        html = pages[when]
        assert 'class="answer"' in html and "verdict" in html and "(baseline)" in html
        assert "Click a column heading" not in html   # no sorting script in a notebook
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages["after"]
    # a selection of the summary is a plain DataFrame with pandas' own HTML
    part = study.summary[["n", "verdict"]]
    assert type(part) is pd.DataFrame and "<table" in part._repr_html_() and "answer" not in part._repr_html_()


def test_each_figure_is_a_matplotlib_figure(grid, study):
    for name in ("learning_curves", "validation_curve", "per_seed", "decision_boundaries", "weight_norms", "sparsity"):
        fig = getattr(grid.plot, name)()
        assert isinstance(fig, Figure), name
        assert fig.axes, name
    with pytest.raises(StudyError, match="no heat map for study 'api-grid': it needs a grid of two strengths"):
        grid.plot.heat_map()
    with pytest.raises(StudyError, match="no validation curve"):
        study.plot.validation_curve()


def test_a_study_resumes_from_its_database_and_says_so(tmp_path):
    db = tmp_path / "r.db"
    lines = []
    first = reglab.Study(GRID, db=db).run(echo=lines.append)
    assert lines[-1].startswith(f"9 members trained, 0 from {db}")   # none, 0.1, 0.001 × 3 seeds
    lines.clear()
    again = reglab.Study(GRID, db=db).run(echo=lines.append)   # a new object, e.g. a restarted kernel
    assert lines[0] == f"resuming 'api-grid': 9 results in {db}"
    assert lines[-1].startswith(f"0 members trained, 9 from {db}")
    pd.testing.assert_frame_equal(again.results, first.results)
    # more seeds train only the new ones
    lines.clear()
    more = reglab.Study(GRID, db=db, seeds=4).run(echo=lines.append)
    assert lines[-1].startswith(f"3 members trained, 9 from {db}")
    assert len(more.results) == 12
    # the CLI reads what the Study wrote, and a stored study opens without its definition
    out = CliRunner().invoke(main, ["status", "api-grid", "--db", str(db)])
    assert out.exit_code == 0 and "12 of 12 results" in out.stdout, out.output
    stored = reglab.Study.from_db("api-grid", db)
    pd.testing.assert_frame_equal(stored.results, more.results)
    # in memory: a second run of the same object resumes
    memory = reglab.Study(GRID)
    memory.run()
    lines.clear()
    memory.run(echo=lines.append)
    assert lines == ["resuming 'api-grid': 9 results in memory", lines[-1]]
    assert lines[-1].startswith("0 members trained, 9 from memory")


def test_the_report_folder(grid, tmp_path):
    index = grid.report(tmp_path / "out")
    assert index == tmp_path / "out" / "index.html" and index.is_file()
    page = index.read_text()
    assert "api-grid" in page and "in memory (this Python session)" in page
    assert len((tmp_path / "out" / "results.csv").read_text().splitlines()) == 1 + 9
    assert (tmp_path / "out" / "figures" / "validation_curve.svg").is_file()


def test_errors_a_user_can_cause_raise_one_study_error(tmp_path, study_file):
    cases = [
        (lambda: reglab.Study(epoch=3), "unknown keyword 'epoch'; did you mean 'epochs'"),
        (lambda: reglab.Study(study_file, sead=3), "unknown keyword 'sead'; did you mean 'seeds'"),
        (lambda: reglab.Study(study_file, colour="red"), "unknown keyword 'colour'; the study file's sections are"),
        (lambda: reglab.Study(tmp_path / "missing.toml"), "does not exist"),
        (lambda: reglab.Study(42), "give a study file"),
        (lambda: reglab.Study(study_file, name="../x"), "'name' must be a short name"),
        (lambda: reglab.Study(study_file, training={"epochs": 0}), "training.epochs must be an int >= 1"),
        (lambda: reglab.Study(study_file, model={"layers": ["Dense(4, activation='nope')"]}), "model.layers"),
        (lambda: reglab.Study.from_db("api-study", tmp_path / "none.db"), "no database"),
    ]
    for make, message in cases:
        with pytest.raises(StudyError, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
            make()
        assert caught.value.__cause__ is None and "\n" not in str(caught.value)
    # a study that cannot run: refused before the database is touched
    db = tmp_path / "never.db"
    bad = reglab.Study(study_file, db=db, model={"layers": ["Dense(4, input_dim=2, activation='relu')",
                                                            "Dense(3, activation='softmax')"]})
    with pytest.raises(StudyError, match="gives 3 outputs per sample, but a binary task needs 1"):
        bad.run()
    assert not db.exists()
    # data that cannot be read: one StudyError too
    with pytest.raises(StudyError, match="no_such.csv"):
        reglab.Study(study_file, data={"name": "csv", "path": str(tmp_path / "no_such.csv"), "label": "y"}).run()
    # a changed study under a stored name
    reglab.Study(GRID, db=tmp_path / "s.db").run()
    with pytest.raises(StudyError, match="already exists .* with a different definition"):
        reglab.Study(GRID, db=tmp_path / "s.db", training={"epochs": 41}).run()
    # asking for results before running
    fresh = reglab.Study(study_file)
    for name in ("results", "summary", "diagnosis", "winner", "snippet"):
        with pytest.raises(StudyError, match=r"has not run yet: call \.run\(\) first"):
            getattr(fresh, name)
    with pytest.raises(StudyError, match="has not run yet"):
        fresh.plot.learning_curves()
    with pytest.raises(StudyError, match="has not run yet"):
        fresh.report(tmp_path / "nothing")
