"""The winning configuration as runnable PyTorch code (reglab.study.snippet.variant_snippet).

Every snippet is executed here (``exec`` lives in this test only; the package never evaluates
code): for a variant of every kind a study can express -- penalty, constraint, activity penalty
with the "sum" convention, inserted and replaced layers, early stopping, AdamW with weight decay,
SGD with momentum, another batch size / learning rate / preset, a factory model with rules -- the
snippet must build the model the study built (same modules, same forward function, same attached
penalties and constraints), call ``reglab.fit`` with exactly the study's training settings, and
train: run on the study's data with the run's seed it gives the very member the study trained.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

import reglab
from reglab import diagnose
from reglab.attach import attached
from reglab.data import load as load_data
from reglab.study import from_dict, run
from reglab.study import spec as S
from reglab.study.snippet import _leaf_code, variant_snippet

pytestmark = pytest.mark.usefixtures("one_thread")

MLP = ["Dense(16, input_dim=2, activation='relu')", "Dense(1, activation='sigmoid')"]
EPOCHS = 6

# Each variant with the reglab.fit arguments (besides epochs, task, seed, callbacks) it must train with.
VARIANTS = {
    "none": ({}, {}),
    "l2": ({"layers": {"0": {"kernel_regularizer": "l2(0.01)", "bias_regularizer": "l1(0.001)"}}}, {}),
    "max_norm": ({"layers": {"0": {"kernel_constraint": "max_norm(0.5)"}}}, {}),
    "activity_sum": ({"activity_convention": "sum", "layers": {"0": {"activity_regularizer": "l1(0.001)"}}}, {}),
    "dropout": ({"insert": {"0": "Dropout(0.5)", "input": "GaussianNoise(0.1)"}}, {}),
    "replaced": ({"replace": ["Dense(12, input_dim=2, activation='linear')", "Activation('tanh')",
                              "GaussianDropout(0.2)", "ActivityRegularization(l1=0.001)",
                              "Dense(8, activation='elu', use_bias=False, kernel_regularizer=l1_l2(l1=0.001, l2=0.01))",
                              "Dense(1, activation='sigmoid')"]}, {}),
    "early_stopping": ({"training": {"early_stopping": {"patience": 1, "min_delta": 10.0,
                                                        "restore_best_weights": True}}}, {}),
    "adamw": ({"training": {"optimizer": "adamw", "weight_decay": 0.05}}, {"optimizer": "adamw", "weight_decay": 0.05}),
    "sgd": ({"training": {"optimizer": "sgd", "momentum": 0.9, "lr": 0.05}},
            {"optimizer": "sgd", "momentum": 0.9, "lr": 0.05}),
    "batch_lr": ({"training": {"batch_size": 4, "lr": 0.02, "preset": "torch"}},
                 {"batch_size": 4, "lr": 0.02, "preset": "torch"}),
    "alpha_dropout": ({"insert": {"0": "AlphaDropout(0.1)"}}, {}),
    # per-member settings: trained in the same population as "none", each member its own
    "smooth_weights": ({"training": {"label_smoothing": 0.1, "class_weight": {"0": 1.0, "1": 3.0}}},
                       {"label_smoothing": 0.1, "class_weight": {0: 1.0, 1: 3.0}}),
    "rmsprop_clip": ({"training": {"optimizer": "rmsprop", "clipnorm": 0.5, "lr": 0.01}},
                     {"optimizer": "rmsprop", "clipnorm": 0.5, "lr": 0.01}),
    "adagrad_clipvalue": ({"training": {"optimizer": "adagrad", "clipvalue": 0.05, "lr": 0.05}},
                          {"optimizer": "adagrad", "clipvalue": 0.05, "lr": 0.05}),
    "cosine": ({"training": {"schedule": {"kind": "cosine", "decay_steps": 30, "alpha": 0.1, "warmup_steps": 5}}},
               {"schedule": {"kind": "cosine", "decay_steps": 30, "alpha": 0.1, "warmup_steps": 5, "warmup_start": 0.0}}),
    "plateau": ({"training": {"lr": 0.01, "schedule": {"kind": "plateau", "patience": 0, "factor": 0.5, "min_delta": 0.0}}},
                {"lr": 0.01, "schedule": {"kind": "plateau", "monitor": "val_loss", "factor": 0.5, "patience": 0,
                                          "mode": "auto", "min_delta": 0.0, "cooldown": 0, "min_lr": 0.0}}),
    # mixup and weight averaging: shared by a population, each member drawing / averaging its own
    "mixup": ({"training": {"mixup": {"mixup_alpha": 0.4, "prob": 0.8}}},
              {"mixup": reglab.Mixup(mixup_alpha=0.4, prob=0.8)}),
    "ema": ({"training": {"ema": {"momentum": 0.9}}}, {"ema": reglab.EMA(momentum=0.9)}),
    "swa": ({"training": {"swa": {"start_epoch": 3}, "batch_size": 8}},
            {"swa": reglab.SWA(start_epoch=3), "batch_size": 8}),
}


def _study(variants=None, **extra):
    raw = {"name": "snippets", "seeds": [0, 2], "data": {"name": "moons"}, "model": {"layers": MLP},
           "training": {"epochs": EPOCHS}, "variants": variants or {k: v[0] for k, v in VARIANTS.items()}, **extra}
    return from_dict(raw)


@pytest.fixture(scope="module")
def moons():
    return load_data({"name": "moons"})


def execute(code: str, train, validation) -> dict:
    """Run a snippet with the data it asks for defined first; its namespace afterwards."""
    namespace = {"train": train, "validation": validation}
    exec(compile(code, "<snippet>", "exec"), namespace)   # noqa: S102 - the point of the test
    return namespace


def regularization(model: nn.Module) -> dict:
    """What is attached where: penalties, constraints, activity penalty and its convention."""
    return {name: (dict(reg.penalties), dict(reg.constraints), reg.activity,
                   reg.activity_convention if reg.activity is not None else None)
            for name, _, reg in attached(model)}


def assert_same_model(built: nn.Module, expected: nn.Module, X):
    """Same modules, same attached regularization, same function (given the same weights)."""
    assert str(built) == str(expected)
    assert [type(m) for m in built.modules()] == [type(m) for m in expected.modules()]
    assert regularization(built) == regularization(expected)
    built.load_state_dict(expected.state_dict())
    x = torch.as_tensor(np.asarray(X), dtype=torch.get_default_dtype())
    with torch.no_grad():
        assert torch.equal(built.eval()(x), expected.eval()(x))


@pytest.fixture
def fit_calls(monkeypatch):
    """Every reglab.fit call a snippet makes (it is still trained by the real reglab.fit)."""
    calls, real = [], reglab.fit

    def recording(model, train, validation=None, **kwargs):
        calls.append(kwargs)
        return real(model, train, validation, **kwargs)

    monkeypatch.setattr(reglab, "fit", recording)
    return calls


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_kind_of_variant_runs_as_its_snippet(name, moons, fit_calls):
    study = _study()
    variant = next(v for v in study.variants if v.name == name)
    build = S.builder(study, tuple(moons.X_train.shape[1:]), moons.task)
    code = variant_snippet(study, variant, build(name), task=moons.task, seed=2)
    assert "# train = (X_train, y_train); validation = (X_val, y_val)" in code
    assert "no regularization attached" not in code and "..." not in code

    namespace = execute(code, (moons.X_train, moons.y_train), moons.validation())
    assert_same_model(namespace["model"], build(name), moons.X_test)

    (kwargs,) = fit_calls
    expected = {"epochs": EPOCHS, "task": "binary", "preset": "keras", "seed": 2, **VARIANTS[name][1]}
    callbacks = kwargs.pop("callbacks", [])
    if "schedule" in kwargs:
        kwargs["schedule"] = kwargs["schedule"].spec()
    assert kwargs == expected
    es = VARIANTS[name][0].get("training", {}).get("early_stopping")
    if es:
        (callback,) = callbacks
        assert isinstance(callback, reglab.EarlyStopping)
        reference = reglab.EarlyStopping(**es)
        assert {k: getattr(callback, k) for k in es} == {k: getattr(reference, k) for k in es}
        assert namespace["history"].stopped_epoch is not None     # min_delta = 10: it stopped
    else:
        assert callbacks == []
    history = namespace["history"]
    assert isinstance(history, reglab.History) and not history.diverged
    assert all(math.isfinite(v) for v in history.history["loss"])


def test_the_snippets_of_a_run_retrain_its_members_exactly(moons):
    """The record of every (variant, seed) carries its snippet; on the study's data it trains the
    same weights as the study did -- the training settings are exactly the study's."""
    study = _study()
    result = run(study)
    assert len(result.records) == len(VARIANTS) * 2
    for record in result.records:
        code = record["extra"]["snippet"]
        assert f"seed={record['seed']}" in code
        namespace = execute(code, (moons.X_train, moons.y_train), moons.validation())
        model = namespace["model"]
        assert len(namespace["history"].epoch) == record["epochs_run"], record["variant"]
        norms = diagnose.weight_norms(model)
        assert norms.keys() == record["extra"]["weight_norms"].keys()
        for layer, values in record["extra"]["weight_norms"].items():
            assert norms[layer] == pytest.approx(values, rel=1e-5), (record["variant"], record["seed"], layer)
    assert any(r["epochs_run"] < EPOCHS for r in result.records if r["variant"] == "early_stopping")
    winner = result.summary.get("winner")
    if winner:    # the summary's snippet is the winner's
        assert result.summary["snippet"] in {r["extra"]["snippet"] for r in result.records if r["variant"] == winner}


