"""The public API is typed: mypy --strict accepts a typed program (tests/typed_usage.py)
and catches the misuses it marks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.mark.timeout(180)
def test_mypy_strict_accepts_the_typed_usage_example() -> None:
    pytest.importorskip("mypy", reason="mypy is in the test extra")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--warn-unused-ignores",
            "--no-incremental",
            "--follow-imports=silent",  # check the API as used, not the package itself
            "--config-file",
            "/dev/null",
            str(HERE / "typed_usage.py"),
        ],
        capture_output=True,
        text=True,
        timeout=170,
        cwd=HERE.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_package_ships_py_typed() -> None:
    import hookpool

    assert (Path(hookpool.__file__).parent / "py.typed").is_file()
