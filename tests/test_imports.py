"""import reglab is lazy (PEP 562): every public name and module resolves on first use, in a fresh
interpreter, and the commands that train nothing never load PyTorch."""

import subprocess
import sys

import reglab


def fresh(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_every_public_name_and_module_resolves_in_a_fresh_interpreter():
    names = sorted(set(reglab.__all__) | set(reglab._SUBMODULES))
    code = ("import reglab\n"
            f"for name in {names!r}:\n"
            "    assert getattr(reglab, name) is not None, name\n"
            "from reglab import L2, fit, train_population, threads\n"
            "print(callable(reglab.report.write_report), callable(reglab.study.run))")
    assert fresh(code) == "True True"


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
