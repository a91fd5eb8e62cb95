"""What the ARM emulator holds and how it changes with (emulated) time; no HTTP in here.

All reads and writes go through one re-entrant lock, so the HTTP worker threads, the test thread and a
storage proxy asking :meth:`ArmState.has_data_role` never see a half-made change. Time comes from an
injected clock: nothing here looks at the wall clock, so a test drives every transition by advancing it.
"""

from __future__ import annotations

import copy
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal

from aml_identity.testing._jwt import DEFAULT_TENANT_ID
from aml_identity.testing.arm._ids import (
    BUILTIN_ROLES,
    DATA_ROLE_ACTIONS,
    ArmId,
    covers,
    role_definition_guid,
    storage_account_id,
)
from aml_identity.testing.arm._vm_sizes import DEFAULT_VM_SIZES, VmSize

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

__all__ = ["ArmError", "ArmState", "Compute", "VmSize"]

# Emulated durations. Real clusters take minutes to create and a node a few minutes to join; the emulator
# keeps the shape (several polls per operation, one node at a time) at a scale tests can advance through.
CREATE_SECONDS = 60.0
UPDATE_SECONDS = 20.0
DELETE_SECONDS = 30.0
NODE_STEP_SECONDS = 30.0
# Default quotas: the lower ends of the documented per-region defaults (dedicated 24 cores per VM family,
# low-priority 100 cores for all families), and 100 dedicated cores in total.
DEFAULT_FAMILY_DEDICATED_LIMIT = 24
DEFAULT_TOTAL_DEDICATED_LIMIT = 100
DEFAULT_LOW_PRIORITY_LIMIT = 100
# Lock levels that stop a cluster from resizing (the service's "stuck at resizing 0 -> 0").
BLOCKING_LOCK_LEVELS = frozenset({"cannotdelete", "readonly"})
# Network resources Azure ML creates for a cluster; the docs warn never to lock them.
BATCH_RESOURCE_MARKER = "-azurebatch-cloudservice"
_LOCK_NOTES_MAX = 512  # the spec's documented maximum


class ArmError(Exception):
    """An ARM error answer: HTTP status plus the ``{"error": {...}}`` body."""

    def __init__(self, status: int, code: str, message: str, *, target: str | None = None) -> None:
        """Create the error."""
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.target = target

    def body(self) -> dict[str, Any]:
        """Return the ARM error body."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.target:
            error["target"] = self.target
        return {"error": error}


def iso(epoch: float) -> str:
    """Format epoch seconds as ARM does (UTC, ``Z``)."""
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def family_usage_name(family: str, priority: str) -> str:
    """``standardDSv2Family`` -> ``Standard DSv2 Family Cluster Dedicated vCPUs`` (the usages naming)."""
    core = family[len("standard") :] if family.lower().startswith("standard") else family
    core = core.removesuffix("Family")
    kind = "Dedicated" if priority == "Dedicated" else "LowPriority"
    return f"Standard {core} Family Cluster {kind} vCPUs"


@dataclass
class Compute:
    """One AmlCompute cluster and where it is in its lifecycle."""

    id: str
    name: str
    workspace: str
    location: str
    spec: dict[str, Any]  # the writable body as last accepted (canonical enum casing)
    created_on: float
    modified_on: float
    provisioning_state: str = "Creating"
    busy_until: float | None = None
    next_state: str = "Succeeded"
    provisioning_errors: list[dict[str, Any]] = field(default_factory=list)
    pending_errors: list[dict[str, Any]] = field(default_factory=list)
    deleting: bool = False
    current_nodes: int = 0
    target_nodes: int = 0
    allocation_state: str = "Steady"
    allocation_since: float = 0.0
    next_step_at: float | None = None
    stuck: bool = False
    system_identity: tuple[str, str] | None = None  # (principalId, tenantId)

    @property
    def props(self) -> dict[str, Any]:
        """The AmlCompute ``properties.properties`` object of :attr:`spec`."""
        props: dict[str, Any] = self.spec.setdefault("properties", {}).setdefault("properties", {})
        return props

    @property
    def scale(self) -> dict[str, Any]:
        """The cluster's ``scaleSettings``."""
        scale: dict[str, Any] = self.props.setdefault("scaleSettings", {})
        return scale


@dataclass
class Operation:
    """An ``Azure-AsyncOperation`` the emulator reports on."""

    id: str
    subscription: str
    location: str
    start: float
    done_at: float
    error: dict[str, str] | None = None


