"""Property-based fuzzing of the parsers and validators that read what users, launchers and servers hand us.

Each parser must either return what it documents or raise its documented error (``ConfigurationError``, or
``None`` / an empty result where that is the contract), and round-trip where it prints what it parsed.
The runs are derandomized with no example database and a bounded number of examples, so CI sees the same
inputs every time; an input that once found a bug stays as an ``@example``.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import string
import uuid
from collections.abc import Callable
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from aml_identity._claims import IDENTITY_CLAIMS, identity_claims
from aml_identity._endpoint_response import EXPIRES_ON_FORMATS, parse_epoch
from aml_identity._environment import JobEnvironment, check_outbound_url, is_guid
from aml_identity._tokens import new_token
from aml_identity.datastore.uri import DatastoreUri
from aml_identity.errors import ConfigurationError
from aml_identity.testing.arm._ids import ArmId, resource_group_id
from aml_identity.testing.arm._openapi import SpecFinding
from aml_identity.testing.arm._swagger import FORMATS

T = TypeVar("T")

# Examples per property: enough to reach the corners of these small grammars, few enough that the whole file
# runs in seconds on a loaded 2-core machine. Derandomized with no database: every run sees the same inputs.
EXAMPLES = 150
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# --- shared strategies ---------------------------------------------------------------------------------------

# Text with the characters parsers trip on over-represented: separators, whitespace, newlines, escapes.
_TRICKY = "/@:.?#%$-_ \t\n\r\x00\x0b\x1f\x85\xa0\u2028é²K\u212a"
tricky_text = st.text(alphabet=st.sampled_from(string.ascii_letters + string.digits + _TRICKY), max_size=40)
any_text = st.one_of(tricky_text, st.text(max_size=40))
# JSON values, as a server's body may hold them (NaN and infinities included: Python's json reads them).
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), any_text
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(any_text, inner, max_size=4)),
    max_leaves=12,
)

# --- DatastoreUri.parse ------------------------------------------------------------------------------------

_CONTAINER = re.compile(r"(?:[a-z0-9](?:[a-z0-9]|-(?!-)){1,61}[a-z0-9]|\$root|\$web)")
accounts = st.from_regex(r"[a-z0-9]{3,24}", fullmatch=True)
containers = st.one_of(st.from_regex(r"[a-z0-9]([a-z0-9]|-(?!-)){1,20}[a-z0-9]", fullmatch=True), st.just("$web"))
suffixes = st.sampled_from(["core.windows.net", "core.chinacloudapi.cn", "core.usgovcloudapi.net"])
# Blob paths as a user writes them: no NUL, no surrounding white space (parse strips the URI), any other text.
blob_paths = st.text(
    alphabet=st.characters(blacklist_characters="\x00\n\r", blacklist_categories=("Cs",)), max_size=30
).map(str.strip)
names = st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True)


@st.composite
def canonical_uris(draw: st.DrawFn) -> str:
    """A URI in one of the accepted forms, spelled canonically."""
    path = draw(blob_paths)
    form = draw(st.sampled_from(["azureml-long", "azureml-short", "wasbs", "wasb", "abfss", "abfs", "https"]))
    if form == "azureml-long":
        sub, rg, ws, store = draw(st.tuples(names, names, names, names))
        return f"azureml://subscriptions/{sub}/resourcegroups/{rg}/workspaces/{ws}/datastores/{store}/paths/{path}"
    if form == "azureml-short":
        return f"azureml://datastores/{draw(names)}/paths/{path}"
    account, container, suffix = draw(accounts), draw(containers), draw(suffixes)
    if form == "https":
        return str(DatastoreUri(scheme="https", path=path, account=account, container=container,
                                endpoint_suffix=suffix, service="blob"))  # fmt: skip
    service = "blob" if form.startswith("wasb") else "dfs"
    return f"{form}://{container}@{account}.{service}.{suffix}/{path}"


@st.composite
def mangled_uris(draw: st.DrawFn) -> str:
    """A canonical URI with a few characters inserted, replaced or cut: what a typo or a bad template makes."""
    text = draw(canonical_uris())
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["insert", "replace", "cut"]))
        piece = draw(st.text(alphabet=st.sampled_from(_TRICKY + "AZaz09"), min_size=1, max_size=2))
        if action == "insert":
            text = text[:at] + piece + text[at:]
        elif action == "replace":
            text = text[:at] + piece + text[at + 1 :]
        else:
            text = text[:at] + text[at + 1 :]
    return text


def _outcome(call: Callable[[], T]) -> tuple[T | None, ConfigurationError | None]:
    """What ``call`` returned, or the ConfigurationError it raised (any other exception propagates)."""
    try:
        return call(), None
    except ConfigurationError as exc:
        return None, exc


@FUZZ
@given(st.one_of(any_text, mangled_uris(), st.builds(lambda s, r: s + r, st.sampled_from(
    ["azureml://", "wasbs://", "abfss://", "https://", "AZUREML://datastores/", "http://"]), any_text)))  # fmt: skip
@example("wasbs://abc\n@account.blob.core.windows.net/x")  # a newline before the @ passed as the container
@example("wasbs://abc@account.blob.core.windows.net\n/x")  # and one after the host passed as the host
@example("https://account.blob.core.windows.net/abc\n/x")
def test_datastore_uri_parse_raises_only_configuration_error_and_round_trips(text):
    uri, error = _outcome(lambda: DatastoreUri.parse(text))
    if uri is None:
        assert error is not None
        assert error.name == "uri"
        return
    assert DatastoreUri.parse(str(uri)) == uri
    if uri.scheme == "azureml":
        assert uri.datastore
        return
    # What it parsed obeys Azure's naming rules (a line break must not slip through a `$` anchor).
    assert re.fullmatch(r"[a-z0-9]{3,24}", uri.account or "")
    assert _CONTAINER.fullmatch(uri.container or "")
    assert re.fullmatch(r"[a-z0-9-]+(?:\.[a-z0-9-]+)+", uri.endpoint_suffix or "")


@FUZZ
@given(canonical_uris())
def test_canonical_datastore_uris_print_back_unchanged(text):
    uri = DatastoreUri.parse(text)
    assert str(uri) == text
    assert DatastoreUri.parse(str(uri)) == uri


# --- ARM resource ids ------------------------------------------------------------------------------------

segments = st.text(alphabet=st.characters(blacklist_characters="/", blacklist_categories=("Cs",)), min_size=1,
                   max_size=12).filter(lambda s: s.strip("/") == s)  # fmt: skip


def _rebuild(parsed: ArmId) -> str:
    """The id ``parsed`` came from, in ARM's canonical casing."""
    value = f"/subscriptions/{parsed.subscription}"
    if parsed.resource_group is not None:
        value = resource_group_id(parsed.subscription, parsed.resource_group)
    if parsed.namespace is not None:
        pairs = "/".join(f"{t}/{n}" for t, n in zip(parsed.types, parsed.names, strict=True))
        value += f"/providers/{parsed.namespace}/{pairs}"
    return value


