"""Security: nothing a user loads is unpickled or evaluated; names cannot write outside the chosen
folder; user text in the HTML report is escaped."""

import ast
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import reglab
from reglab.cli import main
from reglab.data import DataError, load
from reglab import study as st
from reglab.study import StudyError

SRC = Path(reglab.__file__).parent
PICKLERS = {"pickle", "cPickle", "cloudpickle", "dill", "marshal", "shelve", "joblib"}


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _keyword(call, name):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _sources():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20
    return [(f, ast.parse(f.read_text(), filename=str(f))) for f in files]


@pytest.mark.parametrize("path, tree", _sources(), ids=lambda x: x.name if isinstance(x, Path) else "")
def test_the_source_never_unpickles_or_evaluates(path, tree):
    """An AST scan of every module: no pickle-family import, no eval/exec/compile/__import__, every
    torch.load with weights_only=True, every np.load with allow_pickle=False, no shell=True."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert not {a.name.split(".")[0] for a in node.names} & PICKLERS, (path, node.lineno)
        if isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] not in PICKLERS, (path, node.lineno)
    for call in _calls(tree):
        where = f"{path.relative_to(SRC)}:{call.lineno}"
        fn = call.func
        if isinstance(fn, ast.Name):
            assert fn.id not in {"eval", "exec", "compile", "__import__"}, where
        if isinstance(fn, ast.Attribute) and fn.attr == "load" and isinstance(fn.value, ast.Name):
            if fn.value.id == "torch":
                flag = _keyword(call, "weights_only")
                assert isinstance(flag, ast.Constant) and flag.value is True, f"{where}: torch.load needs weights_only=True"
            if fn.value.id in {"np", "numpy"}:
                flag = _keyword(call, "allow_pickle")
                assert isinstance(flag, ast.Constant) and flag.value is False, f"{where}: np.load needs allow_pickle=False"
            assert fn.value.id not in {"yaml", "pickle"}, where
        shell = _keyword(call, "shell")
        assert not (isinstance(shell, ast.Constant) and shell.value is True), f"{where}: shell=True"


class _Boom:
    """Unpickling this would create the file at ``target``."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_a_pickled_npz_is_refused_without_running_it(tmp_path):
    target = tmp_path / "pwned"
    bad = tmp_path / "bad.npz"
    np.savez(bad, X=np.array([_Boom(target)] * 4, dtype=object), y=np.array([0, 1, 0, 1]))
    with pytest.raises(DataError):
        load({"path": str(bad)}, base_dir=tmp_path)
    assert not target.exists()
    raw = tmp_path / "raw.npz"          # a plain pickle renamed .npz
    raw.write_bytes(pickle.dumps(_Boom(target)))
    with pytest.raises(DataError):
        load({"path": str(raw)}, base_dir=tmp_path)
    assert not target.exists()


STUDY = """\
name = "sec"
seeds = 2

[data]
name = "moons"

[model]
layers = [{line}, "Dense(1, activation='sigmoid')"]

[training]
epochs = 2

[variants.none]
"""
PAYLOADS = [
    "__import__('os').system('touch {t}')",
    "Dense(8, activation=__import__('os').system('touch {t}'))",
    "Dense(8, activation=open('{t}', 'w'))",
    "Dense(8, kernel_regularizer=l2((lambda: open('{t}', 'w'))()))",
    "Dense(8, activation=().__class__.__bases__[0].__subclasses__())",
    "Dense(8, activation=f'{{open(\"{t}\", \"w\")}}')",
    "Dense(8, activation='relu'); open('{t}', 'w')",
    "Dense(8, activation=[c for c in ().__class__.__mro__])",
    "Dense(*[open('{t}', 'w')])",
    "exec('open(\"{t}\", \"w\")')",
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_keras_line_cannot_run_code(payload, tmp_path):
    target = tmp_path / "pwned"
    study = tmp_path / "s.toml"
    study.write_text(STUDY.format(line=json.dumps(payload.format(t=target))))
    result = CliRunner().invoke(main, ["run", str(study), "--db", str(tmp_path / "s.db")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model.layers"), result.stderr
    assert not target.exists() and not (tmp_path / "s.db").exists()


@pytest.mark.parametrize("ref", ["__import__('os'):system", "os.system('x'):f", "a b:c", "../evil:build", "os:",
                                 ":system", "mod:fn()", "mod:fn.attr"])
def test_a_factory_reference_is_a_dotted_name_not_code(ref, tmp_path):
    text = STUDY.replace("[model]\nlayers = [{line}, \"Dense(1, activation='sigmoid')\"]", f"[model]\nfactory = {json.dumps(ref)}")
    path = tmp_path / "f.toml"
    path.write_text(text)
    with pytest.raises(StudyError, match="model.factory"):
        st.prepare(st.load(path))


def test_names_cannot_write_outside_the_report_folder_and_are_escaped(tmp_path):
    """A study and variants named like paths and like HTML: the report writes inside --out only and
    shows the names as text."""
    evil = "../../escaped<script>alert(1)</script>"
    study = tmp_path / "work" / "s.toml"
    study.parent.mkdir()
    study.write_text(f"""\
name = {evil!r}
question = "<img src=x onerror=alert(2)>"
seeds = 2

[data]
name = "moons"

[model]
layers = ["Dense(4, input_dim=2, activation='relu')", "Dense(1, activation='sigmoid')"]

[training]
epochs = 3

[variants.none]

[variants.'../../../x']
layers = {{ 0 = {{ kernel_regularizer = "l2(0.01)" }} }}
""")
    db, out = tmp_path / "work" / "s.db", tmp_path / "work" / "report"
    result = CliRunner().invoke(main, ["run", str(study), "--db", str(db)])
    assert result.exit_code == 2 and "'name' must be a short name" in result.stderr   # a study name is never a path
    assert not db.exists()
    evil = "x..y"
    # Variant names are free text: one named like HTML (the baseline), one named like a path.
    text = study.read_text().replace("name = '../../escaped<script>alert(1)</script>'", "name = 'x..y'")
    text = text.replace("[variants.none]", "[variants.'<script>alert(1)</script>']")
    study.write_text(text.replace("seeds = 2", 'seeds = 2\nbaseline = "<script>alert(1)</script>"'))
    result = CliRunner().invoke(main, ["run", str(study), "--db", str(db)])
    assert result.exit_code == 0, result.output
    before = {p for p in tmp_path.rglob("*")}
    result = CliRunner().invoke(main, ["report", evil, "--db", str(db), "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = {p for p in tmp_path.rglob("*")} - before
    assert written and all(p.resolve().is_relative_to(out.resolve()) for p in written), sorted(map(str, written))
    page = (out / "index.html").read_text()
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(2)&gt;" in page
    assert "../../../x" in page   # shown as text
    export = tmp_path / "work" / "e.csv"
    result = CliRunner().invoke(main, ["export", evil, "--db", str(db), "--out", str(export)])
    assert result.exit_code == 0 and export.exists()