@dataclass
class Quota:
    """A vCPU quota line; ``current`` is usage outside the emulated clusters."""

    limit: int
    current: int = 0


def _canonical(value: Any, choices: Iterable[str]) -> Any:
    """Return the spec's spelling of an extensible enum value (``dedicated`` -> ``Dedicated``)."""
    if isinstance(value, str):
        for choice in choices:
            if choice.lower() == value.lower():
                return choice
    return value


def _duration_seconds(value: str | None) -> float:
    """Seconds of an ISO 8601 duration like ``PT30M`` or ``PT1800S`` (days and below)."""
    if not value:
        return 0.0
    import re  # noqa: PLC0415 - only needed here

    match = re.match(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$", value.upper())
    if not match:
        return 0.0
    days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


class ArmState:
    """Every resource the emulator knows, behind one lock."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        tenant_id: str = DEFAULT_TENANT_ID,
        vm_sizes: Iterable[VmSize] = DEFAULT_VM_SIZES,
    ) -> None:
        """Start empty, reading time from ``clock``; ``vm_sizes`` are offered where no location has its own."""
        self.clock = clock
        self.tenant_id = tenant_id
        self.lock = threading.RLock()
        self.workspaces: dict[str, dict[str, Any]] = {}
        self.identities: dict[str, dict[str, Any]] = {}
        self.storage_accounts: dict[str, str] = {}  # lower-case name -> id
        self.registries: dict[str, str] = {}  # lower-case id -> id
        self.datastores: dict[str, dict[str, Any]] = {}
        self.computes: dict[str, Compute] = {}
        self.operations: dict[str, Operation] = {}
        self.role_assignments: dict[str, dict[str, Any]] = {}
        self.locks: dict[str, dict[str, Any]] = {}
        self.principals: set[str] = set()
        self.vm_sizes: dict[str, list[VmSize]] = {}  # per location; default_sizes elsewhere
        self.default_sizes: list[VmSize] = list(vm_sizes)
        self.quotas: dict[tuple[str, str, str], Quota] = {}  # (location, family or "", priority)
        self.pending_failures: list[tuple[str | None, dict[str, str]]] = []

    # --- helpers ---------------------------------------------------------------------------------------

    def now(self) -> float:
        """The emulated time."""
        return float(self.clock())

    def new_principal(self) -> str:
        """Make up a service principal object id and remember it exists."""
        principal = str(uuid.uuid4())
        self.principals.add(principal)
        return principal

    def sizes(self, location: str) -> list[VmSize]:
        """The VM sizes offered in ``location``."""
        return self.vm_sizes.get(location.lower(), self.default_sizes)

    def size(self, location: str, name: str) -> VmSize | None:
        """The VM size ``name`` (any casing) in ``location``, or None."""
        return next((s for s in self.sizes(location) if s.name.lower() == name.lower()), None)

    def quota(self, location: str, family: str, priority: str) -> Quota:
        """The quota line for a family (``""`` for the regional total) and priority."""
        key = (location.lower(), family.lower(), priority)
        if key not in self.quotas:
            if priority == "LowPriority":
                limit = DEFAULT_LOW_PRIORITY_LIMIT if not family else -1  # one regional low-priority quota
            else:
                limit = DEFAULT_TOTAL_DEDICATED_LIMIT if not family else DEFAULT_FAMILY_DEDICATED_LIMIT
            self.quotas[key] = Quota(limit)
        return self.quotas[key]

    def used_cores(self, subscription: str, location: str, family: str, priority: str) -> int:
        """VCPUs held by the emulated clusters (current nodes) plus the configured outside usage."""
        total = self.quota(location, family, priority).current
        for compute in self.computes.values():
            compute_sub = ArmId.parse(compute.id)
            if compute_sub is None or compute_sub.subscription.lower() != subscription.lower():
                continue
            if compute.location.lower() != location.lower():
                continue
            if (compute.props.get("vmPriority") or "Dedicated") != priority:
                continue
            size = self.size(compute.location, str(compute.props.get("vmSize", "")))
            if size is None or (family and size.family.lower() != family.lower()):
                continue
            total += compute.current_nodes * size.vcpus
        return total

    def free_cores(self, subscription: str, location: str, family: str, priority: str) -> int | None:
        """Cores left under a quota line, or None when the line is unlimited (``-1``)."""
        line = self.quota(location, family, priority)
        if line.limit < 0:
            return None
        return line.limit - self.used_cores(subscription, location, family, priority)

    # --- compute lifecycle --------------------------------------------------------------------------------

    def blocking_locks(self, compute: Compute) -> list[dict[str, Any]]:
        """Return the locks that keep ``compute`` from resizing.

        Those on its subscription, its workspace's resource group, its subnet's resource group, or the Azure
        Batch network resources in either group.
        """
        ws = ArmId.parse(compute.workspace)
        if ws is None:
            return []
        groups = {f"/subscriptions/{ws.subscription}/resourcegroups/{ws.resource_group}".lower()}
        subnet = ((compute.props.get("subnet") or {}).get("id")) or ""
        subnet_id = ArmId.parse(subnet)
        if subnet_id is not None and subnet_id.resource_group:
            groups.add(f"/subscriptions/{subnet_id.subscription}/resourcegroups/{subnet_id.resource_group}".lower())
        blocking = []
        for lock in self.locks.values():
            if lock["level"].lower() not in BLOCKING_LOCK_LEVELS:
                continue
            scope = lock["scope"].lower()
            scope_id = ArmId.parse(scope)
            if scope_id is None:
                continue
            if (
                (scope_id.kind == "subscription" and scope_id.subscription.lower() == ws.subscription.lower())
                or (scope_id.kind == "resourceGroup" and scope in groups)
                or (
                    scope_id.kind == "resource"
                    and BATCH_RESOURCE_MARKER in scope_id.name.lower()
                    and any(covers(group, scope) for group in groups)
                )
            ):
                blocking.append(lock)
        return blocking

    def _start_resize(self, compute: Compute, at: float) -> None:
        minimum = int(compute.scale.get("minNodeCount") or 0)
        maximum = int(compute.scale.get("maxNodeCount") or 0)
        compute.target_nodes = max(0, min(minimum, maximum))
        if compute.target_nodes == compute.current_nodes:
            if compute.allocation_state != "Steady":
                compute.allocation_state, compute.allocation_since = "Steady", at
            compute.next_step_at = None
            return
        shrinking = compute.target_nodes < compute.current_nodes
        idle = _duration_seconds(compute.scale.get("nodeIdleTimeBeforeScaleDown")) if shrinking else 0.0
        compute.allocation_state, compute.allocation_since = "Resizing", at
        compute.next_step_at = at + idle + NODE_STEP_SECONDS

    def _finish_operation(self, compute: Compute) -> bool:
        """Apply the end of a finished operation; return False when it deleted the compute."""
        done = compute.busy_until if compute.busy_until is not None else self.now()
        compute.busy_until = None
        if compute.deleting and compute.next_state == "Succeeded":
            self.computes.pop(compute.id.lower(), None)
            return False
        compute.deleting = False
        compute.provisioning_state = compute.next_state
        compute.provisioning_errors = compute.pending_errors
        compute.modified_on = done
        if compute.provisioning_state == "Succeeded":
            self._start_resize(compute, done)
        return True

    def _step_nodes(self, compute: Compute, now: float) -> None:
        """Move the node count one step per NODE_STEP_SECONDS toward the target, up to ``now``."""
        while compute.current_nodes != compute.target_nodes and compute.next_step_at is not None:
            if compute.next_step_at > now:
                return
            compute.current_nodes += 1 if compute.target_nodes > compute.current_nodes else -1
            reached = compute.next_step_at
            compute.next_step_at += NODE_STEP_SECONDS
            if compute.current_nodes == compute.target_nodes:
                compute.allocation_state, compute.allocation_since = "Steady", reached
                compute.next_step_at = None

    def evolve(self, compute: Compute) -> bool:
        """Bring ``compute`` up to the current emulated time; return False when it has been deleted."""
        now = self.now()
        if compute.busy_until is not None and now >= compute.busy_until and not self._finish_operation(compute):
            return False
        if compute.provisioning_state != "Succeeded" or compute.busy_until is not None:
            return True
        if self.blocking_locks(compute):
            if not compute.stuck:  # resizing, frozen where it was ("0 -> 0" for a new cluster)
                compute.stuck = True
                compute.allocation_state, compute.allocation_since = "Resizing", now
                compute.target_nodes = compute.current_nodes
                compute.next_step_at = None
            return True
        if compute.stuck:
            compute.stuck = False
            self._start_resize(compute, now)
        self._step_nodes(compute, now)
        return True

    def evolve_all(self) -> None:
        """Bring every compute up to now (before a change, such as a lock, that alters what happens next)."""
        for compute in list(self.computes.values()):
            self.evolve(compute)

    def begin(self, compute: Compute, state: str, seconds: float, kind: str) -> Operation:
        """Start an operation on ``compute`` that ends after ``seconds`` (or fails, when one is queued)."""
        now = self.now()
        ws = ArmId.parse(compute.workspace)
        op = Operation(str(uuid.uuid4()), ws.subscription if ws else "", compute.location, now, now + seconds)
        for index, (wanted, error) in enumerate(self.pending_failures):
            if wanted is None or wanted == kind:
                op.error = error
                del self.pending_failures[index]
                break
        compute.provisioning_state = state
        compute.busy_until = op.done_at
        if kind == "delete":
            compute.deleting = op.error is None  # a failed delete leaves the cluster as it was
            compute.next_state = "Succeeded"
            compute.pending_errors = []
        else:
            compute.deleting = False
            compute.next_state = "Failed" if op.error else "Succeeded"
            compute.pending_errors = [{"error": dict(op.error)}] if op.error else []
        self.operations[op.id] = op
        return op

    def operation_status(self, op: Operation) -> dict[str, Any]:
        """The ``OperationStatusResult`` body of ``op`` now."""
        now = self.now()
        body: dict[str, Any] = {"id": op.id, "name": op.id, "startTime": iso(op.start)}
        if now < op.done_at:
            body["status"] = "InProgress"
            span = op.done_at - op.start
            body["percentComplete"] = round(100.0 * (now - op.start) / span, 1) if span else 0.0
        else:
            body["status"] = "Failed" if op.error else "Succeeded"
            body["endTime"] = iso(op.done_at)
            body["percentComplete"] = 100.0
            if op.error:
                body["error"] = dict(op.error)
        return body

    def compute_body(self, compute: Compute) -> dict[str, Any]:
        """The full ``ComputeResource`` a GET returns."""
        spec = copy.deepcopy(compute.spec)
        props = spec["properties"].setdefault("properties", {})
        props.update(
            {
                "allocationState": compute.allocation_state,
                "allocationStateTransitionTime": iso(compute.allocation_since or compute.created_on),
                "errors": None,
                "currentNodeCount": compute.current_nodes,
                "targetNodeCount": compute.target_nodes,
                "nodeStateCounts": {
                    "idleNodeCount": compute.current_nodes,
                    "runningNodeCount": 0,
                    "preparingNodeCount": 0,
                    "unusableNodeCount": 0,
                    "leavingNodeCount": 0,
                    "preemptedNodeCount": 0,
                },
            }
        )
        inner = spec["properties"]
        inner.update(
            {
                "provisioningState": compute.provisioning_state,
                "createdOn": iso(compute.created_on),
                "modifiedOn": iso(compute.modified_on),
                "resourceId": None,
                "provisioningErrors": compute.provisioning_errors or None,
                "isAttachedCompute": False,
            }
        )
        inner.setdefault("computeLocation", compute.location)
        inner.setdefault("description", None)
        body: dict[str, Any] = {
            "id": compute.id,
            "name": compute.name,
            "type": "Microsoft.MachineLearningServices/workspaces/computes",
            "location": compute.location,
            "tags": spec.get("tags") or {},
            "properties": inner,
        }
        identity = self.identity_body(compute)
        if identity is not None:
            body["identity"] = identity
        if spec.get("sku"):
            body["sku"] = spec["sku"]
        return body

    def identity_body(self, compute: Compute) -> dict[str, Any] | None:
        """The ``identity`` of a compute with principal/client ids filled in, or None without one."""
        identity = compute.spec.get("identity")
        if not identity or identity.get("type") == "None":
            return None
        body: dict[str, Any] = {"type": identity["type"]}
        if "SystemAssigned" in identity["type"] and compute.system_identity:
            body["principalId"], body["tenantId"] = compute.system_identity
        if identity.get("userAssignedIdentities"):
            body["userAssignedIdentities"] = {
                key: {
                    "principalId": self.identities[key.lower()]["principalId"],
                    "clientId": self.identities[key.lower()]["clientId"],
                }
                for key in identity["userAssignedIdentities"]
            }
        return body

    # --- role assignments ------------------------------------------------------------------------------

    def add_role_assignment(
        self, scope: str, name: str, role_definition_id: str, principal_id: str, principal_type: str
    ) -> dict[str, Any]:
        """Record a role assignment (no checks: seeding and the HTTP layer check before calling)."""
        assignment_id = f"{scope.rstrip('/')}/providers/Microsoft.Authorization/roleAssignments/{name}"
        now = iso(self.now())
        record = {
            "id": assignment_id,
            "name": name,
            "type": "Microsoft.Authorization/roleAssignments",
            "properties": {
                "scope": scope.rstrip("/"),
                "roleDefinitionId": role_definition_id,
                "principalId": principal_id,
                "principalType": principal_type,
                "createdOn": now,
                "updatedOn": now,
            },
        }
        self.role_assignments[assignment_id.lower()] = record
        return record

    def has_data_role(
        self,
        principal_id: str,
        account_name: str,
        action: Literal["read", "write", "delete", "list"],
        *,
        container: str | None = None,
    ) -> bool:
        """See :meth:`ArmEmulator.has_data_role`."""
        account_id = self.storage_accounts.get(account_name.lower())
        for assignment in self.role_assignments.values():
            props = assignment["properties"]
            if props["principalId"].lower() != principal_id.lower():
                continue
            guid = role_definition_guid(props["roleDefinitionId"])
            if guid is None or action not in DATA_ROLE_ACTIONS.get(guid, frozenset()):
                continue
            if _scope_reaches(props["scope"], account_name, account_id, container):
                return True
        return False

    def role_name(self, role_definition_id: str) -> str:
        """A readable name for a role definition id (the GUID when it is not a known built-in)."""
        guid = role_definition_guid(role_definition_id) or role_definition_id
        return BUILTIN_ROLES.get(guid, guid)

    # --- seeding helpers used by the emulator's public API ------------------------------------------------

    def add_storage_account(self, subscription_id: str, resource_group: str, name: str) -> str:
        """Register a storage account and return its id."""
        account_id = storage_account_id(subscription_id, resource_group, name)
        self.storage_accounts[name.lower()] = account_id
        return account_id

    def add_lock(self, scope: str, name: str, level: str, notes: str | None) -> dict[str, Any]:
        """Record a management lock (validated by the caller) and return it."""
        if notes is not None and len(notes) > _LOCK_NOTES_MAX:
            raise ArmError(400, "LockNotesTooLong", f"Lock notes can have at most {_LOCK_NOTES_MAX} characters.")
        self.evolve_all()
        scope = scope.rstrip("/")
        lock_id = f"{scope}/providers/Microsoft.Authorization/locks/{name}"
        record: dict[str, Any] = {
            "id": lock_id,
            "name": name,
            "type": "Microsoft.Authorization/locks",
            "scope": scope,
            "level": _canonical(level, ("NotSpecified", "CanNotDelete", "ReadOnly")),
            "notes": notes,
        }
        self.locks[lock_id.lower()] = record
        return record

    def remove_lock(self, lock_id: str) -> dict[str, Any] | None:
        """Remove a lock; clusters it held resume resizing from now."""
        self.evolve_all()
        lock = self.locks.pop(lock_id.lower(), None)
        self.evolve_all()
        return lock

    def lock_body(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """The ``ManagementLockObject`` of a lock."""
        props: dict[str, Any] = {"level": record["level"]}
        if record.get("notes") is not None:
            props["notes"] = record["notes"]
        return {"id": record["id"], "type": record["type"], "name": record["name"], "properties": props}


def _scope_reaches(scope: str, account_name: str, account_id: str | None, container: str | None) -> bool:
    """Whether a role assignment at ``scope`` applies to blobs of the account (and container)."""
    parsed = ArmId.parse(scope)
    if parsed is None:
        return False
    if account_id is not None and covers(scope, account_id):
        return True  # subscription, resource group or the account itself
    if parsed.namespace is None or parsed.namespace.lower() != "microsoft.storage":
        return False
    names = [n.lower() for n in parsed.names]
    types = [t.lower() for t in parsed.types]
    if not types or types[0] != "storageaccounts" or names[0] != account_name.lower():
        return False
    if len(types) == 1:
        return True  # the account (not registered with the emulator)
    return (
        container is not None
        and types[1:] == ["blobservices", "containers"]
        and names[1] == "default"
        and names[2] == container.lower()
    )
