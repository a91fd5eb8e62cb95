"""The node's fetch service: the first process on a cold node fetches for the others, who never load msal.

The service runs in this (pytest) process, which holds the first credential of a fresh node cache; the other
"ranks" are fresh interpreters that share the cache directory, as a job's processes share a node.
"""

from __future__ import annotations

import fcntl
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import aml_identity
from aml_identity import _fetch_service
from aml_identity._environment import JobEnvironment
from aml_identity._retry import RetryPolicy
from aml_identity._tokens import NodeCache
from aml_identity.errors import IdentityNotFoundError
from aml_identity.testing.identity_endpoint import EmulatedIdentity, Fault

SRC = str(Path(aml_identity.__file__).resolve().parents[1])
STORAGE = "https://storage.azure.com/.default"


def _rank(code: str, env: dict[str, str] | None = None) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter of the job; it sets ``result``; return it with whether msal loaded."""
    probe = textwrap.dedent(code) + textwrap.dedent("""
        import json, sys
        result["msal_loaded"] = "msal" in sys.modules
        result["client_loaded"] = "aml_identity._fetch" in sys.modules  # the endpoint client (msal, requests)
        print(json.dumps(result))
    """)
    environ = {**(env or os.environ), "PYTHONPATH": SRC}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=environ, timeout=120,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


GET_TOKEN = """
    from aml_identity import get_token
    result = {"token": get_token("https://storage.azure.com/.default").token}
"""


@pytest.fixture
def service(aml_job):
    """This process becomes the node's fetch service (a credential on a cold cache); yields the cache dir."""
    credential = aml_identity.default_credential()
    directory = Path(os.environ["AML_IDENTITY_CACHE_DIR"])
    assert _fetch_service.serves(directory)
    yield directory
    del credential
    gc.collect()


def test_a_rank_gets_its_token_from_the_service_without_loading_msal(aml_job, service):
    rank = _rank(GET_TOKEN)
    assert rank["msal_loaded"] is False
    assert rank["client_loaded"] is False
    assert aml_job.request_count == 1
    # The rank stored it in the node cache, as if it had fetched itself: the next rank reads it.
    assert _rank(GET_TOKEN)["token"] == rank["token"]
    assert aml_job.request_count == 1
    assert (service / _fetch_service.SOCKET_NAME).stat().st_mode & 0o777 == 0o600


def test_the_service_fetches_with_the_ranks_identity(aml_job, service):
    other = EmulatedIdentity.user("uai-second")
    aml_job.add_identity(other)
    code = f"""
        from aml_identity import default_credential
        result = {{"token": default_credential(client_id={other.client_id!r}).get_token({STORAGE!r}).token}}
    """
    rank = _rank(code)
    assert rank["msal_loaded"] is False
    assert [r.identity.client_id for r in aml_job.requests] == [other.client_id]


def test_a_failed_fetch_is_the_ranks_error_and_names_the_service(aml_job, service):
    aml_job.inject(Fault.status(400, body={"error": "invalid_request", "error_description": "Identity not found"}))
    code = """
        from aml_identity import get_token
        from aml_identity.errors import AmlIdentityError
        try:
            get_token("https://storage.azure.com/.default")
            result = {"error": None}
        except AmlIdentityError as exc:
            result = {"error": type(exc).__name__, "message": str(exc), "status": getattr(exc, "status_code", None)}
    """
    rank = _rank(code)
    assert rank["client_loaded"] is False  # (raising the error loads azure-identity, and with it msal)
    assert rank["error"] in ("IdentityNotFoundError", "TokenRequestError")
    assert rank["status"] == 400
    assert "Identity not found" in rank["message"]
    assert f"fetch service, process {os.getpid()}" in rank["message"]
    assert aml_job.request_count == 1


def test_a_rank_with_other_endpoint_settings_fetches_itself(aml_job, service):
    env = {**os.environ, "AML_IDENTITY_ALLOW_REMOTE_IDENTITY_ENDPOINT": "1"}
    rank = _rank(GET_TOKEN, env)
    assert rank["client_loaded"] is True  # refused by the service: it loaded the client and fetched
    assert aml_job.request_count == 1


def test_without_a_service_a_rank_fetches_itself(aml_job, clean_env):
    clean_env.setenv("AML_IDENTITY_FETCH_SERVICE", "0")
    credential = aml_identity.default_credential()
    directory = Path(os.environ["AML_IDENTITY_CACHE_DIR"])
    assert not _fetch_service.serves(directory)
    assert not (directory / _fetch_service.SOCKET_NAME).exists()
    rank = _rank(GET_TOKEN)
    assert rank["msal_loaded"] is True
    assert aml_job.request_count == 1
    del credential


def test_a_dead_services_socket_is_passed_over(aml_job, clean_env, tmp_path):
    directory = Path(os.environ["AML_IDENTITY_CACHE_DIR"])
    directory.mkdir(mode=0o700, parents=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(directory / _fetch_service.SOCKET_NAME))
    stale.close()  # the file stays, nobody listens: what a killed service leaves
    clean_env.setenv("AML_IDENTITY_FETCH_SERVICE", "0")  # this process does not take over
    rank = _rank(GET_TOKEN)
    assert rank["msal_loaded"] is True
    assert aml_job.request_count == 1


