"""The ARM emulator's authorization routes: role assignments and management locks (``Microsoft.Authorization``).

:class:`AuthorizationHandlers` is a part of :class:`~aml_identity.testing.arm._api.ArmApi`, which routes the
requests here; the state they read and change is the emulator's :class:`~aml_identity.testing.arm._state.ArmState`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aml_identity._environment import is_guid
from aml_identity.testing.arm._http import Request, Response
from aml_identity.testing.arm._ids import ArmId, covers, role_definition_guid
from aml_identity.testing.arm._state import ArmError, _canonical

if TYPE_CHECKING:
    from aml_identity.testing.arm._state import ArmState

__all__ = ["AuthorizationHandlers", "not_found"]


def not_found(parsed: ArmId, scope: str) -> ArmError:
    """ARM's 404 for a scope whose resource does not exist."""
    return ArmError(
        404,
        "ResourceNotFound",
        f"The Resource '{parsed.type}/{parsed.names[0]}' under resource group '{parsed.resource_group}' was "
        f"not found (scope {scope}).",
    )


class AuthorizationHandlers:
    """Role-assignment and lock handlers of the ARM emulator (mixed into ``ArmApi``)."""

    state: ArmState

    def _page(self, request: Request, items: list[Any]) -> Response:
        raise NotImplementedError  # ArmApi's paging

    # --- role assignments --------------------------------------------------------------------------------

    def _scope(self, p: Mapping[str, str]) -> str:
        scope = p["scope"].rstrip("/")
        parsed = ArmId.parse(scope)
        if parsed is None:
            raise ArmError(
                400, "InvalidScope", f"'{scope}' is not a valid scope (a subscription, group or resource id)."
            )
        kind = parsed.type.lower()
        unknown_account = (
            kind.startswith("microsoft.storage/storageaccounts")
            and parsed.names[0].lower() not in self.state.storage_accounts
        )
        unknown_registry = (
            kind == "microsoft.containerregistry/registries" and scope.lower() not in self.state.registries
        )
        if unknown_account or unknown_registry:
            raise not_found(parsed, scope)
        return scope

    def _list_role_assignments(self, request: Request, p: Mapping[str, str]) -> Response:
        scope = self._scope(p)
        query = (request.param("$filter") or "").strip()
        at_scope = "atscope()" in query.lower()
        principal = re.search(r"(?:principalId\s+eq\s+|assignedTo\()'([^']+)'", query, re.IGNORECASE)
        found = []
        for assignment in self.state.role_assignments.values():
            own = assignment["properties"]["scope"]
            if not (covers(own, scope) or (not at_scope and covers(scope, own))):
                continue
            if principal and assignment["properties"]["principalId"].lower() != principal.group(1).lower():
                continue
            found.append(assignment)
        return self._page(request, found)

    def _get_role_assignment(self, _request: Request, p: Mapping[str, str]) -> Response:
        scope = self._scope(p)
        key = f"{scope}/providers/Microsoft.Authorization/roleAssignments/{p['name']}".lower()
        assignment = self.state.role_assignments.get(key)
        if assignment is None:
            raise ArmError(404, "RoleAssignmentNotFound", f"The role assignment '{p['name']}' is not found.")
        return Response(200, assignment)

    def _put_role_assignment(self, request: Request, p: Mapping[str, str]) -> Response:
        scope = self._scope(p)
        name = p["name"]
        if not is_guid(name):
            raise ArmError(
                400,
                "InvalidRoleAssignmentId",
                f"The role assignment ID '{name}' is not valid. The role assignment ID must be a GUID.",
            )
        props = (request.json() or {})["properties"]
        role = props["roleDefinitionId"]
        if role_definition_guid(role) is None:
            raise ArmError(400, "InvalidRoleDefinitionId", f"The role definition ID '{role}' is not valid.")
        principal = props["principalId"]
        principal_type = _canonical(
            props.get("principalType") or "User", ("User", "Group", "ServicePrincipal", "ForeignGroup")
        )
        if not props.get("principalType") and principal.lower() not in self.state.principals:
            # With principalType set ARM skips the directory lookup (that is why setting it avoids replication
            # delays); without it, an unknown principal is refused.
            raise ArmError(
                400,
                "PrincipalNotFound",
                f"Principal {principal} does not exist in the directory {self.state.tenant_id}. Check "
                "that you have the correct principal ID.",
            )
        key = f"{scope}/providers/Microsoft.Authorization/roleAssignments/{name}".lower()
        existing = self.state.role_assignments.get(key)

        def same(assignment: Mapping[str, Any]) -> bool:
            other = assignment["properties"]
            return bool(
                other["principalId"].lower() == principal.lower()
                and role_definition_guid(other["roleDefinitionId"]) == role_definition_guid(role)
            )

        if existing is not None:
            if not same(existing):
                raise ArmError(
                    409,
                    "RoleAssignmentUpdateNotPermitted",
                    "Tenant ID, application ID, principal ID, and scope are not allowed to be updated.",
                )
            return Response(200, existing)
        for other in self.state.role_assignments.values():
            if other["properties"]["scope"].lower() == scope.lower() and same(other):
                raise ArmError(
                    409,
                    "RoleAssignmentExists",
                    f"The role assignment already exists. The ID of the existing role assignment is {other['name']}.",
                )
        return Response(201, self.state.add_role_assignment(scope, name, role, principal, principal_type))

    def _delete_role_assignment(self, _request: Request, p: Mapping[str, str]) -> Response:
        scope = self._scope(p)
        key = f"{scope}/providers/Microsoft.Authorization/roleAssignments/{p['name']}".lower()
        assignment = self.state.role_assignments.pop(key, None)
        return Response(200, assignment) if assignment is not None else Response(204)

    # --- management locks --------------------------------------------------------------------------------

    def _lock_scope(self, p: Mapping[str, str]) -> str:
        scope = p["scope"].rstrip("/")
        if ArmId.parse(scope) is None:
            raise ArmError(400, "InvalidScope", f"'{scope}' is not a valid scope for a lock.")
        return scope

    def _list_locks(self, request: Request, p: Mapping[str, str]) -> Response:
        scope = self._lock_scope(p)
        at_scope = "atscope()" in (request.param("$filter") or "").lower()
        found = [
            self.state.lock_body(lock)
            for lock in self.state.locks.values()
            if (covers(lock["scope"], scope) if at_scope else covers(scope, lock["scope"]))
        ]
        return self._page(request, found)

    def _get_lock(self, _request: Request, p: Mapping[str, str]) -> Response:
        scope = self._lock_scope(p)
        lock = self.state.locks.get(f"{scope}/providers/Microsoft.Authorization/locks/{p['name']}".lower())
        if lock is None:
            raise ArmError(404, "LockNotFound", f"The lock '{p['name']}' could not be found.")
        return Response(200, self.state.lock_body(lock))

    def _put_lock(self, request: Request, p: Mapping[str, str]) -> Response:
        scope = self._lock_scope(p)
        props = (request.json() or {})["properties"]
        existed = f"{scope}/providers/Microsoft.Authorization/locks/{p['name']}".lower() in self.state.locks
        lock = self.state.add_lock(scope, p["name"], props["level"], props.get("notes"))
        return Response(200 if existed else 201, self.state.lock_body(lock))

    def _delete_lock(self, _request: Request, p: Mapping[str, str]) -> Response:
        scope = self._lock_scope(p)
        lock = self.state.remove_lock(f"{scope}/providers/Microsoft.Authorization/locks/{p['name']}")
        return Response(200 if lock is not None else 204)
