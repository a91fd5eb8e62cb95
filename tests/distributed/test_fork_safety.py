"""Fork safety: children forked while parent threads hold the package's locks, sockets and pools never hang.

A DataLoader forks its workers from a rank whose other threads may be fetching a token, resolving a datastore,
downloading or uploading at that moment. The child inherits every lock in the state it was in, with no thread
to release it, and the parent's sockets and thread pools. Every such piece of state is reset in the child by
the one registry, :mod:`aml_identity._fork`.
"""

from __future__ import annotations

import faulthandler
import importlib
import json
import multiprocessing
import os
import pkgutil
import random
import signal
import threading
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import aml_identity
from aml_identity import _fork

resolve_module = importlib.import_module("aml_identity.datastore.resolve")

# Children forked per run: enough that a lock held by a parent thread at fork time is hit many times.
CHILDREN = 200
# How long a child may take to take the lock and exit before it counts as hung (bounded, never waited out).
CHILD_TIMEOUT_S = 10.0
# The stress test forks this many children at a time (2 cores: more only queues them).
BATCH = 8
# A stressed child gets tokens and an ARM lookup while the machine is busy with the parent's transfers.
STRESS_CHILD_TIMEOUT_S = 60.0
# A hung child is sent this signal to print its threads' stacks, then given this long to write them.
DUMP_STACKS = signal.SIGUSR1
DUMP_GRACE_S = 2.0
STORAGE = "https://storage.azure.com/.default"
ACCOUNT = "devstoreaccount1"
SUBSCRIPTION = "5ab5c1e7-0000-4000-8000-00000000f0a2"
WORKSPACE = (SUBSCRIPTION, "rg-fork", "ws-fork")

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX-only")

LOCK_TYPES = (type(threading.Lock()), type(threading.RLock()))


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


def _wait(pid: int, timeout: float = CHILD_TIMEOUT_S) -> bool:
    done = threading.Event()
    status: list[int] = []

    def reap() -> None:
        status.append(os.waitpid(pid, 0)[1])
        done.set()

    threading.Thread(target=reap, daemon=True).start()
    if done.wait(timeout):
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


class _Resettable:
    """An object that counts its resets in a pipe (for the registry's weak references)."""

    def __init__(self, write: int) -> None:
        self.write = write
        _fork.after_fork_in_child_while_alive(self.reset)

    def reset(self) -> None:
        os.write(self.write, b"r")


def test_objects_are_reset_in_a_child_while_they_live_and_never_kept_alive() -> None:
    read, write = os.pipe()
    try:
        alive, dead = _Resettable(write), _Resettable(write)
        registered = len(_fork._method_hooks)
        del dead  # the registry holds it weakly: it goes, and so does its hook
        assert len(_fork._method_hooks) == registered - 1
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        assert _wait(pid)
        os.write(write, b".")
        assert os.read(read, 16) == b"r."  # one reset: the live object's
        del alive
    finally:
        os.close(read)
        os.close(write)


# -- every module-level lock, and every lock inside a module-level object of the package ----------------


def _package_modules() -> list[Any]:
    modules = []
    for info in pkgutil.walk_packages(aml_identity.__path__, "aml_identity."):
        if info.name.endswith("__main__"):
            continue  # running it is the command line
        try:
            modules.append(importlib.import_module(info.name))
        except ImportError:  # an optional extra that is not installed: its state cannot exist either
            continue
    return modules


def _is_ours(value: object) -> bool:
    return type(value).__module__.startswith("aml_identity.")


