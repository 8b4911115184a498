"""The code is ruff-formatted and ruff-clean (line length 120, E501 on): style is checked, not hoped for."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUFF = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
PATHS = ["tunebench", "tests", "scripts"]
EXCLUDE = ["--exclude", "tests/integration/test_zz_local.py"]


def ruff(*args: str) -> subprocess.CompletedProcess:
    if not Path(RUFF).exists():
        pytest.skip("ruff is not installed (pip install -e .[dev])")
    return subprocess.run([RUFF, *args], cwd=ROOT, capture_output=True, text=True)


def test_ruff_check_passes():
    r = ruff("check", *PATHS, *EXCLUDE)
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_format_is_applied():
    r = ruff("format", "--check", *PATHS, *EXCLUDE)
    assert r.returncode == 0, r.stdout + r.stderr