# Layer lines of every kind a study builds, with the input shape and task of their data.
ARCHITECTURES = {
    "cnn": ((1, 8, 8), "multiclass", [
        "Conv2D(4, (3, 3), padding='same', activation='relu', kernel_constraint=max_norm(3), input_shape=(1, 8, 8))",
        "MaxPooling2D((2, 2))", "Conv2D(6, 2, strides=2, activation='leaky_relu', bias_regularizer=l2(0.01))",
        "AveragePooling2D(2)", "Flatten()", "Dropout(0.25)", "Dense(3, activation='softmax')"]),
    "conv1d": ((10, 3), "binary", [
        "Conv1D(5, 3, activation='gelu', activity_regularizer=l2(0.001))", "AveragePooling1D(2)",
        "MaxPooling1D(2)", "Flatten()", "Dense(4, activation='softmax')", "Dense(1, activation='sigmoid')"]),
    "lstm": ((6, 3), "regression", [
        "LSTM(5, return_sequences=True, dropout=0.2, recurrent_regularizer=l2(0.01), recurrent_constraint=unit_norm())",
        "GRU(4, return_sequences=True, kernel_regularizer=l1(0.001))",
        "SimpleRNN(3, activation='relu', use_bias=False)", "Dense(1)"]),
}


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_models_of_every_layer_kind_are_written_as_torch_code(name, fit_calls):
    shape, task, lines = ARCHITECTURES[name]
    study = from_dict({"name": name, "data": {"name": "moons"}, "model": {"layers": lines, "activity_convention": "sum"},
                       "training": {"epochs": 2, "batch_size": 8},
                       "variants": {"noisy": {"insert": {"input": "GaussianNoise(0.05)"}}}})
    variant = study.variants[0]
    build = S.builder(study, shape, task, classes=3 if task == "multiclass" else None)
    code = variant_snippet(study, variant, build("noisy"), task=task)
    assert "nn.Sequential(" in code and "reglab.GaussianNoise(stddev=0.05)" in code
    gen = np.random.default_rng(0)
    X = gen.normal(size=(20, *shape)).astype(np.float32)
    y = gen.integers(0, 3, 20) if task == "multiclass" else (
        gen.integers(0, 2, 20).astype(np.float32) if task == "binary" else gen.normal(size=20).astype(np.float32))
    namespace = execute(code, (X, y), (X[:6], y[:6]))
    assert_same_model(namespace["model"], build("noisy"), X)
    assert fit_calls[0]["batch_size"] == 8 and fit_calls[0]["epochs"] == 2 and fit_calls[0]["task"] == task
    assert len(namespace["history"].epoch) == 2