def _state(modules: list[Any]) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:  # noqa: C901 - one walk
    """Paths (module, name[, key][, attribute]) of every lock and every ``random.Random`` the package keeps.

    Looks at module globals, inside the package's own objects held there (``_SESSION._lock``), and inside
    the package objects held in module-level dicts (the credential module's token stores).
    """
    locks: list[tuple[str, ...]] = []
    rngs: list[tuple[str, ...]] = []
    seen: set[int] = set()

    def visit(path: tuple[str, ...], value: object, depth: int) -> None:
        if id(value) in seen:
            return
        if isinstance(value, LOCK_TYPES):
            seen.add(id(value))
            locks.append(path)
        elif type(value) is random.Random:
            seen.add(id(value))
            rngs.append(path)
        elif depth and _is_ours(value) and hasattr(value, "__dict__"):
            for attr, inner in vars(value).items():
                visit((*path, f".{attr}"), inner, depth - 1)
        elif depth and isinstance(value, dict):
            for key, inner in list(value.items()):
                if _is_ours(inner) or isinstance(inner, LOCK_TYPES):
                    visit((*path, f"[{key!r}]"), inner, depth - 1)

    for module in modules:
        for name, value in list(vars(module).items()):
            if not isinstance(value, (type, types.FunctionType, types.BuiltinFunctionType, types.ModuleType)):
                visit((module.__name__, name), value, depth=3)
    return locks, rngs


def _name(path: tuple[str, ...]) -> str:
    return f"{path[0]}:{''.join(path[1:])}"


def _current(path: tuple[str, ...]) -> Any:
    """The object at ``path`` now (None when a reset dropped it: a per-key lock made again on demand)."""
    value: Any = importlib.import_module(path[0])
    value = getattr(value, path[1])
    for step in path[2:]:
        if step.startswith("."):
            value = getattr(value, step[1:])
        else:
            value = next((inner for key, inner in value.items() if f"[{key!r}]" == step), None)
        if value is None:
            return None
    return value


def _free(lock: Any) -> bool:
    """Whether ``lock`` can be taken now (it is released again at once); a dropped lock (None) is free."""
    if lock is None:
        return True
    if not lock.acquire(blocking=False):
        return False
    lock.release()
    return True