@FUZZ
@given(st.one_of(any_text, st.builds(lambda r: "/subscriptions/" + r, any_text)))
@example("/subscriptions/s/resourceGroups/g/providers/N/t//x/n")
def test_arm_id_parse_returns_none_or_the_parts_of_its_input(text):
    parsed = ArmId.parse(text)
    if parsed is None:
        return
    assert _rebuild(parsed).lower() == text.rstrip("/").lower()
    assert parsed.kind in ("subscription", "resourceGroup", "resource")
    assert all(parsed.names), "an empty name segment is not a resource name"


@FUZZ
@given(segments, st.none() | segments, st.lists(st.tuples(segments, segments), max_size=3), segments)
@example(sub="0", group="0", pairs=[("0", "\n")], namespace="0")  # a `$` anchor dropped a name's line break
def test_arm_ids_round_trip_through_parse(sub, group, pairs, namespace):
    has_resource = group is not None and bool(pairs)
    original = ArmId(sub, group, namespace if has_resource else None,
                     tuple(t for t, _ in pairs) if has_resource else (),
                     tuple(n for _, n in pairs) if has_resource else ())  # fmt: skip
    text = _rebuild(original)
    assert ArmId.parse(text) == original
    assert ArmId.parse(text.upper()).kind == original.kind  # ARM ids are case-insensitive
    assert ArmId.parse(text + "/") == original


# --- token expiry (expires_on / expires_in / refresh_in) -------------------------------------------------


@FUZZ
@given(json_values)
@example(float("inf"))
@example(float("nan"))
@example("inf")
@example("-Infinity")
@example("1e999")
def test_token_times_from_any_json_value_are_a_whole_number_or_absent(value):
    parsed = parse_epoch(value)
    assert parsed is None or isinstance(parsed, int)


