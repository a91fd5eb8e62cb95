"""Tokens that expire every 60 s (identity emulator setting) during a long transfer cause no failed request.

"Long" is measured on one emulated clock shared by the identity endpoint, the job credential and the storage
front door (StorageAuthProxy checks each token's lifetime against it, as storage does against its own): every
file or range that completes moves the clock 2 s, so the transfers below last over 13 emulated minutes and
their tokens expire 13 times, without waiting for any of them.
"""

from __future__ import annotations

import json
import os
import random

import pytest

from aml_identity import default_credential
from aml_identity.datastore import download, upload
from aml_identity.datastore._download import RANGE_SIZE
from aml_identity.testing import FakeClock, IdentityEndpoint, StorageAuthProxy

pytestmark = pytest.mark.azurite

TOKEN_LIFETIME_S = 60
STEP_S = 2  # emulated seconds per completed file or range


def test_tokens_expiring_every_60_s_during_long_transfers_cause_no_failed_request(  # noqa: PLR0917
    storage_job, clean_env, store, azurite, tree, tmp_path
):
    rng = random.Random(5)
    files = {f"epoch/{i:03d}.bin": rng.randbytes(rng.randrange(1, 2000)) for i in range(200)}
    files["epoch/weights.bin"] = rng.randbytes(3 * RANGE_SIZE)
    store.seed(files)
    clock = FakeClock()

    def advance(done: int, total: int) -> None:
        clock.advance(STEP_S)

    with (
        IdentityEndpoint(token_lifetime=TOKEN_LIFETIME_S, clock=clock) as endpoint,
        StorageAuthProxy(
            f"https://127.0.0.1:{azurite.port}", authorizer=lambda *_, **__: True, tls=azurite.tls, clock=clock
        ) as proxy,
    ):
        for name, value in endpoint.azureml_environ().items():  # msal reads the process environment
            clean_env.setenv(name, value)
        env = {**os.environ, "AML_IDENTITY_BLOB_ENDPOINTS": json.dumps({"devstoreaccount1": proxy.blob_endpoint()})}
        credential = default_credential(clock=clock, cache="process")
        start = clock()

        down = download(store.uri("epoch/"), tmp_path / "epoch", credential=credential, max_concurrency=4,
                        progress=advance, environ=env)  # fmt: skip
        up = upload(tmp_path / "epoch", store.uri("copy/"), credential=credential, max_concurrency=4,
                    progress=advance, environ=env)  # fmt: skip

        elapsed = clock() - start
        statuses = proxy.statuses()
        tokens_used = {r.token_id for r in proxy.requests}
        token_requests = endpoint.request_count

    assert elapsed >= 13 * TOKEN_LIFETIME_S
    assert set(statuses) <= {200, 201, 206}, statuses  # not one 403 (expired) or retry-worthy failure
    assert sum(statuses.values()) == down.requests + up.requests
    assert len(tokens_used) >= elapsed / TOKEN_LIFETIME_S  # a fresh token at least every lifetime
    assert token_requests == len(tokens_used)  # each one fetched once from the endpoint, then cached
    assert tree(tmp_path / "epoch") == {n.removeprefix("epoch/"): c for n, c in files.items()}
    assert store.matches("copy/", {n.removeprefix("epoch/"): c for n, c in files.items()})
