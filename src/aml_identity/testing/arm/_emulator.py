"""The public :class:`ArmEmulator`: lifecycle, seeding and queries over the emulated ARM state."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from aml_identity._environment import is_guid
from aml_identity.errors import AmlIdentityError, ConfigurationError
from aml_identity.testing._http import BackgroundServer
from aml_identity.testing._tls import TlsMaterial, make_tls_material
from aml_identity.testing.arm._api import ArmApi, RecordedArmRequest
from aml_identity.testing.arm._clock import _EmulatorCredential, _ManualClock
from aml_identity.testing.arm._http import ArmServer
from aml_identity.testing.arm._ids import (
    ArmId,
    registry_id,
    resource_group_id,
    user_assigned_identity_id,
    workspace_id,
)
from aml_identity.testing.arm._openapi import ArmSpecs, SpecFinding
from aml_identity.testing.arm._seeds import checked_sizes, datastore_body, identity_body, role_guid, workspace_body
from aml_identity.testing.arm._state import ArmState, Quota, iso
from aml_identity.testing.arm._vm_sizes import DEFAULT_VM_SIZES, VmSize

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from types import TracebackType

__all__ = ["ArmEmulator", "SpecViolationError"]

# Seconds the emulator asks clients to wait between polls (ARM's Retry-After); tests advance the emulated
# clock by what the client sleeps, so a realistic value costs no real time.
DEFAULT_RETRY_AFTER_S = 10.0
DEFAULT_LOCATION = "eastus"
# An hour, like Entra's default access-token lifetime.
_TOKEN_LIFETIME_S = 3600


class SpecViolationError(AmlIdentityError, AssertionError):
    """The emulator sent a body that does not match the official spec: a bug in the emulator."""


WorkspaceRef = str | tuple[str, str, str]


class ArmEmulator(BackgroundServer):
    """Azure Resource Manager on ``127.0.0.1`` over HTTPS, for the APIs aml-identity uses.

    Serves, at the API versions of the official specs it validates against:

    * workspaces (GET) and their datastores (GET, list; ``mfe.json`` 2025-12-01);
    * computes (PUT/GET/PATCH/DELETE/list, 2025-12-01) with ``Azure-AsyncOperation`` polling,
      ``provisioningState`` Creating/Updating/Deleting -> Succeeded (or Failed with the queued error, see
      :meth:`fail_next_operation`), ``allocationState`` Resizing -> Steady as ``currentNodeCount`` moves
      one node at a time toward ``targetNodeCount`` (the cluster's ``minNodeCount``, as no jobs run here),
      and system-/user-assigned identities with their principal and client ids filled in;
    * ``vmSizes`` and ``usages`` of a location (quota lines per VM family and priority);
    * user-assigned identities (GET, 2026-05-31);
    * role assignments (PUT/GET/DELETE/list at any scope, 2022-04-01; ``RoleAssignmentExists`` for the same
      principal, role and scope under another name);
    * management locks (PUT/GET/DELETE/list at any scope, 2020-05-01). A ``CanNotDelete`` or ``ReadOnly``
      lock on the subscription, the workspace's resource group, the subnet's resource group, or an
      ``*-azurebatch-cloudservice*`` network resource in them keeps a cluster ``Resizing`` with its node
      counts frozen (``0 -> 0`` for a new cluster), as the service behaves, until the lock goes.

    Every request body is validated against the official spec (400 ``InvalidRequestContent`` naming the
    JSON path), and so is every body the emulator sends; a response that does not validate is answered
    as 500 ``EmulatorSpecViolation``, recorded in :attr:`spec_violations`, and raised as
    :class:`SpecViolationError` when the context manager exits.

    **Authentication**: every request needs ``Authorization: Bearer <JWT>`` whose ``aud`` is ARM's
    (``https://management.azure.com`` and its variants) and whose ``exp``/``nbf`` hold against the emulated
    clock (with ARM's 5-minute skew). Otherwise: 401 with ``WWW-Authenticate`` and code
    ``AuthenticationFailed`` (no or malformed header), ``InvalidAuthenticationToken`` (not a JWT),
    ``InvalidAuthenticationTokenAudience`` or ``ExpiredAuthenticationToken``. Signatures are not checked and
    ARM's own RBAC is not enforced (any valid token may manage anything).

    **Time**: nothing depends on the wall clock. The emulated clock starts at the current time and moves
    only through :meth:`advance` (or :meth:`sleep`, which records the duration too), or by
    ``seconds_per_request`` on every request. Operations take fixed emulated durations (create 60 s,
    update 20 s, delete 30 s, one node per 30 s) and the emulator answers ``Retry-After: retry_after``.
    In-process tests pass ``sleep=emulator.sleep`` to the client, so each poll's wait moves time by exactly
    what the client was told to wait. A subprocess (an example script) cannot share the clock: start the
    emulator with ``seconds_per_request=30, retry_after=0.01`` and every operation completes after a fixed
    number of polls while the client barely waits.

    **Storage roles** for a storage proxy (thread-safe)::

        has_data_role(principal_id: str, account_name: str,
                      action: Literal["read", "write", "delete", "list"],
                      *, container: str | None = None) -> bool

    is True when a role assignment for ``principal_id`` grants ``action`` on blobs of ``account_name``:
    Storage Blob Data Reader grants read and list; Contributor and Owner grant all four. Assignments at the
    subscription, resource group or account scope count; a container-scoped assignment
    (``.../blobServices/default/containers/<name>``) counts only when ``container`` names that container.
    The account is found by name among :meth:`add_storage_account` ones (subscription and group scopes need
    it registered); an unregistered account matches account- and container-scoped assignments by name.

    Use it as a context manager::

        with ArmEmulator(tls=tls) as arm:
            ws = arm.add_workspace(SUB, "rg", "ws")
            os.environ.update(arm.environ())   # AML_IDENTITY_ARM_ENDPOINT + CA bundle

    Attributes:
        tls: The certificate it presents (trust ``tls.bundle``).
        specs: The loaded official specs.
        sleeps: Every duration passed to :meth:`sleep`.
    """

    def __init__(
        self,
        *,
        tls: TlsMaterial | None = None,
        workdir: Path | None = None,
        specs_dir: str | Path | None = None,
        clock: Callable[[], float] | None = None,
        retry_after: float = DEFAULT_RETRY_AFTER_S,
        seconds_per_request: float = 0.0,
        tenant_id: str | None = None,
        port: int = 0,
        environ: Mapping[str, str] | None = None,
        page_size: int | None = None,
        vm_sizes: Iterable[VmSize] | None = None,
    ) -> None:
        """Configure the emulator and load the specs (the server starts with :meth:`start`).

        Args:
            tls: The certificate to present; one is made in ``workdir`` when omitted.
            workdir: Folder for the certificate when ``tls`` is omitted (a temporary one by default).
            specs_dir: The official specs; else ``$AML_IDENTITY_SPECS_DIR``, else ``shared/specs`` beside or
                above the checkout.
            clock: Emulated time source (epoch seconds); a manual clock starting now when omitted. To use
                :meth:`advance` with your own clock, give it an ``advance(seconds)`` method.
            retry_after: The ``Retry-After`` seconds sent with long-running operations.
            seconds_per_request: Emulated seconds every request adds (for clients in other processes).
            tenant_id: The directory tenant of the emulated identities.
            port: The port; a free one when 0.
            environ: Environment to read ``AML_IDENTITY_SPECS_DIR`` from (``os.environ`` by default).
            page_size: Split lists (computes, datastores, role assignments, locks) into pages of this many
                items linked by ``nextLink``, as ARM does with long lists; one page when None.
            vm_sizes: The VM sizes offered to AmlCompute in every location (``vmSizes`` lists them, a PUT of
                another size is refused, and the quota counts their vCPUs per family);
                :data:`DEFAULT_VM_SIZES`, the sizes Azure ML's documentation uses, when None.
                :meth:`set_vm_sizes` replaces them for one location.

        Raises:
            SpecsNotFoundError: The specs are not found; the message says where it looked.
            ConfigurationError: ``vm_sizes`` holds something other than a :class:`VmSize`, or one size twice.
        """
        from aml_identity.testing._jwt import DEFAULT_TENANT_ID  # noqa: PLC0415

        self.specs = ArmSpecs.load(specs_dir, environ)
        self._own_workdir = workdir is None and tls is None
        self._workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="aml-identity-arm-"))
        self.tls = tls or make_tls_material(self._workdir / "tls")
        self._clock: Callable[[], float] = clock or _ManualClock()
        self._state = ArmState(
            self._clock,
            tenant_id=tenant_id or DEFAULT_TENANT_ID,
            vm_sizes=checked_sizes(DEFAULT_VM_SIZES if vm_sizes is None else vm_sizes),
        )
        self._port = port
        self.sleeps: list[float] = []
        self._api = ArmApi(
            self._state,
            self.specs,
            endpoint=lambda: self.endpoint,
            retry_after=retry_after,
            advance=self.advance if hasattr(self._clock, "advance") else None,
            seconds_per_request=seconds_per_request,
            page_size=page_size,
        )

    # --- lifecycle ---------------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """``https://127.0.0.1:PORT``: what ``AML_IDENTITY_ARM_ENDPOINT`` is set to."""
        if self._server is None:
            msg = "the ARM emulator is not running; use it as a context manager or call start()"
            raise AmlIdentityError(msg)
        return f"https://127.0.0.1:{self._server.port}"

    def environ(self) -> dict[str, str]:
        """Environment variables that point aml-identity (and requests) at the emulator."""
        return {"AML_IDENTITY_ARM_ENDPOINT": self.endpoint, **self.tls.environ()}

    def _make_server(self) -> ArmServer:
        return ArmServer(self._port, self.tls.server_context(), self._api)

    def _after_stop(self) -> None:
        """Remove the certificate folder made for this emulator (the seeded state stays readable)."""
        if self._own_workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def check(self) -> None:
        """Raise :class:`SpecViolationError` if any response the emulator sent failed the spec."""
        if self._api.spec_violations:
            raise SpecViolationError("; ".join(self._api.spec_violations))

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop the emulator; raise :class:`SpecViolationError` for any response that failed the spec."""
        self.stop()
        if exc_type is None:
            self.check()

    # --- time --------------------------------------------------------------------------------------------

    def now(self) -> float:
        """The emulated time (epoch seconds)."""
        return float(self._clock())

    def advance(self, seconds: float) -> None:
        """Move emulated time forward by ``seconds``."""
        advance = getattr(self._clock, "advance", None)
        if advance is None:
            msg = "this emulator's clock has no advance(); move the clock you passed in instead"
            raise TypeError(msg)
        with self._state.lock:
            advance(seconds)

    def sleep(self, seconds: float) -> None:
        """A ``sleep`` for clients under test: records ``seconds`` and advances emulated time by it."""
        self.sleeps.append(seconds)
        self.advance(seconds)

    def credential(
        self, *, object_id: str | None = None, client_id: str | None = None, lifetime: int = _TOKEN_LIFETIME_S
    ) -> _EmulatorCredential:
        """A ``TokenCredential`` whose tokens this emulator accepts (minted on the emulated clock).

        Args:
            object_id: The ``oid`` claim (a fresh GUID when omitted).
            client_id: The ``appid`` claim (a fresh GUID when omitted).
            lifetime: Seconds each token is valid.
        """
        return _EmulatorCredential(
            self._clock, object_id or str(uuid.uuid4()), client_id or str(uuid.uuid4()), lifetime
        )

    # --- what happened -------------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedArmRequest]:
        """Every request answered, in order."""
        return list(self._api.requests)

    @property
    def rejected_requests(self) -> list[tuple[RecordedArmRequest, list[SpecFinding]]]:
        """Requests refused because their body did not match the spec, with the reasons."""
        return list(self._api.rejected)

    @property
    def spec_violations(self) -> list[str]:
        """Responses of the emulator's own that did not match the spec (should stay empty)."""
        return list(self._api.spec_violations)

    def requests_for(self, operation_id: str) -> list[RecordedArmRequest]:
        """The answered requests routed to ``operation_id`` (``Compute_CreateOrUpdate``...)."""
        return [r for r in self._api.requests if r.operation_id == operation_id]

    # --- seeding -----------------------------------------------------------------------------------------

    def add_workspace(
        self,
        subscription_id: str,
        resource_group: str,
        name: str,
        *,
        location: str = DEFAULT_LOCATION,
        storage_account: str | None = None,
        container_registry: str | None = None,
    ) -> str:
        """Add a workspace and return its ARM id.

        Args:
            subscription_id: Its subscription.
            resource_group: Its resource group.
            name: The workspace name.
            location: Its region (computes default to it).
            storage_account: ARM id of its default storage account (one in the same group is made up and
                registered when omitted).
            container_registry: ARM id of its container registry (none when omitted, as for a new workspace).
        """
        ws_id = workspace_id(subscription_id, resource_group, name)
        group = resource_group_id(subscription_id, resource_group)
        if storage_account is None:
            account = ("st" + "".join(c for c in name.lower() if c.isalnum()))[:18] + uuid.uuid4().hex[:6]
            storage_account = self.add_storage_account(subscription_id, resource_group, account)
        with self._state.lock:
            self._state.workspaces[ws_id.lower()] = workspace_body(
                ws_id,
                group,
                name,
                location=location,
                storage_account=storage_account,
                container_registry=container_registry,
                principal_id=self._state.new_principal(),
                tenant_id=self._state.tenant_id,
            )
        return ws_id

    def add_user_assigned_identity(
        self,
        subscription_id: str,
        resource_group: str,
        name: str,
        *,
        client_id: str | None = None,
        principal_id: str | None = None,
        tenant_id: str | None = None,
        location: str = DEFAULT_LOCATION,
    ) -> str:
        """Add a user-assigned identity and return its ARM id.

        Pass the ``client_id``/``principal_id`` of an identity-endpoint emulator's identity so that tokens
        and role assignments line up; fresh GUIDs are made up when omitted.
        """
        for label, value in (
            ("client_id", client_id),
            ("principal_id", principal_id),
            ("tenant_id", tenant_id),
        ):
            if value is not None and not is_guid(value):
                raise ConfigurationError(f"{label}={value!r} is not a GUID.", name=label)
        identity_id = user_assigned_identity_id(subscription_id, resource_group, name)
        with self._state.lock:
            principal = principal_id or self._state.new_principal()
            self._state.principals.add(principal.lower())
            body = identity_body(
                identity_id,
                name,
                location=location,
                tenant_id=tenant_id or self._state.tenant_id,
                principal_id=principal,
                client_id=client_id or str(uuid.uuid4()),
            )
            self._state.identities[identity_id.lower()] = {
                "body": body,
                "principalId": principal,
                "clientId": body["properties"]["clientId"],
            }
        return identity_id

    def add_storage_account(self, subscription_id: str, resource_group: str, name: str) -> str:
        """Register a storage account (a role-assignment scope, and what :meth:`has_data_role` resolves)."""
        with self._state.lock:
            return self._state.add_storage_account(subscription_id, resource_group, name)

    def add_container_registry(self, subscription_id: str, resource_group: str, name: str) -> str:
        """Register a container registry (a scope for ``AcrPull``) and return its ARM id."""
        registry = registry_id(subscription_id, resource_group, name)
        with self._state.lock:
            self._state.registries[registry.lower()] = registry
        return registry

    def add_datastore(
        self,
        workspace: WorkspaceRef,
        name: str,
        *,
        account_name: str,
        container_name: str,
        endpoint: str = "core.windows.net",
        protocol: str = "https",
        is_default: bool = False,
        description: str | None = None,
        service_data_access_auth_identity: str = "None",
    ) -> str:
        """Add an identity-based Azure Blob datastore (credentials type ``None``) and return its ARM id.

        Args:
            workspace: The workspace's ARM id or ``(subscription_id, resource_group, workspace_name)``.
            name: The datastore name.
            account_name: The storage account.
            container_name: The blob container.
            endpoint: The storage endpoint suffix (``core.windows.net``, or a sovereign cloud's).
            protocol: ``https`` (or ``wasbs``...).
            is_default: Whether it is the workspace's default datastore.
            description: Its description.
            service_data_access_auth_identity: Which identity the service uses for its own access.
        """
        ws_id = workspace if isinstance(workspace, str) else workspace_id(*workspace)
        parsed = ArmId.parse(ws_id)
        if parsed is None or ws_id.lower() not in self._state.workspaces:
            raise ConfigurationError(f"No workspace {ws_id!r} in the emulator; add it first with add_workspace().")
        store_id = f"{ws_id}/datastores/{name}"
        body = datastore_body(
            store_id,
            name,
            parsed,
            account_name=account_name,
            container_name=container_name,
            endpoint=endpoint,
            protocol=protocol,
            is_default=is_default,
            description=description,
            service_data_access_auth_identity=service_data_access_auth_identity,
        )
        with self._state.lock:
            self._state.datastores[store_id.lower()] = body
        return store_id

    def add_lock(self, scope: str, name: str, level: str, *, notes: str | None = None) -> str:
        """Add a lock (``CanNotDelete``, ``ReadOnly`` or ``NotSpecified``) at ``scope``; return its id."""
        if ArmId.parse(scope) is None:
            raise ConfigurationError(f"{scope!r} is not a subscription, resource group or resource id.", name="scope")
        with self._state.lock:
            return str(self._state.add_lock(scope, name, level, notes)["id"])

    def remove_lock(self, lock_id: str) -> None:
        """Remove the lock with ARM id ``lock_id`` (nothing happens when there is none)."""
        with self._state.lock:
            self._state.remove_lock(lock_id)

    def add_principal(self, principal_id: str) -> None:
        """Make a principal (service principal object id) known to the emulated directory."""
        with self._state.lock:
            self._state.principals.add(principal_id.lower())

    def add_role_assignment(
        self,
        scope: str,
        principal_id: str,
        role: str,
        *,
        name: str | None = None,
        principal_type: str = "ServicePrincipal",
    ) -> str:
        """Grant ``role`` (built-in name, GUID or definition id) at ``scope``; return the assignment id."""
        guid = role_guid(role)
        parsed = ArmId.parse(scope)
        if parsed is None:
            raise ConfigurationError(f"{scope!r} is not a subscription, resource group or resource id.", name="scope")
        definition = f"/subscriptions/{parsed.subscription}/providers/Microsoft.Authorization/roleDefinitions/{guid}"
        with self._state.lock:
            record = self._state.add_role_assignment(
                scope, name or str(uuid.uuid4()), definition, principal_id, principal_type
            )
        return str(record["id"])

    def set_vm_sizes(self, location: str, sizes: Iterable[VmSize]) -> None:
        """Replace the VM sizes offered in ``location`` (the others keep the constructor's ``vm_sizes``).

        Raises:
            ConfigurationError: ``sizes`` holds something other than a :class:`VmSize`, or one size twice.
        """
        checked = checked_sizes(sizes)
        with self._state.lock:
            self._state.vm_sizes[location.lower()] = checked

    @property
    def vm_sizes(self) -> tuple[VmSize, ...]:
        """The VM sizes offered in locations without sizes of their own (:meth:`set_vm_sizes`)."""
        with self._state.lock:
            return tuple(self._state.default_sizes)

    def set_quota(
        self,
        location: str,
        *,
        limit: int,
        family: str | None = None,
        low_priority: bool = False,
        current: int = 0,
    ) -> None:
        """Set a vCPU quota line of ``location``.

        Args:
            location: The region.
            limit: The limit (-1 for none).
            family: A VM family (``standardDSv2Family``) or None for the regional total.
            low_priority: The low-priority line instead of the dedicated one.
            current: vCPUs already used outside the emulated clusters.
        """
        priority = "LowPriority" if low_priority else "Dedicated"
        with self._state.lock:
            self._state.quotas[(location.lower(), (family or "").lower(), priority)] = Quota(limit, current)

    def fail_next_operation(
        self, *, code: str, message: str, kind: Literal["create", "update", "scale", "delete"] | None = None
    ) -> None:
        """Make the next long-running compute operation (of ``kind``, or any) end ``Failed`` with this error.

        Args:
            code: The error code the operation status reports.
            message: The error message.
            kind: Which operation to fail; the next one of any kind when None.
        """
        with self._state.lock:
            self._state.pending_failures.append((kind, {"code": code, "message": message}))

    # --- queries -----------------------------------------------------------------------------------------

    def compute(self, compute_id: str) -> dict[str, Any] | None:
        """The compute's body as a GET would return it now, or None."""
        with self._state.lock:
            compute = self._state.computes.get(compute_id.lower())
            if compute is None or not self._state.evolve(compute):
                return None
            return self._state.compute_body(compute)

    def role_assignments(self, *, principal_id: str | None = None, scope: str | None = None) -> list[dict[str, Any]]:
        """Role assignments, optionally for one principal and/or exactly at one scope."""
        with self._state.lock:
            found = list(self._state.role_assignments.values())
        if principal_id is not None:
            found = [a for a in found if a["properties"]["principalId"].lower() == principal_id.lower()]
        if scope is not None:
            found = [a for a in found if a["properties"]["scope"].lower() == scope.rstrip("/").lower()]
        return found

    def has_data_role(
        self,
        principal_id: str,
        account_name: str,
        action: Literal["read", "write", "delete", "list"],
        *,
        container: str | None = None,
    ) -> bool:
        """Whether ``principal_id`` may ``action`` blobs of ``account_name`` (see the class docstring)."""
        with self._state.lock:
            return self._state.has_data_role(principal_id, account_name, action, container=container)

    def __repr__(self) -> str:
        """Show where it listens and the emulated time."""
        where = f"https://127.0.0.1:{self._server.port}" if self._server else "stopped"
        return f"ArmEmulator({where}, now={iso(self.now())})"
