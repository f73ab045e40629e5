"""The README's "Use it from Python" example runs as written (in a fresh folder, as a user would)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.real
README = Path(__file__).resolve().parents[1] / "README.md"


def python_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Use it from Python", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1, "the section should hold one python block"
    return blocks[0]


def test_readme_python_example_runs_as_written(tmp_path: Path) -> None:
    code = python_example()
    (tmp_path / "example.py").write_text(code, encoding="utf-8")
    p = subprocess.run([sys.executable, "example.py"], check=False, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                       env={**os.environ, "TRANSFUSE_FEATURE_CACHE": str(tmp_path / "features")})
    assert p.returncode == 0, p.stderr[-3000:]
    assert (tmp_path / "runs" / "digits-py" / "model" / "model.json").is_file()
    assert "efficientnet_lite0/linear_probe" in p.stdout
    scores = re.findall(r"\[([0-9. ]+)\]\s*$", p.stdout.strip())
    assert scores and all(0.5 < float(v) <= 1 for v in scores[-1].split()), p.stdout[-2000:]
