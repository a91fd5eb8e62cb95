"""The ARM emulator's HTTP face: authentication, routing, spec validation and the handlers."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from aml_identity.testing.arm._authentication import ARM_AUDIENCES, authenticate, error_response
from aml_identity.testing.arm._authorization import AuthorizationHandlers
from aml_identity.testing.arm._http import Request, Response
from aml_identity.testing.arm._ids import workspace_id
from aml_identity.testing.arm._state import (
    CREATE_SECONDS,
    DELETE_SECONDS,
    UPDATE_SECONDS,
    ArmError,
    ArmState,
    Compute,
    _canonical,
    family_usage_name,
)

if TYPE_CHECKING:
    from aml_identity.testing.arm._openapi import ArmSpecs, SpecFinding

__all__ = ["API_VERSIONS", "ARM_AUDIENCES", "SPEC_API_VERSIONS", "ArmApi", "RecordedArmRequest"]

# How many schema errors an error message lists before it says "and N more".
_MAX_LISTED_ERRORS = 5
_COMPUTE_TYPES = (
    "AKS", "Kubernetes", "AmlCompute", "ComputeInstance", "DataFactory", "VirtualMachine", "HDInsight",
    "Databricks", "DataLakeAnalytics", "SynapseSpark",
)  # fmt: skip
# The api-version of the official spec each resource type is validated against.
SPEC_API_VERSIONS: Mapping[str, str] = {
    "ml": "2025-12-01",
    "authorization": "2022-04-01",
    "locks": "2020-05-01",
    "msi": "2026-05-31",
}
# Every api-version each resource type answers at, newest first. Real ARM serves every published version of a
# resource type; the emulator serves its spec's, and for Microsoft.MachineLearningServices also those the
# current official SDKs send, with bodies of the same shape (validated against the spec's):
#   azure-mgmt-machinelearningservices 1.0.1: 2020-08-01, its only version and its client's default;
#   azure-ai-ml 1.35.2: 2023-08-01-preview for computes (and the workspace GET that finds their location),
#   and the versions its other MLClient service clients are pinned to.
# tests/testing/arm/test_sdk_api_versions.py reads these from the installed packages and checks the list.
API_VERSIONS: Mapping[str, tuple[str, ...]] = {
    "ml": (
        "2025-12-01", "2025-01-01-preview", "2024-10-01-preview", "2024-04-01-preview", "2024-01-01-preview",
        "2023-10-01", "2023-08-01-preview", "2023-06-01-preview", "2023-04-01-preview", "2023-04-01",
        "2023-02-01-preview", "2022-10-01-preview", "2022-10-01", "2022-05-01", "2022-02-01-preview",
        "2020-08-01",
    ),
    "authorization": ("2022-04-01",),
    "locks": ("2020-05-01",),
    "msi": ("2026-05-31",),
}  # fmt: skip

_SUB = r"/subscriptions/(?P<sub>[^/]+)"
_WS = _SUB + r"/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.MachineLearningServices/workspaces/(?P<ws>[^/]+)"
_LOC = _SUB + r"/providers/Microsoft\.MachineLearningServices/locations/(?P<loc>[^/]+)"
_SCOPE = r"(?P<scope>/subscriptions/.+?)"
_ROLES = r"/providers/Microsoft\.Authorization/roleAssignments"
_LOCKS = r"/providers/Microsoft\.Authorization/locks"
_NAME = r"/(?P<name>[^/]+)"


@dataclass(frozen=True)
class RecordedArmRequest:
    """A request the emulator answered.

    Attributes:
        method: HTTP method.
        path: URL path.
        query: Query parameters.
        body: The parsed JSON body (None without one).
        status: The status it answered.
        operation_id: The spec operation it was routed to (None when unrouted).
    """

    method: str
    path: str
    query: Mapping[str, str]
    body: Any
    status: int
    operation_id: str | None


Handler = Callable[[Request, Mapping[str, str]], Response]


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    operation_id: str | None  # None: validated by the handler (async-operation status)
    api: str | None
    handler: Handler


class ArmApi(AuthorizationHandlers):
    """Answers ARM requests from an :class:`ArmState`, validating bodies against the specs."""

    def __init__(
        self,
        state: ArmState,
        specs: ArmSpecs,
        *,
        endpoint: Callable[[], str],
        retry_after: float,
        advance: Callable[[float], None] | None,
        seconds_per_request: float,
        page_size: int | None = None,
    ) -> None:
        """Wire the API to the state; ``endpoint`` returns the emulator's base URL once it listens."""
        self.state = state
        self.specs = specs
        self._endpoint = endpoint
        self.retry_after = retry_after
        self._advance = advance
        self._seconds_per_request = seconds_per_request
        self.page_size = page_size
        self.requests: list[RecordedArmRequest] = []
        self.rejected: list[tuple[RecordedArmRequest, list[SpecFinding]]] = []
        self.spec_violations: list[str] = []
        self._routes = self._build_routes()

    # --- plumbing ------------------------------------------------------------------------------------------

    def _build_routes(self) -> list[_Route]:
        table: list[tuple[str, str, str | None, str | None, Handler]] = [
            ("GET", _WS, "Workspaces_Get", "ml", self._get_workspace),
            ("GET", _WS + "/computes", "Compute_List", "ml", self._list_computes),
            ("GET", _WS + "/computes/(?P<name>[^/]+)", "Compute_Get", "ml", self._get_compute),
            ("PUT", _WS + "/computes/(?P<name>[^/]+)", "Compute_CreateOrUpdate", "ml", self._put_compute),
            ("PATCH", _WS + "/computes/(?P<name>[^/]+)", "Compute_Update", "ml", self._patch_compute),
            ("DELETE", _WS + "/computes/(?P<name>[^/]+)", "Compute_Delete", "ml", self._delete_compute),
            ("GET", _WS + "/datastores", "Datastores_List", "ml", self._list_datastores),
            ("GET", _WS + "/datastores/(?P<name>[^/]+)", "Datastores_Get", "ml", self._get_datastore),
            ("GET", _LOC + "/vmSizes", "VirtualMachineSizes_List", "ml", self._vm_sizes),
            ("GET", _LOC + "/usages", "Usages_List", "ml", self._usages),
            ("GET", _LOC + "/computeOperationsStatus/(?P<op>[^/]+)", None, None, self._operation_status),
            ("GET", _LOC + "/computeOperationsResults/(?P<op>[^/]+)", None, None, self._operation_result),
            (
                "GET",
                _SUB + r"/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.ManagedIdentity/"
                r"userAssignedIdentities/(?P<name>[^/]+)",
                "UserAssignedIdentities_Get",
                "msi",
                self._get_identity,
            ),
            ("GET", _SCOPE + _ROLES, "RoleAssignments_ListForScope", "authorization",
             self._list_role_assignments),
            ("GET", _SCOPE + _ROLES + _NAME,
             "RoleAssignments_Get", "authorization", self._get_role_assignment),
            ("PUT", _SCOPE + _ROLES + _NAME,
             "RoleAssignments_Create", "authorization", self._put_role_assignment),
            ("DELETE", _SCOPE + _ROLES + _NAME,
             "RoleAssignments_Delete", "authorization", self._delete_role_assignment),
            ("GET", _SCOPE + _LOCKS, "ManagementLocks_ListByScope", "locks", self._list_locks),
            ("GET", _SCOPE + _LOCKS + _NAME,
             "ManagementLocks_GetByScope", "locks", self._get_lock),
            ("PUT", _SCOPE + _LOCKS + _NAME,
             "ManagementLocks_CreateOrUpdateByScope", "locks", self._put_lock),
            ("DELETE", _SCOPE + _LOCKS + _NAME,
             "ManagementLocks_DeleteByScope", "locks", self._delete_lock),
        ]  # fmt: skip
        return [
            _Route(method, re.compile(f"^{pattern}/?$", re.IGNORECASE), op, api, handler)
            for method, pattern, op, api, handler in table
        ]

    def __call__(self, request: Request) -> Response:
        """Answer one request (called from the server's worker threads)."""
        path = unquote(request.path)
        body: Any = None
        route: _Route | None = None
        try:
            self._authenticate(request)
            with self.state.lock:
                if self._seconds_per_request and self._advance is not None:
                    self._advance(self._seconds_per_request)
            route, params = self._route(request.method, path)
            self._check_api_version(request, route)
            try:
                body = request.json()
            except ValueError as exc:
                raise ArmError(
                    400,
                    "InvalidRequestContent",
                    f"The request content was invalid and could not be deserialized: {exc}.",
                ) from None
            if route.operation_id is not None and request.method in ("PUT", "PATCH", "POST"):
                errors = self.specs.request_errors(route.operation_id, body)
                if errors:
                    self._reject(request, path, body, route, errors)
                    raise self._invalid(route.operation_id, errors)
            with self.state.lock:
                response = route.handler(request, params)
        except ArmError as exc:
            response = error_response(exc)
        if route is not None and route.operation_id is not None:
            self._check_response(route.operation_id, response)
        self.requests.append(
            RecordedArmRequest(
                request.method,
                path,
                dict(request.query),
                body,
                response.status,
                route.operation_id if route else None,
            )
        )
        return response

    def _reject(self, request: Request, path: str, body: Any, route: _Route, errors: list[SpecFinding]) -> None:
        recorded = RecordedArmRequest(request.method, path, dict(request.query), body, 400, route.operation_id)
        self.rejected.append((recorded, errors))

    @staticmethod
    def _invalid(operation_id: str, errors: list[SpecFinding]) -> ArmError:
        listed = "; ".join(str(e) for e in errors[:_MAX_LISTED_ERRORS])
        more = f" (and {len(errors) - _MAX_LISTED_ERRORS} more)" if len(errors) > _MAX_LISTED_ERRORS else ""
        return ArmError(
            400,
            "InvalidRequestContent",
            f"The request body does not match the official spec of {operation_id}: {listed}{more}.",
            target=errors[0].path,
        )

    def _check_response(self, operation_id: str, response: Response) -> None:
        errors = self.specs.response_errors(operation_id, response.status, response.body)
        if errors:
            self._violation(f"{operation_id} {response.status}", errors, response)

    def _violation(self, what: str, errors: list[SpecFinding], response: Response) -> None:
        text = f"the emulator's {what} response does not match the spec: " + "; ".join(map(str, errors))
        self.spec_violations.append(text)
        response.status, response.headers = 500, {}
        response.body = {"error": {"code": "EmulatorSpecViolation", "message": text}}

    def _route(self, method: str, path: str) -> tuple[_Route, dict[str, str]]:
        known_path = False
        for route in self._routes:
            match = route.pattern.match(path)
            if match:
                known_path = True
                if route.method == method:
                    return route, {k: v for k, v in match.groupdict().items() if v is not None}
        if known_path:
            raise ArmError(405, "MethodNotAllowed", f"The aml-identity ARM emulator does not serve {method} {path}.")
        raise ArmError(
            404,
            "InvalidResourceType",
            f"The aml-identity ARM emulator does not serve {method} {path} (not modelled).",
        )

    def _check_api_version(self, request: Request, route: _Route) -> None:
        if route.api is None:
            return
        version = request.param("api-version")
        if not version:
            raise ArmError(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        supported = API_VERSIONS[route.api]
        if version.lower() not in supported:
            # ARM's own answer, word for word: the versions it lists are the ones to use.
            raise ArmError(
                400,
                "InvalidApiVersionParameter",
                f"The api-version '{version}' is invalid. The supported versions are '{','.join(supported)}'.",
            )

    def _authenticate(self, request: Request) -> None:
        authenticate(request, now=self.state.now(), tenant_id=self.state.tenant_id)

    def _async_headers(
        self, request: Request, op_id: str, subscription: str, location: str, *, with_location: bool
    ) -> dict[str, str]:
        # The status URLs carry the api-version the client used, as ARM's do.
        version = request.param("api-version") or SPEC_API_VERSIONS["ml"]
        base = (
            f"{self._endpoint()}/subscriptions/{subscription}/providers/Microsoft.MachineLearningServices/"
            f"locations/{location}"
        )
        headers = {
            "Azure-AsyncOperation": f"{base}/computeOperationsStatus/{op_id}?api-version={version}",
            "Retry-After": _retry_after_text(self.retry_after),
        }
        if with_location:
            headers["Location"] = f"{base}/computeOperationsResults/{op_id}?api-version={version}"
        return headers

    # --- workspaces, computes -----------------------------------------------------------------------------

    def _workspace(self, p: Mapping[str, str]) -> dict[str, Any]:
        ws_id = workspace_id(p["sub"], p["rg"], p["ws"])
        workspace = self.state.workspaces.get(ws_id.lower())
        if workspace is None:
            raise ArmError(
                404,
                "ResourceNotFound",
                f"The Resource 'Microsoft.MachineLearningServices/workspaces/{p['ws']}' under resource group "
                f"'{p['rg']}' was not found.",
            )
        return workspace

    def _get_workspace(self, _request: Request, p: Mapping[str, str]) -> Response:
        return Response(200, self._workspace(p))

    def _compute(self, p: Mapping[str, str]) -> Compute | None:
        workspace = self._workspace(p)
        compute = self.state.computes.get(f"{workspace['id']}/computes/{p['name']}".lower())
        if compute is None or not self.state.evolve(compute):
            return None
        return compute

    def _missing_compute(self, p: Mapping[str, str]) -> ArmError:
        return ArmError(
            404,
            "ResourceNotFound",
            f"The compute '{p['name']}' was not found in workspace '{p['ws']}' (resource group '{p['rg']}').",
        )

    def _page(self, request: Request, items: list[Any]) -> Response:
        """A list answer, split into pages of ``page_size`` linked by ``nextLink`` (as ARM pages long lists)."""
        if not self.page_size:
            return Response(200, {"value": items})
        token = request.param("$skiptoken") or "0"
        start = int(token) if token.isdigit() else 0
        body: dict[str, Any] = {"value": items[start : start + self.page_size]}
        if start + self.page_size < len(items):
            query = "&".join(
                f"{quote(k, safe='$')}={quote(v, safe='')}"
                for k, v in request.query.items()
                if k.lower() != "$skiptoken"
            )
            body["nextLink"] = f"{self._endpoint()}{request.path}?{query}&$skiptoken={start + self.page_size}"
        return Response(200, body)

    def _list_computes(self, request: Request, p: Mapping[str, str]) -> Response:
        workspace = self._workspace(p)
        prefix = f"{workspace['id']}/computes/".lower()
        computes = [c for key, c in list(self.state.computes.items()) if key.startswith(prefix)]
        return self._page(request, [self.state.compute_body(c) for c in computes if self.state.evolve(c)])

    def _get_compute(self, _request: Request, p: Mapping[str, str]) -> Response:
        compute = self._compute(p)
        if compute is None:
            raise self._missing_compute(p)
        return Response(200, self.state.compute_body(compute))

    def _put_compute(self, request: Request, p: Mapping[str, str]) -> Response:
        from aml_identity.testing.arm._compute_rules import accept_compute  # noqa: PLC0415 - keeps this file small

        workspace = self._workspace(p)
        existing = self._compute(p)
        if existing is not None and existing.busy_until is not None:
            raise _busy(existing)
        body = request.json()
        compute = accept_compute(self.state, workspace, p["name"], body, existing)
        if existing is None:
            op = self.state.begin(compute, "Creating", CREATE_SECONDS, "create")
            status = 201
        else:
            op = self.state.begin(compute, "Updating", UPDATE_SECONDS, "update")
            status = 200
        headers = self._async_headers(request, op.id, op.subscription, op.location, with_location=False)
        return Response(status, self.state.compute_body(compute), headers)

    def _patch_compute(self, request: Request, p: Mapping[str, str]) -> Response:
        from aml_identity.testing.arm._compute_rules import check_scale  # noqa: PLC0415

        compute = self._compute(p)
        if compute is None:
            raise self._missing_compute(p)
        if compute.busy_until is not None:
            raise _busy(compute)
        body = request.json() or {}
        wanted = ((body.get("properties") or {}).get("properties") or {}).get("scaleSettings")
        if not wanted:
            return Response(200, self.state.compute_body(compute))  # nothing to change: no operation
        merged = {**compute.scale, **wanted}
        merged.setdefault("minNodeCount", 0)
        check_scale(merged)
        if merged == compute.scale:
            # "Patch API will not return Azure-AsyncOperation if nothing has changed" (azureml-core).
            return Response(200, self.state.compute_body(compute))
        compute.props["scaleSettings"] = merged
        op = self.state.begin(compute, "Updating", UPDATE_SECONDS, "scale")
        headers = self._async_headers(request, op.id, op.subscription, op.location, with_location=False)
        return Response(200, self.state.compute_body(compute), headers)

    def _delete_compute(self, request: Request, p: Mapping[str, str]) -> Response:
        action = request.param("underlyingResourceAction")
        if not action:
            raise ArmError(
                400,
                "MissingRequiredParameter",
                "The query parameter underlyingResourceAction (Delete or Detach) is required.",
            )
        if _canonical(action, ("Delete", "Detach")) not in ("Delete", "Detach"):
            raise ArmError(
                400,
                "InvalidRequestParameter",
                f"underlyingResourceAction '{action}' is not Delete or Detach.",
            )
        compute = self._compute(p)
        if compute is None:
            return Response(204)
        if action.lower() == "detach":
            raise ArmError(400, "BadRequest", "Detach is not supported for AmlCompute. Use Delete instead.")
        if compute.busy_until is not None:
            raise _busy(compute)
        op = self.state.begin(compute, "Deleting", DELETE_SECONDS, "delete")
        return Response(
            202, None, self._async_headers(request, op.id, op.subscription, op.location, with_location=True)
        )

    def _operation(self, p: Mapping[str, str]) -> Any:
        self.state.evolve_all()
        op = self.state.operations.get(p["op"])
        if op is None or op.subscription.lower() != p["sub"].lower():
            raise ArmError(404, "OperationNotFound", f"The operation '{p['op']}' was not found.")
        return op

    def _operation_status(self, _request: Request, p: Mapping[str, str]) -> Response:
        op = self._operation(p)
        body = self.state.operation_status(op)
        errors = self.specs.operation_status_errors(body)
        headers = {"Retry-After": _retry_after_text(self.retry_after)} if body["status"] == "InProgress" else {}
        response = Response(200, body, headers)
        if errors:
            self._violation("async-operation status", errors, response)
        return response

    def _operation_result(self, _request: Request, p: Mapping[str, str]) -> Response:
        op = self._operation(p)
        status = self.state.operation_status(op)
        if status["status"] == "InProgress":
            return Response(202, None, {"Retry-After": _retry_after_text(self.retry_after)})
        if op.error:
            return Response(400, {"error": dict(op.error)})
        return Response(200)

    # --- locations: VM sizes and quota ---------------------------------------------------------------------

    def _vm_sizes(self, _request: Request, p: Mapping[str, str]) -> Response:
        return Response(200, {"value": [size.to_arm() for size in self.state.sizes(p["loc"])]})

    def _usages(self, _request: Request, p: Mapping[str, str]) -> Response:
        sub, loc = p["sub"], p["loc"]
        lines: list[dict[str, Any]] = []

        def line(kind: str, name: str, family: str, priority: str, item_id: str) -> None:
            quota = self.state.quota(loc, family, priority)
            lines.append(
                {
                    "id": item_id,
                    "amlWorkspaceLocation": loc,
                    "type": f"Microsoft.MachineLearningServices/{kind}/usages",
                    "unit": "Count",
                    "currentValue": self.state.used_cores(sub, loc, family, priority),
                    "limit": quota.limit,
                    "name": {"value": name, "localizedValue": name},
                }
            )

        line(
            "dedicatedCores",
            "Total Cluster Dedicated Regional vCPUs",
            "",
            "Dedicated",
            f"/subscriptions/{sub}/usages",
        )
        line(
            "lowPriorityCores",
            "Total Cluster LowPriority Regional vCPUs",
            "",
            "LowPriority",
            f"/subscriptions/{sub}/usages",
        )
        for family in sorted({size.family for size in self.state.sizes(loc)}):
            for priority in ("Dedicated", "LowPriority"):
                name = family_usage_name(family, priority)
                line(
                    "vmFamily",
                    name,
                    family,
                    priority,
                    f"/subscriptions/{sub}/usages/{name.replace(' ', '_')}",
                )
        return Response(200, {"value": lines})

    # --- identities, datastores ---------------------------------------------------------------------------

    def _get_identity(self, _request: Request, p: Mapping[str, str]) -> Response:
        key = (
            f"/subscriptions/{p['sub']}/resourceGroups/{p['rg']}/providers/Microsoft.ManagedIdentity/"
            f"userAssignedIdentities/{p['name']}"
        ).lower()
        identity = self.state.identities.get(key)
        if identity is None:
            raise ArmError(
                404,
                "ResourceNotFound",
                f"The Resource 'Microsoft.ManagedIdentity/userAssignedIdentities/{p['name']}' under resource "
                f"group '{p['rg']}' was not found.",
            )
        return Response(200, identity["body"])

    def _list_datastores(self, request: Request, p: Mapping[str, str]) -> Response:
        workspace = self._workspace(p)
        prefix = f"{workspace['id']}/datastores/".lower()
        stores = [d for key, d in self.state.datastores.items() if key.startswith(prefix)]
        is_default = request.param("isDefault")
        if is_default is not None:
            stores = [d for d in stores if str(d["properties"]["isDefault"]).lower() == is_default.lower()]
        return self._page(request, stores)

    def _get_datastore(self, _request: Request, p: Mapping[str, str]) -> Response:
        workspace = self._workspace(p)
        store = self.state.datastores.get(f"{workspace['id']}/datastores/{p['name']}".lower())
        if store is None:
            raise ArmError(
                404,
                "ResourceNotFound",
                f"The datastore '{p['name']}' was not found in workspace '{p['ws']}'.",
            )
        return Response(200, store)


def _busy(compute: Compute) -> ArmError:
    return ArmError(
        409,
        "Conflict",
        f"The compute '{compute.name}' is busy with another operation (provisioningState "
        f"{compute.provisioning_state}); wait for it to finish and try again.",
    )


def _retry_after_text(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def new_guid() -> str:
    """A fresh GUID."""
    return str(uuid.uuid4())
