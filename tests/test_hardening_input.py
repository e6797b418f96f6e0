"""The bad input campaign (issue 7): malformed study files, data files and CLI arguments.

Every case runs the real CLI and must end with exit code 2 and exactly one line ``error: ...`` that
names the offending key, file, row or value and says the fix, with no traceback, and must write
nothing: no database, no report folder, no file changed byte for byte. Hypothesis then fuzzes the
study-file and CSV loaders: any input loads or raises reglab's own error (StudyError, DataError).

Decisions recorded here:

- A feature value beyond float32's range (|x| > 3.4e38, e.g. 1e308 or 1e400 = inf) is refused with
  its row and column: the model computes in float32, where it would be inf. A finite huge value
  inside that range (1e30) loads; standardisation brings it back to a usable scale.
- A classification file whose label column holds one class is refused (nothing can be learned). A
  one-row file is refused: it cannot be split into training and test parts.
- A study whose last layer does not fit the task (3 outputs for a binary task, a sequence output) is
  refused before training, like any other shape that does not fit.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
import os
import sqlite3
import string
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import reglab
from reglab import data as D
from reglab.cli import main
from reglab.data import DataError
from reglab.study import StudyError, from_dict, keras, load, prepare
from reglab.study import spec as S

EXAMPLES = Path(reglab.__file__).parent / "examples"
REGLAB = Path(sys.executable).with_name("reglab")


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py: torch and numba on one thread


def fuzz(examples: int):
    """Hypothesis settings; REGLAB_FUZZ_SCALE=20 runs 20 times the examples (a longer hunt, not for CI)."""
    scale = int(os.environ.get("REGLAB_FUZZ_SCALE", "1"))
    return settings(max_examples=examples * scale, deadline=None, suppress_health_check=[HealthCheck.too_slow])


FUZZ = fuzz(100)


STUDY = """\
name = "hard"
seeds = 1

[data]
name = "moons"

[model]
layers = ["Dense(8, input_dim=2, activation='relu')", "Dense(1, activation='sigmoid')"]

[training]
epochs = 2
"""

CSV_STUDY = """\
name = "hard-csv"
seeds = 1

[data]
name = "csv"
path = "d.csv"
label = "y"

[model]
layers = ["Dense(8, activation='relu')", "Dense(1, activation='sigmoid')"]

[training]
epochs = 2
"""

GRID = STUDY.replace('seeds = 1', 'seeds = 1\nprotocol = "grid"') + """
[grid]
variant = { layers = { 0 = { kernel_regularizer = "l2({value})" } } }
values = [0.1, 0.01]
"""

GOOD_ROWS = "".join(f"{i / 10},{(i * 7) % 5},{i % 2}\n" for i in range(40))


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def snapshot(folder: Path) -> dict:
    """Every file and folder under ``folder`` with its bytes: 'nothing written' is an equal snapshot."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else "dir") for p in sorted(folder.rglob("*"))}


