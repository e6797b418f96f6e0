"""Studies through the Python API: Keras-style layer lines, study files and their errors, the
compare / grid → refine / repeat protocols end to end on tiny settings, resume and the store."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import reglab
from reglab import stats
from reglab.attach import registry
from reglab.data import DataError
from reglab.layers import ChannelsFirst, GaussianNoise, RNNOutput, SequenceDropout
from reglab.store import Store
from reglab.study import ModelError, StudyError, build, from_store, load, prepare, run
from reglab.study import spec as S

EXAMPLES = Path(reglab.__file__).parent / "examples"


pytestmark = pytest.mark.usefixtures("one_thread")


BASE = """\
name = "tiny"
seeds = 2

[data]
name = "moons"

[model]
layers = ["Dense(16, input_dim=2, activation='relu')", "Dense(1, activation='sigmoid')"]

[training]
epochs = 8
"""


def write(folder: Path, text: str, name: str = "study.toml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def same(a, b, path="summary"):
    """Deep equality where NaN equals NaN and floats may differ by rounding."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple, np.ndarray)):
        assert len(a) == len(b), f"{path}: lengths {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-12), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


# ---------------------------------------------------------------------------------- Keras lines


def types(model):
    return [type(m) for m in model]


def test_the_seeds_l2_line_builds_as_written_and_outputs_logits():
    model = build(["Dense(500, input_dim=2, activation='relu', kernel_regularizer=l2(0.001))",
                   "Dense(1, activation='sigmoid')"], (2,))
    assert types(model) == [nn.Linear, nn.ReLU, nn.Linear]          # the sigmoid is folded into the loss
    assert (model[0].in_features, model[0].out_features, model[2].out_features) == (2, 500, 1)
    assert registry(model[0]).penalties == {"weight": reglab.L2(0.001)}
    assert registry(model[0]).constraints == {} and registry(model[0]).activity is None
    x = torch.randn(64, 2)
    with torch.no_grad():
        assert torch.allclose(model(x), model[2](torch.relu(model[0](x))))
        model[2].bias.fill_(-50.0)
        assert bool((model(x) < -10).all())                           # logits, not probabilities
    assert torch.allclose(reglab.penalty(model), 0.001 * model[0].weight.pow(2).sum())


@pytest.mark.parametrize("line, constraint", [
    ("Dense(500, input_dim=2, activation='relu', kernel_constraint=unit_norm())", reglab.UnitNorm()),
    ("Dense(500, input_dim=2, activation='relu', kernel_constraint=max_norm(1.0))", reglab.MaxNorm(1.0)),
    ("Dense(500, input_dim=2, activation='relu', kernel_constraint=min_max_norm(min_value=1.0, max_value=1.0))",
     reglab.MinMaxNorm(1.0, 1.0)),
    ("Dense(32, kernel_constraint=max_norm(3), bias_constraint=max_norm(3))", reglab.MaxNorm(3)),
])
def test_the_seeds_constraint_lines_attach_their_constraint(line, constraint):
    model = build([line, "Dense(1, activation='sigmoid')"], (2,))
    assert registry(model[0]).constraints["weight"] == constraint
    with torch.no_grad():
        model[0].weight.mul_(10)
    reglab.apply_constraints(model)
    norms = model[0].weight.norm(dim=1)
    assert bool((norms <= (3 if "max_norm(3)" in line else 1.0) + 1e-5).all())
    if "unit_norm" in line or "min_max_norm" in line:
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    if "bias_constraint" in line:
        assert registry(model[0]).constraints["bias"] == reglab.MaxNorm(3)


def test_activity_on_a_linear_dense_acts_before_the_activation_layer():
    model = build(["Dense(500, input_dim=2, activation='linear', activity_regularizer=l1(0.0001))",
                   "Activation('relu')", "Dense(1, activation='sigmoid')"], (2,))
    assert types(model) == [nn.Linear, nn.ReLU, nn.Linear]
    assert registry(model[0]).activity == reglab.L1(0.0001)
    assert registry(model[1]) is None or registry(model[1]).activity is None
    x = torch.randn(10, 2)
    model(x)
    pre = model[0](x).detach()
    assert torch.allclose(reglab.activity_penalty(model), 1e-4 * pre.abs().sum() / 10)   # mean convention


def test_activity_on_a_dense_with_an_activation_acts_after_it():
    model = build(["Dense(500, input_dim=2, activation='relu', activity_regularizer=l1(0.0001))",
                   "Dense(1, activation='sigmoid')"], (2,))
    assert types(model) == [nn.Linear, nn.ReLU, nn.Linear]
    assert registry(model[1]).activity == reglab.L1(0.0001)
    assert registry(model[0]).activity is None
    x = torch.randn(10, 2)
    model(x)
    post = torch.relu(model[0](x)).detach()
    assert torch.allclose(reglab.activity_penalty(model), 1e-4 * post.abs().sum() / 10)


def test_conv_pooling_flatten_dropout_and_softmax_lines():
    model = build(["Conv2D(4, (3, 3), activation='relu', kernel_constraint=max_norm(2), bias_regularizer=l2(0.01))",
                   "MaxPooling2D((2, 2))", "Flatten()", "Dropout(0.5)", "Dense(10, activation='softmax')"], (1, 8, 8),
                  task="multiclass")
    assert types(model) == [nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Dropout, nn.Linear]
    assert model[5].in_features == 4 * 3 * 3 and model[4].p == 0.5
    assert registry(model[0]).constraints == {"weight": reglab.MaxNorm(2)}
    assert registry(model[0]).penalties == {"bias": reglab.L2(0.01)}
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)           # logits: softmax folded

    model = build(["Conv2D(32, (3,3), activity_regularizer=l1(0.001))", "Flatten()", "Dense(1, activation='sigmoid')"],
                  (1, 8, 8))
    assert types(model) == [nn.Conv2d, nn.Flatten, nn.Linear] and registry(model[0]).activity == reglab.L1(0.001)

    model = build(["Conv1D(4, 3, activation='relu', kernel_regularizer=l2(0.01))", "MaxPooling1D(2)", "Flatten()",
                   "Dense(10, activation='softmax')"], (8, 5), task="multiclass")
    assert types(model) == [ChannelsFirst, nn.Conv1d, nn.ReLU, nn.MaxPool1d, nn.Flatten, nn.Linear]
    assert model[1].in_channels == 5 and model[5].in_features == 4 * 3
    assert registry(model[1]).penalties == {"weight": reglab.L2(0.01)}
    assert model(torch.randn(2, 8, 5)).shape == (2, 10)


