"""Attacks on a job's identity: planted or loosened token caches, and an endpoint that floods the client.

Covered elsewhere and not repeated here:
* NodeCache refusing each unsafe directory and file: tests/test_tokens.py::TestNodeCacheSafety;
* a symlinked cache directory at the credential level: tests/test_credential.py::TestNodeCache::
  test_insecure_cache_falls_back_to_the_process_with_one_warning;
* blob names with '..', '.', empty (absolute-looking) segments downloaded from Azurite:
  tests/datastore/test_download.py::test_a_blob_name_escaping_dest_is_refused_and_nothing_is_written_outside
  (names with a backslash or a NUL cannot be downloaded from Azurite 3.35: it turns '\\' into '/' when the
  blob is created, and answers 500 to a listing that contains a NUL, so those are checked below on the
  function every transfer maps names through);
* an MSI_ENDPOINT off loopback without the opt-in: tests/test_identity.py::TestAzureML::
  test_msi_endpoint_off_loopback_needs_an_opt_in_because_the_secret_travels;
* an oversized answer with a Content-Length: tests/test_fault_matrix.py::TestWhatTheMatrixFound.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

import pytest

from aml_identity import TokenRequestError, default_credential
from aml_identity._fetch import MAX_RESPONSE_BYTES
from aml_identity.datastore._paths import local_path_for
from aml_identity.errors import TransferError
from aml_identity.testing import FakeClock

STORAGE = "https://storage.azure.com/.default"
# uid/gid of "nobody" on Debian: "another user" for the ownership checks.
NOBODY = 65534

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


def warnings_of(caplog):
    ours = [r for r in caplog.records if r.name.startswith("aml_identity")]
    return [r.getMessage() for r in ours if r.levelno == logging.WARNING]


def assert_falls_back_to_the_process(caplog, clock, path, problem):
    """Three credentials of one process share one token from one request, with one warning naming ``path``."""
    with caplog.at_level(logging.WARNING, logger="aml_identity"):
        credentials = [default_credential(clock=clock, sleep=clock.sleep) for _ in range(3)]
        tokens = {c.get_token(STORAGE).token for c in credentials}
    warnings = warnings_of(caplog)
    assert len(warnings) == 1, warnings
    assert str(path) in warnings[0] and problem in warnings[0]
    assert "cache=process" in repr(credentials[0])
    assert len(tokens) == 1


class TestUnsafeCacheDirectories:
    @pytest.mark.parametrize("mode", [0o770, 0o707, 0o777])
    def test_a_group_or_world_writable_directory_is_refused(self, aml, clean_env, clock, tmp_path, caplog, mode):  # noqa: PLR0917
        directory = tmp_path / "shared"
        directory.mkdir()
        directory.chmod(mode)
        problem = f"has mode {mode:04o}"
        clean_env.setenv("AML_IDENTITY_CACHE_DIR", str(directory))
        assert_falls_back_to_the_process(caplog, clock, directory, problem)
        assert not list(directory.iterdir())  # no token written where others could read or swap it
        assert aml.request_count == 1

    @needs_root
    def test_a_directory_owned_by_another_user_is_refused(self, aml, clean_env, clock, tmp_path, caplog):
        directory = tmp_path / "planted"
        directory.mkdir(mode=0o700)
        os.chown(directory, NOBODY, NOBODY)
        clean_env.setenv("AML_IDENTITY_CACHE_DIR", str(directory))
        assert_falls_back_to_the_process(caplog, clock, directory, f"owned by uid {NOBODY}")
        assert not list(directory.iterdir())


class TestUnsafeCacheFiles:
    """A token file planted or loosened after the cache was created is never read or trusted."""

    def plant(self, aml, clock, tmp_path, tamper):
        default_credential(clock=clock, sleep=clock.sleep).get_token(STORAGE)
        (path,) = (tmp_path / "token-cache").glob("*.json")
        tamper(path)
        aml.reset_requests()
        return path

    def test_a_symlinked_token_file_is_refused(self, aml, clock, tmp_path, caplog):
        planted = tmp_path / "planted.json"

        def tamper(path):
            planted.write_text(path.read_text().replace('"token": "', '"token": "PLANTED'))
            path.unlink()
            path.symlink_to(planted)

        path = self.plant(aml, clock, tmp_path, tamper)
        later = FakeClock(clock())  # another process: a new clock is a new in-memory cache
        with caplog.at_level(logging.WARNING, logger="aml_identity"):
            token = default_credential(clock=later, sleep=later.sleep).get_token(STORAGE)
        assert not token.token.startswith("PLANTED")
        (warning,) = warnings_of(caplog)
        assert str(path) in warning and "symlink" in warning
        assert aml.request_count == 1  # fetched its own token instead

    @needs_root
    def test_a_token_file_owned_by_another_user_is_refused(self, aml, clock, tmp_path, caplog):
        path = self.plant(aml, clock, tmp_path, lambda p: os.chown(p, NOBODY, NOBODY))
        later = FakeClock(clock())
        with caplog.at_level(logging.WARNING, logger="aml_identity"):
            assert default_credential(clock=later, sleep=later.sleep).get_token(STORAGE).token
        (warning,) = warnings_of(caplog)
        assert str(path) in warning and f"owned by uid {NOBODY}" in warning
        assert aml.request_count == 1

    def test_a_token_file_readable_by_others_is_refused(self, aml, clock, tmp_path, caplog):
        path = self.plant(aml, clock, tmp_path, lambda p: p.chmod(0o644))
        later = FakeClock(clock())
        with caplog.at_level(logging.WARNING, logger="aml_identity"):
            assert default_credential(clock=later, sleep=later.sleep).get_token(STORAGE).token
        (warning,) = warnings_of(caplog)
        assert str(path) in warning and "mode 0644" in warning
        assert aml.request_count == 1


class _FloodingEndpoint:
    """A loopback 'identity endpoint' that answers 200 with an endless chunked body (no Content-Length)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sent = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/MSI/auth"

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
            try:
                while self.sent < 64 * MAX_RESPONSE_BYTES:  # stops when the client hangs up
                    conn.sendall(chunk)
                    self.sent += 65536
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        self.thread.join(10)


