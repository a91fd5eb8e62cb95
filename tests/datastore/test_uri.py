"""DatastoreUri: every form of DESIGN section 4 parses to what it names and prints back unchanged."""

from __future__ import annotations

import pytest

from aml_identity.datastore import DatastoreUri
from aml_identity.errors import ConfigurationError

SUB = "00000000-0000-4000-8000-000000000001"

PUBLIC = "core.windows.net"
# Each URI, and the scheme, account, container, path and storage suffix it names.
STORAGE_FORMS = {
    "wasbs://data@acct.blob.core.windows.net/images/train/": ("wasbs", "acct", "data", "images/train/", PUBLIC),
    "wasb://data@acct.blob.core.windows.net/a.csv": ("wasb", "acct", "data", "a.csv", PUBLIC),
    "abfss://lake@acct.dfs.core.windows.net/raw/2024/": ("abfss", "acct", "lake", "raw/2024/", PUBLIC),
    "abfs://lake@acct.dfs.core.windows.net/x": ("abfs", "acct", "lake", "x", PUBLIC),
    "https://acct.blob.core.windows.net/data/images/train/": ("https", "acct", "data", "images/train/", PUBLIC),
    "https://acct.dfs.core.windows.net/lake/raw/f.parquet": ("https", "acct", "lake", "raw/f.parquet", PUBLIC),
    # sovereign clouds keep their suffix
    "wasbs://data@cnacct.blob.core.chinacloudapi.cn/p/": ("wasbs", "cnacct", "data", "p/", "core.chinacloudapi.cn"),
    "abfss://lake@gov.dfs.core.usgovcloudapi.net/p": ("abfss", "gov", "lake", "p", "core.usgovcloudapi.net"),
    "https://gov.blob.core.usgovcloudapi.net/data/x.bin": ("https", "gov", "data", "x.bin", "core.usgovcloudapi.net"),
    "https://deacct.blob.core.cloudapi.de/data/": ("https", "deacct", "data", "", "core.cloudapi.de"),
    # a whole container
    "wasbs://data@acct.blob.core.windows.net/": ("wasbs", "acct", "data", "", PUBLIC),
}


@pytest.mark.parametrize(("text", "expected"), STORAGE_FORMS.items())
def test_storage_forms_name_their_account_container_and_path(text, expected):
    uri = DatastoreUri.parse(text)
    assert (uri.scheme, uri.account, uri.container, uri.path, uri.endpoint_suffix) == expected
    account, suffix = expected[1], expected[4]
    assert not uri.is_named
    assert str(uri) == text
    assert DatastoreUri.parse(str(uri)) == uri
    assert uri.default_blob_endpoint() == f"https://{account}.blob.{suffix}"


def test_every_storage_form_of_one_location_agrees():
    forms = [
        "wasbs://data@acct.blob.core.windows.net/images/train/",
        "abfss://data@acct.dfs.core.windows.net/images/train/",
        "https://acct.blob.core.windows.net/data/images/train/",
    ]
    assert {(u.account, u.container, u.path) for u in map(DatastoreUri.parse, forms)} == {
        ("acct", "data", "images/train/")
    }


def test_long_azureml_form():
    text = (
        f"azureml://subscriptions/{SUB}/resourcegroups/rg-ml/workspaces/ws1/datastores/training/paths/imagenet/train/"
    )
    uri = DatastoreUri.parse(text)
    assert uri.is_named
    assert (uri.subscription_id, uri.resource_group, uri.workspace_name) == (SUB, "rg-ml", "ws1")
    assert (uri.datastore, uri.path) == ("training", "imagenet/train/")
    assert uri.account is None
    assert str(uri) == text


def test_short_azureml_form_and_case_insensitive_keywords():
    uri = DatastoreUri.parse("azureml://datastores/workspaceblobstore/paths/runs/42/model.pt")
    assert (uri.datastore, uri.path, uri.subscription_id) == ("workspaceblobstore", "runs/42/model.pt", None)
    assert str(uri) == "azureml://datastores/workspaceblobstore/paths/runs/42/model.pt"
    spelled = DatastoreUri.parse(f"azureml://subscriptions/{SUB}/resourceGroups/rg/workspaces/ws/datastores/d/paths/x")
    assert spelled.resource_group == "rg"
    assert DatastoreUri.parse(str(spelled)) == spelled


def test_https_paths_are_percent_decoded_and_encoded_back():
    uri = DatastoreUri.parse("https://myacct.blob.core.windows.net/data/my%20file%23.txt")
    assert uri.path == "my file#.txt"
    assert str(uri) == "https://myacct.blob.core.windows.net/data/my%20file%23.txt"


def test_joinpath_and_folder():
    uri = DatastoreUri.parse("wasbs://data@myacct.blob.core.windows.net/out")
    assert not uri.is_folder
    assert uri.joinpath("a/b.txt").path == "out/a/b.txt"
    assert DatastoreUri.parse("wasbs://data@myacct.blob.core.windows.net/out/").is_folder


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("s3://bucket/key", "unknown scheme"),
        ("http://myacct.blob.core.windows.net/data/x", "plain http:// is refused"),
        ("wasbs://myacct.blob.core.windows.net/data/x", "expected <container>@"),
        ("wasbs://data@myacct.dfs.core.windows.net/x", "wasbs:// addresses the blob endpoint"),
        ("abfss://data@myacct.blob.core.windows.net/x", "abfss:// addresses the dfs endpoint"),
        ("https://127.0.0.1:10000/devstoreaccount1/data/x", "AML_IDENTITY_BLOB_ENDPOINTS"),
        ("https://myacct.blob.core.windows.net/", "no valid container"),
        ("https://myacct.blob.core.windows.net/data/x?sv=2020&sig=abc", "query string"),
        ("wasbs://Data_Bad@myacct.blob.core.windows.net/x", "not a valid container name"),
        ("wasbs://data@MY_ACCT.blob.core.windows.net/x", "is not <account>.blob.<suffix>"),
        ("azureml://datastores/training", "datastores/<name>/paths/<path>"),
        ("azureml://subscriptions/s/workspaces/w/datastores/d/paths/x", "datastores/<name>/paths/<path>"),
        ("", "unknown scheme"),
    ],
)
def test_malformed_uris_name_the_input_and_list_the_accepted_forms(text, reason):
    with pytest.raises(ConfigurationError) as caught:
        DatastoreUri.parse(text)
    message = str(caught.value)
    assert repr(text) in message
    assert reason in message
    for form in ("azureml://datastores/<name>/paths/<path>", "wasbs://", "abfss://", "https://<account>.blob"):
        assert form in message
    assert isinstance(caught.value, ValueError)


def test_named_uri_has_no_endpoint_until_resolved():
    with pytest.raises(ConfigurationError, match="resolve it first"):
        DatastoreUri.parse("azureml://datastores/d/paths/x").default_blob_endpoint()
