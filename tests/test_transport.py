"""The token path's HTTP layer is injectable: a ``requests.Session`` given to the credential carries its requests.

Nothing here patches a module global: the tests hand their own transport in, as a user would (storage's
``connection_factory`` is tested in ``tests/datastore/test_transport.py``).
"""

from __future__ import annotations

import json
import time

import requests

from aml_identity import aio as aml_aio
from aml_identity import default_credential
from aml_identity.testing import mint_token

STORAGE = "https://storage.azure.com/.default"


class TokenAdapter(requests.adapters.BaseAdapter):
    """Answers every token request itself, as an Azure ML endpoint would; no socket is opened."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[requests.PreparedRequest] = []

    def send(self, request: requests.PreparedRequest, **kwargs: object) -> requests.Response:
        self.sent.append(request)
        now = int(time.time())
        body = {
            "access_token": mint_token(
                audience="https://storage.azure.com", issued_at=now, expires_on=now + 3600, object_id="o", client_id="c"
            ),
            "expires_on": str(now + 3600),
            "resource": "https://storage.azure.com",
            "token_type": "Bearer",
        }
        response = requests.Response()
        response.status_code = 200
        response.headers["Content-Type"] = "application/json"
        response._content = json.dumps(body).encode()
        response.request = request
        response.url = request.url or ""
        return response

    def close(self) -> None:
        pass


def _session(adapter: TokenAdapter) -> requests.Session:
    session = requests.Session()
    session.mount("http://", adapter)
    return session


def test_a_session_given_to_the_credential_carries_its_token_requests(aml_job):
    adapter = TokenAdapter()

    token = default_credential(cache="process", session=_session(adapter)).get_token(STORAGE)

    assert token.token.count(".") == 2  # the adapter's JWT
    (request,) = adapter.sent
    assert "clientid=" + aml_job.identities[0].client_id in (request.url or "")
    assert aml_job.request_count == 0  # the emulator behind MSI_ENDPOINT never saw it


def test_the_async_credential_takes_the_same_session(aml_job):
    import asyncio

    adapter = TokenAdapter()
    credential = aml_aio.default_credential(cache="process", session=_session(adapter))

    asyncio.run(credential.get_token(STORAGE))

    assert len(adapter.sent) == 1
    assert aml_job.request_count == 0
