"""The README's Python examples run as written."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 3
    namespace: dict = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    assert 0.5 < namespace["test_accuracy"].max() <= 1.0
    assert bool((namespace["model"][0].weight.norm(dim=1) <= 3 + 1e-5).all())
