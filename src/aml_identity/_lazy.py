"""Lazy package exports: a package names where each public name lives, and imports it on first use.

The packages of aml-identity (the root, ``datastore``, ``provisioning``, ``testing``) re-export their public
API this way, so importing one costs almost nothing: a rank, a spawned DataLoader worker or a command
pays only for the names it uses (:pep:`562` module ``__getattr__``). Each package also imports the same
names under ``TYPE_CHECKING``, for type checkers and editors.
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["exports"]


class _LazyPackage(types.ModuleType):
    """A package whose exported function may share its name with a submodule (``datastore.mount``).

    Importing the submodule ``pkg.mount`` binds it as the package's ``mount`` attribute; the function of
    that name is what the package exports (as it was when packages imported their names eagerly), so such a
    binding is turned into the submodule's attribute of the same name.
    """

    _shadowed: frozenset[str] = frozenset()

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._shadowed and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


def exports(
    package: str, table: Mapping[str, str], *, extra: str | None = None
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return a package's module ``__getattr__`` and ``__dir__`` for its lazily imported names.

    Args:
        package: The package's ``__name__``.
        table: Public name -> the module that defines it.
        extra: The optional extra the package needs (``"testing"``): a module missing while a name is
            imported then raises :class:`~aml_identity.errors.MissingExtraError`, naming ``pip install``.

    Returns:
        ``(__getattr__, __dir__)``: assign them at the package's top level.
    """
    module_object = importlib.import_module(package)
    namespace = module_object.__dict__
    shadowed = frozenset(name for name, module in table.items() if module == f"{package}.{name}")
    if shadowed:
        module_object.__class__ = _LazyPackage
        namespace["_shadowed"] = shadowed

    def __getattr__(name: str) -> Any:  # noqa: N807 - the PEP 562 hook
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        try:
            value = getattr(importlib.import_module(module), name)
        except ModuleNotFoundError as exc:
            from aml_identity import _extras  # noqa: PLC0415
            from aml_identity.errors import MissingExtraError  # noqa: PLC0415

            if extra is None or isinstance(exc, MissingExtraError):
                raise
            # Name the extra's distributions that are absent, else (no package metadata) the module.
            absent = _extras.missing(extra) or (exc.name or str(exc),)
            raise MissingExtraError(f"{package}.{name}", extra, absent) from exc
        namespace[name] = value  # the next access is a plain attribute read
        return value

    def __dir__() -> list[str]:  # noqa: N807 - the PEP 562 hook
        return sorted(set(namespace) | set(table))

    return __getattr__, __dir__
