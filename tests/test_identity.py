"""default_identity(): which identity a process is, by DESIGN §2's rules, and every bad input named."""

from __future__ import annotations

import pytest
from azure.identity import CredentialUnavailableError

from aml_identity import (
    ConfigurationError,
    IdentityNotConfiguredError,
    IdentityUnavailableError,
    default_identity,
)
from aml_identity._environment import JobEnvironment

UAI = "0b5ad7e4-3c2f-4d1e-9a8b-7c6d5e4f3a2b"
OTHER = "9f8e7d6c-5b4a-4c3d-8e2f-1a0b9c8d7e6f"
AML = {"MSI_ENDPOINT": "http://127.0.0.1:46808/MSI/auth", "MSI_SECRET": "s3cret-value"}
UAI_ID = (
    "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/"
    "Microsoft.ManagedIdentity/userAssignedIdentities/uai-train"
)


class TestAzureML:
    def test_default_identity_client_id_is_sent_when_the_caller_names_none(self):
        identity = default_identity(environ={**AML, "DEFAULT_IDENTITY_CLIENT_ID": UAI})
        assert identity.source == "azureml"
        assert identity.client_id == UAI
        assert identity.selected_by == "DEFAULT_IDENTITY_CLIENT_ID"
        assert identity.endpoint == AML["MSI_ENDPOINT"]

    def test_an_explicit_client_id_wins(self):
        identity = default_identity(client_id=OTHER, environ={**AML, "DEFAULT_IDENTITY_CLIENT_ID": UAI})
        assert (identity.client_id, identity.selected_by) == (OTHER, "argument")

    @pytest.mark.parametrize("value", [None, "", "  ", "clientid", "CLIENTID"])
    def test_compute_without_identity_raises_not_configured(self, value):
        environ = dict(AML) if value is None else {**AML, "DEFAULT_IDENTITY_CLIENT_ID": value}
        with pytest.raises(IdentityNotConfiguredError) as info:
            default_identity(environ=environ)
        message = str(info.value)
        assert "DEFAULT_IDENTITY_CLIENT_ID" in message
        assert "Assign one" in message and "No token was requested" in message
        # A credential chain (DefaultAzureCredential, ChainedTokenCredential) moves on past it.
        assert isinstance(info.value, CredentialUnavailableError)

    def test_azure_client_id_does_not_replace_the_platform_default(self):
        identity = default_identity(environ={**AML, "DEFAULT_IDENTITY_CLIENT_ID": UAI, "AZURE_CLIENT_ID": OTHER})
        assert identity.client_id == UAI

    def test_malformed_default_identity_client_id_is_named(self):
        with pytest.raises(ConfigurationError) as info:
            default_identity(environ={**AML, "DEFAULT_IDENTITY_CLIENT_ID": "not-a-guid"})
        assert info.value.name == "DEFAULT_IDENTITY_CLIENT_ID"
        assert "'not-a-guid' is not a GUID" in str(info.value)

    @pytest.mark.parametrize("kwargs", [{"object_id": UAI}, {"resource_id": UAI_ID}])
    def test_object_and_resource_ids_are_refused_because_azure_ml_selects_by_client_id(self, kwargs):
        with pytest.raises(ConfigurationError) as info:
            default_identity(environ={**AML, "DEFAULT_IDENTITY_CLIENT_ID": UAI}, **kwargs)
        assert "client id only" in str(info.value)
        assert "az identity show" in str(info.value)

    @pytest.mark.parametrize("endpoint", ["127.0.0.1:46808/MSI/auth", "ftp://127.0.0.1/x", "file:///tmp/x", "nonsense"])
    def test_msi_endpoint_must_be_an_http_url(self, endpoint):
        with pytest.raises(ConfigurationError) as info:
            default_identity(environ={**AML, "MSI_ENDPOINT": endpoint, "DEFAULT_IDENTITY_CLIENT_ID": UAI})
        assert info.value.name == "MSI_ENDPOINT"
        assert repr(endpoint) in str(info.value)

    def test_msi_endpoint_off_loopback_needs_an_opt_in_because_the_secret_travels(self):
        environ = {**AML, "MSI_ENDPOINT": "http://10.1.2.3:46808/MSI/auth", "DEFAULT_IDENTITY_CLIENT_ID": UAI}
        with pytest.raises(ConfigurationError) as info:
            default_identity(environ=environ)
        assert "AML_IDENTITY_ALLOW_REMOTE_IDENTITY_ENDPOINT" in str(info.value)
        assert AML["MSI_SECRET"] not in str(info.value)
        opted_in = default_identity(environ={**environ, "AML_IDENTITY_ALLOW_REMOTE_IDENTITY_ENDPOINT": "1"})
        assert opted_in.endpoint == environ["MSI_ENDPOINT"]

    @pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]", "127.0.0.53"])
    def test_loopback_endpoints_are_accepted(self, host):
        identity = default_identity(
            environ={**AML, "MSI_ENDPOINT": f"http://{host}:46809/MSI/token", "DEFAULT_IDENTITY_CLIENT_ID": UAI}
        )
        assert identity.source == "azureml"

    def test_describe_names_the_identity_and_endpoint_but_no_secret(self):
        identity = default_identity(environ={**AML, "DEFAULT_IDENTITY_CLIENT_ID": UAI})
        text = identity.describe() + repr(identity)
        assert UAI in text and AML["MSI_ENDPOINT"] in text
        assert AML["MSI_SECRET"] not in text
        assert AML["MSI_SECRET"] not in repr(JobEnvironment.from_environ(AML))