def test_recurrent_lines_with_recurrent_regularizer_constraint_and_dropout():
    model = build(["LSTM(8, kernel_regularizer=l1(0.001), recurrent_regularizer=l2(0.01), "
                   "recurrent_constraint=max_norm(3), bias_regularizer=l2(0.1), dropout=0.2)",
                   "Dense(10, activation='softmax')"], (8, 8), task="multiclass")
    assert types(model) == [SequenceDropout, nn.LSTM, RNNOutput, nn.Linear]
    assert model[0].p == 0.2 and model[1].hidden_size == 8
    reg = registry(model[1])
    assert reg.penalties == {"weight_ih_l0": reglab.L1(0.001), "weight_hh_l0": reglab.L2(0.01),
                             "bias_ih_l0": reglab.L2(0.1), "bias_hh_l0": reglab.L2(0.1)}
    assert reg.constraints == {"weight_hh_l0": reglab.MaxNorm(3)}
    assert model(torch.randn(4, 8, 8)).shape == (4, 10)

    model = build(["GaussianNoise(0.1)", "GRU(6, return_sequences=True)", "GRU(4)", "Dense(1, activation='sigmoid')"],
                  (8, 3))
    assert types(model) == [GaussianNoise, nn.GRU, RNNOutput, nn.GRU, RNNOutput, nn.Linear]
    assert model[2].return_sequences and not model[4].return_sequences
    assert model[0].stddev == 0.1 and model(torch.randn(2, 8, 3)).shape == (2, 1)

    model = build(["LSTM(32, activity_regularizer=l1(0.001))", "Dense(1, activation='sigmoid')"], (8, 3))
    assert registry(model[1]).activity == reglab.L1(0.001)          # on the LSTM's output
    model = build(["LSTM(32, kernel_constraint=max_norm(3), recurrent_constraint=max_norm(3), "
                   "bias_constraint=max_norm(3))", "Dense(1, activation='sigmoid')"], (8, 3))
    assert set(registry(model[0]).constraints) == {"weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"}


def test_only_the_final_sigmoid_or_softmax_is_folded():
    model = build(["Dense(4, input_dim=2, activation='sigmoid')", "Dense(1, activation='sigmoid')"], (2,))
    assert types(model) == [nn.Linear, nn.Sigmoid, nn.Linear]
    model = build(["Dense(4, input_dim=2, activation='relu')", "Dense(1, activation='sigmoid')"], (2,),
                  task="regression")
    assert types(model) == [nn.Linear, nn.ReLU, nn.Linear, nn.Sigmoid]   # a regression output stays bounded


def test_every_layer_line_of_the_seeds_parses_as_written():
    # Copied from the tutorials, typographic quotes included.
    lines = ["Dense(500, input_dim=2, activation=‘relu’, kernel_regularizer=l2(0.001))",
             "Dense(500, input_dim=2, activation=’relu’, activity_regularizer=l1(0.0))",
             "Dense(10, activation='relu', input_shape=(5,), name=\"hidden_1\", kernel_initializer=\"he_normal\")",
             "Dense(1, activation='sigmoid', name=\"output\")", "Dense(1, activation='linear')",
             "Dense(32, kernel_regularizer=l2(0.01), bias_regularizer=l2(0.01))", "Dense(32, activity_regularizer=l1(0.001))",
             "Dense(32, activation='linear', activity_regularizer=l1(0.001))", "Activation('relu')",
             "Dropout(0.2)", "Dropout(0.3)"]
    for line in lines:
        S.keras.parse_line(line)
    model = build([lines[0], "Dense(1, activation=‘sigmoid’)"], (2,))
    assert types(model) == [nn.Linear, nn.ReLU, nn.Linear]
    model = build([lines[2], lines[5], lines[9], lines[3]], (5,))
    assert types(model) == [nn.Linear, nn.ReLU, nn.Linear, nn.Dropout, nn.Linear]


@pytest.mark.parametrize("line", [
    "__import__('pathlib').Path('PWNED').touch()",
    "Dense(1, kernel_regularizer=__import__('pathlib').Path('PWNED').touch())",
    "Dense(eval(\"__import__('pathlib').Path('PWNED').touch() or 1\"))",
    "Dense(eval('1'))",
    "Dense(1).__class__",
    "Dense(1, activation=eval('1'))",
    "Dense(1, kernel_regularizer=l2(0.001).__class__)",
    "Dense(*[1])",
    "Dense(1, **{'units': 2})",
    "Dense(1 + 1)",
    "[Dense(1) for _ in range(2)]",
    "lambda: Dense(1)",
])
def test_a_line_that_tries_to_run_code_is_rejected_and_never_runs(line, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError):
        build([line], (2,))
    study = write(tmp_path, BASE.replace("\"Dense(1, activation='sigmoid')\"", json.dumps(line)))
    with pytest.raises(StudyError, match=r"model\.layers\[1\]|variants\.none: layer 1 "):
        prepare(load(study))
    assert not (tmp_path / "PWNED").exists()


