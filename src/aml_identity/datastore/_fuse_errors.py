"""How a mount turns a failed storage request into the errno a system call returns (and the log line it owes).

Storage 403 -> ``EACCES`` (one log line per kind of operation with the identity, account and role to grant),
404 -> ``ENOENT``, 412 (changed) -> ``ESTALE``, anything else after the REST client's retries -> ``EIO``.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from typing import Literal

from aml_identity.datastore._errors import convert_storage_error
from aml_identity.datastore._rest import BlobRestClient, StorageHttpError

__all__ = ["OpKind", "StorageErrors", "os_error"]

_log = logging.getLogger("aml_identity.mount")

OpKind = Literal["list", "read", "write", "delete"]

# The role-naming operation of each kind of request (deleting needs what writing needs).
_OPERATION: dict[OpKind, Literal["list", "read", "write"]] = {
    "list": "list",
    "read": "read",
    "write": "write",
    "delete": "write",
}


def os_error(code: int, detail: str = "") -> OSError:
    """Return an ``OSError`` with ``code`` and its standard message (plus ``detail``)."""
    return OSError(code, os.strerror(code) + (f": {detail}" if detail else ""))


class StorageErrors:
    """Converts failed requests of one mount to errnos, logging a refused kind of operation once."""

    def __init__(self, client: BlobRestClient, *, account: str, container: str) -> None:
        """Create the converter for the mount of ``container`` in ``account``."""
        self._client = client
        self._account = account
        self._container = container
        self._logged_denials: set[str] = set()
        self._lock = threading.Lock()

    def fail(self, error: StorageHttpError, kind: OpKind, what: str) -> OSError:
        """Return the errno for a failed request, logging what the user must know."""
        if error.status == 403:  # noqa: PLR2004 - HTTP status
            converted = convert_storage_error(
                error,
                account=self._account,
                container=self._container,
                operation=_OPERATION[kind],
                token=self._client.token,
            )
            with self._lock:
                first = kind not in self._logged_denials
                self._logged_denials.add(kind)
            if first:  # one line (the message's own line breaks folded), once per kind of operation
                _log.error("%s refused by storage (EACCES): %s", kind, " ".join(str(converted).split()))
            return os_error(errno.EACCES, what)
        if error.status == 404:  # noqa: PLR2004 - HTTP status
            return os_error(errno.ENOENT, what)
        if error.status == 412:  # noqa: PLR2004 - If-Match failed
            _log.warning(
                "%s changed in storage while it was open; reads of this open file fail with ESTALE so "
                "two versions are never mixed. Open it again to read the new version.",
                what,
            )
            return os_error(errno.ESTALE, what)
        converted = convert_storage_error(
            error, account=self._account, container=self._container, operation=_OPERATION[kind],
            token=self._client.token,
        )  # fmt: skip
        _log.error("%s of %s failed (EIO): %s", kind, what, converted)
        return os_error(errno.EIO, what)