class TestElsewhere:
    def test_imds_prefers_default_identity_client_id_then_azure_client_id_then_system(self):
        base = {"AZURE_POD_IDENTITY_AUTHORITY_HOST": "http://127.0.0.1:9"}
        both = default_identity(environ={**base, "DEFAULT_IDENTITY_CLIENT_ID": UAI, "AZURE_CLIENT_ID": OTHER})
        assert (both.source, both.client_id, both.selected_by) == ("imds", UAI, "DEFAULT_IDENTITY_CLIENT_ID")
        azure = default_identity(environ={**base, "AZURE_CLIENT_ID": OTHER})
        assert (azure.client_id, azure.selected_by) == (OTHER, "AZURE_CLIENT_ID")
        system = default_identity(environ=base)
        assert (system.client_id, system.selected_by, system.selector) == (None, "platform default", "system-assigned")
        assert system.endpoint == "http://127.0.0.1:9/metadata/identity/oauth2/token"

    def test_kubernetes_compute_placeholder_means_system_assigned(self):
        identity = default_identity(environ={"AZURE_POD_IDENTITY_AUTHORITY_HOST": "http://127.0.0.1:9",
                                             "DEFAULT_IDENTITY_CLIENT_ID": "clientid"})  # fmt: skip
        assert identity.selected_by == "platform default"

    def test_imds_accepts_object_and_resource_ids(self):
        base = {"AZURE_POD_IDENTITY_AUTHORITY_HOST": "http://127.0.0.1:9"}
        assert default_identity(object_id=UAI.upper(), environ=base).object_id == UAI
        assert default_identity(resource_id=UAI_ID, environ=base).resource_id == UAI_ID

    def test_imds_is_refused_in_a_loopback_only_environment(self):
        with pytest.raises(ConfigurationError) as info:
            default_identity(environ={"AML_IDENTITY_LOOPBACK_ONLY": "1"})
        assert "169.254.169.254" in str(info.value) and "IMDS" in str(info.value)

    def test_app_service(self):
        identity = default_identity(
            environ={"IDENTITY_ENDPOINT": "http://127.0.0.1:4141/msi/token", "IDENTITY_HEADER": "h"}
        )
        assert (identity.source, identity.endpoint) == ("app_service", "http://127.0.0.1:4141/msi/token")

    def test_service_fabric_refuses_a_selector(self):
        environ = {"IDENTITY_ENDPOINT": "https://10.0.0.4:2377/metadata/identity/oauth2/token",
                   "IDENTITY_HEADER": "h", "IDENTITY_SERVER_THUMBPRINT": "ab" * 20}  # fmt: skip
        assert default_identity(environ=environ).source == "service_fabric"
        with pytest.raises(ConfigurationError, match="configured in the cluster"):
            default_identity(client_id=UAI, environ=environ)

    def test_workload_identity_needs_a_client_id(self):
        environ = {"AZURE_FEDERATED_TOKEN_FILE": "/var/run/token", "AZURE_TENANT_ID": OTHER,
                   "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.com/"}  # fmt: skip
        with pytest.raises(ConfigurationError) as info:
            default_identity(environ=environ)
        assert info.value.name == "AZURE_CLIENT_ID"
        identity = default_identity(environ={**environ, "AZURE_CLIENT_ID": UAI})
        assert identity.source == "workload_identity"
        assert identity.endpoint == f"https://login.microsoftonline.com/{OTHER}/oauth2/v2.0/token"

    def test_cloud_shell_is_not_a_managed_identity(self):
        with pytest.raises(IdentityUnavailableError, match="Cloud Shell"):
            default_identity(environ={"MSI_ENDPOINT": "http://localhost:50342/oauth2/token"})


