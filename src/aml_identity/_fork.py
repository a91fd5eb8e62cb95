"""One registry of after-fork hooks: every module-level lock, session and cache is reset in a forked child.

A child forked while a parent thread holds a lock inherits the lock held, with no thread to release it; a
DataLoader worker forked during a prefetch would then hang on its first token or datastore lookup. Modules
register a hook here instead of each calling :func:`os.register_at_fork` themselves, so the list of what a
child resets is in one place and the hooks run in registration order.
"""

from __future__ import annotations

import os
from collections.abc import Callable

__all__ = ["after_fork_in_child"]

_hooks: list[Callable[[], None]] = []


def after_fork_in_child(hook: Callable[[], None]) -> Callable[[], None]:
    """Run ``hook`` in every child forked from now on (usable as a decorator).

    Args:
        hook: Resets one module's locks, sessions or caches; it must not take a lock the parent may hold.

    Returns:
        ``hook`` itself.
    """
    _hooks.append(hook)
    return hook


def _run_hooks() -> None:
    for hook in _hooks:
        hook()


os.register_at_fork(after_in_child=_run_hooks)
