"""Self-signed TLS material for the local emulators (Azurite, the ARM emulator, the storage proxy)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TlsMaterial", "make_tls_material"]

# Where the system's trusted CAs live on Debian/Ubuntu and most distributions; appended to our bundle so a
# process that trusts the bundle still trusts the public CAs it trusted before.
_SYSTEM_CA_CANDIDATES = (
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
)
# Long enough for any test session or sandbox run, short enough that a leaked file is soon useless.
_VALIDITY = dt.timedelta(days=7)


@dataclass(frozen=True)
class TlsMaterial:
    """A self-signed certificate for ``127.0.0.1`` and ``localhost``.

    Attributes:
        cert: The PEM certificate (it is its own CA).
        key: The PEM private key, mode 0600.
        bundle: The system CA bundle with ``cert`` appended: point ``REQUESTS_CA_BUNDLE`` and
            ``SSL_CERT_FILE`` at it so the sync (requests) and async (aiohttp) clients both trust the
            emulators and still trust public CAs.
    """

    cert: Path
    key: Path
    bundle: Path

    def server_context(self) -> ssl.SSLContext:
        """Return an ``ssl.SSLContext`` for a server presenting this certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.cert), str(self.key))
        return context

    def client_context(self) -> ssl.SSLContext:
        """Return an ``ssl.SSLContext`` for a client that trusts this certificate."""
        return ssl.create_default_context(cafile=str(self.cert))

    def environ(self) -> dict[str, str]:
        """Return the environment variables that make Python clients trust the emulators."""
        return {"REQUESTS_CA_BUNDLE": str(self.bundle), "SSL_CERT_FILE": str(self.bundle)}


def make_tls_material(directory: Path, *, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> TlsMaterial:
    """Create (or reuse) a self-signed certificate for ``hosts`` in ``directory``.

    Args:
        directory: Where to write ``cert.pem``, ``key.pem`` and ``bundle.pem``.
        hosts: Subject alternative names: IP literals become IP entries, the rest DNS entries.

    Returns:
        The paths of the written files.
    """
    from cryptography import x509  # noqa: PLC0415 - optional [testing] dependency
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path, bundle_path = directory / "cert.pem", directory / "key.pem", directory / "bundle.pem"
    if cert_path.exists() and key_path.exists() and bundle_path.exists():
        return TlsMaterial(cert_path, key_path, bundle_path)

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aml-identity emulator")])
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:  # noqa: PERF203 - a handful of host names, once per certificate
            sans.append(x509.DNSName(host))
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
    cert_path.write_bytes(cert_pem)
    system = next((Path(p) for p in _SYSTEM_CA_CANDIDATES if Path(p).is_file()), None)
    bundle = (system.read_bytes().rstrip(b"\n") + b"\n" if system else b"") + cert_pem
    bundle_path.write_bytes(bundle)
    return TlsMaterial(cert_path, key_path, bundle_path)