@FUZZ
@given(st.integers(-(10**12), 10**12), st.sampled_from(["{}", " {} ", "{}.0", "{}.9"]))
def test_token_times_read_numbers_and_numeric_strings(number, shape):
    assert parse_epoch(number) == number
    assert parse_epoch(shape.format(number)) == number


@FUZZ
@given(st.datetimes(min_value=dt.datetime(1971, 1, 1), max_value=dt.datetime(2999, 12, 31)),  # noqa: DTZ001
       st.sampled_from(EXPIRES_ON_FORMATS))  # fmt: skip
def test_token_times_read_the_date_strings_app_service_sends(when, fmt):
    aware = when.replace(microsecond=0, tzinfo=dt.timezone.utc)
    assert parse_epoch(aware.strftime(fmt)) == int(aware.timestamp())


@FUZZ
@given(st.integers(0, 2**40), st.integers(-(10**6), 10**8), st.none() | st.integers(-(10**6), 10**8))
def test_refresh_schedule_stays_between_fetch_and_expiry(now, lifetime, refresh_in):
    token = new_token("t", expires_on=now + lifetime, now=now, refresh_in=refresh_in)
    assert token.refresh_on <= token.mandatory_on <= token.expires_on
    if lifetime >= 0:
        assert token.refresh_on >= now


# --- JWT claims ----------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@st.composite
def jwt_shaped(draw: st.DrawFn) -> str:
    """Three dot-separated parts whose middle one may or may not decode to a JSON object."""
    header = _b64(json.dumps(draw(st.sampled_from([{"alg": "none"}, {"alg": "RS256", "typ": "JWT"}, {}]))).encode())
    payload = draw(st.one_of(
        st.builds(lambda v: json.dumps(v).encode(), json_values),
        st.binary(max_size=30),
    ))  # fmt: skip
    return f"{header}.{_b64(payload)}.{draw(st.sampled_from(['', 'c2ln', '!!']))}"


claim_values = st.one_of(st.integers(-(2**40), 2**40), any_text, st.lists(any_text, max_size=2))


@FUZZ
@given(st.one_of(any_text, jwt_shaped()))
def test_identity_claims_of_anything_is_a_subset_of_the_identity_claims(token):
    claims = identity_claims(token)
    assert isinstance(claims, dict)
    assert set(claims) <= set(IDENTITY_CLAIMS)


