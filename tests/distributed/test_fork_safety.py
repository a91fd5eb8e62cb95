"""Fork safety: children forked while parent threads hold the package's module-level locks never hang."""

from __future__ import annotations

import importlib
import os
import threading

import pytest

from aml_identity import _fork

resolve_module = importlib.import_module("aml_identity.datastore.resolve")

# Children forked per run: enough that a lock held by a parent thread at fork time is hit many times.
CHILDREN = 200
# How long a child may take to take the lock and exit before it counts as hung (bounded, never waited out).
CHILD_TIMEOUT_S = 10.0

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX-only")


def _fork_children_while_held() -> int:
    """Fork CHILDREN children, each while a parent thread holds resolve's lock; 1 if one hung, else 0."""
    for _ in range(CHILDREN):
        held, forked = threading.Event(), threading.Event()

        def hold(held: threading.Event = held, forked: threading.Event = forked) -> None:
            with resolve_module._cache_lock:  # a parent thread resolving at the moment of fork
                held.set()
                forked.wait()

        holder = threading.Thread(target=hold, daemon=True)
        holder.start()
        held.wait()
        pid = os.fork()
        if pid == 0:  # the child: takes the lock the parent thread held (it must have been reset), then exits
            resolve_module.clear_cache()
            os._exit(0)
        forked.set()
        holder.join()
        if not _wait(pid):
            return 1  # one hang is enough to fail; stop so the test's time stays bounded
    return 0


def _wait(pid: int) -> bool:
    done = threading.Event()
    status: list[int] = []

    def reap() -> None:
        status.append(os.waitpid(pid, 0)[1])
        done.set()

    threading.Thread(target=reap, daemon=True).start()
    if done.wait(CHILD_TIMEOUT_S):
        return os.waitstatus_to_exitcode(status[0]) == 0
    os.kill(pid, 9)
    return False


def test_children_forked_while_resolve_cache_lock_is_held_never_hang() -> None:
    assert _fork_children_while_held() == 0


def test_the_registry_runs_every_hook_in_a_forked_child() -> None:
    read, write = os.pipe()

    def mark() -> None:
        os.write(write, b"x")

    _fork.after_fork_in_child(mark)
    try:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        assert _wait(pid)
        assert os.read(read, 1) == b"x"
    finally:
        _fork._hooks.pop()
        os.close(read)
        os.close(write)
