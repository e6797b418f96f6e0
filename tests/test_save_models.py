"""Predictions (reglab.predict / predict_proba) against the model's outputs computed by hand, and
saved models (``reglab run --save-models DIR``): every member reloads from its safetensors file
into the model its build.py builds and gets the test score the database holds for it."""

import importlib.util
import json

import numpy as np
import pandas as pd
import pytest
import safetensors.torch
import torch
from click.testing import CliRunner
from torch import nn

import reglab
from reglab import study as st
from reglab.cli import main
from reglab.store import Store
from reglab.study import from_dict
from reglab.study import spec as S
from reglab.study.saved import folder_name
from reglab.study.snippet import build_code

pytestmark = pytest.mark.usefixtures("one_thread")

RNG = np.random.default_rng(0)
X = RNG.normal(size=(11, 4)).astype(np.float32)


def linear(outputs, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(4, outputs)


def logits(model, X):
    """The model's outputs by hand: X W^T + b in NumPy (float64)."""
    W, b = model.weight.detach().double().numpy(), model.bias.detach().double().numpy()
    return np.asarray(X, dtype=np.float64) @ W.T + b


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------------- predict

def test_binary_labels_and_probabilities_in_scikit_learns_shape():
    model = linear(1)
    z = logits(model, X)[:, 0]
    labels = reglab.predict(model, X, batch_size=3)   # 4 batches, the last one short
    assert labels.dtype == np.int64 and labels.shape == (11,)
    np.testing.assert_array_equal(labels, (z > 0).astype(np.int64))
    proba = reglab.predict_proba(model, X, batch_size=3)
    assert isinstance(proba, np.ndarray) and proba.shape == (11, 2)
    np.testing.assert_allclose(proba[:, 1], sigmoid(z), rtol=1e-5, atol=1e-6)   # float32 against float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)


def test_multiclass_labels_and_probabilities():
    model = linear(3)
    z = logits(model, X)
    np.testing.assert_array_equal(reglab.predict(model, X), z.argmax(axis=1))
    proba = reglab.predict_proba(model, X)
    assert proba.shape == (11, 3)
    np.testing.assert_allclose(proba, softmax(z), rtol=1e-5, atol=1e-6)


def test_regression_values_and_no_probabilities():
    one, two = linear(1), linear(2)
    values = reglab.predict(one, X, task="regression")
    assert values.shape == (11,)
    np.testing.assert_allclose(values, logits(one, X)[:, 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(reglab.predict(two, X, task="regression"), logits(two, X), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="task is 'regression'; use reglab.predict"):
        reglab.predict_proba(one, X, task="regression")


def test_inputs_as_tensor_dataframe_or_list_give_the_same():
    model = linear(3)
    want = reglab.predict_proba(model, X)
    frame = pd.DataFrame(X, columns=list("abcd"))
    for given in (torch.from_numpy(X), frame, X.tolist(), X.astype(np.float64)):
        np.testing.assert_allclose(reglab.predict_proba(model, given), want, rtol=1e-6)


def test_integer_inputs_stay_token_ids_for_an_embedding_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 2), nn.Flatten(), nn.Linear(6, 3))
    ids = RNG.integers(0, 10, size=(7, 3))
    table = model[0].weight.detach().double().numpy()
    W, b = model[2].weight.detach().double().numpy(), model[2].bias.detach().double().numpy()
    z = table[ids].reshape(7, 6) @ W.T + b
    np.testing.assert_allclose(reglab.predict_proba(model, ids), softmax(z), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(reglab.predict(model, pd.DataFrame(ids)), z.argmax(axis=1))


def test_eval_mode_no_gradients_and_every_modules_mode_restored():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 1))
    model.train()
    model[1].eval()   # a mixed state: restored module by module, not as one flag
    with torch.no_grad():
        model.eval()
        want = torch.sigmoid(model(torch.from_numpy(X)))[:, 0].numpy()
        model.train()
        model[1].eval()
    model[0].train()
    proba = reglab.predict_proba(model, X)[:, 1]
    np.testing.assert_allclose(proba, want, rtol=1e-6)   # no dropout: eval mode
    assert [m.training for m in model] == [True, False, True] and model.training
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("call, error, words", [
    (lambda: reglab.predict("model", X), TypeError, "'model' parameter of predict must be a torch.nn.Module"),
    (lambda: reglab.predict(linear(1), "abc"), TypeError, "'X' parameter of predict must be an array"),
    (lambda: reglab.predict(linear(1), np.array([["a", "b", "c", "d"]])), TypeError, "must hold numbers"),
    (lambda: reglab.predict(linear(1), X[:0]), ValueError, "at least one sample"),
    (lambda: reglab.predict(linear(1), X, batch_size=0), ValueError, "'batch_size' parameter of predict"),
    (lambda: reglab.predict_proba(linear(1), X, batch_size=2.5), TypeError, "'batch_size' parameter of predict_proba"),
    (lambda: reglab.predict(linear(1), X, task="ranking"), ValueError, "'task' parameter must be one of"),
    (lambda: reglab.predict(linear(3), X, task="binary"), ValueError, "use task='multiclass'"),
    (lambda: reglab.predict(nn.Sequential(linear(1), nn.Flatten(0)), X), ValueError, "pass task='regression'"),
    (lambda: reglab.predict(nn.LSTM(4, 2, batch_first=True), X[None]), TypeError, "returned a tuple"),
])
def test_user_errors_are_one_clear_line(call, error, words):
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert words in message and "\n" not in message


