"""One registry of after-fork hooks: every module-level lock, session and cache is reset in a forked child.

A child forked while a parent thread holds a lock inherits the lock held, with no thread to release it; a
DataLoader worker forked during a prefetch would then hang on its first token or datastore lookup. A child
also inherits its parent's sockets, thread pools whose threads did not come along, and random generators in
the same state. Modules register a hook here instead of each calling :func:`os.register_at_fork`
themselves, so the list of what a child resets is in one place and the hooks run in registration order:

* :func:`after_fork_in_child` for module-level state (a lock, the process's HTTP session);
* :func:`after_fork_in_child_while_alive` for long-lived objects (a credential, a file system, an upload
  hook): the registry holds them weakly, so registering never keeps one alive;
* :func:`before_fork` for work that must not be in flight when the process forks (a background import: a
  child forked mid-import inherits the module's import lock held by a thread it does not have).

``tests/test_architecture.py`` fails when a module calls :func:`os.register_at_fork` itself, and
``tests/distributed/test_fork_safety.py`` checks that every module-level lock is replaced in a child.
"""

from __future__ import annotations

import itertools
import os
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["after_fork_in_child", "after_fork_in_child_while_alive", "before_fork"]

_hooks: list[Callable[[], None]] = []
_before_hooks: list[Callable[[], None]] = []
# Bound methods of live objects, by registration number (weak: an object that dies drops out by itself).
_method_hooks: dict[int, weakref.WeakMethod[Callable[[], None]]] = {}
_numbers = itertools.count()


def after_fork_in_child(hook: Callable[[], None]) -> Callable[[], None]:
    """Run ``hook`` in every child forked from now on (usable as a decorator).

    Args:
        hook: Resets one module's locks, sessions or caches; it must not take a lock the parent may hold.

    Returns:
        ``hook`` itself.
    """
    _hooks.append(hook)
    return hook


def after_fork_in_child_while_alive(method: Callable[[], None]) -> None:
    """Call the bound ``method`` in every child forked from now on, for as long as its object lives.

    Args:
        method: A bound method that resets its object's locks, pools and connections (it must not take a
            lock the parent may hold). Its object is referenced weakly.
    """
    number = next(_numbers)

    def forget(_: Any, number: int = number) -> None:
        _method_hooks.pop(number, None)

    _method_hooks[number] = weakref.WeakMethod(method, forget)


def before_fork(hook: Callable[[], None]) -> Callable[[], None]:
    """Run ``hook`` in the parent just before every fork from now on (usable as a decorator).

    Args:
        hook: Waits, briefly and with a bound, for work that a child must not inherit half done.

    Returns:
        ``hook`` itself.
    """
    _before_hooks.append(hook)
    return hook


def _run_before_hooks() -> None:
    for hook in _before_hooks:
        hook()


def _run_hooks() -> None:
    for hook in _hooks:
        hook()
    for ref in list(_method_hooks.values()):
        method = ref()
        if method is not None:
            method()


os.register_at_fork(before=_run_before_hooks, after_in_child=_run_hooks)