def test_an_endless_answer_is_cut_off_at_the_cap(clean_env, clock):
    flood = _FloodingEndpoint()
    try:
        clean_env.setenv("MSI_ENDPOINT", flood.url)
        clean_env.setenv("MSI_SECRET", "a-secret-for-the-flooding-endpoint")
        clean_env.setenv("DEFAULT_IDENTITY_CLIENT_ID", "11111111-2222-4333-8444-555555555555")
        with pytest.raises(TokenRequestError, match=f"stopped reading at {MAX_RESPONSE_BYTES} bytes"):
            default_credential(clock=clock, sleep=clock.sleep).get_token(STORAGE)
    finally:
        flood.close()
    # The client hung up soon after the cap (socket buffers hold a few MiB at most), not after 64 MiB.
    assert flood.sent < 16 * MAX_RESPONSE_BYTES


@pytest.mark.parametrize(
    "name",
    [
        "d/..\\..\\x",
        "d/a\\..\\..\\..\\y",
        "d/C:\\Windows\\x",
        "d/z\x00.txt",
        "d/\x00",
        "d//etc/passwd",
        "d/../x",
        "d/.",
    ],
)
def test_a_blob_name_with_a_backslash_nul_or_escaping_segment_maps_to_no_local_path(tmp_path, name):
    dest = str(tmp_path / "dest")
    with pytest.raises(TransferError, match="Refusing blob") as caught:
        local_path_for(dest, name.removeprefix("d/"), name)
    assert repr(name) in str(caught.value)
    assert not any(tmp_path.iterdir())  # nothing created, not even dest


@pytest.mark.parametrize("name", ["d/plain.txt", "d/a/b/c.bin", "d/name with spaces", "d/\u00e9t\u00e9.csv"])
def test_ordinary_blob_names_map_inside_dest(tmp_path, name):
    dest = str(tmp_path / "dest")
    path = local_path_for(dest, name.removeprefix("d/"), name)
    assert os.path.commonpath([dest, path]) == dest and path != dest
