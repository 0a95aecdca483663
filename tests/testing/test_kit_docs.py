"""The page "Testing your workflows" runs: its python blocks, top to bottom, as one module;
every test it shows passes, but the one it shows failing, which fails with the output the
page prints."""

from __future__ import annotations

import inspect
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import hypothesis
import pytest
from hypothesis import HealthCheck, Phase

from ledgerflow.testing import Clock, Harness
from ledgerflow.testing.contracts import StoreContract

PAGE = Path(__file__).resolve().parents[2] / "docs" / "content" / "testing.md"
BLOCK = re.compile(r"^```(?P<language>\w+)\n(?P<code>.*?)^```$", re.MULTILINE | re.DOTALL)
FAILING = "test_careless_expenses_stay_within_the_limit"


def blocks(language: str) -> list[tuple[int, str]]:
    text = PAGE.read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, m.start("code")) + 1, m.group("code"))
        for m in BLOCK.finditer(text)
        if m.group("language") == language
    ]


@pytest.fixture
def page() -> Iterator[types.ModuleType]:
    """The page's code as a module, run under a quick, reproducible hypothesis profile."""
    name = "ledgerflow_docs_testing"
    module = types.ModuleType(name)
    sys.modules[name] = module
    for line, code in blocks("python"):
        exec(compile("\n" * (line - 1) + code, str(PAGE), "exec"), module.__dict__)
    hypothesis.settings.register_profile(
        "kit-docs",
        max_examples=40,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        phases=[Phase.generate, Phase.shrink],
    )
    previous = hypothesis.settings.get_current_profile_name()
    hypothesis.settings.load_profile("kit-docs")
    try:
        yield module
    finally:
        hypothesis.settings.load_profile(previous)
        sys.modules.pop(name, None)


def test_the_tests_the_page_shows_pass(page: types.ModuleType) -> None:
    shown = {
        name: fn
        for name, fn in vars(page).items()
        if name.startswith("test_") and inspect.isfunction(fn) and name != FAILING
    }
    assert len(shown) >= 6
    for fn in shown.values():
        if "ledgerflow_harness" in inspect.signature(fn).parameters:
            with Harness(page.expense, actions=page.registry) as harness:
                fn(ledgerflow_harness=harness)
        else:
            fn()


def test_the_store_contract_the_page_shows_makes_a_store(page: types.ModuleType) -> None:
    assert issubclass(page.TestMyStore, StoreContract)
    store = page.TestMyStore().make_store(Clock())
    store.check_schema()
    store.close()


def normalised(text: str) -> list[str]:
    """The lines of ``text`` with what changes from run to run made alike: ids, and the
    float or int hypothesis happens to shrink an amount to."""
    text = re.sub(r"\b(\d+)\.0\b", r"\1", text)
    text = re.sub(
        r"execution x-[0-9a-f]+ \(tenant check-[0-9a-f]+\)", "execution x-… (tenant check-…)", text
    )
    # the CI profile prints hypothesis' reproduction blob: not part of what the page shows
    text = text.split("\n\nYou can reproduce this test case")[0]
    return [line.rstrip() for line in text.strip().splitlines()]


def test_the_careless_workflow_fails_as_the_page_shows(page: types.ModuleType) -> None:
    with pytest.raises(AssertionError) as caught:
        getattr(page, FAILING)()
    produced = [str(caught.value), *caught.value.__notes__]
    [(_, shown)] = [b for b in blocks("text") if "Failing test case" in b[1]]
    assert normalised("AssertionError: " + "\n".join(produced)) == normalised(shown)
