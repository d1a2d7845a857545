"""The README's "One example per framework" runs as written: each Python block in a fresh process
(Keras picks its backend once per process), so a renamed argument or a stale example fails here
before a reader copies it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _examples() -> list[str]:
    text = README.read_text()
    section = text[text.index("## One example per framework") :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


EXAMPLES = _examples()


def test_the_section_has_an_example_per_framework():
    imports = "".join(EXAMPLES)
    for name in ("numpy", "torch", "jax", "tensorflow", "keras", "gk.gated"):
        assert name in imports, name


@pytest.mark.parametrize("code", EXAMPLES, ids=[f"block{i}" for i in range(len(EXAMPLES))])
def test_readme_example_runs(code):
    for module in re.findall(r"^import (\w+)|^from (\w+)", code, flags=re.M):
        pytest.importorskip(next(m for m in module if m))
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