# ------------------------------------------------------------------------------ build_code

def test_build_code_of_a_factory_model_imports_it_from_the_study_folder(tmp_path):
    (tmp_path / "my_net.py").write_text("from torch import nn\n\n\ndef net(width=4):\n"
                                        "    return nn.Sequential(nn.Linear(2, width), nn.ReLU(), nn.Linear(width, 1))\n")
    study = from_dict({"name": "f", "data": {"name": "moons"}, "model": {"factory": "my_net:net", "args": {"width": 5}},
                       "variants": {"l2": {"rules": {"0": {"kernel": "l2(0.01)"}}}}}, base_dir=tmp_path)
    variant = study.variants[0]
    model = S.builder(study, (2,), "binary")(variant.name)
    path = tmp_path / "elsewhere" / "build.py"
    path.parent.mkdir()
    path.write_text(build_code(study, variant, model))
    built = load_build(path).build()
    assert [type(m) for m in built] == [type(m) for m in model] and built[0].out_features == 5
    with torch.no_grad():
        assert float(reglab.penalty(built)) == pytest.approx(0.01 * float(built[0].weight.pow(2).sum()))


def load_build(path):
    """Import a build.py from its path (its own module name, so each file is a fresh module)."""
    spec = importlib.util.spec_from_file_location(f"build_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------- reglab run --save-models

STUDY = """\
name = "saved-models"
seeds = 2
baseline = "none"

[data]
name = "moons"

[model]
layers = ["Dense(8, input_dim=2, activation='relu')", "BatchNormalization()", "Dense(1, activation='sigmoid')"]

[training]
epochs = 3

[variants.none]

[variants."l2/../x"]
layers = { 0 = { kernel_regularizer = "l2(0.01)" } }
"""


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error_line(result, words):
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], result.stderr
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The study run once with --save-models: (study file, database, models folder)."""
    folder = tmp_path_factory.mktemp("saved")
    study, db, out = folder / "study.toml", folder / "s.db", folder / "models"
    study.write_text(STUDY)
    result = invoke("run", study, "--db", db, "--save-models", out)
    assert result.exit_code == 0, (result.output, result.exception)
    return study, db, out


def test_every_member_is_written_with_its_build_code_and_index(saved):
    _, _, out = saved
    index = json.loads((out / "index.json").read_text())
    assert (index["study"], index["task"], index["metric"]) == ("saved-models", "binary", "accuracy")
    got = [(m["variant"], m["split"], m["seed"], m["file"]) for m in index["members"]]
    assert got == [("none", 0, 0, "none/split0-seed0.safetensors"), ("none", 0, 1, "none/split0-seed1.safetensors"),
                   ("l2/../x", 0, 0, "l2%2F..%2Fx/split0-seed0.safetensors"),
                   ("l2/../x", 0, 1, "l2%2F..%2Fx/split0-seed1.safetensors")]
    # the variant's name cannot reach outside the folder: its '/' is escaped
    assert sorted(p.name for p in out.iterdir()) == ["index.json", "l2%2F..%2Fx", "none"]
    # no pickle anywhere (so torch.load and its weights_only are never needed), no temporary file left
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} == {".safetensors", ".py", ".json"} and len(files) == 4 + 2 + 1
    for p in files:
        if p.suffix == ".safetensors":   # 8-byte header length, then the JSON header: not a pickle or a zip
            head = p.read_bytes()[:9]
            assert head[8:9] == b"{" and not head.startswith(b"PK") and head[:1] != b"\x80"


def test_a_reloaded_member_gets_the_test_score_the_database_holds(saved):
    study_file, db, out = saved
    dataset = st.prepare(st.load(study_file))   # the same split as the run's (a fixed split seed)
    test = (dataset.X_test, dataset.y_test)
    with Store(db) as store:
        records = {(r["variant"], r.get("split", 0), r["seed"]): r
                   for r in store.results(store.study("saved-models")["id"])}
    index = json.loads((out / "index.json").read_text())
    for member in index["members"]:
        record = records[(member["variant"], member["split"], member["seed"])]
        assert member["test_accuracy"] == record["metrics"]["test_accuracy"]
        model = load_build(out / member["build"]).build()
        weights = safetensors.torch.load_file(out / member["file"])
        model.load_state_dict(weights)   # strict: every parameter and buffer, nothing else
        assert isinstance(model[2], reglab.KerasBatchNorm) and "2.running_mean" in weights
        assert torch.count_nonzero(model[2].running_mean) > 0   # the trained batch-norm statistics came back
        scores = reglab.evaluate(model, test)
        # The same float32 weights on the same rows: the same predictions, so the same accuracy; the
        # loss (data + the penalty build.py attaches) to float32 rounding, as sums may be blocked differently.
        assert scores["accuracy"] == pytest.approx(record["metrics"]["test_accuracy"], rel=1e-6)
        assert scores["loss"] == pytest.approx(record["metrics"]["test_loss"], rel=1e-6)
        proba = reglab.predict_proba(model, dataset.X_test)[:, 1]   # the store keeps them to 5 decimals
        np.testing.assert_allclose(proba, record["extra"]["test_proba"], atol=6e-6)


def test_a_resumed_run_trains_nothing_and_so_writes_nothing(saved, tmp_path):
    study_file, db, _ = saved
    again = tmp_path / "again"
    result = invoke("run", study_file, "--db", db, "--save-models", again)
    assert result.exit_code == 0, (result.output, result.exception)
    assert "0 members trained" in result.stdout
    assert list(again.iterdir()) == []
    assert "not trained again, so not written" in " ".join(invoke("run", "--help").stdout.split())


def test_a_file_as_the_folder_is_one_line_before_anything_is_recorded(tmp_path):
    study, db, file = tmp_path / "study.toml", tmp_path / "s.db", tmp_path / "models"
    study.write_text(STUDY)
    file.write_text("not a folder")
    one_error_line(invoke("run", study, "--db", db, "--save-models", file), "is a file; give a folder")
    assert not db.exists()


def test_another_studys_folder_and_dask_are_refused(tmp_path):
    study, db, other = tmp_path / "study.toml", tmp_path / "s.db", tmp_path / "other"
    study.write_text(STUDY)
    other.mkdir()
    (other / "index.json").write_text(json.dumps({"study": "another", "members": []}))
    one_error_line(invoke("run", study, "--db", db, "--save-models", other), "holds the models of the study 'another'")
    one_error_line(invoke("run", study, "--db", db, "--save-models", tmp_path / "m", "--executor", "dask"),
                   "--save-models needs --executor local")
    assert not db.exists() and not (tmp_path / "m").exists()


def test_folder_names_are_escaped_not_rejected():
    assert folder_name("0.001") == "0.001" and folder_name("a=0.1, b=0.01") == "a=0.1, b=0.01"
    assert folder_name("..") == "%2E%2E" and folder_name(".") == "%2E" and folder_name("") == "%"
    assert folder_name("a\\b") == "a%5Cb" and folder_name("50%") == "50%25"   # '%' escaped: no two names collide
