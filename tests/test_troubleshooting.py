"""docs/troubleshooting.md is generated from aml_identity.errors: every public error type, and nothing else.

Regenerate it with ``make troubleshooting`` (``python tests/test_troubleshooting.py``).
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

from aml_identity import errors

PAGE = Path(__file__).resolve().parents[1] / "docs" / "troubleshooting.md"
HEADER = """# Troubleshooting: every error aml-identity raises

<!-- Generated from src/aml_identity/errors.py by `make troubleshooting`; tests/test_troubleshooting.py fails
when it drifts. Edit the docstrings, not this page. -->

Every error is an `AmlIdentityError`, and its message says what was tried, what went wrong and what to do (it
never holds a token or a secret). Where a caller of the Azure SDKs already catches an azure-core or
azure-identity type, the error is one of those too, so existing `except` clauses keep working: the "catch it
as" line lists them. Each section below is one public error type: when it is raised, what its message
carries, and the fix.
"""


def error_classes() -> list[type[BaseException]]:
    found = [getattr(errors, name) for name in errors.__all__]
    return [c for c in found if inspect.isclass(c) and issubclass(c, BaseException)]


def _markdown(doc: str) -> str:
    """A Google-style docstring as Markdown: its ``Attributes:`` section becomes a list."""
    out: list[str] = []
    in_attributes = False
    for line in doc.splitlines():
        if line.strip() == "Attributes:":
            in_attributes = True
            out.append("What it carries:\n")
        elif in_attributes and line.startswith("        "):
            out[-1] += " " + line.strip()
        elif in_attributes and line.startswith("    "):
            name, _, text = line.strip().partition(":")
            out.append(f"- `{name}`:{text}")
        else:
            in_attributes = False
            out.append(line)
    return "\n".join(out)


def _name(base: type) -> str:
    if base.__module__ == "builtins" or base.__module__.startswith("aml_identity"):
        return f"`{base.__name__}`"
    return f"`{base.__module__}.{base.__qualname__}`"


def render() -> str:
    parts = [HEADER]
    for cls in error_classes():
        doc = _markdown(inspect.cleandoc(cls.__doc__ or ""))
        catch = [_name(base) for base in cls.__mro__[1:] if base not in (Exception, BaseException, object)]
        parts.append(f"## `{cls.__name__}`\n\n{doc}\n\nCatch it as: {', '.join(catch)}.\n")
    return "\n".join(parts)


def test_the_page_lists_every_public_error_class():
    text = PAGE.read_text(encoding="utf-8")
    listed = [line[4:-1] for line in text.splitlines() if line.startswith("## `")]
    assert listed == [cls.__name__ for cls in error_classes()]
    assert {"ComputeTargetException", "ConfigurationError", "TokenRequestError"} <= set(listed)


def test_the_page_is_what_errors_py_generates():
    assert PAGE.read_text(encoding="utf-8") == render(), "run `make troubleshooting` and commit docs/troubleshooting.md"


if __name__ == "__main__":
    PAGE.write_text(render(), encoding="utf-8")
    sys.stdout.write(f"wrote {PAGE}\n")
