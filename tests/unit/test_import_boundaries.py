"""The decision core stays pure: whatever a module in webhook/core imports is either the
standard library or another part of webhook, so a new module there is covered too."""

import ast
import pathlib
import sys

import pytest

CORE = pathlib.Path(__file__).resolve().parents[2] / "webhook" / "core"


def imported_top_levels(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.partition(".")[0])
    return found


@pytest.mark.parametrize("path", sorted(CORE.glob("**/*.py")), ids=lambda p: p.name)
def test_core_module_imports_only_the_standard_library_and_webhook(path: pathlib.Path) -> None:
    foreign = imported_top_levels(path) - set(sys.stdlib_module_names) - {"webhook"}
    assert not foreign, f"{path.name} imports {sorted(foreign)}"


def test_the_core_folder_is_where_the_test_looks() -> None:
    assert len(list(CORE.glob("*.py"))) >= 7
