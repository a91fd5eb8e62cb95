"""Storage's HTTP layer is injectable: ``connection_factory`` opens every connection a client uses.

With it a test scripts the service's answers without a server (retries and ``Retry-After`` below), and a user
can put another HTTP layer under downloads and uploads; nothing patches a module global.
"""

from __future__ import annotations

import email.utils
import http.client
import io
import time

import pytest
from azure.core.credentials import AccessToken

from aml_identity.datastore import download, upload
from aml_identity.datastore._rest import MAX_ATTEMPTS, BearerToken, BlobRestClient, StorageHttpError, https_connection


class _Socket:
    def __init__(self, raw: bytes) -> None:
        self._file = io.BytesIO(raw)

    def makefile(self, mode: str) -> io.BytesIO:
        return self._file


class ScriptedConnection:
    """Stands in for ``http.client.HTTPSConnection``: records what is sent, answers from a script."""

    def __init__(self, script: list[bytes], log: list[str]) -> None:
        self._script = script
        self._log = log
        self._method = ""

    def putrequest(self, method: str, path: str, **_: object) -> None:
        self._method = method
        self._log.append(f"{method} {path}")

    def putheader(self, *_: object) -> None:
        pass

    def endheaders(self, *_: object) -> None:
        pass

    def send(self, _data: object) -> None:
        pass

    def getresponse(self) -> http.client.HTTPResponse:
        response = http.client.HTTPResponse(_Socket(self._script.pop(0)), method=self._method)  # type: ignore[arg-type]
        response.begin()
        return response

    def close(self) -> None:
        pass


def _raw(status: int, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class StaticCredential:
    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        return AccessToken("not-a-real-token", int(time.time()) + 3600)


def test_storage_retries_honour_x_ms_retry_after_ms_and_an_http_date_retry_after():
    later = email.utils.formatdate(time.time() + 8, usegmt=True)
    script = [
        _raw(503, {"x-ms-retry-after-ms": "1500", "x-ms-error-code": "ServerBusy"}),
        _raw(503, {"Retry-After": later, "x-ms-error-code": "ServerBusy"}),
        _raw(200, {}, b"hello"),
    ]
    sent: list[str] = []
    sleeps: list[float] = []
    client = BlobRestClient(
        "https://127.0.0.1:1/acct",
        BearerToken(StaticCredential()),
        sleep=sleeps.append,
        connection_factory=lambda *_: ScriptedConnection(script, sent),  # type: ignore[arg-type,return-value]
    )

    body = client.request("GET", client.blob_path("c", "b.bin"), resource="c/b.bin")

    assert body == b"hello"
    assert sent == ["GET /acct/c/b.bin"] * 3  # through the injected connections only
    assert sleeps[0] == pytest.approx(1.5)
    assert 6 < sleeps[1] <= 8  # the date, not the backoff (which would be ~1 s)


def test_storage_gives_up_after_its_attempts_with_the_last_status():
    script = [_raw(500, {"x-ms-error-code": "InternalError"}) for _ in range(MAX_ATTEMPTS + 1)]
    sent: list[str] = []
    client = BlobRestClient(
        "https://127.0.0.1:1/acct",
        BearerToken(StaticCredential()),
        sleep=lambda _: None,
        connection_factory=lambda *_: ScriptedConnection(script, sent),  # type: ignore[arg-type,return-value]
    )

    with pytest.raises(StorageHttpError) as caught:
        client.request("GET", client.blob_path("c", "b.bin"), resource="c/b.bin")

    assert caught.value.status == 500
    assert caught.value.code == "InternalError"
    assert len(sent) == MAX_ATTEMPTS


@pytest.mark.azurite
def test_download_and_upload_go_through_a_given_connection_factory(storage_job, store, tree, tmp_path):
    store.seed({"d/a.bin": b"a" * 10, "d/b.bin": b"b" * 20})
    opened: list[tuple[str, int]] = []

    def factory(host, port, context):
        opened.append((host, port))
        return https_connection(host, port, context)

    down = download(store.uri("d/"), tmp_path / "d", progress=False, connection_factory=factory)
    up = upload(tmp_path / "d", store.uri("copy/"), progress=False, connection_factory=factory)

    assert tree(tmp_path / "d") == {"a.bin": b"a" * 10, "b.bin": b"b" * 20}
    assert store.matches("copy/", {"a.bin": b"a" * 10, "b.bin": b"b" * 20})
    assert opened  # every connection of both calls came from the factory
    assert len(opened) <= down.requests + up.requests
