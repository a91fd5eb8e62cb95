"""One benchmark client, run in its own process: ``python -m bench.transfer_clients CONFIG_JSON``.

The config names the client, the operation (``download``/``upload``), the account URL (Azurite directly or
through the latency proxy), the container, the blob prefix, the local folder and the concurrency. The process
prints one JSON line: wall seconds and user/sys CPU seconds of the transfer itself (``getrusage`` around the
call, all threads; interpreter start-up and imports excluded, so clients with heavy imports are not
penalised for them), and the process's peak RSS (``VmHWM``, imports included).

Clients (each as its documentation recommends; the same credential - one bearer token - for all):

* ``aml-identity``: ``download(uri, dest)`` / ``upload(src, uri, overwrite=True)``.
* ``azure-storage-blob``: list, then ``download_blob(max_concurrency=N).readinto(file)`` per blob with the
  files in an N-thread pool (``upload_blob(max_concurrency=N)`` likewise); one shared client whose requests
  session keeps N connections (the default keeps 10, which would make the peer reconnect).
* ``adlfs``: ``fs.get(prefix, dest, recursive=True, max_concurrency=N)`` / ``fs.put(...)`` (async,
  fsspec's default file-level batch size).
* ``plain``: a straightforward parallel ranged-GET client: requests sessions (one per thread), List Blobs
  parsed with ElementTree, every blob or 8 MiB range of a large blob a task in an N-thread pool, written with
  ``os.pwrite``; uploads as Put Blob, or 8 MiB Put Block + Put Block List.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

from azure.core.credentials import AccessToken

from aml_identity.testing import mint_token

ACCOUNT = "devstoreaccount1"
API_VERSION = "2025-11-05"
# The plain client's range / block size.
PLAIN_CHUNK = 8 * 1024 * 1024
TOKEN_LIFETIME_S = 4 * 3600


def _token() -> AccessToken:
    now = int(time.time())
    token = mint_token(
        audience="https://storage.azure.com", issued_at=now - 60, expires_on=now + TOKEN_LIFETIME_S,
        object_id="5f0c0c9e-0000-4000-8000-00000000be0c", client_id="5f0c0c9e-0000-4000-8000-00000000c11e",
    )  # fmt: skip
    return AccessToken(token, now + TOKEN_LIFETIME_S)


class StaticCredential:
    """A TokenCredential with one long-lived token (the same for every client)."""

    def __init__(self) -> None:
        self._token = _token()

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return self._token


class AsyncStaticCredential:
    """The async twin, for adlfs."""

    def __init__(self) -> None:
        self._token = _token()

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return self._token

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> AsyncStaticCredential:
        return self

    async def __aexit__(self, *args: object) -> None:
        return None


def _walk(root: str) -> list[tuple[str, str, int]]:
    found = []
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            found.append((path, os.path.relpath(path, root).replace(os.sep, "/"), os.path.getsize(path)))
    return found


# --- aml-identity ---------------------------------------------------------------------------------------------


def run_aml(cfg: dict[str, Any]) -> None:
    from aml_identity.datastore import download, upload

    uri = f"https://{ACCOUNT}.blob.core.windows.net/{cfg['container']}/{cfg['prefix']}"
    environ = {**os.environ, "AML_IDENTITY_BLOB_ENDPOINTS": json.dumps({ACCOUNT: cfg["account_url"]})}
    credential = StaticCredential()
    if cfg["op"] == "download":
        download(uri, cfg["local"], credential=credential, max_concurrency=cfg["concurrency"], progress=False,
                 environ=environ)  # fmt: skip
    else:
        upload(cfg["local"], uri, credential=credential, max_concurrency=cfg["concurrency"], overwrite=True,
               progress=False, environ=environ)  # fmt: skip


# --- azure-storage-blob -----------------------------------------------------------------------------------------


def run_sdk(cfg: dict[str, Any]) -> None:
    import requests
    from azure.core.pipeline.transport import RequestsTransport
    from azure.storage.blob import ContainerClient

    n = cfg["concurrency"]
    session = requests.Session()
    session.mount("https://", requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=n))
    client = ContainerClient(
        cfg["account_url"], cfg["container"], credential=StaticCredential(),
        transport=RequestsTransport(session=session, connection_verify=cfg["ca"]),
    )  # fmt: skip
    prefix, local = cfg["prefix"], cfg["local"]
    if cfg["op"] == "download":
        names = [blob.name for blob in client.list_blobs(name_starts_with=prefix)]

        def fetch(name: str) -> None:
            path = os.path.join(local, name[len(prefix) :])
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                client.download_blob(name, max_concurrency=n).readinto(f)

        with ThreadPoolExecutor(n) as pool:
            list(pool.map(fetch, names))
    else:

        def send(item: tuple[str, str, int]) -> None:
            path, relative, size = item
            with open(path, "rb") as f:
                client.upload_blob(prefix + relative, f, length=size, overwrite=True, max_concurrency=n)

        with ThreadPoolExecutor(n) as pool:
            list(pool.map(send, _walk(local)))


# --- adlfs --------------------------------------------------------------------------------------------------------


def run_adlfs(cfg: dict[str, Any]) -> None:
    from adlfs import AzureBlobFileSystem

    host = cfg["account_url"].split("://", 1)[1]  # 127.0.0.1:PORT/devstoreaccount1
    fs = AzureBlobFileSystem(
        account_name=ACCOUNT, credential=AsyncStaticCredential(), account_host=host,
        max_concurrency=cfg["concurrency"],
    )  # fmt: skip
    remote = f"{cfg['container']}/{cfg['prefix']}"
    if cfg["op"] == "download":
        fs.get(remote, cfg["local"].rstrip("/") + "/", recursive=True, max_concurrency=cfg["concurrency"])
    else:
        fs.put(cfg["local"].rstrip("/") + "/", remote, recursive=True, max_concurrency=cfg["concurrency"])


# --- plain ranged-GET client --------------------------------------------------------------------------------------


def run_plain(cfg: dict[str, Any]) -> None:
    import requests

    n, base = cfg["concurrency"], f"{cfg['account_url']}/{cfg['container']}"
    headers = {"Authorization": f"Bearer {StaticCredential().get_token().token}", "x-ms-version": API_VERSION}
    local_state = threading.local()

    def session() -> requests.Session:
        s = getattr(local_state, "session", None)
        if s is None:
            s = local_state.session = requests.Session()
            s.verify = cfg["ca"]
            s.headers.update(headers)
        return s

    def url(name: str) -> str:
        return f"{base}/{quote(name)}"

    prefix, local = cfg["prefix"], cfg["local"]
    if cfg["op"] == "download":
        blobs, marker = [], ""
        while True:
            query = f"?restype=container&comp=list&maxresults=5000&prefix={quote(prefix)}&marker={quote(marker)}"
            answer = session().get(base + query)
            answer.raise_for_status()
            root = ET.fromstring(answer.content)
            blobs += [
                (b.findtext("Name", ""), int(b.findtext("Properties/Content-Length", "0"))) for b in root.iter("Blob")
            ]
            marker = root.findtext("NextMarker") or ""
            if not marker:
                break
        tasks = []
        for name, size in blobs:
            path = os.path.join(local, name[len(prefix) :])
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.truncate(size)
            tasks += [(name, path, offset, min(PLAIN_CHUNK, size - offset)) for offset in range(0, size, PLAIN_CHUNK)]

        def fetch(task: tuple[str, str, int, int]) -> None:
            name, path, offset, length = task
            answer = session().get(url(name), headers={"Range": f"bytes={offset}-{offset + length - 1}"})
            answer.raise_for_status()
            fd = os.open(path, os.O_WRONLY)
            try:
                os.pwrite(fd, answer.content, offset)
            finally:
                os.close(fd)

        with ThreadPoolExecutor(n) as pool:
            list(pool.map(fetch, tasks))
    else:
        files = _walk(local)
        large: list[tuple[str, int]] = []
        tasks_up: list[tuple[str, str, int, int]] = []
        for path, relative, size in files:
            if size <= PLAIN_CHUNK:
                tasks_up.append((path, prefix + relative, -1, size))
            else:
                large.append((prefix + relative, size))
                tasks_up += [(path, prefix + relative, i, PLAIN_CHUNK) for i in range(-(-size // PLAIN_CHUNK))]

        def block_id(index: int) -> str:
            import base64

            return base64.b64encode(b"%08d" % index).decode()

        def send(task: tuple[str, str, int, int]) -> None:
            path, name, index, length = task
            with open(path, "rb") as f:
                if index < 0:
                    answer = session().put(url(name), data=f.read(), headers={"x-ms-blob-type": "BlockBlob"})
                else:
                    f.seek(index * PLAIN_CHUNK)
                    answer = session().put(
                        url(name) + f"?comp=block&blockid={quote(block_id(index))}", data=f.read(length)
                    )
            answer.raise_for_status()

        with ThreadPoolExecutor(n) as pool:
            list(pool.map(send, tasks_up))
        for name, size in large:
            ids = "".join(f"<Latest>{block_id(i)}</Latest>" for i in range(-(-size // PLAIN_CHUNK)))
            answer = session().put(url(name) + "?comp=blocklist", data=f"<BlockList>{ids}</BlockList>")
            answer.raise_for_status()


CLIENTS = {"aml-identity": run_aml, "azure-storage-blob": run_sdk, "adlfs": run_adlfs, "plain": run_plain}


def _peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM). Not ``ru_maxrss``: that also counts the parent's memory
    the process had between fork and exec."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def main() -> int:
    cfg = json.loads(sys.argv[1])
    run = CLIENTS[cfg["client"]]
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    run(cfg)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"seconds": seconds, "user": after.ru_utime - before.ru_utime,
                      "sys": after.ru_stime - before.ru_stime, "peak_rss_mib": _peak_rss_mib()}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
