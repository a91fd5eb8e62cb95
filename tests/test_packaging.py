"""The wheel as a user installs it: `pip install aml-identity` into a fresh venv, with only the runtime dependencies.

The wheel is built from this tree (hatchling, no build isolation) and installed into a venv of its own (no
system site-packages, no pip of its own: this environment's pip installs into it). Then, from that venv: the
command line starts, every subcommand's ``--help`` works, ``sandbox`` and ``mount`` name their extra in one
line, ``whoami`` gets a token from the identity endpoint emulator (run from this environment as a separate
process) and a second process gets its token through the first one's fetch service without loading msal, with
pytest installed beside the wheel an unrelated project's tests still pass, and after
``pip install 'aml-identity[fsspec]'`` fsspec finds this package's class for ``azureml://``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from aml_identity import cli

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# Generous: pip resolves the runtime dependencies from its cache or index on a loaded machine.
PIP_TIMEOUT_S = 300
COMMAND_TIMEOUT_S = 60

# The identity endpoint emulator, served from this (dev) environment until its stdin closes.
_SERVE_ENDPOINT = """
import json, sys
from aml_identity.testing import IdentityEndpoint
with IdentityEndpoint() as endpoint:
    identity = endpoint.identities[0]
    print(json.dumps({"environ": endpoint.azureml_environ(), "client_id": identity.client_id,
                      "resource_id": identity.resource_id}), flush=True)
    sys.stdin.read()