def refused(result, *words) -> str:
    """Exit code 2; the whole output is one line 'error: ...' on stderr naming ``words``; no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.output.splitlines()
    assert len(lines) == 1, result.output
    assert result.stdout == "" and result.stderr == lines[0] + "\n", (result.stdout, result.stderr)
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def refused_and_nothing_written(folder: Path, args, *words) -> str:
    before = snapshot(folder)
    line = refused(invoke(*args), *words)
    assert snapshot(folder) == before, f"the refused command wrote into {folder}"
    return line


# ------------------------------------------------------------------------------------------ study files

def _with(text, old, new):
    assert old in text, old
    return text.replace(old, new, 1)


def _variant(change: str) -> str:
    return STUDY + f"\n[variants.none]\n\n[variants.a]\n{change}\n"


PWNED = "PWNED"   # a file the code-execution lines try to create; it must never appear

STUDY_CASES = {
    # TOML syntax errors: the file, the line and column, the fix
    "toml: unclosed table header": (STUDY + "[variants.x\n", ["study.toml", "is not valid TOML", "line 12, column 12", "fix the TOML syntax"]),
    "toml: unterminated string": (_with(STUDY, 'name = "hard"', 'name = "hard'), ["is not valid TOML", "line 1"]),
    "toml: key given twice": (_with(STUDY, "seeds = 1", "seeds = 1\nseeds = 2"), ["is not valid TOML", "line 3"]),
    "toml: not UTF-8": (None, ["study.toml", "is not UTF-8 text", "save it as a TOML text file"]),
    # unknown keys, with 'did you mean'
    "unknown top-level key": ("protocl = 'grid'\n" + STUDY, ["study: unknown key 'protocl'", "did you mean 'protocol'"]),
    "unknown table": (_with(STUDY, "[training]", "[trainig]"), ["unknown key 'trainig'", "did you mean 'training'"]),
    "unknown training key": (_with(STUDY, "epochs = 2", "epoch = 2"), ["training: unknown key 'epoch'", "did you mean 'epochs'"]),
    "unknown data key": (_with(STUDY, 'name = "moons"', 'name = "moons"\nnoize = 0.1'),
                         ["[data] has an unknown key 'noize'", "did you mean 'noise'"]),
    "unknown variant key": (_variant("layer = { 0 = { use_bias = false } }"),
                            ["variants.a: unknown key 'layer'", "did you mean 'layers'"]),
    "unknown grid key": (GRID + "valus = [0.1]\n", ["grid: unknown key 'valus'", "did you mean 'values'"]),
    "unknown early-stopping key": (_with(STUDY, "epochs = 2", "epochs = 2\nearly_stopping = { patiance = 3 }"),
                                   ["training.early_stopping: unknown key 'patiance'", "did you mean 'patience'"]),
    "unknown layer argument": (_with(STUDY, "activation='relu'", "activaton='relu'"),
                               ["model.layers[0]", "no argument 'activaton'", "did you mean 'activation'"]),
    # wrong types
    "seeds a string": (_with(STUDY, "seeds = 1", 'seeds = "ten"'), ["'seeds' must be a count", "Got 'ten'"]),
    "epochs a float": (_with(STUDY, "epochs = 2", "epochs = 2.5"), ["training.epochs must be an int >= 1", "Got 2.5"]),
    "batch_size a bool": (_with(STUDY, "epochs = 2", "epochs = 2\nbatch_size = true"), ["training.batch_size must be an int"]),
    "layers a string": (_with(STUDY, 'layers = ["Dense(8, input_dim=2, activation=\'relu\')", ',
                              'layers = "Dense(8)"\nx = ['), None),   # replaced below
    "model a number": (_with(STUDY, "[model]\n", "model = 5\n[modelx]\n"), None),   # replaced below
    "test_fraction a string": (_with(STUDY, 'name = "moons"', 'name = "moons"\ntest_fraction = "0.3"'),
                               ["[data] key 'test_fraction' must be a float in (0, 1)", "Got '0.3'"]),
    "refine a string": (GRID + 'refine = "yes"\n', ["grid.refine must be true or false", "Got 'yes'"]),
    "units a string": (_with(STUDY, "Dense(8,", "Dense('eight',"), ["layer 0", "units must be a positive int", "Got 'eight'"]),
    # negative, NaN and absurd strengths and hyperparameters
    "negative L2": (_variant('layers = { 0 = { kernel_regularizer = "l2(-0.1)" } }'),
                    ["variants.a.layers.0", "'l2' parameter of L2 must be a finite float >= 0", "Got -0.1"]),
    "NaN L2": (_variant('layers = { 0 = { kernel_regularizer = "l2(nan)" } }'), ["variants.a.layers.0", "Got nan"]),
    "infinite L1": (_with(STUDY, "activation='relu'", "activation='relu', kernel_regularizer=l1_l2(l1=inf)"),
                    ["model.layers[0]", "'l1' parameter of L1L2 must be a finite float >= 0", "Got inf"]),
    "a 400-digit L2": (_with(STUDY, "activation='relu'", "activation='relu', kernel_regularizer=l2(1" + "0" * 400 + ")"),
                       ["model.layers[0]", "is too large"]),
    "negative grid strength": (_with(GRID, "[0.1, 0.01]", "[-0.1, 0.01]"), ["grid.values", "Got -0.1"]),
    "NaN grid strength": (_with(GRID, "[0.1, 0.01]", "[nan, 0.01]"), ["grid.values", "finite numbers >= 0", "Got nan"]),
    "a 400-digit grid strength": (_with(GRID, "[0.1, 0.01]", "[1" + "0" * 400 + "]"),
                                  ["grid.values", "finite numbers >= 0", "(401 characters)"]),
    "negative learning rate": (_with(STUDY, "epochs = 2", "epochs = 2\nlr = -0.001"), ["training.lr must be a finite number >= 0"]),
    "NaN learning rate": (_with(STUDY, "epochs = 2", "epochs = 2\nlr = nan"), ["training.lr", "Got nan"]),
    "a 400-digit learning rate": (_with(STUDY, "epochs = 2", "epochs = 2\nlr = 1" + "0" * 400),
                                  ["training.lr must be a finite number >= 0", "(401 characters)"]),
    "a 400-digit min_delta": (_with(STUDY, "epochs = 2", "epochs = 2\nearly_stopping = { min_delta = 1" + "0" * 400 + " }"),
                              ["training.early_stopping.min_delta must be a finite number"]),
    "negative seeds": (_with(STUDY, "seeds = 1", "seeds = -3"), ["'seeds' must be between 1 and 100000", "Got -3"]),
    "dropout rate above 1": (_variant('insert = { 0 = "Dropout(1.5)" }'), ["variants.a: layer 1 'Dropout(rate=1.5)'", "rate must be a number in [0, 1)", "Got 1.5"]),
    "LSTM dropout 2": (_with(STUDY, "[training]", "[training]").replace(
        'name = "moons"', 'name = "digits"\nshape = "sequence"').replace(
        "\"Dense(8, input_dim=2, activation='relu')\", \"Dense(1, activation='sigmoid')\"",
        "\"LSTM(4, dropout=2)\", \"Dense(10, activation='softmax')\""), ["layer 0", "dropout must be a number in [0, 1)", "Got 2"]),
    "a trillion units": (_with(STUDY, "Dense(8,", "Dense(1000000000000,"),
                         ["layer 0", "2,000,000,000,000 weights", "lower units"]),
    "negative kernel size": (STUDY.replace('name = "moons"', 'name = "digits"\nshape = "image"').replace(
        "\"Dense(8, input_dim=2, activation='relu')\"", "\"Conv2D(4, -3)\", \"Flatten()\"").replace(
        "Dense(1, activation='sigmoid')", "Dense(10, activation='softmax')"),
        ["layer 0", "kernel_size must be a positive int", "Got -3"]),
    "activity regularization with text": (_with(STUDY, '"Dense(1,', '"ActivityRegularization(l1=\'x\')", "Dense(1,'),
                                          ["model.layers[1]", "'l1' parameter of L1L2 must be a finite float"]),
    # empty grids and model
    "empty grid values": (_with(GRID, "[0.1, 0.01]", "[]"), ["grid.values must be a non-empty list", "e.g. [0.1, 0.01, 0.001]"]),
    "empty grid table": (_with(GRID, "[0.1, 0.01]", "{}"), ["grid.values is empty", "values = [0.1, 0.01, 0.001]"]),
    "empty grid axis": (_with(GRID, "[0.1, 0.01]", "{ l1 = [], l2 = [0.1] }"), ["grid.values.l1 must be a non-empty list"]),
    "empty layer list": (None, ["model.layers must be a non-empty list of layer lines"]),   # built below
    "grid without a template": (GRID.replace('variant = { layers = { 0 = { kernel_regularizer = "l2({value})" } } }\n', ""),
                                ["grid.variant is missing", "kernel_regularizer"]),
    # unknown layer, regularizer, constraint, activation, optimizer names
    "unknown layer": (_with(STUDY, "Dense(8,", "Dense2(8,"), ["model.layers[0]", "Unknown layer 'Dense2'", "did you mean 'Dense'"]),
    "unknown regularizer": (_variant('layers = { 0 = { kernel_regularizer = "l3(0.1)" } }'),
                            ["variants.a.layers.0", "kernel_regularizer: Unknown penalty 'l3'; known penalties: l1, l1_l2, l2, orthogonal"]),
    "unknown constraint": (_variant('layers = { 0 = { kernel_constraint = "unit_nrm()" } }'),
                           ["variants.a.layers.0", "Unknown constraint 'unit_nrm'", "known constraints"]),
    "unknown activation": (_with(STUDY, "activation='relu'", "activation='rleu'"), ["unknown activation 'rleu'", "known: "]),
    "unknown optimizer": (_with(STUDY, "epochs = 2", "epochs = 2\noptimizer = 'adadelta'"),
                          ["training.optimizer must be 'adam', 'adamw', 'sgd', 'rmsprop' or 'adagrad'",
                           "Got 'adadelta'"]),
    "unknown dataset": (_with(STUDY, 'name = "moons"', 'name = "moon"'), ["[data] name = 'moon'", "did you mean 'moons'"]),
    # a constraint (or penalty) on a layer without that weight
    "kernel constraint on Activation": (_with(STUDY, '"Dense(1,', '"Activation(\'relu\', kernel_constraint=unit_norm())", "Dense(1,'),
                                        ["model.layers[1]", "Activation has no argument 'kernel_constraint': it has no kernel weight",
                                         "Dense, Conv1D, Conv2D, LSTM, GRU, SimpleRNN take kernel_constraint"]),
    "recurrent constraint on Dense": (_variant('layers = { 0 = { recurrent_constraint = "max_norm(3)" } }'),
                                      ["variants.a.layers.0", "Dense has no argument 'recurrent_constraint': it has no recurrent weight",
                                       "LSTM, GRU, SimpleRNN take recurrent_constraint"]),
    "bias constraint without a bias": (_variant('layers = { 0 = { use_bias = false, bias_constraint = "max_norm(2)" } }'),
                                       ["variants.a", "no bias weight", "its parameters are: weight"]),
    "regularizer on Dropout": (_variant('insert = { 0 = "Dropout(0.5, kernel_regularizer=l2(0.1))" }'),
                               ["variants.a.insert.0", "Dropout has no argument 'kernel_regularizer': it has no kernel weight"]),
    "orthogonal on a conv kernel": (STUDY.replace('name = "moons"', 'name = "digits"\nshape = "image"').replace(
        "\"Dense(8, input_dim=2, activation='relu')\"", "\"Conv2D(2, 3, kernel_regularizer=orthogonal(0.1))\", \"Flatten()\"").replace(
        "Dense(1, activation='sigmoid')", "Dense(10, activation='softmax')"),
        ["layer 0", "Orthogonal needs a 2-D weight", "attach it to a Linear weight"]),
    # shapes that do not fit
    "input_dim does not fit": (_with(STUDY, "input_dim=2", "input_dim=3"), ["layer 0", "input_dim=3 does not fit", "shape (2,)", "write input_dim=2 or leave it out"]),
    "input_shape not a shape": (_with(STUDY, "input_dim=2", "input_shape=5"), ["model.layers[0]", "input_shape must be a tuple"]),
    "Conv2D on flat data": (_with(STUDY, "Dense(8, input_dim=2, activation='relu')", "Conv2D(4, 3)\", \"Flatten()"),
                            ["Conv2D needs samples of shape (channels, height, width)", "shape (2,)"]),
    "LSTM on flat data": (_with(STUDY, "Dense(8, input_dim=2, activation='relu')", "LSTM(4)"),
                          ["LSTM needs samples of shape (steps, features)"]),
    "pool larger than the image": (STUDY.replace('name = "moons"', 'name = "digits"\nshape = "image"').replace(
        "\"Dense(8, input_dim=2, activation='relu')\"", "\"MaxPooling2D(16)\", \"Flatten()\"").replace(
        "Dense(1, activation='sigmoid')", "Dense(10, activation='softmax')"), ["layer 0", "does not fit inputs of shape (1, 8, 8)", "use a smaller kernel_size/pool_size"]),
    "three outputs for a binary task": (_with(STUDY, "Dense(1, activation='sigmoid')", "Dense(3, activation='softmax')"),
                                        ["layer 1", "gives 3 outputs per sample, but a binary task needs 1",
                                         "end with Dense(1, activation='sigmoid')"]),
    "a sequence output": (STUDY.replace('name = "moons"', 'name = "digits"\nshape = "sequence"').replace(
        "\"Dense(8, input_dim=2, activation='relu')\"", "\"LSTM(4, return_sequences=True)\"").replace(
        "Dense(1, activation='sigmoid')", "Dense(10, activation='softmax')"), ["layer 1", "add Flatten()"]),
    "layer index out of range": (_variant('layers = { 5 = { kernel_regularizer = "l2(0.1)" } }'),
                                 ["variants.a.layers: layer 5 does not exist", "layers 0 to 1"]),
    "insert at a non-index": (_variant('insert = { "²" = "Dropout(0.5)" }'), ["variants.a.insert: '²' must be a layer index"]),
    # lines that try to run code: parsed without eval, never run
    "code in a layer line": (_with(STUDY, "\"Dense(8, input_dim=2, activation='relu')\"",
                                   f"\"__import__('os').system('touch {PWNED}')\""), ["model.layers[0]", "only plain names may be called"]),
    "code as an argument": (_with(STUDY, "activation='relu'", f"activation=__import__('os').system('touch {PWNED}')"),
                            ["model.layers[0]", "__import__", "only plain names may be called"]),
    "eval in a regularizer": (_variant(f'layers = {{ 0 = {{ kernel_regularizer = "eval(\\"open(\'{PWNED}\', \'w\')\\")" }} }}'),
                              ["variants.a.layers.0", "Unknown penalty 'eval'"]),
    "lambda in an inserted line": (_variant(f'insert = {{ 0 = "Dropout((lambda: __import__(\'os\').system(\'touch {PWNED}\'))())" }}'),
                                   ["variants.a.insert.0", "Cannot parse layer"]),
    "dunder attribute chain": (_with(STUDY, "activation='relu'", "activation=().__class__.__bases__[0].__subclasses__()"),
                               ["model.layers[0]", "Cannot parse layer"]),
    "code in a grid template": (_with(GRID, 'l2({value})', f"__import__('os').system('touch {PWNED}') or l2({{value}})"),
                                ["variants.0.1.layers.0", "Cannot parse layer"]),
    "a NUL byte in a line": (_with(STUDY, "Dense(8,", "Dense(8,\\u0000"), ["model.layers[0]", "null bytes"]),
    "a line nested 3000 deep": (_with(STUDY, "Dense(8,", "Dense(" + "-" * 3000 + "8,"), ["model.layers[0]", "nested too deeply"]),
}
STUDY_CASES["layers a string"] = (STUDY.replace(
    "layers = [\"Dense(8, input_dim=2, activation='relu')\", \"Dense(1, activation='sigmoid')\"]", 'layers = "Dense(8)"'),
    ["model.layers must be a non-empty list of layer lines"])
STUDY_CASES["model a number"] = (STUDY.replace("[model]\n", "").replace(
    "layers = [\"Dense(8, input_dim=2, activation='relu')\", \"Dense(1, activation='sigmoid')\"]\n", "").replace(
    "seeds = 1", "seeds = 1\nmodel = 5"), ["model must be a table", "Got 5"])
STUDY_CASES["empty layer list"] = (STUDY.replace(
    "layers = [\"Dense(8, input_dim=2, activation='relu')\", \"Dense(1, activation='sigmoid')\"]", "layers = []"),
    STUDY_CASES["empty layer list"][1])


@pytest.mark.parametrize("case", list(STUDY_CASES))
def test_a_bad_study_file_exits_2_with_one_line_and_writes_nothing(case, tmp_path):
    text, words = STUDY_CASES[case]
    study = tmp_path / "study.toml"
    if text is None:
        study.write_bytes(STUDY.encode() + b"# caf\xe9\n")
    else:
        study.write_text(text, encoding="utf-8")
    line = refused_and_nothing_written(tmp_path, ["run", study, "--db", tmp_path / "x.db"], *words)
    assert len(line) < 600, line
    assert not (tmp_path / "x.db").exists() and not (tmp_path / PWNED).exists() and not Path(PWNED).exists()


def test_a_study_file_that_never_ends_is_refused(tmp_path):
    """`reglab run /dev/zero`: the study file is read up to 10 MiB, not until the memory is gone."""
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero here")
    refused_and_nothing_written(tmp_path, ["run", "/dev/zero", "--db", tmp_path / "x.db"],
                                "'/dev/zero' is larger than 10 MiB", "check the path")


def test_a_study_file_with_a_byte_order_mark_loads(tmp_path):
    study = tmp_path / "study.toml"
    study.write_bytes(b"\xef\xbb\xbf" + STUDY.encode())
    assert load(study).name == "hard"


def test_keras_build_checks_the_last_layer_against_the_number_of_classes():
    """keras.build checks the last layer against the number of classes when it is given."""
    with pytest.raises(keras.ModelError, match=r"gives 2 outputs per sample, but this multiclass task needs 3"):
        keras.build(["Dense(4)", "Dense(2, activation='softmax')"], (4,), task="multiclass", classes=3)


def test_too_few_outputs_for_the_classes_is_refused_before_training(tmp_path):
    study = tmp_path / "study.toml"
    study.write_text(STUDY.replace('name = "moons"', 'name = "iris"').replace("input_dim=2, ", "")
                     .replace("Dense(1, activation='sigmoid')", "Dense(2, activation='softmax')"))
    refused_and_nothing_written(tmp_path, ["run", study, "--db", tmp_path / "x.db"],
                                "layer 1", "gives 2 outputs per sample", "needs 3")


FACTORIES = {
    "raises": ("def build():\n    return 1 / 0\n",
               ["model.factory '{module}:build' raised ZeroDivisionError: division by zero", "{module}.py, line 2",
                "fix the factory"]),
    "a syntax error": ("def build(:\n    pass\n", ["model.factory: importing '{module}' raised SyntaxError",
                                                   "{module}.py, line 1", "fix that module"]),
    "not a module": ("def build():\n    return 'a string'\n", ["model.factory returned str, not an nn.Module"]),
    "no such function": ("def other():\n    pass\n", ["model.factory: '{module}' has no function 'build'"]),
}


def test_a_factory_model_whose_output_does_not_fit_the_task_is_refused_before_training(tmp_path):
    module = f"hard_factory_outputs_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text("from torch import nn\n\n\ndef build():\n"
                                            "    return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3))\n")
    study = tmp_path / "study.toml"
    study.write_text(STUDY.replace("layers = [\"Dense(8, input_dim=2, activation='relu')\", \"Dense(1, activation='sigmoid')\"]",
                                   f'factory = "{module}:build"'))
    before = snapshot(tmp_path)
    refused(invoke("run", study, "--db", tmp_path / "x.db"), "variants.none", "(2, 3)", "'binary' task needs one raw score")
    assert {k: v for k, v in snapshot(tmp_path).items() if "__pycache__" not in k} == before


@pytest.mark.parametrize("case", list(FACTORIES))
def test_a_factory_that_fails_is_one_line(case, tmp_path):
    code, words = FACTORIES[case]
    module = f"hard_factory_{case.replace(' ', '_')}_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(code)
    study = tmp_path / "study.toml"
    study.write_text(STUDY.replace("layers = [\"Dense(8, input_dim=2, activation='relu')\", \"Dense(1, activation='sigmoid')\"]",
                                   f'factory = "{module}:build"'))
    before = snapshot(tmp_path)
    refused(invoke("run", study, "--db", tmp_path / "x.db"), *[w.format(module=module) for w in words])
    after = {k: v for k, v in snapshot(tmp_path).items() if "__pycache__" not in k}   # Python caches the import
    assert after == before


# ------------------------------------------------------------------------------------------ data files

PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478da63f8ff"
                    "ff3f0005fe02fe0dc4a2b00000000049454e44ae426082")

DATA_CASES = {
    "empty file": (b"", {}, ["d.csv: the file is empty", "needs a header row and data rows"]),
    "only blank lines": (b"\n  \n\t\n", {}, ["d.csv: the file is empty"]),
    "binary garbage": (bytes(range(256)) * 8, {}, ["d.csv: holds binary data, not CSV text", "point `path` at a CSV file"]),
    "a PNG": (PNG, {}, ["d.csv: holds binary data"]),
    "not UTF-8": (b"a,b,y\n1,caf\xe9,0\n" + GOOD_ROWS.encode(), {}, ["d.csv: is not UTF-8 text", "line 2", "save it as UTF-8 CSV"]),
    "wrong delimiter": (("a;b;y\n" + GOOD_ROWS.replace(",", ";")).encode(), {},
                        ["d.csv: the header reads as one column 'a;b;y'", "set delimiter = ';' in [data]"]),
    "NaN cell": (("a,b,y\n1,2,0\n3,nan,1\n" + GOOD_ROWS).encode(), {},
                 ["d.csv, row 2 (line 3), column 'b'", "the cell is NaN", "fill in a value or drop the row"]),
    "inf cell": (("a,b,y\n1,2,0\n-inf,3,1\n" + GOOD_ROWS).encode(), {}, ["row 2 (line 3), column 'a'", "'-inf' is infinite"]),
    "1e400 (inf)": (("a,b,y\n1,2,0\n3,1e400,1\n" + GOOD_ROWS).encode(), {}, ["row 2 (line 3), column 'b'", "'1e400' is infinite or beyond float32 range"]),
    "1e308 (beyond float32)": (("a,b,y\n1,1e308,0\n" + GOOD_ROWS).encode(), {}, ["row 1 (line 2), column 'b'", "beyond float32 range", "fix the cell"]),
    "mixed types": (("a,b,y\n1,2,0\n3,four,1\n" + GOOD_ROWS).encode(), {},
                    ["row 2 (line 3), column 'b'", "'four' is not a number", "list the column in `categorical` (one-hot encoded), or leave it out of `features`"]),
    "empty cell": (("a,b,y\n1,,0\n" + GOOD_ROWS).encode(), {}, ["row 1 (line 2), column 'b'", "the cell is empty"]),
    "NaN label (regression)": (("a,b,y\n" + GOOD_ROWS + "1,2,nan\n").encode(), {"task": "regression"},
                               ["row 41 (line 42), column 'y'", "NaN, infinite or beyond float32"]),
    "ragged row": (("a,b,y\n1,2,0\n3,1\n" + GOOD_ROWS).encode(), {}, ["row 2 (line 3)", "has 2 fields but the header has 3"]),
    "header only": (b"a,b,y\n", {}, ["d.csv: has a header but no data rows"]),
    "one row": (b"a,b,y\n1,2,0\n", {}, ["d.csv, column 'y'", "a single class"]),
    "one row (regression)": (b"a,b,y\n1,2,0.5\n", {"task": "regression"}, ["d.csv", "needs at least", "there are 1"]),
    "one class": (("a,b,y\n" + "".join(f"{i},{i % 3},1\n" for i in range(30))).encode(), {},
                  ["d.csv, column 'y'", "every label is 1, a single class", "check the label column"]),
    "no label column": (("a,b,c\n" + GOOD_ROWS).encode(), {}, ["d.csv: no label column 'y'", "columns are 'a', 'b', 'c'", "set label = one of them in [data]"]),
    "first row is data": (("1.5,2,0\n" + GOOD_ROWS).encode(), {}, ["no label column 'y'", "add a header row"]),
    "missing file": (None, {}, ["d.csv: file not found", "fix `path` in [data]"]),
    "a folder": ("dir", {}, ["d.csv: not a file", "point `path` in [data] at a file"]),
    "a path that is too long": (None, {"path": "x" * 5000}, ["cannot be opened", "fix `path` in [data]"]),
    "an unknown user's home": (None, {"path": "~no_such_user_hard/d.csv"}, ["the home folder in this path does not exist"]),
    "a 400-digit test_fraction": (("a,b,y\n" + GOOD_ROWS).encode(), {"test_fraction": 10 ** 400},
                                  ["[data] key 'test_fraction' must be a float in (0, 1)"]),
}


def _toml_value(value):
    return repr(value) if not isinstance(value, str) else '"' + value + '"'


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_a_bad_data_file_exits_2_with_one_line_and_writes_nothing(case, tmp_path):
    content, extra, words = DATA_CASES[case]
    if content == "dir":
        (tmp_path / "d.csv").mkdir()
    elif content is not None:
        (tmp_path / "d.csv").write_bytes(content)
    text = CSV_STUDY
    for key, value in extra.items():
        if key == "path":
            text = text.replace('path = "d.csv"', f"path = {_toml_value(value)}")
        else:
            text = text.replace('label = "y"', f'label = "y"\n{key} = {_toml_value(value)}')
    if extra.get("task") == "regression":
        text = text.replace("Dense(1, activation='sigmoid')", "Dense(1)")
    study = tmp_path / "study.toml"
    study.write_text(text)
    refused_and_nothing_written(tmp_path, ["run", study, "--db", tmp_path / "x.db"], *words)


def _npz(compressed=True) -> bytes:
    import io
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, X=np.linspace(0, 1, 60).reshape(20, 3), y=np.arange(20) % 2)
    return buffer.getvalue()


def _zip_headers(raw: bytearray, local: int, central: int, set_bits=0, value=None) -> bytes:
    """Change a 2-byte field of every local (PK\\3\\4) and central (PK\\1\\2) zip header."""
    for signature, offset in ((b"PK\x03\x04", local), (b"PK\x01\x02", central)):
        start = raw.find(signature)
        while start != -1:
            field = int.from_bytes(raw[start + offset:start + offset + 2], "little")
            field = (field | set_bits) if value is None else value
            raw[start + offset:start + offset + 2] = field.to_bytes(2, "little")
            start = raw.find(signature, start + 4)
    return bytes(raw)


def _corrupt_deflate(raw: bytes) -> bytes:
    start = raw.find(b"X.npy") + 5 + 16        # inside X's deflate stream (NumPy 2: "invalid block type")
    return raw[:start] + b"\xff" * 8 + raw[start + 8:]


NPZ_CASES = {
    "not a zip": (b"PK but not a zip at all", ["d.npz: not a NumPy .npz file", "save it with np.savez(path, X=X, y=y)"]),
    "a damaged deflate stream": (_corrupt_deflate(_npz()), ["d.npz: arrays X and y cannot be read", "np.savez"]),
    "an encrypted member": (_zip_headers(bytearray(_npz(False)), 6, 8, set_bits=1), ["d.npz", "encrypted", "np.savez"]),
    "an unknown compression method": (_zip_headers(bytearray(_npz()), 8, 10, value=99),
                                      ["d.npz", "compression method is not supported", "np.savez"]),
    "a truncated file": (_npz()[:200], ["d.npz: not a NumPy .npz file", "np.savez"]),
}


@pytest.mark.parametrize("case", list(NPZ_CASES))
def test_a_damaged_npz_file_exits_2_with_one_line_and_writes_nothing(case, tmp_path):
    content, words = NPZ_CASES[case]
    (tmp_path / "d.npz").write_bytes(content)
    study = tmp_path / "study.toml"
    study.write_text(CSV_STUDY.replace('name = "csv"\npath = "d.csv"\nlabel = "y"', 'name = "npz"\npath = "d.npz"'))
    refused_and_nothing_written(tmp_path, ["run", study, "--db", tmp_path / "x.db"], *words)


@FUZZ
@given(compressed=st.booleans(), changes=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                                                 min_size=1, max_size=4), cut=st.one_of(st.none(), st.floats(0, 1)))
def test_fuzzed_npz_files_load_or_raise_data_error(compressed, changes, cut):
    raw = bytearray(_npz(compressed))
    for where, byte in changes:
        raw[int(where * len(raw))] = byte
    if cut is not None:
        raw = raw[:int(cut * len(raw))]
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "d.npz").write_bytes(bytes(raw))
        try:
            ds = D.load({"name": "npz", "path": "d.npz"}, base_dir=folder)
        except DataError as exc:
            assert str(exc) and "\n" not in str(exc), repr(str(exc))
            return
    assert np.isfinite(ds.X_train).all()


def test_a_huge_finite_value_within_float32_loads(tmp_path):
    """1e30 is finite in float32: the row loads, and standardisation keeps every feature finite."""
    (tmp_path / "d.csv").write_text("a,b,y\n1,1e30,0\n" + GOOD_ROWS)
    ds = D.load({"name": "csv", "path": "d.csv", "label": "y"}, base_dir=tmp_path)
    assert ds.info["rows"] == 41 and np.isfinite(ds.X_train).all() and np.isfinite(ds.X_test).all()


# ------------------------------------------------------------------------------------------ CLI arguments

@pytest.fixture(scope="module")
def ok_db(tmp_path_factory):
    """A real reglab database holding the tiny study 'hard' (1 seed, 2 epochs)."""
    folder = tmp_path_factory.mktemp("ok")
    (folder / "study.toml").write_text(STUDY)
    result = invoke("run", folder / "study.toml", "--db", folder / "ok.db")
    assert result.exit_code == 0, result.output
    return folder / "ok.db"


def _not_sqlite(path):
    path.write_text("name,score\nhard,1\n")


def _png(path):
    path.write_bytes(PNG)


def _other_sqlite(path):
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    con.execute("INSERT INTO customers (name) VALUES ('ada')")
    con.commit()
    con.close()


def _newer_version(ok_db):
    def make(path):
        path.write_bytes(ok_db.read_bytes())
        con = sqlite3.connect(path)
        con.execute("PRAGMA user_version = 99")
        con.close()
    return make


def _unknown_migration(ok_db):
    def make(path):
        path.write_bytes(ok_db.read_bytes())
        con = sqlite3.connect(path)
        con.execute("INSERT INTO migrations (name, applied_at) VALUES ('0099_from_the_future', '2099-01-01')")
        con.commit()
        con.close()
    return make


BAD_DBS = {
    "a text file": (_not_sqlite, ["is not a reglab database (not SQLite)"]),
    "a PNG": (_png, ["is not a reglab database (not SQLite)"]),
    "another application's SQLite": (_other_sqlite, ["is not a reglab database", "customers", "use another --db"]),
    "a newer schema version": ("newer", ["was written by a newer reglab", "schema version 99", "upgrade reglab"]),
    "an unknown migration": ("migration", ["was written by a newer reglab", "upgrade reglab"]),
}
COMMANDS = {
    "run": lambda folder: ["run", folder / "study.toml"],
    "list": lambda folder: ["list"],
    "status": lambda folder: ["status", "hard"],
    "export": lambda folder: ["export", "hard", "--format", "json", "--out", folder / "out.json"],
    "report": lambda folder: ["report", "hard", "--out", folder / "report"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("kind", list(BAD_DBS))
def test_a_database_that_is_not_ours_or_newer_is_refused_and_left_unchanged(kind, command, tmp_path, ok_db):
    make, words = BAD_DBS[kind]
    make = {"newer": _newer_version(ok_db), "migration": _unknown_migration(ok_db)}.get(make, make)
    (tmp_path / "study.toml").write_text(STUDY)
    db = tmp_path / "bad.db"
    make(db)
    refused_and_nothing_written(tmp_path, [*COMMANDS[command](tmp_path), "--db", db], "bad.db", *words)


def _corrupt(ok_db):
    def make(path):
        raw = ok_db.read_bytes()
        path.write_bytes(raw[:100] + bytes((i * 37 + 11) % 256 for i in range(len(raw) - 100)))
    return make


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_corrupt_database_is_refused_and_left_unchanged(command, tmp_path, ok_db):
    (tmp_path / "study.toml").write_text(STUDY)
    db = tmp_path / "bad.db"
    _corrupt(ok_db)(db)
    refused_and_nothing_written(tmp_path, [*COMMANDS[command](tmp_path), "--db", db],
                                "cannot use", "bad.db", "database disk image is malformed")


def test_a_corrupt_database_line_says_the_fix(tmp_path, ok_db):
    db = tmp_path / "bad.db"
    _corrupt(ok_db)(db)
    refused_and_nothing_written(tmp_path, ["list", "--db", db], "database disk image is malformed", "use another --db")


def test_a_changed_study_under_the_same_name_leaves_the_database_unchanged(tmp_path, ok_db):
    db = _copy_db(ok_db, tmp_path)
    (tmp_path / "study.toml").write_text(STUDY.replace("epochs = 2", "epochs = 3"))
    refused_and_nothing_written(tmp_path, ["run", tmp_path / "study.toml", "--db", db],
                                "study 'hard' already exists in ok.db with a different definition", "rename the study")


def test_a_missing_study_file(tmp_path):
    refused_and_nothing_written(tmp_path, ["run", tmp_path / "missing.toml", "--db", tmp_path / "x.db"],
                                "missing.toml", "does not exist", "check the path")


@pytest.mark.parametrize("command", ["list", "status", "export", "report"])
def test_reading_commands_refuse_a_missing_database(command, tmp_path):
    args = {"list": ["list"], "status": ["status", "hard"], "export": ["export", "hard"],
            "report": ["report", "hard", "--out", tmp_path / "r"]}[command]
    refused_and_nothing_written(tmp_path, [*args, "--db", tmp_path / "none.db"], "no database at", "run a study first")


def test_a_database_in_a_missing_folder(tmp_path):
    (tmp_path / "study.toml").write_text(STUDY)
    refused_and_nothing_written(tmp_path, ["run", tmp_path / "study.toml", "--db", tmp_path / "no" / "x.db"],
                                "directory", "does not exist")


def _copy_db(ok_db, folder):
    db = folder / "ok.db"
    db.write_bytes(ok_db.read_bytes())
    return db


def test_report_into_a_path_under_a_regular_file(tmp_path, ok_db):
    db = _copy_db(ok_db, tmp_path)
    (tmp_path / "somefile").write_text("not a folder")
    refused_and_nothing_written(tmp_path, ["report", "hard", "--db", db, "--out", tmp_path / "somefile" / "out"],
                                "cannot create the report folder", "somefile", "choose another --out")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder anyway")
def test_report_into_a_read_only_folder(tmp_path, ok_db):
    db = _copy_db(ok_db, tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        refused_and_nothing_written(tmp_path, ["report", "hard", "--db", db, "--out", locked / "out"],
                                    "cannot create the report folder", "Permission denied", "choose another --out")
    finally:
        locked.chmod(0o700)


def test_export_into_a_path_under_a_regular_file_or_a_missing_folder(tmp_path, ok_db):
    db = _copy_db(ok_db, tmp_path)
    (tmp_path / "somefile").write_text("not a folder")
    refused_and_nothing_written(tmp_path, ["export", "hard", "--db", db, "--out", tmp_path / "somefile" / "x.csv"],
                                "cannot write", "somefile", "choose another --out")
    refused_and_nothing_written(tmp_path, ["export", "hard", "--db", db, "--out", tmp_path / "missing" / "x.csv"],
                                "does not exist", "choose another --out")


def test_commands_on_a_study_that_is_not_there(tmp_path, ok_db):
    db = _copy_db(ok_db, tmp_path)
    for command in (["status", "nope"], ["export", "nope"], ["report", "nope", "--out", tmp_path / "r"]):
        refused_and_nothing_written(tmp_path, [*command, "--db", db], "no study 'nope'", "reglab list")


CLICK_CASES = {
    "--db is a folder": (lambda p: ["run", p / "study.toml", "--db", p], ["--db", "is a directory"]),
    "the study is a folder": (lambda p: ["run", p], ["STUDY_FILE", "is a directory"]),
    "--out of export is a folder": (lambda p: ["export", "hard", "--db", p / "ok.db", "--out", p], ["--out", "is a directory"]),
    "no study file given": (lambda p: ["run"], ["Missing argument 'STUDY_FILE'"]),
}


@pytest.mark.parametrize("case", list(CLICK_CASES))
def test_argument_errors_caught_by_click_are_one_line_too(case, tmp_path, ok_db):
    _copy_db(ok_db, tmp_path)
    (tmp_path / "study.toml").write_text(STUDY)
    args, words = CLICK_CASES[case]
    refused_and_nothing_written(tmp_path, args(tmp_path), *words)


# ------------------------------------------------------------------------------------------ a real terminal

def test_a_real_terminal_gets_one_line_and_no_traceback(tmp_path):
    """The installed `reglab` command and `python -m reglab.cli`, as real processes (run side by side)."""
    study = tmp_path / "study.toml"
    study.write_text(STUDY_CASES["code in a layer line"][0])
    db = tmp_path / "image.db"
    db.write_bytes(PNG)
    before = snapshot(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    commands = [[REGLAB, "run", study, "--db", tmp_path / "x.db"], [sys.executable, "-m", "reglab.cli", "list", "--db", db]]
    children = [subprocess.Popen([str(a) for a in command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 cwd=tmp_path, env=env) for command in commands]
    (run_out, run_err), (list_out, list_err) = [child.communicate(timeout=180) for child in children]
    assert [child.returncode for child in children] == [2, 2], (run_err, list_err)
    assert run_out == list_out == ""
    assert run_err.count("\n") == 1 and run_err.startswith("error: model.layers[0]: ") and "__import__" in run_err, run_err
    assert list_err == f"error: {db} is not a reglab database (not SQLite)\n", list_err
    assert "Traceback" not in run_err + list_err and snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------------ fuzzing

def _toml_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(value) -> str:
    """A TOML value (inline) for the Python values tomllib returns."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value == math.inf else "-inf" if value == -math.inf else repr(value))
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def toml_document(doc: dict) -> str:
    lines = [f"{_toml_string(k)} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for key, table in doc.items():
        if isinstance(table, dict):
            lines.append(f"[{_toml_string(key)}]")
            lines += [f"{_toml_string(k)} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


INTERESTING = ["l2(0.01)", "l1_l2(l1=0.01, l2=0.01)", "max_norm(2)", "unit_norm()", "orthogonal(0.1)", "l2({value})",
               "Dense(4)", "Dense(1, activation='sigmoid')", "Dropout(0.5)", "relu", "softmax", "moons", "csv", "iris",
               "digits", "compare", "grid", "repeat", "adam", "sgd", "test", "mean", "sum", "none", "{value}", "image",
               "sequence", "mod:build", "val_loss", "__import__('os')", "", "0", "input"]
TOML_SCALARS = st.one_of(st.booleans(), st.integers(), st.integers(-3, 64), st.floats(), st.text(max_size=12),
                         st.sampled_from(INTERESTING), st.dates(), st.times(), st.datetimes())
TOML_VALUES = st.recursive(TOML_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.one_of(st.text(max_size=6), st.sampled_from(["0", "1", "l1", "value"])),
                                             inner, max_size=4), max_leaves=8)
KEYS = sorted(S.TOP_KEYS | S.MODEL_KEYS | S.TRAINING_KEYS | S.VARIANT_KEYS | S.GRID_KEYS | S.EARLY_KEYS | set(D._RULES)
              | {"units", "kernel_regularizer", "activation", "protocl", "lable"})
TABLE = st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), TOML_VALUES, max_size=5)


