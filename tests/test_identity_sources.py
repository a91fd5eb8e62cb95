"""Identity sources are one ordered table: detection follows it row by row, and the docs are generated from it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aml_identity import default_identity
from aml_identity._environment import JobEnvironment
from aml_identity.errors import IdentityUnavailableError
from aml_identity.identity import SOURCES, sources_markdown

DOCS = Path(__file__).resolve().parents[1] / "docs"
_SECTION = re.compile(r"<!-- BEGIN identity sources[^>]*-->\n(.*?)<!-- END identity sources -->", re.DOTALL)

# One environment per row that selects it (the Arc agent row depends on a file, not the environment).
ENVIRONMENTS = {
    "service_fabric": {"IDENTITY_ENDPOINT": "https://127.0.0.1:2377/metadata/identity/oauth2/token",
                       "IDENTITY_HEADER": "h", "IDENTITY_SERVER_THUMBPRINT": "ab"},
    "app_service": {"IDENTITY_ENDPOINT": "http://127.0.0.1:8081/msi/token", "IDENTITY_HEADER": "h"},
    "azureml": {"MSI_ENDPOINT": "http://127.0.0.1:46808/MSI/auth", "MSI_SECRET": "s",
                "DEFAULT_IDENTITY_CLIENT_ID": "9d9095eb-62c6-47f0-986f-bef3f4d9c956"},
    "azure_arc": {"IDENTITY_ENDPOINT": "http://localhost:40342/metadata/identity/oauth2/token",
                  "IMDS_ENDPOINT": "http://localhost:40342"},
    "workload_identity": {"AZURE_FEDERATED_TOKEN_FILE": "/var/run/token", "AZURE_TENANT_ID": "t",
                          "AZURE_CLIENT_ID": "9d9095eb-62c6-47f0-986f-bef3f4d9c956"},
    "imds": {},
}  # fmt: skip


def test_the_docs_section_is_the_rendered_table():
    pages = [p for p in sorted(DOCS.glob("*.md")) if _SECTION.search(p.read_text(encoding="utf-8"))]
    if not pages:
        pytest.skip("no docs page carries the identity-sources section")
    for page in pages:
        section = _SECTION.search(page.read_text(encoding="utf-8"))
        assert section is not None
        assert section.group(1) == sources_markdown(), f"{page.name} is stale: paste sources_markdown()'s output"


def test_the_table_lists_every_source_once_in_order_and_imds_last():
    rows = sources_markdown().splitlines()[2:]
    assert len(rows) == len(SOURCES)
    assert [r.source for r in SOURCES][-1] == "imds"
    assert {r.source for r in SOURCES} >= set(ENVIRONMENTS)


@pytest.mark.parametrize(("source", "environ"), ENVIRONMENTS.items(), ids=list(ENVIRONMENTS))
def test_each_rows_environment_selects_its_source_with_its_endpoint(source, environ):
    identity = default_identity(environ=environ)
    assert identity.source == source
    rule = next(r for r in SOURCES if r.source == source)
    env = JobEnvironment.from_environ(environ)
    assert rule.applies(env)
    found = rule.endpoint(env)
    assert found is not None
    assert identity.endpoint == found[0]


def test_earlier_rows_win_when_several_apply():
    both = {**ENVIRONMENTS["app_service"], **ENVIRONMENTS["azureml"]}
    assert default_identity(environ=both).source == "app_service"  # row 2 before row 3, as msal detects


def test_the_cloud_shell_row_refuses():
    with pytest.raises(IdentityUnavailableError, match="Cloud Shell"):
        default_identity(environ={"MSI_ENDPOINT": "http://127.0.0.1:50342/oauth2/token"})
