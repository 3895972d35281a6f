"""The README's Python examples run as written, in order, in one namespace (as a reader would
paste them into one session). Blocks that open with a `# recipe` line (they need Ray, Spark or
mpiexec) or a `# signatures` line (an API listing) are read, not run."""
import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def python_blocks():
    with open(README) as f:
        text = f.read()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_readme_has_examples_and_marks_the_ones_it_does_not_run():
    blocks = python_blocks()
    runnable = [b for b in blocks if not re.match(r"# (recipe|signatures)", b)]
    assert len(blocks) >= 8 and len(runnable) >= 5


def test_the_readme_examples_run(tmp_path, monkeypatch):
    for module in ("torch", "dask.array", "distributed", "sklearn"):
        pytest.importorskip(module)
    monkeypatch.chdir(tmp_path)  # files the examples write land here
    namespace = {"__name__": "__readme__"}
    for i, block in enumerate(python_blocks()):
        if re.match(r"# (recipe|signatures)", block):
            compile(block, f"README block {i}", "exec")  # still valid Python
            continue
        exec(compile(block, f"README block {i}", "exec"), namespace)
