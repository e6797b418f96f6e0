"""The README's Python examples run as written (in a scratch folder holding a link to examples/, so
that the files they write, such as a report folder, land there)."""

import re
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_readme_python_examples_run(one_thread, tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 3
    (tmp_path / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert 0.5 < namespace["test_accuracy"].max() <= 1.0
    assert bool((namespace["model"][0].weight.norm(dim=1) <= 3 + 1e-5).all())
    # In a notebook
    assert namespace["study"].results.shape == (10, 13)
    assert namespace["index"] == Path("moons-l2-report") / "index.html" and namespace["index"].is_file()
    assert namespace["fig"].axes
