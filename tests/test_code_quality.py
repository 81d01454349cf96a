"""The conventions in DESIGN.md that a machine can check: ruff (lint and format) and mypy stay clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_ruff_lint_and_format():
    lint = run(str(BIN / "ruff"), "check", "src", "tests", "bench")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = run(str(BIN / "ruff"), "format", "--check", "src")
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_mypy():
    result = run(str(BIN / "mypy"), "src")
    assert result.returncode == 0, result.stdout + result.stderr
