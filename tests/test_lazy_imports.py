"""The lazy house: every exported name resolves, and importing aml-identity loads nothing heavy until it is used.

Each check of ``sys.modules`` runs in a fresh interpreter, so what this suite has already imported cannot hide
an eager import.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from azure.identity import CredentialUnavailableError

import aml_identity
from aml_identity import _extras, errors
from aml_identity.cli import main

SRC = str(Path(aml_identity.__file__).resolve().parents[1])
PACKAGES = ("aml_identity", "aml_identity.datastore", "aml_identity.errors", "aml_identity.provisioning",
            "aml_identity.testing")  # fmt: skip
# What the runtime core must not import until the code that needs it runs.
HEAVY = ("azure.identity", "azure.core", "azure.mgmt", "msal", "requests", "urllib3", "jwt")
# The optional extras' modules: never loaded by the base paths.
EXTRAS = ("aml_identity.testing.arm", "jsonschema", "cryptography", "azure.storage", "mfusepy")


def _loaded_after(code: str, env: dict[str, str] | None = None) -> set[str]:
    """Run ``code`` in a fresh interpreter and return the top modules of HEAVY + EXTRAS it loaded."""
    probe = textwrap.dedent(code) + textwrap.dedent(f"""
        import json, sys
        watched = {HEAVY + EXTRAS!r}
        print(json.dumps(sorted(w for w in watched if any(m == w or m.startswith(w + ".") for m in sys.modules))))
    """)
    environ = {**(env or os.environ), "PYTHONPATH": SRC}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=environ, check=True)
    return set(json.loads(result.stdout.splitlines()[-1]))


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_resolves_and_all_is_alphabetical(package):
    module = importlib.import_module(package)
    assert module.__all__ == sorted(module.__all__)
    for name in module.__all__:
        assert getattr(module, name) is not None, name
        assert name in dir(module)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        module.nope  # noqa: B018


def test_the_root_exports_the_datastore_and_provisioning_surface():
    from aml_identity.datastore import transfer, uri
    from aml_identity.testing import sandbox

    assert aml_identity.download is transfer.download
    assert aml_identity.upload_on_exit is transfer.upload_on_exit
    assert aml_identity.DatastoreUri is uri.DatastoreUri
    assert issubclass(aml_identity.ClusterNotFoundError, aml_identity.ProvisioningError)
    assert issubclass(aml_identity.TransferError, aml_identity.DatastoreError)
    assert aml_identity.testing.Sandbox is sandbox.Sandbox
    assert aml_identity.testing.DatastoreSeed is sandbox.DatastoreSeed


def test_import_aml_identity_loads_nothing_heavy():
    assert _loaded_after("import aml_identity") == set()


def test_the_runtime_core_loads_nothing_heavy_until_it_is_used():
    code = """
        from aml_identity import (AmlIdentityError, ConfigurationError, DatastoreError, JobCredential, RetryPolicy,
                                  TransferError, default_credential, default_identity, get_token)
        import aml_identity.errors, aml_identity.testing, aml_identity.datastore, aml_identity.provisioning
    """
    assert _loaded_after(code) == set()


def test_building_the_command_line_and_loading_the_pytest_plugin_load_nothing_heavy():
    code = """
        import aml_identity.testing.pytest_plugin
        from aml_identity.cli import _build_parser
        _build_parser()
    """
    assert _loaded_after(code) == set()


def test_a_node_cache_hit_in_a_fresh_process_never_imports_the_endpoint_client(aml_job, clean_env):
    first = aml_identity.default_credential().get_token("https://storage.azure.com/.default")
    assert aml_job.request_count == 1
    code = f"""
        from aml_identity import get_token
        assert get_token("https://storage.azure.com").token == {first.token!r}
    """
    loaded = _loaded_after(code, env=dict(os.environ))
    assert aml_job.request_count == 1  # served from the node cache
    assert loaded <= {"azure.core"}  # the AccessToken type; not msal, requests, azure-identity or PyJWT


def test_errors_with_azure_bases_keep_them_and_their_public_module():
    assert issubclass(errors.IdentityUnavailableError, CredentialUnavailableError)
    assert issubclass(errors.IdentityNotConfiguredError, CredentialUnavailableError)
    assert errors.TokenRequestError.__module__ == "aml_identity.errors"
    error = errors.ConfigurationError("bad input", name="x")
    assert pickle.loads(pickle.dumps(errors.ClusterNotFoundError)) is errors.ClusterNotFoundError
    assert str(pickle.loads(pickle.dumps(error))) == "bad input"


def test_a_testing_name_without_the_extra_names_the_pip_line():
    code = """
        import sys
        sys.modules["jsonschema"] = None  # as if the testing extra were not installed
        import aml_identity.testing
        try:
            aml_identity.testing.ArmEmulator
        except aml_identity.errors.MissingExtraError as exc:
            assert isinstance(exc, ImportError)
            print(exc)
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": SRC}, check=True)  # fmt: skip
    assert result.stdout.strip() == (
        "aml_identity.testing.ArmEmulator needs the testing extra (jsonschema not installed): "
        "pip install 'aml-identity[testing]'"
    )


def test_a_command_whose_extra_is_missing_prints_one_line_and_exits_2(monkeypatch, capsys):
    monkeypatch.setattr(_extras, "missing", lambda extra: ("mfusepy",) if extra == "mount" else ())
    assert main(["mount", "azureml://datastores/inputs/paths/data"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "aml-identity: error: aml-identity mount needs the mount extra (mfusepy not installed): "
        "pip install 'aml-identity[mount]'\n"
    )


def test_the_extras_are_read_from_the_package_metadata():
    assert _extras.missing("testing") == ()  # the dev environment has every extra
    assert _extras.missing("no-such-extra") == ()