@FUZZ
@given(st.dictionaries(st.sampled_from([*IDENTITY_CLAIMS, "sub", "nbf", "xms_cc"]), claim_values, max_size=8))
@example({"iss": 0, "exp": "soon"})  # claims of the wrong type are shown as they are, not refused
def test_identity_claims_read_back_what_the_endpoint_sent(claims):
    header = _b64(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    token = f"{header}.{_b64(json.dumps(claims).encode())}.c2ln"
    assert identity_claims(token) == {k: v for k, v in claims.items() if k in IDENTITY_CLAIMS}


# --- launcher variables ----------------------------------------------------------------------------------

RANK_VARIABLES = ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID")
rank_values = st.one_of(
    st.integers(0, 10**6).map(str),
    st.integers(0, 999).map(lambda n: f" {n:04d}\t"),
    any_text,
)


@FUZZ
@given(st.dictionaries(st.sampled_from(RANK_VARIABLES), rank_values, max_size=4))
@example({"LOCAL_RANK": "7" * 5000})  # more digits than int() converts: the same error as any other non-rank
@example({"LOCAL_RANK": "²"})
def test_local_rank_is_the_first_launcher_variable_or_a_configuration_error(environ):
    first = next(((name, environ[name].strip()) for name in RANK_VARIABLES
                  if name in environ and environ[name].strip()), None)  # fmt: skip
    env, error = _outcome(lambda: JobEnvironment.from_environ(environ))
    if error is not None:
        assert first is not None
        assert error.name == first[0]
        assert first[0] in error.message
    elif first is None:
        assert env.local_rank is None
    else:
        assert env.local_rank == int(first[1])


ENVIRONMENT_VARIABLES = (
    *RANK_VARIABLES, "AML_IDENTITY_ARM_ENDPOINT", "AML_IDENTITY_TOKEN_TIMEOUT", "AML_IDENTITY_BLOB_ENDPOINTS",
    "MSI_ENDPOINT", "DEFAULT_IDENTITY_CLIENT_ID", "AML_IDENTITY_LOOPBACK_ONLY",
)  # fmt: skip
environment_values = st.one_of(
    any_text,
    st.builds(lambda r: "https://" + r, any_text),
    st.builds(json.dumps, json_values),
    st.builds(lambda k, v: json.dumps({k: v}), any_text, st.builds(lambda r: "https://" + r, any_text)),
)


@FUZZ
@given(st.dictionaries(st.sampled_from(ENVIRONMENT_VARIABLES), environment_values, max_size=5))
@example({"AML_IDENTITY_ARM_ENDPOINT": "https://["})  # urlsplit's own ValueError escaped
@example({"AML_IDENTITY_BLOB_ENDPOINTS": '{"acct": "https://[::1"}'})
@example({"MSI_ENDPOINT": "http://[::1", "AML_IDENTITY_LOOPBACK_ONLY": "1"})
def test_any_environment_reads_or_raises_configuration_error(environ):
    env, error = _outcome(lambda: JobEnvironment.from_environ(environ))
    if error is not None:
        assert error.name in ENVIRONMENT_VARIABLES
        return
    assert env.token_timeout is None or env.token_timeout > 0
    if env.msi_endpoint is not None:
        # AML_IDENTITY_LOOPBACK_ONLY refuses a non-loopback (or unreadable) endpoint with its own error.
        _, refused = _outcome(lambda: check_outbound_url(env.msi_endpoint, env, what="identity endpoint"))
        assert refused is None or refused.name == "AML_IDENTITY_LOOPBACK_ONLY"


@FUZZ
@given(st.one_of(st.uuids().map(str), any_text, st.uuids().map(lambda u: str(u) + "\n")))
@example("00000000-0000-0000-0000-000000000000\n")  # a `$` anchor let the trailing newline through
def test_is_guid_accepts_exactly_the_canonical_guid_form(text):
    try:
        canonical = str(uuid.UUID(text)) == text.lower()
    except ValueError:
        canonical = False
    assert is_guid(text) == canonical


# --- the ARM emulator's spec validators ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def specs():
    from aml_identity.testing.arm import ArmSpecs

    return ArmSpecs.load()


CREATE = {
    "location": "eastus",
    "identity": {"type": "SystemAssigned"},
    "properties": {
        "computeType": "AmlCompute",
        "properties": {"vmSize": "STANDARD_DS3_V2", "scaleSettings": {"minNodeCount": 0, "maxNodeCount": 4}},
    },
}


@st.composite
def create_bodies(draw: st.DrawFn) -> object:
    """The valid compute body with one value somewhere in it replaced by any JSON value."""
    body = json.loads(json.dumps(CREATE))
    node = body
    keys = ["properties", "properties", "scaleSettings"][: draw(st.integers(0, 3))]
    for key in keys:
        node = node[key]
    node[draw(st.sampled_from([*node, "extra"]))] = draw(json_values)
    return body


OPERATIONS = (
    "Compute_CreateOrUpdate",
    "Compute_Update",
    "RoleAssignments_Create",
    "ManagementLocks_CreateOrUpdateByScope",
)


@FUZZ
@given(st.sampled_from(OPERATIONS), st.one_of(json_values, create_bodies()))
def test_spec_validators_answer_any_body_with_findings_never_an_exception(specs, operation_id, body):
    findings = specs.request_errors(operation_id, body)
    assert all(isinstance(f, SpecFinding) and f.path.startswith("$") for f in findings)
    response = specs.response_errors(operation_id, 200, body)
    assert all(isinstance(f, SpecFinding) for f in response)
    assert all(isinstance(f, SpecFinding) for f in specs.operation_status_errors(body))


@FUZZ
@given(st.one_of(any_text, st.uuids().map(str), st.uuids().map(lambda u: str(u) + "\n")))
@example("00000000-0000-0000-0000-000000000000\n")
def test_the_uuid_format_takes_exactly_canonical_guids(text):
    assert FORMATS.conforms(text, "uuid") == is_guid(text)


@FUZZ
@given(st.one_of(any_text, st.from_regex(r"P(\d+D)?(T(\d+H)?(\d+M)?(\d+S)?)?", fullmatch=True)))
@example("PT30M\n")
def test_the_duration_and_date_time_formats_answer_any_text(text):
    conforms = FORMATS.conforms(text, "duration")
    assert isinstance(conforms, bool)
    if conforms:
        assert "\n" not in text
    assert isinstance(FORMATS.conforms(text, "date-time"), bool)