FACTORY = '''\
import reglab
from torch import nn


def model():
    net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 4), nn.Tanh()), nn.Linear(4, 1))
    reglab.regularize(net[3], bias=reglab.L2(0.5))     # the factory's own regularization
    return net
'''


def test_a_factory_model_with_rules(tmp_path, monkeypatch, moons, fit_calls):
    module = f"snippet_factory_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(FACTORY)
    raw = {"name": "factory", "seeds": [1], "data": {"name": "moons"},
           "model": {"factory": f"{module}:model", "rules": {"0": {"kernel": "l2(0.01)"}}},
           "training": {"epochs": EPOCHS, "optimizer": "sgd", "lr": 0.1, "momentum": 0.5},
           "variants": {"base": {},
                        "rules": {"activity_convention": "sum",
                                  "rules": {"0": {"kernel_constraint": "max_norm(1)"},
                                            "2.0": {"kernel": "l1_l2(l1=0.001, l2=0.01)", "activity": "l1(0.01)"}},
                                  "training": {"early_stopping": {"monitor": "val_accuracy", "patience": 3}}}}}
    study = from_dict(raw, base_dir=tmp_path)
    build = S.builder(study, (2,), "binary")
    monkeypatch.syspath_prepend(str(tmp_path))     # the study file's folder, as the snippet says
    result = run(study, dataset=moons)
    for record in result.records:
        variant = next(v for v in study.variants if v.name == record["variant"])
        code = variant_snippet(study, variant, build(variant.name), task="binary", seed=record["seed"])
        assert f"from {module} import model as build_model" in code and "model = build_model()" in code
        namespace = execute(code, (moons.X_train, moons.y_train), moons.validation())
        trained = namespace["model"]
        assert_same_model(trained, build(variant.name), moons.X_test)    # (loads the untrained weights)
        namespace = execute(code, (moons.X_train, moons.y_train), moons.validation())
        norms = diagnose.weight_norms(namespace["model"])
        for layer, values in record["extra"]["weight_norms"].items():
            assert norms[layer] == pytest.approx(values, rel=1e-5), (record["variant"], layer)
    rules_code = variant_snippet(study, study.variants[1], build("rules"), task="binary")
    assert ("reglab.regularize(model[0], kernel=reglab.L2(l2=0.01), kernel_constraint=reglab.MaxNorm(max_value=1.0))"
            in rules_code)
    assert ("reglab.regularize(model.get_submodule('2.0'), kernel=reglab.L1L2(l1=0.001, l2=0.01), "
            "activity=reglab.L1(l1=0.01), activity_convention='sum')" in rules_code)
    assert "callbacks=[reglab.EarlyStopping(monitor='val_accuracy', patience=3)]" in rules_code
    assert {k: v for k, v in fit_calls[-1].items() if k != "callbacks"} == {
        "epochs": EPOCHS, "optimizer": "sgd", "lr": 0.1, "momentum": 0.5, "task": "binary", "preset": "keras", "seed": 1}


