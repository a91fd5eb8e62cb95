"""Test-suite configuration.

The aml-identity pytest plugin (entry point ``pytest11``) provides the emulator fixtures; here every test
also runs behind the loopback guard, so nothing in this suite can reach IMDS, Azure, or any other host,
and every test fails if its captured logs, stdout/stderr or failure text show a token minted by the
emulators or an identity-endpoint secret (``aml_identity.testing._secrets``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import aml_identity
from aml_identity.testing import _guard
from aml_identity.testing._secrets import find_leaks


def pytest_configure(config) -> None:
    _guard.install()
    config.addinivalue_line(
        "markers", "leaks_on_purpose: shows an emulator token or secret on purpose (exempt from the leak check)"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Fail a test phase whose captured output or failure text holds an emulator token or secret."""
    outcome = yield
    report = outcome.get_result()
    if item.get_closest_marker("leaks_on_purpose") is not None:
        return
    sections = [(name, content) for name, content in report.sections if name.endswith(f" {report.when}")]
    texts = [content for _, content in sections]
    if report.longrepr is not None:
        texts.append(report.longreprtext)
    leaks = find_leaks("\n".join(texts))
    if leaks:
        where = ", ".join(name for name, _ in sections) or "the failure text"
        report.outcome = "failed"
        report.longrepr = (
            f"Secret leak in {report.when} ({where}): {'; '.join(leaks)}. Tokens and secrets must never reach a "
            "log line, output or an exception message: mask them (aml_identity.errors.redact)."
        )


# Variables that would make msal or our resolution pick another identity source; cleared for every test.
_SOURCE_VARIABLES = (
    "MSI_ENDPOINT", "MSI_SECRET", "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT", "AZURE_POD_IDENTITY_AUTHORITY_HOST", "DEFAULT_IDENTITY_CLIENT_ID", "AZURE_CLIENT_ID",
    "AZURE_FEDERATED_TOKEN_FILE", "AZURE_TENANT_ID", "AML_IDENTITY_TOKEN_TIMEOUT",
)  # fmt: skip


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No identity variables from the outer environment; a private token cache; loopback only."""
    for name in _SOURCE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AML_IDENTITY_CACHE_DIR", str(tmp_path / "token-cache"))
    monkeypatch.setenv("AML_IDENTITY_LOOPBACK_ONLY", "1")
    return monkeypatch


@pytest.fixture(scope="session")
def run_bench():
    """Run ``python -m bench ARGS...`` from the checkout, as a user re-runs a benchmark; return the process."""
    root = Path(__file__).resolve().parents[1]
    src = str(Path(aml_identity.__file__).resolve().parents[1])

    def run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        environ = {**os.environ, "PYTHONPATH": os.pathsep.join([src, str(root), os.environ.get("PYTHONPATH", "")])}
        return subprocess.run(
            [sys.executable, "-m", "bench", *args],
            cwd=root, env=environ, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    return run


@pytest.fixture
def clock():
    """A fake clock the test moves by hand (the emulator and the credential both read it)."""
    from aml_identity.testing import FakeClock

    return FakeClock()


@pytest.fixture
def aml(aml_job, clock):
    """The Azure ML job environment, on the test's fake clock."""
    aml_job.clock = clock
    return aml_job


@pytest.fixture
def aml_job(identity_endpoint, clean_env):
    """An Azure ML job environment (MSI_ENDPOINT, MSI_SECRET, DEFAULT_IDENTITY_CLIENT_ID) backed by the emulator."""
    for name, value in identity_endpoint.azureml_environ().items():
        clean_env.setenv(name, value)
    return identity_endpoint