def test_a_stopped_service_is_passed_over_after_the_start_timeout(aml_job, clean_env, monkeypatch):
    directory = Path(os.environ["AML_IDENTITY_CACHE_DIR"])
    code = """
        import os, sys
        from pathlib import Path
        from aml_identity import default_credential, _fetch_service
        credential = default_credential()
        directory = Path(os.environ["AML_IDENTITY_CACHE_DIR"])
        assert (directory / _fetch_service.SOCKET_NAME).exists()  # it listens once the credential exists
        _fetch_service._services[directory].wait_loaded()
        print("serving", flush=True)
        sys.stdin.read()
    """
    server = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env={**os.environ, "PYTHONPATH": SRC},
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert server.stdout.readline().strip() == "serving"
        os.kill(server.pid, signal.SIGSTOP)
        monkeypatch.setattr(_fetch_service, "START_TIMEOUT_S", 0.3)
        env = JobEnvironment.from_environ()
        identity = aml_identity.default_identity()
        node = NodeCache(directory)
        assert _fetch_service.ask(node, identity, env, RetryPolicy(), "https://storage.azure.com", None) is None
        assert aml_job.request_count == 0
    finally:
        os.kill(server.pid, signal.SIGCONT)
        server.communicate("", timeout=60)


def test_a_malformed_request_is_refused(service):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(service / _fetch_service.SOCKET_NAME))
        sock.sendall(b'{"identity": "../../etc/passwd"}\n')
        answer = json.loads(sock.makefile("rb").readline())
    assert answer == {"refused": "malformed request"}


def test_another_user_cannot_reach_the_service(service):
    if os.getuid() != 0:
        pytest.skip("needs root to switch to another user")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        code = 3
        try:
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(str(service / _fetch_service.SOCKET_NAME))
            code = 1
        except PermissionError:
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_forked_child_is_not_the_service_and_the_parent_keeps_serving(aml_job, service):
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        os._exit(0 if not _fetch_service.serves(service) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _rank(GET_TOKEN)["msal_loaded"] is False
    assert aml_job.request_count == 1


def test_the_service_stops_with_its_last_credential(aml_job, clean_env):
    directory = Path(os.environ["AML_IDENTITY_CACHE_DIR"])
    credential = aml_identity.default_credential()
    assert _fetch_service.serves(directory)
    del credential
    gc.collect()
    assert not _fetch_service.serves(directory)
    assert not (directory / _fetch_service.SOCKET_NAME).exists()


def test_a_node_with_tokens_already_gets_no_service(aml_job, clean_env):
    directory = Path(os.environ["AML_IDENTITY_CACHE_DIR"])
    first = aml_identity.default_credential()
    first.get_token(STORAGE)
    del first
    gc.collect()
    later = aml_identity.default_credential()  # like a spawned DataLoader worker: the cache is warm
    assert not _fetch_service.serves(directory)
    del later


def test_a_claims_challenge_goes_through_the_service(aml_job, service):
    code = """
        from aml_identity import default_credential
        credential = default_credential()
        first = credential.get_token("https://storage.azure.com/.default").token
        second = credential.get_token("https://storage.azure.com/.default", claims='{"access_token": {}}').token
        result = {"new": first != second}
    """
    rank = _rank(code)
    assert rank == {"new": True, "msal_loaded": False, "client_loaded": False}
    assert aml_job.request_count == 2


def test_identity_not_found_keeps_its_type(aml_job, service):
    code = """
        from aml_identity import default_credential
        from aml_identity.errors import IdentityNotFoundError
        try:
            default_credential(client_id="00000000-0000-0000-0000-00000000beef").get_token(
                "https://storage.azure.com/.default")
            result = {"error": None}
        except IdentityNotFoundError as exc:
            result = {"error": "IdentityNotFoundError", "message": str(exc)}
    """
    rank = _rank(code, {**os.environ, "AML_IDENTITY_TOKEN_TIMEOUT": "3"})  # 404 is retried for the whole budget
    assert rank["error"] == IdentityNotFoundError.__name__
    assert "00000000-0000-0000-0000-00000000beef" in rank["message"]
    assert "fetch service" in rank["message"]
    assert rank["client_loaded"] is False


def test_the_service_does_not_fetch_for_a_process_that_hung_up(aml_job, service):
    # A process that stopped waiting for the start (START_TIMEOUT_S) fetches itself: the service must not too.
    request = _fetch_service.request_line(
        aml_identity.default_identity(), JobEnvironment.from_environ(), RetryPolicy(), "https://storage.azure.com",
        None,
    )  # fmt: skip
    mine, theirs = socket.socketpair()  # the service has read the request line; then the asker hangs up
    theirs.close()
    with mine:
        assert _fetch_service._services[service]._answer(request, mine) == {"refused": "the asking process hung up"}
    assert aml_job.request_count == 0
    # The same request from a process still waiting is fetched.
    mine, theirs = socket.socketpair()
    with mine, theirs:
        assert "token" in _fetch_service._services[service]._answer(request, mine)
        assert theirs.recv(100) == _fetch_service.STARTED
    assert aml_job.request_count == 1


def test_a_process_that_finds_no_socket_waits_for_a_service_that_is_starting(clean_env, tmp_path, monkeypatch):
    directory = tmp_path / "node"
    node = NodeCache.open(directory)
    assert _fetch_service._starting(node) is False  # nobody is starting one: fetch yourself, at once

    starter = os.open(directory / f"{_fetch_service.STARTING_LOCK}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(starter, fcntl.LOCK_EX)  # another process took the service's lock and is about to listen
    monkeypatch.setattr(_fetch_service, "START_TIMEOUT_S", 0.05)
    assert _fetch_service._starting(node) is False  # it never finished: passed over after the timeout

    waited = NodeCache.wait_unlocked

    def starter_finishes_while_we_wait(self, name, timeout):
        os.close(starter)  # it listens now and lets go of the starting lock
        return waited(self, name, timeout)

    monkeypatch.setattr(NodeCache, "wait_unlocked", starter_finishes_while_we_wait)
    assert _fetch_service._starting(node) is True  # then connect again
