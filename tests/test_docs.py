"""The documentation's Python examples run as written, and the public API's names are not module names."""
from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import facemtl

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks() -> list[tuple[str, str]]:
    """(label, code) of every ```python block of the README and docs/."""
    return [(f"{doc.name}#{k}", code) for doc in DOCS for k, code in enumerate(BLOCK.findall(doc.read_text()))]


def test_the_readme_has_a_python_example() -> None:
    assert any(label.startswith("README.md") for label, _ in python_blocks())


@pytest.mark.parametrize("label,code", python_blocks(), ids=[label for label, _ in python_blocks()])
def test_python_block_runs_as_written(label: str, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)                                  # blocks that write files write them here
    exec(compile(code, label, "exec"), {"__name__": "__doc_example__"})


def test_public_names_are_not_submodule_names() -> None:
    submodules = {m.name for m in pkgutil.iter_modules(facemtl.__path__)}
    clashes = (set(facemtl.__all__) - {"errors"}) & submodules
    assert not clashes, f"public names shadowed by submodules once imported: {sorted(clashes)}"
    for name in submodules:
        importlib.import_module(f"facemtl.{name}")
    for name in set(facemtl.__all__) - {"__version__", "errors"}:
        assert not isinstance(getattr(facemtl, name), type(facemtl)), name
