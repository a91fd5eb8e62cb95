"""The ``azureml`` fsspec protocol: pandas, PyArrow, Dask and Hugging Face ``datasets`` read datastores by URI.

.. code-block:: python

    import pandas as pd

    df = pd.read_parquet("azureml://datastores/training_data/paths/tables/train.parquet")

Installed with ``pip install 'aml-identity[fsspec]'`` (fsspec finds the class through its ``fsspec.specs``
entry point, and imports this module only when the protocol is used). Paths:

* ``azureml://datastores/<name>/paths/<path>`` in a job (the workspace from ``AZUREML_ARM_*``);
* ``azureml://subscriptions/<sub>/resourcegroups/<rg>/workspaces/<ws>/datastores/<name>/paths/<path>``
  anywhere;
* with ``AzureMLFileSystem(account_name=...)``, ``<container>/<path>`` of that storage account, also written
  ``abfs://<container>@<account>.dfs.core.windows.net/<path>`` or ``az://<container>/<path>``. Those
  protocols belong to adlfs, so they are not registered; ``fsspec.register_implementation("abfs",
  AzureMLFileSystem, clobber=True)`` opts in.

Identity, datastore resolution and tokens are aml-identity's (the job credential and its node-wide cache);
requests go through the package's storage engine. That engine is synchronous (``http.client`` over pooled
keep-alive TLS connections), so the async API runs it in a pool of ``max_concurrency`` worker threads: the
time of a request is spent in the socket and TLS, which release the GIL, so ``cat`` of many files runs that
many requests at once, with the engine's retries, token refresh and error reporting (see
``docs/fsspec.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import re
import ssl
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar

try:
    from fsspec.asyn import AsyncFileSystem
    from fsspec.callbacks import DEFAULT_CALLBACK
    from fsspec.utils import stringify_path
except ImportError as _missing:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError("aml_identity.fsspec needs fsspec: pip install 'aml-identity[fsspec]'") from _missing

from aml_identity._environment import JobEnvironment, check_outbound_url
from aml_identity._fork import after_fork_in_child_while_alive
from aml_identity._fsspec_file import READ_BLOCK_SIZE, SINGLE_PUT_MAX, WRITE_BLOCK_SIZE, AzureMLFile, ReadAheadCache
from aml_identity._fsspec_listing import directory_info, list_level, list_tree
from aml_identity._fsspec_store import Store
from aml_identity.datastore._rest import BearerToken, BlobRestClient
from aml_identity.datastore.resolve import DEFAULT_ENDPOINT_SUFFIX, resolve
from aml_identity.errors import ConfigurationError

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

__all__ = ["DEFAULT_MAX_CONCURRENCY", "AzureMLFileSystem"]

T = TypeVar("T")

# Requests in flight per file system (worker threads, each with its keep-alive connection): enough to hide
# a few ms of round trip per small file; the download engine uses the same default.
DEFAULT_MAX_CONCURRENCY = 32
# Blobs larger than this are copied and downloaded as parallel ranges of this size.
RANGE_SIZE = 8 * 1024 * 1024
# Ranges of one file moved at once by get/put/cp (bounds one transfer's share of the workers).
RANGES_IN_FLIGHT = 8

_DATASTORE_PATH_RE = re.compile(
    r"^(?P<root>(?:subscriptions/[^/]+/resourcegroups/[^/]+/workspaces/[^/]+/)?datastores/[^/]+/paths)"
    r"(?:/(?P<blob>.*))?$",
    re.IGNORECASE,
)
_ACCOUNT_URL_RE = re.compile(r"^(?:abfss?|wasbs?)://(?P<container>[^@/]+)@(?P<host>[^/]+)(?:/(?P<path>.*))?$")
_HOST_RE = re.compile(r"^(?P<account>[a-z0-9]{3,24})\.(?:blob|dfs)\.(?P<suffix>.+)$")
_ACCOUNT_SCHEMES = ("az://", "abfs://", "abfss://", "wasb://", "wasbs://")


@contextlib.contextmanager
def _named(path: str) -> Iterator[None]:
    """Name ``path`` (the file system's path) in a ``FileNotFoundError`` raised inside, not the container's blob name."""
    try:
        yield
    except FileNotFoundError as exc:
        raise FileNotFoundError(exc.errno or errno.ENOENT, exc.strerror or "No such file or directory", path) from None


class AzureMLFileSystem(AsyncFileSystem):  # type: ignore[misc]  # fsspec has no type hints
    """fsspec file system over Azure ML datastores (and storage accounts), with the job's identity.

    Args:
        account_name: Address one storage account's containers (``<container>/<path>``) instead of datastores.
        endpoint_suffix: The account's storage DNS suffix (sovereign clouds).
        credential: Any azure-core ``TokenCredential``; the job's default credential (node-wide token cache)
            when omitted.
        environ: The environment to read (``os.environ`` when omitted).
        max_concurrency: Requests in flight at once.
        **kwargs: fsspec's own options (``use_listings_cache``, ``listings_expiry_time``, ``skip_instance_cache``...).
    """

    protocol = ("azureml",)
    root_marker = ""

    def __init__(
        self,
        *,
        account_name: str | None = None,
        endpoint_suffix: str = DEFAULT_ENDPOINT_SUFFIX,
        credential: TokenCredential | None = None,
        environ: Mapping[str, str] | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        **kwargs: Any,
    ) -> None:
        """Create the file system (no request is sent, and no credential made, until the first operation)."""
        super().__init__(**kwargs)
        self.account_name = account_name
        self.endpoint_suffix = endpoint_suffix
        self._credential = credential
        self._environ = dict(environ) if environ is not None else None
        self.max_concurrency = max_concurrency
        self._lock = threading.Lock()
        self._stores: dict[str, Store] = {}
        self._clients: dict[str, BlobRestClient] = {}
        self._token: BearerToken | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._executor_pid = 0
        after_fork_in_child_while_alive(self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        # A DataLoader worker keeps the dataset's file system: the parent's lock may be held by one of its
        # threads, its pool's threads did not come along, and its connections are the parent's sockets.
        self._lock = threading.Lock()
        self._executor = None
        self._clients = {}
        self._stores = {}

    # -- paths -----------------------------------------------------------------------------------------

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        text: str = stringify_path(path)
        if text[:10].lower() == "azureml://":
            text = text[10:]
        else:
            match = _ACCOUNT_URL_RE.match(text)
            if match:
                text = f"{match['container']}/{match['path'] or ''}"
            elif text.startswith(_ACCOUNT_SCHEMES):
                text = text.split("://", 1)[1]
        return text.rstrip("/")

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict[str, Any]:
        match = _ACCOUNT_URL_RE.match(path)
        host = _HOST_RE.match(match["host"].lower()) if match else None
        if host is None:
            return {}
        return {"account_name": host["account"], "endpoint_suffix": host["suffix"]}

    def unstrip_protocol(self, name: str) -> str:
        """Return the full URI of a path of this file system."""
        if self.account_name is None:
            return name if name.lower().startswith("azureml://") else f"azureml://{name}"
        container, _, rest = name.partition("/")
        return f"abfs://{container}@{self.account_name}.dfs.{self.endpoint_suffix}/{rest}"

    def _split(self, path: str) -> tuple[str, str]:
        """Return (root, blob name): root is the datastore's ``.../paths`` or, with an account, the container."""
        path = self._strip_protocol(path)
        if self.account_name is not None:
            container, _, blob = path.partition("/")
            if not container:
                raise ConfigurationError(
                    f"{path!r} names no container: give <container>/<path> of account {self.account_name!r}.",
                    name="path",
                )
            return container, blob
        match = _DATASTORE_PATH_RE.match(path)
        if not match:
            raise ConfigurationError(
                f"{path!r} is not an azureml datastore path. Use azureml://datastores/<name>/paths/<path> in a job, "
                "or azureml://subscriptions/<sub>/resourcegroups/<rg>/workspaces/<ws>/datastores/<name>/paths/<path> "
                "anywhere; for a storage account without a datastore, use AzureMLFileSystem(account_name=...) "
                "with <container>/<path>.",
                name="path",
            )
        return match["root"], match["blob"] or ""

    # -- plumbing --------------------------------------------------------------------------------------

    def _pool(self) -> ThreadPoolExecutor:
        """The worker threads (made again in a forked child, which inherits none of its parent's threads)."""
        with self._lock:
            if self._executor is None or self._executor_pid != os.getpid():
                self._executor = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="aml-fsspec")
                self._executor_pid = os.getpid()
                self._clients.clear()
                self._stores.clear()
            return self._executor

    async def _call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool(), functools.partial(function, *args, **kwargs))

    def _store_sync(self, root: str) -> Store:
        """Resolve ``root`` (once per file system; the datastore lookup is also cached per process)."""
        pool = self._pool()
        del pool  # made first: a fork drops the stores below
        with self._lock:
            store = self._stores.get(root)
        if store is not None:
            return store
        if self._credential is None:
            from aml_identity.credential import default_credential  # noqa: PLC0415 - only when first used

            self._credential = default_credential(environ=self._environ)
        if self.account_name is not None:
            uri = f"https://{self.account_name}.blob.{self.endpoint_suffix}/{root}/"
        else:
            uri = f"azureml://{root}/"
        location = resolve(uri, credential=self._credential, environ=self._environ)
        env = JobEnvironment.from_environ(self._environ)
        check_outbound_url(location.endpoint, env, what="blob endpoint")
        with self._lock:
            if self._token is None:
                self._token = BearerToken(self._credential)
            client = self._clients.get(location.endpoint)
            if client is None:
                context = ssl.create_default_context(cafile=env.ca_bundle) if env.ca_bundle else None
                client = BlobRestClient(location.endpoint, self._token, ssl_context=context)
                self._clients[location.endpoint] = client
            store = Store(client, location.account, location.container)
            self._stores[root] = store
        return store

    async def _target(self, path: str) -> tuple[Store, str, str]:
        root, blob = self._split(path)
        with self._lock:
            store = self._stores.get(root) if self._executor_pid == os.getpid() else None
        if store is None:
            store = await self._call(self._store_sync, root)
        return store, root, blob

    def invalidate_cache(self, path: str | None = None) -> None:
        """Forget cached listings of ``path`` and its parents (all of them when ``path`` is None)."""
        if path is None:
            self.dircache.clear()
            return
        path = self._strip_protocol(path)
        self.dircache.pop(path, None)
        while path:
            path = self._parent(path)
            self.dircache.pop(path, None)

    # -- listing ---------------------------------------------------------------------------------------

    async def _ls(self, path: str, detail: bool = True, refresh: bool = False, **kwargs: Any) -> Any:  # noqa: FBT001, FBT002 - fsspec's signature
        path = self._strip_protocol(path)
        entries = None if refresh else self.dircache.get(path)
        if entries is None:
            store, root, blob = await self._target(path)
            entries = await self._call(list_level, store, root, blob + "/" if blob else "")
            if not entries and blob:
                props = await self._call(store.head, blob)
                if props is None:
                    raise FileNotFoundError(path)
                if not props["folder"]:
                    file = {"name": path, "size": props["size"], "type": "file", "mtime": props["mtime"]}
                    file["etag"] = props["etag"]
                    return [file] if detail else [path]
            self.dircache[path] = entries
        assert entries is not None  # noqa: S101 - listed or cached above
        return list(entries) if detail else [info["name"] for info in entries]

    async def _info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        store, _, blob = await self._target(path)
        if not blob:
            return directory_info(path)
        if path in self.dircache:
            return directory_info(path)
        parent = self.dircache.get(self._parent(path))
        if parent is not None:
            for info in parent:
                if info["name"] == path:
                    return dict(info)
            raise FileNotFoundError(path)
        props = await self._call(store.head, blob)
        if props is not None:
            if props["folder"]:
                return directory_info(path, props["mtime"])
            return {"name": path, "size": props["size"], "type": "file", "mtime": props["mtime"], "etag": props["etag"]}
        if await self._call(store.has_children, blob + "/"):
            return directory_info(path)
        raise FileNotFoundError(path)

    async def _find(
        self,
        path: str,
        maxdepth: int | None = None,
        withdirs: bool = False,  # noqa: FBT001, FBT002 - fsspec's signature
        **kwargs: Any,
    ) -> Any:
        detail = kwargs.pop("detail", False)
        prefix = kwargs.pop("prefix", "")
        if maxdepth is not None:
            return await super()._find(path, maxdepth=maxdepth, withdirs=withdirs, detail=detail, **kwargs)
        path = self._strip_protocol(path)
        store, root, blob = await self._target(path)
        base = blob + "/" if blob else ""
        out = await self._call(list_tree, store, root, base, prefix, withdirs=withdirs)
        if not prefix and (withdirs or not out):
            try:
                info = await self._info(path)
            except FileNotFoundError:
                info = None
            if info is not None and (
                (info["type"] == "file" and not out) or (info["type"] == "directory" and withdirs)
            ):
                out[path] = info
        names = sorted(out)
        return {name: out[name] for name in names} if detail else names

    # -- reading ---------------------------------------------------------------------------------------

    async def _cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        store, _, blob = await self._target(path)
        if not blob:
            raise IsADirectoryError(path)
        if (start is not None and start < 0) or (end is not None and end < 0):
            size = (await self._info(path))["size"]
            start = max(size + start, 0) if start is not None and start < 0 else start
            end = max(size + end, 0) if end is not None and end < 0 else end
        with _named(self._strip_protocol(path)):
            return await self._call(store.get, blob, start, end)

    async def _get_file(self, rpath: str, lpath: str, callback: Any = DEFAULT_CALLBACK, **kwargs: Any) -> None:
        info = await self._info(rpath)
        if info["type"] == "directory":
            os.makedirs(lpath, exist_ok=True)
            return
        store, _, blob = await self._target(rpath)
        size, etag = info["size"], info.get("etag")
        callback.set_size(size)
        folder = os.path.dirname(os.path.abspath(lpath))
        fd, partial = tempfile.mkstemp(prefix=".aml-fsspec-", suffix=".partial", dir=folder)
        try:
            limit = asyncio.Semaphore(RANGES_IN_FLIGHT)

            async def fetch(offset: int) -> None:
                length = min(RANGE_SIZE, size - offset)
                async with limit:
                    await self._call(store.get_to_fd, blob, fd, offset, length, etag=etag)
                callback.relative_update(length)

            await asyncio.gather(*(fetch(offset) for offset in range(0, size, RANGE_SIZE)))
            os.close(fd)
            fd = -1
            os.replace(partial, lpath)
        finally:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,  # noqa: FBT001, FBT002 - fsspec's signature
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> AzureMLFile:
        path = self._strip_protocol(path)
        root, blob = self._split(path)
        if mode not in ("rb", "wb", "xb"):
            raise NotImplementedError(
                f"mode {mode!r} is not supported for {path!r}: a block blob is read ('rb') or written whole ('wb', "
                "'xb'); to append, read the blob and write it again, or write a new blob per part."
            )
        store = self._store_sync(root)
        details = None
        if mode == "rb":
            details = self.info(path)
            if details["type"] == "directory":
                raise IsADirectoryError(path)
        elif mode == "xb" and self.exists(path):
            raise FileExistsError(path)
        kwargs.pop("size", None)
        kwargs.setdefault("cache_type", ReadAheadCache.name)
        return AzureMLFile(
            self,
            path,
            mode,
            store=store,
            blob=blob,
            submit=self._pool().submit,
            details=details,
            block_size=block_size or (READ_BLOCK_SIZE if mode == "rb" else WRITE_BLOCK_SIZE),
            autocommit=autocommit,
            cache_options=cache_options,
            **kwargs,
        )

    def ukey(self, path: str) -> str:
        """Return the blob's ETag: it changes whenever the blob does."""
        info = self.info(path)
        return str(info.get("etag") or info["name"])

    def modified(self, path: str) -> datetime:
        """Return the blob's Last-Modified time."""
        info = self.info(path)
        if "mtime" not in info:
            raise IsADirectoryError(f"{path} is a folder that exists only as a prefix: it has no modification time")
        return datetime.fromtimestamp(info["mtime"], tz=timezone.utc)

    # -- writing ---------------------------------------------------------------------------------------

    async def _upload(
        self, store: Store, blob: str, size: int, read: Callable[[int, int], Any], *, overwrite: bool
    ) -> None:
        """Upload ``size`` bytes that ``read(offset, length)`` returns (or sends) as parallel blocks, then commit."""
        import base64  # noqa: PLC0415 - only for multi-block uploads
        import uuid  # noqa: PLC0415

        tag = uuid.uuid4().hex[:12]
        offsets = range(0, size, WRITE_BLOCK_SIZE)
        ids = [base64.b64encode(f"{tag}-{index:08d}".encode()).decode() for index in range(len(offsets))]
        limit = asyncio.Semaphore(RANGES_IN_FLIGHT)

        async def stage(block_id: str, offset: int) -> None:
            length = min(WRITE_BLOCK_SIZE, size - offset)
            async with limit:
                body = await self._call(read, offset, length)
                await self._call(store.put_block, blob, block_id, body, length)

        await asyncio.gather(*(stage(block_id, offset) for block_id, offset in zip(ids, offsets, strict=True)))
        await self._call(store.commit, blob, ids, overwrite=overwrite)

    async def _pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        store, _, blob = await self._target(path)
        data = bytes(value)
        overwrite = mode != "create"
        if len(data) <= SINGLE_PUT_MAX:
            await self._call(store.put, blob, data, overwrite=overwrite)
        else:
            view = memoryview(data)
            await self._upload(store, blob, len(data), lambda o, n: view[o : o + n], overwrite=overwrite)
        self.invalidate_cache(path)

    async def _put_file(
        self, lpath: str, rpath: str, callback: Any = DEFAULT_CALLBACK, mode: str = "overwrite", **kwargs: Any
    ) -> None:
        if os.path.isdir(lpath):
            await self._makedirs(rpath, exist_ok=True)
            return
        store, _, blob = await self._target(rpath)
        size = os.path.getsize(lpath)
        callback.set_size(size)
        overwrite = mode != "create"
        with open(lpath, "rb") as file:  # noqa: ASYNC230 - read in the worker threads below
            if size <= SINGLE_PUT_MAX:
                data = await self._call(file.read)
                await self._call(store.put, blob, data, overwrite=overwrite)
            else:
                fd = file.fileno()
                await self._upload(store, blob, size, lambda o, n: os.pread(fd, n, o), overwrite=overwrite)
        callback.relative_update(size)
        self.invalidate_cache(rpath)

    async def _cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        info = await self._info(path1)
        if info["type"] == "directory":
            await self._makedirs(path2, exist_ok=True)
            return
        source, _, blob1 = await self._target(path1)
        dest, _, blob2 = await self._target(path2)
        size, etag = info["size"], info.get("etag")
        if size <= SINGLE_PUT_MAX:
            data = await self._call(source.get, blob1, etag=etag)
            await self._call(dest.put, blob2, data, overwrite=True)
        else:
            await self._upload(dest, blob2, size, lambda o, n: source.get(blob1, o, o + n, etag=etag), overwrite=True)
        self.invalidate_cache(path2)

    # -- folders and deletion --------------------------------------------------------------------------

    async def _mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:  # noqa: FBT001, FBT002 - fsspec's signature
        store, _, blob = await self._target(path)
        if not blob:
            if self.account_name is not None and await self._call(store.create_container):
                return
            raise FileExistsError(path)
        if await self._exists(path):
            raise FileExistsError(path)
        if not create_parents and not await self._isdir(self._parent(path)):
            raise FileNotFoundError(self._parent(path))
        await self._call(store.put, blob, b"", overwrite=False, folder=True)
        self.invalidate_cache(path)

    async def _makedirs(self, path: str, exist_ok: bool = False) -> None:  # noqa: FBT001, FBT002 - fsspec's signature
        store, _, blob = await self._target(path)
        if not blob:
            if self.account_name is not None:
                await self._call(store.create_container)
            return
        props = await self._call(store.head, blob)
        if props is not None:  # a file, or a folder that has its marker
            if not props["folder"] or not exist_ok:
                raise FileExistsError(path)
            return
        if not exist_ok and await self._call(store.has_children, blob + "/"):
            raise FileExistsError(path)
        # A folder that exists only as the prefix of its files gets its marker too, so that it outlives them
        # (fsspec's recursive copy makes the target folder while it copies the files into it, concurrently).
        with contextlib.suppress(FileExistsError):
            await self._call(store.put, blob, b"", overwrite=False, folder=True)
        self.invalidate_cache(path)

    async def _rm_file(self, path: str, **kwargs: Any) -> None:
        store, _, blob = await self._target(path)
        with _named(self._strip_protocol(path)):
            await self._call(store.delete, blob)
        self.invalidate_cache(path)

    async def _rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None, **kwargs: Any) -> None:  # noqa: FBT001, FBT002 - fsspec's signature
        paths = await self._expand_path(path, recursive=recursive, maxdepth=maxdepth)
        by_depth: dict[int, list[str]] = {}
        for name in paths:
            by_depth.setdefault(name.count("/"), []).append(name)

        async def remove(name: str) -> None:
            store, _, blob = await self._target(name)
            try:
                if blob:
                    await self._call(store.delete, blob)
            except FileNotFoundError:
                if recursive:
                    return  # a folder that exists only as a prefix: nothing to delete
                if await self._call(store.has_children, blob + "/"):
                    raise IsADirectoryError(name) from None
                raise
            finally:
                self.invalidate_cache(name)

        for depth in sorted(by_depth, reverse=True):  # children before their folders (ADLS Gen2 insists)
            await asyncio.gather(*(remove(name) for name in by_depth[depth]))

    def rmdir(self, path: str) -> None:
        """Remove an empty folder (``OSError`` ENOTEMPTY when it has files)."""
        path = self._strip_protocol(path)
        root, blob = self._split(path)
        store = self._store_sync(root)
        if blob and store.has_children(blob + "/"):
            raise OSError(errno.ENOTEMPTY, "Folder not empty", path)
        props = store.head(blob) if blob else None
        if props is None:
            raise FileNotFoundError(path)
        if not props["folder"]:
            raise NotADirectoryError(path)
        store.delete(blob)
        self.invalidate_cache(path)
