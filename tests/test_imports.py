"""import reglab is lazy (PEP 562): every public name and module resolves on first use, in a fresh
interpreter, and the commands that train nothing never load PyTorch."""

import re
import subprocess
import sys
from pathlib import Path

import reglab

README = Path(__file__).resolve().parents[1] / "README.md"


def fresh(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_every_public_name_and_module_resolves_in_a_fresh_interpreter():
    names = sorted(set(reglab.__all__) | set(reglab._SUBMODULES))
    code = ("import reglab\n"
            f"for name in {names!r}:\n"
            "    assert getattr(reglab, name) is not None, name\n"
            "from reglab import L2, Study, fit, train_population, threads\n"
            "assert Study is reglab.notebook.Study\n"
            "print(callable(reglab.report.write_report), callable(reglab.study.run))")
    assert fresh(code) == "True True"


def documented_names() -> list[str]:
    """Every ``reglab.a.b`` the README names (``reglab.db`` is the default database file), and every
    name of a ``from reglab import ...`` there."""
    text = README.read_text()
    dotted = set(re.findall(r"(?<![\w/.-])reglab\.((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*)", text)) - {"db"}
    imported = {name.strip() for names in re.findall(r"from reglab import ([\w, ]+)", text) for name in names.split(",")}
    return sorted(dotted | imported)


def test_every_name_the_readme_documents_resolves_after_a_bare_import_reglab():
    names = documented_names()
    assert {"Study", "study.run", "study.dask.DaskExecutor", "report.write_report", "threads.Governor"} <= set(names)
    code = ("import reglab\n"
            f"for dotted in {names!r}:\n"
            "    obj = reglab\n"
            "    for part in dotted.split('.'):\n"
            "        obj = getattr(obj, part)\n"
            "print('ok')")
    assert fresh(code) == "ok"


def test_the_cli_and_the_store_do_not_load_torch():
    code = "import sys, reglab, reglab.cli, reglab.store; print('torch' in sys.modules)"
    assert fresh(code) == "False"


def test_an_unknown_name_is_an_attribute_error():
    try:
        reglab.no_such_thing
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("reglab.no_such_thing resolved")
    assert {"L2", "fit", "report", "threads"} <= set(dir(reglab))