def _loads_or_study_error(path: Path):
    try:
        study = load(path)
    except StudyError as exc:
        assert str(exc) and "\n" not in str(exc), repr(str(exc))
        return None
    assert isinstance(study, S.Study) and study.variants
    return study


def _prepares_or_refuses(study):
    try:
        prepare(study)
    except (StudyError, DataError) as exc:
        assert str(exc) and "\n" not in str(exc), repr(str(exc))


@FUZZ
@given(text=st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
                      st.lists(st.sampled_from(["[data]", "[model]", "name = ", '"x"', "=", "\n", "[[variants]]", "{", "}",
                                                "layers = [", "]", "'", "seeds = 3", "#", ".", "1e400"]),
                               max_size=40).map("".join)))
@example(text='name = "t"\n[data]\nname = "moons"\n[model]\nlayers = ["Dense(1' + "0" * 400 + ')"]\n')
@example(text='name = "t"\n[data]\nname = "moons"\n[model]\nlayers = ["Dense(1)"]\n[training]\nlr = 1' + "0" * 400 + "\n")
def test_fuzzed_study_text_loads_or_raises_study_error(text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "study.toml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        _loads_or_study_error(path)


def _study_doc():
    return st.fixed_dictionaries(
        {"name": st.one_of(st.just("fuzz"), TOML_SCALARS)},
        optional={"protocol": st.one_of(st.sampled_from(["compare", "grid", "repeat"]), TOML_SCALARS),
                  "seeds": st.one_of(st.integers(-2, 5), st.lists(st.integers(-1, 4), max_size=3), TOML_SCALARS),
                  "baseline": st.one_of(st.sampled_from(["none", "a", "0.1"]), TOML_SCALARS),
                  "data": st.one_of(st.fixed_dictionaries({"name": st.sampled_from(["moons", "iris", "digits"])}, optional={
                      "shape": st.sampled_from(["image", "sequence", "flat"]), "test_fraction": TOML_SCALARS}), TABLE),
                  "model": st.one_of(st.fixed_dictionaries({"layers": st.lists(st.one_of(st.sampled_from(INTERESTING),
                                                                                         st.text(max_size=20)), max_size=3)}),
                                     TABLE),
                  "training": TABLE, "grid": TABLE,
                  "variants": st.one_of(st.dictionaries(st.text(max_size=5), TABLE, max_size=3), TOML_VALUES)})


@FUZZ
@given(doc=_study_doc())
@example(doc={"name": "t", "data": {"name": "moons"}, "model": {"layers": ["Dense(1)"]},
              "variants": {"a": {"insert": {"²": "Dropout(0.5)"}}}})
@example(doc={"name": "t", "protocol": "grid", "data": {"name": "moons"}, "model": {"layers": ["Dense(1)"]},
              "grid": {"variant": {"layers": {"0": {"kernel_regularizer": "l2({value})"}}},
                       "values": {'value})"}}': [0.1]}}})
@example(doc={"name": "t", "data": {"name": "moons"}, "model": {"layers": ["Dense(1)"]},
              "training": {"early_stopping": {"min_delta": 10 ** 400}}})
def test_fuzzed_toml_documents_load_or_raise_study_error(doc):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "study.toml"
        path.write_text(toml_document(doc), encoding="utf-8")
        assert tomllib.loads(path.read_text(encoding="utf-8")) is not None
        _loads_or_study_error(path)


EXAMPLE_DOCS = {p.stem: tomllib.loads(p.read_text()) for p in sorted(EXAMPLES.glob("*.toml"))}


def _paths(value, prefix=()):
    """Every (path, value) inside a TOML document; a path is a tuple of keys and list indices."""
    yield prefix, value
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _paths(inner, prefix + (key,))
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            yield from _paths(inner, prefix + (i,))


def _mutate(doc, path, how, new):
    doc = copy.deepcopy(doc)
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    old = parent[last]
    if how == "drop":
        del parent[last]
    elif how == "text" and isinstance(old, str) and isinstance(new, str):
        cut = len(new) % (len(old) + 1)
        parent[last] = old[:cut] + new + old[cut:]
    else:
        parent[last] = new
    return doc


def _small(value) -> bool:
    """No number big enough to make prepare() allocate much (those cases are explicit examples above)."""
    return all(not isinstance(v, int) or isinstance(v, bool) or abs(v) <= 64 for _, v in _paths(value))


@fuzz(80)
@given(data=st.data(), name=st.sampled_from(sorted(EXAMPLE_DOCS)), how=st.sampled_from(["drop", "value", "text"]),
       new=st.one_of(TOML_VALUES, st.text(alphabet=string.printable, max_size=10),
                     st.sampled_from(["(", ")", ",", "'", "=", "l3(0.1)", "units=-1", ", kernel_regularizer=l2(-1)",
                                      "input_dim=7, ", "Conv2D(2, 3)", "LSTM(3)", ", return_sequences=True"])))
def test_mutated_example_studies_load_or_raise_and_prepare_or_raise(data, name, how, new):
    doc = copy.deepcopy(EXAMPLE_DOCS[name])
    doc["seeds"] = 1
    doc.setdefault("training", {})["epochs"] = 1
    paths = [p for p, _ in _paths(doc) if p and p != ("seeds",)]
    path = data.draw(st.sampled_from(paths), label="path")
    doc = _mutate(doc, path, how, new)
    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / f"{name}.toml"
        file.write_text(toml_document(doc), encoding="utf-8")
        study = _loads_or_study_error(file)
    if study is not None and _small(doc):
        _prepares_or_refuses(study)


KINDS = sorted(keras._ALLOWED) + ["Dense2", "Conv3D", "Lambda"]
ARG_NAMES = sorted(set().union(*keras._ALLOWED.values()) | keras._COMMON)
ARG_VALUES = st.one_of(st.integers(-2, 12).map(str), st.floats(-1, 2).map(repr),
                       st.sampled_from(["nan", "inf", "-inf", "'relu'", "'softmax'", "'sigmoid'", "'tanh'", "'same'", "'valid'", "l2(0.01)",
                                        "l1(-1)", "max_norm(2)", "min_max_norm(0, 1)", "orthogonal(0.1)", "unit_norm()",
                                        "non_neg()", "None", "True", "False", "(2, 2)", "(3,)", "(8, 8)", "(1, 8, 8)",
                                        "'x'", "relu", "[1]"]))
ARGS = st.lists(st.one_of(ARG_VALUES, st.tuples(st.sampled_from(ARG_NAMES), ARG_VALUES).map("=".join)), max_size=3)
LINES = st.tuples(st.sampled_from(KINDS), ARGS).map(lambda ka: f"{ka[0]}({', '.join(ka[1])})")
DATASETS = [{"name": "moons"}, {"name": "iris"}, {"name": "diabetes"}, {"name": "digits", "shape": "image"},
            {"name": "digits", "shape": "sequence"}]


@fuzz(100)
@given(lines=st.lists(LINES, min_size=1, max_size=4), data=st.sampled_from(DATASETS),
       last=st.sampled_from(["Dense(1, activation='sigmoid')", "Dense(3, activation='softmax')", "Dense(1)",
                             "Dense(10, activation='softmax')", None]))
@example(lines=["LSTM(4, dropout=2)"], data=DATASETS[4], last="Dense(10, activation='softmax')")
@example(lines=["Conv2D(2, 3, kernel_regularizer=orthogonal(0.1))", "Flatten()"], data=DATASETS[3],
         last="Dense(10, activation='softmax')")
@example(lines=["Conv1D(4, -1)"], data=DATASETS[4], last=None)
@example(lines=["ActivityRegularization(l1='x')"], data=DATASETS[0], last=None)
@example(lines=["AveragePooling2D()"], data=DATASETS[0], last="Dense(1, activation='sigmoid')")
@example(lines=["Dense(3, input_shape=5)"], data=DATASETS[0], last=None)
@example(lines=["LSTM(4, return_sequences=True)"], data=DATASETS[4], last="Dense(10, activation='softmax')")
def test_fuzzed_layer_lines_build_or_raise_study_error(lines, data, last):
    raw = {"name": "lines", "seeds": 1, "data": dict(data), "model": {"layers": lines + ([last] if last else [])},
           "training": {"epochs": 1}}
    try:
        study = from_dict(raw)
    except StudyError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    _prepares_or_refuses(study)


_CELLS = st.one_of(st.integers(-5, 5).map(str), st.floats().map(repr), st.text(max_size=6),
                   st.sampled_from(["", "nan", "inf", "-inf", "1e400", "1e308", "1e30", '"1,2"', '"', "1_000", "0x10",
                                    "\u0661", "\ufeff1", " 2 ", "a;b", "\t"]))
_LABELS = st.one_of(st.sampled_from(["0", "1", "a", "b", "2"]), _CELLS)
_CSV_TABLES = st.integers(1, 3).flatmap(lambda width: st.tuples(
    st.lists(st.one_of(st.sampled_from(["a", "b", "y", "x"]), st.text(max_size=4)), min_size=width, max_size=width),
    st.lists(st.lists(_CELLS, min_size=width, max_size=width + 1), max_size=30),
    st.lists(_LABELS, min_size=30, max_size=30),
    st.sampled_from([",", ";", "\t"])).map(
    lambda t: t[3].join(t[0] + ["y"]) + "\n" + "".join(t[3].join(r + [t[2][i]]) + "\n" for i, r in enumerate(t[1]))))
_CSV_SPECS = st.fixed_dictionaries({}, optional={
    "task": st.sampled_from(["binary", "multiclass", "regression"]), "delimiter": st.sampled_from([",", ";", "\t", "|"]),
    "features": st.sampled_from([["a"], ["a", "b"], ["x"]]), "stratify": st.booleans(), "standardize": st.booleans(),
    "train": st.integers(1, 40), "validation": st.sampled_from([0.2, 0.5, "test"]), "split_seed": st.integers(0, 3)})


@FUZZ
@given(content=st.one_of(st.binary(max_size=400), _CSV_TABLES.map(lambda t: t.encode("utf-8", "surrogatepass")),
                         st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass"))),
       spec=_CSV_SPECS)
@example(content=b"a,y\n1,0\n" + b"1e400,1\n", spec={})
@example(content=b"a,y\n" + b"".join(b"%d,%d\n" % (i, i % 2) for i in range(20)), spec={"test_fraction": 10 ** 400})
def test_fuzzed_csv_files_load_or_raise_data_error(content, spec):
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "d.csv").write_bytes(content)
        full = {"name": "csv", "path": "d.csv", "label": "y", **spec}
        if "train" in full and "test_fraction" in full:
            full.pop("test_fraction")
        try:
            ds = D.load(full, base_dir=folder)
        except DataError as exc:
            assert str(exc) and "\n" not in str(exc), repr(str(exc))
            return
    assert np.isfinite(ds.X_train).all() and np.isfinite(ds.X_test).all()
    parts = len(ds.X_train) + len(ds.X_test) + (0 if ds.X_val is None else len(ds.X_val))
    assert parts == ds.info["rows"] and len(ds.y_train) == len(ds.X_train)
    if ds.task != "regression":
        assert ds.y_train.dtype == np.int64 and len(np.unique(np.concatenate([ds.y_train, ds.y_test]))) >= 2


@fuzz(60)
@given(path=st.one_of(st.text(max_size=40), st.text(min_size=300, max_size=5000, alphabet="ab/"),
                      st.sampled_from(["~", "~nobody_here/x.csv", "/", ".", "..", "\x00", "d.csv\x00x", "/dev/null"])))
@example(path="\n")
def test_fuzzed_data_paths_load_or_raise_data_error(path):
    with tempfile.TemporaryDirectory() as folder:
        try:
            D.load({"name": "csv", "path": path, "label": "y"}, base_dir=folder)
        except DataError as exc:
            assert str(exc) and "\n" not in str(exc)