class TestBadInput:
    @pytest.mark.parametrize("value", ["abc", "0b5ad7e4-3c2f-4d1e-9a8b", "{0b5ad7e4-3c2f-4d1e-9a8b-7c6d5e4f3a2b}", ""])
    def test_malformed_client_id(self, value):
        with pytest.raises(ConfigurationError) as info:
            default_identity(client_id=value, environ={**AML, "DEFAULT_IDENTITY_CLIENT_ID": UAI})
        assert info.value.name == "client_id"
        assert "client (application) id" in str(info.value)

    def test_two_selectors(self):
        with pytest.raises(ConfigurationError, match="not client_id and object_id"):
            default_identity(client_id=UAI, object_id=OTHER, environ={})

    @pytest.mark.parametrize(
        "value",
        [
            "/subscriptions/x/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/u",
            UAI_ID.replace("userAssignedIdentities", "identities"),
            "uai-train",
        ],
    )
    def test_malformed_resource_id(self, value):
        with pytest.raises(ConfigurationError) as info:
            default_identity(resource_id=value, environ={"AZURE_POD_IDENTITY_AUTHORITY_HOST": "http://127.0.0.1:9"})
        assert info.value.name == "resource_id"
        assert "userAssignedIdentities/<name>" in str(info.value)


class TestJobEnvironment:
    @pytest.mark.parametrize(
        ("raw", "fragment"),
        [
            ("{not json", "is not valid JSON"),
            ('["https://127.0.0.1:1/a"]', "got a JSON list"),
            ('{"acct": 5}', "must be a URL string"),
            ('{"acct": "127.0.0.1:10000"}', "is not an http:// or https:// URL"),
        ],
    )
    def test_blob_endpoints_are_validated(self, raw, fragment):
        with pytest.raises(ConfigurationError) as info:
            JobEnvironment.from_environ({"AML_IDENTITY_BLOB_ENDPOINTS": raw})
        assert info.value.name == "AML_IDENTITY_BLOB_ENDPOINTS"
        assert fragment in str(info.value)
        assert "devstoreaccount1" in str(info.value)  # the example of the right form

    def test_blob_endpoints_parse(self):
        env = JobEnvironment.from_environ(
            {"AML_IDENTITY_BLOB_ENDPOINTS": '{"devstoreaccount1": "https://127.0.0.1:10443/devstoreaccount1/"}'}
        )
        assert env.blob_endpoints == {"devstoreaccount1": "https://127.0.0.1:10443/devstoreaccount1"}

    @pytest.mark.parametrize("value", ["http://127.0.0.1:8443", "management.azure.com"])
    def test_arm_endpoint_must_be_https(self, value):
        with pytest.raises(ConfigurationError, match="AML_IDENTITY_ARM_ENDPOINT"):
            JobEnvironment.from_environ({"AML_IDENTITY_ARM_ENDPOINT": value})

    @pytest.mark.parametrize("value", ["0", "-5", "soon"])
    def test_token_timeout_must_be_positive(self, value):
        with pytest.raises(ConfigurationError, match="AML_IDENTITY_TOKEN_TIMEOUT"):
            JobEnvironment.from_environ({"AML_IDENTITY_TOKEN_TIMEOUT": value})