# ---------------------------------------------------------------------------------- study files


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.stem)
def test_every_example_loads_and_fits_its_data(path):
    study = load(path, seeds=2, epochs=1)
    assert study.seeds == [0, 1] and study.baseline in [v.name for v in study.variants]
    assert all(v.training["epochs"] == 1 for v in study.variants)
    dataset = prepare(study)
    assert len(dataset.X_train) > 0
    full = load(path)
    assert len(full.seeds) >= 10
    assert {v.name for v in full.variants} == {v.name for v in study.variants}


SEEDS_EXAMPLES = ["moons_l2", "moons_l2_grid", "moons_unit_norm", "circles_activity", "circles_activity_grid"]


@pytest.mark.parametrize("stem", SEEDS_EXAMPLES)
def test_the_seeds_examples_keep_validating_on_the_test_part(stem):
    """Issue 14, part 4: the seeds' published figures validate on the test part; their files say so."""
    from sklearn.datasets import make_circles, make_moons

    from reglab.data import load as load_data

    study = load(EXAMPLES / f"{stem}.toml")
    assert study.data["validation"] == "test"
    dataset = load_data(study.data)
    before = load_data({k: v for k, v in study.data.items() if k != "validation"})   # the data as before the key
    for part in ("X_train", "y_train", "X_test", "y_test"):
        np.testing.assert_array_equal(getattr(dataset, part), getattr(before, part))
    X, y = (make_moons(100, noise=0.2, random_state=1) if study.data["name"] == "moons"
            else make_circles(100, noise=0.1, random_state=1, factor=0.8))
    np.testing.assert_array_equal(dataset.X_train, X[:30].astype(np.float32))   # the seeds' first 30 rows
    np.testing.assert_array_equal(dataset.y_test, y[30:])
    assert dataset.X_val is None and dataset.optimistic and dataset.validation()[0] is dataset.X_test
    assert study.as_dict()["data"] == study.raw["data"]                   # nothing written out for the generators
    note = S.optimism_note(study, dataset)
    if study.protocol == "grid":
        assert note.startswith('the test score is optimistic: the test part also chose λ (validation = "test")')
    else:
        assert note is None                                                # no early stopping, no λ chosen


@pytest.mark.parametrize("stem", ["digits_cnn", "digits_lstm"])
def test_the_digits_examples_validate_on_a_part_of_the_training_rows(stem):
    from reglab.data import load as load_data

    study = load(EXAMPLES / f"{stem}.toml")
    dataset = load_data(study.data)
    assert len(dataset.X_train) == 1005 and len(dataset.X_val) == 252 and len(dataset.X_test) == 540
    assert not dataset.optimistic and S.optimism_note(study, dataset) is None


def test_as_dict_writes_out_the_data_protocol_defaults(tmp_path):
    """A study stored before validation parts and target scaling were defaults is a different study:
    its results are never mixed with ones trained on fewer rows or scaled targets."""
    iris = load(write(tmp_path, BASE.replace('name = "moons"', 'name = "iris"') + "[variants.none]\n"))
    assert iris.as_dict()["data"] == {"name": "iris", "validation": 0.2, "standardize_target": True}
    assert iris.raw["data"] == {"name": "iris"}                           # the study as given is untouched
    explicit = {"name": "csv", "path": "d.csv", "label": "y", "validation": "test", "standardize_target": False}
    assert S.data_protocol(explicit) == explicit
    assert S.data_protocol(S.data_protocol({"name": "wine"})) == S.data_protocol({"name": "wine"})
    assert S.data_protocol({"name": "moons"}) == {"name": "moons"}
    # a stored [data] table that predates them is read back as it was trained
    assert S.stored_data({"name": "iris"}) == {"name": "iris", "validation": "test", "standardize_target": False}
    assert S.stored_data({"name": "iris", "validation": 0.3}) == {"name": "iris", "validation": 0.3,
                                                                  "standardize_target": False}
    assert S.stored_data(S.data_protocol({"name": "iris"})) == S.data_protocol({"name": "iris"})
    assert S.stored_data({"name": "moons"}) == {"name": "moons"}


def test_a_study_stored_with_the_old_data_protocol_is_not_resumed(tmp_path):
    from reglab.store import StoreError

    text = BASE.replace('name = "moons"', 'name = "iris"').replace("Dense(1, activation='sigmoid')",
                                                                    "Dense(3, activation='softmax')")
    text = text.replace("input_dim=2, ", "")
    study = load(write(tmp_path, text + "[variants.none]\n"))
    old = study.as_dict()
    old["data"] = dict(study.raw["data"])                                # as an earlier reglab stored it
    with Store(tmp_path / "old.db") as store:
        store.open_study(study.name, old)
        with pytest.raises(StoreError, match="different definition"):
            run(study, store)


