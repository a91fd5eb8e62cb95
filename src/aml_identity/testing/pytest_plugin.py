"""The aml-identity pytest plugin: emulators and the loopback guard as fixtures.

Registered through the ``pytest11`` entry point, so installing ``aml-identity[testing]`` makes the fixtures
available in any test suite:

* ``aml_tls`` (session): a self-signed certificate for ``127.0.0.1``/``localhost``.
* ``azurite`` (session): Azurite over HTTPS with bearer-token auth (needs ``npm install azurite``).
* ``loopback_guard``: refuses any connection off loopback for the duration of a test.
* ``identity_endpoint``: a running :class:`~aml_identity.testing.IdentityEndpoint` (one user-assigned
  identity ``uai-default``), stopped after the test; configure it further in the test.
* ``arm_emulator``: an :class:`~aml_identity.testing.ArmEmulator` for one test (needs the official specs:
  ``AML_IDENTITY_SPECS_DIR`` or ``../shared/specs``); it fails the test if it sent a body that does not
  match the spec.
* ``storage_auth_proxy``: a :class:`~aml_identity.testing.StorageAuthProxy` in front of the session's
  Azurite that enforces the ``arm_emulator``'s role assignments; point ``AML_IDENTITY_BLOB_ENDPOINTS`` at
  ``storage_auth_proxy.blob_endpoint()``.

Pass ``--aml-loopback-guard`` (or set ``aml_loopback_guard = true`` in the ini file) to turn the guard on for
every test of the session.

The plugin loads with no extra dependency (pytest imports it in every project where aml-identity is installed,
with or without ``[testing]``): its module imports only pytest, and each fixture imports what it needs when a
test asks for it. A test that asks for one without the extra fails with a message naming
``pip install 'aml-identity[testing]'``; other tests are not affected.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from aml_identity.testing import ArmEmulator, Azurite, IdentityEndpoint, StorageAuthProxy, TlsMaterial

__all__ = ["aml_tls", "arm_emulator", "azurite", "identity_endpoint", "loopback_guard", "storage_auth_proxy"]


def _testing(name: str) -> Any:
    """Import ``name`` from :mod:`aml_identity.testing`; without the extra, fail the asking test with the fix."""
    from aml_identity.errors import MissingExtraError  # noqa: PLC0415 - keep the plugin's import free

    try:
        return getattr(importlib.import_module("aml_identity.testing"), name)
    except MissingExtraError as exc:
        message = f"aml-identity pytest plugin: {exc}"
    pytest.fail(message, pytrace=False)  # outside the except: one line, no chain of import errors


def _guard() -> Any:
    return importlib.import_module("aml_identity.testing._guard")


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add the ``--aml-loopback-guard`` option and its ini twin."""
    parser.addoption(
        "--aml-loopback-guard",
        action="store_true",
        default=False,
        help="aml-identity: refuse every network connection off loopback during the whole test session.",
    )
    parser.addini("aml_loopback_guard", "aml-identity: refuse connections off loopback (bool)", type="bool")


def pytest_configure(config: pytest.Config) -> None:
    """Turn the loopback guard on for the session when asked to."""
    if config.getoption("--aml-loopback-guard") or config.getini("aml_loopback_guard"):
        _guard().install()


@pytest.fixture
def loopback_guard() -> Iterator[None]:
    """Refuse connections off loopback during the test (and restore the previous state after)."""
    guard = _guard()
    was_enabled = guard.is_enabled()
    guard.install()
    try:
        yield
    finally:
        if not was_enabled:
            guard.disable()


@pytest.fixture(scope="session")
def aml_tls(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    """A self-signed certificate for the emulators, shared by the session."""
    make_tls_material = _testing("make_tls_material")
    tls: TlsMaterial = make_tls_material(Path(tmp_path_factory.mktemp("aml-tls")))
    return tls


@pytest.fixture(scope="session")
def azurite(aml_tls: TlsMaterial, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """Azurite over HTTPS with ``--oauth basic``, shared by the session."""
    with _testing("Azurite")(workdir=Path(tmp_path_factory.mktemp("azurite")), tls=aml_tls) as server:
        yield server


@pytest.fixture
def identity_endpoint() -> Iterator[IdentityEndpoint]:
    """A managed-identity endpoint emulator on ``127.0.0.1``, started for the test and stopped after it.

    Point clients at it with ``monkeypatch.setenv`` over ``identity_endpoint.azureml_environ()`` (or
    ``imds_environ()`` / ``app_service_environ()``). Requests a test left hanging are released first.
    """
    with _testing("IdentityEndpoint")() as endpoint:
        try:
            yield endpoint
        finally:
            endpoint.release_hangs()


@pytest.fixture
def arm_emulator(aml_tls: TlsMaterial) -> Iterator[ArmEmulator]:
    """An Azure Resource Manager emulator for one test, on the session's certificate."""
    with _testing("ArmEmulator")(tls=aml_tls) as emulator:
        yield emulator


@pytest.fixture
def storage_auth_proxy(azurite: Azurite, arm_emulator: ArmEmulator) -> Iterator[StorageAuthProxy]:
    """Azurite behind Azure's data-plane role checks, driven by the ARM emulator's role assignments."""
    upstream = f"https://127.0.0.1:{azurite.port}"
    with _testing("StorageAuthProxy")(upstream, authorizer=arm_emulator.has_data_role, tls=azurite.tls) as proxy:
        yield proxy
