"""Every error the package raises on purpose is in the one tree `webhook.errors` documents."""

import ast
import importlib
import inspect
import pathlib
import pkgutil

import webhook
from webhook import errors

PACKAGE = pathlib.Path(webhook.__file__).parent

# Raised for a caller's programming mistake (a bad argument in code, never in input), or
# kopf's own way to answer an admission: not errors a user's input or a peer can cause.
OUTSIDE_THE_TREE = {"ValueError", "kopf.AdmissionError"}


def modules() -> list[str]:
    return [
        info.name
        for info in pkgutil.walk_packages([str(PACKAGE)], prefix="webhook.")
        if not info.name.endswith("__main__")
    ]


def test_every_exception_class_of_the_package_is_defined_in_errors() -> None:
    strays = []
    for name in modules():
        module = importlib.import_module(name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            ours = value.__module__.startswith("webhook")
            if issubclass(value, BaseException) and ours and value.__module__ != "webhook.errors":
                strays.append(f"{value.__module__}.{value.__qualname__}")
    assert strays == []


def test_the_documented_tree_is_the_class_tree() -> None:
    documented: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in (errors.__doc__ or "").splitlines():
        stripped = line.lstrip(" │├└─")
        name = stripped.split(" ", 1)[0]
        if not name or not hasattr(errors, name) or not line.startswith("    "):
            continue
        depth = len(line) - len(stripped)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        documented[name] = stack[-1][1] if stack else "Exception"
        stack.append((depth, name))
    actual = {
        name: value.__base__.__name__
        for name, value in inspect.getmembers(errors, inspect.isclass)
        if issubclass(value, errors.DigestguardError) or value is errors.DigestguardError
    }
    assert documented == actual


def test_every_raise_raises_an_error_of_the_tree() -> None:
    strays = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        # A function that builds the error to raise says in its annotation what it builds.
        factories = {
            node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef)
            and node.returns is not None
            and all(
                part.strip().startswith("errors.") for part in ast.unparse(node.returns).split("|")
            )
        }
        for node in ast.walk(tree):
            if not isinstance(node, ast.Raise) or node.exc is None:
                continue
            raised = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            spelled = ast.unparse(raised)
            if spelled.startswith("errors.") and hasattr(errors, spelled.removeprefix("errors.")):
                continue
            if spelled in OUTSIDE_THE_TREE or spelled in factories:
                continue
            strays.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {spelled}")
    assert strays == []
