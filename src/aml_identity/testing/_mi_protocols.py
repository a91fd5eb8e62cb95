"""The three managed-identity token protocols the emulator answers, as pure functions.

Each ``answer_*`` function takes one parsed request (URL-decoded query parameters, lower-cased header names)
and returns the :class:`Reply` the real endpoint would send, minting the token with
:func:`~aml_identity.testing._jwt.mint_token`. No sockets, threads or clocks here: the server in
:mod:`aml_identity.testing.identity_endpoint` feeds them, which keeps every protocol rule testable alone.

Sources (see ``notes/mi-protocol.md``): the Azure ML rules come from MSAL/azure-identity's client code and a
live recording; IMDS from the official OpenAPI spec (``specification/imds/.../2018-02-01/imds.json``) and
``how-to-use-vm-token.md``; App Service from its REST endpoint reference and MSAL's parser. Where the real
service's answer is unknown (a wrong Azure ML secret, a missing ``resource``...) the emulator's choice is a
named constant below, with the reason beside it.
"""

from __future__ import annotations

import hmac
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal

from aml_identity._environment import is_guid
from aml_identity.testing._identities import EmulatedIdentity
from aml_identity.testing._jwt import mint_token

__all__ = [
    "AML_API_VERSION",
    "AML_BAD_SECRET_STATUS",
    "AML_BAD_SECRET_TEXT",
    "AML_NOT_FOUND_TEXT",
    "APP_SERVICE_API_VERSION",
    "APP_SERVICE_TOKEN_PATH",
    "DEFAULT_AML_PATH",
    "EMULATED_USER_APP_ID",
    "EMULATED_USER_OBJECT_ID",
    "EMULATED_USER_UPN",
    "IMDS_API_VERSION",
    "IMDS_MULTIPLE_IDENTITIES",
    "IMDS_TOKEN_PATH",
    "Protocol",
    "Reply",
    "TokenSettings",
    "answer",
    "error_code_for",
    "json_reply",
    "method_not_allowed_reply",
    "protocol_for_path",
    "text_reply",
    "throttled_reply",
]

Protocol = Literal["azureml", "imds", "app_service"]

# --- Wire constants (every client in mi-protocol.md §1 uses exactly these) --------------------------------
AML_API_VERSION = "2017-09-01"
IMDS_API_VERSION = "2018-02-01"
APP_SERVICE_API_VERSION = "2019-08-01"
# Observed MSI_ENDPOINT on compute instances: http://127.0.0.1:46808/MSI/auth (jobs: /MSI/token).
DEFAULT_AML_PATH = "/MSI/auth"
IMDS_TOKEN_PATH = "/metadata/identity/oauth2/token"  # noqa: S105 - a URL path, not a password
# App Service's IDENTITY_ENDPOINT path is an implementation detail of the platform; this one is ours.
APP_SERVICE_TOKEN_PATH = "/msi/token"  # noqa: S105 - a URL path, not a password

# The Content-Types the real endpoints send: the Azure ML live recording shows bare "application/json";
# IMDS and App Service add a charset; Azure ML's text errors are "text/plain; charset=utf-8" (#31071, #32921).
_AML_JSON = "application/json"
_JSON = "application/json; charset=utf-8"
_TEXT = "text/plain; charset=utf-8"

# --- Azure ML ---------------------------------------------------------------------------------------------
# What Azure ML answers when `clientid` names no identity of the compute (for example an object id passed as
# a client id): a 404 with this text/plain body, verbatim from azure-sdk-for-python#32921.
AML_NOT_FOUND_TEXT = "InternalError - :{\nInfo: Request failure status code: 404\n\n}"
# A wrong or missing `secret` header. The body is what Azure ML sent azure-sdk-for-net#46932 (which sent no
# header); that issue does not record the status, so 401 is the emulator's choice. The received value is
# never echoed (it may be a real secret sent to the wrong place).
AML_BAD_SECRET_STATUS = HTTPStatus.UNAUTHORIZED
AML_BAD_SECRET_TEXT = "Invalid secret token header: "  # noqa: S105 - an error message
# Azure ML's answer to a malformed request is unknown; every Azure ML error seen in the wild is text/plain,
# so the emulator answers bad requests (wrong api-version, no resource) with a 400 text/plain body too.
AML_BAD_REQUEST_STATUS = HTTPStatus.BAD_REQUEST