def test_optimism_note_names_what_the_test_part_decided(tmp_path):
    from reglab.data import load as load_data

    path = tmp_path / "d.csv"
    path.write_text("a,b,y\n" + "".join(f"{i % 7},{i % 5},{i % 2}\n" for i in range(60)))
    data = '[data]\nname = "csv"\npath = "d.csv"\nlabel = "y"\n'
    early = '[training]\nepochs = 8\nearly_stopping = { monitor = "val_loss", patience = 2 }\n'
    head = 'name = "x"\nseeds = 2\n[model]\nlayers = ["Dense(4, activation=\'relu\')", "Dense(1, activation=\'sigmoid\')"]\n'
    carved = load(write(tmp_path, head + data + early + "[variants.none]\n"))
    assert carved.validation_decides() == ["stopped training"]
    assert S.optimism_note(carved, load_data(carved.data, base_dir=tmp_path)) is None
    on_test = load(write(tmp_path, head + data + 'validation = "test"\n' + early + "[variants.none]\n"))
    note = S.optimism_note(on_test, load_data(on_test.data, base_dir=tmp_path))
    assert note == ('the test score is optimistic: the test part also stopped training (validation = "test"); '
                    'a validation part carved from the training rows (e.g. validation = 0.2) keeps it out')
    grid = ('protocol = "grid"\n' + head + data + 'validation = "test"\n' + early +
            '[grid]\nvariant = { layers = { 0 = { kernel_regularizer = "l2({value})" } } }\nvalues = [0.1, 0.01]\n')
    grid_study = load(write(tmp_path, grid))
    assert grid_study.validation_decides() == ["stopped training", "chose λ"]
    assert "also stopped training and chose λ" in S.optimism_note(grid_study, load_data(grid_study.data, base_dir=tmp_path))
    # a training part too small to carve from: the note says why the test part validated
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    (tiny / "d.csv").write_text("a,b,y\n0,0,0\n1,1,1\n2,0,0\n3,1,1\n")
    small = load(write(tiny, head + data + 'train = 1\n' + early + "[variants.none]\n"))
    assert "too small to carve" in S.optimism_note(small, load_data(small.data, base_dir=tiny))


def test_the_circles_example_puts_the_activity_penalty_before_or_after_the_relu():
    study = load(EXAMPLES / "circles_activity.toml", seeds=2, epochs=1)
    build_variant = S.builder(study, (2,), "binary")
    expected = {"before_relu_sum": (0, "sum"), "after_relu_sum": (1, "sum"),
                "before_relu_mean": (0, "mean"), "after_relu_mean": (1, "mean")}
    for name, (index, convention) in expected.items():
        model = build_variant(name)
        assert types(model) == [nn.Linear, nn.ReLU, nn.Linear]
        reg = registry(model[index])
        assert reg.activity == reglab.L1(0.0001) and reg.activity_convention == convention, name
        other = registry(model[1 - index])
        assert other is None or other.activity is None, name
    model = build_variant("none")
    assert all(registry(m) is None or registry(m).activity is None for m in model)


GRID = BASE.replace('name = "tiny"', 'name = "tiny"\nprotocol = "grid"') + """
[grid]
variant = { layers = { 0 = { kernel_regularizer = "l2({value})" } } }
values = [0.1, 0.01]
"""

