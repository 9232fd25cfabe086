"""The documentation site: every page exists, every runnable example runs, the build is strict.

A ```python block in ``docs/*.md`` that contains ``if __name__ == "__main__":`` is a complete
script: it is run as a real ``__main__`` with this interpreter and must exit 0. Other
python blocks are fragments (before/after snippets); they must at least compile.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_script

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
PAGES = [
    "index.md",
    "migrating.md",
    "lifecycle.md",
    "failures.md",
    "pitfalls.md",
    "progress.md",
    "logging.md",
    "debugging.md",
    "api.md",
    "benchmarks.md",
    "joblib.md",
    "scaling-out.md",
]
GUARD = 'if __name__ == "__main__":'
FENCE = re.compile(r"^```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^```[ \t]*$", re.S | re.M)
EXAMPLE_SECONDS = 60
BUILD_SECONDS = 120


def _blocks(lang: str) -> list[tuple[str, str]]:
    """(id, source) of every fenced block in ``lang``, as ``page.md:line``."""
    found = []
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text()
        for match in FENCE.finditer(text):
            if match["lang"] == lang:
                line = text.count("\n", 0, match.start()) + 1
                found.append((f"{page.name}:{line}", match["body"]))
    return found


PYTHON_BLOCKS = _blocks("python")
EXAMPLES = [(where, source) for where, source in PYTHON_BLOCKS if GUARD in source]


@pytest.mark.parametrize("page", PAGES)
def test_page_exists(page: str) -> None:
    path = DOCS / page
    assert path.is_file(), f"missing documentation page {path}"
    assert path.read_text().startswith("# "), f"{page} should open with a title"


def test_pages_have_runnable_examples() -> None:
    pages = {where.split(":")[0] for where, _ in EXAMPLES}
    for page in [
        "index.md",
        "migrating.md",
        "lifecycle.md",
        "failures.md",
        "logging.md",
        "debugging.md",
        "joblib.md",
        "scaling-out.md",
    ]:
        assert page in pages, f"{page} has no runnable example"


def test_getting_started_has_the_readme_commands() -> None:
    readme = (REPO / "README.md").read_text()
    match = re.search(r"^```sh\n(.*?)^```", readme, re.S | re.M)
    assert match is not None, "README.md has no ```sh block"
    assert match[1] in (DOCS / "index.md").read_text()


@pytest.mark.parametrize(("where", "source"), PYTHON_BLOCKS, ids=[w for w, _ in PYTHON_BLOCKS])
def test_python_block_compiles(where: str, source: str) -> None:
    compile(source, where, "exec")


@pytest.mark.timeout(EXAMPLE_SECONDS + 30)
@pytest.mark.parametrize(("where", "source"), EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_example_runs(where: str, source: str, tmp_path: Path) -> None:
    result = run_script(source, tmp_path, timeout=EXAMPLE_SECONDS)
    assert result.returncode == 0, (
        f"the example at docs/{where} exited with {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )


@pytest.mark.timeout(EXAMPLE_SECONDS + 30)
def test_main_caveat_example_under_python_c(tmp_path: Path) -> None:
    """lifecycle.md says the `__main__` example loses the initializer's global under -c."""
    (source,) = [s for w, s in EXAMPLES if w.startswith("lifecycle.md") and "CONFIG" in s]
    result = subprocess.run(
        [sys.executable, "-c", source],
        capture_output=True,
        text=True,
        timeout=EXAMPLE_SECONDS,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[(None, 0), (None, 1)]", result.stdout


@pytest.mark.timeout(BUILD_SECONDS + 30)
def test_mkdocs_build_is_strict(tmp_path: Path) -> None:
    for module in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers"):
        if importlib.util.find_spec(module) is None:
            pytest.fail(f"{module} is not installed: install the test extra")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=BUILD_SECONDS,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr}{result.stdout}"
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in (
        "hookpool.Pool",
        "hookpool.ProcessPoolExecutor",
        "hookpool.WorkerLostError",
        "hookpool.current_worker",
        "hookpool.WorkerInfo",
    ):
        assert f'id="{name}"' in api, f"the API reference lacks {name}"
