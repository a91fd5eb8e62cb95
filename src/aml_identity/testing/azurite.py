"""Start and stop Azurite, the official Azure Storage emulator, for tests, benchmarks and the sandbox.

Azurite runs with HTTPS (a self-signed certificate) and ``--oauth basic`` so that it accepts bearer tokens
minted by :class:`~aml_identity.testing.IdentityEndpoint`, exactly as a job's storage clients would use them.
Azurite checks the token's issuer, audience and lifetime but enforces no roles;
:class:`~aml_identity.testing.StorageAuthProxy` adds that.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from aml_identity.errors import AmlIdentityError
from aml_identity.testing._tls import TlsMaterial, make_tls_material

__all__ = ["DEVSTORE_ACCOUNT", "DEVSTORE_KEY", "Azurite", "AzuriteNotFoundError", "find_azurite"]

DEVSTORE_ACCOUNT = "devstoreaccount1"
# Azurite's documented well-known development key (public, not a secret).
DEVSTORE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
# Azurite is ready in ~0.7 s on this class of machine; a loaded CI runner gets generous headroom.
_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 10.0
_READY_POLL_S = 0.05
# Ports tried when the one chosen free is taken before Azurite binds it (a rare race with other servers).
_PORT_ATTEMPTS = 3


class AzuriteNotFoundError(AmlIdentityError, FileNotFoundError):
    """Azurite is not installed where aml-identity looks for it."""


def find_azurite(start: Path | None = None) -> Path:
    """Locate the ``azurite-blob`` executable.

    Looks at ``$AML_IDENTITY_AZURITE``, then ``node_modules/.bin/azurite-blob`` in ``start`` (the current
    directory by default) and its parents, then beside this package (a source checkout), then ``PATH``.

    Args:
        start: Where to start looking for a ``node_modules`` folder.

    Returns:
        The path of ``azurite-blob``.

    Raises:
        AzuriteNotFoundError: It is nowhere; the message says how to install it.
    """
    override = os.environ.get("AML_IDENTITY_AZURITE")
    if override:
        path = Path(override)
        if path.is_file():
            return path
        msg = f"AML_IDENTITY_AZURITE={override!r} is not a file; point it at node_modules/.bin/azurite-blob."
        raise AzuriteNotFoundError(msg)
    here = (start or Path.cwd()).resolve()
    package = Path(__file__).resolve().parent
    for folder in (here, *here.parents, *package.parents):
        candidate = folder / "node_modules" / ".bin" / "azurite-blob"
        if candidate.is_file():
            return candidate
    on_path = shutil.which("azurite-blob")
    if on_path:
        return Path(on_path)
    msg = (
        "Azurite (the Azure Storage emulator) was not found. Install it with `npm ci` in the aml-identity "
        "checkout (package.json pins it), or `npm install azurite@3.35.0` in your project, or set "
        "AML_IDENTITY_AZURITE to the path of azurite-blob."
    )
    raise AzuriteNotFoundError(msg)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Azurite:
    """An Azurite blob service on ``127.0.0.1`` over HTTPS with bearer-token (``--oauth basic``) auth.

    Use it as a context manager::

        with Azurite() as azurite:
            client = BlobServiceClient(azurite.blob_endpoint(), credential=...)

    Attributes:
        port: The TCP port it listens on.
        tls: The certificate it presents (trust ``tls.bundle``).
        accounts: Storage account name -> base64 account key.
    """

    def __init__(
        self,
        *,
        workdir: Path | None = None,
        tls: TlsMaterial | None = None,
        accounts: Mapping[str, str] | None = None,
        port: int | None = None,
        in_memory: bool = False,
        executable: Path | None = None,
    ) -> None:
        """Configure (not start) Azurite.

        Args:
            workdir: Folder for data, logs and certificates; a fresh temporary folder when omitted
                (Azurite does not reclaim deleted data promptly, so each run gets its own).
            tls: The certificate to present; one is created in ``workdir`` when omitted.
            accounts: Extra storage accounts (name -> base64 key, or name -> "" for a generated key).
                ``devstoreaccount1`` always exists.
            port: The port; a free one when omitted.
            in_memory: Keep blobs in memory (faster, bounded by RAM) instead of on disk.
            executable: The ``azurite-blob`` path; found with :func:`find_azurite` when omitted.
        """
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="aml-identity-azurite-"))
        self.tls = tls or make_tls_material(self.workdir / "tls")
        self.accounts: dict[str, str] = {DEVSTORE_ACCOUNT: DEVSTORE_KEY}
        for name, key in (accounts or {}).items():
            self.accounts[name] = key or base64.b64encode(os.urandom(32)).decode()
        self._port_chosen = port is None
        self._started = False
        self.port = port or _free_port()
        self.in_memory = in_memory
        self._executable = executable
        self._process: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "azurite.log"

    def blob_endpoint(self, account: str = DEVSTORE_ACCOUNT) -> str:
        """Return the path-style blob endpoint URL of ``account``."""
        return f"https://127.0.0.1:{self.port}/{account}"

    def connection_string(self, account: str = DEVSTORE_ACCOUNT) -> str:
        """Return a shared-key connection string for ``account`` (for seeding data, not for jobs)."""
        return (
            f"DefaultEndpointsProtocol=https;AccountName={account};AccountKey={self.accounts[account]};"
            f"BlobEndpoint={self.blob_endpoint(account)};"
        )

    def start(self) -> Azurite:
        """Start Azurite and wait until it answers a TLS handshake with its own certificate.

        A port chosen free here can be taken by another server before Azurite binds it (the kernel hands a
        just-released port out again); Azurite then exits with ``EADDRINUSE`` and, when the port was not given
        explicitly, it is started again on another free port.

        Returns:
            ``self``.

        Raises:
            AzuriteNotFoundError: Azurite is not installed.
            AmlIdentityError: It did not start; the message quotes its log.
        """
        # A restart keeps its port (clients hold the endpoint), so only a first start moves to another one.
        may_move = self._port_chosen and not self._started
        for _ in range(_PORT_ATTEMPTS):
            if self._launch():
                self._started = True
                return self
            if not may_move:
                break
            self.port = _free_port()
        self._fail(f"could not listen on port {self.port}: another process holds it")
        return self  # unreachable; _fail raises

    def _launch(self) -> bool:
        """Start the process on ``self.port``; True once it answers, False when the port was taken."""
        executable = self._executable or find_azurite()
        args = [
            str(executable),
            "--blobHost", "127.0.0.1",
            "--blobPort", str(self.port),
            "--skipApiVersionCheck",   # azure-storage-blob sends a newer x-ms-version than Azurite knows
            "--loose",
            "--disableTelemetry",      # Azurite would otherwise try to send telemetry off the machine
            "--oauth", "basic",
            "--cert", str(self.tls.cert),
            "--key", str(self.tls.key),
        ]  # fmt: skip
        if self.in_memory:
            args.append("--inMemoryPersistence")
        else:
            data = self.workdir / "data"
            data.mkdir(parents=True, exist_ok=True)
            args += ["--location", str(data)]
        env = dict(os.environ)
        env["AZURITE_ACCOUNTS"] = ";".join(f"{name}:{key}" for name, key in self.accounts.items())
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")  # appended: a restart keeps the earlier run's log
        self._process = subprocess.Popen(  # noqa: S603 - fixed argument list, our own executable
            args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir, start_new_session=True
        )
        log.close()
        # Our own certificate: a handshake that verifies proves this Azurite answers, not whatever else listens.
        context = self.tls.client_context()
        context.check_hostname = False
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                with self.log_path.open("rb") as f:
                    f.seek(log_start)
                    if b"EADDRINUSE" in f.read():
                        self._process = None
                        return False
                self._fail("exited during start-up")
            try:
                with (
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock,
                    context.wrap_socket(sock),
                ):
                    return True
            except OSError:  # refused, reset, or a handshake with a server that is not this Azurite (SSLError)
                time.sleep(_READY_POLL_S)  # polling a child process for readiness, not test timing
        self._fail(f"did not listen on port {self.port} within {_START_TIMEOUT_S:.0f} s")
        return False  # unreachable; _fail raises

    def _fail(self, what: str) -> None:
        log = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
        self.stop()
        msg = f"Azurite {what}. Its log ends with:\n{log}"
        raise AmlIdentityError(msg)

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Kill Azurite with ``sig`` and keep its data folder, so that :meth:`start` brings the same blobs back.

        ``SIGKILL`` (the default) is a crash; ``SIGTERM`` a graceful stop. Blobs live on disk unless
        ``in_memory``; Azurite writes its blob index to disk every few seconds and on a graceful stop, so a
        crash can lose what was written in its last seconds, like any storage server that dies before it
        acknowledges a write (and a client's retry writes it again).

        Args:
            sig: The signal.
        """
        process = self._process
        if process is None or process.poll() is not None:
            self._process = None
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self._process = None

    def restart(self, *, crash: bool = False) -> Azurite:
        """Stop Azurite (``SIGKILL`` when ``crash``, else ``SIGTERM``) and start it again, same port, same data.

        Args:
            crash: Kill it without letting it save (see :meth:`kill`).

        Returns:
            ``self``.
        """
        self.kill(signal.SIGKILL if crash else signal.SIGTERM)
        return self.start()

    @property
    def running(self) -> bool:
        """Whether the Azurite process is alive."""
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        """Stop Azurite and delete its data (when the work folder was created here)."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Azurite:
        """Start Azurite."""
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop Azurite."""
        self.stop()
