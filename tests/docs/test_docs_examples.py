"""The code the documentation shows runs: every ``python`` block of a page, top to bottom, as one
module; then every ``test_*`` function the page defines passes; and the JSON a page shows is
what the code gives.

Blocks that include a file (``--8<--``) are left out: the files they include are the project's
own, imported and tested elsewhere, and ``mkdocs build --strict`` fails if one goes missing.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs" / "content"
BLOCK = re.compile(r"^```(?P<language>\w+)\n(?P<code>.*?)^```$", re.MULTILINE | re.DOTALL)
PAGES = ["actions.md"]


def blocks(page: str, language: str) -> list[tuple[int, str]]:
    """The ``language`` blocks of ``page``, each with the line its code starts on."""
    text = (DOCS / page).read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, m.start("code")) + 1, m.group("code"))
        for m in BLOCK.finditer(text)
        if m.group("language") == language and not m.group("code").startswith("--8<--")
    ]


@pytest.fixture
def run_page() -> Iterator[Callable[[str], types.ModuleType]]:
    """Runs a page's python blocks as one module (named, so that attrs classes defined on the
    page can resolve their type hints), and forgets it afterwards."""
    names: list[str] = []

    def run(page: str) -> types.ModuleType:
        name = f"ledgerflow_docs_{Path(page).stem}"
        module = types.ModuleType(name)
        sys.modules[name] = module
        names.append(name)
        for line, code in blocks(page, "python"):
            # pad with blank lines, so a traceback points at the page's own line
            exec(compile("\n" * (line - 1) + code, str(DOCS / page), "exec"), module.__dict__)
        return module

    yield run
    for name in names:
        sys.modules.pop(name, None)


@pytest.mark.parametrize("page", PAGES)
def test_the_python_blocks_run_and_the_tests_they_show_pass(
    page: str, run_page: Callable[[str], types.ModuleType], tmp_path: Path
) -> None:
    assert blocks(page, "python"), f"{page} shows no python"
    module = run_page(page)
    shown = {
        name: fn
        for name, fn in vars(module).items()
        if name.startswith("test_") and inspect.isfunction(fn)
    }
    for name, fn in shown.items():
        arguments = {}
        if "tmp_path" in inspect.signature(fn).parameters:
            arguments["tmp_path"] = tmp_path / name
            arguments["tmp_path"].mkdir()
        fn(**arguments)


def test_the_described_action_is_what_describe_gives(
    run_page: Callable[[str], types.ModuleType],
) -> None:
    module = run_page("actions.md")
    [(_, shown)] = blocks("actions.md", "json")
    entry = json.loads(shown)
    assert [a for a in module.registry.describe() if a["name"] == entry["name"]] == [entry]