# A request without a GUID `clientid` gets a token for the *user* who owns the compute (pvaneck's test in
# azure-sdk-for-python#36047), not for a managed identity. The emulated user, made up and recognisable:
EMULATED_USER_OBJECT_ID = "0e5e2000-0000-4000-8000-00000000a11d"
EMULATED_USER_UPN = "aml-user@contoso.example"
# The application the user's token is issued to (Azure ML's own first-party app in real life; not its id).
EMULATED_USER_APP_ID = "0a3b0000-0000-4000-8000-00000000a11d"
_USER_CLAIMS: Mapping[str, Any] = {
    "idtyp": "user",
    "upn": EMULATED_USER_UPN,
    "unique_name": EMULATED_USER_UPN,
    "name": "Azure ML user (emulated)",
    "scp": "user_impersonation",
    "amr": ["pwd", "mfa"],
}

# --- IMDS (imds.json 2018-02-01: the three selectors are mutually exclusive) -------------------------------
IMDS_SELECTORS = ("client_id", "object_id", "msi_res_id")
# Entra's documented extended lifetime for IMDS tokens in the spec's example ("ext_expires_in": "262800").
_IMDS_EXT_EXPIRES_IN = 262_800
IMDS_MULTIPLE_IDENTITIES = (
    "Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the "
    "token request"
)

# --- App Service 2019-08-01 (principal_id is documented; object_id is its alias MSAL sends) ----------------
APP_SERVICE_SELECTORS = ("client_id", "principal_id", "object_id", "mi_res_id")

# Error codes of imds.json's IdentityErrorResponse, by status; the defaults for Fault.status bodies too.
_ERROR_CODES = {
    400: "invalid_request",
    401: "unauthorized_client",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    429: "too_many_requests",
    500: "server_error",
    503: "service_unavailable",
}


@dataclass(frozen=True)
class Reply:
    """One HTTP answer: status, body and who the token in it (if any) was minted for.

    Attributes:
        status: The HTTP status code.
        body: The encoded body.
        content_type: The Content-Type header.
        headers: More headers (for example ``Retry-After``).
        identity: The identity a token was minted for, if any.
        user_token: Whether the token is a *user* token (Azure ML without a ``clientid``).
        payload: The JSON object of a 200 token response, kept so a fault can remove fields from it.
    """

    status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()
    identity: EmulatedIdentity | None = None
    user_token: bool = False
    payload: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class TokenSettings:
    """What every minted token shares.

    Attributes:
        now: The current time, epoch seconds (from the endpoint's clock).
        lifetime: Seconds until the token expires.
        refresh_in: When set, responses carry ``refresh_in`` with this many seconds.
        tenant_id: The tenant (``tid``, issuer).
    """

    now: int
    lifetime: int
    refresh_in: int | None
    tenant_id: str


def error_code_for(status: int) -> str:
    """Return the IMDS-style OAuth error code for an HTTP status (``server_error`` for unknown 5xx)."""
    return _ERROR_CODES.get(status, "server_error" if status >= HTTPStatus.INTERNAL_SERVER_ERROR else "bad_request")


def text_reply(status: int, text: str) -> Reply:
    """Return a ``text/plain`` reply."""
    return Reply(int(status), text.encode(), _TEXT)


def json_reply(
    status: int,
    payload: Mapping[str, Any],
    *,
    content_type: str = _JSON,
    identity: EmulatedIdentity | None = None,
    user_token: bool = False,
) -> Reply:
    """Return a JSON reply (keeping the payload when it is a token response)."""
    return Reply(
        int(status),
        json.dumps(payload).encode(),
        content_type,
        identity=identity,
        user_token=user_token,
        payload=payload if status == HTTPStatus.OK else None,
    )


def _oauth_error(status: int, error: str, description: str) -> Reply:
    return json_reply(status, {"error": error, "error_description": description})


def _app_service_error(status: int, message: str) -> Reply:
    # App Service errors carry statusCode/message (what MSAL's _obtain_token_on_app_service reads).
    return json_reply(status, {"statusCode": status, "message": message, "correlationId": str(uuid.uuid4())})


def throttled_reply(protocol: Protocol, description: str) -> Reply:
    """Return the 429 of an endpoint over its limits: a JSON error body and no ``Retry-After``, like IMDS."""
    if protocol == "app_service":
        return _app_service_error(HTTPStatus.TOO_MANY_REQUESTS, description)
    return _oauth_error(HTTPStatus.TOO_MANY_REQUESTS, "too_many_requests", description)