"""


def _run(args: list[str], *, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, check=False, env=env, cwd=cwd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out)]
    subprocess.run(
        [*build, str(ROOT)],
        check=True,
        capture_output=True,
        timeout=PIP_TIMEOUT_S,
    )
    (built,) = out.glob("aml_identity-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel and its runtime dependencies only; returns its bin directory."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=PIP_TIMEOUT_S)
    python = root / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", str(wheel)],
        check=True,
        capture_output=True,
        timeout=PIP_TIMEOUT_S,
    )
    return root / "bin"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a user's shell: nothing of this dev environment, no identity variables."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PIP_CACHE_DIR", "XDG_CACHE_HOME")
    environ = {name: os.environ[name] for name in keep if name in os.environ}
    environ["AML_IDENTITY_CACHE_DIR"] = str(tmp_path_factory.mktemp("token-cache"))
    environ["AML_IDENTITY_LOOPBACK_ONLY"] = "1"
    return environ


def _subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield (*prefix, name)
                yield from _subcommands(child, (*prefix, name))


def test_the_wheel_holds_py_typed_and_no_tests(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "aml_identity/py.typed" in names
    assert "aml_identity/testing/pytest_plugin.py" in names  # the plugin ships; the suite does not
    assert not [n for n in names if n.startswith(("tests/", "bench/", "examples/")) or "/tests/" in n]
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_the_venv_has_the_runtime_dependencies_only(venv, env):
    extras = ("jsonschema", "mfusepy", "pytest", "fsspec")
    probe = f"import importlib.util as u; print([m for m in {extras!r} if u.find_spec(m)])"
    assert _run([str(venv / "python"), "-c", probe], env=env).stdout.strip() == "[]"


def test_the_command_line_starts_on_the_base_install(venv, env):
    version = metadata.version("aml-identity")
    for args in (["--version"], ["-m", "aml_identity", "--version"]):
        command = [str(venv / "aml-identity"), *args] if args[0] != "-m" else [str(venv / "python"), *args]
        result = _run(command, env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"aml-identity {version}"
    top = _run([str(venv / "aml-identity"), "--help"], env=env)
    assert top.returncode == 0, top.stderr
    commands = list(_subcommands(cli._build_parser()))
    assert ("sandbox",) in commands
    assert ("cluster", "create") in commands
    for command in commands:
        assert command[0] in top.stdout
        result = _run([str(venv / "aml-identity"), *command, "--help"], env=env)
        assert result.returncode == 0, f"aml-identity {' '.join(command)} --help: {result.stderr}"
        assert result.stdout.startswith(f"usage: aml-identity {' '.join(command)}")


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (["sandbox", "--", "python", "-c", "pass"], "testing"),
        (["mount", "azureml://datastores/inputs/paths/data"], "mount"),
    ],
)
def test_a_command_that_needs_an_extra_names_it_in_one_line(venv, env, args, extra):
    result = _run([str(venv / "aml-identity"), *args], env=env)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"aml-identity: error: aml-identity {args[0]} needs the {extra} extra")
    assert lines[0].endswith(f"pip install 'aml-identity[{extra}]'")


def test_whoami_gets_a_token_from_the_identity_endpoint(venv, env):
    with subprocess.Popen(
        [sys.executable, "-c", _SERVE_ENDPOINT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as server:
        assert server.stdout is not None and server.stdin is not None
        try:
            served = json.loads(server.stdout.readline())
            result = _run([str(venv / "aml-identity"), "whoami", "--json"], env={**env, **served["environ"]})
        finally:
            server.stdin.close()
            server.wait(timeout=COMMAND_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["source"] == "azureml"
    assert report["client_id"] == served["client_id"]
    assert report["selected_by"] == "DEFAULT_IDENTITY_CLIENT_ID"
    assert report["claims"]["xms_mirid"] == served["resource_id"]


# The first process on a cold node: its credential makes it the node's fetch service.
_FIRST_RANK = """
import os, sys
from pathlib import Path
from aml_identity import default_credential
credential = default_credential()
assert (Path(os.environ["AML_IDENTITY_CACHE_DIR"]) / "fetch-service.sock").exists()
print("serving", flush=True)
sys.stdin.read()
"""
_SECOND_RANK = """
import json, sys
from aml_identity import get_token
get_token("https://storage.azure.com/.default")
print(json.dumps({"endpoint_client": "aml_identity._fetch" in sys.modules, "msal": "msal" in sys.modules}))
"""


def test_a_second_process_gets_its_token_from_the_nodes_fetch_service(venv, env, tmp_path):
    with subprocess.Popen(
        [sys.executable, "-c", _SERVE_ENDPOINT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as server:
        assert server.stdout is not None and server.stdin is not None
        served = json.loads(server.stdout.readline())
        node = {**env, **served["environ"], "AML_IDENTITY_CACHE_DIR": str(tmp_path / "cache")}
        with subprocess.Popen(
            [str(venv / "python"), "-c", _FIRST_RANK], env=node, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True,
        ) as first:  # fmt: skip
            assert first.stdout is not None and first.stdin is not None
            try:
                assert first.stdout.readline().strip() == "serving"
                second = _run([str(venv / "python"), "-c", _SECOND_RANK], env=node)
            finally:
                first.stdin.close()
                first.wait(timeout=COMMAND_TIMEOUT_S)
                server.stdin.close()
                server.wait(timeout=COMMAND_TIMEOUT_S)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout) == {"endpoint_client": False, "msal": False}
    assert first.returncode == 0


@pytest.fixture(scope="module")
def venv_with_pytest(venv: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "python"), "install", "--quiet", "pytest"],
        check=True,
        capture_output=True,
        timeout=PIP_TIMEOUT_S,
    )
    return venv


def test_an_unrelated_projects_pytest_still_passes(venv_with_pytest, env, tmp_path):
    (tmp_path / "test_unrelated.py").write_text("def test_adds():\n    assert 1 + 1 == 2\n")
    pytest_cmd = [str(venv_with_pytest / "python"), "-m", "pytest", "-p", "no:cacheprovider"]
    result = _run([*pytest_cmd, "-q"], env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    # ... with the plugin loaded (its option is there), not skipped
    assert "--aml-loopback-guard" in _run([*pytest_cmd, "--help"], env=env, cwd=tmp_path).stdout


def test_a_fixture_without_the_testing_extra_names_it(venv_with_pytest, env, tmp_path):
    (tmp_path / "test_emulator.py").write_text(
        textwrap.dedent("""
            def test_needs_the_arm_emulator(arm_emulator):
                pass

            def test_does_not(loopback_guard):
                pass
        """)
    )
    pytest_cmd = [str(venv_with_pytest / "python"), "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rE"]
    result = _run(pytest_cmd, env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 passed, 1 error" in result.stdout
    assert "pip install 'aml-identity[testing]'" in result.stdout
    assert "Traceback" not in result.stdout


# Run in the venv after `pip install 'aml-identity[fsspec]'`: fsspec finds the class through the entry point,
# imports aml_identity only when the protocol is asked for, and opens no connection doing so.
_FSSPEC_PROBE = """
import sys, fsspec
fsspec.filesystem("memory").pipe("/x", b"1")
before = "aml_identity" in sys.modules
cls = fsspec.get_filesystem_class("azureml")
from aml_identity.fsspec import AzureMLFileSystem
print(before, cls is AzureMLFileSystem, "azureml" in fsspec.available_protocols())
"""


@pytest.fixture(scope="module")
def venv_with_fsspec(venv: Path, wheel: Path) -> Path:
    """The venv after `pip install 'aml-identity[fsspec]'` (the same wheel, with its fsspec extra)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "python"), "install", "--quiet", f"{wheel}[fsspec]"],
        check=True,
        capture_output=True,
        timeout=PIP_TIMEOUT_S,
    )
    return venv


def test_the_fsspec_extra_registers_this_packages_class_for_azureml(venv_with_fsspec, env):
    result = _run([str(venv_with_fsspec / "python"), "-c", _FSSPEC_PROBE], env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True", "True"]
