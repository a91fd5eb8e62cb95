"""A process-wide guard that refuses any network connection off loopback.

Installed by the pytest plugin and (through ``sitecustomize``) in every process the sandbox starts, so that
a misconfiguration — a missing endpoint override, a fall-through to IMDS at ``169.254.169.254``, a real
``*.blob.core.windows.net`` URL — fails loudly with :class:`LoopbackViolationError` instead of reaching Azure.

It is a :func:`sys.addaudithook` hook on ``socket.connect``, ``socket.getaddrinfo`` and
``socket.gethostbyname``, so it sees every library (requests, urllib3, aiohttp, azure-core, msal) without
patching any of them. Audit hooks cannot be removed; :func:`disable` turns this one into a no-op.
"""

from __future__ import annotations

import socket
import sys
import threading
from typing import Any

from aml_identity._environment import is_loopback_host
from aml_identity._fork import after_fork_in_child
from aml_identity.errors import AmlIdentityError

__all__ = ["LoopbackViolationError", "disable", "enable", "install", "is_enabled"]


class LoopbackViolationError(AmlIdentityError, RuntimeError):
    """Something tried to reach a host off loopback while the loopback guard was on.

    A ``RuntimeError``, not an ``OSError``: HTTP clients and retry loops treat ``OSError`` as a transient
    connection failure and would retry it; this must stop the program where it happened.
    """


_LOOKUP_EVENTS = frozenset({"socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex"})
_state_lock = threading.Lock()
_installed = False
_enabled = False
_allowed_names: frozenset[str] = frozenset()


@after_fork_in_child
def _reset_state_lock() -> None:
    global _state_lock  # noqa: PLW0603 - a forked child must not inherit a lock held by a parent thread
    _state_lock = threading.Lock()


def _host_allowed(host: object) -> bool:
    if host is None or host in ("", b""):
        return True  # bind / wildcard lookups
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return True
    return is_loopback_host(host) or host.lower() in _allowed_names


def _refuse(host: object, event: str) -> None:
    raise LoopbackViolationError(
        f"Blocked {event} to {host!r}: the aml-identity loopback guard only lets tests and the sandbox talk to "
        "this machine. An endpoint override is missing or wrong (MSI_ENDPOINT, AZURE_POD_IDENTITY_AUTHORITY_HOST, "
        "AML_IDENTITY_BLOB_ENDPOINTS, AML_IDENTITY_ARM_ENDPOINT)."
    )


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if not _enabled:
        return
    if event == "socket.connect":
        sock, address = args[0], args[1]
        if getattr(sock, "family", None) in (socket.AF_INET, socket.AF_INET6) and not _host_allowed(address[0]):
            _refuse(address[0], "connection")
    elif event in _LOOKUP_EVENTS and args and not _host_allowed(args[0]):
        _refuse(args[0], "name lookup")


def install() -> None:
    """Install the audit hook (once per process) and turn the guard on."""
    global _installed, _enabled, _allowed_names  # noqa: PLW0603 - process-wide switch by design
    with _state_lock:
        if not _installed:
            # This machine's own name resolves locally; some libraries look it up (never off the machine).
            _allowed_names = frozenset({socket.gethostname().lower()})
            sys.addaudithook(_hook)
            _installed = True
        _enabled = True


def enable() -> None:
    """Turn the guard on (installing it if needed)."""
    install()


def disable() -> None:
    """Turn the guard off; the hook stays installed but lets everything through."""
    global _enabled  # noqa: PLW0603 - process-wide switch by design
    _enabled = False


def is_enabled() -> bool:
    """Return whether the guard is currently refusing off-loopback connections."""
    return _enabled
