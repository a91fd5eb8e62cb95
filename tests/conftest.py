"""Test-suite configuration.

The aml-identity pytest plugin (entry point ``pytest11``) provides the emulator fixtures; here every test
also runs behind the loopback guard, so nothing in this suite can reach IMDS, Azure, or any other host.
"""

from __future__ import annotations

from aml_identity.testing import _guard


def pytest_configure() -> None:
    _guard.install()
