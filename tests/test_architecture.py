"""The import rules of docs/architecture.md, checked over the source with ``ast`` (function-level imports too).

An arrow that must never exist fails here with the module and line that draws it, whether the import sits at
module level, inside a function, under ``TYPE_CHECKING`` or in a string handed to ``importlib``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "aml_identity"

# The runtime core: what a training job imports to get tokens. It depends on no other part.
CORE = (
    "aml_identity.identity",
    "aml_identity.credential",
    "aml_identity._tokens",
    "aml_identity._cached_token",
    "aml_identity._retry",
    "aml_identity._fetch",
    "aml_identity._fetch_service",
    "aml_identity._endpoint_response",
    "aml_identity._environment",
    "aml_identity.errors",
)
# The one place outside `testing` that may name it: the command line registers the `sandbox` subcommand
# from testing's own CLI module (and imports it only when the command line is built).
CLI_REGISTRATION = ("aml_identity.cli", "aml_identity.testing._cli")


@dataclass(frozen=True)
class Import:
    """One module naming another: ``importer`` imports ``target`` at ``line``."""

    importer: str
    target: str
    line: int

    def __str__(self) -> str:
        return f"{self.importer}:{self.line} imports {self.target}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _resolve(importer: str, is_package: bool, module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def _imports_of(name: str, path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(Import(name, alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, is_package, node.module, node.level)
            # `from aml_identity.testing import _cli` names the submodule; `... import Sandbox`, the package.
            submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
            if len(submodules) < len(node.names):
                found.append(Import(name, base, node.lineno))
            found.extend(Import(name, module, node.lineno) for module in submodules)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in MODULES:
            found.append(Import(name, node.value, node.lineno))  # importlib.import_module("aml_identity...")
    return [i for i in found if i.target.startswith("aml_identity")]


IMPORTS = [i for name, path in MODULES.items() for i in _imports_of(name, path)]


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _violations(importers: str | tuple[str, ...], targets: tuple[str, ...]) -> list[str]:
    sources = (importers,) if isinstance(importers, str) else importers
    return [
        str(i)
        for i in IMPORTS
        if any(_within(i.importer, s) for s in sources) and any(_within(i.target, t) for t in targets)
    ]


def test_the_scan_sees_module_level_function_level_and_type_checking_imports():
    # The rules below are only as good as the scan: it must find imports wherever they are written.
    seen = {(i.importer, i.target) for i in IMPORTS}
    assert ("aml_identity.datastore.resolve", "aml_identity._arm") in seen  # inside a function
    assert ("aml_identity.cli", "aml_identity.testing._cli") in seen  # inside a function, `from pkg import mod`
    assert ("aml_identity.provisioning._preflight", "aml_identity._arm") in seen  # under TYPE_CHECKING
    assert len(MODULES) > 50


def test_nothing_outside_testing_imports_testing():
    offenders = [
        str(i)
        for i in IMPORTS
        if _within(i.target, "aml_identity.testing")
        and not _within(i.importer, "aml_identity.testing")
        and (i.importer, i.target) != CLI_REGISTRATION
    ]
    assert offenders == []


def test_the_cli_reaches_testing_only_through_its_subcommand_module():
    into_testing = {
        i.target for i in IMPORTS if i.importer == "aml_identity.cli" and _within(i.target, "aml_identity.testing")
    }
    assert into_testing <= {"aml_identity.testing", CLI_REGISTRATION[1]}


def test_provisioning_imports_nothing_from_datastore():
    assert _violations("aml_identity.provisioning", ("aml_identity.datastore",)) == []


def test_datastore_imports_nothing_from_provisioning():
    # Resolution reads datastores through the shared ARM client (aml_identity._arm), not provisioning's.
    assert _violations("aml_identity.datastore", ("aml_identity.provisioning",)) == []


@pytest.mark.parametrize("module", CORE)
def test_the_runtime_core_imports_neither_datastore_nor_provisioning(module):
    assert module in MODULES
    forbidden = ("aml_identity.datastore", "aml_identity.provisioning", "aml_identity.testing", "aml_identity.cli")
    assert _violations(module, forbidden) == []


def test_testing_never_imports_the_cli():
    assert _violations("aml_identity.testing", ("aml_identity.cli",)) == []


def _register_at_fork_uses(path: Path) -> list[int]:
    """Lines of ``path`` that name ``register_at_fork`` (a call, an attribute, or an import of it)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    lines = []
    for node in ast.walk(tree):
        named = (
            (isinstance(node, ast.Attribute) and node.attr == "register_at_fork")
            or (isinstance(node, ast.Name) and node.id == "register_at_fork")
            or (isinstance(node, ast.ImportFrom) and any(a.name == "register_at_fork" for a in node.names))
        )
        if named:
            lines.append(node.lineno)
    return lines


def test_only_the_fork_registry_registers_after_fork_hooks():
    # Every module resets its state in a forked child through aml_identity._fork, so the list is in one place.
    offenders = [
        f"{name}:{line} calls os.register_at_fork; use aml_identity._fork.after_fork_in_child instead"
        for name, path in MODULES.items()
        if name != "aml_identity._fork"
        for line in _register_at_fork_uses(path)
    ]
    assert offenders == []
    assert _register_at_fork_uses(MODULES["aml_identity._fork"])  # the scan sees the one that exists


# The longest a module under src/aml_identity may be. Past it a module holds more than one concern, reviews of
# it conflict, and a reader cannot keep it in view: split it by concern into private modules, re-exporting the
# names its callers import (as datastore/_rest.py does with _blob_answers.py).
MAX_MODULE_LINES = 600


def test_no_module_is_longer_than_the_limit():
    too_long = {
        name: lines
        for name, path in MODULES.items()
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert too_long == {}, f"modules over {MAX_MODULE_LINES} lines; split them by concern: {too_long}"
