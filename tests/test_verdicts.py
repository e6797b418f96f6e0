"""Honest verdicts (issue 14): diagnosis rules that hold on noisy data, a winner only with evidence.

Unit cases of diagnose.fit_verdict, then real studies: the seeds' moons grid (overfit without a
penalty, underfit past the peak, the best strength never underfit) and a tabular CSV with 30 %
label noise, where training accuracy far below 0.9 is still a good fit."""

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.datasets import make_classification

from reglab import diagnose
from reglab.cli import main
from reglab.store import Store
from reglab.study.runner import from_store

pytestmark = pytest.mark.usefixtures("one_thread")

REF = {"majority": {"train": 0.55, "test": 0.55}, "linear": {"train": 0.79, "test": 0.77}}


def test_noisy_labels_low_training_accuracy_is_not_underfit():
    # 30 % label noise: no model reaches 1.0; fitting as well as a logistic regression is fitting.
    r = diagnose.fit_verdict([0.80, 0.79, 0.81], [0.78, 0.77, 0.78], [0.55, 0.52, 0.53], reference=REF)
    assert r["verdict"] == "good fit" and r["reference"] == REF


def test_a_large_gap_with_a_rising_validation_loss_is_overfit_even_below_090_training_accuracy():
    # The survey CSV: gap +0.194, validation loss +32 % after its best epoch (epoch 0).
    train = [0.86, 0.88, 0.87, 0.87]
    test = [0.67, 0.68, 0.68, 0.68]
    r = diagnose.fit_verdict(train, test, [0.50, 0.55, 0.60, 0.66], reference=REF)
    assert r["verdict"] == "overfit" and r["gap_ci"][0] > 0 and round(r["val_loss_rise_after_best"], 2) == 0.32


def test_a_gap_the_seeds_spread_explains_is_not_overfit():
    r = diagnose.fit_verdict([0.90, 0.80, 0.85, 0.95], [0.85, 0.86, 0.83, 0.88], [0.5, 0.4, 0.6], reference=REF)
    assert r["gap_ci"][0] < 0 and r["verdict"] == "good fit"


def test_a_gap_without_a_rising_validation_loss_is_not_overfit():
    r = diagnose.fit_verdict([1.0, 1.0, 1.0], [0.93, 0.94, 0.93], [0.5, 0.3, 0.2, 0.2], reference=REF)
    assert r["verdict"] == "good fit" and "did not rise" in r["reason"]


@pytest.mark.parametrize("train, reason", [([0.55, 0.56], "majority class"), ([0.70, 0.72], "logistic")])
def test_underfit_only_when_no_better_than_a_simple_reference(train, reason):
    r = diagnose.fit_verdict(train, [0.55, 0.56], reference=REF)
    assert r["verdict"] == "underfit" and reason in r["reason"]


def test_regression_uses_the_mean_predictor_and_linear_regression():
    ref = {"majority": {"train": 1.0, "test": 1.0}, "linear": {"train": 0.5, "test": 0.52}}
    assert diagnose.fit_verdict([0.995, 1.0], [1.0, 1.01], metric="mae", reference=ref)["verdict"] == "underfit"
    assert diagnose.fit_verdict([0.2, 0.21], [0.40, 0.41], [1, 0.5, 0.8], metric="mae", reference=ref)["verdict"] == "overfit"
    assert diagnose.fit_verdict([0.45, 0.46], [0.47, 0.47], [1, 0.5, 0.5], metric="mae", reference=ref)["verdict"] == "good fit"


GRID = """
name = "g"
protocol = "grid"
seeds = 3
[data]
name = "moons"
[model]
layers = ["Dense(500, input_dim=2, activation='relu')", "Dense(1, activation='sigmoid')"]
[training]
epochs = 2000
[grid]
variant = { layers = { 0 = { kernel_regularizer = "l2({value})" } } }
values = [1e-1, 1e-3, 1e-6]
"""


def run_study(tmp_path, text, name):
    (tmp_path / f"{name}.toml").write_text(text)
    result = CliRunner().invoke(main, ["run", str(tmp_path / f"{name}.toml"), "--db", str(tmp_path / "v.db")])
    assert result.exit_code == 0, result.output
    with Store(tmp_path / "v.db") as store:
        return from_store(store, name), result.output


def test_the_seeds_grid_overfit_then_underfit_past_the_peak(tmp_path):
    run, out = run_study(tmp_path, GRID, "g")
    s = run.summary
    rows = {r["variant"]: r for r in s["rows"]}
    assert rows["none"]["diagnosis"]["verdict"] == "overfit"
    assert rows["0.1"]["diagnosis"]["verdict"] == "underfit" and "too much regularization" in rows["0.1"]["diagnosis"]["reason"]
    assert rows[s["best"]]["diagnosis"]["verdict"] != "underfit"          # the best is never underfit
    assert s["grid"]["chosen_on"] == "test" and "optimistic" in out         # the seeds validate on the test part
    # one best everywhere: the grid's strength is the summary's best variant
    assert rows[s["best"]]["params"]["value"] == s["grid"]["best"]
    if "winner" not in s:
        assert s["no_winner"].startswith("no variant beats the baseline") and "snippet" not in s
    elif rows[s["best"]].get("verdict") == "better":
        assert s["winner"] == s["best"]                                      # never two different "best"s


