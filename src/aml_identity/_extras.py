"""Optional extras (``pip install 'aml-identity[EXTRA]'``): is one installed, and the one-line error if not.

The installed package's own metadata says which distributions each extra brings, so this module never
keeps a second list of them.
"""

from __future__ import annotations

import re
from importlib import metadata

from aml_identity.errors import MissingExtraError

__all__ = ["missing", "require"]

_DISTRIBUTION = "aml-identity"
# A requirement line of the metadata: `jsonschema>=4.20; extra == "testing"` (quotes vary by backend).
_EXTRA_MARKER_RE = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def missing(extra: str) -> tuple[str, ...]:
    """Return the distributions of ``extra`` that are not installed.

    Args:
        extra: The extra's name (``"testing"``, ``"mount"``).

    Returns:
        Their names, in the metadata's order; empty when all are installed, or when aml-identity itself has
        no metadata (a source tree on ``sys.path``: then only an import can tell).
    """
    try:
        requirements = metadata.requires(_DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return ()
    absent = []
    for requirement in requirements:
        spec, _, marker = requirement.partition(";")
        found = _EXTRA_MARKER_RE.search(marker)
        name = _NAME_RE.match(spec.strip())
        if found is None or found.group(1) != extra or name is None:
            continue
        try:
            metadata.distribution(name.group(0))
        except metadata.PackageNotFoundError:
            absent.append(name.group(0))
    return tuple(absent)


def require(extra: str, feature: str) -> None:
    """Raise unless every distribution of ``extra`` is installed.

    Args:
        extra: The extra's name.
        feature: What needs it, as the user named it (``"aml-identity sandbox"``).

    Raises:
        MissingExtraError: Naming what is missing and ``pip install 'aml-identity[EXTRA]'``.
    """
    absent = missing(extra)
    if absent:
        raise MissingExtraError(feature, extra, absent)