def method_not_allowed_reply(protocol: Protocol, method: str) -> Reply:
    """Return the 405 for a token request that is not a GET (every protocol here is GET only)."""
    description = f"Method {method} is not allowed; token requests are GET."
    if protocol == "app_service":
        reply = _app_service_error(HTTPStatus.METHOD_NOT_ALLOWED, description)
    elif protocol == "azureml":
        reply = text_reply(HTTPStatus.METHOD_NOT_ALLOWED, description)
    else:
        reply = _oauth_error(HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed", description)
    return Reply(reply.status, reply.body, reply.content_type, (("Allow", "GET"),))


def protocol_for_path(path: str, aml_path: str) -> Protocol | None:
    """Return which protocol a request path belongs to (a trailing ``/`` is tolerated, as az cli sends one)."""
    path = path.rstrip("/") or "/"
    if path == (aml_path.rstrip("/") or "/"):
        return "azureml"
    if path == IMDS_TOKEN_PATH:
        return "imds"
    if path == APP_SERVICE_TOKEN_PATH:
        return "app_service"
    return None


def _mint(resource: str, identity: EmulatedIdentity | None, settings: TokenSettings) -> str:
    expires_on = settings.now + settings.lifetime
    if identity is None:
        return mint_token(
            audience=resource,
            issued_at=settings.now,
            expires_on=expires_on,
            object_id=EMULATED_USER_OBJECT_ID,
            client_id=EMULATED_USER_APP_ID,
            tenant_id=settings.tenant_id,
            extra=_USER_CLAIMS,
        )
    return mint_token(
        audience=resource,
        issued_at=settings.now,
        expires_on=expires_on,
        object_id=identity.object_id,
        client_id=identity.client_id,
        tenant_id=settings.tenant_id,
        mi_resource_id=identity.resource_id,
    )


def _find(identities: Sequence[EmulatedIdentity], selector: str, value: str) -> EmulatedIdentity | None:
    attribute: Callable[[EmulatedIdentity], str] = {
        "client_id": lambda i: i.client_id,
        "clientid": lambda i: i.client_id,
        "object_id": lambda i: i.object_id,
        "principal_id": lambda i: i.object_id,
        "msi_res_id": lambda i: i.resource_id,
        "mi_res_id": lambda i: i.resource_id,
    }[selector]
    # GUIDs and ARM ids are case-insensitive (App Service's documented sample sends an upper-case client id).
    wanted = value.strip().lower()
    return next((i for i in identities if attribute(i).lower() == wanted), None)


def _secret_matches(sent: str | None, secret: str) -> bool:
    return sent is not None and hmac.compare_digest(sent.encode(), secret.encode())


def answer(
    protocol: Protocol,
    params: Mapping[str, str],
    headers: Mapping[str, str],
    *,
    identities: Sequence[EmulatedIdentity],
    secret: str,
    settings: TokenSettings,
) -> Reply:
    """Answer one token request as the real endpoint would.

    Args:
        protocol: Which endpoint was asked.
        params: The URL-decoded query parameters.
        headers: The request headers, names lower-cased.
        identities: The identities the endpoint serves.
        secret: The ``secret`` / ``X-IDENTITY-HEADER`` value it requires.
        settings: Clock, lifetime and tenant for the token.

    Returns:
        The reply.
    """
    if protocol == "azureml":
        return _answer_azureml(params, headers, identities, secret, settings)
    if protocol == "imds":
        return _answer_imds(params, headers, identities, settings)
    return _answer_app_service(params, headers, identities, secret, settings)


def _request_problem(params: Mapping[str, str], api_version: str) -> str | None:
    """Return what is wrong with the api-version or resource of a request, or None."""
    version = params.get("api-version")
    if version != api_version:
        return f"Unsupported api-version {version!r}; this endpoint serves {api_version}."
    if not params.get("resource"):
        return "Required query parameter 'resource' is missing."
    return None


def _selectors(params: Mapping[str, str], names: Sequence[str]) -> list[tuple[str, str]]:
    return [(name, params[name]) for name in names if params.get(name)]


def _answer_azureml(
    params: Mapping[str, str],
    headers: Mapping[str, str],
    identities: Sequence[EmulatedIdentity],
    secret: str,
    settings: TokenSettings,
) -> Reply:
    if not _secret_matches(headers.get("secret"), secret):
        return text_reply(AML_BAD_SECRET_STATUS, AML_BAD_SECRET_TEXT)
    problem = _request_problem(params, AML_API_VERSION)
    if problem:
        return text_reply(AML_BAD_REQUEST_STATUS, problem)
    resource = params["resource"]
    client_id = params.get("clientid", "")
    identity: EmulatedIdentity | None = None
    if is_guid(client_id):
        identity = _find(identities, "clientid", client_id)
        if identity is None:
            return text_reply(HTTPStatus.NOT_FOUND, AML_NOT_FOUND_TEXT)
    # No clientid, or not a GUID (the literal "clientid" of a compute without identity): a user token.
    # Other selectors (client_id, msi_res_id, object_id, resource_id) are unknown to Azure ML: ignored.
    payload: dict[str, Any] = {
        "access_token": _mint(resource, identity, settings),
        "expires_in": settings.lifetime,
        "expires_on": settings.now + settings.lifetime,
        "resource": resource,
        "token_type": "Bearer",
    }
    if settings.refresh_in is not None:
        payload["refresh_in"] = settings.refresh_in
    return json_reply(HTTPStatus.OK, payload, content_type=_AML_JSON, identity=identity, user_token=identity is None)


def _imds_identity(identities: Sequence[EmulatedIdentity], selectors: list[tuple[str, str]]) -> EmulatedIdentity | str:
    """Return the identity an IMDS request names, or the error description IMDS would answer with."""
    if len(selectors) > 1:
        return "client_id, object_id and msi_res_id are mutually exclusive; specify only one."
    if selectors:
        return _find(identities, *selectors[0]) or "Identity not found"
    # No selector: the system-assigned identity, else the only user-assigned one (mi-protocol.md §1.3).
    system = [i for i in identities if i.kind == "system"]
    users = [i for i in identities if i.kind == "user"]
    if system:
        return system[0]
    if len(users) == 1:
        return users[0]
    return IMDS_MULTIPLE_IDENTITIES if users else "Identity not found"


def _answer_imds(
    params: Mapping[str, str],
    headers: Mapping[str, str],
    identities: Sequence[EmulatedIdentity],
    settings: TokenSettings,
) -> Reply:
    if headers.get("metadata") != "true":  # must be lower-case "true" (the SSRF mitigation)
        return _oauth_error(HTTPStatus.BAD_REQUEST, "bad_request_102", "Required metadata header not specified")
    problem = _request_problem(params, IMDS_API_VERSION)
    if problem:
        return _oauth_error(HTTPStatus.BAD_REQUEST, "invalid_request", problem)
    selectors = _selectors(params, IMDS_SELECTORS)
    identity = _imds_identity(identities, selectors)
    if isinstance(identity, str):
        return _oauth_error(HTTPStatus.BAD_REQUEST, "invalid_request", identity)
    payload: dict[str, Any] = {
        "access_token": _mint(params["resource"], identity, settings),
        "client_id": identity.client_id,
        "expires_in": str(settings.lifetime),
        "expires_on": str(settings.now + settings.lifetime),
        "ext_expires_in": str(_IMDS_EXT_EXPIRES_IN),
        "not_before": str(settings.now),
        "resource": params["resource"],
        "token_type": "Bearer",
    }
    # The spec echoes the selector "specified in the request, if any".
    payload.update({name: value for name, value in selectors if name != "client_id"})
    if settings.refresh_in is not None:
        payload["refresh_in"] = str(settings.refresh_in)
    return json_reply(HTTPStatus.OK, payload, identity=identity)


def _app_service_identity(
    identities: Sequence[EmulatedIdentity], selectors: list[tuple[str, str]]
) -> EmulatedIdentity | str:
    """Return the identity an App Service request names, or the error message it would answer with."""
    if len(selectors) > 1:
        return "Specify only one of client_id, principal_id (object_id) and mi_res_id."
    if selectors:
        return _find(identities, *selectors[0]) or "Identity not found."
    # "If all ID parameters are omitted, the system-assigned identity is used."
    system = next((i for i in identities if i.kind == "system"), None)
    return system or "No system-assigned identity is enabled for this app."


def _answer_app_service(
    params: Mapping[str, str],
    headers: Mapping[str, str],
    identities: Sequence[EmulatedIdentity],
    secret: str,
    settings: TokenSettings,
) -> Reply:
    if not _secret_matches(headers.get("x-identity-header"), secret):
        return _app_service_error(HTTPStatus.UNAUTHORIZED, "Missing or invalid X-IDENTITY-HEADER.")
    problem = _request_problem(params, APP_SERVICE_API_VERSION)
    if problem:
        return _app_service_error(HTTPStatus.BAD_REQUEST, problem)
    identity = _app_service_identity(identities, _selectors(params, APP_SERVICE_SELECTORS))
    if isinstance(identity, str):
        return _app_service_error(HTTPStatus.BAD_REQUEST, identity)
    payload: dict[str, Any] = {
        "access_token": _mint(params["resource"], identity, settings),
        "expires_on": str(settings.now + settings.lifetime),
        "resource": params["resource"],
        "token_type": "Bearer",
        "client_id": identity.client_id,
    }
    if settings.refresh_in is not None:
        payload["refresh_in"] = str(settings.refresh_in)
    return json_reply(HTTPStatus.OK, payload, identity=identity)
