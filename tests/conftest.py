"""Test-suite configuration.

The aml-identity pytest plugin (entry point ``pytest11``) provides the emulator fixtures; here every test
also runs behind the loopback guard, so nothing in this suite can reach IMDS, Azure, or any other host.
"""

from __future__ import annotations

import pytest

from aml_identity.testing import _guard


def pytest_configure() -> None:
    _guard.install()


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


@pytest.fixture
def aml_job(identity_endpoint, clean_env):
    """An Azure ML job environment (MSI_ENDPOINT, MSI_SECRET, DEFAULT_IDENTITY_CLIENT_ID) backed by the emulator."""
    for name, value in identity_endpoint.azureml_environ().items():
        clean_env.setenv(name, value)
    return identity_endpoint