def _run_forked(body: Callable[[], object], forked: Callable[[], None] = lambda: None) -> Any:
    """Fork; the child runs ``body`` and sends back its JSON result. A child that hangs fails the test.

    ``forked`` runs in the parent right after the fork (to release what a parent thread held across it).
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            os.write(write, json.dumps(body()).encode())
        finally:
            os._exit(0)
    os.close(write)
    forked()
    try:
        assert _wait(pid), "the child hung"
        with os.fdopen(read, "rb") as pipe:
            return json.loads(pipe.read())
    except BaseException:
        os.close(read)
        raise


@pytest.fixture
def held_in_a_thread() -> Iterator[Callable[[list[Any]], Callable[[], None]]]:
    """``release = hold(locks)``: a parent thread takes every lock and keeps it until ``release()`` (or the end).

    Release right after the fork: the test's own machinery (log capture, the secret-leak fixture) needs some
    of these locks too.
    """
    events: list[threading.Event] = []
    holders: list[threading.Thread] = []

    def hold(locks: list[Any]) -> Callable[[], None]:
        taken, release = threading.Event(), threading.Event()

        def run() -> None:
            for lock in locks:
                lock.acquire()
            taken.set()
            release.wait()
            for lock in reversed(locks):
                lock.release()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        holders.append(thread)
        events.append(release)
        assert taken.wait(10)
        return release.set

    yield hold
    for release in events:
        release.set()
    for thread in holders:
        thread.join(10)


def test_every_module_level_lock_is_free_in_a_child_forked_while_a_parent_thread_holds_it(aml_job, held_in_a_thread):
    aml_identity.default_credential().get_token(STORAGE)  # the token stores exist, with their locks
    locks, rngs = _state(_package_modules())
    names = {"".join(path[1:]) for path in locks}
    # The scan sees the state that exists (a new kind of holder it cannot see would need a new rule here).
    assert {"_stores_lock", "_shared_lock", "_cache_lock", "_SESSION._lock", "_key_lock", "_state_lock"} <= names
    assert any(path[-1] == "._guard" for path in locks)  # inside the credential module's token stores
    assert ("aml_identity.datastore._rest", "_RNG") in rngs
    parent_states = {path: _current(path).getstate()[1][:8] for path in rngs}
    release = held_in_a_thread([_current(path) for path in locks])

    def child() -> dict[str, list[str]]:
        stuck = [_name(path) for path in locks if not _free(_current(path))]
        same = [_name(path) for path in rngs if _current(path).getstate()[1][:8] == parent_states[path]]
        return {"stuck": stuck, "same_jitter": same}

    assert _run_forked(child, forked=release) == {"stuck": [], "same_jitter": []}


def test_long_lived_objects_reset_in_a_child(aml_job, tmp_path, held_in_a_thread):
    from aml_identity.datastore._bearer import BearerToken
    from aml_identity.datastore.transfer import UploadOnExit
    from aml_identity.fsspec import AzureMLFileSystem

    credential = aml_identity.default_credential()
    credential.get_token(STORAGE)
    bearer = BearerToken(credential)
    bearer._store._lock_for("k")
    fs = AzureMLFileSystem(skip_instance_cache=True)
    pool = fs._pool()
    outputs = UploadOnExit(tmp_path / "outputs", "azureml://datastores/out/paths/run", signals=())
    try:
        release = held_in_a_thread([bearer._store._guard, bearer._store._locks["k"], fs._lock, outputs._lock])

        def child() -> dict[str, object]:
            free = [
                _free(lock) for lock in (bearer._store._guard, bearer._store._lock_for("k"), fs._lock, outputs._lock)
            ]
            return {
                "locks free": free,
                "fetcher dropped": credential._fetcher is None,
                "own pool": fs._pool() is not pool,
                "uploads at exit": outputs._active,
            }

        assert _run_forked(child, forked=release) == {
            "locks free": [True] * 4,
            "fetcher dropped": True,
            "own pool": True,
            "uploads at exit": False,  # only the process that asked uploads the folder
        }
    finally:
        outputs.close()
        pool.shutdown()


# -- hundreds of children forked while parent threads get tokens, resolve, download and upload ----------


@pytest.fixture
def busy_job(aml_job, azurite, arm_emulator, clean_env, tmp_path) -> Iterator[dict[str, str]]:
    """A job with a workspace (ARM emulator) whose datastore ``data`` is a fresh Azurite container."""
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(
        azurite.connection_string(ACCOUNT), connection_verify=str(azurite.tls.cert)
    )
    container = service.get_container_client(f"fork-{uuid.uuid4().hex[:16]}")
    container.create_container()
    for index in range(4):
        container.upload_blob(f"in/f{index}.bin", os.urandom(64 * 1024))
    clean_env.setenv("AML_IDENTITY_BLOB_ENDPOINTS", json.dumps({ACCOUNT: azurite.blob_endpoint(ACCOUNT)}))
    for name, value in {**azurite.tls.environ(), **arm_emulator.environ()}.items():
        clean_env.setenv(name, value)
    arm_emulator.add_workspace(*WORKSPACE)
    arm_emulator.add_datastore(WORKSPACE, "data", account_name=ACCOUNT, container_name=container.container_name)
    clean_env.setenv("AZUREML_ARM_SUBSCRIPTION", WORKSPACE[0])
    clean_env.setenv("AZUREML_ARM_RESOURCEGROUP", WORKSPACE[1])
    clean_env.setenv("AZUREML_ARM_WORKSPACE_NAME", WORKSPACE[2])
    resolve_module.clear_cache()
    yield {"in": "azureml://datastores/data/paths/in/", "out": "azureml://datastores/data/paths/out/"}
    resolve_module.clear_cache()


def _stressed_child() -> None:  # runs in a forked child: a DataLoader worker's first calls
    from aml_identity.datastore import resolve

    aml_identity.get_token(STORAGE)  # the process's shared credential, inherited
    aml_identity.default_credential().get_token(STORAGE, claims="{}")  # a fetch: store, node lock, session
    # The lookup lock, then the inherited lookup. Not a fresh ARM request: that sets up TLS, and a child forked
    # while a parent thread is inside OpenSSL (creating a context, loading CA certificates) can wait forever on
    # OpenSSL's own locks - a hazard of fork itself that no Python-level reset removes (docs/runtime.md).
    resolve("azureml://datastores/data/paths/in/")


class _BusyParent:
    """Threads that get tokens, resolve, download and upload in a loop until stopped, recording failures."""

    def __init__(self, uris: dict[str, str], tmp_path: Path) -> None:
        from aml_identity import download, upload
        from aml_identity.datastore import resolve

        (tmp_path / "up").mkdir()
        for index in range(4):
            (tmp_path / "up" / f"u{index}.bin").write_bytes(os.urandom(32 * 1024))
        credential = aml_identity.default_credential()

        def resolve_again() -> None:
            # The lookup lock and cache, as a prefetch thread uses them. The lookup itself (ARM over TLS) is left
            # out once the cache holds it: see _stressed_child for why a child must not inherit an empty one.
            resolve(uris["in"])

        self.work: dict[str, Callable[[], object]] = {
            "get_token": lambda: credential.get_token(STORAGE, claims="{}"),
            "resolve": resolve_again,
            "download": lambda: download(uris["in"], tmp_path / "down", progress=False),
            "upload": lambda: upload(tmp_path / "up", uris["out"], overwrite=True, progress=False),
        }
        self.stop = threading.Event()
        self.first_round = threading.Event()
        self.errors: list[str] = []
        self.rounds = dict.fromkeys(self.work, 0)
        self.threads = [threading.Thread(target=self._loop, args=(name,), daemon=True) for name in self.work]

    def _loop(self, name: str) -> None:
        while not self.stop.is_set():
            try:
                self.work[name]()
            except Exception as exc:  # every failure is reported by the test
                self.errors.append(f"{name}: {type(exc).__name__}: {exc}"[:300])
            self.rounds[name] += 1
            if all(self.rounds.values()):
                self.first_round.set()

    def __enter__(self) -> _BusyParent:
        for thread in self.threads:
            thread.start()
        # Wait for one round of each: a child forked while a parent thread is still importing a module for the
        # first time (msal, the ARM client) waits forever on Python's per-module import lock, which no package
        # can reset; docs/runtime.md tells jobs to make their first calls before forking workers.
        assert self.first_round.wait(STRESS_CHILD_TIMEOUT_S), self.rounds
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


@pytest.mark.slow
@pytest.mark.azurite
def test_hundreds_of_children_forked_during_tokens_resolves_downloads_and_uploads_never_hang(busy_job, tmp_path):

    aml_identity.get_token(STORAGE)  # the process's shared credential, which the children inherit
    faulthandler.register(DUMP_STACKS, all_threads=True)  # inherited by the children
    context = multiprocessing.get_context("fork")
    hung = failed = 0
    with _BusyParent(busy_job, tmp_path) as parent:
        for _ in range(CHILDREN // BATCH):
            children = [context.Process(target=_stressed_child) for _ in range(BATCH)]
            for child in children:
                child.start()
            for child in children:
                child.join(STRESS_CHILD_TIMEOUT_S)
                if child.exitcode is None:
                    hung += 1
                    assert child.pid is not None
                    os.kill(child.pid, DUMP_STACKS)  # the hung child's stacks, into the test's captured stderr
                    child.join(DUMP_GRACE_S)
                    child.kill()
                    child.join()
                elif child.exitcode != 0:
                    failed += 1
    faulthandler.unregister(DUMP_STACKS)
    assert (hung, failed) == (0, 0)
    assert parent.errors == []
    assert all(parent.rounds.values()), parent.rounds  # every kind of work ran while children were forked