NOISY = """
name = "noisy"
seeds = 4
[data]
name = "csv"
path = "noisy.csv"
label = "y"
[model]
layers = ["Dense(32, input_dim=6, activation='relu')", "Dense(1, activation='sigmoid')"]
[training]
epochs = 30
[variants.none]
[variants.crushed]
layers = { 0 = { kernel_regularizer = "l2(30.0)" }, 1 = { kernel_regularizer = "l2(30.0)" } }
"""


def test_label_noise_csv_low_train_accuracy_is_not_underfit_but_a_crushed_model_is(tmp_path):
    X, y = make_classification(800, 6, n_informative=4, flip_y=0.3, class_sep=1.0, random_state=3)
    rows = ["x1,x2,x3,x4,x5,x6,y"] + [",".join(f"{v:.5f}" for v in x) + f",{t}" for x, t in zip(X, y)]
    (tmp_path / "noisy.csv").write_text("\n".join(rows) + "\n")
    run, out = run_study(tmp_path, NOISY, "noisy")
    rows = {r["variant"]: r for r in run.summary["rows"]}
    none, crushed = rows["none"], rows["crushed"]
    assert none["train"]["mean"] < 0.9                                      # noisy labels: no 1.0 here
    assert none["diagnosis"]["verdict"] != "underfit", none["diagnosis"]
    assert crushed["diagnosis"]["verdict"] == "underfit", crushed["diagnosis"]   # predicts the majority class
    ref = none["diagnosis"]["reference"]
    assert set(ref) == {"majority", "linear"} and ref["majority"]["train"] < ref["linear"]["train"]
    assert "winner" not in run.summary or run.summary["winner"] != "crushed"


UNCLEAR = """
name = "u"
seeds = 2
[data]
name = "moons"
[model]
layers = ["Dense(32, input_dim=2, activation='relu')", "Dense(1, activation='sigmoid')"]
[training]
epochs = 40
[variants.none]
[variants.tiny]
layers = { 0 = { kernel_regularizer = "l2(1e-9)" } }
[variants.crushed]
layers = { 0 = { kernel_regularizer = "l2(3.0)" }, 1 = { kernel_regularizer = "l2(3.0)" } }
"""


def test_until_clear_adds_seeds_to_the_unclear_comparisons_only_up_to_the_cap(tmp_path):
    from reglab import study as st

    (tmp_path / "u.toml").write_text(UNCLEAR)
    lines = []
    with Store(tmp_path / "u.db") as store:
        run = st.run(st.load(tmp_path / "u.toml"), store, until_clear=8, echo=lines.append)
    seeds = {}
    for r in run.records:
        seeds.setdefault(r["variant"], set()).add(r["seed"])
    rows = {r["variant"]: r for r in run.summary["rows"]}
    assert rows["tiny"]["verdict"] == "no clear difference"          # l2(1e-9) changes nothing: never clear
    assert seeds["none"] == seeds["tiny"] == set(range(8))             # doubled 2 -> 4 -> 8, the cap
    # Each round adds seeds to the baseline and to the comparisons unclear at that moment only.
    rounds = [line for line in lines if line.startswith("until clear: ")]
    assert len(rounds) == 2
    expected = {name: {0, 1} for name in ("none", "tiny", "crushed")}
    for line in rounds:
        span, names = line.split("adding seeds ")[1].split(" to ")
        first, last = map(int, span.split("-"))
        for name in names.replace(" and ", ", ").split(", "):
            expected[name] |= set(range(first, last + 1))
    assert seeds == expected
    assert "tiny" in rounds[-1]
    assert rows["tiny"]["paired"]["n"] == 8 and rows["crushed"]["paired"]["n"] == len(seeds["crushed"])
    with pytest.raises(ValueError, match="until_clear must be an int >= 2"):
        st.run(st.load(tmp_path / "u.toml"), None, until_clear=1)


def test_reglab_run_until_clear_on_the_command_line(tmp_path):
    (tmp_path / "u.toml").write_text(UNCLEAR)
    result = CliRunner().invoke(main, ["run", str(tmp_path / "u.toml"), "--db", str(tmp_path / "c.db"),
                                       "--until-clear", "--max-seeds", "4"])
    assert result.exit_code == 0, result.output
    assert "until clear: " in result.output and "detectable: ±" in result.output
    with Store(tmp_path / "c.db") as store:
        run = from_store(store, "u")
    assert {r["seed"] for r in run.records if r["variant"] == "tiny"} == {0, 1, 2, 3}
