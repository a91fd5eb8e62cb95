"""Azurite's launcher: it is ready only when *this* Azurite answers, and a port taken meanwhile is not fatal."""

from __future__ import annotations

import socket
import threading

import pytest
from azure.storage.blob import BlobServiceClient

from aml_identity.testing import azurite as azurite_module
from aml_identity.testing.azurite import Azurite

pytestmark = pytest.mark.azurite


@pytest.fixture
def plain_http_server():
    """A plain TCP server on a loopback port, answering every connection with an HTTP 200 (not TLS)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def test_a_port_taken_before_azurite_binds_it_moves_azurite_to_another_port(
    aml_tls, tmp_path, monkeypatch, plain_http_server
):
    # The race seen in CI: the port chosen free is handed to another server before Azurite binds it. Before,
    # the launcher took that server's "connection accepted" for Azurite and clients met it: SSL WRONG_VERSION_NUMBER.
    real_free_port = azurite_module._free_port
    ports = iter([plain_http_server])
    monkeypatch.setattr(azurite_module, "_free_port", lambda: next(ports, None) or real_free_port())
    with Azurite(workdir=tmp_path / "azurite", tls=aml_tls) as azurite:
        assert azurite.port != plain_http_server
        client = BlobServiceClient.from_connection_string(
            azurite.connection_string(), connection_verify=str(aml_tls.cert)
        )
        client.create_container("moved")
        assert [c.name for c in client.list_containers()] == ["moved"]


def test_an_explicit_port_that_is_taken_is_an_error_naming_the_port(aml_tls, tmp_path, plain_http_server):
    with pytest.raises(Exception, match=rf"could not listen on port {plain_http_server}"):
        Azurite(workdir=tmp_path / "azurite", tls=aml_tls, port=plain_http_server).start()