def test_a_snippet_is_always_written():
    """A model that cannot be written as code still gets a snippet (its regularization), not an error."""

    class Custom(nn.Module):
        def forward(self, x):
            return x

    model = nn.Sequential(nn.Linear(2, 3), Custom())
    reglab.regularize(model[0], kernel=reglab.L2(0.1))
    code = variant_snippet(None, S.Variant("odd", layers=["Dense(3)"]), model)
    assert "could not be written out in full" in code and "reglab.regularize(model[0], kernel=reglab.L2(l2=0.1))" in code
    # Without the study a factory's function is unknown: the snippet says so instead of guessing.
    code = variant_snippet(None, S.Variant("f", layers=None, rules={"0": {"kernel": "l2(0.1)"}}), model)
    assert "model.factory" in code and "reglab.regularize(model[0], kernel=reglab.L2(l2=0.1))" in code


def test_the_augmentation_layers_are_written_as_code():
    """The digits toolbox's augmentation variant (Keras lines → reglab layers) as code builds the same
    model, arguments that differ from the defaults included."""
    from importlib import resources

    from reglab import data as data_mod
    from reglab.study import load

    path = resources.files("reglab") / "examples" / "digits_toolbox.toml"
    with resources.as_file(path) as file:
        study = load(file)
    digits = data_mod.load(study.data, base_dir=study.base_dir)
    variant = next(v for v in study.variants if v.name == "augmentation")
    build = S.builder(study, tuple(digits.X_train.shape[1:]), digits.task, classes=10)
    code = variant_snippet(study, variant, build("augmentation"), task=digits.task)
    assert "reglab.RandomTranslation(0.125, 0.125, fill_mode='constant')" in code
    assert "reglab.RandomRotation(0.03, fill_mode='constant')" in code
    namespace = execute(code.split("history = reglab.fit(")[0], None, None)
    assert_same_model(namespace["model"], build("augmentation"), digits.X_test[:20])
    drop = reglab.DropPath(0.2, scale_by_keep=False)
    assert _leaf_code(drop) == "reglab.DropPath(p=0.2, scale_by_keep=False)"
    assert _leaf_code(reglab.RandomZoom((-0.2, 0.1), fill_mode="nearest")) == \
        "reglab.RandomZoom((-0.2, 0.1), fill_mode='nearest')"
