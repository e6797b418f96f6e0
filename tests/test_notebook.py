"""The example notebook (examples/moons_l2_grid.ipynb) runs start to finish in a real Jupyter kernel.

The kernel is this interpreter (a kernel spec written for the test, found first on JUPYTER_PATH),
so the notebook runs against the reglab under test whatever other kernels the machine has; Jupyter
and IPython write their runtime files under the test's temporary folder, not the home folder. A
kernel that cannot start fails the test with a message that says so: CI installs the dev extras
(nbclient, nbformat, ipykernel), so there is nothing to skip.
"""

import json
import shutil
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "moons_l2_grid.ipynb"
KERNEL = "reglab-test-kernel"


def _jupyter():
    try:
        import nbclient
        import nbformat
        from nbclient.exceptions import CellExecutionError
    except ImportError as exc:   # pragma: no cover - the dev extras are missing
        pytest.fail(f"the notebook test needs nbclient, nbformat and ipykernel ({exc}); run `make install`")
    return nbclient, nbformat, CellExecutionError


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    """A kernel spec named KERNEL that starts ipykernel in this interpreter."""
    try:
        import ipykernel  # noqa: F401 - the kernel must be importable by this interpreter
    except ImportError:   # pragma: no cover
        pytest.fail("ipykernel is not installed in the test's Python; run `make install`")
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "reglab test kernel", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    return KERNEL


def _outputs(cell, kind):
    return [o for o in cell.get("outputs", []) if kind in o.get("data", {})]


def test_the_example_notebook_runs_start_to_finish(tmp_path, kernel):
    nbclient, nbformat, CellExecutionError = _jupyter()
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(NOTEBOOK, work)
    shutil.copy(ROOT / "examples" / "moons_l2_grid.toml", work)
    nb = nbformat.read(work / NOTEBOOK.name, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=kernel, timeout=300, startup_timeout=120,
                                     resources={"metadata": {"path": str(work)}})
    start = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as exc:
        pytest.fail(f"a cell of {NOTEBOOK.name} failed:\n{exc}")
    except Exception as exc:   # noqa: BLE001 - the kernel did not start or died: say so, never skip
        pytest.fail(f"could not run {NOTEBOOK.name} in a Jupyter kernel ({sys.executable} -m ipykernel_launcher): "
                    f"{type(exc).__name__}: {exc}")
    elapsed = time.perf_counter() - start
    cells = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors

    by_source = {c.source.strip(): c for c in cells}
    # the definition before the run, the answer and the table with verdicts after it
    before = _outputs(by_source[next(s for s in by_source if s.endswith("nothing has run yet"))], "text/html")
    assert before and "not run yet" in before[0]["data"]["text/html"]
    ran = by_source["study.run(echo=print)"]
    html = _outputs(ran, "text/html")[0]["data"]["text/html"]
    assert "moons-l2-grid" in html and 'class="answer"' in html and "verdict" in html
    printed = "".join(o.get("text", "") for o in ran.outputs if o.get("output_type") == "stream")
    assert "45 members trained, 0 from memory" in printed, printed
    # every figure shows inline as a PNG
    for source in ("study.plot.validation_curve()", "study.plot.learning_curves()", "study.plot.per_seed()",
                   "study.plot.decision_boundaries()"):
        assert _outputs(by_source[source], "image/png"), source
    report = work / "moons-grid-report"
    assert (report / "index.html").is_file() and (report / "results.csv").is_file()
    assert len((report / "results.csv").read_text().splitlines()) == 1 + 45   # 9 strengths × 5 seeds
    assert (report / "figures" / "validation_curve.png").is_file()
    print(f"\nthe example notebook ran in {elapsed:.1f} s")
