"""One reader process of the soak (``python -m bench.soak_worker CONFIG_JSON``).

It warms up (one read of each kind), prints ``ready``, waits until the parent closes the start pipe, then for
the configured seconds it reads random blobs of the soak's data set, alternately through the azure-storage-blob
SDK client (with ``aml_identity.default_credential()``) and through the shared FUSE mount, and checks every
byte against the manifest's SHA-256. It prints one JSON line: operations that succeeded and failed (with the
first errors), how often the SDK asked the credential for a token, how many distinct tokens it was given, how
many of them this process fetched from the identity endpoint itself (the others came from the node cache),
and the least life a token had left when it was handed to the SDK.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import jwt

# Errors quoted in the report, per process (the rest are only counted).
MAX_ERRORS_KEPT = 10


class _FetchCounter(logging.Handler):
    """Counts this process's token fetches from the identity endpoint (aml_identity.fetch logs each one)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Fetched a token"):
            self.count += 1


class _Observed:
    """The job credential, observed: counts the SDK's token requests and the tokens it was handed."""

    def __init__(self, credential: Any) -> None:
        self._credential = credential
        self.calls = 0
        self.tokens: set[str] = set()
        self.least_left_s = float("inf")

    def _seen(self, token: str) -> None:
        self.calls += 1
        if token not in self.tokens:
            self.tokens.add(token)
        expires = jwt.decode(token, options={"verify_signature": False})["exp"]
        self.least_left_s = min(self.least_left_s, expires - time.time())

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        token = self._credential.get_token(*scopes, **kwargs)
        self._seen(token.token)
        return token

    def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        info = self._credential.get_token_info(*scopes, options=options)
        self._seen(info.token)
        return info

    def close(self) -> None:
        self._credential.close()


def _failure(kind: str, exc: BaseException) -> str:
    return f"{kind}: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"


def main(argv: list[str]) -> int:
    """Read until the deadline; print the counts as one JSON line."""
    from azure.storage.blob import BlobServiceClient

    import aml_identity

    config = json.loads(argv[0])
    manifest: dict[str, str] = json.loads(Path(config["manifest"]).read_text())
    counter = _FetchCounter()
    fetch_log = logging.getLogger("aml_identity.fetch")
    fetch_log.setLevel(logging.DEBUG)
    fetch_log.addHandler(counter)
    credential = _Observed(aml_identity.default_credential())
    service = BlobServiceClient(config["endpoint"], credential=credential, connection_verify=config["ca"])
    container = service.get_container_client(config["container"])
    mount = Path(config["mount"])
    rng = random.Random(config["index"])
    names = sorted(manifest)
    period = 1.0 / config["rate"]
    counts = {"sdk_ok": 0, "sdk_failed": 0, "mount_ok": 0, "mount_failed": 0, "bytes_verified": 0}
    errors: list[str] = []

    def check(kind: str, name: str, data: bytes) -> None:
        if hashlib.sha256(data).hexdigest() != manifest[name]:
            raise ValueError(f"{name}: {len(data)} bytes that do not match the manifest")
        counts[f"{kind}_ok"] += 1
        counts["bytes_verified"] += len(data)

    # Warm up (imports, first token, first listing) outside the count, say so, and wait for the start signal:
    # the parent closes the start pipe when every reader is ready.
    warm = names[0]
    check("sdk", warm, container.download_blob(config["prefix"] + warm).readall())
    check("mount", warm, (mount / warm).read_bytes())
    counts.update(sdk_ok=0, mount_ok=0, bytes_verified=0)
    credential.calls = 0
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while os.read(config["start_fd"], 1):
        pass
    started = time.time()
    deadline = started + config["seconds"]
    next_tick = time.monotonic()
    while time.time() < deadline:
        name = rng.choice(names)
        try:
            check("sdk", name, container.download_blob(config["prefix"] + name).readall())
        except Exception as exc:
            counts["sdk_failed"] += 1
            if len(errors) < MAX_ERRORS_KEPT:
                errors.append(_failure("sdk", exc))
        name = rng.choice(names)
        try:
            check("mount", name, (mount / name).read_bytes())
        except Exception as exc:
            counts["mount_failed"] += 1
            if len(errors) < MAX_ERRORS_KEPT:
                errors.append(_failure("mount", exc))
        next_tick += period
        delay = next_tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing the readers (a benchmark's load, not a test's wait)
        else:
            next_tick = time.monotonic()
    result = {
        **counts,
        "errors": errors,
        "token_calls": credential.calls,
        "tokens_used": len(credential.tokens),
        "fetches": counter.count,
        "least_left_s": round(credential.least_left_s, 2),
        "seconds": round(time.time() - started, 1),
    }
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