MALFORMED = {
    "toml syntax": (BASE + "[variants.none\n", r"not valid TOML.*line 12"),
    "unknown top-level key": ("protocl = 'grid'\n" + BASE, r"study: unknown key 'protocl'; did you mean 'protocol'"),
    "unknown variant key": (BASE + "[variants.a]\nlayer = {}\n", r"variants\.a: unknown key 'layer'; did you mean 'layers'"),
    "unknown training key": (BASE.replace("epochs = 8", "epoch = 8"), r"training: unknown key 'epoch'; did you mean 'epochs'"),
    "epochs not an int": (BASE.replace("epochs = 8", 'epochs = "ten"'), r"training\.epochs must be an int"),
    "negative seeds": (BASE.replace("seeds = 2", "seeds = -1"), r"'seeds' must be"),
    "seeds a float": (BASE.replace("seeds = 2", "seeds = 2.5"), r"'seeds' must be"),
    "seed listed twice": (BASE.replace("seeds = 2", "seeds = [1, 1]"), r"'seeds' lists a seed twice"),
    "NaN learning rate": (BASE.replace("epochs = 8", "epochs = 8\nlr = nan"), r"training\.lr must be a finite"),
    "unknown optimizer": (BASE.replace("epochs = 8", "epochs = 8\noptimizer = 'adadelta'"), r"training\.optimizer"),
    "two clippings": (BASE.replace("epochs = 8", "epochs = 8\nclipnorm = 1.0\nclipvalue = 0.5"), r"only one of clipnorm"),
    "label smoothing above 1": (BASE.replace("epochs = 8", "epochs = 8\nlabel_smoothing = 2.0"),
                                r"training\.label_smoothing must be a number in \[0, 1\]"),
    "class weight of a name": (BASE.replace("epochs = 8", "epochs = 8\nclass_weight = { spam = 1.0 }"),
                               r"training\.class_weight keys must be class numbers"),
    "unknown schedule": (BASE.replace("epochs = 8", "epochs = 8\nschedule = { kind = 'linear' }"),
                         r"training\.schedule: .*kinds: exponential, step, cosine, plateau"),
    "schedule without its steps": (BASE.replace("epochs = 8", "epochs = 8\nschedule = { kind = 'cosine' }"),
                                   r"training\.schedule: .*decay_steps"),
    "negative grid strength": (GRID.replace("[0.1, 0.01]", "[-0.1, 0.01]"), r"grid\.values: .*Got -0\.1"),
    "NaN grid strength": (GRID.replace("[0.1, 0.01]", "[nan, 0.01]"), r"grid\.values: .*Got nan"),
    "empty grid values": (GRID.replace("[0.1, 0.01]", "[]"), r"grid\.values must be a non-empty list"),
    "empty grid table": (GRID.replace("[0.1, 0.01]", "{}"), r"grid\.values is empty"),
    "empty grid axis": (GRID.replace("[0.1, 0.01]", "{ l1 = [], l2 = [0.1] }"), r"grid\.values\.l1 must be a non-empty"),
    "grid strength twice": (GRID.replace("[0.1, 0.01]", "[0.001, 1e-3]"), r"grid\.values lists a strength twice"),
    "zero strength refined on a log scale": (GRID.replace("[0.1, 0.01]", "[0.0, 0.1]"), r"grid\.values: .*> 0"),
    "bad refine_points": (GRID + "refine_points = \"x\"\n", r"grid\.refine_points"),
    "refine not a bool": (GRID + "refine = \"yes\"\n", r"grid\.refine must be true or false"),
    "grid without {value}": (GRID.replace("l2({value})", "l2(0.1)"), r"grid\.variant never uses \{value\}"),
    "grid with variants": (GRID + "[variants.a]\n", r"a grid study takes \[grid\], not \[variants\]"),
    "unknown layer": (BASE.replace("Dense(16,", "Dense2(16,"), r"model\.layers\[0\]: Unknown layer 'Dense2'.*did you mean 'Dense'"),
    "unknown layer argument": (BASE.replace("activation='relu'", "activaton='relu'"), r"model\.layers\[0\].*'activaton'.*did you mean 'activation'"),
    "unknown activation": (BASE.replace("activation='relu'", "activation='rleu'"), r"model\.layers\[0\].*unknown activation 'rleu'"),
    "unknown regularizer in a variant": (BASE + '[variants.a]\nlayers = { 0 = { kernel_regularizer = "l3(0.1)" } }\n',
                                         r"variants\.a\.layers\.0: .*kernel_regularizer: Unknown penalty 'l3'"),
    "unknown regularizer in the model": (BASE.replace("activation='relu'", "activation='relu', kernel_regularizer=l3(0.1)"),
                                         r"model\.layers\[0\]: .*Unknown penalty 'l3'"),
    "unknown constraint": (BASE + '[variants.a]\nlayers = { 0 = { kernel_constraint = "unit_nrm()" } }\n',
                           r"variants\.a\.layers\.0: .*Unknown constraint 'unit_nrm'"),
    "negative regularizer": (BASE + '[variants.a]\nlayers = { 0 = { kernel_regularizer = "l2(-0.1)" } }\n',
                             r"variants\.a\.layers\.0: .*'l2' parameter of L2 must be a finite float >= 0"),
    "regularizer with a variable": (BASE.replace("activation='relu'", "activation='relu', kernel_regularizer=l2(param)"),
                                    r"model\.layers\[0\]: .*arguments must be numbers"),
    "constraint on Activation": (BASE.replace("\"Dense(1,", "\"Activation('relu')\", \"Dense(1,")
                                 + '[variants.a]\nlayers = { 1 = { kernel_constraint = "unit_norm()" } }\n',
                                 r"variants\.a\.layers\.1: .*Activation has no argument 'kernel_constraint'"),
    "constraint on Activation in the model": (BASE.replace("\"Dense(1,", "\"Activation('relu', kernel_constraint=unit_norm())\", \"Dense(1,"),
                                              r"model\.layers\[1\]: .*Activation has no argument 'kernel_constraint'"),
    "recurrent constraint on Dense": (BASE + '[variants.a]\nlayers = { 0 = { recurrent_constraint = "max_norm(3)" } }\n',
                                      r"variants\.a\.layers\.0: .*Dense has no argument 'recurrent_constraint'"),
    "layer index out of range": (BASE + '[variants.a]\nlayers = { 5 = { kernel_regularizer = "l2(0.1)" } }\n',
                                 r"variants\.a\.layers: layer 5 does not exist"),
    "bad inserted line": (BASE + '[variants.a]\ninsert = { 0 = "Dropot(0.5)" }\n', r"variants\.a\.insert\.0: Unknown layer 'Dropot'"),
    "baseline not a variant": ("baseline = 'nope'\n" + BASE, r"baseline 'nope' is not a variant; variants are: none"),
    "layers and factory": (BASE.replace("[model]", '[model]\nfactory = "mod:build"'), r"model: give either 'layers'"),
    "bad factory reference": (BASE.replace("layers = [", 'factory = "os.system(1)"\n# ['), r"model\.factory must look like"),
    "rules on a layer model": (BASE + '[variants.a]\nrules = { 0 = { kernel = "l2(0.1)" } }\n', r"variants\.a\.rules needs a factory"),
    "bad early stopping": (BASE.replace("epochs = 8", "epochs = 8\nearly_stopping = { patience = -3 }"),
                           r"training\.early_stopping: .*'patience'"),
    "unknown early stopping key": (BASE.replace("epochs = 8", "epochs = 8\nearly_stopping = { patiance = 3 }"),
                                   r"training\.early_stopping: unknown key 'patiance'; did you mean 'patience'"),
    "repeat with two variants": (BASE.replace('name = "tiny"', 'name = "tiny"\nprotocol = "repeat"') + "[variants.a]\n[variants.b]\n",
                                 r"protocol 'repeat' takes exactly one variant"),
    "variants twice in a list": (BASE + '[[variants]]\nname = "a"\n[[variants]]\nname = "a"\n', r"variants: 'a' is given twice"),
    "no data": (BASE.replace('[data]\nname = "moons"\n', ""), r"the \[data\] table is missing"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_study_file_is_rejected_when_read_with_the_key_named(case, tmp_path):
    text, message = MALFORMED[case]
    with pytest.raises(StudyError, match=message):
        load(write(tmp_path, text))


PREPARE_ERRORS = {
    "Conv2D on flat data": (BASE.replace("Dense(16, input_dim=2, activation='relu')", "Conv2D(4, 3)\", \"Flatten()"),
                            StudyError, r"variants\.none: .*Conv2D needs samples of shape \(channels, height, width\)"),
    "LSTM on flat data": (BASE.replace("Dense(16, input_dim=2, activation='relu')", "LSTM(4)"),
                          StudyError, r"LSTM needs samples of shape \(steps, features\)"),
    "input_dim that does not fit": (BASE.replace("input_dim=2", "input_dim=3"), StudyError, r"input_dim=3 does not fit"),
    "bias penalty without a bias": (BASE + '[variants.a]\nlayers = { 0 = { use_bias = false, bias_regularizer = "l2(0.1)" } }\n',
                                    StudyError, r"variants\.a: .*no bias weight"),
    "monitor that is not logged": (BASE.replace("epochs = 8", "epochs = 8\nearly_stopping = { monitor = 'val_acc' }"),
                                   StudyError, r"variants\.none: early_stopping monitors 'val_acc'"),
    "unknown dataset": (BASE.replace('name = "moons"', 'name = "moon"'), DataError, r"did you mean 'moons'"),
    "missing CSV": (BASE.replace('name = "moons"', 'name = "csv"\npath = "nope.csv"\nlabel = "y"'), DataError,
                    r"nope\.csv: file not found"),
    "missing label column": (BASE.replace('name = "moons"', 'name = "csv"\npath = "d.csv"\nlabel = "target"'), DataError,
                             r"d\.csv.*'target'"),
}


@pytest.mark.parametrize("case", list(PREPARE_ERRORS))
def test_a_study_that_cannot_run_is_rejected_by_prepare_before_anything_is_written(case, tmp_path):
    text, error, message = PREPARE_ERRORS[case]
    (tmp_path / "d.csv").write_text("a,b,y\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(20)))
    study = load(write(tmp_path, text))
    with pytest.raises(error, match=message):
        prepare(study)
    with Store(tmp_path / "r.db") as store, pytest.raises(error, match=message):
        run(study, store)
    with Store(tmp_path / "r.db") as store:
        assert store.studies() == []


def test_array_of_variant_tables_keeps_the_order(tmp_path):
    study = load(write(tmp_path, BASE + '[[variants]]\nname = "l2"\nlayers = { 0 = { kernel_regularizer = "l2(0.1)" } }\n'
                                       '[[variants]]\nname = "none"\n'))
    assert [v.name for v in study.variants] == ["l2", "none"] and study.baseline == "l2"


FACTORY = '''\
from torch import nn


def build():
    return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1))


def not_a_module():
    return "a string"
'''


def test_a_factory_model_with_rules_runs_end_to_end(tmp_path):
    module = f"factory_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(FACTORY)
    text = f"""\
name = "factory"
seeds = 2
[data]
name = "moons"
[model]
factory = "{module}:build"
rules = {{ "2" = {{ bias = "l2(0.5)" }} }}
[training]
epochs = 4
[variants.base]
[variants.l2]
rules = {{ "0" = {{ kernel = "l2(0.01)", kernel_constraint = "max_norm(2)" }} }}
"""
    study = load(write(tmp_path, text))
    models = S.builder(study, (2,), "binary")
    base, l2 = models("base"), models("l2")
    assert registry(base[2]).penalties == {"bias": reglab.L2(0.5)} and registry(base[0]) is None
    assert registry(l2[0]).penalties == {"weight": reglab.L2(0.01)}
    assert registry(l2[0]).constraints == {"weight": reglab.MaxNorm(2)}
    assert registry(l2[2]).penalties == {"bias": reglab.L2(0.5)}      # the model's rules stay

    with Store(tmp_path / "f.db") as store:
        result = run(study, store)
        assert result.trained == 4 and len(store.results(store.study("factory")["id"])) == 4
    assert {(r["variant"], r["seed"]) for r in result.records} == {(v, s) for v in ("base", "l2") for s in (0, 1)}
    snippets = {r["variant"]: r["extra"]["snippet"] for r in result.records}
    assert "reglab.regularize(model[0], kernel=reglab.L2(l2=0.01), kernel_constraint=reglab.MaxNorm(max_value=2.0))" \
        in snippets["l2"]
    assert "model[0]" not in snippets["base"] and "bias=reglab.L2(l2=0.5)" in snippets["base"]

    for bad, message in ((f'"{module}:missing"', "has no function 'missing'"),
                         ('"no_such_module_xyz:build"', "cannot import 'no_such_module_xyz'"),
                         (f'"{module}:not_a_module"', "returned str, not an nn.Module")):
        broken = load(write(tmp_path, text.replace(f'"{module}:build"', bad), "broken.toml"))
        with pytest.raises(StudyError, match=message):
            prepare(broken)
    broken = load(write(tmp_path, text.replace('rules = { "0"', 'rules = { "7"'), "broken.toml"))
    with pytest.raises(StudyError, match=r"variants\.l2\.rules: the model has no module '7'"):
        prepare(broken)
    with pytest.raises(StudyError, match=r"variants\.x\.layers needs a layer-line model"):
        load(write(tmp_path, text + '[variants.x]\nlayers = { 0 = { kernel_regularizer = "l2(0.1)" } }\n', "broken.toml"))


# ---------------------------------------------------------------------------------- protocols


COMPARE = """\
name = "cmp"
seeds = 3
baseline = "none"

[data]
name = "moons"

[model]
layers = ["Dense(16, input_dim=2, activation='relu')", "Dense(1, activation='sigmoid')"]

[training]
epochs = 15
batch_size = 10

[variants.heavy_l2]
layers = { 0 = { kernel_regularizer = "l2(1.0)" } }

[variants.none]

[variants.unit_norm]
layers = { 0 = { kernel_constraint = "unit_norm()" } }
"""


def per_seed(records, variant, seeds, key):
    by_seed = {r["seed"]: r["metrics"][key] for r in records if r["variant"] == variant}
    return np.array([by_seed.get(s, np.nan) for s in seeds])


def check_summary(summary, records, seeds, variants, baseline, metric, higher):
    assert [row["variant"] for row in summary["rows"]] == variants
    assert summary["baseline"] == baseline and summary["metric"] == metric and summary["seeds"] == len(seeds)
    base = per_seed(records, baseline, seeds, f"test_{metric}")
    compared = []
    for row in summary["rows"]:
        name = row["variant"]
        test = per_seed(records, name, seeds, f"test_{metric}")
        same(row["test"], stats.describe(test), f"{name}.test")
        same(row["train"], stats.describe(per_seed(records, name, seeds, f"train_{metric}")), f"{name}.train")
        assert row["n"] == len(seeds)
        if name == baseline:
            assert "paired" not in row and "verdict" not in row
        else:
            same(row["paired"], stats.paired(test, base, higher_is_better=higher), f"{name}.paired")
            compared.append(row)
    adjusted = stats.holm([row["paired"]["p_value"] for row in compared])
    for row, p in zip(compared, adjusted):
        same(row["p_holm"], float(p), f"{row['variant']}.p_holm")
        assert row["verdict"] == stats.verdict(row["paired"], float(p), higher_is_better=higher)
    means = {row["variant"]: row["test"]["mean"] for row in summary["rows"]}
    # The winner: a variant better than the baseline after Holm (the best such by mean); else none,
    # and the best mean is reported as "best", not as a winner.
    better = {row["variant"]: means[row["variant"]] for row in compared if row["verdict"] == "better"}
    if better:
        expected = summary["best"] if summary["best"] in better else (max if higher else min)(better, key=better.get)
        assert summary["winner"] == expected and "no_winner" not in summary
    else:
        assert "winner" not in summary and "snippet" not in summary
        assert summary["no_winner"].startswith("no variant beats the baseline")
    if summary.get("protocol") != "grid":
        assert means[summary["best"]] == (max if higher else min)(means.values())


def test_compare_end_to_end_then_resume_then_more_seeds(tmp_path):
    path = write(tmp_path, COMPARE)
    db = tmp_path / "cmp.db"
    with Store(db) as store:
        first = run(load(path), store)
    names = ["heavy_l2", "none", "unit_norm"]
    assert first.trained == 9 and len(first.records) == 9
    assert sorted((r["variant"], r["seed"]) for r in first.records) == [(v, s) for v in names for s in range(3)]
    for r in first.records:
        assert set(r["metrics"]) >= {"train_accuracy", "test_accuracy", "train_loss", "test_loss"}
        assert r["epochs_run"] == 15 and r["diverged"] is False
        assert 0 <= r["metrics"]["test_accuracy"] <= 1
        assert len(r["history"]["val_loss"]) == 15 and r["history"]["epoch"] == list(range(15))
    check_summary(first.summary, first.records, [0, 1, 2], names, "none", "accuracy", True)
    heavy = next(row for row in first.summary["rows"] if row["variant"] == "heavy_l2")
    none = next(row for row in first.summary["rows"] if row["variant"] == "none")
    # the regularizers acted: a heavy L2 penalty shrinks the kernel, unit norm bounds each unit
    assert heavy["diagnosis"]["weight_norms"]["0"]["l2"] < none["diagnosis"]["weight_norms"]["0"]["l2"]
    unit = next(row for row in first.summary["rows"] if row["variant"] == "unit_norm")
    assert unit["diagnosis"]["weight_norms"]["0"]["max_unit_norm"] == pytest.approx(1.0, abs=1e-4)
    assert set(none["diagnosis"]) >= {"verdict", "gap", "weight_norms", "sparsity", "ensemble_accuracy"}

    with Store(db) as store:
        again = run(load(path), store)
        rows = store.results(store.study("cmp")["id"])
    assert again.trained == 0 and len(rows) == 9
    assert len({(r["config_key"], r["seed"]) for r in rows}) == 9
    same(again.summary, first.summary)

    with Store(db) as store:
        more = run(load(path, seeds=4), store)
        rows = store.results(store.study("cmp")["id"])
        rebuilt = from_store(store, "cmp")
    assert more.trained == 3 and len(rows) == 12 and sum(r["seed"] == 3 for r in rows) == 3
    assert sorted((r["variant"], r["seed"]) for r in rows) == [(v, s) for v in names for s in range(4)]
    for r in rows[:9]:   # the first nine were not trained again
        assert r["seed"] < 3
    check_summary(more.summary, more.records, [0, 1, 2, 3], names, "none", "accuracy", True)
    same(rebuilt.summary, more.summary)

    with Store(db) as store:
        fewer = run(load(path, seeds=2), store)
    assert fewer.trained == 0 and {r["seed"] for r in fewer.records} == {0, 1}
    check_summary(fewer.summary, fewer.records, [0, 1], names, "none", "accuracy", True)


def test_a_changed_study_under_the_same_name_is_refused(tmp_path):
    from reglab.store import StoreError

    db = tmp_path / "c.db"
    with Store(db) as store:
        run(load(write(tmp_path, BASE)), store)
        with pytest.raises(StoreError, match="different definition"):
            run(load(write(tmp_path, BASE.replace("epochs = 8", "epochs = 9"))), store)
        assert len(store.results(store.study("tiny")["id"])) == 2


def test_from_store_keeps_the_default_baseline_and_the_variant_order(tmp_path):
    # No explicit baseline: the first variant is the baseline, also when rebuilt from the database.
    text = BASE + '[variants.zeta]\n[variants.alpha]\nlayers = { 0 = { kernel_regularizer = "l2(0.1)" } }\n'
    with Store(tmp_path / "o.db") as store:
        result = run(load(write(tmp_path, text)), store)
        rebuilt = from_store(store, "tiny")
    assert result.summary["baseline"] == "zeta" and [r["variant"] for r in result.summary["rows"]] == ["zeta", "alpha"]
    same(rebuilt.summary, result.summary)


def test_grid_with_refinement_end_to_end(tmp_path):
    text = GRID.replace("[0.1, 0.01]", "[1.0, 0.1, 0.01]") + "refine_points = 3\n"
    db = tmp_path / "g.db"
    with Store(db) as store:
        result = run(load(write(tmp_path, text)), store)
    seeds, coarse = [0, 1], [1.0, 0.1, 0.01]
    by_value = {}
    for r in result.records:
        if r["variant"] != "none":
            assert r["variant"] == f"{r['params']['value']:g}"
            by_value.setdefault(r["params"]["value"], {})[r["seed"]] = r["metrics"]["test_accuracy"]
    scores = np.array([[by_value[v][s] for s in seeds] for v in sorted(coarse)])
    low, high = stats.choose_decade(sorted(coarse), scores)
    refined = set(stats.refine_grid(low, high, 3)) - set(coarse)
    assert refined, "the decade chosen from three strengths has new points inside it"
    values = sorted(set(coarse) | refined)
    assert set(by_value) == set(values)
    assert [v.name for v in result.study.variants] == ["none"] + [f"{v:g}" for v in values]
    assert result.trained == 2 * (1 + len(values)) == len(result.records)

    summary = result.summary
    all_scores = np.array([[by_value[v][s] for s in seeds] for v in values])
    expected = stats.one_se_rule(values, all_scores)
    grid = summary["grid"]
    assert grid["strengths"] == values
    for key in ("best", "best_mean", "best_se", "one_se"):
        same(grid[key], expected[key], f"grid.{key}")
    same(grid["means"], expected["means"].tolist())
    assert grid["best"] in values and grid["one_se"] >= grid["best"]
    check_summary(summary, result.records, seeds, ["none"] + [f"{v:g}" for v in values], "none", "accuracy", True)

    with Store(db) as store:
        again = run(load(write(tmp_path, text)), store)
        rebuilt = from_store(store, "tiny")
    assert again.trained == 0
    same(again.summary, summary)
    same(rebuilt.summary, summary)


def test_repeat_one_variant(tmp_path):
    text = BASE.replace('name = "tiny"', 'name = "rep"\nprotocol = "repeat"').replace("seeds = 2", "seeds = [3, 7, 11]")
    with Store(tmp_path / "r.db") as store:
        result = run(load(write(tmp_path, text + '[variants.only]\ninsert = { 0 = "Dropout(0.5)" }\n')), store)
        rebuilt = from_store(store, "rep")
    assert result.trained == 3 and sorted(r["seed"] for r in result.records) == [3, 7, 11]
    assert [v.layers for v in result.study.variants] == [["Dense(units=16, input_dim=2, activation='relu')",
                                                          "Dropout(rate=0.5)", "Dense(units=1, activation='sigmoid')"]]
    (row,) = result.summary["rows"]
    assert row["variant"] == "only" and "paired" not in row and row["n"] == 3
    same(row["test"], stats.describe(per_seed(result.records, "only", [3, 7, 11], "test_accuracy")))
    assert rebuilt.study.seeds == [3, 7, 11]
    same(rebuilt.summary, result.summary)


def test_regression_on_a_diabetes_csv_reports_mae(tmp_path, monkeypatch):
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes()
    data = tmp_path / "data"
    data.mkdir()
    header = ",".join(bunch.feature_names[:4]) + ",target\n"
    rows = "".join(",".join(f"{x:.6f}" for x in row[:4]) + f",{t:.1f}\n" for row, t in zip(bunch.data[:120], bunch.target))
    (data / "diabetes.csv").write_text(header + rows)
    text = f"""\
name = "diabetes"
seeds = 2
[data]
name = "csv"
path = "data/diabetes.csv"
label = "target"
task = "regression"
features = {json.dumps(bunch.feature_names[:3])}
[model]
layers = ["Dense(8, activation='relu')", "Dense(1)"]
[training]
epochs = 5
lr = 0.01
[variants.none]
[variants.l2]
layers = {{ 0 = {{ kernel_regularizer = "l2(0.01)" }} }}
"""
    study = load(write(tmp_path, text))
    with Store(tmp_path / "d.db") as store:
        result = run(study, store)
    assert result.dataset.task == "regression" and result.dataset.X_train.shape[1] == 3
    assert result.summary["metric"] == "mae" and result.summary["task"] == "regression"
    for r in result.records:
        assert set(r["metrics"]) >= {"train_mae", "test_mae", "train_loss", "test_loss"}
        assert r["metrics"]["test_mae"] > 0
    check_summary(result.summary, result.records, [0, 1], ["none", "l2"], "none", "mae", False)
    assert "ensemble_accuracy" not in result.summary["rows"][0]["diagnosis"]

    # The report of a file-based study reads its data from anywhere, not only the study's folder.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with Store(tmp_path / "d.db") as store:
        rebuilt = from_store(store, "diabetes")
    same(rebuilt.summary, result.summary)


def test_a_run_without_histories_in_memory_summarises_the_same(tmp_path):
    """keep_histories=False (the CLI's choice) keeps only the curves the summary reads in memory;
    the summary is the same and the store still has every curve, also on resume."""
    text = BASE + '\n[variants.none]\n\n[variants.l2]\nlayers = { 0 = { kernel_regularizer = "l2(0.01)" } }\n'
    study = load(write(tmp_path, text))
    full = run(study, Store(tmp_path / "full.db"))
    for attempt in range(2):   # trained, then resumed from the store
        slim = run(load(write(tmp_path, text)), Store(tmp_path / "slim.db"), keep_histories=False)
        assert slim.trained == (4 if attempt == 0 else 0)
        assert {k for r in slim.records for k in r["history"]} == {"val_loss", "epoch"}
        same(full.summary, slim.summary)
    with Store(tmp_path / "slim.db") as store:
        stored = store.results(store.study("tiny")["id"])
    assert {k for r in stored for k in r["history"]} == {k for r in full.records for k in r["history"]}
