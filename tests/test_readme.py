"""The README's Python examples run as written."""

import re
from pathlib import Path


README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run(one_thread):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 3
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert 0.5 < namespace["test_accuracy"].max() <= 1.0
    assert bool((namespace["model"][0].weight.norm(dim=1) <= 3 + 1e-5).all())
