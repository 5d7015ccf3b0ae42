"""Type checkers understand user classes: pyright on small typed user files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent / "typing"


def _pyright(*files: Path) -> list[dict]:
    exe = shutil.which("pyright") or str(Path(sys.executable).parent / "pyright")
    if not Path(exe).exists() and shutil.which(exe) is None:
        pytest.skip("pyright is not installed (it comes with the test extra)")
    out = subprocess.run(
        [exe, "--outputjson", "--pythonpath", sys.executable, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(out.stdout)
    return [d for d in report["generalDiagnostics"] if d["severity"] == "error"]


def test_pyright_understands_treeclass_fields():
    errors = _pyright(HERE / "user_ok.py", HERE / "user_bad.py")
    ok = [e for e in errors if e["file"].endswith("user_ok.py")]
    bad = [e for e in errors if e["file"].endswith("user_bad.py")]
    assert ok == [], ok
    # One wrong argument for a @treeclass class, one for a ptc.TreeClass subclass.
    assert len(bad) == 2, bad
    for error in bad:
        assert error["rule"] == "reportArgumentType"
        assert '"features"' in error["message"] or "str" in error["message"]
